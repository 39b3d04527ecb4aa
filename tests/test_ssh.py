"""atlas/ssh.py against a real OpenSSH sshd (the sim board): quoting, atomic uploads, host keys, auth, faults."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from atlas.sim.sim_board import ensure_key_pair, start_board, stop_board
from atlas.ssh import (PASSWORD_ENV, AuthenticationError, BoardAddress, BoardConfigError, BoardSession,
                       BoardUnreachableError, ChangedHostKeyError, HostResolveError, RemoteCommandError,
                       RemoteFileError, RemoteTimeoutError, UnknownHostKeyError, open_board, parse_board_spec,
                       remote_command, resolve_board)
from atlas.ssh import transfer
from sshd_util import accepted_logins, openssh_fingerprint, running_board, session, write_known_hosts
from tcp_proxy import TcpProxy


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    with running_board(tmp_path_factory.mktemp("board"), "board") as info:
        yield info


@pytest.fixture(autouse=True)
def no_personal_ssh_setup(tmp_path, monkeypatch):
    """No ~/.ssh keys, agent or password from the machine running the tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


@pytest.fixture
def remote_dir(board):
    path = board.root / f"t-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- addresses ------------------------------------------------------------------------------------------

def test_board_spec_forms_are_parsed():
    assert parse_board_spec("root@10.0.0.2:2222") == ("root", "10.0.0.2", 2222)
    assert parse_board_spec("board") == (None, "board", None)
    assert parse_board_spec("HwHiAiUser@192.168.1.2") == ("HwHiAiUser", "192.168.1.2", None)
    assert parse_board_spec("[fe80::1]:2200") == (None, "fe80::1", 2200)
    assert parse_board_spec("u@fe80::1") == ("u", "fe80::1", None)
    assert parse_board_spec("ssh://u@h:23") == ("u", "h", 23)


