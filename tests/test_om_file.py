"""Reading .om files (atlas/om_file.py): the real fixture of spec §8, sim files, and damaged copies."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from atlas.errors import UserError
from atlas.om_file import OmDamaged, describe, inspect_bytes, inspect_om, require_real_om
from atlas import om_container
from test_atc import fake_real_om

FIXTURE = Path("/work/shared/fixtures/om/a3c_pong_model.om")
if not FIXTURE.exists():
    FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "om" / "a3c_pong_model.om"
needs_fixture = pytest.mark.skipif(not FIXTURE.exists(), reason=f"real .om fixture not present ({FIXTURE.name}, "
                                                                "see ../shared/fixtures/SOURCES.md)")


@pytest.fixture(scope="module")
def real_bytes() -> bytes:
    return FIXTURE.read_bytes()


def _sim_bytes() -> bytes:
    return om_container.pack({"format": "atlas-kd-sim-om", "model_name": "mnist", "soc_version": "Ascend310",
                        "inputs": [{"name": "input", "dims": [1, 1, 28, 28], "dtype": "float32", "format": "NCHW"}],
                        "outputs": [{"name": "logits", "dims": [1, 10], "dtype": "float32"}], "aipp": None},
                       b"onnx payload")


# --- the real fixture (CANN 20.1, Ascend310) ---------------------------------------------------------------

@needs_fixture
def test_real_fixture_is_read_as_a_real_om_with_its_header_and_partitions():
    inspection = inspect_om(FIXTURE)
    r = inspection.report
    assert inspection.damaged is None
    assert r["kind"] == "real" and r["bytes"] == 377_283
    h = r["header"]
    assert h["magic"] == "IMOD" and h["headsize"] == 256 and h["name"] == "a3c_pong_model"
    assert h["length"] == h["length_expected"] == 377_283 - 256
    assert h["version"] == "0x10000000" and h["layout"] == "20.1"
    assert h["layouts"]["20.1"]["platform_type_name"].startswith("MINI")
    assert [p["type_name"] for p in r["partitions"]] == ["MODEL_DEF", "WEIGHTS", "TBE_KERNELS", "TASK_INFO"]
    assert all(p["fits"] for p in r["partitions"])
    assert r["model"]["name"] == "a3c_pong_model"
    assert r["model"]["inputs"] == [{"name": "s", "dims": [1, 42, 42, 1], "dtype": "float32", "format": "NHWC",
                                     "bytes": 7104}]


@needs_fixture
def test_describe_names_the_model_and_partitions():
    text = describe(inspect_om(FIXTURE))
    assert "real ATC offline model" in text and "a3c_pong_model" in text
    assert "MODEL_DEF" in text and "WEIGHTS" in text and "layout 20.1" in text and "<- fits" in text


@needs_fixture
@pytest.mark.parametrize("cut", [100, 259, 300, 30_000, 377_000])
def test_truncated_copies_are_damaged_not_crashed_on(real_bytes, cut):
    inspection = inspect_bytes(real_bytes[:cut], "cut.om")
    assert inspection.damaged and "\n" not in inspection.damaged


@needs_fixture
def test_flipped_magic_is_damaged(real_bytes):
    flipped = bytes([real_bytes[0] ^ 0x01]) + real_bytes[1:]
    inspection = inspect_bytes(flipped, "flip.om")
    assert inspection.damaged.startswith("flip.om: damaged .om: magic bytes")


@needs_fixture
def test_wrong_length_field_is_damaged(real_bytes):
    data = bytearray(real_bytes)
    data[78] ^= 0x10
    assert "the header says" in inspect_bytes(bytes(data), "len.om").damaged


@needs_fixture
def test_partition_past_the_end_is_damaged(real_bytes):
    data = bytearray(real_bytes)
    struct.pack_into("<I", data, 256 + 4 + 12 + 8, 10_000_000)  # WEIGHTS size
    assert "past the end" in inspect_bytes(bytes(data), "part.om").damaged


@needs_fixture
def test_sim_loader_refuses_the_real_file_clearly(real_bytes):
    with pytest.raises(om_container.SimOmError, match="real Ascend .om"):
        om_container.unpack(real_bytes, "a3c_pong_model.om")


@needs_fixture
def test_require_real_om_accepts_the_real_file():
    assert require_real_om(FIXTURE)["header"]["name"] == "a3c_pong_model"


# --- synthetic files ----------------------------------------------------------------------------------------

def test_5x_header_layout_is_recognised():
    inspection = inspect_bytes(fake_real_om("lenet", layout="5.x"), "lenet.om")
    h = inspection.report["header"]
    assert inspection.damaged is None and h["layout"] == "5.x" and h["layouts"]["5.x"]["model_num"] == 1
    assert inspection.report["model"]["inputs"][0]["dims"] == [1, 3]


def test_20_1_header_layout_is_recognised():
    assert inspect_bytes(fake_real_om("lenet", layout="20.1"), "x.om").report["header"]["layout"] == "20.1"


def test_undecodable_model_definition_is_damaged():
    data = bytearray(fake_real_om())
    data[256 + 16] = 0x07  # first tag of the ModelDef: wire type 7 does not exist
    assert "model definition" in inspect_bytes(bytes(data), "x.om").damaged


def test_sim_file_is_read_with_its_metadata():
    inspection = inspect_bytes(_sim_bytes(), "sim.om")
    assert inspection.damaged is None and inspection.report["kind"] == "sim"
    assert inspection.report["metadata"]["model_name"] == "mnist"
    assert om_container.SIM_MESSAGE in describe(inspection)


def test_damaged_sim_file_is_reported():
    data = _sim_bytes()
    assert "damaged" in inspect_bytes(data[:-3], "sim.om").damaged


def test_real_expecting_paths_refuse_a_sim_file_with_the_sim_message(tmp_path):
    path = tmp_path / "model.om"
    path.write_bytes(_sim_bytes())
    with pytest.raises(UserError) as info:
        require_real_om(path)
    assert om_container.SIM_MESSAGE in info.value.message and info.value.exit_code != 0


def test_require_real_om_refuses_a_damaged_file_with_one_line(tmp_path):
    path = tmp_path / "model.om"
    path.write_bytes(fake_real_om()[:-10])
    with pytest.raises(OmDamaged) as info:
        require_real_om(path)
    assert "damaged" in info.value.message and "\n" not in info.value.message and info.value.exit_code == 1


@pytest.mark.parametrize("content", [b"", b"hello", b"\x00" * 1000])
def test_files_that_are_not_om_at_all_are_reported(content):
    inspection = inspect_bytes(content, "x.om")
    assert inspection.damaged and inspection.report["kind"] == "unknown"


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        inspect_om(tmp_path / "missing.om")
