"""YUV420SP (NV12) pictures as the Ascend 310's DVPP writes them and AIPP reads them, in numpy.

One picture is a Y plane of `height_stride` rows of `width_stride` bytes, then the interleaved U,V plane of
height_stride/2 rows of width_stride bytes (U first: NV12; V first: NV21), `width_stride * height_stride * 3/2`
bytes in all (601 aclcppdevg_03_0168); bytes beyond width x height are padding. In memory a picture is the pair
(y [h, w], uv [ceil(h/2), ceil(w/2), 2]): U, V once per 2x2 block of Y.

The host side of the image road (export: decode -> YUV420SP -> resize -> AIPP CSC -> normalisation) and the
emulator's DVPP (atlas/sim/acl/media.py) share these functions, so verify compares like with like:
- `decode_jpeg`: Pillow's decoder in YCbCr (no round trip through RGB, as the JPEG decoder hands out YUV).
- `resize`: the VPC's scaling. The 310's filter is Huawei's own ("华为自研的高阶滤波算法", 60RC1
  aclpythondevg_01_0272) and not public; this is bilinear with half-pixel centres [INFER], the same size is the
  identity.
- `yuv_to_rgb`: AIPP colour-space conversion (spec/atc.md §6; GE CSC_config.md):
  `out_i = (sum_j m_ij * (in_j - input_bias_j)) >> 8`, clamped to 0..255 [INFER: the clamp], each 2x2 block sharing
  its U, V [INFER: nearest chroma, as Huawei's SoftDvpp does].
- `rgb_to_yuv`: BT.601 full range (JFIF, ITU-T T.871), for building test pictures and the encoder.
"""
from __future__ import annotations

import io

import numpy as np

NV12, NV21 = 1, 2  # acldvppPixelFormat PIXEL_FORMAT_YUV_SEMIPLANAR_420 / PIXEL_FORMAT_YVU_SEMIPLANAR_420


class JpegError(ValueError):
    """JPEG bytes the decoder cannot take: not a JPEG, damaged, or a kind the 310's JPEGD refuses."""


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def nv12_size(width_stride: int, height_stride: int) -> int:
    """Bytes of one YUV420SP picture: width_stride x height_stride x 3/2."""
    return width_stride * height_stride * 3 // 2


# --- layout -------------------------------------------------------------------------------------------------

def pack(y: np.ndarray, uv: np.ndarray, width_stride: int, height_stride: int, out: np.ndarray | None = None,
         uv_order: int = NV12) -> np.ndarray:
    """(y, uv) into a YUV420SP buffer of the given strides; bytes outside the picture are left as `out` has them
    (zero for a new buffer). NV21 writes V before U."""
    height, width = y.shape
    buffer = np.zeros(nv12_size(width_stride, height_stride), np.uint8) if out is None else out
    planes = _planes(buffer, width_stride, height_stride)
    planes[0][:height, :width] = y
    chroma = uv[..., ::-1] if uv_order == NV21 else uv
    ch, cw = chroma.shape[:2]
    planes[1][:ch, :2 * cw] = chroma.reshape(ch, 2 * cw)[:, :min(2 * cw, width_stride)]
    return buffer


def unpack(buffer: np.ndarray, width: int, height: int, width_stride: int, height_stride: int,
           uv_order: int = NV12) -> tuple[np.ndarray, np.ndarray]:
    """The (y, uv) of a width x height picture in a YUV420SP buffer (copies; uv always U first)."""
    y_plane, uv_plane = _planes(buffer, width_stride, height_stride)
    cw, ch = (width + 1) // 2, (height + 1) // 2
    uv = uv_plane[:ch, :2 * cw].reshape(ch, cw, 2).copy()
    return y_plane[:height, :width].copy(), (uv[..., ::-1].copy() if uv_order == NV21 else uv)


