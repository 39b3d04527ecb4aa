"""Run Huawei's official Python samples (Ascend/samples, python/) unchanged against the pyACL emulator, on small
stand-in models of the same board-side shapes built here and converted with atc-sim, and check every execution's
outputs against onnxruntime. `scripts/run_samples.sh DIR` calls this; DIR is a checkout of Ascend/samples at
SAMPLES_COMMIT. The samples are copied into a work folder first: nothing is written into DIR or this repository.

    python scripts/sample_models.py DIR [--work FOLDER] [--only NAME ...]

Prints one line per sample (ran / failed / skipped, and why) and, last, the summary as one JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the project's packages
from atlas.sim import atc_sim  # noqa: E402
SAMPLES_COMMIT = "fc2aea93e48be8f8cee51d0c6c1b13a08155f83a"  # Ascend/samples, 2023-06-10
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"  # the ACLLite classifiers draw their label with it
COSINE_MIN = 0.999       # fp16 tolerance, fixed before measuring: cosine and max error relative to the largest value
REL_ERROR_MAX = 0.02
TIMEOUT_S = 300


@dataclass
class Sample:
    """One official sample: where it is, the model it loads and how to stand it in, and how it is started."""

    name: str
    path: str                    # under python/
    model: str = ""              # the .om the sample loads, relative to its folder ("" = no model)
    net: str = ""                # the stand-in: see STAND_INS
    atc: tuple = ()              # the sample's own ATC options, as far as an ONNX stand-in takes them
    command: tuple = ()          # the script (relative to the sample folder) and its arguments, as the README runs it
    images: str = ""             # a folder of generated JPEGs, relative to the sample folder
    needs: tuple = ()            # Python modules the sample imports that may be missing here
    extra_files: dict = field(default_factory=dict)
    cwd: str = "src"             # where the README runs it from
    extra_images: tuple = ()     # more generated JPEGs the sample opens by name (in `images`)
    sizes: tuple = ((300, 260), (256, 256))  # (width, height) of the generated pictures; extra ones take the first


SAMPLES = [
    Sample("memcpy_host_device", "level1_single_api/1_acl/2_memory_management/memcpy_host_device_python",
           # the README's command adds --memory_reuse, with which the sample memsets a host buffer it freed
           # (docs/emulator.md): that loops forever, on the board as here
           command=("src/memcpy_host_device.py", "--release_cycle", "2", "--number_of_cycles", "2", "--device_id",
                    "0", "--memory_size", "1048576", "--write_back_host"), cwd="."),
    Sample("resnet50_imagenet_classification", "level2_simple_inference/1_classification/resnet50_imagenet_classification",
           "model/resnet50.om", "classifier:data:3x224x224:1000:prob",
           ("--input_format=NCHW", "--input_fp16_nodes=data", "--output_type=FP32", "--out_nodes=prob:0"),
           ("src/acl_net.py",), "data"),
    Sample("resnet50_async_imagenet_classification",
           "level2_simple_inference/1_classification/resnet50_async_imagenet_classification",
           "model/resnet50.om", "classifier:data:3x224x224:1000:prob",
           ("--input_format=NCHW", "--input_fp16_nodes=data", "--output_type=FP32", "--out_nodes=prob:0"),
           ("src/acl_net.py",), "data"),
    Sample("resnet50_imagenet_dynamic_hw", "level2_simple_inference/1_classification/resnet50_imagenet_dynamic_hw",
           "model/tf_resnet50.om", "classifier:Placeholder:3xHxW:1000:prob",
           ("--input_shape=Placeholder:1,3,-1,-1", "--dynamic_image_size=112,112;224,224;448,448", "AIPP_RGB"),
           ("src/acl_net.py",), "data"),
    Sample("googlenet_mindspore_picture", "level2_simple_inference/1_classification/googlenet_mindspore_picture",
           "model/googlenet.om", "classifier:x:3x224x224:10:", (), ("src/classify.py", "../data"), "data"),
    Sample("resnet50_mindspore_picture", "level2_simple_inference/1_classification/resnet50_mindspore_picture",
           "model/resnet50.om", "classifier:x:3x224x224:10:", (), ("src/classify.py", "../data"), "data"),
    Sample("dehaze_picture", "contrib/dehaze_picture", "model/deploy_vel.om",
           "image_to_image:t_image_input_to_DHGAN_generator:512x512x3",
           ("--input_format=ND", "--input_fp16_nodes=t_image_input_to_DHGAN_generator", "--output_type=FP32"),
           ("src/main.py", "../data"), "data"),
    Sample("colorization_picture", "level2_simple_inference/6_other/colorization_picture",
           "model/colorization_yuv.om", "conv_map:data_l:1x224x224:2x56x56", ("--input_format=NCHW",),
           ("src/colorize.py",), "data", ("cv2",)),
    Sample("vessel_segmentation", "contrib/vessel_segmentation", "model/vessel.om", "conv_map:data:3x512x512:1x512x512",
           ("--input_format=NCHW", "--input_fp16_nodes=data", "--output_type=FP32"), ("src/main.py",), "data",
           ("cv2",)),
    Sample("image_HDR_enhance", "contrib/image_HDR_enhance", "model/image_HDR_enhance.om",
           "image_to_image:input:512x512x3", ("--input_format=ND", "--output_type=FP32"), ("src/main.py",), "data",
           ("cv2",)),
    Sample("inceptionv2_picture", "contrib/inceptionv2_picture", "model/frozen_graph-inception-resnet-test1.om",
           "classifier:input:299x299x3:6::nhwc", ("--input_format=ND",), ("src/classify.py", "../data"), "data",
           ("cv2",)),
    Sample("YOLOV4_coco_detection_picture", "level2_simple_inference/2_object_detection/YOLOV4_coco_detection_picture",
           "model/yolov4_bs1.om", "yolo_heads:input:3x608x608:255:19,38,76", ("--input_format=NCHW",),
           ("src/yolov4.py",), "data", ("cv2",)),
    Sample("edge_detection_picture", "contrib/edge_detection_picture", "model/rcf.om",
           "strided_heads:data:3x512x512:1:1/1,2/2,4/4,8/8,16/8",
           ("--input_fp16_nodes=data", "--input_format=NCHW", "--output_type=FP32"), ("src/main.py",), "data",
           ("cv2",)),
    Sample("bert_text_classification", "level2_simple_inference/5_nlp/bert_text_classification",
           "model/bert_text_classification.om", "two_vectors:input_1,input_2:300:5",
           ("--input_format=ND",), ("src/bert_text_classification.py",),
           extra_files={"data/sample.txt": "体育新闻：一场比赛的报道。"}),
]
C1 = "level2_simple_inference/1_classification"
DVPP_SAMPLES = [
    Sample("memcpy_host_DVPP", "level1_single_api/1_acl/2_memory_management/memcpy_host_DVPP_python",
           command=("src/memcpy_host_dvpp.py", "--release_cycle", "2", "--number_of_cycles", "2", "--device_id", "0",
                    "--memory_size", "1048576", "--memory_reuse"), cwd="."),
    Sample("memcpy_host_device_async", "level1_single_api/1_acl/2_memory_management/memcpy_host_device_async_python",
           # the README's --write_back_host is not an option of the script (argparse refuses it): left out
           command=("src/memcpy_host_device_async_python.py", "--release_cycle", "2", "--number_of_cycles", "2",
                    "--device_id", "0", "--memory_size", "1048576"), cwd="."),
    Sample("googlenet_imagenet_picture", f"{C1}/googlenet_imagenet_picture", "model/googlenet_yuv.om",
           "classifier:data:3x224x224:1000:prob", ("--input_format=NCHW", "AIPP_YUV:224x224"),
           ("src/classify.py", "../data/"), "data"),
    Sample("googlenet_onnx_picture", f"{C1}/googlenet_onnx_picture", "model/googlenet_yuv.om",
           "classifier:actual_input_1:3x224x224:1000:", ("--input_format=NCHW", "AIPP_YUV:224x224"),
           ("src/classify.py", "../data/"), "data"),
    Sample("googlenet_imagenet_multi_batch", f"{C1}/googlenet_imagenet_multi_batch", "model/googlenet_yuv.om",
           "classifier:data:10x3x224x224:1000:prob", ("--input_format=NCHW", "AIPP_YUV:224x224"),
           ("src/classify.py", "../data/"), "data"),
    Sample("googlenet_imagenet_dynamic_batch", f"{C1}/googlenet_imagenet_dynamic_batch",
           "model/googlenet_dynamic_batch.om", "classifier:data:Nx3x224x224:1000:prob",
           ("--input_shape=data:-1,3,224,224", "--input_format=NCHW", "--dynamic_batch_size=1,2,4,8",
            "AIPP_YUV:224x224"), ("src/classify.py", "../data/"), "data"),
    Sample("inceptionv3_picture", f"{C1}/inceptionv3_picture", "model/InceptionV3.om",
           "classifier:actual_input_1:3x300x300:1000:", ("--input_format=NCHW", "AIPP_YUV:336x336:300x300@18,18"),
           ("src/classify.py", "../data/"), "data"),
    Sample("vgg16_cat_dog_picture", f"{C1}/vgg16_cat_dog_picture", "model/vgg16_cat_dog.om",
           "classifier:input_1:3x224x224:2:", ("--output_type=FP32", "AIPP_YUV:224x256:224x224@0,16"),
           ("src/main.py",), "data", ("cv2",)),
    Sample("garbage_picture", "contrib/garbage_picture", "model/garbage_yuv.om", "classifier:data:3x224x224:40:",
           ("--input_format=NCHW", "AIPP_YUV:224x224"), ("src/classify_test.py", "../data/"), "data"),
    Sample("gesture_recognition_picture", "contrib/gesture_recognition_picture", "model/gesture_yuv.om",
           "classifier:data:3x224x224:20:", ("--input_format=NCHW", "AIPP_YUV:256x224:224x224@16,0"),
           ("src/main.py", "../data/"), "data"),
    Sample("crowd_count_picture", "contrib/crowd_count_picture", "model/count_person.caffe.om",
           "conv_map:blob1:3x800x1408:1x800x1408", ("--input_format=NCHW", "AIPP_YUV:1408x800"),
           ("src/main.py", "../data/"), "data", ("cv2",)),
    Sample("portrait_picture", "contrib/portrait_picture", "model/portrait.om", "conv_map:Inputs/x_input:3x224x224:2x224x224",
           ("--output_type=FP32", "AIPP_YUV:224x224"), ("src/main.py",), "data", ("cv2",),
           extra_images=("background.jpg",), sizes=((300, 260), (300, 260))),  # blended with the background
    Sample("cartoonGAN_picture", "contrib/cartoonGAN_picture", "model/cartoonization.om",
           "picture_out:train_real_A:256x256", ("--output_type=FP32", "AIPP_YUV:256x256"),
           ("src/cartoonization.py", "../data/"), "data", ("cv2",)),
    Sample("animeGAN_picture", "level2_simple_inference/6_other/animeGAN_picture", "model/AnimeGANv2_256.om",
           "picture_out:test:256x256", ("--output_type=FP32", "AIPP_YUV:256x256"), ("src/AnimeGAN.py", "../data/", "256"),
           "data", ("cv2",)),
]
AIPP_RGB = {"aipp_mode": "static", "related_input_rank": 0, "input_format": "RGB888_U8", "csc_switch": False,
            "rbuv_swap_switch": False, **{f"var_reci_chn_{c}": 0.0171 for c in range(3)},
            **{f"min_chn_{c}": v for c, v in enumerate((123.675, 116.28, 103.53))}}


# The one YUV420SP aipp.cfg in Ascend/samples (the others are downloaded from OBS): CSC with ATC's default matrix,
# min_chn 123/117/104, src 224x224. A sample's AIPP_YUV:SRCWxSRCH[:CROPWxCROPH@X,Y] is this file with the source size
# the sample's resize makes and, where the model is smaller, a crop of it [INFER: the downloaded configs' sizes].
OFFICIAL_AIPP = "level2_simple_inference/1_classification/vpc_resnet50_imagenet_classification/caffe_model/aipp.cfg"


def yuv_aipp_cfg(official: str, token: str) -> str:
    """The official aipp.cfg's text with another source size, and a crop (`token`: AIPP_YUV:...)."""
    _, source, *crop = token.split(":")
    width, height = source.split("x")
    text = re.sub(r"src_image_size_w : \d+", f"src_image_size_w : {width}", official)
    text = re.sub(r"src_image_size_h : \d+", f"src_image_size_h : {height}", text)
    if crop:
        size, start = crop[0].split("@")
        (crop_w, crop_h), (left, top) = size.split("x"), start.split(",")
        text = re.sub(r"load_start_pos_h : \d+", f"load_start_pos_h : {top}", text)
        text = re.sub(r"load_start_pos_w : \d+", f"load_start_pos_w : {left}", text)
        text = text.replace("}", f"\tcrop : true\n\tcrop_size_w : {crop_w}\n\tcrop_size_h : {crop_h}\n}}", 1)
    return text


