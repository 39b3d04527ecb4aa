"""The emulated DVPP (atlas/sim/acl/media.py) with AIPP colour conversion behind it: the acceptance checks of
issue 21 (colour conversion against the formulas, without Pillow; JPEGD against Pillow's decode in the same
layout) and what the VPC does with strides, crops, pastes and NV21. The refusals are in test_dvpp_error_codes.py."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import atlas.sim.acl as acl
from atlas.aipp import JPEG_YUV_TO_RGB, csc_coefficients
from dvpp_util import (MEAN, NV21, STD, Dvpp, blocky_rgb, bt601, bt601_nv12, csc_formula, csc_model, jpeg_bytes, read_planes,
                       run_model, smooth_rgb)


@pytest.fixture(autouse=True)
def fresh_emulator():
    acl._sim.reset()
    yield
    acl._sim.reset()


@pytest.fixture
def dvpp():
    return Dvpp()


def normalised(rgb: np.ndarray) -> np.ndarray:
    """What training feeds the model: (p/255 - mean)/std, NCHW, float32."""
    return ((rgb / 255.0 - np.asarray(MEAN)) / np.asarray(STD)).transpose(2, 0, 1)[None].astype(np.float32)


@pytest.mark.parametrize("height,width", [(32, 32), (28, 28), (24, 40)])
def test_hand_made_yuv420sp_through_the_vpc_and_a_csc_aipp_model_matches_the_formulas(dvpp, tmp_path, height, width):
    rgb = blocky_rgb(height, width)
    y, uv = bt601_nv12(rgb)  # built here from BT.601, not by atlas/yuv.py, and no Pillow
    _, source = dvpp.picture(y, uv, (width + 127) // 128 * 128, (height + 15) // 16 * 16)  # JPEGD's strides
    out_ptr, out_desc = dvpp.output(width, height)  # the VPC's: 16 / 2 aligned (28 -> 32: AIPP crops it)
    assert acl.media.dvpp_vpc_resize_async(dvpp.channel, source, out_desc, dvpp.resize_config, dvpp.stream) == 0
    assert dvpp.sync() == 0

    om, aipp = csc_model(tmp_path, height, width)
    board = run_model(om, out_ptr, acl.media.dvpp_get_pic_desc_size(out_desc)).reshape(1, 3, height, width)
    csc = csc_formula(y, uv, JPEG_YUV_TO_RGB, (0, 128, 128))
    expected = ((csc - np.array([aipp[f"min_chn_{i}"] for i in range(3)]))
                * np.array([aipp[f"var_reci_chn_{i}"] for i in range(3)])).transpose(2, 0, 1)[None]
    assert np.abs(board - expected).max() <= 0.005  # float16 normalisation, as the chip stores it (measured 1.5e-3)
    assert np.abs(csc - rgb.astype(np.int64)).max() <= 2  # the JPEG matrix undoes BT.601 within 2 LSB (notes §4)
    assert np.abs(board - normalised(rgb)).max() <= 0.04  # so the model sees what training showed it (2 LSB)


def test_csc_without_a_matrix_uses_atcs_default_bt601_narrow_bgr(dvpp, tmp_path):
    rgb = blocky_rgb(32, 32, seed=1)
    y, uv = bt601_nv12(rgb)
    ptr, desc = dvpp.picture(y, uv, 32, 32)
    aipp = {"aipp_mode": "static", "input_format": "YUV420SP_U8", "csc_switch": True, "src_image_size_w": 32,
            "src_image_size_h": 32}  # the official samples' aipp.cfg form: no matrix given
    om, _ = csc_model(tmp_path, 32, 32, aipp)
    board = run_model(om, ptr, acl.media.dvpp_get_pic_desc_size(desc)).reshape(3, 32, 32).transpose(1, 2, 0)
    default = ((298, 516, 0), (298, -100, -208), (298, 0, 409))  # GE5 ge_aipp_op.cc SetCscDefaultValue
    assert csc_coefficients(aipp)[:2] == ([list(r) for r in default], [16, 128, 128])
    assert np.array_equal(board, csc_formula(y, uv, default, (16, 128, 128)))
    # negative control: that is not RGB (rows B, G, R, narrow range)
    assert np.abs(board - csc_formula(y, uv, JPEG_YUV_TO_RGB, (0, 128, 128))).max() > 50


def test_jpegd_writes_pillows_decode_in_the_exact_yuv420sp_layout(dvpp):
    rgb = smooth_rgb(61, 90)  # odd height: the picture keeps it
    data = jpeg_bytes(rgb)
    info = acl.media.dvpp_jpeg_get_image_info(acl.util.bytes_to_ptr(data), len(data))
    assert info == (90, 61, 3, 0)
    size, ret = acl.media.dvpp_jpeg_predict_dec_size(acl.util.bytes_to_ptr(data), len(data), 1)
    assert (size, ret) == (128 * 64 * 3 // 2, 0)
    out = dvpp.malloc(size)
    desc = dvpp.desc(out, 90, 61, 128, 64, size)
    assert acl.media.dvpp_jpeg_decode_async(dvpp.channel, dvpp.upload(data), len(data), desc, dvpp.stream) == 0
    assert dvpp.sync() == 0 and acl.media.dvpp_get_pic_desc_ret_code(desc) == 0

    pillow = np.pad(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), ((0, 1), (0, 0), (0, 0)), mode="edge")
    want = bt601(pillow)  # Pillow's decode, converted here to YUV420SP: 4:2:0 as the mean of each 2x2 block
    want_y, want_uv = want[:61, :, 0], want[..., 1:].reshape(31, 2, 45, 2, 2).mean(axis=(1, 3))
    y, uv, raw = read_planes(out, 90, 61, 128, 64)
    assert np.abs(y - want_y).max() <= 1 and np.abs(uv - want_uv).max() <= 1  # measured 0.44, 0.78
    assert (raw[:128 * 64].reshape(64, 128)[:, 90:] == 0xA5).all()  # padding untouched: the picture is at stride 128
    # negative control: the same bytes read at the VPC's stride (96) are not the picture
    assert np.abs(read_planes(out, 90, 61, 96, 64)[0] - want_y).max() > 50


def test_a_grayscale_jpeg_decodes_with_uv_0x80(dvpp):
    gray = smooth_rgb(48, 64)[..., 0]
    data = jpeg_bytes(gray)
    out = dvpp.malloc(128 * 48 * 3 // 2)
    desc = dvpp.desc(out, 64, 48, 128, 48)
    assert acl.media.dvpp_jpeg_decode_async(dvpp.channel, dvpp.upload(data), len(data), desc, dvpp.stream) == 0
    assert dvpp.sync() == 0
    y, uv, _ = read_planes(out, 64, 48, 128, 48)
    assert (uv == 128).all() and np.abs(y.astype(int) - gray).max() <= 2


def test_damaged_jpeg_data_fails_at_synchronize_with_the_picture_ret_code_set(dvpp):
    data = jpeg_bytes(smooth_rgb(64, 64))
    damaged = data[:len(data) // 3]  # the header parses; the image data ends early
    out = dvpp.malloc(128 * 64 * 3 // 2)
    desc = dvpp.desc(out, 64, 64, 128, 64)
    assert acl.media.dvpp_jpeg_decode_async(dvpp.channel, dvpp.upload(damaged), len(damaged), desc, dvpp.stream) == 0
    assert dvpp.sync() == 507018 and acl.media.dvpp_get_pic_desc_ret_code(desc) == 507018
    # negative control: the whole file decodes
    assert acl.media.dvpp_jpeg_decode_async(dvpp.channel, dvpp.upload(data), len(data), desc, dvpp.stream) == 0
    assert dvpp.sync() == 0 and acl.media.dvpp_get_pic_desc_ret_code(desc) == 0


def test_vpc_floors_an_odd_input_width_and_height(dvpp):
    rgb = blocky_rgb(16, 32)
    y, uv = bt601_nv12(rgb)
    ptr, source = dvpp.picture(y, uv, 32, 16)
    acl.media.dvpp_set_pic_desc_width(source, 31)
    acl.media.dvpp_set_pic_desc_height(source, 15)  # processed as 30 x 14 (5046 aclpythondevg_01_0260)
    out, desc = dvpp.output(30, 14)
    assert acl.media.dvpp_vpc_resize_async(dvpp.channel, source, desc, dvpp.resize_config, dvpp.stream) == 0
    assert dvpp.sync() == 0
    got_y, got_uv, _ = read_planes(out, 30, 14, 32, 14)
    assert np.array_equal(got_y, y[:14, :30]) and np.array_equal(got_uv, uv[:7, :15])


def test_crop_scales_the_area_to_the_whole_output(dvpp):
    y, uv = bt601_nv12(blocky_rgb(64, 64))
    _, source = dvpp.picture(y, uv, 64, 64)
    out, desc = dvpp.output(16, 8)
    crop = acl.media.dvpp_create_roi_config(16, 31, 8, 15)  # 16 x 8 at (16, 8): no scaling
    assert acl.media.dvpp_vpc_crop_async(dvpp.channel, source, desc, crop, dvpp.stream) == 0
    assert dvpp.sync() == 0
    got_y, got_uv, _ = read_planes(out, 16, 8, 16, 8)
    assert np.array_equal(got_y, y[8:16, 16:32]) and np.array_equal(got_uv, uv[4:8, 8:16])


def test_crop_and_paste_writes_the_paste_area_and_leaves_the_rest_as_it_was(dvpp):
    y, uv = bt601_nv12(blocky_rgb(32, 32))
    _, source = dvpp.picture(y, uv, 32, 32)
    background_y, background_uv = np.full((64, 64), 40, np.uint8), np.full((32, 32, 2), 90, np.uint8)
    out, desc = dvpp.picture(background_y, background_uv, 64, 64)  # pasting onto an existing picture
    crop = acl.media.dvpp_create_roi_config(0, 31, 0, 31)
    paste = acl.media.dvpp_create_roi_config(16, 47, 8, 39)  # left 16-aligned, right and bottom odd
    assert acl.media.dvpp_vpc_crop_and_paste_async(dvpp.channel, source, desc, crop, paste, dvpp.stream) == 0
    assert dvpp.sync() == 0
    got_y, got_uv, _ = read_planes(out, 64, 64, 64, 64)
    assert np.array_equal(got_y[8:40, 16:48], y) and np.array_equal(got_uv[4:20, 8:24], uv)
    outside = np.ones((64, 64), bool)
    outside[8:40, 16:48] = False
    assert (got_y[outside] == 40).all() and (got_uv[:4] == 90).all()


def test_resize_scales_by_up_to_16_and_down_to_a_32nd(dvpp):
    y, uv = bt601_nv12(blocky_rgb(320, 320))
    _, source = dvpp.picture(y, uv, 320, 320)
    out, desc = dvpp.output(10, 10)
    assert acl.media.dvpp_vpc_resize_async(dvpp.channel, source, desc, dvpp.resize_config, dvpp.stream) == 0
    assert dvpp.sync() == 0
    flat = np.full((32, 32), 200, np.uint8)
    _, small = dvpp.picture(flat, np.full((16, 16, 2), 128, np.uint8), 32, 32)
    out, desc = dvpp.output(512, 512)
    assert acl.media.dvpp_vpc_resize_async(dvpp.channel, small, desc, dvpp.resize_config, dvpp.stream) == 0
    assert dvpp.sync() == 0 and (read_planes(out, 512, 512, 512, 512)[0] == 200).all()


def test_nv21_output_writes_v_before_u(dvpp):
    y, uv = bt601_nv12(blocky_rgb(16, 32))
    _, source = dvpp.picture(y, uv, 32, 16)
    out, desc = dvpp.output(32, 16, fmt=NV21)
    assert acl.media.dvpp_vpc_resize_async(dvpp.channel, source, desc, dvpp.resize_config, dvpp.stream) == 0
    assert dvpp.sync() == 0
    assert np.array_equal(read_planes(out, 32, 16, 32, 16)[1], uv[..., ::-1])


def test_vpc_work_is_done_at_synchronize_stream(dvpp):
    y, uv = bt601_nv12(blocky_rgb(16, 32))
    _, source = dvpp.picture(y, uv, 32, 16)
    out, desc = dvpp.output(32, 16)
    assert acl.media.dvpp_vpc_resize_async(dvpp.channel, source, desc, dvpp.resize_config, dvpp.stream) == 0
    assert (read_planes(out, 32, 16, 32, 16)[0] == 0xA5).all()  # dvpp memory as dvpp_malloc left it
    assert dvpp.sync() == 0 and np.array_equal(read_planes(out, 32, 16, 32, 16)[0], y)


def test_dvpp_malloc_is_128_aligned_and_freed_only_by_dvpp_free(dvpp):
    ptrs = [dvpp.malloc(size) for size in (1, 100, 4097)]
    assert all(p % 128 == 0 for p in ptrs)
    assert acl.rt.free(ptrs[0]) == 107000  # not acl.rt.free's memory
    assert [acl.media.dvpp_free(p) for p in ptrs] == [0, 0, 0]


def test_finalize_reports_dvpp_memory_and_media_handles_left_behind(dvpp):
    dvpp.malloc(64)
    acl.media.dvpp_create_pic_desc()
    acl.finalize()
    leaks = acl._sim.counters()["leaks_at_finalize"]
    assert len(leaks["dvpp_allocations"]) == 1 and leaks["media pic descs"] == 1 and leaks["media channel descs"] == 1
