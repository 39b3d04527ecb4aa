"""The two-board app of a split run (docs/split.md): B's board serves B, A's board runs A on every input and joins
B's answer when it comes within the deadline, else answers with A alone and says so per sample.

    python3 app/split_app.py serve --model model.om --key .link/link.key [--port 0] [--bind 0.0.0.0]
                                   [--until-stdin-closes] [--timing timing.json]
    python3 app/split_app.py lead  --model model.om --input inputs.npy --head head.npz --key .link/link.key
                                   --peer HOST:PORT --deadline-ms 100 [--reconnect-s 1] --output outputs.npz
                                   [--timing timing.json] [--batch B]

`serve` prints `split_app: listening on port P` and answers until A says goodbye (or, with --until-stdin-closes,
until its SSH session ends: a board that goes away takes its server with it). `lead` writes outputs.npz: `logits`
(what was answered: combined, or A alone), `logits_a` (A alone, every sample), `nodes_a`, `mode` (1 combined,
0 A alone) and `reason` (REASONS), one row per input, and timing.json with the latency of each mode.

Runs on the board's Python (3.6 or 3.7.5) with numpy and pyACL only, beside infer.py and acl_session.py (it
uses their model session and checks) and split_link.py. Exit status: 0 done, 1 an ACL call failed, 2 bad
arguments, files or model.
"""
import argparse
import json
import os
import platform
import select
import socket
import sys
import time

import numpy as np

from acl_session import AclError, ModelError, ModelSession
from infer import (SIM_OM_MAGIC, SIM_OM_ON_REAL_BOARD, UsageError, check_inputs_fit, import_acl, is_sim_acl,
                   load_inputs, read_model_head, write_atomically)
import split_link as link

PROG = "split_app.py"
COMBINED = 1
A_ALONE = 0
# why a sample was answered by A alone (outputs.npz "reason"; 0: it was not)
REASONS = {0: "combined", 1: "no link to B", 2: "B missed the deadline", 3: "link lost", 4: "link refused (auth)",
           5: "B's answer did not fit"}
PROGRESS_EVERY_S = 0.5


def parse_args(argv):
    parser = argparse.ArgumentParser(prog=PROG, description="Sub-models A and B of a split run, on two boards.")
    sub = parser.add_subparsers(dest="role")
    serve = sub.add_parser("serve", help="B's board: answer A's requests with B's nodes")
    serve.add_argument("--model", required=True)
    serve.add_argument("--key", required=True)
    serve.add_argument("--port", type=int, default=0, help="TCP port to listen on (0: any free one)")
    serve.add_argument("--bind", default="0.0.0.0")
    serve.add_argument("--until-stdin-closes", action="store_true",
                       help="also stop when standard input closes (the SSH session that started it ended)")
    serve.add_argument("--idle-s", type=float, default=600.0, help="stop after this long without a request")
    serve.add_argument("--timing", default=None)
    serve.add_argument("--device", type=int, default=0)
    lead = sub.add_parser("lead", help="A's board: run A on every input, join B's answer when it is in time")
    lead.add_argument("--model", required=True)
    lead.add_argument("--input", required=True)
    lead.add_argument("--head", required=True)
    lead.add_argument("--key", required=True)
    lead.add_argument("--peer", required=True, help="HOST:PORT of B's board's link")
    lead.add_argument("--deadline-ms", type=float, required=True)
    lead.add_argument("--reconnect-s", type=float, default=1.0)
    lead.add_argument("--output", required=True)
    lead.add_argument("--timing", default=None)
    lead.add_argument("--batch", type=int, default=None)
    lead.add_argument("--device", type=int, default=0)
    args = parser.parse_args(argv)
    if args.role is None:
        parser.error("give a role: serve (B's board) or lead (A's board)")
    if args.timing is None:
        base = args.output if args.role == "lead" else args.model
        args.timing = os.path.join(os.path.dirname(os.path.abspath(base)), "timing.json")
    return args


