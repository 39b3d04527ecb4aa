"""acl.media: the DVPP of the Ascend 310 as the official samples use it: dvpp_malloc / dvpp_free, channels and
picture descriptions, the JPEG decoder (JPEGD) and the VPC (resize, crop, crop-and-paste), with their resize, ROI
and JPEG-encoder configs (the encoder itself is not emulated).

Return conventions as everywhere (spec/pyacl.md §0): creators give a bare handle (0 on failure), setters and
actions `ret`, dvpp_malloc `(ptr, ret)`, the JPEG queries `(values..., ret)`. The rules are the 310's in CANN 5.0.x
and each has a row in docs/emulator.md's DVPP table (D01...), cited there. The docs give only "0 success, other
failure" for these calls, so the codes are ours [INFER]: the call that is handed a bad picture description, ROI,
size or buffer returns 100000 ACL_ERROR_INVALID_PARAM at once (the host-side checks the real logs show, e.g.
"Input widthStride(300) is not right, it should be 16 algined!"), never later; data that turns out undecodable
fails the task, and synchronize_stream returns 507018 ACL_ERROR_RT_AICPU_EXCEPTION (what DVPP tasks give there,
troubleshooting_0185) with the picture description's ret code set. Work runs on the stream at synchronize_stream.

Pixels: JPEG through Pillow into the exact YUV420SP layout, VPC scaling bilinear (atlas/yuv.py says why); other
pixel formats than YUV420SP NV12 / NV21 are not emulated and refused with a line saying so.
"""
from __future__ import annotations

import ctypes

import numpy as np

from atlas import yuv
from atlas.board import acl_consts as C

from ._errors import Fail
from ._state import STATE, api, warn
from .rt import _release, stream_of

INVALID = C.ACL_ERROR_INVALID_PARAM
YUV420SP = (C.PIXEL_FORMAT_YUV_SEMIPLANAR_420, C.PIXEL_FORMAT_YVU_SEMIPLANAR_420)
PIC_FIELDS = ("data", "size", "format", "width", "height", "width_stride", "height_stride")
JPEG_FORMATS = {"444": C.ACL_JPEG_CSS_444, "422": C.ACL_JPEG_CSS_422, "420": C.ACL_JPEG_CSS_420,
                "400": C.ACL_JPEG_CSS_GRAY, "440": C.ACL_JPEG_CSS_440, "411": C.ACL_JPEG_CSS_411}
JPEGD_SUBSAMPLING = ("444", "422", "420", "400", "440")  # D12: 5046 aclpythondevg_01_0284
JPEGD_SIDE = (32, 8192)        # D10: the JPEG's width and height (5046 aclpythondevg_01_0284)
VPC_IN_SIDE = ((10, 8192), (6, 8192))   # D25 (width, height): 10x6 up to 8K for NV12/NV21 (5046 01_0259)
VPC_OUT_SIDE = ((10, 4096), (6, 4096))  # D30 (601 aclpythondevg_01_0267)
ROI_SIDE = ((10, 4096), (6, 4096))      # D33, D36: crop and paste areas (5046 aclpythondevg_01_0259)
SCALE = (1 / 32, 16)                    # D34: output / crop per axis (troubleshooting_0167 log (7))
EXECUTION_FAILED = C.ACL_ERROR_RT_AICPU_EXCEPTION
# what else the 310 takes, not emulated: JPEGD writes YUV400 and the YUV422SP / YUV444SP kinds (5046
# aclpythondevg_01_0284); the VPC reads every format up to BGRA8888 (601 aclcppdevg_03_0168)
JPEGD_OTHER_OUTPUTS = range(0, 7)
VPC_OTHER_INPUTS = range(0, 18)


class Picture:
    """A picture description's fields (all 0 until set, as the C getters report them), plus the ret code the
    last task wrote."""

    def __init__(self):
        for name in PIC_FIELDS:
            setattr(self, name, 0)
        self.ret_code = 0

    @property
    def uv_order(self) -> int:
        return yuv.NV21 if self.format == C.PIXEL_FORMAT_YVU_SEMIPLANAR_420 else yuv.NV12