# --- stand-in models ------------------------------------------------------------------------------------------
def _weights(rng, *shape):
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def classifier(spec: str) -> onnx.ModelProto:
    """`classifier:NAME:CxHxW:CLASSES:SOFTMAX_NODE[:nhwc]`: Conv -> Relu -> GlobalAveragePool -> Gemm (-> Softmax
    named SOFTMAX_NODE): any H and W give CLASSES scores, like a ResNet head; `nhwc` takes an HxWxC input (a
    TensorFlow model's layout)."""
    _, name, dims, classes, softmax, *layout = spec.split(":") + [""]
    sizes = [int(d) if d.isdigit() else d for d in dims.split("x")]
    batch = sizes.pop(0) if len(sizes) == 4 else 1  # NxCxHxW: a batch (N: dynamic)
    nhwc = layout[0] == "nhwc"
    c, h, w = (sizes[2], sizes[0], sizes[1]) if nhwc else sizes
    rng = np.random.default_rng(0)
    first = "nchw" if nhwc else name
    nodes = [helper.make_node("Transpose", [name], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2])] if nhwc else []
    nodes += [helper.make_node("Conv", [first, "cw", "cb"], ["conv"], name="conv", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
             helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["scores" if softmax else "logits"], name="fc", transB=1)]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], ["logits"], name=softmax, axis=1))
    inits = [numpy_helper.from_array(_weights(rng, 16, c, 3, 3), "cw"), numpy_helper.from_array(
        np.zeros(16, np.float32), "cb"), numpy_helper.from_array(_weights(rng, int(classes), 16) * 4, "fw"),
        numpy_helper.from_array(np.zeros(int(classes), np.float32), "fb")]
    return _model(nodes, [(name, [batch, h, w, c] if nhwc else [batch, c, h, w])], [("logits", [batch, int(classes)])],
                  inits)


