"""Deploy a split run across two boards (`atlas-kd deploy --run R/split --board A=host1 --board B=host2`).

The input reaches A's board only. Both boards get their sub-model's .om, the split app (atlas/board/split/ beside
infer.py and acl_session.py) and the same fresh link key (`<remote run>/.link/link.key`, 0700 / 0600); A's board also
gets the golden inputs and the merge head. B's board starts `split_app.py serve` (it listens on split.link_port,
0: a free one) and lives as long as its SSH session; A's board then runs `split_app.py lead`, which runs A on every
input, sends the input to B, and joins B's nodes through the head when they arrive within split.deadline_ms, else
answers with A alone and says so per sample (outputs.npz `mode`, `reason`). The link is TCP with an HMAC handshake
and tags (atlas/board/split/split_link.py, docs/split.md); no shell runs between the boards.

Local results: `R/split/board/A/` (outputs.npz, timing.json, log.txt) and `board/B/` (timing.json, log.txt),
and deploy.json, whose "split" entry says which samples used which mode. A lost B is not a failure: the run
still answers every sample. Exit codes as deploy: 1 the app failed, 2 bad input, 3 a board unreachable at start.
"""
from __future__ import annotations

import re
import secrets
import tempfile
import threading
import time
from pathlib import Path

from atlas import run_folder as rf
from atlas.board_access import (BOARD_APP_DIR, board_session, check_runtime, preflight, remote_run_dir,
                                with_env_script)
from atlas.config import Config
from atlas.deploy import Bundle, board_label, load_bundle
from atlas.errors import UserError
from atlas.fileio import read_json, sha256_file, write_text

SPLIT_APP_DIR = BOARD_APP_DIR / "split"
SPLIT_APP_FILES = ("split_app.py", "split_link.py")
ROLES = (rf.SPLIT_A, rf.SPLIT_B)
LISTENING = re.compile(r"split_app\.py: listening on port (\d+)")
SERVER_START_S = 120.0  # B's board: loading its model before it listens (the emulator compiles it first)
SERVER_STOP_S = 20.0
SPACE_MARGIN = 1 << 20  # outputs, timing and logs


def board_roles(boards: list[str]) -> dict[str, str]:
    """{"A": spec, "B": spec} from `A=spec B=spec` (or two plain specs, A first)."""
    named = {}
    for spec in boards:
        role, sep, rest = spec.partition("=")
        if sep and role in ROLES:
            if role in named:
                raise UserError(f"--board {role}=... is given twice")
            named[role] = rest
    if not named and len(boards) == 2:
        named = dict(zip(ROLES, boards))
    if set(named) != set(ROLES) or len(boards) != 2:
        raise UserError("a split run runs on two boards: pass --board A=user@host1 --board B=user@host2 (A gets the "
                        f"inputs; B answers A), got {', '.join(boards) or 'none'}")
    return named


def load_bundles(run: rf.Run, cfg: Config) -> dict[str, Bundle]:
    """Each sub-model's bundle (its ordinary run folder, exported and built) plus the split app; A's with the
    inputs and the merge head, B's without inputs (they come over the link)."""
    rf.SplitRecord.read(run)
    bundles = {}
    for role in ROLES:
        sub = rf.Run(run / role)
        if not rf.ExportRecord.exists(sub):
            raise UserError(f"{sub}: not exported yet: run atlas-kd export --run {sub} and atlas-kd om --run {sub} "
                            "(--sim for sim boards) first")
        bundle = load_bundle(sub, cfg.deploy)
        app = [SPLIT_APP_DIR / name for name in SPLIT_APP_FILES]
        files = [(bundle.model, rf.REMOTE_MODEL)] + [(p, f"{rf.REMOTE_APP}/{p.name}") for p in bundle.app_files + app]
        if role == rf.SPLIT_A:
            files += [(bundle.inputs, rf.REMOTE_INPUTS), (run / rf.SPLIT_HEAD, rf.REMOTE_SPLIT_HEAD)]
        bundle.files = files
        bundle.digests = {local: sha256_file(local) for local, _ in files}
        bundle.name = f"{run.path.resolve().parent.name}-{rf.SPLIT}-{role}"
        bundles[role] = bundle
    if bundles[rf.SPLIT_A].inputs.suffix != ".npy":
        raise UserError(f"{bundles[rf.SPLIT_A].inputs}: the split app takes one input (.npy)")
    b_inputs = rf.ExportRecord.read(run / rf.SPLIT_B).board_inputs_path(run / rf.SPLIT_B)
    if sha256_file(b_inputs) != bundles[rf.SPLIT_A].digest(bundles[rf.SPLIT_A].inputs):
        raise UserError(f"{run / rf.SPLIT_A} and {run / rf.SPLIT_B} were exported with different golden inputs: "
                        "export both again with the same config")
    return bundles