class Roi:
    def __init__(self, left: int, right: int, top: int, bottom: int):
        self.left, self.right, self.top, self.bottom = left, right, top, bottom

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1


# -- handles ------------------------------------------------------------------------------------------------
def _table(kind: str) -> dict:
    return STATE.media.setdefault(kind, {})


def _new(kind: str, value) -> int:
    handle = STATE.new_handle()
    _table(kind)[handle] = value
    return handle


def _live(kind: str, handle, call: str):
    return STATE.require_live(_table(kind), handle, INVALID, f"{call}: {handle!r} is not a live {kind}")


def _destroy(kind: str, handle, call: str) -> int:
    _live(kind, handle, call)
    del _table(kind)[handle]
    return C.ACL_SUCCESS


def _int(call: str, **values) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{call}: {name} must be an int, got {type(value).__name__}")


# -- memory (D01-D05) -----------------------------------------------------------------------------------------
@api("acl.media.dvpp_malloc", "pair")
def dvpp_malloc(size):
    """(ptr, ret): media memory, 128-byte aligned, size rounded up to 32 plus 32 (601 aclpythondevg_01_0195)."""
    _int("dvpp_malloc", size=size)
    if size <= 0:
        raise Fail(INVALID, f"dvpp_malloc: size must be positive, got {size}")
    STATE.require_context()
    return STATE.memory.allocate(size, "dvpp").start, C.ACL_SUCCESS


@api("acl.media.dvpp_free")
def dvpp_free(dev_ptr):
    """Free dvpp_malloc memory; like acl.rt.free it needs no context (rt.py _release)."""
    return _release(dev_ptr, "dvpp", "acl.media.dvpp_free")


# -- channels -------------------------------------------------------------------------------------------------
@api("acl.media.dvpp_create_channel_desc", "value")
def dvpp_create_channel_desc():
    return _new("channel desc", {"channel": False})


@api("acl.media.dvpp_create_channel")
def dvpp_create_channel(channel_desc):
    STATE.require_context()
    desc = _live("channel desc", channel_desc, "dvpp_create_channel")
    if desc["channel"]:
        raise Fail(INVALID, "dvpp_create_channel: the channel of this desc is already created")
    desc["channel"] = True
    return C.ACL_SUCCESS


@api("acl.media.dvpp_destroy_channel")
def dvpp_destroy_channel(channel_desc):
    desc = _live("channel desc", channel_desc, "dvpp_destroy_channel")
    if not desc["channel"]:
        raise Fail(INVALID, "dvpp_destroy_channel: the channel was never created (dvpp_create_channel)")
    desc["channel"] = False
    return C.ACL_SUCCESS


@api("acl.media.dvpp_destroy_channel_desc")
def dvpp_destroy_channel_desc(channel_desc):
    if _live("channel desc", channel_desc, "dvpp_destroy_channel_desc")["channel"]:
        # CANN 5.0.x has no ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED (148051 came later): accepted
        warn("acl.media.dvpp_destroy_channel_desc", "the channel is still created: call dvpp_destroy_channel first")
    return _destroy("channel desc", channel_desc, "dvpp_destroy_channel_desc")


def _channel(channel_desc, call: str) -> None:
    if not _live("channel desc", channel_desc, call)["channel"]:
        raise Fail(INVALID, f"{call}: the channel desc has no channel (dvpp_create_channel first)")


# -- picture descriptions -------------------------------------------------------------------------------------
@api("acl.media.dvpp_create_pic_desc", "value")
def dvpp_create_pic_desc():
    return _new("pic desc", Picture())


@api("acl.media.dvpp_destroy_pic_desc")
def dvpp_destroy_pic_desc(pic_desc):
    return _destroy("pic desc", pic_desc, "dvpp_destroy_pic_desc")


def _setter(field: str):
    @api(f"acl.media.dvpp_set_pic_desc_{field}")
    def setter(pic_desc, value):
        _int(f"dvpp_set_pic_desc_{field}", value=value)
        setattr(_live("pic desc", pic_desc, f"dvpp_set_pic_desc_{field}"), field, value)
        return C.ACL_SUCCESS
    setter.__name__ = f"dvpp_set_pic_desc_{field}"
    return setter


