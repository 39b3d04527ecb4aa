"""A user's own models and images through every stage (issue 16): a ResNet-18-shaped 224x224 ONNX with a folder of
JPEGs in class folders, the same with --inputs, a model with two outputs, a perturbed .om that must fail verify,
bad golden inputs as one line, a user's nn.Module named by import path, and every newly accepted op run through
atc-sim and the emulator against onnxruntime."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torch import nn

from atlas import om_container
from atlas.cli import main
from training.models import BasicBlock

IMAGENET_MEAN, IMAGENET_STD = "0.485,0.456,0.406", "0.229,0.224,0.225"


@pytest.fixture(scope="module")
def board(sim_board):
    return sim_board


def on_board(board, run: Path) -> int:
    return main(["deploy", "--run", str(run), "--board", board.alias, "--ssh-config", str(board.ssh_config)])


class ImageNetResNet18(nn.Module):
    """ResNet-18 as torchvision builds it (7x7/2 stem, max pool, four stages, 1000 classes), random weights."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for i, width in enumerate((64, 128, 256, 512)):
            for j in range(2):
                blocks.append(BasicBlock(cin, width, 2 if i and not j else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def export_torch(model: nn.Module, shape, path: Path, outputs=("logits",)) -> Path:
    torch.manual_seed(0)
    model.eval()
    torch.onnx.export(model, (torch.zeros(*shape),), str(path), dynamo=False, opset_version=11,
                      input_names=["input"], output_names=list(outputs))
    return path


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory, jpegs) -> Path:
    """Random weights; BatchNorm statistics taken from the images (as a trained net's would be), so the class
    scores spread over many classes instead of one."""
    from training.data import normalize
    from training.imagefolder import ImageRules, read_labelled

    torch.manual_seed(0)
    model = ImageNetResNet18()
    pixels = read_labelled(jpegs, ImageRules(size=224), progress=False).pixels
    x = torch.from_numpy(normalize(pixels, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative: the statistics of exactly these images
    with torch.no_grad():
        model.train()(x)
    return export_torch(model, (1, 3, 224, 224), tmp_path_factory.mktemp("r18") / "resnet18.onnx")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    """64 JPEGs in 8 class folders: varied colours, textures and sizes."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for k in range(8):
        folder = root / f"class{k}"
        folder.mkdir()
        for i in range(8):
            h, w = int(rng.integers(160, 320)), int(rng.integers(160, 320))
            base = rng.integers(0, 256, 3)
            pixels = np.clip(base + rng.normal(0, 40 + 10 * k, (h, w, 3)), 0, 255).astype(np.uint8)
            pixels[: h // (2 + i % 3)] = rng.integers(0, 256, 3)  # a band of another colour
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=85)
    return root


@pytest.mark.slow  # about a minute on 2 cores; test_a_small_model_with_jpegs... is its fast twin
def test_a_resnet18_shaped_model_with_a_folder_of_jpegs_goes_the_whole_sim_road(resnet18, jpegs, tmp_path, board,
                                                                                capsys):
    run = tmp_path / "r18"
    assert main(["export", "--onnx", str(resnet18), "--run", str(run), "--images", str(jpegs),
                 "--data-mean", IMAGENET_MEAN, "--data-std", IMAGENET_STD]) == 0, capsys.readouterr().err
    export = json.loads((run / "export.json").read_text())
    assert export["golden"]["count"] == 64 and export["golden"]["kind"] == "images" and export["golden"]["labelled"]
    reference = np.load(run / "golden" / "reference.npy")
    assert len(np.unique(reference.argmax(1))) >= 10  # agreement over 64 images then means something
    assert main(["om", "--run", str(run), "--sim"]) == 0
    assert on_board(board, run) == 0, capsys.readouterr().err
    assert main(["verify", "--run", str(run)]) == 0, capsys.readouterr().err
    verdict = json.loads((run / "verify.json").read_text())["boards"][0]["metrics"]
    assert verdict["top1_agreement"] >= 0.999 and verdict["count"] == 64

    # negative control: one weight of the .om's model perturbed -> verify fails
    sim = om_container.read(run / "model.om")
    payload = onnx.load_from_string(sim.onnx_bytes)
    fc = next(t for t in payload.graph.initializer if len(t.dims) == 2)
    values = numpy_helper.to_array(fc).copy()
    values[:, :] *= -1.0  # every class score flips sign: a wrong kernel, not fp16 noise
    fc.CopyFrom(numpy_helper.from_array(values, fc.name))
    (run / "model.om").write_bytes(om_container.pack(sim.meta, payload.SerializeToString()))
    assert on_board(board, run) == 0
    assert main(["verify", "--run", str(run)]) == 1
    assert "verification FAILED" in capsys.readouterr().err


@pytest.mark.slow
def test_the_same_model_with_preprocessed_inputs(resnet18, tmp_path, board, capsys):
    inputs = np.random.default_rng(1).standard_normal((12, 3, 224, 224)).astype(np.float32)
    np.save(tmp_path / "inputs.npy", inputs)
    run = tmp_path / "r18-arrays"
    assert main(["export", "--onnx", str(resnet18), "--run", str(run), "--inputs", str(tmp_path / "inputs.npy")]) == 0
    assert json.loads((run / "export.json").read_text())["golden"]["kind"] == "arrays"
    assert np.array_equal(np.load(run / "golden" / "inputs.npy"), inputs)
    assert main(["om", "--run", str(run), "--sim"]) == 0 and on_board(board, run) == 0
    assert main(["verify", "--run", str(run)]) == 0, capsys.readouterr().err


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory, jpegs) -> Path:
    """A small 32x32 RGB classifier, random weights, BatchNorm statistics from the images (the fast road)."""
    from training.data import normalize
    from training.imagefolder import ImageRules, read_labelled

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(32, 100))
    pixels = read_labelled(jpegs, ImageRules(size=32), progress=False).pixels
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.from_numpy(normalize(pixels, [0.5] * 3, [0.25] * 3)))
    return export_torch(model, (1, 3, 32, 32), tmp_path_factory.mktemp("small") / "small.onnx")


def test_a_small_model_with_jpegs_in_class_folders_goes_the_whole_sim_road(small_cnn, jpegs, tmp_path, board,
                                                                          capsys):
    run = tmp_path / "small"
    assert main(["export", "--onnx", str(small_cnn), "--run", str(run), "--images", str(jpegs), "--data-mean",
                 "0.5,0.5,0.5", "--data-std", "0.25,0.25,0.25"]) == 0, capsys.readouterr().err
    assert len(np.unique(np.load(run / "golden" / "reference.npy").argmax(1))) >= 10
    assert np.load(run / "golden" / "labels.npy").tolist() == [k for k in range(8) for _ in range(8)]
    assert main(["om", "--run", str(run), "--sim"]) == 0 and on_board(board, run) == 0
    assert main(["verify", "--run", str(run)]) == 0, capsys.readouterr().err
    inputs = np.load(run / "golden" / "inputs.npy")
    np.save(tmp_path / "inputs.npy", inputs)  # the same through --inputs
    again = tmp_path / "small-arrays"
    assert main(["export", "--onnx", str(small_cnn), "--run", str(again), "--inputs", str(tmp_path / "inputs.npy")]) == 0
    assert np.array_equal(np.load(again / "golden" / "reference.npy"), np.load(run / "golden" / "reference.npy"))


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.classes, self.box = nn.Linear(4 * 28 * 28, 10), nn.Linear(4 * 28 * 28, 4)

    def forward(self, x):
        h = self.body(x)
        return self.classes(h), torch.sigmoid(self.box(h))


def test_a_model_with_two_outputs_has_each_output_verified(tmp_path, board, capsys):
    model = export_torch(TwoHeads(), (1, 1, 28, 28), tmp_path / "two.onnx", outputs=("logits", "box"))
    run = tmp_path / "two"
    assert main(["export", "--onnx", str(model), "--run", str(run)]) == 0, capsys.readouterr().err
    export = json.loads((run / "export.json").read_text())
    assert [o["name"] for o in export["outputs"]] == ["logits", "box"]
    assert export["golden"]["reference"] == "golden/reference.npz"  # mnist-sample's digits fit its input
    assert main(["om", "--run", str(run), "--sim"]) == 0 and on_board(board, run) == 0, capsys.readouterr().err
    assert main(["verify", "--run", str(run)]) == 0, capsys.readouterr().err
    outputs = json.loads((run / "verify.json").read_text())["boards"][0]["outputs"]
    assert [o["name"] for o in outputs] == ["logits", "box"]
    assert outputs[0]["metrics"]["top1_agreement"] >= 0.999 and outputs[1]["metrics"]["top1_agreement"] is None
    assert outputs[1]["metrics"]["cosine_min"] > 0.999


@pytest.mark.parametrize("make, message", [
    (lambda d: np.save(d / "x.npy", np.zeros((4, 3, 16, 16), np.float32)), "takes [N, 3, 32, 32] per sample"),
    (lambda d: np.save(d / "x.npy", np.zeros((4, 3, 32, 32), np.float64)), "takes float32, the array is float64"),
    (lambda d: (d / "x.npy").write_bytes(b"junk"), "not a readable .npy or .npz"),
    (lambda d: np.savez(d / "x.npz", other=np.zeros((1, 3, 32, 32), np.float32)), "do not match the model's inputs"),
])
def test_golden_inputs_of_the_wrong_shape_or_dtype_are_one_line_and_nothing_is_written(small_cnn, tmp_path, capsys,
                                                                                         make, message):
    make(tmp_path)
    path = next(tmp_path.glob("x.*"))
    run = tmp_path / "run"
    assert main(["export", "--onnx", str(small_cnn), "--run", str(run), "--inputs", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (run / "golden").exists() and not (run / "model.om").exists()


def test_without_images_or_inputs_random_inputs_come_with_a_warning(small_cnn, tmp_path, capsys):
    run = tmp_path / "random"
    assert main(["export", "--onnx", str(small_cnn), "--run", str(run), "--export-golden-count", "8"]) == 0
    out = capsys.readouterr().out
    assert "warning: 8 seeded random samples" in out and "accuracy cannot be judged" in out
    export = json.loads((run / "export.json").read_text())
    assert export["golden"]["kind"] == "random" and export["reference_accuracy"] is None


def test_dynamic_dims_are_fixed_by_input_shape_and_otherwise_refused(tmp_path, capsys):
    model = export_torch(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), (1, 3, 16, 16), tmp_path / "dyn.onnx",
                         outputs=("y",))
    m = onnx.load(model)
    for dim in m.graph.input[0].type.tensor_type.shape.dim:
        dim.dim_param = "d"
    onnx.save(m, model)
    assert main(["export", "--onnx", str(model), "--run", str(tmp_path / "a")]) == 1  # lint: input-dynamic-dim
    assert "input-dynamic-dim" in capsys.readouterr().out
    assert main(["export", "--onnx", str(model), "--run", str(tmp_path / "b"), "--input-shape", "input:1,3,20,20"]) == 0
    assert json.loads((tmp_path / "b" / "export.json").read_text())["input"]["shape"] == [1, 3, 20, 20]
    assert main(["export", "--onnx", str(model), "--run", str(tmp_path / "c"), "--input-shape", "nope:1,3,2,2"]) == 2
    assert "not an input of the model" in capsys.readouterr().err


# --- a user's own PyTorch model --------------------------------------------------------------------------

def test_a_user_model_named_by_import_path_trains_with_kd_and_goes_the_sim_road(tmp_path, board, capsys):
    recipe = tmp_path / "mine.toml"
    recipe.write_text('[data]\ndataset = "mnist-sample"\nbatch_size = 64\ntrain_limit = 512\ntest_limit = 200\n'
                      '[teacher]\nmodel = "cnn"\nepochs = 1\n'
                      '[student]\nmodel = "user_models.mynet:small_cnn"\nepochs = 2\nlr = 0.05\n'
                      '[student.model_args]\nwidth = 6\n[export]\ngolden_count = 200\n')
    run = tmp_path / "mine"
    assert main(["train", "--config", str(recipe), "--run", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    train = json.loads((run / "train.json").read_text())
    assert train["student"]["model"] == "user_models.mynet:small_cnn" and train["student"]["kd"]
    from training import checkpoint

    payload = checkpoint.load(run / "student.pt")
    assert payload["arch"]["name"] == "user_models.mynet:small_cnn" and payload["arch"]["kwargs"] == {"width": 6}
    assert main(["export", "--run", str(run)]) == 0, capsys.readouterr().err
    assert main(["om", "--run", str(run), "--sim"]) == 0 and on_board(board, run) == 0
    assert main(["verify", "--run", str(run)]) == 0, capsys.readouterr().err


def test_a_checkpoint_alone_never_imports_a_users_code(tmp_path, capsys):
    from atlas.errors import UserError
    from training import checkpoint
    from training.models import build_model

    arch = {"name": "user_models.mynet:small_cnn", "user_model": True, "in_channels": 1, "image_size": 28,
            "num_classes": 10, "kwargs": {}}
    with pytest.raises(UserError, match="imports a model's code only when the config names it"):
        build_model(arch)
    assert isinstance(build_model(arch, trusted=arch["name"]), nn.Module)  # named by the config: built
    with pytest.raises(UserError, match="not a torch nn.Module"):
        build_model({**arch, "name": "user_models.mynet:not_a_module"}, trusted="user_models.mynet:not_a_module")
    with pytest.raises(UserError, match="cannot import"):
        build_model({**arch, "name": "no_such_pkg.x:f"}, trusted="no_such_pkg.x:f")
    assert checkpoint  # the loader passes the config's name as `trusted` (training/checkpoint.py)


# --- every newly accepted op, through atc-sim and the emulator ------------------------------------------------

def _op_model(path: Path, nodes, inits=(), shape=(1, 2, 8, 8), out_shape=None) -> Path:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape or shape))
    graph = helper.make_graph(nodes, "g", [x], [y], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


def _scales(name, values):
    return numpy_helper.from_array(np.array(values, np.float32), name)


NEW_OPS = {
    "Resize": ([helper.make_node("Resize", ["input", "roi", "scales"], ["y"], mode="nearest",
                                 coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
               [_scales("roi", []), _scales("scales", [1, 1, 2, 2])], (1, 2, 16, 16)),
    "HardSigmoid": ([helper.make_node("HardSigmoid", ["input"], ["y"], alpha=1 / 6, beta=0.5)], [], None),
    "ReduceMean": ([helper.make_node("ReduceMean", ["input"], ["y"], axes=[-1], keepdims=1)], [], (1, 2, 8, 1)),
    "Pow": ([helper.make_node("Pow", ["input", "two"], ["y"])], [_scales("two", 2.0)], None),
    "Sqrt": ([helper.make_node("Abs", ["input"], ["a"]), helper.make_node("Sqrt", ["a"], ["y"])], [], None),
    "Erf": ([helper.make_node("Erf", ["input"], ["y"])], [], None),
    "ConvTranspose": ([helper.make_node("ConvTranspose", ["input", "w"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                      [numpy_helper.from_array(np.random.default_rng(0).normal(size=(2, 2, 2, 2)).astype(np.float32),
                                               "w")], (1, 2, 16, 16)),
}


@pytest.mark.parametrize("op", sorted(NEW_OPS))
def test_a_newly_accepted_op_lints_converts_and_runs_like_onnxruntime(op, tmp_path, capsys):
    import onnxruntime as ort

    from atlas.sim import acl
    from export.lint import lint_file

    nodes, inits, out_shape = NEW_OPS[op]
    model = _op_model(tmp_path / f"{op}.onnx", nodes, inits, out_shape=out_shape)
    assert [f for f in lint_file(model) if f.severity == "error"] == []
    assert main(["om", "--onnx", str(model), "--run", str(tmp_path), "--sim"]) == 0, capsys.readouterr().err
    x = np.random.default_rng(1).standard_normal((1, 2, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    board = _run_on_emulator(acl, tmp_path / "model.om", x)
    assert board.shape == expected.shape
    assert np.allclose(board, expected, rtol=1e-2, atol=1e-2), np.abs(board - expected).max()


def _run_on_emulator(acl, om: Path, x: np.ndarray) -> np.ndarray:
    """The pyACL calls our board app makes, against the emulator: load, one execute, read output 0."""
    import sys

    board_dir = str(Path(__file__).resolve().parents[1] / "atlas" / "board")
    if board_dir not in sys.path:
        sys.path.insert(0, board_dir)  # the app imports its siblings by file name, as on the board
    from acl_session import ModelSession

    session = ModelSession(acl, str(om), 0)
    try:
        session.open()
        outputs, _ = session.run_batch(np.ascontiguousarray(x))
    finally:
        session.close()
    return outputs[0].astype(np.float32)
