"""scripts/sample_models.py: the stand-in models atc-sim accepts, the emulator's execution record, and the check
against onnxruntime that scripts/run_samples.sh applies to Huawei's samples (which are not in this repository)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import atlas.sim.acl as acl
from atlas.board import acl_consts as C

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sample_models", REPO / "scripts" / "sample_models.py")
sample_models = sys.modules.setdefault("sample_models", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(sample_models)  # registered first: its dataclasses look their module up


@pytest.fixture(autouse=True)
def recording(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_KD_SIM_ACL_RECORD", str(tmp_path / "records"))
    acl._sim.reset()
    yield
    acl._sim.reset()


def prepared(tmp_path: Path, name: str) -> Path:
    sample = next(s for s in sample_models.SAMPLES if s.name == name)
    folder = tmp_path
    sample_models.prepare(sample, folder)
    return folder / sample.model


def execute_once(om: Path, feeds: list[np.ndarray]) -> None:
    """Load `om` and run it once on `feeds`, as a sample would (the emulator records it)."""
    assert acl.init() == 0 and acl.rt.set_device(0) == 0
    model_id, _ = acl.mdl.load_from_file(str(om))
    desc = acl.mdl.create_desc()
    acl.mdl.get_desc(desc, model_id)
    datasets = []
    for count, size_of, arrays in ((acl.mdl.get_num_inputs(desc), acl.mdl.get_input_size_by_index, feeds),
                                   (acl.mdl.get_num_outputs(desc), acl.mdl.get_output_size_by_index, None)):
        dataset = acl.mdl.create_dataset()
        for i in range(count):
            size = size_of(desc, i)
            ptr, _ = acl.rt.malloc(size, C.ACL_MEM_MALLOC_NORMAL_ONLY)
            if arrays is not None:
                data = arrays[i].tobytes()
                acl.rt.memcpy(ptr, size, acl.util.bytes_to_ptr(data), len(data), C.ACL_MEMCPY_DEVICE_TO_DEVICE)
            acl.mdl.add_dataset_buffer(dataset, acl.create_data_buffer(ptr, size))
        datasets.append(dataset)
    assert acl.mdl.execute(model_id, *datasets) == 0


def test_a_recorded_execution_of_a_stand_in_agrees_with_onnxruntime(tmp_path):
    om = prepared(tmp_path, "resnet50_imagenet_classification")  # fp16 input, --out_nodes=prob:0
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float16)
    execute_once(om, [image])
    (record,) = sorted((tmp_path / "records").glob("*.npz"))
    result = sample_models.check_record(record)
    assert result["ok"] and result["cosine"] >= sample_models.COSINE_MIN


def test_a_wrong_output_fails_the_check(tmp_path):
    om = prepared(tmp_path, "bert_text_classification")
    execute_once(om, [np.ones((1, 300), np.float32), np.zeros((1, 300), np.float32)])
    (record,) = sorted((tmp_path / "records").glob("*.npz"))
    arrays = dict(np.load(record))
    arrays["output0"] = arrays["output0"] * 1.1  # 10 % off: far outside fp16 rounding
    np.savez(record, **arrays)
    assert not sample_models.check_record(record)["ok"]


def test_every_stand_in_is_accepted_by_atc_sim_with_the_samples_options(tmp_path):
    for sample in sample_models.SAMPLES:
        if sample.model:
            om = prepared(tmp_path / sample.name, sample.name)
            assert om.is_file(), sample.name


def test_a_folder_that_is_not_a_samples_checkout_is_refused(tmp_path, capsys):
    assert sample_models.main([str(tmp_path)]) == 2
    assert "not a checkout of Ascend/samples" in capsys.readouterr().err


def test_the_record_holds_the_om_metadata_and_the_board_side_arrays(tmp_path):
    om = prepared(tmp_path, "dehaze_picture")
    execute_once(om, [np.zeros((1, 512, 512, 3), np.float16)])
    (record,) = sorted((tmp_path / "records").glob("*.npz"))
    data = np.load(record)
    assert json.loads(str(data["meta"]))["inputs"][0]["dtype"] == "float16"
    assert data["input0"].dtype == np.float16 and data["output0"].shape == (1, 512, 512, 3)


# The fields of Ascend/samples' YUV420SP aipp.cfg (vpc_resnet50_imagenet_classification/caffe_model/aipp.cfg), in its
# layout (tabs, " : ", a trailing space); run_samples.sh reads the file itself from the checkout.
OFFICIAL_LIKE = ("aipp_op {\n\taipp_mode : static\n\trelated_input_rank : 0\n\tinput_format : YUV420SP_U8\n"
                 "\tcsc_switch : true\n\trbuv_swap_switch : false \n\tvar_reci_chn_0 : 1\n\tvar_reci_chn_1 : 1\n"
                 "\tvar_reci_chn_2 : 1\n\tmin_chn_0 : 123\n\tmin_chn_1 : 117\n\tmin_chn_2 : 104\n"
                 "\tload_start_pos_h : 0\n\tload_start_pos_w : 0\n\tsrc_image_size_w : 224\n\tsrc_image_size_h : 224\n}\n")


def test_a_yuv_aipp_token_sets_the_source_size_and_the_crop():
    from atlas.aipp import parse_insert_op_cfg

    (plain,) = parse_insert_op_cfg(sample_models.yuv_aipp_cfg(OFFICIAL_LIKE, "AIPP_YUV:1408x800"))
    assert (plain["src_image_size_w"], plain["src_image_size_h"]) == (1408, 800) and "crop" not in plain
    (cropped,) = parse_insert_op_cfg(sample_models.yuv_aipp_cfg(OFFICIAL_LIKE, "AIPP_YUV:256x224:224x224@16,0"))
    assert cropped["crop"] and (cropped["load_start_pos_w"], cropped["load_start_pos_h"]) == (16, 0)
    assert (cropped["crop_size_w"], cropped["crop_size_h"], cropped["min_chn_0"]) == (224, 224, 123.0)


def test_every_dvpp_stand_in_is_accepted_by_atc_sim_with_its_aipp_config(tmp_path):
    for sample in sample_models.DVPP_SAMPLES:
        if sample.model:
            sample_models.prepare(sample, tmp_path / sample.name, OFFICIAL_LIKE)
            assert (tmp_path / sample.name / sample.model).is_file(), sample.name


def test_a_recorded_yuv420sp_execution_is_checked_through_the_csc_and_the_crop(tmp_path):
    sample = next(s for s in sample_models.DVPP_SAMPLES if s.name == "inceptionv3_picture")  # 336 -> crop 300
    sample_models.prepare(sample, tmp_path, OFFICIAL_LIKE)
    frames = np.random.default_rng(0).integers(0, 256, (1, 336 * 3 // 2, 336), dtype=np.uint8)
    execute_once(tmp_path / sample.model, [frames])
    (record,) = sorted((tmp_path / "records").glob("*.npz"))
    assert np.load(record)["input0"].shape == (1, 504, 336)
    assert sample_models.check_record(record)["ok"]
    arrays = dict(np.load(record))
    arrays["output0"] = arrays["output0"][..., ::-1].copy()  # negative control: the scores in the wrong order
    np.savez(record, **arrays)
    assert not sample_models.check_record(record)["ok"]