def _planes(buffer: np.ndarray, width_stride: int, height_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of the Y and UV planes of a flat uint8 buffer."""
    flat = buffer.reshape(-1)
    luma = width_stride * height_stride
    return (flat[:luma].reshape(height_stride, width_stride),
            flat[luma:luma + luma // 2].reshape(height_stride // 2, width_stride))


def frame(y: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """A tightly packed picture (strides = its even width and height) as a [h*3/2, w] uint8 array: the form of
    one AIPP YUV420SP_U8 input, src_image_size_w x src_image_size_h."""
    height, width = y.shape
    return pack(y, uv, width, height).reshape(height * 3 // 2, width)


def split(frame_array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (y, uv) of a tightly packed [h*3/2, w] picture (views)."""
    rows, width = frame_array.shape
    height = rows * 2 // 3
    return frame_array[:height], frame_array[height:].reshape(height // 2, width // 2, 2)


# --- colour ---------------------------------------------------------------------------------------------------

def rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] -> uint8 full-range Y, Cb, Cr [..., 3] (BT.601 as JFIF / ITU-T T.871 gives it)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128.0
    return np.clip(np.floor(np.stack([y, cb, cr], axis=-1) + 0.5), 0, 255).astype(np.uint8)


def subsample(yuv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution Y, U, V [h, w, 3] -> (y, uv): U, V averaged over each 2x2 block (edge blocks over what
    they hold), rounded half up."""
    height, width = yuv.shape[:2]
    padded = np.pad(yuv[..., 1:].astype(np.uint32), ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, 2).sum(axis=(1, 3))
    return np.ascontiguousarray(yuv[..., 0]), ((blocks + 2) // 4).astype(np.uint8)


def yuv_to_rgb(y: np.ndarray, uv: np.ndarray, matrix, input_bias) -> np.ndarray:
    """AIPP's CSC of one picture: uint8 [h, w, 3], channel i from row i of `matrix` (3x3 ints)."""
    height, width = y.shape
    chroma = np.repeat(np.repeat(uv, 2, axis=0), 2, axis=1)[:height, :width]
    planes = np.concatenate([y[..., None], chroma], axis=-1).astype(np.int64) - np.asarray(input_bias, np.int64)
    mixed = planes @ np.asarray(matrix, np.int64).T
    return np.clip(mixed >> 8, 0, 255).astype(np.uint8)  # >> floors, as the hardware's shift does


# --- JPEG -------------------------------------------------------------------------------------------------------

# start-of-frame markers: 0xC0/0xC1 baseline and extended Huffman, 0xC2 progressive, 0xC3 lossless; 0xC9..0xCB
# (and 0xCD..0xCF differential) arithmetic coding (ITU-T T.81 table B.1)
_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_SUBSAMPLING = {(1, 1): "444", (2, 1): "422", (2, 2): "420", (1, 2): "440", (4, 1): "411"}


class JpegHeader:
    """What a JPEG's frame header says: size, colour components, coding (SOF marker) and chroma subsampling."""

    def __init__(self, width: int, height: int, components: int, marker: int, subsampling: str):
        self.width, self.height, self.components = width, height, components
        self.marker, self.subsampling = marker, subsampling

    @property
    def coding(self) -> str:
        if self.marker in (0xC0, 0xC1):
            return "huffman"
        return "progressive" if self.marker in (0xC2, 0xC6) else (
            "arithmetic" if self.marker >= 0xC9 else "lossless")


def jpeg_header(data: bytes) -> JpegHeader:
    """Parse the markers up to the frame header (T.81 B.2); JpegError when there is none."""
    if data[:2] != b"\xff\xd8":
        raise JpegError("no JPEG start-of-image marker (FF D8)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise JpegError(f"damaged marker structure at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF_MARKERS:
            return _frame_header(data[pos + 4:pos + 2 + length], marker)
        if marker == 0xDA:
            break
        pos += 2 + length
    raise JpegError("no frame header (SOF marker) before the image data")


def _frame_header(body: bytes, marker: int) -> JpegHeader:
    if len(body) < 6:
        raise JpegError("truncated frame header")
    height, width, count = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), body[5]
    factors = [(body[6 + 3 * i + 1] >> 4, body[6 + 3 * i + 1] & 15) for i in range(count) if 8 + 3 * i < len(body)]
    if count == 1:
        subsampling = "400"
    elif count == 3 and len(factors) == 3 and factors[1] == factors[2] == (1, 1):
        subsampling = _SUBSAMPLING.get(factors[0], "other")
    else:
        subsampling = "other"
    return JpegHeader(width, height, count, marker, subsampling)


def decode_jpeg(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """JPEG bytes -> (y, uv) at the JPEG's own size; a grayscale JPEG gets U = V = 128 (5046 aclpythondevg_01_0284:
    JPEG 400 decodes to YUV420SP with the UV plane 0x80). JpegError when Pillow cannot decode it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise JpegError(f"not a JPEG ({image.format})")
            if image.mode == "L":
                y = np.asarray(image, dtype=np.uint8)
                return y, np.full(((y.shape[0] + 1) // 2, (y.shape[1] + 1) // 2, 2), 128, np.uint8)
            if image.mode != "YCbCr" and image.mode != "RGB":
                raise JpegError(f"colour space {image.mode}: the JPEG decoder takes YUV (YCbCr) JPEGs only")
            image.draft("YCbCr", image.size)  # the decoder's own Y, Cb, Cr: no conversion through RGB
            yuv = np.asarray(image.convert("YCbCr"), dtype=np.uint8)
    except JpegError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for damaged data
        raise JpegError(f"cannot decode: {type(e).__name__}: {e}") from None
    return subsample(yuv)


# --- scaling ----------------------------------------------------------------------------------------------------

def resize(y: np.ndarray, uv: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """An even-sized picture scaled to an even width x height: Y at full, U and V at half resolution."""
    return _bilinear(y, height, width), _bilinear(uv, height // 2, width // 2)


def _bilinear(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear with half-pixel centres (the same size gives the same plane), rounded half up."""
    if plane.shape[:2] == (height, width):
        return plane.copy()
    row_low, row_high, row_w0, row_w1 = _taps(plane.shape[0], height)
    col_low, col_high, col_w0, col_w1 = _taps(plane.shape[1], width)
    source = plane.astype(np.float32)
    extra = (1,) * (source.ndim - 2)  # the U, V pair of a chroma plane
    rows = source[row_low] * row_w0.reshape((-1, 1) + extra) + source[row_high] * row_w1.reshape((-1, 1) + extra)
    mixed = rows[:, col_low] * col_w0.reshape((1, -1) + extra) + rows[:, col_high] * col_w1.reshape((1, -1) + extra)
    return np.clip(np.floor(mixed + 0.5), 0, 255).astype(np.uint8)


def _taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each output position: the two source indices and their weights."""
    centre = (np.arange(size_out, dtype=np.float64) + 0.5) * size_in / size_out - 0.5
    centre = np.clip(centre, 0, size_in - 1)
    low = np.floor(centre).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    weight = (centre - low).astype(np.float32)
    return low, high, 1.0 - weight, weight


def crop(y: np.ndarray, uv: np.ndarray, left: int, top: int, width: int, height: int):
    """The even-aligned width x height region at (left, top) (left, top, width, height even)."""
    return (y[top:top + height, left:left + width],
            uv[top // 2:(top + height) // 2, left // 2:(left + width) // 2])


def floor_even(y: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An odd width or height silently floored to even, as the VPC takes YUV420SP input (5046 aclpythondevg_01_0260:
    15x15 is processed as 14x14)."""
    height, width = y.shape[0] // 2 * 2, y.shape[1] // 2 * 2
    return y[:height, :width], uv[:height // 2, :width // 2]


def jpeg_to_frame(data: bytes, width: int, height: int) -> np.ndarray:
    """The host side of the image road: JPEG -> JPEGD's YUV420SP -> VPC resize (odd sides floored) to an even
    width x height -> one tightly packed [height*3/2, width] frame, as AIPP takes it."""
    y, uv = floor_even(*decode_jpeg(data))
    return frame(*resize(y, uv, width, height))


VPC_WIDTH_ALIGN, VPC_HEIGHT_ALIGN = 16, 2  # the VPC's output strides (= acl_consts.VPC_*_ALIGN, 601 aclcppdevg_03_0168)


def vpc_strides(width: int, height: int) -> tuple[int, int]:
    """(width_stride, height_stride) of a VPC output picture: align16(w), align2(h); AIPP's source size."""
    return align_up(width, VPC_WIDTH_ALIGN), align_up(height, VPC_HEIGHT_ALIGN)


def jpeg_to_vpc_frame(data: bytes, width: int, height: int) -> np.ndarray:
    """What the board's image road hands the model: JPEGD's decode resized by the VPC to an even width x height,
    in the VPC's buffer at align16(width) x align2(height) strides (padding 0), as [hs*3/2, ws] uint8: one input
    picture of a YUV420SP_U8 AIPP whose source size is those strides and whose crop is width x height."""
    y, uv = resize(*floor_even(*decode_jpeg(data)), width, height)
    width_stride, height_stride = vpc_strides(width, height)
    return pack(y, uv, width_stride, height_stride).reshape(height_stride * 3 // 2, width_stride)