@pytest.mark.parametrize("spec", ["root@h:0", "root@h:99999", "root@h:x", "@h", "a b", "[fe80::1"])
def test_bad_board_spec_is_a_config_error(spec):
    with pytest.raises(BoardConfigError) as e:
        resolve_board(spec, ssh_config=None)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_plain_spec_defaults_to_port_22_and_the_local_login(monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    address = resolve_board("10.1.2.3")
    assert (address.host, address.port, address.user, address.alias) == ("10.1.2.3", 22, "alice", None)
    assert address.host_key_name == "10.1.2.3"
    assert resolve_board("10.1.2.3:2222").host_key_name == "[10.1.2.3]:2222"


def test_ssh_config_alias_gives_hostname_user_port_identities_and_known_hosts(tmp_path):
    config = tmp_path / "config"
    config.write_text(f"""
Host atlas
  HostName 192.168.1.2
  User HwHiAiUser
  Port 2222
  IdentityFile ~/.ssh/atlas_key
  IdentityFile {tmp_path}/second_key
  UserKnownHostsFile "{tmp_path}/kh"
Host *
  IdentityFile ~/.ssh/id_default
""")
    address = resolve_board("atlas", config)
    assert (address.host, address.port, address.user, address.alias) == ("192.168.1.2", 2222, "HwHiAiUser", "atlas")
    home = os.environ["HOME"]
    assert address.identity_files == [f"{home}/.ssh/atlas_key", f"{tmp_path}/second_key", f"{home}/.ssh/id_default"]
    assert address.known_hosts == f"{tmp_path}/kh"
    assert address.display() == "HwHiAiUser@192.168.1.2:2222 (atlas)"
    # the spec's own user and port win, like `ssh -p 23 root@atlas`
    override = resolve_board("root@atlas:23", config)
    assert (override.user, override.port, override.host) == ("root", 23, "192.168.1.2")
    # `Host *` settings apply to any name, but do not make it an alias
    other = resolve_board("other", config)
    assert (other.alias, other.identity_files) == (None, [f"{home}/.ssh/id_default"])


def test_default_ssh_config_is_read_from_home(tmp_path):
    ssh_dir = Path(os.environ["HOME"]) / ".ssh"
    ssh_dir.mkdir(parents=True)
    (ssh_dir / "config").write_text("Host b\n  HostName 10.9.9.9\n  Port 2022\n")
    address = resolve_board("b")
    assert (address.host, address.port, address.alias) == ("10.9.9.9", 2022, "b")
    assert resolve_board("plainhost").alias is None


def test_identity_option_is_offered_before_the_config_identities(tmp_path):
    config = tmp_path / "config"
    config.write_text("Host b\n  IdentityFile /keys/from_config\n")
    session = open_board("b", ssh_config=str(config), identities=["/keys/mine"])
    assert session.address.identity_files == ["/keys/mine", "/keys/from_config"]


@pytest.mark.parametrize("name, text, message", [
    ("b", "Host b\n  ProxyCommand nc %h %p\n", "ProxyCommand .* not supported; use ProxyJump"),
    ("a", "Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n", "ProxyJump chain longer"),
    ("board", "Include ~no-such-user-here/x\n", "cannot expand ~no-such-user-here/x"),
    ("board", "Include {config}\n", "Include nesting deeper than 16"),  # a file that includes itself
    ("q", 'Host "q\n  HostName 10.0.0.1\n', "cannot read the Host line: No closing quotation"),
])
def test_unusable_ssh_config_is_a_clear_line(tmp_path, name, text, message):
    config = tmp_path / "config"
    config.write_text(text.format(config=config))
    with pytest.raises(BoardConfigError, match=message):
        resolve_board(name, config)


def test_missing_ssh_config_file_is_a_clear_line(tmp_path):
    with pytest.raises(BoardConfigError, match="ssh config file .* not found"):
        resolve_board("b", tmp_path / "nope")


def test_proxyjump_chain_is_resolved_hop_by_hop(tmp_path):
    config = tmp_path / "config"
    config.write_text("Host t\n  HostName 10.0.0.3\n  ProxyJump u1@hop1:2201,hop2\n"
                      "Host hop2\n  HostName 10.0.0.2\n  User u2\n")
    address = resolve_board("t", config)
    assert address.proxy_jump == "u1@hop1:2201,hop2"
    assert (address.jump.host, address.jump.user) == ("10.0.0.2", "u2")
    assert (address.jump.jump.host, address.jump.jump.port, address.jump.jump.user) == ("hop1", 2201, "u1")
    assert address.jump.jump.jump is None


def test_include_lines_are_followed_like_openssh_does(tmp_path):
    ssh_dir = Path(os.environ["HOME"]) / ".ssh"
    (ssh_dir / "config.d").mkdir(parents=True)
    (ssh_dir / "config.d" / "20-lab").write_text("Host board\n  HostName 10.0.0.20\n  Port 2020\n")
    (ssh_dir / "config.d" / "10-desk").write_text("Host board desk\n  HostName 10.0.0.10\n")
    (tmp_path / "abs.conf").write_text("Host far\n  HostName 10.0.0.99\n")
    config = tmp_path / "config"
    config.write_text(f'Include config.d/* "{tmp_path}/abs.conf" no-such-file\nUser fromtop\n'
                      "Host board\n  User later\n")
    board = resolve_board("board", config)
    # files in lexical order, first value wins; the line after the Include applies to every host again
    assert (board.host, board.port, board.user, board.alias) == ("10.0.0.10", 2020, "fromtop", "board")
    assert resolve_board("far", config).host == "10.0.0.99"
    assert resolve_board("desk", config).alias == "desk"


def test_include_in_a_host_block_takes_plain_options_and_refuses_host_lines(tmp_path):
    (tmp_path / "opts").write_text("Port 2999\n")
    (tmp_path / "hosts").write_text("Host x\n  Port 1\n")
    config = tmp_path / "config"
    config.write_text(f"Host board\n  HostName 10.0.0.5\n  Include {tmp_path}/opts\n")
    assert resolve_board("board", config).port == 2999
    config.write_text(f"Host board\n  Include {tmp_path}/hosts\n")
    with pytest.raises(BoardConfigError, match="inside a Host or Match block.*move the Include line above"):
        resolve_board("board", config)


def test_match_blocks_do_not_break_alias_lookup(tmp_path):
    (tmp_path / "opts").write_text("Port 2999\n")
    config = tmp_path / "config"
    config.write_text(f"Host q r\n  HostName 10.0.0.7\nMatch originalhost q\n  Include {tmp_path}/opts\n")
    address = resolve_board("q", config)
    assert (address.host, address.port, address.alias) == ("10.0.0.7", 2999, "q")
    assert (resolve_board("r", config).port, resolve_board("r", config).alias) == (22, "r")


def test_include_after_host_star_is_spliced(tmp_path):
    (tmp_path / "hosts").write_text("Host lab\n  HostName 10.0.0.8\n")
    config = tmp_path / "config"
    config.write_text(f"Host *\n  User HwHiAiUser\nInclude {tmp_path}/hosts\n")
    address = resolve_board("lab", config)
    assert (address.host, address.user, address.alias) == ("10.0.0.8", "HwHiAiUser", "lab")


# --- remote commands ------------------------------------------------------------------------------------

def test_remote_command_quotes_every_word():
    line = remote_command(["printf", "%s\n", "a b; rm -rf /", "$(id)"], env={"X": "1 2"}, cwd="/a dir")
    assert line == "cd '/a dir' && env 'X=1 2' printf '%s\n' 'a b; rm -rf /' '$(id)'"
    assert shlex.split(line.split(" && ", 1)[1]) == ["env", "X=1 2", "printf", "%s\n", "a b; rm -rf /", "$(id)"]
    with pytest.raises(TypeError):
        remote_command("echo hi")  # a string would be split by the shell: refused
    with pytest.raises(ValueError):
        remote_command(["true"], env={"A;B": "x"})


def test_argv_with_shell_metacharacters_arrives_verbatim(board):
    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    argv = ["printf", "%s\n", f"a b; touch {marker}", "$(id)", "`id`", "'quoted' \"double\"", "*"]
    with session(board) as s:
        result = s.run(argv)
    assert result.stdout == f"a b; touch {marker}\n$(id)\n`id`\n'quoted' \"double\"\n*\n"
    assert result.exit_status == 0
    assert not marker.exists()


def test_env_and_cwd_reach_the_command_without_expansion(board, remote_dir):
    (remote_dir / "a dir").mkdir(parents=True)
    with session(board) as s:
        result = s.run(["sh", "-c", 'printf "%s|%s" "$VALUE" "$(pwd)"'], env={"VALUE": "x y;$(id)"},
                       cwd=str(remote_dir / "a dir"))
    assert result.stdout == f"x y;$(id)|{remote_dir / 'a dir'}"


def test_nonzero_exit_raises_with_status_and_stderr_tail(board):
    with session(board) as s:
        with pytest.raises(RemoteCommandError) as e:
            s.run(["sh", "-c", "echo progress; echo 'no such model' >&2; exit 3"])
        unchecked = s.run(["sh", "-c", "exit 5"], check=False)
    assert e.value.exit_status == 3 and e.value.exit_code == 1
    assert "exit 3" in str(e.value) and "no such model" in str(e.value) and "\n" not in str(e.value)
    assert unchecked.exit_status == 5


def test_output_lines_stream_before_the_command_ends(board):
    arrivals = []
    with session(board) as s:
        started = time.monotonic()
        result = s.run(["sh", "-c", "echo first; echo warn >&2; sleep 0.4; echo last"],
                       output=lambda line: arrivals.append((line, time.monotonic() - started)))
    lines = dict(arrivals)
    assert set(lines) == {"first", "warn", "last"}
    assert lines["first"] < lines["last"] - 0.3  # arrived while the command was still sleeping
    assert result.stdout == "first\nlast\n" and result.stderr == "warn\n"


def test_command_timeout_is_a_clear_error(board):
    with session(board) as s:
        started = time.monotonic()
        with pytest.raises(RemoteTimeoutError, match="timed out after 0.3 s: sleep 5") as e:
            s.run(["sleep", "5"], timeout=0.3)
        assert time.monotonic() - started < 2
        assert s.run(["echo", "still usable"]).stdout == "still usable\n"
    assert e.value.exit_code == 3


def test_home_is_the_board_root_and_makedirs_works(board, remote_dir):
    with session(board) as s:
        assert s.home() == str(board.root)
        s.makedirs(str(remote_dir / "x y" / "z"))
    assert (remote_dir / "x y" / "z").is_dir()


def test_relative_remote_paths_are_a_programming_error(board):
    with session(board) as s, pytest.raises(ValueError, match="absolute"):
        s.put(__file__, "relative/path")


# --- files ----------------------------------------------------------------------------------------------

def test_put_skips_a_file_whose_sha256_matches_and_replaces_a_changed_one(board, remote_dir, tmp_path):
    local = tmp_path / "model.om"
    local.write_bytes(b"first version" * 1000)
    remote = str(remote_dir / "sub" / "model.om")  # parent folders are created
    with session(board) as s:
        first = s.put(local, remote)
        second = s.put(local, remote)
        local.write_bytes(b"second version" * 1000)
        third = s.put(local, remote)
        assert s.sha256(remote) == third.sha256
    assert (first.sent, first.bytes_sent) == (True, 13000)
    assert (second.sent, second.bytes_sent) == (False, 0)
    assert (third.sent, third.bytes_sent) == (True, 14000)
    assert (remote_dir / "sub" / "model.om").read_bytes() == b"second version" * 1000
    assert os.listdir(remote_dir / "sub") == ["model.om"]  # no temp file left


def test_put_keeps_the_file_mode(board, remote_dir, tmp_path):
    local = tmp_path / "run.sh"
    local.write_text("#!/bin/sh\necho ok\n")
    local.chmod(0o750)
    with session(board) as s:
        s.put(local, str(remote_dir / "run.sh"))
    assert (remote_dir / "run.sh").stat().st_mode & 0o777 == 0o750


def test_put_of_a_missing_local_file_is_a_clear_line(board, remote_dir, tmp_path):
    with session(board) as s, pytest.raises(RemoteFileError, match="cannot upload .*nope"):
        s.put(tmp_path / "nope", str(remote_dir / "x"))


def test_large_put_shows_a_progress_bar(board, remote_dir, tmp_path, capsys):
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom((1 << 20) + 1))
    with session(board) as s:
        s.put(local, str(remote_dir / "big.bin"))
    assert "big.bin" in capsys.readouterr().err


