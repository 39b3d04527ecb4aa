"""Every row of the error-code table in docs/emulator.md: one probe per row runs the misuse on the emulator, and the
code it returns must be the code the table states (so the table and the emulator cannot drift apart)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import atlas.sim.acl as acl
from atlas.board import acl_consts as C
from atlas.sim import atc_sim
from test_acl_emulator import Opened, write_sim_om
from test_atc_sim import tiny_cnn
from test_atc_sim_options import pooled_cnn

TABLE = Path(__file__).resolve().parents[1] / "docs" / "emulator.md"


def table_rows(prefix: str = "E") -> dict[str, tuple[str, int]]:
    """{id: (call, code)} of one table in docs/emulator.md: ids E01... (pyACL) or D01... (DVPP)."""
    row = re.compile(rf"^\| ({prefix}\d\d) \| (\S+) \| (.+?) \| (\d+)\b")
    rows = {}
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        m = row.match(line)
        if m:
            rows[m.group(1)] = (m.group(2), int(m.group(4)))
    return rows


@pytest.fixture(autouse=True)
def fresh_emulator():
    acl._sim.reset()
    yield
    acl._sim.reset()


def ready():
    assert acl.init() in (0, C.ACL_ERROR_REPEAT_INITIALIZE) and acl.rt.set_device(0) == 0
    return acl.rt.create_context(0)[0]


def loaded(tmp_path: Path) -> Opened:
    ready()
    return Opened(write_sim_om(tmp_path / "tiny.om", batch=2))


def dynamic_om(folder: Path, kind: str = "batch") -> Path:
    """A dynamic-batch (1,2,4,8) or dynamic-image-size (16x16, 32x32) sim .om built by atc-sim."""
    if kind == "batch":
        model, extra = tiny_cnn(folder / "dyn.onnx", batch_dim="N"), ["--input_shape=input:-1,1,28,28",
                                                                      "--dynamic_batch_size=1,2,4,8"]
    else:
        model, extra = pooled_cnn(folder / "hw.onnx"), ["--input_shape=input:1,3,-1,-1",
                                                        "--dynamic_image_size=16,16;32,32"]
    base = folder / f"dyn_{kind}"
    assert atc_sim.main([f"--model={model}", "--framework=5", f"--output={base}", "--soc_version=Ascend310",
                         *extra]) == 0
    return Path(f"{base}.om")


def dynamic_dataset(tmp_path: Path, kind: str, profile_bytes: int | None = None):
    """(model id, input dataset, profile-tensor index) of a loaded dynamic model, buffers at full size."""
    ready()
    model = Opened.__new__(Opened)
    model.model_id, _ = acl.mdl.load_from_file(str(dynamic_om(tmp_path, kind)))
    desc = acl.mdl.create_desc()
    acl.mdl.get_desc(desc, model.model_id)
    dataset = acl.mdl.create_dataset()
    for i in range(acl.mdl.get_num_inputs(desc)):
        size = acl.mdl.get_input_size_by_index(desc, i)
        size = profile_bytes if profile_bytes and i == 1 else size
        ptr, _ = acl.rt.malloc(size, 2)
        acl.mdl.add_dataset_buffer(dataset, acl.create_data_buffer(ptr, size))
    index, ret = acl.mdl.get_input_index_by_name(desc, "ascend_mbatch_shape_data")
    assert ret == 0
    return model.model_id, dataset, index, desc


def with_input_buffer(tmp_path: Path, delta: int) -> int:
    """Execute the tiny model with an input buffer `delta` bytes off the model's size."""
    model = loaded(tmp_path)
    size = model.in_size + delta
    ptr, _ = acl.rt.malloc(size, 2)
    dataset = acl.mdl.create_dataset()
    acl.mdl.add_dataset_buffer(dataset, acl.create_data_buffer(ptr, size))
    return acl.mdl.execute(model.model_id, dataset, model.out_ds)


def two_input_buffers(tmp_path: Path) -> int:
    model = loaded(tmp_path)
    dataset = acl.mdl.create_dataset()
    for _ in range(2):
        acl.mdl.add_dataset_buffer(dataset, model.in_buf)
    return acl.mdl.execute(model.model_id, dataset, model.out_ds)


def unload_twice(tmp_path: Path) -> int:
    model = loaded(tmp_path)
    assert acl.mdl.unload(model.model_id) == 0
    return acl.mdl.unload(model.model_id)


def stream_and_thread():
    """A stream and a start_thread thread that does nothing (its id is all the subscribe calls need)."""
    ready()
    stream, _ = acl.rt.create_stream()
    tid, ret = acl.util.start_thread(lambda args: None, [])
    assert ret == 0 and acl.util.stop_thread(tid) == 0
    return stream, tid


