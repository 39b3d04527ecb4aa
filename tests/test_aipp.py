"""insert_op.cfg generation and parsing (atlas/aipp.py), checked against spec/atc.md §6."""
from __future__ import annotations

import numpy as np
import pytest

from atlas.aipp import (AippConfigError, aipp_from_normalization, check_aipp_matches_model, csc_coefficients,
                        parse_insert_op_cfg, read_insert_op_cfg, render_insert_op_cfg, write_insert_op_cfg)
from atlas.sim.aipp_math import apply_aipp

MNIST = ([0.1307], [0.3081], (1, 28, 28))
CIFAR10 = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616], (3, 32, 32))

SPEC_MNIST_CFG = """\
aipp_op {
    aipp_mode: static
    related_input_rank: 0
    input_format: YUV400_U8
    src_image_size_w: 28
    src_image_size_h: 28
    csc_switch: false
    mean_chn_0: 0
    min_chn_0: 33.3285
    var_reci_chn_0: 0.0127282
}
"""


def _all_pixel_images(channels: int, height: int, width: int) -> np.ndarray:
    """uint8 NHWC images that contain every value 0..255 in every channel, plus random ones."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, height, width, channels), dtype=np.uint8)
    ramp = np.resize(np.arange(256, dtype=np.uint8), height * width).reshape(height, width)
    images[0] = ramp[..., None]
    return images


def _training_normalisation(images_u8: np.ndarray, mean, std) -> np.ndarray:
    """What training feeds the network: float32 (x/255 - mean)/std, NCHW."""
    x = images_u8.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("mean,std,chw", [MNIST, CIFAR10], ids=["mnist", "cifar10"])
def test_generated_cfg_reproduces_training_normalisation_within_1e6(mean, std, chw, capsys):
    # the numbers go through the file text, as ATC would read them
    aipp = parse_insert_op_cfg(render_insert_op_cfg(aipp_from_normalization(mean, std, chw)))[0]
    images = _all_pixel_images(chw[0], chw[1], chw[2])
    golden = _training_normalisation(images, mean, std)
    fp32 = apply_aipp(images, aipp)
    assert np.abs(fp32 - golden).max() <= 1e-6
    fp16_error = float(np.abs(apply_aipp(images, aipp, fp16=True) - golden).max())
    with capsys.disabled():
        print(f"\n  AIPP {chw[0]}-channel: fp32 max |d| {np.abs(fp32 - golden).max():.2e}, fp16 max |d| {fp16_error:.2e}")
    assert fp16_error <= 2.5e-3  # spec §6 [INFER]: the whole step in fp16 stays within 2.5e-3


def test_mnist_fields_match_the_spec_table():
    aipp = aipp_from_normalization(*MNIST)
    assert aipp["input_format"] == "YUV400_U8" and aipp["aipp_mode"] == "static" and aipp["csc_switch"] is False
    assert aipp["mean_chn_0"] == 0
    assert aipp["min_chn_0"] == pytest.approx(33.3285, abs=1e-9)
    # the spec's 0.0127282 is 1/78.5655 to 6 digits; we write 9 so float32 reproduces training exactly
    assert aipp["var_reci_chn_0"] == pytest.approx(0.0127282, abs=5e-8)
    assert (aipp["src_image_size_w"], aipp["src_image_size_h"]) == (28, 28)


def test_cifar10_fields_match_the_spec_table():
    aipp = aipp_from_normalization(*CIFAR10)
    assert aipp["input_format"] == "RGB888_U8" and aipp["rbuv_swap_switch"] is False
    assert [aipp[f"min_chn_{i}"] for i in range(3)] == pytest.approx([125.307, 122.961, 113.8575], abs=1e-9)
    assert [aipp[f"var_reci_chn_{i}"] for i in range(3)] == pytest.approx([0.0158768, 0.0161050, 0.0149907], abs=5e-8)
    assert [aipp[f"mean_chn_{i}"] for i in range(3)] == [0, 0, 0]


def test_rendered_cfg_has_the_spec_layout():
    text = render_insert_op_cfg(aipp_from_normalization(*MNIST))
    body = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    spec = [line.strip() for line in SPEC_MNIST_CFG.splitlines()]
    assert [line.split(":")[0] for line in body] == [line.split(":")[0] for line in spec]
    assert body[0] == "aipp_op {" and body[-1] == "}"


def test_spec_example_cfg_parses_to_typed_values():
    (op,) = parse_insert_op_cfg(SPEC_MNIST_CFG)
    assert op == {"aipp_mode": "static", "related_input_rank": 0, "input_format": "YUV400_U8",
                  "src_image_size_w": 28, "src_image_size_h": 28, "csc_switch": False, "mean_chn_0": 0,
                  "min_chn_0": 33.3285, "var_reci_chn_0": 0.0127282}


def test_parser_accepts_comments_one_line_blocks_and_several_inputs():
    text = "# two inputs\naipp_op { aipp_mode: static input_format: RGB888_U8 } # trailing\n" \
           "aipp_op{aipp_mode:static;related_input_rank:1;input_format:YUV400_U8;csc_switch:False}"
    ops = parse_insert_op_cfg(text)
    assert [op["input_format"] for op in ops] == ["RGB888_U8", "YUV400_U8"]
    assert ops[1]["related_input_rank"] == 1 and ops[1]["csc_switch"] is False


@pytest.mark.parametrize("text", [
    "aipp_op { aipp_mode: static input_format: YUV400_U8",           # unbalanced brace
    "aipp { aipp_mode: static }",                                     # wrong block name
    "aipp_op { aipp_mode static }",                                   # missing colon
    "aipp_op { aipp_mode: static input_format: YUV400_U8 colour: 3 }",  # unknown field
    "aipp_op { aipp_mode: static input_format: YUV400_U8 mean_chn_0: 1.5 }",  # uint8 field given a float
    "aipp_op { aipp_mode: static input_format: GRAY }",               # not an input_format
    "aipp_op { aipp_mode: static input_format: YUV400_U8 csc_switch: maybe }",
    "",                                                                # no block
])
def test_syntax_errors_are_e13018(text):
    with pytest.raises(AippConfigError) as info:
        parse_insert_op_cfg(text)
    assert info.value.code == "E13018"


@pytest.mark.parametrize("text", [
    "aipp_op { input_format: YUV400_U8 }",                                      # aipp_mode required
    "aipp_op { aipp_mode: static }",                                            # static needs input_format
    "aipp_op { aipp_mode: static input_format: YUV400_U8 mean_chn_0: 300 }",    # uint8 range
    "aipp_op { aipp_mode: static input_format: YUV400_U8 min_chn_0: 256.5 }",   # fp16 field range [0,255]
    "aipp_op { aipp_mode: static input_format: YUV400_U8 var_reci_chn_0: 70000 }",
    "aipp_op { aipp_mode: static input_format: YUV400_U8 src_image_size_w: 5000 }",
])
def test_bad_values_are_e10052(text):
    with pytest.raises(AippConfigError) as info:
        parse_insert_op_cfg(text)
    assert info.value.code == "E10052"


def test_unreadable_file_is_e13018(tmp_path):
    with pytest.raises(AippConfigError) as info:
        read_insert_op_cfg(tmp_path / "missing.cfg")
    assert info.value.code == "E13018"
    (tmp_path / "binary.cfg").write_bytes(b"\xff\xfe\x00aipp")
    with pytest.raises(AippConfigError):
        read_insert_op_cfg(tmp_path / "binary.cfg")


def test_write_then_read_round_trips(tmp_path):
    aipp = aipp_from_normalization(*CIFAR10)
    path = write_insert_op_cfg(tmp_path / "insert_op.cfg", aipp)
    assert read_insert_op_cfg(path) == [aipp]


def test_channel_count_mismatch_is_the_kernels_e81012():
    aipp = aipp_from_normalization(*MNIST)
    check_aipp_matches_model(aipp, [1, 1, 28, 28])
    with pytest.raises(AippConfigError) as info:
        check_aipp_matches_model(aipp, [1, 3, 28, 28])
    assert info.value.code == "E81012" and "input C[3] must be 1" in info.value.message
    with pytest.raises(AippConfigError) as info:
        check_aipp_matches_model(aipp, [1, 1, 32, 32])  # src size differs without crop/padding
    assert info.value.code == "E81012" and "should be equal to src_image_size" in info.value.message


@pytest.mark.parametrize("mean,std,chw", [([0.5, 0.5], [0.2, 0.2], (2, 8, 8)), ([0.5], [0.0], (1, 8, 8)),
                                          ([0.5], [0.2], (3, 8, 8))])
def test_unusable_normalisation_is_refused(mean, std, chw):
    with pytest.raises(ValueError):
        aipp_from_normalization(mean, std, chw)


# -- YUV420SP_U8: colour-space conversion, crop, padding (issue 21) ---------------------------------------------
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_yuv420sp_generator_adds_the_jpeg_csc_and_crops_the_vpc_width_stride():
    aipp = aipp_from_normalization(*IMAGENET, (3, 28, 28), input_format="YUV420SP_U8")
    assert (aipp["src_image_size_w"], aipp["src_image_size_h"]) == (32, 28)  # align16(w), align2(h): the VPC's strides
    assert aipp["crop"] and (aipp["crop_size_w"], aipp["crop_size_h"], aipp["load_start_pos_w"]) == (28, 28, 0)
    assert aipp["csc_switch"] and csc_coefficients(aipp)[:2] == ([[256, 0, 359], [256, -88, -183], [256, 454, 0]],
                                                                  [0, 128, 128])
    assert parse_insert_op_cfg(render_insert_op_cfg(aipp)) == [aipp]
    check_aipp_matches_model(aipp, [1, 3, 28, 28])
    aligned = aipp_from_normalization(*IMAGENET, (3, 32, 64), input_format="YUV420SP_U8")
    assert "crop" not in aligned and (aligned["src_image_size_w"], aligned["src_image_size_h"]) == (64, 32)


@pytest.mark.parametrize("chw,fmt", [((3, 27, 28), "YUV420SP_U8"), ((1, 28, 28), "YUV420SP_U8"),
                                     ((3, 28, 28), "XRGB8888_U8"), ((3, 28, 28), "NV12")])
def test_generator_refuses_a_format_the_model_cannot_take(chw, fmt):
    mean, std = ([0.5] * chw[0], [0.2] * chw[0])
    with pytest.raises(ValueError):
        aipp_from_normalization(mean, std, chw, input_format=fmt)


def test_csc_coefficients_not_given_take_atcs_defaults_one_by_one():
    assert csc_coefficients({"input_format": "YUV420SP_U8", "csc_switch": True, "matrix_r0c0": 256})[0] == \
        [[256, 516, 0], [298, -100, -208], [298, 0, 409]]  # GE5 ge_aipp_op.cc SetCscDefaultValue, per field
    assert csc_coefficients({"input_format": "RGB888_U8", "csc_switch": True})[2] == [16, 128, 128]


YUV_CROP = {"aipp_mode": "static", "input_format": "YUV420SP_U8", "csc_switch": True, "src_image_size_w": 32,
            "src_image_size_h": 28, "crop": True, "load_start_pos_w": 0, "load_start_pos_h": 0, "crop_size_w": 28,
            "crop_size_h": 28}
PADDED = {**YUV_CROP, "crop_size_w": 24, "crop_size_h": 24, "load_start_pos_w": 2, "load_start_pos_h": 2,
          "padding": True, **{f"{side}_padding_size": 2 for side in ("left", "right", "top", "bottom")}}


@pytest.mark.parametrize("change,dims,words", [
    ({"input_format": "YUV400_U8"}, [1, 1, 28, 28], "doesn't make sense to convert"),   # L1384
    ({}, [1, 1, 28, 28], "input C[1] must be 3"),                                       # L1391
    ({"resize": True}, [1, 3, 28, 28], "resize only support"),                          # L1642
    ({"src_image_size_w": 0}, [1, 3, 28, 28], "should be greater than 0"),              # L1497
    ({"src_image_size_w": 33}, [1, 3, 28, 28], "should be even for YUV420SP_U8"),       # L1511
    ({"load_start_pos_w": 6}, [1, 3, 28, 28], "should be less than or equal to"),       # L1592
    ({"load_start_pos_w": 1, "crop_size_w": 28}, [1, 3, 28, 28], "must be even"),       # L1616
    ({"crop_size_w": 26}, [1, 3, 28, 28], "should be equal to output W"),              # L1780
    ({"crop": False, "src_image_size_w": 28, "src_image_size_h": 27}, [1, 3, 28, 28],
     "of network should be equal to src_image_size_h"),                                 # L1915
    ({"crop": False, "src_image_size_w": 0, "src_image_size_h": 0}, [1, 3, 27, 28],
     "should be even for YUV420SP_U8"),                                                 # L1967
])
def test_the_aipp_kernels_rules_are_e81012(change, dims, words):
    with pytest.raises(AippConfigError) as info:
        check_aipp_matches_model({**YUV_CROP, **change}, dims)
    assert info.value.code == "E81012" and words in info.value.message
    check_aipp_matches_model(YUV_CROP, [1, 3, 28, 28])  # the control


@pytest.mark.parametrize("change,dims,words", [
    ({"crop_size_w": 0}, [1, 3, 28, 28], "padding should be not enable"),  # L1570
    ({"left_padding_size": 4}, [1, 3, 28, 28], "should be equal to output W"),  # L1803
    ({}, [1, 3, 28, 1100], "1080"),  # L1748 (checked before the sizes)
])
def test_padding_rules_are_e81012(change, dims, words):
    with pytest.raises(AippConfigError) as info:
        check_aipp_matches_model({**PADDED, **change}, dims)
    assert info.value.code == "E81012" and words in info.value.message
    check_aipp_matches_model(PADDED, [1, 3, 28, 28])


def test_apply_aipp_crops_converts_normalises_and_pads_in_the_spec_order():
    from atlas import yuv

    rng = np.random.default_rng(0)
    y, uv = rng.integers(0, 256, (28, 32), dtype=np.uint8), rng.integers(0, 256, (14, 16, 2), dtype=np.uint8)
    aipp = {**PADDED, "matrix_r0c0": 256, "padding_value": 7.0, "min_chn_0": 10.0, "var_reci_chn_0": 0.5}
    out = apply_aipp(yuv.frame(y, uv)[None], aipp, model_hw=(28, 28))
    matrix, bias, _ = csc_coefficients(aipp)
    inner = yuv.yuv_to_rgb(y[2:26, 2:26], uv[1:13, 1:13], matrix, bias)  # crop before CSC, offsets halved for UV
    assert out.shape == (1, 3, 28, 28)
    assert np.allclose(out[0, 0, 2:26, 2:26], (inner[..., 0] - 10.0) * 0.5)
    assert np.allclose(out[0, 1, 2:26, 2:26], inner[..., 1])
    assert (out[0, :, :2] == 7.0).all() and (out[0, :, :, 26:] == 7.0).all()  # the padding holds padding_value
    swapped = apply_aipp(yuv.frame(y, uv[..., ::-1])[None], {**aipp, "rbuv_swap_switch": True}, model_hw=(28, 28))
    assert np.array_equal(swapped, out)  # NV21 in with rbuv_swap_switch = NV12 in without it
    assert not np.array_equal(apply_aipp(yuv.frame(y, uv[..., ::-1])[None], aipp, model_hw=(28, 28)), out)