def _getter(field: str):
    @api(f"acl.media.dvpp_get_pic_desc_{field}", "value")
    def getter(pic_desc):
        return getattr(_live("pic desc", pic_desc, f"dvpp_get_pic_desc_{field}"), field)
    getter.__name__ = f"dvpp_get_pic_desc_{field}"
    return getter


for _field in PIC_FIELDS:
    globals()[f"dvpp_set_pic_desc_{_field}"] = _setter(_field)
    globals()[f"dvpp_get_pic_desc_{_field}"] = _getter(_field)
dvpp_get_pic_desc_ret_code = _getter("ret_code")


# -- configs ----------------------------------------------------------------------------------------------------
@api("acl.media.dvpp_create_roi_config", "value")
def dvpp_create_roi_config(left, right, top, bottom):
    _int("dvpp_create_roi_config", left=left, right=right, top=top, bottom=bottom)
    return _new("roi config", Roi(left, right, top, bottom))


@api("acl.media.dvpp_set_roi_config")
def dvpp_set_roi_config(roi_config, left, right, top, bottom):
    _int("dvpp_set_roi_config", left=left, right=right, top=top, bottom=bottom)
    _live("roi config", roi_config, "dvpp_set_roi_config").__init__(left, right, top, bottom)
    return C.ACL_SUCCESS


@api("acl.media.dvpp_destroy_roi_config")
def dvpp_destroy_roi_config(roi_config):
    return _destroy("roi config", roi_config, "dvpp_destroy_roi_config")


@api("acl.media.dvpp_create_resize_config", "value")
def dvpp_create_resize_config():
    return _new("resize config", {"interpolation": 0})


@api("acl.media.dvpp_destroy_resize_config")
def dvpp_destroy_resize_config(resize_config):
    return _destroy("resize config", resize_config, "dvpp_destroy_resize_config")


@api("acl.media.dvpp_create_jpege_config", "value")
def dvpp_create_jpege_config():
    return _new("jpege config", {"level": 100})


@api("acl.media.dvpp_set_jpege_config_level")
def dvpp_set_jpege_config_level(jpege_config, level):
    _int("dvpp_set_jpege_config_level", level=level)
    if not 0 <= level <= 100:
        raise Fail(INVALID, f"dvpp_set_jpege_config_level: level {level} is not in [0, 100]")
    _live("jpege config", jpege_config, "dvpp_set_jpege_config_level")["level"] = level
    return C.ACL_SUCCESS


@api("acl.media.dvpp_get_jpege_config_level", "value")
def dvpp_get_jpege_config_level(jpege_config):
    return _live("jpege config", jpege_config, "dvpp_get_jpege_config_level")["level"]


@api("acl.media.dvpp_destroy_jpege_config")
def dvpp_destroy_jpege_config(jpege_config):
    return _destroy("jpege config", jpege_config, "dvpp_destroy_jpege_config")


# -- JPEG decoder (D09-D20) -------------------------------------------------------------------------------------
def _bytes_at(ptr, size, call: str, what: str) -> bytes:
    """`size` bytes of memory the emulator knows (on the 200 DK any of it is readable by the host side)."""
    _int(call, **{what: ptr, "size": size})
    if not ptr or size <= 0:
        raise Fail(INVALID, f"{call}: {what} is null or size {size} is not positive")
    try:
        STATE.memory.find(ptr, size, f"{call} {what}")
    except Fail as e:
        raise Fail(INVALID, e.why) from None
    return ctypes.string_at(ptr, size)


def _header(data: bytes, call: str) -> yuv.JpegHeader:
    try:
        return yuv.jpeg_header(data)
    except yuv.JpegError as e:
        raise Fail(INVALID, f"{call}: not a JPEG the decoder can read: {e}") from None