def test_get_downloads_atomically_and_a_missing_file_is_a_clear_line(board, remote_dir, tmp_path):
    remote_dir.mkdir()
    (remote_dir / "outputs.npy").write_bytes(b"\x93NUMPY" + os.urandom(5000))
    local = tmp_path / "board" / "outputs.npy"
    with session(board) as s:
        s.get(str(remote_dir / "outputs.npy"), local)
        assert local.read_bytes() == (remote_dir / "outputs.npy").read_bytes()
        with pytest.raises(RemoteFileError, match="timing.json not found"):
            s.get(str(remote_dir / "timing.json"), tmp_path / "board" / "outputs.npy")
    assert local.read_bytes() == (remote_dir / "outputs.npy").read_bytes()  # untouched by the failed get
    assert os.listdir(tmp_path / "board") == ["outputs.npy"]  # no temp file left


def test_get_that_times_out_is_retried_and_lands_whole(board, remote_dir, tmp_path, monkeypatch):
    remote_dir.mkdir()
    (remote_dir / "outputs.npy").write_bytes(os.urandom(100_000))
    read_file, calls = transfer.RemoteFiles._read_file, []

    def stalls_once(self, *args):
        calls.append(args)
        if len(calls) == 1:
            raise TimeoutError("timed out")  # what a channel silent for IO_TIMEOUT_S raises
        return read_file(self, *args)

    monkeypatch.setattr(transfer.RemoteFiles, "_read_file", stalls_once)
    messages = []
    with session(board, backoff_s=0.01, log=messages.append) as s:
        s.get(str(remote_dir / "outputs.npy"), tmp_path / "outputs.npy")
    assert len(calls) == 2 and s.retry_count == 1 and "download of outputs.npy: timed out; retry 1/4" in messages[0]
    assert (tmp_path / "outputs.npy").read_bytes() == (remote_dir / "outputs.npy").read_bytes()
    assert os.listdir(tmp_path) == ["outputs.npy"]  # the stalled attempt's temp file is gone