class Board:
    """One of the two boards: its session, remote folder and deploy.json entry."""

    def __init__(self, role: str, spec: str, bundle: Bundle, run: rf.Run, cfg: Config, trust_new_host: bool, say):
        self.role, self.spec, self.bundle, self.cfg = role, spec, bundle, cfg
        self.local_dir = run / rf.BOARD / role
        self.say = lambda line: say(f"[{role}] {line}")
        self.session = board_session(spec, cfg.deploy, trust_new_host=trust_new_host, log=self.say)
        self.record: dict = {"role": role, "board": spec, "local_dir": str(self.local_dir.relative_to(run.path)),
                             "uploads": [], "status": "error"}
        self.remote = ""
        self.lines: list[str] = []

    def prepare(self, key_file: Path) -> None:
        s = self.session
        s.connect()
        self.record["address"] = s.display
        self.remote = self.record["remote_dir"] = remote_run_dir(s, self.cfg.deploy, self.bundle.name)
        report = self.record["preflight"] = preflight(s, self.remote, self.cfg.deploy)
        check_runtime(report, s.display)
        sim = self.bundle.sim_model
        if sim != bool(report.get("acl_sim")):
            raise UserError(f"board {s.display}: {self.bundle.model} is a {'simulated' if sim else 'real'} .om and "
                            f"this board's acl is {'real' if sim else 'the emulator (a sim board)'}: build the "
                            f"{'real' if sim else 'sim'} one with make om{'' if sim else ' SIM=1'}")
        files = self.bundle.files
        to_send = sum(local.stat().st_size for local, relative in files
                      if s.sha256(f"{self.remote}/{relative}") != self.bundle.digest(local))
        if report.get("free_bytes", 0) < to_send + SPACE_MARGIN:
            raise UserError(f"board {s.display}: not enough free space in {report.get('free_checked_at')}: the "
                            f"split bundle needs {(to_send + SPACE_MARGIN) / 2**20:.1f} MiB")
        for local, relative in files:
            put = s.put(local, f"{self.remote}/{relative}", progress=True)
            self.record["uploads"].append({"file": relative, "remote": put.remote, "sent": put.sent,
                                           "bytes_sent": put.bytes_sent, "bytes": local.stat().st_size,
                                           "sha256": put.sha256})
        link_dir = f"{self.remote}/{rf.REMOTE_LINK_DIR}"
        s.run(["mkdir", "-p", "-m", "700", link_dir])
        s.run(["chmod", "700", link_dir])
        s.put(key_file, f"{link_dir}/{rf.REMOTE_LINK_KEY}", progress=False)
        s.run(["chmod", "600", f"{link_dir}/{rf.REMOTE_LINK_KEY}"])
        s.run(["rm", "-f", *(f"{self.remote}/{name}" for name in (rf.REMOTE_OUTPUTS_NPZ, rf.REMOTE_TIMING))])
        self.record["bytes_sent"] = sum(u["bytes_sent"] for u in self.record["uploads"])

    def app(self, *words: str) -> list[str]:
        return with_env_script([self.cfg.deploy.python, f"{self.remote}/{rf.REMOTE_APP}/{SPLIT_APP_FILES[0]}", *words,
                                "--model", f"{self.remote}/{rf.REMOTE_MODEL}",
                                "--key", f"{self.remote}/{rf.REMOTE_LINK_DIR}/{rf.REMOTE_LINK_KEY}",
                                "--timing", f"{self.remote}/{rf.REMOTE_TIMING}"], self.cfg.deploy.env_script)

    def output(self, line: str) -> None:
        self.lines.append(line)
        self.say(line)

    def write_log(self) -> None:
        self.local_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.local_dir / rf.BOARD_LOG, "\n".join(self.lines) + ("\n" if self.lines else ""))


