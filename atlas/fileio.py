"""Atomic writes: every artifact appears under its real name complete, or not at all."""
from __future__ import annotations

import contextlib
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the mode a plain open() would give
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


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