def test_sha256_on_the_board_with_sha256sum_and_with_the_python3_fallback(board, remote_dir, tmp_path):
    remote_dir.mkdir()
    name = remote_dir / "odd name\\with backslash"
    name.write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with session(board) as s:
        assert s.sha256(str(name)) == expected
        s._files.missing_tools.add("sha256sum")  # what a board without coreutils' sha256sum gets
        assert s.sha256(str(name)) == expected
        assert s.sha256(str(remote_dir / "missing")) is None


def test_large_files_are_hashed_with_python3_first_and_a_missing_tool_is_skipped(board, remote_dir, monkeypatch):
    remote_dir.mkdir()
    small, large = remote_dir / "small", remote_dir / "large"
    small.write_bytes(b"abc")
    large.write_bytes(b"abc" * 1000)
    monkeypatch.setattr(transfer, "FAST_HASH_MIN_BYTES", 1000)
    monkeypatch.setitem(transfer._HASH_ARGV, "sha256sum", ["no-such-sha256sum"])  # exits 127, as if not installed
    with session(board) as s:
        assert s.sha256(str(large)) == hashlib.sha256(b"abc" * 1000).hexdigest()
        assert s._files.missing_tools == set()  # python3 came first: sha256sum was never tried
        assert s.sha256(str(small)) == hashlib.sha256(b"abc").hexdigest()
        assert s._files.missing_tools == {"sha256sum"}  # tried first for a small file, then python3
        monkeypatch.setitem(transfer._HASH_ARGV, "python3", ["no-such-python3"])
        with pytest.raises(RemoteFileError, match="neither sha256sum nor python3 is installed"):
            s.sha256(str(large))


