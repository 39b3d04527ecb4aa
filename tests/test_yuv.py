"""atlas/yuv.py: the YUV420SP layout, BT.601, the JPEG header and decode, the VPC scaling and the AIPP CSC."""
from __future__ import annotations

import numpy as np
import pytest

from atlas import yuv
from dvpp_util import blocky_rgb, bt601_nv12, csc_formula, jpeg_bytes, smooth_rgb


def test_pack_and_unpack_keep_the_picture_at_its_strides_in_nv12_and_nv21():
    y, uv = bt601_nv12(blocky_rgb(6, 10))
    for order in (yuv.NV12, yuv.NV21):
        buffer = yuv.pack(y, uv, 16, 8, uv_order=order)
        assert len(buffer) == yuv.nv12_size(16, 8) == 192
        assert np.array_equal(buffer[:128].reshape(8, 16)[:6, :10], y)
        first = buffer[128:].reshape(4, 16)[0, 0]
        assert first == (uv[0, 0, 0] if order == yuv.NV12 else uv[0, 0, 1])  # U first in NV12, V in NV21
        back_y, back_uv = yuv.unpack(buffer, 10, 6, 16, 8, uv_order=order)
        assert np.array_equal(back_y, y) and np.array_equal(back_uv, uv)
    assert not np.array_equal(yuv.unpack(yuv.pack(y, uv, 16, 8), 10, 6, 16, 8, yuv.NV21)[1], uv)


def test_rgb_to_yuv_is_full_range_bt601():
    colours = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]]], np.uint8)
    assert yuv.rgb_to_yuv(colours)[0].tolist() == [[0, 128, 128], [255, 128, 128], [76, 85, 255], [29, 255, 107]]


def test_subsample_averages_each_2x2_block_and_keeps_a_flat_block_exact():
    ycc = yuv.rgb_to_yuv(blocky_rgb(8, 8))
    y, uv = yuv.subsample(ycc)
    assert np.array_equal(y, ycc[..., 0]) and np.array_equal(uv, ycc[::2, ::2, 1:])
    odd = yuv.subsample(yuv.rgb_to_yuv(smooth_rgb(5, 7)))[1]
    assert odd.shape == (3, 4, 2)


def test_csc_is_the_documented_formula_and_undoes_bt601_within_2():
    rgb = blocky_rgb(16, 16)
    y, uv = bt601_nv12(rgb)
    matrix = ((256, 0, 359), (256, -88, -183), (256, 454, 0))
    out = yuv.yuv_to_rgb(y, uv, matrix, (0, 128, 128))
    assert np.array_equal(out, csc_formula(y, uv, matrix, (0, 128, 128)))
    assert np.abs(out.astype(int) - rgb).max() <= 2
    assert np.abs(yuv.yuv_to_rgb(y, uv, matrix, (16, 128, 128)).astype(int) - rgb).max() > 10  # the bias matters


def test_jpeg_header_reads_size_coding_and_subsampling():
    header = yuv.jpeg_header(jpeg_bytes(smooth_rgb(37, 53)))
    assert (header.width, header.height, header.components, header.coding, header.subsampling) == \
        (53, 37, 3, "huffman", "420")
    assert yuv.jpeg_header(jpeg_bytes(smooth_rgb(40, 40), progressive=True, subsampling=0)).coding == "progressive"
    assert yuv.jpeg_header(jpeg_bytes(smooth_rgb(40, 40), subsampling=1)).subsampling == "422"
    assert yuv.jpeg_header(jpeg_bytes(smooth_rgb(40, 40)[..., 0])).subsampling == "400"
    with pytest.raises(yuv.JpegError):
        yuv.jpeg_header(b"\x89PNG\r\n\x1a\n")


def test_decode_gives_the_jpegs_yuv_and_refuses_what_is_not_a_jpeg():
    rgb = smooth_rgb(30, 46)
    y, uv = yuv.decode_jpeg(jpeg_bytes(rgb))
    want_y, want_uv = yuv.subsample(yuv.rgb_to_yuv(rgb))
    assert y.shape == (30, 46) and uv.shape == (15, 23, 2)
    assert np.abs(y.astype(int) - want_y).max() <= 3 and np.abs(uv.astype(int) - want_uv).max() <= 3
    with pytest.raises(yuv.JpegError):
        yuv.decode_jpeg(b"not a jpeg at all")


def test_resize_keeps_the_same_size_and_a_flat_picture_flat():
    y, uv = bt601_nv12(blocky_rgb(20, 30))
    same = yuv.resize(y, uv, 30, 20)
    assert np.array_equal(same[0], y) and np.array_equal(same[1], uv)
    flat_y, flat_uv = yuv.resize(np.full((20, 30), 77, np.uint8), np.full((10, 15, 2), 140, np.uint8), 64, 12)
    assert flat_y.shape == (12, 64) and (flat_y == 77).all() and flat_uv.shape == (6, 32, 2) and (flat_uv == 140).all()
    half = yuv.resize(y, uv, 16, 10)[0]
    assert not np.array_equal(half, y[::2, ::2][:10, :16])  # bilinear, not a subsampling


def test_jpeg_to_frame_floors_odd_sides_and_packs_one_tight_frame():
    frame = yuv.jpeg_to_frame(jpeg_bytes(smooth_rgb(33, 47)), 32, 24)
    assert frame.shape == (36, 32) and frame.dtype == np.uint8
    y, uv = yuv.split(frame)
    assert y.shape == (24, 32) and uv.shape == (12, 16, 2)