def image_to_image(spec: str) -> onnx.ModelProto:
    """`image_to_image:NAME:HxWxC`: an NHWC image in, an NHWC image of the same size out (Conv + Tanh)."""
    _, name, hwc = spec.split(":")
    h, w, c = (int(d) for d in hwc.split("x"))
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", [name], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "cw", "cb"], ["conv"], name="conv", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["conv"], ["tanh"], name="tanh"),
             helper.make_node("Transpose", ["tanh"], ["image"], name="to_nhwc", perm=[0, 2, 3, 1])]
    inits = [numpy_helper.from_array(_weights(rng, c, c, 3, 3), "cw"),
             numpy_helper.from_array(np.zeros(c, np.float32), "cb")]
    return _model(nodes, [(name, [1, h, w, c])], [("image", [1, h, w, c])], inits)


def two_vectors(spec: str) -> onnx.ModelProto:
    """`two_vectors:A,B:LENGTH:CLASSES`: two (1, LENGTH) inputs -> Softmax over CLASSES (a BERT classifier's I/O)."""
    _, names, length, classes = spec.split(":")
    a, b = names.split(",")
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Mul", [b, "scale"], ["b_scaled"], name="segment"),
             helper.make_node("Add", [a, "b_scaled"], ["mixed"], name="mix"),
             helper.make_node("Gemm", ["mixed", "fw", "fb"], ["scores"], name="fc", transB=1),
             helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=1)]
    inits = [numpy_helper.from_array(np.array([0.5], np.float32), "scale"),
             numpy_helper.from_array(_weights(rng, int(classes), int(length)) * 0.01, "fw"),
             numpy_helper.from_array(np.zeros(int(classes), np.float32), "fb")]
    return _model(nodes, [(a, [1, int(length)]), (b, [1, int(length)])], [("probs", [1, int(classes)])], inits)