class Server(threading.Thread):
    """B's `split_app.py serve`, in its own SSH session for as long as it runs; `port` once it listens."""

    def __init__(self, board: Board):
        super().__init__(daemon=True)
        self.board, self.port, self.listening = board, None, threading.Event()
        self.error: str | None = None
        self.exit_status: int | None = None

    def line(self, text: str) -> None:
        self.board.output(text)
        match = LISTENING.search(text)
        if match and not self.listening.is_set():
            self.port = int(match.group(1))
            self.listening.set()

    def run(self) -> None:
        words = ["serve", "--port", str(self.board.cfg.split.link_port), "--until-stdin-closes"]
        try:
            result = self.board.session.run(self.board.app(*words), check=False, output=self.line)
            self.exit_status = result.exit_status
        except Exception as e:  # the board went away mid-run: A answers alone, which the run reports
            self.error = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        finally:
            self.listening.set()


def deploy_split(cfg: Config, run: str | Path | rf.Run, *, trust_new_host: bool = False, log=print) -> rf.DeployRecord:
    run = rf.as_run(run)
    specs = board_roles(list(cfg.deploy.boards))
    bundles = load_bundles(run, cfg)
    if board_label(specs[rf.SPLIT_A]) == board_label(specs[rf.SPLIT_B]):
        raise UserError(f"A and B name the same board ({specs[rf.SPLIT_A]}): the split runs across two")
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            log(line)

    t0 = time.perf_counter()
    boards = {role: Board(role, specs[role], bundles[role], run, cfg, trust_new_host, say) for role in ROLES}
    a, b = boards[rf.SPLIT_A], boards[rf.SPLIT_B]
    server = None
    try:
        with tempfile.TemporaryDirectory(prefix="atlas-kd-link-") as private:  # 0700: the key never lands elsewhere
            key_file = Path(private) / rf.REMOTE_LINK_KEY
            key_file.touch(mode=0o600)
            key_file.write_bytes(secrets.token_bytes(32))  # per deploy: a new key each time
            for board in (b, a):
                board.prepare(key_file)
        server = Server(b)
        server.start()
        if not server.listening.wait(SERVER_START_S) or server.port is None:
            raise UserError(f"board {b.session.display}: the split server did not start listening: "
                            f"{server.error or (b.lines[-1] if b.lines else 'no output')} (log: {b.local_dir / rf.BOARD_LOG})",
                            exit_code=1)
        link_host = cfg.split.link_host or b.session.address.host
        b.record["link"] = {"host": link_host, "port": server.port}
        words = ["lead", "--input", f"{a.remote}/{rf.REMOTE_INPUTS}", "--head", f"{a.remote}/{rf.REMOTE_SPLIT_HEAD}",
                 "--peer", f"{link_host}:{server.port}", "--deadline-ms", str(cfg.split.deadline_ms),
                 "--reconnect-s", str(cfg.split.reconnect_s), "--output", f"{a.remote}/{rf.REMOTE_OUTPUTS_NPZ}",
                 "--batch", str(a.bundle.batch)]
        argv = a.app(*words)
        a.record["app"] = {"argv": argv}
        result = a.session.run(argv, check=False, output=a.output)
        a.record["app"]["exit_status"] = result.exit_status
        a.write_log()
        if result.exit_status != 0:
            errors = [line for line in a.lines if "error:" in line] or a.lines[-1:] or ["no output"]
            raise UserError(f"board {a.session.display}: the split app failed (exit {result.exit_status}): "
                            f"{errors[-1].strip()} (log: {a.local_dir / rf.BOARD_LOG})", exit_code=1)
        for name in (rf.REMOTE_OUTPUTS_NPZ, rf.REMOTE_TIMING):
            a.session.get(f"{a.remote}/{name}", a.local_dir / name)
        a.record.update(status="ok", timing=read_json(a.local_dir / rf.BOARD_TIMING))
        stop_server(server, b)
    finally:
        for board in boards.values():
            if board.lines:
                board.write_log()
            board.session.close()
    timing = a.record["timing"]
    report = rf.DeployRecord({"run": run.path.name, "split": True, "model": rf.MODEL_OM,
                              "sim_model": a.bundle.sim_model, "batch": a.bundle.batch, "loop": 1,
                              "wall_s": time.perf_counter() - t0, "boards": [a.record, b.record],
                              "ok": a.record["status"] == "ok",
                              "split_modes": {"samples": timing["samples"], "combined": timing["combined"],
                                              "a_alone": timing["a_alone"], "reasons": timing["a_alone_reasons"],
                                              "ranges": timing["modes"], "deadline_ms": timing["deadline_ms"],
                                              "per_sample": f"{a.record['local_dir']}/{rf.BOARD_OUTPUTS_NPZ}"}})
    report.write(run)
    log(format_summary(report))
    return report