def subscribe_twice() -> int:
    stream, tid = stream_and_thread()
    assert acl.rt.subscribe_report(tid, stream) == 0
    return acl.rt.subscribe_report(tid + 1, stream)


def unsubscribe_other() -> int:
    stream, tid = stream_and_thread()
    assert acl.rt.subscribe_report(tid, stream) == 0
    return acl.rt.unsubscribe_report(tid + 1, stream)


def callback(block_type: int, subscribe: bool = True) -> int:
    stream, tid = stream_and_thread()
    if subscribe:
        acl.rt.subscribe_report(tid, stream)
    return acl.rt.launch_callback(lambda data: None, [], block_type, stream)


def process_report(timeout: int, subscribe: bool = True) -> int:
    """process_report on this thread; subscribed to a stream with nothing queued."""
    ready()
    stream, _ = acl.rt.create_stream()
    if subscribe:
        import threading
        assert acl.rt.subscribe_report(threading.get_ident(), stream) == 0
    return acl.rt.process_report(timeout)


def set_batch(tmp_path: Path, batch: int, profile_bytes: int | None = None) -> int:
    model_id, dataset, index, _ = dynamic_dataset(tmp_path, "batch", profile_bytes)
    return acl.mdl.set_dynamic_batch_size(model_id, dataset, index, batch)


def set_hw(tmp_path: Path, hw, profile_bytes: int | None = None) -> int:
    model_id, dataset, index, _ = dynamic_dataset(tmp_path, "hw", profile_bytes)
    return acl.mdl.set_dynamic_hw_size(model_id, dataset, index, *hw)


def execute_unset_profile(tmp_path: Path) -> int:
    model_id, dataset, _, desc = dynamic_dataset(tmp_path, "batch")
    size = acl.mdl.get_output_size_by_index(desc, 0)
    out = acl.mdl.create_dataset()
    acl.mdl.add_dataset_buffer(out, acl.create_data_buffer(acl.rt.malloc(size, 2)[0], size))
    index = acl.mdl.get_input_index_by_name(desc, "ascend_mbatch_shape_data")[0]
    ptr = acl.get_data_buffer_addr(acl.mdl.get_dataset_buffer(dataset, index))
    assert acl.rt.memset(ptr, 8, 0, 8) == 0  # a zero batch: no profile
    return acl.mdl.execute(model_id, dataset, out)


def overread_bytes_source() -> int:
    ready()
    ptr, _ = acl.rt.malloc(4096, 2)
    data = bytes(100)
    return acl.rt.memcpy(ptr, 4096, acl.util.bytes_to_ptr(data), 200, C.ACL_MEMCPY_DEVICE_TO_DEVICE)


def free_of(kind: str, ptr_of=None) -> int:
    ready()
    ptr = acl.rt.malloc_host(64)[0] if kind == "host" else acl.rt.malloc(64, 2)[0]
    return acl.rt.free(ptr if ptr_of is None else ptr_of(ptr))


def double_free() -> int:
    ready()
    ptr, _ = acl.rt.malloc(64, 2)
    assert acl.rt.free(ptr) == 0
    return acl.rt.free(ptr)


def hbm_info() -> int:
    ready()
    free, total, ret = acl.rt.get_mem_info(1)
    assert (free, total) == (0, 0)
    return ret


def memcpy_of(count: int, dest_max: int = 64, kind: int = 3, same: bool = False, null: bool = False) -> int:
    ready()
    dst, _ = acl.rt.malloc(64, 2)
    src = dst if same else acl.rt.malloc(64, 2)[0]
    return acl.rt.memcpy(0 if null else dst, dest_max, src, count, kind)


def memset_of(count: int, max_count: int = 64, null: bool = False) -> int:
    ready()
    ptr, _ = acl.rt.malloc(64, 2)
    return acl.rt.memset(0 if null else ptr, max_count, 7, count)


def memcpy_async_over() -> int:
    ready()
    stream, _ = acl.rt.create_stream()
    dst, _ = acl.rt.malloc(64, 2)
    return acl.rt.memcpy_async(dst, 32, acl.rt.malloc(64, 2)[0], 64, 3, stream)