def conv_map(spec: str) -> onnx.ModelProto:
    """`conv_map:NAME:CxHxW:OCxOHxOW`: one strided Conv + Sigmoid from an NCHW image to an NCHW map (a segmenter's
    or a colouriser's I/O)."""
    _, name, chw, out = spec.split(":")
    c, h, w = (int(d) for d in chw.split("x"))
    oc, oh, ow = (int(d) for d in out.split("x"))
    stride = h // oh
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", [name, "cw", "cb"], ["conv"], name="conv", kernel_shape=[stride + 2] * 2,
                              pads=[1, 1, 1, 1], strides=[stride, stride]),
             helper.make_node("Sigmoid", ["conv"], ["map"], name="sigmoid")]
    inits = [numpy_helper.from_array(_weights(rng, oc, c, stride + 2, stride + 2), "cw"),
             numpy_helper.from_array(np.zeros(oc, np.float32), "cb")]
    return _model(nodes, [(name, [1, c, h, w])], [("map", [1, oc, oh, ow])], inits)


def yolo_heads(spec: str) -> onnx.ModelProto:
    """`yolo_heads:NAME:CxHxW:CHANNELS:S1,S2,S3`: three YOLO feature maps of S x S cells from one strided Conv each
    (the objectness channels biased low, so the sample's Python NMS has few boxes to sort)."""
    _, name, chw, channels, sizes = spec.split(":")
    c, h, w = (int(d) for d in chw.split("x"))
    bias = np.zeros(int(channels), np.float32)
    bias[4::int(channels) // 3] = -12.0
    strides = [h // int(size) for size in sizes.split(",")]
    return _heads(name, (c, h, w), int(channels), [(s, s) for s in strides], bias)


def strided_heads(spec: str) -> onnx.ModelProto:
    """`strided_heads:NAME:CxHxW:CHANNELS:K/S,K/S,...`: one output per kernel/stride pair, each one Conv of the
    input (side outputs at several scales, like an edge detector's)."""
    _, name, chw, channels, pairs = spec.split(":")
    c, h, w = (int(d) for d in chw.split("x"))
    kernels = [tuple(int(v) for v in pair.split("/")) for pair in pairs.split(",")]
    return _heads(name, (c, h, w), int(channels), kernels, np.zeros(int(channels), np.float32))


def _heads(name: str, chw, channels: int, kernels, bias) -> onnx.ModelProto:
    c, h, w = chw
    rng, nodes, inits, outputs = np.random.default_rng(0), [], [], []
    for index, (kernel, stride) in enumerate(kernels):
        nodes.append(helper.make_node("Conv", [name, f"w{index}", f"b{index}"], [f"head{index}"], name=f"head{index}",
                                      kernel_shape=[kernel, kernel], strides=[stride, stride]))
        inits += [numpy_helper.from_array(_weights(rng, channels, c, kernel, kernel), f"w{index}"),
                  numpy_helper.from_array(bias, f"b{index}")]
        size = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        outputs.append((f"head{index}", [1, channels, *size]))
    return _model(nodes, [(name, [1, c, h, w])], outputs, inits)


def picture_out(spec: str) -> onnx.ModelProto:
    """`picture_out:NAME:HxW`: an NCHW picture in (what AIPP feeds), an NHWC picture of the same size out (Conv +
    Tanh), like the GANs whose output the samples turn back into an image."""
    _, name, hw = spec.split(":")
    h, w = (int(d) for d in hw.split("x"))
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", [name, "cw", "cb"], ["conv"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["conv"], ["tanh"], name="tanh"),
             helper.make_node("Transpose", ["tanh"], ["picture"], name="to_nhwc", perm=[0, 2, 3, 1])]
    inits = [numpy_helper.from_array(_weights(rng, 3, 3, 3, 3) * 0.01, "cw"),
             numpy_helper.from_array(np.zeros(3, np.float32), "cb")]
    return _model(nodes, [(name, [1, 3, h, w])], [("picture", [1, h, w, 3])], inits)


STAND_INS = {"classifier": classifier, "picture_out": picture_out, "image_to_image": image_to_image, "two_vectors": two_vectors,
             "conv_map": conv_map, "yolo_heads": yolo_heads, "strided_heads": strided_heads}


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "stand_in",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], producer_name="atlas-kd")
    model.ir_version = 7
    return model