def say(line):
    sys.stdout.write("%s: %s\n" % (PROG, line))
    sys.stdout.flush()


def open_session(args):
    head = read_model_head(args.model)
    acl = import_acl()
    if head[:8] == SIM_OM_MAGIC and not is_sim_acl(acl):
        raise UsageError("%s: %s" % (args.model, SIM_OM_ON_REAL_BOARD))
    session = ModelSession(acl, args.model, args.device)
    return session, ("sim" if is_sim_acl(acl) else "real")


def run_rows(session, rows):
    """Every output of the model for these rows (padded to the model's batch), trimmed back, and the execute time."""
    batch = session.input.batch
    count = rows.shape[0]
    padded = rows
    if count != batch:
        padded = np.zeros((batch,) + tuple(rows.shape[1:]), dtype=rows.dtype)
        padded[:count] = rows
    outputs, seconds = session.run_batch(np.ascontiguousarray(padded))
    return [o[:count].astype(np.float32) for o in outputs], seconds[1]


def percentiles(values_s):
    if not values_s:
        return None
    ms = np.array(values_s) * 1000.0
    return {"count": int(ms.size), "p50": round(float(np.percentile(ms, 50)), 4),
            "p90": round(float(np.percentile(ms, 90)), 4), "p99": round(float(np.percentile(ms, 99)), 4),
            "mean": round(float(ms.mean()), 4), "max": round(float(ms.max()), 4)}


# --- B's board --------------------------------------------------------------------------------------------

def serve(args):
    key = link.read_key(args.key)
    session, acl_kind = open_session(args)
    stats = {"connections": 0, "refused": 0, "requests": 0, "rows": 0, "execute_s": []}
    listener = None
    try:
        session.open()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((args.bind, args.port))
        listener.listen(4)
        say("listening on port %d (model %s, acl %s)" % (listener.getsockname()[1], args.model, acl_kind))
        watch = [sys.stdin] if args.until_stdin_closes else []
        why = serve_loop(args, session, listener, key, watch, stats)
    finally:
        if listener is not None:
            listener.close()
        for warning in session.close():
            sys.stderr.write("%s: warning: release failed: %s\n" % (PROG, warning))
    report = {"role": "B", "acl": acl_kind, "stopped": why, "connections": stats["connections"],
              "refused": stats["refused"], "requests": stats["requests"], "rows": stats["rows"],
              "model_load_ms": round(session.load_ms or 0.0, 3), "execute_ms": percentiles(stats["execute_s"]),
              "python": platform.python_version()}
    write_atomically(args.timing, lambda f: f.write((json.dumps(report, indent=2) + "\n").encode("utf-8")))
    say("stopped (%s): %d requests, %d rows, %d connections, %d refused"
        % (why, stats["requests"], stats["rows"], stats["connections"], stats["refused"]))
    return 0


def serve_loop(args, session, listener, key, watch, stats):
    """Accept A, answer its requests; returns why it stopped."""
    last = time.time()
    while True:
        ready = select.select([listener] + watch, [], [], 1.0)[0]
        if watch and watch[0] in ready and not os.read(watch[0].fileno(), 4096):
            return "its SSH session ended"
        if listener not in ready:
            if time.time() - last > args.idle_s:
                return "idle for %g s" % args.idle_s
            continue
        conn, peer = listener.accept()
        conn.settimeout(10.0)
        try:
            channel = link.server_handshake(conn, key)
        except (link.LinkError, socket.timeout) as e:
            stats["refused"] += 1
            say("refused a connection from %s: %s" % (peer[0], e))
            conn.close()
            continue
        stats["connections"] += 1
        say("A's board connected from %s" % peer[0])
        try:
            if answer_requests(session, channel, watch, stats):
                return "A said goodbye"
        except (link.LinkError, socket.timeout) as e:
            say("connection from %s ended: %s" % (peer[0], e))
        except EOFError:
            return "its SSH session ended"
        finally:
            channel.close()
        last = time.time()


