"""JPEG files -> the frames a YUV420SP_U8 AIPP model takes, decoded (JPEGD) and resized (VPC) on the board's DVPP.

Runs on the board: Python 3.6+, numpy and `acl` only. The call order is the official samples' (ACLLite
acllite_imageproc.py jpegd and resize): a DVPP channel and a resize config for the whole run; per picture the JPEG
in dvpp_malloc memory, get_image_info, predict_dec_size, a decode into JPEGD's strides (align128(w) x align16(h),
800 aclpythondevg_01_0321), a VPC resize to the model's width x height at the VPC's strides (align16 x align2, 601
aclcppdevg_03_0168), then a copy of that frame into host memory. AIPP then crops the stride off and converts
YUV420SP to RGB (the model's insert_op.cfg, made by export --dvpp). Every return code is checked; each picture's
buffers and descriptions are released before the next, the channel last.
"""
import os
import time

import numpy as np

import acl_consts as C
from acl_session import AclError, ModelError, ReleaseStack, check, check_handle

JPEG_SUFFIXES = (".jpg", ".jpeg")


def list_jpegs(folder):
    """The JPEG files of `folder` in name order (the order of the outputs); ValueError when there are none."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(JPEG_SUFFIXES)
                   and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise ValueError("%s holds no .jpg or .jpeg files" % folder)
    return [os.path.join(folder, n) for n in names]


def _align(value, alignment):
    return (value + alignment - 1) // alignment * alignment


class DvppFrames(object):
    """A DVPP channel on the session's stream: `open()`, `frames(paths)` as often as needed, `close()`."""

    def __init__(self, acl, session):
        self.acl = acl
        self.session = session
        source_h, source_w, model_h, model_w = session.input.yuv420sp
        if source_w % C.VPC_WIDTH_ALIGN or source_h % C.VPC_HEIGHT_ALIGN or model_w % 2 or model_h % 2:
            raise ModelError("the model's YUV420SP input is %dx%d for a %dx%d picture: the VPC writes even sizes at "
                             "16 / 2 aligned strides" % (source_w, source_h, model_w, model_h))
        self.width, self.height = model_w, model_h
        self.width_stride, self.height_stride = source_w, source_h
        self.frame_bytes = source_w * source_h * 3 // 2
        self.decode_s = 0.0
        self.warnings = []  # releases of a picture's buffers that failed (reported at close)
        self._releases = ReleaseStack()
        self._channel = 0
        self._resize_config = 0
        self._staging = 0

    def open(self):
        acl, push = self.acl, self._releases.push
        channel = check_handle("acl.media.dvpp_create_channel_desc", acl.media.dvpp_create_channel_desc())
        push("acl.media.dvpp_destroy_channel_desc", acl.media.dvpp_destroy_channel_desc, channel)
        check("acl.media.dvpp_create_channel", acl.media.dvpp_create_channel(channel))
        push("acl.media.dvpp_destroy_channel", acl.media.dvpp_destroy_channel, channel)
        self._channel = channel
        config = check_handle("acl.media.dvpp_create_resize_config", acl.media.dvpp_create_resize_config())
        push("acl.media.dvpp_destroy_resize_config", acl.media.dvpp_destroy_resize_config, config)
        self._resize_config = config
        staging, ret = acl.rt.malloc_host(self.frame_bytes)
        check("acl.rt.malloc_host", ret)
        push("acl.rt.free_host", acl.rt.free_host, staging)
        self._staging = staging

    def frames(self, paths):
        """uint8 [N, height_stride*3/2, width_stride]: each JPEG as the VPC hands it to the model."""
        out = np.empty((len(paths), self.height_stride * 3 // 2, self.width_stride), dtype=np.uint8)
        started = time.perf_counter()
        for i, path in enumerate(paths):
            out[i] = self._one(path)
        self.decode_s += time.perf_counter() - started
        return out

    def _one(self, path):
        with open(path, "rb") as f:
            data = f.read()
        releases = ReleaseStack()
        try:
            return self._decode_and_resize(data, releases)
        except AclError as e:
            raise AclError(e.call, e.code, "decoding %s" % path)
        finally:
            self.warnings += releases.release_all()

    def _decode_and_resize(self, data, releases):
        acl, media, push = self.acl, self.acl.media, releases.push
        keep_alive, host = self._host_pointer(data)
        width, height, _, ret = media.dvpp_jpeg_get_image_info(host, len(data))
        check("acl.media.dvpp_jpeg_get_image_info", ret)
        decoded_size, ret = media.dvpp_jpeg_predict_dec_size(host, len(data), C.PIXEL_FORMAT_YUV_SEMIPLANAR_420)
        check("acl.media.dvpp_jpeg_predict_dec_size", ret)
        jpeg = self._dvpp_malloc(len(data), releases)  # JPEGD reads dvpp memory only (aclcppdevg_03_0168)
        check("acl.rt.memcpy", acl.rt.memcpy(jpeg, len(data), host, len(data), self.session.copy_in_kind))
        del keep_alive
        decoded = self._picture(self._dvpp_malloc(decoded_size, releases), decoded_size, width, height,
                                _align(width, C.JPEGD_WIDTH_ALIGN), _align(height, C.JPEGD_HEIGHT_ALIGN), releases)
        check("acl.media.dvpp_jpeg_decode_async",
              media.dvpp_jpeg_decode_async(self._channel, jpeg, len(data), decoded, self.session.stream))
        self._synchronize(decoded, "acl.media.dvpp_jpeg_decode_async")
        resized_ptr = self._dvpp_malloc(self.frame_bytes, releases)
        resized = self._picture(resized_ptr, self.frame_bytes, self.width, self.height, self.width_stride,
                                self.height_stride, releases)
        check("acl.media.dvpp_vpc_resize_async", media.dvpp_vpc_resize_async(
            self._channel, decoded, resized, self._resize_config, self.session.stream))
        self._synchronize(resized, "acl.media.dvpp_vpc_resize_async")
        return self._read_frame(resized_ptr)

    def _host_pointer(self, data):
        """(what must outlive the pointer, a pointer to `data`), as ModelSession stages its inputs (spec §1.6)."""
        if self.session.staging == "bytes":
            return data, self.acl.util.bytes_to_ptr(data)
        array = np.frombuffer(data, dtype=np.uint8).copy()
        return array, self.acl.util.numpy_to_ptr(array)

    def _dvpp_malloc(self, size, releases):
        ptr, ret = self.acl.media.dvpp_malloc(size)
        check("acl.media.dvpp_malloc", ret)
        releases.push("acl.media.dvpp_free", self.acl.media.dvpp_free, ptr)
        return ptr

    def _picture(self, ptr, size, width, height, width_stride, height_stride, releases):
        media = self.acl.media
        desc = check_handle("acl.media.dvpp_create_pic_desc", media.dvpp_create_pic_desc())
        releases.push("acl.media.dvpp_destroy_pic_desc", media.dvpp_destroy_pic_desc, desc)
        for name, value in (("data", ptr), ("size", size), ("format", C.PIXEL_FORMAT_YUV_SEMIPLANAR_420),
                            ("width", width), ("height", height), ("width_stride", width_stride),
                            ("height_stride", height_stride)):
            check("acl.media.dvpp_set_pic_desc_" + name, getattr(media, "dvpp_set_pic_desc_" + name)(desc, value))
        return desc

    def _synchronize(self, desc, call):
        check("acl.rt.synchronize_stream after " + call, self.acl.rt.synchronize_stream(self.session.stream))
        code = self.acl.media.dvpp_get_pic_desc_ret_code(desc)
        if code != C.ACL_SUCCESS:  # the task's own result (the picture could not be decoded or scaled)
            raise AclError(call, code)

    def _read_frame(self, ptr):
        acl, size = self.acl, self.frame_bytes
        check("acl.rt.memcpy", acl.rt.memcpy(self._staging, size, ptr, size, self.session.copy_out_kind))
        if self.session.staging == "bytes":
            flat = np.frombuffer(acl.util.ptr_to_bytes(self._staging, size), dtype=np.uint8)
        else:
            flat = acl.util.ptr_to_numpy(self._staging, (size,), C.NPY_TYPE["uint8"]).copy()
        return flat.reshape(self.height_stride * 3 // 2, self.width_stride)

    def close(self):
        """Release the channel, its resize config and the staging buffer; returns warnings for failed releases."""
        return self.warnings + self._releases.release_all()