@api("acl.media.dvpp_jpeg_get_image_info", "pair", lambda *_: (0, 0, 0))
def dvpp_jpeg_get_image_info(data, size):
    """(width, height, components, ret) from the JPEG's frame header (host memory: 5046 aclpythondevg_01_0286)."""
    header = _header(_bytes_at(data, size, "dvpp_jpeg_get_image_info", "data"), "dvpp_jpeg_get_image_info")
    return header.width, header.height, header.components, C.ACL_SUCCESS


@api("acl.media.dvpp_jpeg_predict_dec_size", "pair")
def dvpp_jpeg_predict_dec_size(data, data_size, output_pixel_format):
    """(bytes, ret): the YUV420SP output at JPEGD's strides, align128(w) x align16(h) x 3/2 [INFER: the 310's
    number is not documented; this is what the strides need]."""
    header = _header(_bytes_at(data, data_size, "dvpp_jpeg_predict_dec_size", "data"), "dvpp_jpeg_predict_dec_size")
    if output_pixel_format not in YUV420SP:
        raise Fail(INVALID, f"dvpp_jpeg_predict_dec_size: output format {output_pixel_format} is not emulated "
                            "(YUV420SP NV12 = 1 or NV21 = 2)")
    return yuv.nv12_size(*_jpegd_strides(header.width, header.height)), C.ACL_SUCCESS


def _jpegd_strides(width: int, height: int) -> tuple[int, int]:
    return yuv.align_up(width, C.JPEGD_WIDTH_ALIGN), yuv.align_up(height, C.JPEGD_HEIGHT_ALIGN)


def _check_jpeg(header: yuv.JpegHeader, call: str) -> None:
    """D10-D12: what the 310's JPEGD takes (5046 aclpythondevg_01_0284)."""
    low, high = JPEGD_SIDE
    if not (low <= header.width <= high and low <= header.height <= high):
        raise Fail(INVALID, f"{call}: the JPEG is {header.width}x{header.height}; JPEGD takes 32x32 to 8192x8192")
    if header.coding != "huffman":
        raise Fail(INVALID, f"{call}: the JPEG is {header.coding}-coded; JPEGD decodes Huffman-coded baseline JPEGs "
                            "only")
    if header.subsampling not in JPEGD_SUBSAMPLING:
        raise Fail(INVALID, f"{call}: chroma subsampling {header.subsampling}; JPEGD takes "
                            f"{', '.join(JPEGD_SUBSAMPLING)}")


def _dvpp_buffer(ptr: int, size: int, call: str, what: str) -> None:
    """The picture's memory: from dvpp_malloc (D13, D19, D21: troubleshooting_0167 log (4)) and holding `size`."""
    region = STATE.memory.allocation_at(ptr) if ptr else None
    if region is None or region.kind != "dvpp":
        raise Fail(INVALID, f"{call}: {what} 0x{ptr:x} should be allocated by acldvppMalloc!")
    if ptr + size > region.end:
        raise Fail(INVALID, f"{call}: {what} size {size} runs past the end of {region.describe()}")


@api("acl.media.dvpp_jpeg_decode_async")
def dvpp_jpeg_decode_async(channel_desc, data, size, output_desc, stream):
    call = "dvpp_jpeg_decode_async"
    _channel(channel_desc, call)
    data_bytes = _bytes_at(data, size, call, "data")
    _dvpp_buffer(data, size, call, "input data")
    if data % 128:
        raise Fail(INVALID, f"{call}: the input data 0x{data:x} is not 128-byte aligned (aclcppdevg_03_0168)")
    header = _header(data_bytes, call)
    _check_jpeg(header, call)
    out = _live("pic desc", output_desc, call)
    _check_jpegd_output(out, header, call)
    found = stream_of(stream, call)
    found.pending.append(lambda: _decode(data, size, out, header))
    return C.ACL_SUCCESS