# --- preparing a sample ---------------------------------------------------------------------------------------
def prepare(sample: Sample, folder: Path, official_aipp: str = "") -> None:
    """Build the stand-in .om where the sample looks for its model, and its input files; `official_aipp` is the
    samples' own YUV420SP aipp.cfg (OFFICIAL_AIPP), the base of every AIPP_YUV config."""
    for name, text in sample.extra_files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    if sample.images:
        _images(folder / sample.images, sample.sizes, sample.extra_images)
    (folder / "out").mkdir(exist_ok=True)
    if not sample.model:
        return
    model = STAND_INS[sample.net.split(":")[0]](sample.net)
    onnx_path = folder / "stand_in.onnx"
    onnx.save(model, str(onnx_path))
    options = list(sample.atc)
    if "AIPP_RGB" in options:
        from atlas.aipp import write_insert_op_cfg

        write_insert_op_cfg(folder / "aipp.cfg", AIPP_RGB)
        options[options.index("AIPP_RGB")] = f"--insert_op_conf={folder / 'aipp.cfg'}"
    for index, option in enumerate(options):
        if option.startswith("AIPP_YUV:"):
            (folder / "insert_op.cfg").write_text(yuv_aipp_cfg(official_aipp, option), encoding="utf-8")
            options[index] = f"--insert_op_conf={folder / 'insert_op.cfg'}"
    base = folder / sample.model[:-len(".om")]
    base.parent.mkdir(parents=True, exist_ok=True)
    argv = [f"--model={onnx_path}", "--framework=5", f"--output={base}", "--soc_version=Ascend310", *options]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = atc_sim.main(argv)
    if code != 0:
        first = next((line for line in printed.getvalue().splitlines() if line[:1] in "EW" and ": " in line), "")
        raise RuntimeError(f"atc-sim refused the stand-in: {first.strip() or printed.getvalue().strip()}")