def answer_requests(session, channel, watch, stats):
    """Serve one connection; True when A said goodbye, False when it went away."""
    sample_shape = (session.input.batch,) + tuple(session.input.dims[1:])
    dtype = np.dtype(session.input.dtype)
    channel.sock.settimeout(None)
    while True:
        ready = select.select([channel.sock] + watch, [], [], 1.0)[0]
        if watch and watch[0] in ready and not os.read(watch[0].fileno(), 4096):
            raise EOFError()
        if channel.sock not in ready:
            continue
        kind, payload = channel.receive()
        if kind == link.BYE:
            return True
        if kind != link.REQUEST:
            raise link.AuthError("unexpected message kind %d" % kind)
        first, rows, data = link.parse_rows(payload)
        expected = rows * int(np.prod(sample_shape[1:])) * dtype.itemsize
        if rows < 1 or rows > sample_shape[0] or len(data) != expected:
            raise link.AuthError("a request of %d rows in %d bytes does not fit the model (%s %s per row)"
                                 % (rows, len(data), sample_shape[1:], dtype))
        inputs = np.frombuffer(data, dtype=dtype).reshape((rows,) + sample_shape[1:])
        outputs, execute_s = run_rows(session, inputs)
        stats["requests"] += 1
        stats["rows"] += rows
        stats["execute_s"].append(execute_s)
        channel.send(link.ANSWER, link.rows_payload(first, rows, np.ascontiguousarray(outputs[0])))


# --- A's board --------------------------------------------------------------------------------------------

class Peer(object):
    """B as A's board sees it: connected or not, with the reason it is not; reconnects at most every reconnect_s."""

    def __init__(self, host, port, key, connect_timeout_s, reconnect_s):
        self.address = (host, port)
        self.key = key
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_s = reconnect_s
        self.channel = None
        self.last_attempt = None
        self.down_reason = 1
        self.down_detail = "not connected yet"
        self.connects = 0

    def _connect(self):
        now = time.time()
        if self.last_attempt is not None and now - self.last_attempt < self.reconnect_s:
            return False
        self.last_attempt = now
        sock = None
        try:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.channel = link.client_handshake(sock, self.key)
            self.connects += 1
            return True
        except link.AuthError as e:
            self._down(4, str(e), sock)
        except (link.LinkError, socket.timeout, OSError, IOError) as e:
            self._down(1, "cannot reach %s:%d: %s" % (self.address[0], self.address[1],
                                                       getattr(e, "strerror", None) or e), sock)
        return False

    def _down(self, reason, detail, sock=None):
        if self.channel is not None:
            self.channel.close()
        elif sock is not None:
            sock.close()
        self.channel = None
        self.down_reason, self.down_detail = reason, detail

    def request(self, first, rows):
        """Send rows to B; False (with down_reason) when there is no link."""
        if self.channel is None and not self._connect():
            return False
        try:
            self.channel.sock.settimeout(self.connect_timeout_s)
            self.channel.send(link.REQUEST, link.rows_payload(first, rows.shape[0], np.ascontiguousarray(rows)))
            return True
        except (link.LinkError, socket.timeout) as e:
            self._down(3, "link lost while sending: %s" % e)
            return False

    def answer(self, first, rows, deadline):
        """(B's nodes for these rows, 0) when they come before `deadline` (time.time()), else (None, reason)."""
        while True:
            left = deadline - time.time()
            if left <= 0:
                return None, 2
            try:
                self.channel.sock.settimeout(left)
                kind, payload = self.channel.receive()
            except socket.timeout:
                # the frame may be half read: the stream can no longer be trusted, start a new connection later
                self._down(2, "B missed the deadline")
                self.last_attempt = None
                return None, 2
            except link.AuthError as e:
                self._down(4, str(e))
                return None, 4
            except link.LinkError as e:
                self._down(3, "link lost: %s" % e)
                return None, 3
            got_first, got_rows, data = link.parse_rows(payload)
            if kind != link.ANSWER or got_first < first:
                continue  # a late answer to an earlier request
            if got_first != first or got_rows != rows or len(data) % (4 * rows):
                self._down(5, "B answered rows %d+%d for %d+%d" % (got_first, got_rows, first, rows))
                return None, 5
            return np.frombuffer(data, dtype=np.float32).reshape(rows, -1), 0

    def bye(self):
        if self.channel is not None:
            try:
                self.channel.send(link.BYE, b"")
            except (link.LinkError, socket.timeout):
                pass
            self.channel.close()
            self.channel = None