def _check_jpegd_output(out: Picture, header: yuv.JpegHeader, call: str) -> None:
    """D14-D17: YUV420SP out, strides 128 / 16 aligned and holding the JPEG, buffer of ws x hs x 3/2
    (800 aclpythondevg_01_0321, the Atlas 200/300/500 column)."""
    if out.format not in YUV420SP:
        raise Fail(INVALID, _format_refusal(call, "output", out.format, JPEGD_OTHER_OUTPUTS))
    if out.width_stride % C.JPEGD_WIDTH_ALIGN or out.width_stride < header.width:
        raise Fail(INVALID, f"{call}: output widthStride({out.width_stride}) should be 128 aligned and not smaller "
                            f"than the JPEG's width {header.width}")
    if out.height_stride % C.JPEGD_HEIGHT_ALIGN or out.height_stride < header.height:
        raise Fail(INVALID, f"{call}: output heightStride({out.height_stride}) should be 16 aligned and not smaller "
                            f"than the JPEG's height {header.height}")
    need = yuv.nv12_size(out.width_stride, out.height_stride)
    if out.size < need:
        raise Fail(INVALID, f"{call}: output bufferSize({out.size}) should not be smaller than widthStride"
                            f"({out.width_stride}) * heightStride({out.height_stride}) * 3 / 2 = {need}")
    _dvpp_buffer(out.data, out.size, call, "output data")


def _decode(data: int, size: int, out: Picture, header: yuv.JpegHeader) -> None:
    """The task: decode at the JPEG's size into the output buffer; the desc gets the decoded width and height."""
    try:
        y, uv = yuv.decode_jpeg(ctypes.string_at(data, size))
    except yuv.JpegError as e:
        out.ret_code = EXECUTION_FAILED
        raise Fail(EXECUTION_FAILED, f"dvpp_jpeg_decode_async: the JPEG data cannot be decoded: {e}") from None
    _write(out, y, uv)
    out.width, out.height, out.ret_code = header.width, header.height, 0


def _view(pic: Picture) -> np.ndarray:
    """A writable uint8 view of the picture's YUV420SP buffer."""
    count = yuv.nv12_size(pic.width_stride, pic.height_stride)
    return np.frombuffer((ctypes.c_uint8 * count).from_address(pic.data), dtype=np.uint8)


def _write(pic: Picture, y: np.ndarray, uv: np.ndarray) -> None:
    yuv.pack(y, uv, pic.width_stride, pic.height_stride, out=_view(pic), uv_order=pic.uv_order)


def _read(pic: Picture) -> tuple[np.ndarray, np.ndarray]:
    """The picture, an odd width or height floored to even (D24: the VPC processes 15x15 as 14x14)."""
    return yuv.floor_even(*yuv.unpack(_view(pic), pic.width, pic.height, pic.width_stride, pic.height_stride,
                                      pic.uv_order))


# -- VPC (D21-D37) ----------------------------------------------------------------------------------------------
def _vpc_input(pic_desc, call: str) -> Picture:
    """D21-D25: dvpp memory, YUV420SP, strides 16 / 2 aligned, at least 32 / 6 and the picture's size (any such
    stride: JPEGD's 128 / 16 too, as ACLLite feeds them [INFER]), a buffer of ws x hs x 3/2, 10x6 to 8192x8192."""
    pic = _live("pic desc", pic_desc, call)
    if pic.format not in YUV420SP:
        raise Fail(INVALID, _format_refusal(call, "input", pic.format, VPC_OTHER_INPUTS))
    _check_sides(pic, VPC_IN_SIDE, call, "input")
    if pic.width_stride % C.VPC_WIDTH_ALIGN or pic.width_stride < max(32, pic.width):
        raise Fail(INVALID, f"{call}: Input widthStride({pic.width_stride}) is not right, it should be 16 aligned, "
                            f"not smaller than 32 and not smaller than the width {pic.width}!")
    if pic.height_stride % C.VPC_HEIGHT_ALIGN or pic.height_stride < max(6, pic.height):
        raise Fail(INVALID, f"{call}: Input heightStride({pic.height_stride}) is not right, it should be 2 aligned, "
                            f"not smaller than 6 and not smaller than the height {pic.height}!")
    _check_size(pic, call, "Input")
    return pic


