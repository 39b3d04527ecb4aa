"""Model deltas without a board: atlas/delta.py writes them, atlas/board/delta.py (the board's own code) rebuilds
and commits them. Tiny ONNX files built with onnx.helper, so every test runs in milliseconds."""
from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from atlas import run_folder as rf
from atlas.board import delta as board
from atlas.delta import FullUpload, architecture_change, binary_delta, onnx_delta
from atlas.model_update import base_problem


def model_bytes(weights: dict[str, np.ndarray], producer: str = "atlas-kd-test") -> bytes:
    """A Gemm over the given initializers (W, B) plus an int64 shape constant: raw-stored tensors of 2 types."""
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("Gemm", ["flat", "W", "B"], ["y"],
                                                                                transB=1)],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 20])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", 11)]).SerializeToString()


@pytest.fixture
def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"W": rng.normal(0, 0.1, (10, 20)).astype(np.float32), "B": rng.normal(0, 0.1, 10).astype(np.float32)}


def tensor(data: bytes, name: str) -> np.ndarray:
    t = next(t for t in board.onnx_tensors(data) if t.name == name)
    return np.frombuffer(data[t.offset:t.offset + t.length], np.float32)


def test_the_walker_finds_every_raw_initializer_as_onnx_reads_it(weights):
    data = model_bytes(weights)
    found = {t.name: t for t in board.onnx_tensors(data)}
    assert set(found) == {"W", "B", "shape"} and found["W"].dims == [10, 20] and found["shape"].dtype == 7
    assert np.array_equal(tensor(data, "W").reshape(10, 20), weights["W"])


def test_a_lossless_delta_sends_only_the_changed_tensor_and_rebuilds_the_exact_file(weights):
    base = model_bytes(weights)
    new = model_bytes({**weights, "B": weights["B"] + np.float32(0.01)})
    delta = onnx_delta(base, new, mode="lossless", tolerance=1e-3, codec="lzma")
    header, _ = board.unpack(delta.data)
    assert [entry[0] for entry in header["tensors"]] == [1]  # B only (W and the shape are unchanged)
    assert delta.stats["changed"] == delta.stats["sent"] == 1 and delta.target == new
    assert board.rebuild(delta.data, base) == new and header["target"]["sha256"] == board.sha256_bytes(new)


def test_a_lossy_delta_keeps_every_weight_within_the_tolerance_of_its_tensors_rms(weights):
    rng = np.random.default_rng(1)
    base = model_bytes(weights)
    moved = {"W": weights["W"] + rng.normal(0, 1e-3, (10, 20)).astype(np.float32),
             "B": weights["B"] + np.float32(1e-7)}  # B moves by far less than half a step: not sent at all
    new, tolerance = model_bytes(moved), 1e-3
    delta = onnx_delta(base, new, mode="lossy", tolerance=tolerance, codec="lzma")
    rebuilt = board.rebuild(delta.data, base)
    assert rebuilt == delta.target and delta.target_sha256 == board.sha256_bytes(rebuilt)
    for name in ("W", "B"):
        rms = np.sqrt(np.mean(moved[name].astype(np.float64) ** 2))
        error = np.abs(tensor(rebuilt, name).astype(np.float64) - moved[name].ravel())
        assert error.max() <= tolerance * rms * (1 + 1e-4), name
    assert delta.stats["changed"] == 2 and delta.stats["sent"] == delta.stats["quantized"] == 1
    assert np.array_equal(tensor(rebuilt, "B"), weights["B"])  # what the board held stays
    lossless = onnx_delta(base, new, mode="lossless", tolerance=tolerance, codec="lzma")
    assert len(delta.data) < len(lossless.data) / 2


def test_a_lossy_delta_is_taken_against_what_the_board_holds_so_errors_do_not_add_up(weights):
    rng = np.random.default_rng(2)
    held, exact = model_bytes(weights), dict(weights)
    for _ in range(5):
        exact = {k: v + rng.normal(0, 1e-3, v.shape).astype(np.float32) for k, v in exact.items()}
        held = board.rebuild(onnx_delta(held, model_bytes(exact), mode="lossy", tolerance=1e-3, codec="zlib").data,
                             held)
    rms = np.sqrt(np.mean(exact["W"].astype(np.float64) ** 2))
    assert np.abs(tensor(held, "W") - exact["W"].ravel()).max() <= 1e-3 * rms * (1 + 1e-4)