def load_head(path):
    try:
        with np.load(path, allow_pickle=False) as head:
            weight, bias = head["weight"].astype(np.float32), head["bias"].astype(np.float32)
    except (OSError, IOError, KeyError, ValueError) as e:
        raise UsageError("cannot read the merge head %s: %s" % (path, e))
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise UsageError("the merge head %s has weight %s and bias %s: expected [C, nodes_a + nodes_b] and [C]"
                         % (path, weight.shape, bias.shape))
    return weight, bias


def parse_peer(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError("--peer %r: expected HOST:PORT" % text)
    return host.strip("[]"), int(port)


def lead(args):
    if not args.deadline_ms > 0:
        raise UsageError("--deadline-ms must be > 0")
    inputs = load_inputs(args.input)
    weight, bias = load_head(args.head)
    key = link.read_key(args.key)
    host, port = parse_peer(args.peer)
    session, acl_kind = open_session(args)
    peer = Peer(host, port, key, max(args.deadline_ms / 1000.0, 0.05), args.reconnect_s)
    count = inputs.shape[0]
    try:
        session.open()
        check_inputs_fit(inputs, args.input, session.input, args.batch, session.profiles)
        if len(session.outputs) != 2:
            raise UsageError("model A must have two outputs (logits, nodes); %s has %d"
                             % (args.model, len(session.outputs)))
        nodes_a_count = session.outputs[1].dims[1]
        if weight.shape[1] <= nodes_a_count:
            raise UsageError("the merge head takes %d nodes, A gives %d: no room for B's" % (weight.shape[1], nodes_a_count))
        result = lead_loop(session, peer, inputs, weight, bias, args)
    finally:
        peer.bye()
        for warning in session.close():
            sys.stderr.write("%s: warning: release failed: %s\n" % (PROG, warning))
    logits, logits_a, nodes_a, mode, reason, timing = result
    report = lead_report(args, session, acl_kind, mode, reason, timing, peer)
    write_atomically(args.output, lambda f: np.savez(f, logits=logits, logits_a=logits_a, nodes_a=nodes_a,
                                                     mode=mode, reason=reason))
    write_atomically(args.timing, lambda f: f.write((json.dumps(report, indent=2) + "\n").encode("utf-8")))
    say("done: %d samples, %d combined, %d by A alone; latency p50 combined %s ms, A alone %s ms (acl %s); wrote %s"
        % (count, report["combined"], report["a_alone"], _p50(report["latency_ms"]["combined"]),
           _p50(report["latency_ms"]["a_alone"]), acl_kind, args.output))
    return 0


def _p50(stats):
    return "n/a" if not stats else "%.3f" % stats["p50"]


def lead_loop(session, peer, inputs, weight, bias, args):
    batch = args.batch or session.input.batch
    count = inputs.shape[0]
    classes = weight.shape[0]
    logits = np.zeros((count, classes), dtype=np.float32)
    logits_a = np.zeros((count, classes), dtype=np.float32)
    nodes_a = None
    mode = np.zeros(count, dtype=np.int8)
    reason = np.zeros(count, dtype=np.int8)
    timing = {"combined": [], "a_alone": [], "execute_a": [], "round_trip": []}
    deadline_s = args.deadline_ms / 1000.0
    last_print, current = 0.0, None
    for first in range(0, count, batch):
        last = min(first + batch, count)
        rows = np.ascontiguousarray(inputs[first:last])
        started = time.time()
        sent = peer.request(first, rows)
        outputs, execute_s = run_rows(session, rows)
        timing["execute_a"].append(execute_s)
        if nodes_a is None:
            nodes_a = np.zeros((count, outputs[1].shape[1]), dtype=np.float32)
        logits_a[first:last], nodes_a[first:last] = outputs[0], outputs[1]
        nodes_b, why = peer.answer(first, last - first, started + deadline_s) if sent else (None, peer.down_reason)
        if nodes_b is not None and nodes_b.shape[1] + outputs[1].shape[1] != weight.shape[1]:
            nodes_b, why = None, 5
        if nodes_b is not None:
            timing["round_trip"].append(time.time() - started)
            joined = np.concatenate([outputs[1], nodes_b], axis=1)
            logits[first:last] = joined.dot(weight.T) + bias
            mode[first:last] = COMBINED
        else:
            logits[first:last] = outputs[0]
            reason[first:last] = why
        timing["combined" if nodes_b is not None else "a_alone"].append(time.time() - started)
        state = (COMBINED, 0) if nodes_b is not None else (A_ALONE, why)
        if state != current:
            detail = "" if nodes_b is not None else " (%s: %s)" % (REASONS[why], peer.down_detail)
            say("sample %d: %s from here%s" % (first, "combined" if nodes_b is not None else "A alone", detail))
            current = state
        now = time.time()
        if now - last_print >= PROGRESS_EVERY_S or last == count:
            last_print = now
            say("%d/%d samples, %d combined, %d by A alone" % (last, count, int(mode[:last].sum()),
                                                                last - int(mode[:last].sum())))
    return logits, logits_a, nodes_a, mode, reason, timing


def mode_ranges(mode):
    """[[first, last, mode], ...]: runs of samples answered the same way (last inclusive)."""
    ranges, start = [], 0
    for i in range(1, len(mode) + 1):
        if i == len(mode) or mode[i] != mode[start]:
            ranges.append([start, i - 1, "combined" if mode[start] == COMBINED else "a_alone"])
            start = i
    return ranges


def lead_report(args, session, acl_kind, mode, reason, timing, peer):
    reasons = {}
    for code in sorted(set(int(r) for r in reason[mode == A_ALONE])):
        reasons[REASONS[code]] = int(((reason == code) & (mode == A_ALONE)).sum())
    return {"role": "A", "acl": acl_kind, "samples": int(mode.size), "combined": int(mode.sum()),
            "a_alone": int(mode.size - mode.sum()), "a_alone_reasons": reasons, "modes": mode_ranges(mode),
            "deadline_ms": args.deadline_ms, "batch": args.batch or session.input.batch,
            "model_load_ms": round(session.load_ms or 0.0, 3), "connects": peer.connects,
            # per execution, from sending to B until the answer: B's round trip included for "combined"
            "latency_ms": {"combined": percentiles(timing["combined"]), "a_alone": percentiles(timing["a_alone"]),
                           "execute_a": percentiles(timing["execute_a"]),
                           "round_trip_b": percentiles(timing["round_trip"])},
            "python": platform.python_version()}


def main(argv=None):
    args = parse_args(argv)
    try:
        return serve(args) if args.role == "serve" else lead(args)
    except AclError as e:
        return _fail(e, 1)
    except (UsageError, ModelError, link.AuthError) as e:
        return _fail(e, 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message, code):
    sys.stdout.flush()
    sys.stderr.write("%s: error: %s\n" % (PROG, message))
    return code


if __name__ == "__main__":
    sys.exit(main())
