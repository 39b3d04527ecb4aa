"""atlas.fileio: artifacts appear whole under their real names, flushed to disk before the rename."""
import os

from atlas import fileio


def _record_fsyncs(monkeypatch) -> list[str]:
    """The paths os.fsync is called on, in order (read back from the descriptor; Linux)."""
    synced: list[str] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    return synced


def test_atomic_path_flushes_the_file_then_its_folder_and_renames(tmp_path, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    fileio.write_json(tmp_path / "out" / "a.json", {"x": 1})
    assert (tmp_path / "out" / "a.json").read_text() == '{\n  "x": 1\n}\n'
    assert len(synced) == 2 and synced[0].endswith(".tmp") and synced[1] == str(tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["a.json"]  # no temp file left


def test_atomic_dir_flushes_every_file_before_the_swap(tmp_path, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    with fileio.atomic_dir(tmp_path / "run") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "a.bin").write_bytes(b"a")
        (tmp / "sub" / "b.bin").write_bytes(b"b")
        (tmp / "link").symlink_to("a.bin")  # links are not followed
    names = [os.path.relpath(p, tmp) for p in synced[:-1]]
    assert sorted(names) == [".", "a.bin", "sub", os.path.join("sub", "b.bin")] and synced[-1] == str(tmp_path)
    assert (tmp_path / "run" / "sub" / "b.bin").read_bytes() == b"b" and not tmp.exists()
