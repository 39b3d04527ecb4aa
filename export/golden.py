"""Golden inputs for any ONNX: the test split of a built-in or image-folder data set, a folder of the user's
images (`export.images`, preprocessed by the config's rules; labels from class folders when present), arrays the
user already preprocessed (`export.inputs`: .npy for one input, .npz by input name for several), or seeded random
inputs when nothing else is given (standard normal for floats, the dtype's range for integers: accuracy cannot
be judged then, and the stage says so).

The golden set is what the board is fed (`board`: for AIPP the uint8 NHWC pixels) and what the model is fed
(`model`, by input name), plus int64 labels (-1: unknown).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atlas.errors import UserError

RANDOM_SEED = 0
RANDOM_MAX = 64  # random inputs carry no accuracy: a few are enough to compare the board with onnxruntime


@dataclass
class ModelInput:
    """One graph input as onnxruntime reports it: name, dims (None where dynamic) and numpy dtype."""

    name: str
    dims: list[int | None]
    dtype: np.dtype

    @property
    def sample_dims(self) -> list[int | None]:
        return self.dims[1:]


@dataclass
class Golden:
    model: dict[str, np.ndarray]  # what onnxruntime is fed, by input name
    labels: np.ndarray  # int64, -1 where unknown
    kind: str  # dataset | images | arrays | random
    board: dict[str, np.ndarray] = field(default_factory=dict)  # what the board is fed (= model unless AIPP)
    pixels: np.ndarray | None = None  # uint8 NHWC pixels behind a single image input (for AIPP)
    note: str = ""
    images: list[Path] = field(default_factory=list)  # the JPEG files the board decodes (export.dvpp), in order

    @property
    def count(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
               "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def model_inputs(session) -> list[ModelInput]:
    out = []
    for meta in session.get_inputs():
        dtype = _ORT_DTYPES.get(meta.type)
        if dtype is None:
            raise UserError(f"model input '{meta.name}' has type {meta.type}, which the golden set cannot hold")
        dims = [d if isinstance(d, int) and d > 0 else None for d in meta.shape]
        out.append(ModelInput(meta.name, dims, np.dtype(dtype)))
    return out


def from_dataset(images: np.ndarray, labels: np.ndarray, mean, std, inputs: list[ModelInput]) -> Golden:
    """A data set's test images, normalised exactly as training normalised them (one image input)."""
    from training.data import normalize

    only = _single_image_input(inputs, "the data set's images")
    return Golden({only.name: normalize(images, mean, std)}, labels.astype(np.int64), "dataset", pixels=images,
                  note=f"{len(images)} test images")


def from_images(folder: Path, inputs: list[ModelInput], rules, mean, std, count: int, progress: bool) -> Golden:
    """A folder of the user's images (flat, or in class folders) for a model with one image input [N, C, H, W]."""
    from training.data import normalize
    from training.imagefolder import CHANNEL_MODES, read_flat_or_labelled

    only = _single_image_input(inputs, "export.images")
    _, c, h, w = only.dims
    channels = {1: "gray", 3: "rgb"}.get(c)
    if channels is None:
        raise UserError(f"export.images: model input '{only.name}' has {c} channels; images give 1 (gray) or 3 (rgb)")
    rules = type(rules)(**{**rules.__dict__, "size": h, "width": w, "channels": channels})
    n = CHANNEL_MODES[channels][1]
    if len(mean) != n or len(std) != n:
        raise UserError(f"export.images: data.mean/data.std have {len(mean)}/{len(std)} values for {n} channel(s): "
                        "give the normalisation the model was trained with")
    images = read_flat_or_labelled(Path(folder), rules, progress)
    pixels, labels = images.pixels[:count], images.labels[:count]
    if not len(pixels):
        raise UserError(f"{folder}: no images (.jpg, .jpeg, .png, .bmp)")
    model = normalize(pixels, mean, std).astype(only.dtype)
    return Golden({only.name: model}, labels, "images", pixels=pixels,
                  note=f"{len(pixels)} images from {folder}, {h}x{w} {channels}")


