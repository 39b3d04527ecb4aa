"""Moving files to and from a board so that neither side ever holds a partial file under its real name:
uploads go to a temp name, are checked with sha256 on the board, then renamed; downloads land atomically."""
from __future__ import annotations

import contextlib
import os
import posixpath
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paramiko

from atlas import fileio
from atlas.ssh.commands import CommandResult, command_error
from atlas.ssh.errors import RemoteFileError, describe, tail

PROGRESS_MIN_BYTES = 1 << 20  # a progress bar only for files larger than this

# Python 3.6-safe (old boards): hashes argv[1] in 1 MiB blocks.
_PY_SHA256 = ("import hashlib, sys\n"
              "h = hashlib.sha256()\n"
              "with open(sys.argv[1], 'rb') as f:\n"
              "    for block in iter(lambda: f.read(1 << 20), b''):\n"
              "        h.update(block)\n"
              "print(h.hexdigest())\n")


@dataclass
class PutResult:
    remote: str
    sent: bool  # False: the board already had a file with this sha256
    bytes_sent: int  # over all attempts (a retried upload counts every attempt)
    sha256: str
    retries: int = 0


@dataclass
class Upload:
    """A `put`: the local file as checked once, and what its attempts have done so far."""

    local: Path
    local_stat: os.stat_result
    digest: str
    sent: bool = False
    bytes_sent: int = 0
    temp: str | None = None  # the temp name on the board while it may exist

    @classmethod
    def of(cls, local: str | Path) -> Upload:
        local = Path(local)
        try:
            local_stat = local.stat()
        except OSError as e:
            raise RemoteFileError(f"cannot upload {local}: {e.strerror}") from None
        if not stat.S_ISREG(local_stat.st_mode):
            raise RemoteFileError(f"cannot upload {local}: not a regular file")
        return cls(local, local_stat, fileio.sha256_file(local))

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
        self.hash_tool: str | None = None  # "sha256sum", or "python3" on a board without it; None: not asked yet

    def sha256_once(self, remote: str) -> str | None:
        sftp = self._sftp()
        try:
            attributes = sftp.stat(remote)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(attributes.st_mode or 0):
            raise RemoteFileError(f"board {self.display}: {remote} is a folder, not a file")
        if self.hash_tool in (None, "sha256sum"):
            result = self._run_words(["sha256sum", remote])
            if result.exit_status == 127:  # not installed: a minimal board
                self.hash_tool = "python3"
            else:
                self.hash_tool = "sha256sum"
        if self.hash_tool == "python3":
            result = self._run_words(["python3", "-c", _PY_SHA256, remote])
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
        if self.sha256_once(remote) == upload.digest:  # also true when a dropped attempt got as far as the rename
            return
        upload.sent = True
        self._upload_once(upload, remote, progress)

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
                sftp.put(str(local), temp, callback=bar.update, confirm=True)
            except Exception as e:
                upload.bytes_sent += bar.done
                if not self._is_transient(e):
                    self.remove_quietly(temp)
                    upload.temp = None
                    raise self._upload_error(local, remote, e, size) from None
                raise
            upload.bytes_sent += bar.done
        if self.sha256_once(temp) != upload.digest:
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
                sftp.get(remote, str(tmp), callback=progress.update)
            except OSError as e:
                if self._alive() and not isinstance(e, (TimeoutError, ConnectionError)):
                    raise RemoteFileError(f"board {self.display}: cannot download {remote}: "
                                          f"{describe(e)}") from None
                raise

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