def _vpc_output(pic_desc, call: str) -> Picture:
    """D26-D30: dvpp memory, YUV420SP NV12 / NV21 only, even width and height, strides 16 / 2 aligned and holding
    the picture, a buffer of ws x hs x 3/2, 10x6 to 4096x4096 (601 aclcppdevg_03_0168)."""
    pic = _live("pic desc", pic_desc, call)
    if pic.format not in YUV420SP:
        raise Fail(INVALID, f"{call}: output format {pic.format}: the VPC of the 310 writes YUV420SP NV12 (1) or "
                            "NV21 (2) only")
    _check_sides(pic, VPC_OUT_SIDE, call, "output")
    if pic.width % 2 or pic.height % 2:
        raise Fail(INVALID, f"{call}: output width({pic.width}) and height({pic.height}) should be even")
    if pic.width_stride % C.VPC_WIDTH_ALIGN or pic.width_stride < pic.width:
        raise Fail(INVALID, f"{call}: Output widthStride({pic.width_stride}) is not right, it should be 16 aligned "
                            f"and not smaller than the width {pic.width}!")
    if pic.height_stride % C.VPC_HEIGHT_ALIGN or pic.height_stride < pic.height:
        raise Fail(INVALID, f"{call}: Output heightStride({pic.height_stride}) is not right, it should be 2 aligned "
                            f"and not smaller than the height {pic.height}!")
    _check_size(pic, call, "Output")
    return pic


def _format_refusal(call: str, what: str, fmt: int, the_310_takes: range) -> str:
    """Why a pixel format is refused: the 310 does not take it, or it does and the emulator does not emulate it."""
    if fmt in the_310_takes:
        return f"{call}: {what} format {fmt} is not emulated (YUV420SP NV12 = 1 or NV21 = 2 are)"
    return f"{call}: {what} format {fmt} is not a format the 310 takes here"


def _check_sides(pic: Picture, limits, call: str, what: str) -> None:
    (w_low, w_high), (h_low, h_high) = limits
    if not (w_low <= pic.width <= w_high and h_low <= pic.height <= h_high):
        raise Fail(INVALID, f"{call}: {what} {pic.width}x{pic.height} is out of range [{w_low}x{h_low}, "
                            f"{w_high}x{h_high}]")


def _check_size(pic: Picture, call: str, what: str) -> None:
    need = yuv.nv12_size(pic.width_stride, pic.height_stride)
    if pic.size < need:
        raise Fail(INVALID, f"{call}: {what} bufferSize({pic.size}) should not be smaller than widthStride"
                            f"({pic.width_stride}) * heightStride({pic.height_stride}) * 3 / 2 = {need}")
    _dvpp_buffer(pic.data, pic.size, call, f"{what.lower()} data")


def _crop_area(roi_handle, source: Picture, call: str) -> Roi:
    """D31-D33: left and top even, right and bottom odd, inside the input, 10x6 to 4096x4096 (5046
    aclcppdevg_03_0670; troubleshooting_0167 logs (1), (6))."""
    roi = _live("roi config", roi_handle, call)
    _check_parity(roi, call, "cropArea")
    if not (0 <= roi.left < roi.right < source.width and 0 <= roi.top < roi.bottom < source.height):
        raise Fail(INVALID, f"{call}: cropArea ({roi.left}, {roi.right}, {roi.top}, {roi.bottom}) should lie inside "
                            f"the input {source.width}x{source.height}")
    _check_roi_size(roi, call, "crop")
    return roi


def _paste_area(roi_handle, target: Picture, call: str) -> Roi:
    """D35-D36: the parity rules, left a multiple of 16 (5046 aclcppdevg_03_0670), inside the output [INFER]."""
    roi = _live("roi config", roi_handle, call)
    _check_parity(roi, call, "pasteArea")
    if roi.left % 16:
        raise Fail(INVALID, f"{call}: pasteArea leftOffset({roi.left}) should be 16 aligned")
    if not (0 <= roi.left < roi.right < target.width and 0 <= roi.top < roi.bottom < target.height):
        raise Fail(INVALID, f"{call}: pasteArea ({roi.left}, {roi.right}, {roi.top}, {roi.bottom}) should lie "
                            f"inside the output {target.width}x{target.height}")
    _check_roi_size(roi, call, "paste")
    return roi