PROBES = {
    "E01": lambda tmp: (acl.init(), acl.init())[1],
    "E02": lambda tmp: (acl.init(), acl.finalize(), acl.finalize())[2],
    "E03": lambda tmp: acl.finalize(),
    "E04": lambda tmp: acl.rt.set_device(0),
    "E05": lambda tmp: acl.rt.malloc(0, 2)[1],
    "E06": lambda tmp: (ready(), acl.rt.malloc_host(0))[1][1],
    "E07": lambda tmp: (acl.init(), acl.rt.create_stream())[1][1],
    "E08": lambda tmp: memcpy_of(64, kind=7),
    "E09": lambda tmp: memcpy_of(0, null=True),
    "E10": lambda tmp: memcpy_of(64, null=True),
    "E11": lambda tmp: memcpy_of(64, dest_max=32),
    "E12": lambda tmp: memcpy_of(4096, dest_max=4096, same=True),
    "E13": lambda tmp: (free_of("device", lambda p: p + 64), double_free())[1],
    "E14": lambda tmp: (ready(), acl.rt.free(0))[1],
    "E15": lambda tmp: free_of("host"),
    "E16": lambda tmp: (ready(), acl.rt.destroy_context(0))[1],
    "E17": lambda tmp: memset_of(64, max_count=32),
    "E18": lambda tmp: memset_of(64, null=True),
    "E19": lambda tmp: memset_of(0, null=True),
    "E20": lambda tmp: memcpy_async_over(),
    "E21": lambda tmp: overread_bytes_source(),
    "E22": lambda tmp: (ready(), acl.mdl.load_from_file(str(tmp / "absent.om")))[1][1],
    "E23": lambda tmp: acl.mdl.load_from_file(str(write_sim_om(tmp / "tiny.om", batch=2)))[1],
    "E24": lambda tmp: (lambda m: acl.mdl.execute(m.model_id + 99, m.in_ds, m.out_ds))(loaded(tmp)),
    "E25": lambda tmp: (lambda m: acl.mdl.execute(m.model_id + 99, 0, m.out_ds))(loaded(tmp)),
    "E26": lambda tmp: with_input_buffer(tmp, -65),
    "E27": lambda tmp: (with_input_buffer(tmp, -64), with_input_buffer(tmp, +100))[0],
    "E28": lambda tmp: two_input_buffers(tmp),
    "E29": lambda tmp: (loaded(tmp), acl.mdl.get_desc(acl.mdl.create_desc(), 12345))[1],
    "E30": lambda tmp: (loaded(tmp), acl.mdl.get_desc(0, 1))[1],
    "E31": lambda tmp: unload_twice(tmp),
    "E32": lambda tmp: acl.mdl.add_dataset_buffer(acl.mdl.create_dataset(), 0)[1],
    "E33": lambda tmp: set_batch(tmp, 3),
    "E34": lambda tmp: set_batch(tmp, 2, profile_bytes=2),
    "E35": lambda tmp: set_batch(tmp, 0),
    "E36": lambda tmp: set_hw(tmp, (16, 32)),
    "E37": lambda tmp: set_hw(tmp, (16, 16), profile_bytes=4),
    "E38": lambda tmp: execute_unset_profile(tmp),
    "E39": lambda tmp: subscribe_twice(),
    "E40": lambda tmp: unsubscribe_other(),
    "E41": lambda tmp: callback(1, subscribe=False),
    "E42": lambda tmp: callback(2),
    "E43": lambda tmp: callback(0),
    "E44": lambda tmp: process_report(0),
    "E45": lambda tmp: process_report(10, subscribe=False),
    "E46": lambda tmp: process_report(10),
    "E47": lambda tmp: hbm_info(),
    "E48": lambda tmp: acl.mdl.get_input_index_by_name(loaded(tmp).desc, "ascend_mbatch_shape_data")[1],
}


def test_every_table_row_has_a_probe_and_every_probe_a_row():
    assert sorted(table_rows()) == sorted(PROBES)
    assert len(PROBES) >= 40


@pytest.mark.parametrize("row", sorted(PROBES))
def test_the_emulator_returns_the_code_the_table_states(row, tmp_path):
    call, code = table_rows()[row]
    assert PROBES[row](tmp_path) == code, f"{row} {call}"
    if code == 0 and row in ("E15", "E21", "E27"):  # accepted, but suspicious: the log says so
        assert acl._sim.counters()["warnings"], row


def test_a_wrong_code_is_caught_by_the_table_check(tmp_path):
    """Negative control: an emulator returning another code for a row fails the comparison."""
    acl._sim.inject_failure("acl.rt.malloc", C.ACL_ERROR_RT_MEMORY_ALLOCATION)
    assert PROBES["E05"](tmp_path) != table_rows()["E05"][1]


def test_a_short_input_within_tolerance_runs_with_a_warning_and_a_long_one_does_not(tmp_path):
    assert with_input_buffer(tmp_path, -64) == 0
    warning = acl._sim.counters()["warnings"][-1]
    assert warning["call"] == "acl.mdl.execute" and "the board accepts" in warning["why"]
    assert with_input_buffer(tmp_path, -65) == C.ACL_ERROR_GE_PARAM_INVALID