def _images(folder: Path, sizes: tuple, extra: tuple = ()) -> None:
    """Deterministic photo-like JPEGs (gradients and a disc) of the given sizes, and the `extra` names a sample
    opens (at the first size)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    named = [(f"picture{i}.jpg", size) for i, size in enumerate(sizes)] + [(name, sizes[0]) for name in extra]
    for index, (name, (w, h)) in enumerate(named):
        yy, xx = np.mgrid[0:h, 0:w]
        disc = ((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2) * 120
        pixels = np.stack([xx * 255 // w, yy * 255 // h, disc + 60 * index], axis=-1).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=95)


# --- running and checking -------------------------------------------------------------------------------------
def run(sample: Sample, folder: Path) -> dict:
    """Run the sample unchanged with the emulator as `acl`; returns its outcome, checked against onnxruntime."""
    missing = [m for m in sample.needs if not _importable(m)]
    if missing:
        return {"sample": sample.name, "result": "skipped", "why": f"needs {', '.join(missing)}"}
    records = folder / "records"
    # the emulator is `acl`; ACLLite is on PYTHONPATH as its README sets the board up (common/acllite/README.md);
    # ATLAS_KD_SAMPLES_SITE holds what the samples import that this venv lacks (cv2)
    acllite = folder.parents[len(Path(sample.path).parts) - 1] / "common" / "acllite"
    paths = [str(REPO / "atlas" / "sim"), str(REPO), str(acllite), os.environ.get("ATLAS_KD_SAMPLES_SITE", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths)),
           "ATLAS_KD_SIM_ACL_RECORD": str(records), "ATLAS_KD_SIM_ACL_STATS": str(folder / "acl-stats.json")}
    script, *args = sample.command
    cwd = folder / sample.cwd
    try:
        done = subprocess.run([sys.executable, os.path.relpath(folder / script, cwd), *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"sample": sample.name, "result": "failed", "why": f"did not finish in {TIMEOUT_S} s"}
    (folder / "sample.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    outcome = {"sample": sample.name, "exit": done.returncode, **_emulator_stats(folder / "acl-stats.json")}
    if done.returncode != 0 or "Traceback" in done.stderr:
        tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()][-1:]
        return {**outcome, "result": "failed", "why": tail[0] if tail else f"exit {done.returncode}"}
    checks = [check_record(path) for path in sorted(records.glob("*.npz"))] if records.is_dir() else []
    if sample.model and not checks:
        return {**outcome, "result": "failed", "why": "the sample ran no execute"}
    worst = min((c["cosine"] for c in checks), default=None)
    bad = [c for c in checks if not c["ok"]]
    return {**outcome, "result": "failed" if bad else "ran", "executions": len(checks), "min_cosine": worst,
            "max_rel_error": max((c["rel_error"] for c in checks), default=None),
            **({"why": f"{len(bad)} execution(s) outside the fp16 tolerance"} if bad else {})}


def _importable(module: str) -> bool:
    import importlib.util

    site = os.environ.get("ATLAS_KD_SAMPLES_SITE")
    return importlib.util.find_spec(module) is not None or bool(site and (Path(site) / module).is_dir())


def _emulator_stats(path: Path) -> dict:
    if not path.exists():
        return {}
    stats = json.loads(path.read_text())
    return {"acl_errors": stats["error_count"], "warnings": len(stats.get("warnings", [])),
            "leaks_at_finalize": sorted(stats.get("leaks_at_finalize") or {})}


def check_record(path: Path) -> dict:
    """One recorded execution against onnxruntime in fp32 on the same board-side inputs (AIPP applied in fp32)."""
    import onnxruntime as ort

    from atlas.sim import aipp_math

    record = np.load(path)
    meta = json.loads(str(record["meta"]))
    model = onnx.load(str(path.parent.parent / "stand_in.onnx"))
    # --out_nodes made node outputs the model's outputs: ask onnxruntime for the same tensors
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(o["name"], TensorProto.FLOAT, None)
                              for o in meta["outputs"])
    feed, profile = {}, int(record["profile"])
    rank = meta["aipp"].get("related_input_rank", 0) if meta.get("aipp") else None
    for index, spec in enumerate(meta["onnx_inputs"]):
        array = record[f"input{index}"]
        if index == rank:
            dims = spec["profile_dims"][profile] if profile >= 0 and spec.get("profile_dims") else spec["dims"]
            array = aipp_math.apply_aipp(array, meta["aipp"], fp16=False, model_hw=dims[2:])
        feed[spec["name"]] = array.astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feed)
    cosines, errors = [], []
    for index, want in enumerate(expected):
        got = record[f"output{index}"].astype(np.float64).ravel()
        want = np.asarray(want, np.float64).ravel()
        cosines.append(float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want) or 1.0)))
        errors.append(float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)))
    return {"cosine": min(cosines), "rel_error": max(errors),
            "ok": min(cosines) >= COSINE_MIN and max(errors) <= REL_ERROR_MAX}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=Path, help=f"a checkout of Ascend/samples at {SAMPLES_COMMIT[:8]}")
    parser.add_argument("--work", type=Path, help="where to copy the samples (default: a new temp folder)")
    parser.add_argument("--only", nargs="*", help="sample names to run (default: all)")
    args = parser.parse_args(argv)
    python = args.samples / "python"
    if not (python / "common" / "acllite").is_dir():
        print(f"{args.samples}: not a checkout of Ascend/samples (no python/common/acllite)", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="atlas-kd-samples-"))
    shutil.copytree(python / "common", work / "common", dirs_exist_ok=True)
    results = []
    for sample in SAMPLES + DVPP_SAMPLES:
        if args.only and sample.name not in args.only:
            continue
        folder = work / sample.path
        shutil.copytree(python / sample.path, folder, dirs_exist_ok=True)  # beside work/common, as in python/
        try:
            prepare(sample, folder, (python / OFFICIAL_AIPP).read_text(encoding="utf-8"))
            outcome = run(sample, folder)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            outcome = {"sample": sample.name, "result": "failed", "why": str(e)}
        results.append(outcome)
        print(f"{outcome['sample']}: {outcome['result']}" + (f" ({outcome['why']})" if "why" in outcome else "")
              + (f", {outcome['executions']} executions, min cosine {outcome['min_cosine']:.6f}, max relative "
                 f"error {outcome['max_rel_error']:.2e}" if outcome.get("executions") else ""), flush=True)
    summary = {"work": str(work), "ran": sum(r["result"] == "ran" for r in results),
               "failed": sum(r["result"] == "failed" for r in results), "results": results}
    print(json.dumps(summary, ensure_ascii=False))
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
