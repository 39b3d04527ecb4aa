"""Moving files to and from a board so that neither side ever holds a partial file under its real name:
uploads go to a temp name, are checked with sha256 on the board, then renamed; downloads land atomically."""
from __future__ import annotations

import contextlib
import os
import posixpath
import re
import secrets
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paramiko

from atlas import fileio
from atlas.ssh.commands import CommandResult, command_error
from atlas.ssh.errors import ConnectionLost, RemoteFileError, describe, tail

PROGRESS_MIN_BYTES = 1 << 20  # a progress bar only for files larger than this

# SFTP write requests of about 128 KiB (paramiko's put sends 32 KiB): a quarter of the requests and
# acknowledgements, each handled in Python. OpenSSH's sftp-server takes messages up to 256 KiB
# (SFTP_MAX_MSG_LENGTH, all versions).
WRITE_REQUEST_BYTES = 128 << 10

# SFTP read requests of 64 KiB (paramiko's get asks for 32 KiB): the most that every OpenSSH sftp-server
# answers in full (older ones cut longer reads to 64 KiB, which paramiko's prefetch then reads again one by one).
READ_REQUEST_BYTES = 64 << 10

# From this size the board hashes with python3 (hashlib: OpenSSL, which uses the CPU's SHA-256 instructions)
# before coreutils' sha256sum (portable C): on the sim board 0.19 s against 1.05 s for 200 MB.
FAST_HASH_MIN_BYTES = 16 << 20

# Python 3.6-safe (old boards): hashes argv[1] in 1 MiB blocks.
_PY_SHA256 = ("import hashlib, sys\n"
              "h = hashlib.sha256()\n"
              "with open(sys.argv[1], 'rb') as f:\n"
              "    for block in iter(lambda: f.read(1 << 20), b''):\n"
              "        h.update(block)\n"
              "print(h.hexdigest())\n")
_HASH_ARGV = {"sha256sum": ["sha256sum"], "python3": ["python3", "-c", _PY_SHA256]}  # + the file
_HASHING = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sha256")  # local files, beside their uploads


@dataclass
class PutResult:
    remote: str
    sent: bool  # False: the board already had a file with this sha256
    bytes_sent: int  # over all attempts (a retried upload counts every attempt)
    sha256: str
    retries: int = 0


@dataclass
class Upload:
    """A `put`: the local file as checked once, and what its attempts have done so far. Its sha256 is
    computed in a thread meanwhile (the board is asked whether it has the file, the bytes start to go)."""

    local: Path
    local_stat: os.stat_result
    hashing: Future  # of the local file's sha256 (hex)
    sent: bool = False
    bytes_sent: int = 0
    temp: str | None = None  # the temp name on the board while it may exist

    @classmethod
    def of(cls, local: str | Path) -> Upload:
        local = Path(local)
        try:
            local_stat = local.stat()
            if stat.S_ISREG(local_stat.st_mode):
                open(local, "rb").close()  # unreadable: this line now, not a failed upload later
        except OSError as e:
            raise RemoteFileError(f"cannot upload {local}: {e.strerror}") from None
        if not stat.S_ISREG(local_stat.st_mode):
            raise RemoteFileError(f"cannot upload {local}: not a regular file")
        return cls(local, local_stat, _HASHING.submit(fileio.sha256_file, local))

    @property
    def digest(self) -> str:
        """The local file's sha256 (hex), waiting for the thread that computes it."""
        try:
            return self.hashing.result()
        except OSError as e:
            raise RemoteFileError(f"cannot upload {self.local}: {e.strerror}") from None

    def result(self, remote: str, retries: int) -> PutResult:
        return PutResult(remote=remote, sent=self.sent, bytes_sent=self.bytes_sent, sha256=self.digest,
                         retries=retries)


def require_absolute(remote: str) -> None:
    if not isinstance(remote, str) or not remote.startswith("/"):
        raise ValueError(f"remote paths must be absolute (resolve them against BoardSession.home()): {remote!r}")