# --- host keys ------------------------------------------------------------------------------------------

def test_unknown_host_key_is_refused_with_its_fingerprint_and_nothing_runs(board, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    logins_before = accepted_logins(board)
    s = session(board, known_hosts=empty)
    with pytest.raises(UnknownHostKeyError) as e:
        s.run(["touch", str(board.root / "should-not-exist")])
    fingerprint = openssh_fingerprint(Path(f"{board.host_key}.pub"))
    assert e.value.fingerprint == fingerprint
    assert fingerprint in str(e.value) and "--trust-new-host" in str(e.value) and str(empty) in str(e.value)
    assert e.value.exit_code == 2 and s.retry_count == 0
    assert not (board.root / "should-not-exist").exists()
    assert accepted_logins(board) == logins_before  # never authenticated
    assert empty.read_text() == ""


def test_trust_new_host_prints_and_records_the_fingerprint(board, tmp_path):
    known_hosts = tmp_path / "ssh" / "known_hosts"  # folder created too
    messages = []
    with session(board, known_hosts=known_hosts, trust_new_host=True, log=messages.append) as s:
        assert s.run(["echo", "ok"]).stdout == "ok\n"
    fingerprint = openssh_fingerprint(Path(f"{board.host_key}.pub"))
    assert any(fingerprint in m and "trusting new host key" in m for m in messages)
    # OpenSSH's own tools find the recorded line
    found = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{board.port}", "-f", str(known_hosts)],
                           capture_output=True, text=True)
    assert found.returncode == 0 and "ssh-ed25519" in found.stdout
    with session(board, known_hosts=known_hosts) as s:  # now known: no trust needed
        assert s.run(["true"]).exit_status == 0
    assert len(known_hosts.read_text().splitlines()) == 1


def test_trust_new_host_never_replaces_a_known_hosts_that_is_not_a_file(board):
    s = session(board, known_hosts=Path("/dev/null"), trust_new_host=True)
    with pytest.raises(BoardConfigError, match="known_hosts /dev/null is not a regular file"):
        s.connect()
    assert Path("/dev/null").is_char_device()


def test_hashed_known_hosts_entries_are_honoured(board, tmp_path):
    known_hosts = write_known_hosts(board, tmp_path / "known_hosts", board.port)
    subprocess.run(["ssh-keygen", "-H", "-f", str(known_hosts)], check=True, capture_output=True)
    assert known_hosts.read_text().startswith("|1|")
    with session(board, known_hosts=known_hosts) as s:
        assert s.run(["true"]).exit_status == 0


def test_changed_host_key_is_refused_even_with_trust_new_host(tmp_path):
    state = tmp_path / "rekeyed"
    info = start_board("rekeyed", state)
    try:
        old_known_hosts = tmp_path / "known_hosts"
        shutil.copy(info.known_hosts, old_known_hosts)
        old_known_hosts_text = old_known_hosts.read_text()
        old_fingerprint = openssh_fingerprint(Path(f"{info.host_key}.pub"))
        stop_board("rekeyed", state)
        info.host_key.unlink()  # the board was "re-installed": a new host key on the same address
        Path(f"{info.host_key}.pub").unlink()
        info = start_board("rekeyed", state)
        new_fingerprint = openssh_fingerprint(Path(f"{info.host_key}.pub"))
        assert new_fingerprint != old_fingerprint
        logins_before = accepted_logins(info)
        for trust in (False, True):
            s = session(info, port=info.port, known_hosts=old_known_hosts, trust_new_host=trust)
            with pytest.raises(ChangedHostKeyError) as e:
                s.run(["true"])
            message = str(e.value)
            assert "CHANGED" in message and old_fingerprint in message and new_fingerprint in message
            assert e.value.exit_code == 2 and s.retry_count == 0
        assert accepted_logins(info) == logins_before
        assert old_known_hosts.read_text() == old_known_hosts_text  # trust_new_host did not overwrite it
    finally:
        stop_board("rekeyed", state)