def test_a_lossy_delta_sends_rescaled_channels_as_scales_and_a_small_residual(weights):
    # what new BatchNorm statistics do to the conv they are folded into: each output channel times one factor
    rng = np.random.default_rng(4)
    factors = (1 + rng.normal(0, 0.05, (10, 1))).astype(np.float32)
    moved = {"W": weights["W"] * factors + rng.normal(0, 2e-4, (10, 20)).astype(np.float32), "B": weights["B"]}
    base, new = model_bytes(weights), model_bytes(moved)
    delta = onnx_delta(base, new, mode="lossy", tolerance=1e-3, codec="lzma")
    header, _ = board.unpack(delta.data)
    assert [entry[:2] for entry in header["tensors"]] == [[0, "scaled"]] and delta.stats["scaled"] == 1
    rebuilt = board.rebuild(delta.data, base)
    rms = np.sqrt(np.mean(moved["W"].astype(np.float64) ** 2))
    assert np.abs(tensor(rebuilt, "W").astype(np.float64) - moved["W"].ravel()).max() <= 1e-3 * rms * (1 + 1e-4)
    unscaled = {"W": weights["W"] + rng.normal(0, 2e-2, (10, 20)).astype(np.float32), "B": weights["B"]}
    plain = onnx_delta(base, model_bytes(unscaled), mode="lossy", tolerance=1e-3, codec="lzma")  # the control
    assert [entry[1] for entry in board.unpack(plain.data)[0]["tensors"]] == ["quant"]


def test_another_architecture_is_a_full_upload_naming_what_differs(weights):
    base = model_bytes(weights)
    other = model_bytes({"W": np.zeros((12, 20), np.float32), "B": np.zeros(12, np.float32)})
    with pytest.raises(FullUpload, match=r"architecture differs .*2 of another shape or type \(first: W \[10, 20\] "
                                         r"-> \[12, 20\]\)"):
        onnx_delta(base, other, mode="lossless", tolerance=1e-3, codec="lzma")
    renamed = model_bytes({"W2": weights["W"], "B": weights["B"]})
    assert architecture_change(board.onnx_tensors(base), board.onnx_tensors(renamed)) == "1 tensors added, 1 removed"


def test_a_changed_structure_around_the_same_weights_still_travels_as_a_delta(weights):
    base = model_bytes(weights)
    new = model_bytes({**weights, "B": -weights["B"]}, producer="another exporter, longer name")
    delta = onnx_delta(base, new, mode="lossless", tolerance=1e-3, codec="lzma")
    assert delta.stats["structure_changed"] and board.rebuild(delta.data, base) == new


def test_a_binary_delta_follows_a_header_that_grew():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    body = bytearray(base[100:])
    body[-10:] = b"0123456789"  # the end changed too
    new = base[:100] + b"longer header" + bytes(body)
    delta = binary_delta(base, new, codec="lzma")
    header, _ = board.unpack(delta.data)
    assert board.rebuild(delta.data, base) == new
    assert [s[0] for s in header["segments"]] == ["x", "x"] and header["segments"][1][1] == 100 - 13  # the tail
    assert len(delta.data) < 1_000  # aligned with the base's end: only the new and the changed bytes cost


def test_a_delta_against_another_base_is_refused_with_exit_status_3(weights):
    base = model_bytes(weights)
    delta = onnx_delta(base, model_bytes({**weights, "B": weights["B"] * 2}), mode="lossless", tolerance=1e-3,
                       codec="lzma")
    other = model_bytes({**weights, "W": weights["W"] * 2})
    with pytest.raises(board.DeltaError, match="not the one this delta was made against") as caught:
        board.rebuild(delta.data, other)
    assert caught.value.code == 3


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:8] + bytes([2]) + d[9:], "delta format version 2; this tool reads version 1"),
    (lambda d: d[:-40] + bytes(40), "does not decompress"),
    (lambda d: b"NOTADELTA" + d[9:], "no AKDDELTA magic"),
])
def test_a_damaged_or_foreign_delta_is_one_line(weights, damage, message):
    base = model_bytes(weights)
    delta = onnx_delta(base, model_bytes({**weights, "B": weights["B"] * 2}), mode="lossless", tolerance=1e-3,
                       codec="lzma")
    with pytest.raises(board.DeltaError, match=message):
        board.rebuild(damage(delta.data), base)


def test_the_zigzag_and_plane_codecs_are_exact_at_the_extremes():
    values = np.array([0, -1, 1, np.iinfo(np.int32).min, np.iinfo(np.int32).max], np.int32)
    assert np.array_equal(board.unzigzag(board.zigzag(values)), values)
    words = np.array([1, 2 ** 32 - 1, 12345], np.uint32)
    assert np.array_equal(board.from_planes(board.to_planes(words), 4, 3), words)
    assert board.zigzag(np.array([0, -1, 1], np.int8)).tolist() == [0, 1, 2]


def test_the_board_tools_copies_of_the_contract_equal_it():
    assert board.MANIFEST_NAME == rf.REMOTE_MANIFEST and board.ONNX_NAME == rf.REMOTE_ONNX
    assert board.MODEL_FILES == (rf.REMOTE_MODEL, rf.REMOTE_ONNX)


# --- the board's tool, run as the board runs it (in-process here) --------------------------------------------

def tool(*argv: str) -> tuple[int, dict | None]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = board.main(list(argv))
    return status, json.loads(out.getvalue()) if status == 0 else None