def stop_server(server: Server, b: Board) -> None:
    """A said goodbye, so B's server stops by itself; if B is still there after SERVER_STOP_S, closing its
    session ends it (it serves until its standard input closes). B's entry says how it ended."""
    server.join(SERVER_STOP_S)
    if server.is_alive():
        b.session.close()
        server.join(SERVER_STOP_S)
    if server.error:
        b.record.update(status="lost", error=server.error)
        return
    try:
        b.session.get(f"{b.remote}/{rf.REMOTE_TIMING}", b.local_dir / rf.BOARD_TIMING)
        b.record.update(status="ok", exit_status=server.exit_status, timing=read_json(b.local_dir / rf.BOARD_TIMING))
    except Exception as e:  # gone after answering: its figures are lost, A's are not
        b.record.update(status="lost", error=getattr(e, "message", None) or str(e))


def format_summary(report: dict) -> str:
    modes = report["split_modes"]
    a, b = report["boards"]
    lat = a["timing"]["latency_ms"]

    def p50(key: str) -> str:
        return "n/a" if not lat.get(key) else f"{lat[key]['p50']:.3f} ms"

    ranges = "; ".join(f"{first}-{last} {'combined' if mode == 'combined' else 'A alone'}"
                       for first, last, mode in modes["ranges"])
    reasons = ", ".join(f"{why}: {n}" for why, n in modes["reasons"].items()) or "none"
    acl = "sim board (emulator)" if a["timing"].get("acl") == "sim" else "real board"
    lines = [f"split deploy of {report['run']} in {report['wall_s']:.1f} s: A on {a.get('address')}, B on "
             f"{b.get('address')} ({b['status']}{': ' + b['error'] if b.get('error') else ''})",
             f"  {modes['samples']} samples: {modes['combined']} combined, {modes['a_alone']} by A alone "
             f"(why: {reasons}); none lost",
             f"  samples by mode: {ranges} (per sample: {modes['per_sample']} 'mode')",
             f"  latency per execution, {acl}: combined p50 {p50('combined')}, A alone p50 {p50('a_alone')} "
             f"(deadline {modes['deadline_ms']:g} ms)"]
    return "\n".join(lines)