def from_jpegs(folder: Path, inputs: list[ModelInput], aipp: dict, mean, std, count: int) -> Golden:
    """The board's image road (export.dvpp): JPEG files (flat, or in class folders) that the board decodes (JPEGD)
    and resizes (VPC) into a YUV420SP_U8 AIPP model. `board`: the frames the VPC hands the model, computed here by
    atlas/yuv.py's reading of JPEGD and the VPC; `model`: the same after AIPP's crop and CSC (`aipp`), normalised
    in float32 as training normalised."""
    from atlas import yuv
    from atlas.aipp import yuv420sp_pixels
    from training.data import normalize

    only = _single_image_input(inputs, "export.dvpp")
    _, c, h, w = only.dims
    if c != 3 or h % 2 or w % 2:
        raise UserError(f"export.dvpp: model input '{only.name}' is {c}x{h}x{w}; the DVPP road feeds RGB (3 channels) "
                        "of an even height and width (the VPC writes even sizes)")
    paths, labels = _jpeg_files(Path(folder))
    paths, labels = paths[:count], labels[:count]
    width_stride, height_stride = yuv.vpc_strides(w, h)
    frames = np.empty((len(paths), height_stride * 3 // 2, width_stride), np.uint8)
    for i, path in enumerate(paths):
        try:
            frames[i] = yuv.jpeg_to_vpc_frame(path.read_bytes(), w, h)
        except (yuv.JpegError, OSError) as e:
            raise UserError(f"{path}: cannot decode it as the board's JPEG decoder would: {e}") from None
    rgb = yuv420sp_pixels(frames, aipp, (h, w)).astype(np.uint8)
    model = normalize(rgb, mean, std).astype(only.dtype)
    return Golden({only.name: model}, np.asarray(labels, np.int64), "images", board={only.name: frames}, pixels=rgb,
                  note=f"{len(paths)} JPEGs from {folder}, decoded and resized to {h}x{w} as DVPP does",
                  images=paths)


def decoded_otherwise(paths: list[Path], only: ModelInput, aipp: dict, mean, std,
                      pillow_resize: bool = False) -> dict[str, np.ndarray]:
    """The model inputs of the same JPEGs through another decoder: Pillow's RGB decode taken back to YUV420SP
    (another IDCT and chroma route, as a real JPEGD differs from Pillow's), resized as atlas/yuv.py does or, with
    `pillow_resize`, by Pillow's antialiased bilinear (another filter: the VPC's is Huawei's own, not public).
    How far that moves the reference says how much of a real board's disagreement decoding alone can explain."""
    from PIL import Image

    from atlas import yuv
    from atlas.aipp import yuv420sp_pixels
    from training.data import normalize

    _, _, h, w = only.dims
    width_stride, height_stride = yuv.vpc_strides(w, h)
    frames = np.empty((len(paths), height_stride * 3 // 2, width_stride), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if pillow_resize:
                y, uv = yuv.subsample(yuv.rgb_to_yuv(np.asarray(rgb.resize((w, h), Image.BILINEAR))))
            else:
                y, uv = yuv.resize(*yuv.floor_even(*yuv.subsample(yuv.rgb_to_yuv(np.asarray(rgb)))), w, h)
        frames[i] = yuv.pack(y, uv, width_stride, height_stride).reshape(frames.shape[1:])
    rgb = yuv420sp_pixels(frames, aipp, (h, w)).astype(np.uint8)
    return {only.name: normalize(rgb, mean, std).astype(only.dtype)}


def agreement(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict:
    """Min per-sample cosine and (for [N, C] scores) top-1 agreement of the first output against the reference."""
    out, ref = (np.asarray(next(iter(d.values())), np.float64) for d in (outputs, reference))
    a, b = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
    top1 = float((out.argmax(1) == ref.argmax(1)).mean()) if ref.ndim == 2 else None
    return {"cosine_min": round(float(cosine.min()), 7), "top1_agreement": top1, "count": int(len(ref))}


def _jpeg_files(folder: Path) -> tuple[list[Path], list[int]]:
    """(files, labels) of a flat folder (labels -1) or of class folders; one line for a file that is not a JPEG."""
    from training.imagefolder import class_folders, image_files

    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder of images")
    files = image_files(folder)
    if files:
        paths, labels = files, [-1] * len(files)
    else:
        paths, labels = [], []
        for label, (_, class_dir) in enumerate(class_folders(folder, ())):
            found = image_files(class_dir)
            paths += found
            labels += [label] * len(found)
    other = next((p for p in paths if p.suffix.lower() not in (".jpg", ".jpeg")), None)
    if other is not None:
        raise UserError(f"{other}: export.dvpp takes JPEG files only (the board's DVPP decodes JPEG)")
    return paths, labels


def from_arrays(path: Path, inputs: list[ModelInput], count: int) -> Golden:
    """Arrays the user preprocessed: a .npy for a one-input model, a .npz with one array per input name."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: not a readable .npy or .npz ({e})") from None
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            raise UserError(f"{path}: one array for a model with {len(inputs)} inputs "
                            f"({', '.join(i.name for i in inputs)}): give an .npz with one array per input name")
        arrays = {inputs[0].name: loaded}
    else:
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
        missing = [i.name for i in inputs if i.name not in arrays]
        extra = sorted(set(arrays) - {i.name for i in inputs})
        if missing or extra:
            raise UserError(f"{path}: arrays {sorted(arrays)} do not match the model's inputs "
                            f"{[i.name for i in inputs]} (missing {missing}, unknown {extra})")
    counts = {len(a) for a in arrays.values() if a.ndim}
    for item in inputs:
        a = arrays[item.name]
        if a.ndim != len(item.dims) or any(d is not None and d != s for d, s in zip(item.sample_dims, a.shape[1:])):
            raise UserError(f"{path}: input '{item.name}' takes [N, {', '.join(str(d or '?') for d in item.sample_dims)}]"
                            f" per sample, the array is {list(a.shape)}")
        if a.dtype != item.dtype:
            raise UserError(f"{path}: input '{item.name}' takes {item.dtype}, the array is {a.dtype}")
    if len(counts) != 1 or 0 in counts:
        raise UserError(f"{path}: the arrays hold different numbers of samples, or none ({sorted(counts)})")
    n = min(count, counts.pop())
    return Golden({name: np.ascontiguousarray(a[:n]) for name, a in arrays.items()}, np.full(n, -1, np.int64),
                  "arrays", note=f"{n} samples from {path}")


def random_inputs(inputs: list[ModelInput], count: int) -> Golden:
    """Seeded random samples of each input's dtype: only board-vs-reference agreement can be judged."""
    rng = np.random.default_rng(RANDOM_SEED)
    n = min(count, RANDOM_MAX)
    model = {}
    for item in inputs:
        if None in item.sample_dims:
            raise UserError(f"model input '{item.name}' has dynamic dims {item.dims}: fix them with "
                            "--input-shape name:1,3,H,W before random inputs can be made")
        shape = (n, *item.sample_dims)
        if np.issubdtype(item.dtype, np.floating):
            model[item.name] = rng.standard_normal(shape).astype(item.dtype)
        elif item.dtype == np.bool_:
            model[item.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            info = np.iinfo(item.dtype)
            model[item.name] = rng.integers(info.min, info.max, shape, dtype=item.dtype, endpoint=True)
    return Golden(model, np.full(n, -1, np.int64), "random",
                  note=f"{n} seeded random samples (no --images or --inputs): accuracy cannot be judged")


def fits_dataset(inputs: list[ModelInput], dataset_name: str, cfg) -> bool:
    """Whether a user's model takes the configured data set's images (then its test split is the golden set)."""
    from training.data import IMAGEFOLDER, dataset_info, image_rules
    from training.imagefolder import CHANNEL_MODES

    if len(inputs) != 1 or len(inputs[0].dims) != 4 or None in inputs[0].dims[1:]:
        return False
    if dataset_name == IMAGEFOLDER:
        rules = image_rules(cfg.data)
        shape = (CHANNEL_MODES[rules.channels][1], *rules.hw)
    else:
        shape = dataset_info(dataset_name).input_shape
    return list(inputs[0].dims[1:]) == list(shape)


def _single_image_input(inputs: list[ModelInput], what: str) -> ModelInput:
    if len(inputs) != 1 or len(inputs[0].dims) != 4 or None in inputs[0].dims[1:]:
        shown = ", ".join(f"{i.name} {i.dims}" for i in inputs)
        raise UserError(f"{what} feeds one static image input [N, C, H, W]; the model has {shown} (use "
                        "--inputs FILE.npz for other models)")
    return inputs[0]