def test_apply_then_commit_replace_the_model_and_write_the_manifest_and_are_safe_to_repeat(weights, tmp_path, capsys):
    folder, stage = tmp_path / "run", tmp_path / "run" / rf.REMOTE_STAGING
    stage.mkdir(parents=True)
    base, new = model_bytes(weights), model_bytes({**weights, "W": weights["W"] * 1.01})
    (folder / rf.REMOTE_ONNX).write_bytes(base)
    (folder / rf.REMOTE_MODEL).write_bytes(b"old om")
    (stage / rf.REMOTE_MODEL).write_bytes(b"new om")
    (stage / rf.REMOTE_DELTA).write_bytes(onnx_delta(base, new, mode="lossless", tolerance=1e-3, codec="zlib").data)
    for _ in range(2):
        status, out = tool("apply", "--delta", str(stage / rf.REMOTE_DELTA), "--base", str(folder / rf.REMOTE_ONNX),
                           "--out", str(stage / rf.REMOTE_ONNX))
        assert status == 0 and out["sha256"] == board.sha256_bytes(new)
    assert (folder / rf.REMOTE_ONNX).read_bytes() == base  # nothing under a real name yet
    info = {"commit": [rf.REMOTE_ONNX, rf.REMOTE_MODEL], "files": [],
            "expect": {rf.REMOTE_ONNX: board.sha256_bytes(new), rf.REMOTE_MODEL: board.sha256_bytes(b"new om")},
            "model": {"route": "atc"}}
    for _ in range(2):  # a retried commit (the link dropped after it ran) finds its work done
        status, manifest = tool("commit", "--dir", str(folder), "--stage", str(stage), "--info", json.dumps(info))
        assert status == 0, capsys.readouterr().err
    assert (folder / rf.REMOTE_ONNX).read_bytes() == new and (folder / rf.REMOTE_MODEL).read_bytes() == b"new om"
    assert not stage.exists() and manifest["files"][rf.REMOTE_ONNX]["sha256"] == board.sha256_bytes(new)
    assert manifest["model"]["tensors"]["W"]["dims"] == [10, 20]
    status, probed = tool("probe", "--dir", str(folder), "--atc", "no-such-atc")
    assert probed["manifest"] == manifest and probed["files"][rf.REMOTE_ONNX] == board.sha256_bytes(new)
    assert probed["atc"] is None and "zlib" in probed["codecs"]


def test_commit_refuses_a_file_that_is_not_the_updates(weights, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / rf.REMOTE_MODEL).write_bytes(b"something else")
    info = {"commit": [rf.REMOTE_MODEL], "files": [], "expect": {rf.REMOTE_MODEL: "0" * 64}, "model": {}}
    status, _ = tool("commit", "--dir", str(folder), "--stage", str(folder / "none"), "--info", json.dumps(info))
    assert status == 4 and "is not the update's" in capsys.readouterr().err
    assert not (folder / rf.REMOTE_MANIFEST).exists()


def test_apply_on_a_changed_base_exits_3_and_writes_nothing(weights, tmp_path, capsys):
    base = model_bytes(weights)
    delta = tmp_path / rf.REMOTE_DELTA
    delta.write_bytes(onnx_delta(base, model_bytes({**weights, "B": weights["B"] * 3}), mode="lossless",
                                 tolerance=1e-3, codec="zlib").data)
    changed = tmp_path / rf.REMOTE_ONNX
    changed.write_bytes(base[:-1] + bytes([base[-1] ^ 1]))
    status, _ = tool("apply", "--delta", str(delta), "--base", str(changed), "--out", str(tmp_path / "out"))
    assert status == 3 and "not the one this delta was made against" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- when the base cannot be used ------------------------------------------------------------------------------

def probed(manifest_sha: str | None, actual: str | None, manifest: bool = True) -> dict:
    files = {rf.REMOTE_ONNX: {"sha256": manifest_sha}} if manifest_sha else {}
    return {"manifest": {"files": files} if manifest else None, "files": {rf.REMOTE_ONNX: actual}}


@pytest.mark.parametrize("board_state, held, reason", [
    (probed(None, None, manifest=False), None, "the board has no manifest"),
    (probed(None, "a" * 64), None, "lists no model.onnx"),
    (probed("a" * 64, None), None, "is missing (deleted since the last deploy?)"),
    (probed("a" * 64, "b" * 64), None, "changed since the last deploy (sha256 bbbbbbbbbbbb, its manifest says"),
    (probed("a" * 64, "a" * 64), b"not the base", "this machine holds no copy of the board's model.onnx"),
])
def test_a_base_that_cannot_be_used_says_why(tmp_path, board_state, held, reason):
    path = tmp_path / rf.REMOTE_ONNX
    if held is not None:
        path.write_bytes(held)
    assert reason in base_problem(board_state, rf.REMOTE_ONNX, path)


def test_a_usable_base_has_no_problem(tmp_path):  # the negative control of the table above
    path = tmp_path / rf.REMOTE_ONNX
    path.write_bytes(b"base")
    digest = board.sha256_bytes(b"base")
    assert base_problem(probed(digest, digest), rf.REMOTE_ONNX, path) is None


def test_the_container_header_is_what_the_docs_say(weights):
    data = onnx_delta(model_bytes(weights), model_bytes(weights), mode="lossless", tolerance=1e-3, codec="zlib").data
    magic, version, codec = struct.unpack_from("<8sBB", data)
    assert (magic, version, board.CODECS[codec]) == (b"AKDDELTA", 1, "zlib")