def _check_parity(roi: Roi, call: str, what: str) -> None:
    if roi.left % 2 or roi.top % 2 or roi.right % 2 == 0 or roi.bottom % 2 == 0:
        raise Fail(INVALID, f"{call}: {what} ({roi.left}, {roi.right}, {roi.top}, {roi.bottom}): leftOffset and "
                            "upOffset should be even, rightOffset and downOffset odd!")


def _check_roi_size(roi: Roi, call: str, what: str) -> None:
    (w_low, w_high), (h_low, h_high) = ROI_SIDE
    if not (w_low <= roi.width <= w_high and h_low <= roi.height <= h_high):
        raise Fail(INVALID, f"{call}: {what} area {roi.width}x{roi.height} should be between [10x6, 4096x4096]")


def _check_scale(crop_w: int, crop_h: int, out_w: int, out_h: int, call: str) -> None:
    """D34: each axis scaled within [1/32, 16] (troubleshooting_0167 log (7))."""
    low, high = SCALE
    for axis, source, target in (("Width", crop_w, out_w), ("Height", crop_h, out_h)):
        if not low <= target / source <= high:
            raise Fail(INVALID, f"{call}: scale must be in [1/32, 16], crop{axis}({source}), paste{axis}({target})!")


def _submit(stream, call: str, task) -> int:
    stream_of(stream, call).pending.append(task)
    return C.ACL_SUCCESS


@api("acl.media.dvpp_vpc_resize_async")
def dvpp_vpc_resize_async(channel_desc, input_desc, output_desc, resize_config, stream):
    call = "dvpp_vpc_resize_async"
    _channel(channel_desc, call)
    source, target = _vpc_input(input_desc, call), _vpc_output(output_desc, call)
    _live("resize config", resize_config, call)
    _check_scale(source.width // 2 * 2, source.height // 2 * 2, target.width, target.height, call)
    return _submit(stream, call, lambda: _write(target, *yuv.resize(*_read(source), target.width, target.height)))


@api("acl.media.dvpp_vpc_crop_async")
def dvpp_vpc_crop_async(channel_desc, input_desc, output_desc, crop_area, stream):
    """The crop scaled to the whole output picture (62RC2 aclpythondevg_02_0278)."""
    call = "dvpp_vpc_crop_async"
    _channel(channel_desc, call)
    source, target = _vpc_input(input_desc, call), _vpc_output(output_desc, call)
    crop = _crop_area(crop_area, source, call)
    _check_scale(crop.width, crop.height, target.width, target.height, call)
    return _submit(stream, call, lambda: _write(target, *_cropped(source, crop, target.width, target.height)))


@api("acl.media.dvpp_vpc_crop_and_paste_async")
def dvpp_vpc_crop_and_paste_async(channel_desc, input_desc, output_desc, crop_area, paste_area, stream):
    """The crop scaled into the paste area; the rest of the output is left as it is (5046 aclpythondevg_01_0259)."""
    call = "dvpp_vpc_crop_and_paste_async"
    _channel(channel_desc, call)
    source, target = _vpc_input(input_desc, call), _vpc_output(output_desc, call)
    crop, paste = _crop_area(crop_area, source, call), _paste_area(paste_area, target, call)
    _check_scale(crop.width, crop.height, paste.width, paste.height, call)
    return _submit(stream, call, lambda: _paste(source, crop, target, paste))


def _cropped(source: Picture, crop: Roi, width: int, height: int):
    y, uv = yuv.crop(*_read(source), crop.left, crop.top, crop.width, crop.height)
    return yuv.resize(y, uv, width, height)


def _paste(source: Picture, crop: Roi, target: Picture, paste: Roi) -> None:
    y_out, uv_out = yuv.unpack(_view(target), target.width, target.height, target.width_stride,
                               target.height_stride, target.uv_order)
    y, uv = _cropped(source, crop, paste.width, paste.height)
    y_out[paste.top:paste.bottom + 1, paste.left:paste.right + 1] = y
    uv_out[paste.top // 2:(paste.bottom + 1) // 2, paste.left // 2:(paste.right + 1) // 2] = uv
    _write(target, y_out, uv_out)
