"""Every row of the DVPP table in docs/emulator.md: one probe per row runs the case on the emulator and must return
the code the table states; the same probe with the case corrected (the negative control) must return 0, or for a
row the emulator accepts, the probe's twin just past the rule must be refused (so the rule is neither missing nor
broader than the table says)."""
from __future__ import annotations

import numpy as np
import pytest

import atlas.sim.acl as acl
from dvpp_util import Dvpp, blocky_rgb, bt601_nv12, jpeg_bytes, smooth_rgb
from test_acl_error_codes import table_rows as error_code_table

INVALID = 100000


def table_rows() -> dict[str, tuple[str, int]]:
    return error_code_table("D")


@pytest.fixture(autouse=True)
def fresh_emulator():
    acl._sim.reset()
    yield
    acl._sim.reset()


# -- probes: each takes `case` (True: the table's case, False: its control) and returns the code ----------------
def malloc(case):
    Dvpp()
    return acl.media.dvpp_malloc(0 if case else 64)[1]


def dvpp_free_of(case):
    d = Dvpp()
    ptr = acl.rt.malloc(64, 2)[0] if case else d.malloc(64)
    return acl.media.dvpp_free(ptr)


def dvpp_free_twice(case):
    ptr = Dvpp().malloc(64)
    first = acl.media.dvpp_free(ptr)
    return acl.media.dvpp_free(ptr) if case else first


def rt_free_of(case):
    d = Dvpp()
    return acl.rt.free(d.malloc(64) if case else acl.rt.malloc(64, 2)[0])


def create_channel(case):
    Dvpp()
    desc = acl.media.dvpp_create_channel_desc()
    if case:
        acl.media.dvpp_destroy_channel_desc(desc)
    return acl.media.dvpp_create_channel(desc)


def without_channel(case):
    d = Dvpp()
    _, source, out = pictures(d)
    channel = acl.media.dvpp_create_channel_desc()
    if not case:
        acl.media.dvpp_create_channel(channel)
    return acl.media.dvpp_vpc_resize_async(channel, source, out, d.resize_config, d.stream)


def set_on_destroyed(case):
    Dvpp()
    pic = acl.media.dvpp_create_pic_desc()
    if case:
        acl.media.dvpp_destroy_pic_desc(pic)
    return acl.media.dvpp_set_pic_desc_width(pic, 64)


def image_info(case):
    Dvpp()
    data = b"\x89PNG\r\n\x1a\n" + bytes(64) if case else jpeg_bytes(smooth_rgb(40, 40))
    return acl.media.dvpp_jpeg_get_image_info(acl.util.bytes_to_ptr(data), len(data))[3]


def decode(data: bytes, width_stride=None, height_stride=None, size=None, fmt=1, source="dvpp", offset=0,
           sync=False) -> int:
    """Decode `data` with the output desc the rules want, unless a keyword changes one of its fields."""
    from atlas.yuv import jpeg_header

    d = Dvpp()
    header = jpeg_header(data)
    ws = width_stride or (header.width + 127) // 128 * 128
    hs = height_stride or (header.height + 15) // 16 * 16
    need = ws * hs * 3 // 2
    out = d.malloc(max(need, size or 0))
    desc = d.desc(out, header.width, header.height, ws, hs, need if size is None else size, fmt)
    if source == "dvpp":
        ptr = d.malloc(len(data) + offset) + offset
    else:
        ptr = acl.rt.malloc(len(data), 2)[0]
    acl.rt.memcpy(ptr, len(data), acl.util.bytes_to_ptr(data), len(data), 3)
    ret = acl.media.dvpp_jpeg_decode_async(d.channel, ptr, len(data), desc, d.stream)
    return d.sync() if sync and ret == 0 else ret


def with_sof(data: bytes, marker: int, sampling: int | None = None) -> bytes:
    """The same JPEG with its frame header saying another coding (SOF marker) or Y sampling factors."""
    at = data.index(b"\xff\xc0")
    data = data[:at + 1] + bytes([marker]) + data[at + 2:]
    if sampling is not None:
        data = data[:at + 11] + bytes([sampling]) + data[at + 12:]
    return data


