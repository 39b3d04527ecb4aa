"""Atomic writes: every artifact appears under its real name complete, or not at all."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block finishes.

    The temp file lives in the same folder (so the rename is atomic) and keeps `suffix`
    (some writers, like numpy and torch, care about the extension); it is flushed to disk before the rename.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    except OSError as e:
        raise os_error_line(e, path) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the mode a plain open() would give
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent)
    except OSError as e:  # the old file (if any) is still there, whole; the temp file goes below
        other = e.filename is not None and os.fspath(e.filename) != os.fspath(tmp_path)
        raise (os_error_line(e) if other else os_error_line(e, path)) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# what to do about an operating-system error, by errno: the line names the path and the cause
_OS_ERROR_HINTS = {
    errno.ENOSPC: "free some space there, or write to a folder on another disk (--run)",
    errno.EDQUOT: "your disk quota is used up: free some space, or write elsewhere (--run)",
    errno.EROFS: "the file system is read-only: write to a writable folder (--run)",
    errno.EACCES: "no permission: fix the permissions, or write elsewhere (--run)",
    errno.EPERM: "not permitted: fix the permissions, or write elsewhere (--run)",
    errno.EEXIST: "something else is in the way there: move it, or choose another path",
    errno.EISDIR: "a folder is in the way: move it, or choose another path",
    errno.ENOTDIR: "a file stands where a folder is needed: move it, or choose another path",
    errno.EMFILE: "this process has too many open files: raise the limit (ulimit -n) and run again",
    errno.ENFILE: "the system has too many open files: close some programs and run again",
}


def os_error_line(error: OSError, path: str | os.PathLike | None = None):
    """An OSError as the project's one-line UserError (exit 2): the path, the cause and what to do. `path`: the
    file being written (else the error's own file name)."""
    from atlas.errors import UserError

    code = error.errno
    if code is None and path is not None and _nearly_full(Path(path).parent):
        code = errno.ENOSPC  # numpy's short write ("N requested and M written") carries no errno
    cause = os.strerror(code) if code is not None and code != error.errno else (error.strerror or str(error))
    hint = _OS_ERROR_HINTS.get(code)
    text = f"cannot write {path}: {cause}" if path is not None else f"{error.filename or 'a file'}: {cause}"
    return UserError(text + (f" ({hint})" if hint else ""))


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def short_write(folder: Path) -> OSError | None:
    """For writers that report a full disk as something else (torch.save's RuntimeError): an ENOSPC OSError
    when `folder`'s disk is (nearly) full, else None."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if _nearly_full(folder) else None


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `path`; when the block finishes it takes `path`'s place (a folder already
    there is removed), else it is removed: a run folder appears complete, or the old one stays as it was.
    Two renames swap an old folder out and the new one in (if the second fails, the old one is put back); a
    process killed between them leaves the old one as a hidden `.NAME.*.old` beside it. An empty folder is
    filled in place instead, entry by entry. A symlinked `path` is replaced at its target. Its files are
    flushed to disk before the swap.
    """
    from atlas.errors import UserError

    path = Path(os.path.abspath(path))
    if path.is_symlink():
        path = path.resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise UserError(f"cannot create a folder beside {path}: {e.strerror or e}") from None
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        yield tmp
        try:
            _swap_in(tmp, path)
        except OSError as e:
            raise os_error_line(e, path) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _swap_in(tmp: Path, path: Path) -> None:
    """Flush the finished temp folder and move it into `path`'s place (see atomic_dir)."""
    for entry in [*tmp.rglob("*"), tmp]:
        if not entry.is_symlink():
            _fsync(entry)
    if path.is_dir() and not any(path.iterdir()):  # an empty folder (maybe someone's cwd) is filled in place
        for entry in tmp.iterdir():
            os.rename(entry, path / entry.name)
    elif path.exists():
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except OSError:
            os.rename(old, path)  # put the old folder back: all or nothing
            raise
        shutil.rmtree(old, ignore_errors=True)  # the new folder is in place; a leftover is only litter
    else:
        os.rename(tmp, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    """Flush a file's data (or a folder's entries) to disk, so that a power cut after a rename cannot leave an
    empty or missing file under the real name (the board's SD card and a workstation alike)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def require_writable(folders: list[Path], purpose: str) -> None:
    """Say so in one line, before any work, when an existing folder a stage will write into is not writable
    (`purpose` says what goes there); a report half written is worse than none."""
    from atlas.errors import UserError

    for folder in folders:
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"{folder} is not writable: {purpose}; fix its permissions")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def save_npy(path: str | os.PathLike, array) -> None:
    import numpy as np

    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def save_npz(path: str | os.PathLike, arrays: dict) -> None:
    """Several arrays by name in one .npz (uncompressed, no pickles)."""
    import numpy as np

    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def read_json(path: str | os.PathLike) -> Any:
    from atlas.errors import UserError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not readable JSON ({e})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths show up in metrics; make them plain JSON.
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