class RemoteFiles:
    """The file operations on one board, one attempt each: the session retries them and lends its SFTP
    client, its short commands and its view of the link as callables."""

    def __init__(self, display: str, *, sftp: Callable[[], paramiko.SFTPClient],
                 run_words: Callable[[list[str]], CommandResult], alive: Callable[[], bool],
                 is_transient: Callable[[Exception], bool]):
        self.display = display
        self._sftp = sftp
        self._run_words = run_words  # a short command, exit status not checked
        self._alive = alive
        self._is_transient = is_transient
        self.missing_tools: set[str] = set()  # hash tools the board does not have (exit 127)

    def sha256_once(self, remote: str) -> str | None:
        attributes = self._stat(remote)
        return None if attributes is None else self._board_sha256(remote, attributes.st_size or 0)

    def _stat(self, remote: str) -> paramiko.SFTPAttributes | None:
        """The attributes of the file `remote`, None when it does not exist; a folder is an error."""
        try:
            attributes = self._sftp().stat(remote)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(attributes.st_mode or 0):
            raise RemoteFileError(f"board {self.display}: {remote} is a folder, not a file")
        return attributes

    def _board_sha256(self, remote: str, size: int) -> str:
        """The sha256 the board computes for `remote`, with the fastest hash tool it has for `size` bytes."""
        order = ("python3", "sha256sum") if size >= FAST_HASH_MIN_BYTES else ("sha256sum", "python3")
        for tool in (t for t in order if t not in self.missing_tools):
            result = self._run_words(_HASH_ARGV[tool] + [remote])
            if result.exit_status != 127:  # 127: not installed (a minimal board)
                break
            self.missing_tools.add(tool)
        else:
            raise RemoteFileError(f"board {self.display}: cannot check {remote}: neither sha256sum nor python3 "
                                  "is installed on the board")
        if result.exit_status != 0:
            raise command_error(result, self.display)
        digest = result.stdout.strip().lstrip("\\")[:64]  # GNU prefixes '\' when the name has odd characters
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise RemoteFileError(f"board {self.display}: unexpected sha256 output for {remote}: "
                                  f"{result.stdout.strip()[:100]!r}")
        return digest

    def upload_attempt(self, upload: Upload, remote: str, progress: bool) -> None:
        """One attempt of a `put`, safe to repeat after a dropped link: it starts again from a fresh temp name."""
        if upload.temp is not None:  # left by a dropped attempt
            self.remove_quietly(upload.temp)
            upload.temp = None
        if self._holds(remote, upload):  # also true when a dropped attempt got as far as the rename
            return
        upload.sent = True
        self._upload_once(upload, remote, progress)

    def _holds(self, remote: str, upload: Upload) -> bool:
        """Whether the board's `remote` is the file being uploaded (hashed only when the sizes agree)."""
        attributes = self._stat(remote)
        if attributes is None or attributes.st_size != upload.local_stat.st_size:
            return False
        return self._board_sha256(remote, upload.local_stat.st_size) == upload.digest

    def _upload_once(self, upload: Upload, remote: str, progress: bool) -> None:
        sftp = self._sftp()
        local = upload.local
        directory, name = posixpath.split(remote)
        self.makedirs_once(directory)
        prefix = f".{name[:200]}."
        for stale in sftp.listdir(directory):  # left by an earlier put that ran out of retries
            if stale.startswith(prefix) and re.fullmatch(r"[0-9a-f]{8}\.part", stale[len(prefix):]):
                self.remove_quietly(posixpath.join(directory, stale))
        temp = posixpath.join(directory, f"{prefix}{secrets.token_hex(4)}.part")
        upload.temp = temp
        size = upload.local_stat.st_size
        with _Progress(size, name, progress) as bar:
            try:
                self._write_file(upload, temp, bar)
            except Exception as e:
                upload.bytes_sent += bar.done
                if not self._is_transient(e):
                    self.remove_quietly(temp)
                    upload.temp = None
                    raise self._upload_error(local, remote, e, size) from None
                raise
            upload.bytes_sent += bar.done
        if self._board_sha256(temp, size) != upload.digest:
            self.remove_quietly(temp)
            upload.temp = None
            raise RemoteFileError(f"board {self.display}: the uploaded copy of {local.name} does not match its "
                                  "sha256 (did the local file change during the upload?)")
        sftp.chmod(temp, stat.S_IMODE(upload.local_stat.st_mode))
        try:
            sftp.posix_rename(temp, remote)
        except OSError as e:
            if not self._alive():
                raise
            # Servers without the posix-rename extension: `mv -f` is an atomic rename(2) in one folder too.
            result = self._run_words(["mv", "-f", temp, remote])
            if result.exit_status != 0:
                self.remove_quietly(temp)
                upload.temp = None
                raise RemoteFileError(f"board {self.display}: cannot rename the upload onto {remote}: "
                                      f"{describe(e)}; {tail(result.stderr)}") from None
        upload.temp = None

    def _write_file(self, upload: Upload, temp: str, bar: _Progress) -> None:
        """The local file's bytes into `temp` by pipelined SFTP writes of WRITE_REQUEST_BYTES, counted by `bar`.

        paramiko drops the status of a pipelined write it has not waited for, so the size the board ends up
        with is checked: a write the board refused (a full disk) is an OSError here, never a short file.
        """
        sftp = self._sftp()
        with open(upload.local, "rb") as source, sftp.open(temp, "wb") as target:
            target.set_pipelined(True)
            target.MAX_REQUEST_SIZE = request = _write_request_bytes(sftp.get_channel(), target.handle)
            while block := source.read(request):
                target.write(block)
                bar.update(bar.done + len(block), upload.local_stat.st_size)
        kept = sftp.stat(temp).st_size
        if kept != bar.done:
            raise OSError(f"the board kept {kept} of the {bar.done} bytes sent (a write failed)")

    def _upload_error(self, local: Path, remote: str, error: Exception, size: int) -> RemoteFileError:
        """The one line for a failed upload (its temp file already removed). The SFTP server reports a full
        disk as a bare "Failure": the free space, looked at afterwards, tells that case apart."""
        directory = posixpath.dirname(remote)
        with contextlib.suppress(Exception):
            free = self.free_bytes_once(directory)
            if free < size:
                return RemoteFileError(f"board {self.display}: the board's disk is full: not enough space for "
                                       f"{local.name} in {directory}: needs {_mib(size)}, {_mib(free)} free")
        return RemoteFileError(f"board {self.display}: cannot upload {local.name} to {remote}: {describe(error)}")

    def download_once(self, remote: str, local: str | Path) -> None:
        """One attempt of a `get`, into a local temp file renamed onto `local` only when complete."""
        sftp = self._sftp()
        try:
            size = sftp.stat(remote).st_size or 0
        except FileNotFoundError:
            raise RemoteFileError(f"board {self.display}: {remote} not found") from None
        except PermissionError:
            raise RemoteFileError(f"board {self.display}: {remote}: permission denied") from None
        with fileio.atomic_path(local) as tmp, _Progress(size, Path(remote).name, True) as progress:
            try:
                self._read_file(remote, size, tmp, progress)
            except OSError as e:
                if self._alive() and not isinstance(e, (TimeoutError, ConnectionError)):
                    raise RemoteFileError(f"board {self.display}: cannot download {remote}: "
                                          f"{describe(e)}") from None
                # Not an OSError, which atomic_path would turn into a local write error, and not retried.
                raise ConnectionLost(describe(e)) from None

    def _read_file(self, remote: str, size: int, local: Path, bar: _Progress) -> None:
        """`remote` into `local` by prefetched SFTP reads of READ_REQUEST_BYTES, counted by `bar`."""
        with self._sftp().open(remote, "rb") as source, open(local, "wb") as target:
            source.MAX_REQUEST_SIZE = READ_REQUEST_BYTES
            source.prefetch(size)
            while block := source.read(READ_REQUEST_BYTES):
                target.write(block)
                bar.update(bar.done + len(block), size)
        if bar.done != size:
            raise OSError(f"got {bar.done} of its {size} bytes (did it change during the download?)")

    def free_bytes_once(self, remote_dir: str) -> int:
        argv = ["df", "-Pk", self._nearest_existing(remote_dir)]  # POSIX format: "Available" is field 4, in KiB
        result = self._run_words(argv)
        if result.exit_status != 0:
            raise command_error(result, self.display)
        try:
            return int(result.stdout.strip().splitlines()[-1].split()[3]) * 1024
        except (IndexError, ValueError):
            raise RemoteFileError(f"board {self.display}: cannot read the free space from df: "
                                  f"{result.stdout.strip()[:200]!r}") from None

    def makedirs_once(self, remote_dir: str) -> None:
        sftp = self._sftp()
        try:
            if stat.S_ISDIR(sftp.stat(remote_dir).st_mode or 0):
                return
        except FileNotFoundError:
            pass
        result = self._run_words(["mkdir", "-p", remote_dir])
        if result.exit_status != 0:
            raise command_error(result, self.display)

    def _nearest_existing(self, remote_dir: str) -> str:
        sftp = self._sftp()
        path = posixpath.normpath(remote_dir)
        while True:
            try:
                sftp.stat(path)
                return path
            except FileNotFoundError:
                if path == "/":
                    return path
                path = posixpath.dirname(path)

    def remove_quietly(self, remote: str) -> None:
        with contextlib.suppress(Exception):
            if self._alive():
                self._sftp().remove(remote)


def _write_request_bytes(channel: paramiko.Channel, handle: bytes) -> int:
    """About WRITE_REQUEST_BYTES of data, so that a write request (header included) fills whole SSH packets:
    paramiko sends up to `out_max_packet_size - 64` bytes of channel data in one, and a short packet after
    each request costs as much to send as a full one."""
    header = 25 + len(handle)  # length, type, request id, handle string, offset, data length
    per_packet = channel.out_max_packet_size - 64
    whole = (WRITE_REQUEST_BYTES + header) // per_packet * per_packet - header
    return whole if whole > 0 else WRITE_REQUEST_BYTES


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class _Progress:
    """Counts transferred bytes; shows a tqdm bar for files above PROGRESS_MIN_BYTES."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.done = 0
        self._bar = None
        if enabled and total > PROGRESS_MIN_BYTES:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=False)

    def update(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self.done)
        self.done = done

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