# --- authentication and unreachable boards ----------------------------------------------------------------

def test_wrong_key_is_an_auth_error_and_not_retried(board, tmp_path):
    wrong_key = tmp_path / "wrong_key"
    ensure_key_pair(wrong_key)
    with TcpProxy(board.port) as proxy:
        known_hosts = write_known_hosts(board, tmp_path / "known_hosts", proxy.port)
        address = BoardAddress(host="127.0.0.1", port=proxy.port, user=board.user,
                               identity_files=[str(wrong_key)], identities_only=True)
        s = BoardSession(address, known_hosts=known_hosts, retries=4, backoff_s=0.01, log=lambda m: None)
        with pytest.raises(AuthenticationError) as e:
            s.run(["true"])
        assert proxy.connections == 1  # one TCP connection: no retry
    assert s.connect_count == 1 and s.retry_count == 0
    message = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in message
    assert message.startswith(f"authentication failed for root@127.0.0.1:{proxy.port}")
    assert f"{wrong_key} (ssh-ed25519)" in message and "authorized_keys" in message


def test_missing_identity_file_is_named_in_the_auth_error(board, tmp_path):
    address = BoardAddress(host="127.0.0.1", port=board.port, user=board.user,
                           identity_files=[str(tmp_path / "no_such_key")], identities_only=True)
    s = BoardSession(address, known_hosts=board.known_hosts, log=lambda m: None)
    with pytest.raises(AuthenticationError, match="no_such_key \\(missing\\)"):
        s.connect()


def test_closed_port_is_a_clear_line_without_retries():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = BoardSession(BoardAddress(host="127.0.0.1", port=port, user="root"), retries=4, log=lambda m: None)
    started = time.monotonic()
    with pytest.raises(BoardUnreachableError) as e:
        s.connect()
    assert time.monotonic() - started < 1.0
    assert str(e.value) == f"cannot connect to root@127.0.0.1:{port}: connection refused " \
                           "(is sshd running there, is the port right?)"
    assert e.value.exit_code == 3 and s.retry_count == 0 and s.connect_count == 1


def test_silent_port_is_retried_then_given_up_with_exit_3():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP, never says a word
        port = silent.getsockname()[1]
        messages = []
        s = BoardSession(BoardAddress(host="127.0.0.1", port=port, user="root"), connect_timeout=0.3, retries=2,
                         backoff_s=0.01, log=messages.append)
        with pytest.raises(BoardUnreachableError) as e:
            s.connect()
    assert e.value.exit_code == 3 and "gave up after 2 retries" in str(e.value)
    assert s.connect_count == 3 and s.retry_count == 2 and len(messages) == 2


def test_unresolvable_host_name_is_a_clear_line_without_retries():
    s = BoardSession(BoardAddress(host="no-such-host.invalid", user="root"), retries=4, log=lambda m: None)
    started = time.monotonic()
    with pytest.raises(HostResolveError, match="cannot resolve host name 'no-such-host.invalid'") as e:
        s.connect()
    assert time.monotonic() - started < 5.0
    assert e.value.exit_code == 2 and s.retry_count == 0 and s.connect_count == 1


def test_password_comes_from_the_environment_and_never_reaches_logs(tmp_path, monkeypatch, caplog):
    password = f"pw-{uuid.uuid4().hex}"
    monkeypatch.setenv(PASSWORD_ENV, password)
    caplog.set_level(logging.DEBUG, logger="paramiko")
    messages = []
    with running_board(tmp_path / "pw", "pw", extra_config=["PasswordAuthentication yes"]) as info:
        address = BoardAddress(host="127.0.0.1", port=info.port, user=info.user, identities_only=True)
        s = BoardSession(address, known_hosts=info.known_hosts, log=messages.append)
        with pytest.raises(AuthenticationError) as e:
            s.connect()
        sshd_log = info.log.read_text()
    assert "Failed password for root" in sshd_log  # the password really was offered (root may not use one)
    assert "tried: password" in str(e.value)
    for text in [str(e.value), caplog.text, *messages, sshd_log]:
        assert password not in text