BASELINE = jpeg_bytes(smooth_rgb(48, 64))
PROBES_DECODE = {
    "D09": lambda case: decode(jpeg_bytes(smooth_rgb(16, 16) if case else smooth_rgb(32, 32))),
    "D10": lambda case: decode(jpeg_bytes(smooth_rgb(48, 64), progressive=case)),
    "D11": lambda case: decode(with_sof(BASELINE, 0xC9 if case else 0xC0)),
    "D12": lambda case: decode(with_sof(BASELINE, 0xC0, 0x41 if case else 0x22)),
    "D13": lambda case: decode(BASELINE, source="device" if case else "dvpp"),
    "D14": lambda case: decode(BASELINE, offset=64 if case else 0),
    "D15": lambda case: decode(BASELINE, width_stride=80 if case else 128),
    "D16": lambda case: decode(BASELINE, height_stride=56 if case else 48),
    "D17": lambda case: decode(BASELINE, size=128 * 48 * 3 // 2 - (1 if case else 0)),
    "D18": lambda case: decode(BASELINE, fmt=12 if case else 2),
    "D19": lambda case: decode(BASELINE[:len(BASELINE) // 2] if case else BASELINE, sync=True),
}


def pictures(d: Dvpp, width=32, height=16, width_stride=32, height_stride=16, size=None, fmt=1, memory="dvpp",
             out_width=32, out_height=16, out_stride=None, out_size=None, out_fmt=1):
    """(the input pointer, the input desc, the output desc) of a resize, every field as the rules want unless a
    keyword changes it."""
    y, uv = bt601_nv12(blocky_rgb(max(height, 2) // 2 * 2, max(width, 2) // 2 * 2))
    full_y = np.zeros((height_stride, width_stride), np.uint8)
    full_y[:y.shape[0], :y.shape[1]] = y[:height_stride, :width_stride]
    need = width_stride * height_stride * 3 // 2
    ptr = d.malloc(need) if memory == "dvpp" else acl.rt.malloc(need, 2)[0]
    source = d.desc(ptr, width, height, width_stride, height_stride, need if size is None else size, fmt)
    ws = out_stride or (out_width + 15) // 16 * 16
    hs = (out_height + 1) // 2 * 2
    out_need = ws * hs * 3 // 2
    out = d.desc(d.malloc(max(out_need, 64)), out_width, out_height, ws, hs, out_need if out_size is None else
                 out_size, out_fmt)
    return ptr, source, out


def resize(**fields) -> int:
    d = Dvpp()
    _, source, out = pictures(d, **fields)
    return acl.media.dvpp_vpc_resize_async(d.channel, source, out, d.resize_config, d.stream)


def crop(roi, **fields) -> int:
    d = Dvpp()
    _, source, out = pictures(d, width=64, height=32, width_stride=64, height_stride=32, out_width=16,
                              out_height=8, **fields)
    return acl.media.dvpp_vpc_crop_async(d.channel, source, out, acl.media.dvpp_create_roi_config(*roi), d.stream)


def paste(roi) -> int:
    d = Dvpp()
    _, source, out = pictures(d, out_width=64, out_height=64)
    return acl.media.dvpp_vpc_crop_and_paste_async(d.channel, source, out, acl.media.dvpp_create_roi_config(0, 31, 0, 15),
                                                   acl.media.dvpp_create_roi_config(*roi), d.stream)


def destroy_desc_with_channel(case):
    Dvpp()
    desc = acl.media.dvpp_create_channel_desc()
    acl.media.dvpp_create_channel(desc)
    if not case:  # the control: a desc that is not live any more
        acl.media.dvpp_destroy_channel(desc)
        acl.media.dvpp_destroy_channel_desc(desc)
    return acl.media.dvpp_destroy_channel_desc(desc)


PROBES = {
    "D01": malloc,
    "D02": dvpp_free_of,
    "D03": dvpp_free_twice,
    "D04": rt_free_of,
    "D05": create_channel,
    "D06": without_channel,
    "D07": set_on_destroyed,
    "D08": image_info,
    **PROBES_DECODE,
    "D20": lambda case: resize(memory="device" if case else "dvpp"),
    "D21": lambda case: resize(width_stride=40 if case else 48),
    "D22": lambda case: resize(width=16, width_stride=16 if case else 32),
    "D23": lambda case: resize(height_stride=15 if case else 16),
    "D24": lambda case: resize(size=32 * 16 * 3 // 2 - (1 if case else 0)),
    "D25": lambda case: resize(width=8 if case else 10, out_width=32),
    "D26": lambda case: resize(width=31, height=15) if case else resize(out_width=31, out_height=15),
    "D27": lambda case: resize(width_stride=128 if case else 120),
    "D28": lambda case: resize(out_fmt=12 if case else 2),
    "D29": lambda case: resize(out_width=30 if not case else 31),
    "D30": lambda case: resize(out_stride=40 if case else 48),
    "D31": lambda case: resize(out_size=32 * 16 * 3 // 2 - (1 if case else 0)),
    "D32": lambda case: resize(out_width=8 if case else 10),
    "D33": lambda case: resize(width=16, height=16, out_width=288 if case else 256, out_height=16),
    "D34": lambda case: crop((17, 32, 8, 15) if case else (16, 31, 8, 15)),
    "D35": lambda case: crop((48, 65, 0, 7) if case else (48, 63, 0, 7)),
    "D36": lambda case: crop((0, 7, 0, 7) if case else (0, 15, 0, 7)),
    "D37": lambda case: paste((8, 39, 0, 15) if case else (16, 47, 0, 15)),
    "D38": lambda case: paste((48, 79, 0, 15) if case else (32, 63, 0, 15)),
    "D39": destroy_desc_with_channel,
}


def test_every_table_row_has_a_probe_and_every_probe_a_row():
    assert sorted(table_rows()) == sorted(PROBES)


@pytest.mark.parametrize("row", sorted(PROBES))
def test_the_emulator_returns_the_code_the_table_states_and_the_control_differs(row):
    call, code = table_rows()[row]
    assert PROBES[row](True) == code, f"{row} {call}"
    acl._sim.reset()
    assert PROBES[row](False) == (0 if code else INVALID), f"{row} {call}: the control"


def test_each_refusal_is_one_line_naming_the_call():
    assert resize(width_stride=40) == INVALID
    why = acl._sim.counters()["errors"][-1]["why"]
    assert why.startswith("dvpp_vpc_resize_async: Input widthStride(40)") and "\n" not in why