def test_password_is_not_asked_for_without_a_terminal(board, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    monkeypatch.setattr("getpass.getpass", lambda *a, **k: pytest.fail("prompted without a terminal"))
    address = BoardAddress(host="127.0.0.1", port=board.port, user=board.user, identities_only=True)
    with pytest.raises(AuthenticationError, match="the board accepts: publickey"):
        BoardSession(address, known_hosts=board.known_hosts, log=lambda m: None).connect()


def test_no_command_line_option_takes_a_password():
    from atlas.cli import build_parser

    for command in ("deploy", "om", "doctor"):
        parser = build_parser(command)._subparsers._group_actions[0].choices[command]
        options = {o for action in parser._actions for o in action.option_strings}
        assert {"--ssh-config", "--known-hosts", "--identity", "--trust-new-host"} <= options, command
        assert not [o for o in options if "pass" in o], command  # passwords: $ATLAS_KD_BOARD_PASSWORD or a prompt


# --- a flaky network ------------------------------------------------------------------------------------

@contextlib.contextmanager
def watching(folder: Path, name: str) -> Iterator[tuple[set[str], list[int]]]:
    """Looks at `folder` directly, as often as possible, until the block ends: every name seen there, and the
    size of `name` each time it was there."""
    seen_names, seen_sizes = set(), []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for entry in os.listdir(folder):
                seen_names.add(entry)
                if entry == name:
                    with contextlib.suppress(FileNotFoundError):
                        seen_sizes.append((folder / name).stat().st_size)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield seen_names, seen_sizes
    finally:
        done.set()
        watcher.join()


def test_put_survives_three_cuts_mid_upload_and_never_exposes_a_partial_file(board, remote_dir, tmp_path):
    payload = os.urandom(3 << 20)
    local = tmp_path / "model.om"
    local.write_bytes(payload)
    remote_dir.mkdir()
    real = remote_dir / "model.om"
    at_cuts = []  # what the board held right after each cut (new connections wait meanwhile)

    def on_cut(index: int) -> None:
        at_cuts.append(sorted(os.listdir(remote_dir)))

    messages = []
    with TcpProxy(board.port, cut_after=[1_000_000] * 3, on_cut=on_cut) as proxy:
        known_hosts = write_known_hosts(board, tmp_path / "known_hosts", proxy.port)
        with session(board, port=proxy.port, known_hosts=known_hosts, retries=4, backoff_s=0.01,
                     log=messages.append) as s, watching(remote_dir, "model.om") as (seen_names, seen_sizes):
            result = s.put(local, str(real), progress=False)
        assert (proxy.connections, proxy.cuts) == (4, 3)
    assert result.sent and result.retries == 3 and s.retry_count == 3
    assert result.bytes_sent > len(payload) + 3 * 500_000  # three partial attempts, then the whole file
    assert real.read_bytes() == payload
    assert os.listdir(remote_dir) == ["model.om"]  # the partial temp files were cleaned up
    assert len(at_cuts) == 3
    for listing in at_cuts:  # at each cut: a partial temp file, never the real name
        assert "model.om" not in listing
        assert len(listing) == 1 and listing[0].startswith(".model.om.") and listing[0].endswith(".part")
    assert all(size == len(payload) for size in seen_sizes)  # whenever the real name existed, it was whole
    assert any(n.endswith(".part") for n in seen_names)  # the watcher really looked during an upload
    retry_lines = [m for m in messages if "retry" in m]
    assert [m.split(" in ")[-1] for m in retry_lines] == ["0.01 s", "0.02 s", "0.04 s"]  # backoff doubles


def test_more_cuts_than_retries_give_up_with_exit_3_and_no_file(board, remote_dir, tmp_path):
    local = tmp_path / "model.om"
    local.write_bytes(os.urandom(2 << 20))
    with TcpProxy(board.port, cut_after=[600_000] * 3) as proxy:
        known_hosts = write_known_hosts(board, tmp_path / "known_hosts", proxy.port)
        s = session(board, port=proxy.port, known_hosts=known_hosts, retries=2, backoff_s=0.01)
        with pytest.raises(BoardUnreachableError) as e:
            s.put(local, str(remote_dir / "model.om"), progress=False)
        s.close()
    assert e.value.exit_code == 3 and "gave up after 2 retries" in str(e.value)
    assert not (remote_dir / "model.om").exists()
    assert [n for n in os.listdir(remote_dir) if n.endswith(".part")]  # the last attempt's, unreachable then
    with session(board) as direct:  # the next put of that file cleans it up
        direct.put(local, str(remote_dir / "model.om"), progress=False)
    assert os.listdir(remote_dir) == ["model.om"]


def test_command_is_run_again_after_a_dropped_connection(board, tmp_path):
    with TcpProxy(board.port) as proxy:
        known_hosts = write_known_hosts(board, tmp_path / "known_hosts", proxy.port)
        with session(board, port=proxy.port, known_hosts=known_hosts, backoff_s=0.01) as s:
            timer = threading.Timer(0.15, proxy.cut_all)
            timer.start()
            result = s.run(["sh", "-c", "sleep 0.4; echo done"])
            timer.join()
        assert proxy.connections == 2
    assert result.stdout == "done\n" and s.retry_count == 1


# --- free space -----------------------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_free_bytes_on_a_tmpfs_of_known_size(board, small_tmpfs, tmp_path):
    local = tmp_path / "one_mib.bin"
    local.write_bytes(os.urandom(1 << 20))
    with session(board) as s:
        assert s.free_bytes(str(small_tmpfs)) == 4 << 20
        assert s.free_bytes(str(small_tmpfs / "not" / "yet")) == 4 << 20  # nearest existing parent
        s.put(local, str(small_tmpfs / "one_mib.bin"), progress=False)
        assert s.free_bytes(str(small_tmpfs)) == 3 << 20


@pytest.mark.parametrize("mib", [5, 20])  # 5: found by the size check after the writes; 20: sshd's "Failure"
def test_upload_larger_than_the_free_space_is_a_clear_line_and_leaves_nothing(board, small_tmpfs, tmp_path, mib):
    local = tmp_path / "model.om"
    local.write_bytes(os.urandom(mib << 20))
    with session(board) as s, watching(small_tmpfs, "model.om") as (seen_names, _):
        with pytest.raises(RemoteFileError) as e:
            s.put(local, str(small_tmpfs / "model.om"), progress=False)
    assert "not enough space for model.om" in str(e.value) and f"needs {mib}.0 MiB" in str(e.value)
    assert str(e.value).startswith(f"board {s.display}: the board's disk is full: ")
    assert f"in {small_tmpfs}: " in str(e.value)  # the folder
    assert str(e.value).endswith(", 4.0 MiB free")  # measured after the partial temp file was removed
    assert e.value.exit_code == 2 and s.retry_count == 0
    assert any(n.startswith(".model.om.") and n.endswith(".part") for n in seen_names)  # there was a temp file
    assert os.listdir(small_tmpfs) == []  # and it was removed


# --- ProxyJump ------------------------------------------------------------------------------------------

def test_proxy_jump_reaches_a_board_through_another_sshd(tmp_path):
    with running_board(tmp_path / "jump", "jump") as jump, running_board(tmp_path / "target", "target") as target, \
            TcpProxy(jump.port) as proxy:  # counts what goes through the jump host
        known_hosts = write_known_hosts(jump, tmp_path / "known_hosts", proxy.port)
        known_hosts.write_text(known_hosts.read_text() + target.known_hosts.read_text())
        config = tmp_path / "ssh_config"
        config.write_text(f"Host jumphost\n  HostName 127.0.0.1\n  Port {proxy.port}\n  IdentityFile {jump.identity}\n"
                          f"  IdentitiesOnly yes\n"
                          f"Host board\n  HostName 127.0.0.1\n  Port {target.port}\n  IdentityFile {target.identity}\n"
                          f"  IdentitiesOnly yes\n  ProxyJump jumphost\n")
        local = tmp_path / "payload.bin"
        local.write_bytes(os.urandom(1 << 20))
        address = resolve_board("board", config)
        with BoardSession(address, known_hosts=known_hosts, log=lambda m: None) as s:
            assert s.home() == str(target.root)  # landed on the target, not on the jump host
            s.put(local, str(target.root / "payload.bin"), progress=False)
        assert (target.root / "payload.bin").read_bytes() == local.read_bytes()
        assert proxy.connections == 1 and proxy.bytes_up > 1 << 20  # the upload went through the jump host
        assert accepted_logins(jump) == 1 and accepted_logins(target) == 1


def test_unknown_jump_host_key_is_refused_too(tmp_path):
    with running_board(tmp_path / "jump", "jump") as jump, running_board(tmp_path / "target", "target") as target:
        config = tmp_path / "ssh_config"
        config.write_text(f"Host board\n  HostName 127.0.0.1\n  Port {target.port}\n  IdentityFile {target.identity}\n"
                          f"  ProxyJump root@127.0.0.1:{jump.port}\n")
        s = BoardSession(resolve_board("board", config), known_hosts=target.known_hosts, log=lambda m: None)
        with pytest.raises(UnknownHostKeyError, match=f"board root@127.0.0.1:{jump.port}: host key not in"):
            s.connect()
