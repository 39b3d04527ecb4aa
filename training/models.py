"""Teachers and students by name, built only from ops the ATC of CANN 5.x supports on Ascend 310.

Conv, BatchNorm, Relu, MaxPool, GlobalAveragePool (AdaptiveAvgPool2d(1) only), Gemm, Add, Flatten
(spec/atc.md §5). No in-model Softmax, no odd adaptive pooling. Widths are constructor arguments so that
a channel-pruned model is the same architecture with smaller numbers: the arch dict {name, kwargs}
travels with every checkpoint and rebuilds the network exactly.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from atlas.errors import UserError


def _dense_layers(width: int, hidden: list[int], num_classes: int, dropout: float) -> list[nn.Module]:
    """Flatten, then Linear+ReLU(+Dropout) per hidden width, then the classifier Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return layers


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class MLP(nn.Module):
    """Fully connected net (Hinton et al. 2015 use 784-1200-1200-10 teachers; ours: 784-2000-2000-10)."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(*_dense_layers(in_features, hidden, num_classes, dropout))

    def forward(self, x):
        return self.net(x)


class PlainCNN(nn.Module):
    """VGG-style stages of (conv-bn-relu) x n + maxpool, then flatten and linear layers.

    `stages` lists the conv widths per stage, e.g. [[32, 32], [64, 64]]; each stage halves H and W.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, stages: list[list[int]],
                 hidden: list[int], dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = in_channels, image_size
        for widths in stages:
            for w in widths:
                layers += _conv_bn(cin, w)
                cin = w
            layers.append(nn.MaxPool2d(2))
            size //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(*_dense_layers(cin * size * size, hidden, num_classes, dropout))

    def forward(self, x):
        return self.classifier(self.features(x))


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling (the form the published KD-on-Atlas reference uses).

    28x28 inputs get padding 2 on the first conv so both MNIST and 32x32 CIFAR end at 5x5 after two pools.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, channels: list[int] = (6, 16),
                 hidden: list[int] = (120, 84)):
        super().__init__()
        c1, c2 = channels
        pad = 2 if image_size == 28 else 0
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        size = ((image_size + 2 * pad - 4) // 2 - 4) // 2
        h1, h2 = hidden
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * size * size, h1), nn.ReLU(inplace=True),
            nn.Linear(h1, h2), nn.ReLU(inplace=True), nn.Linear(h2, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # 1x1 projection (option B): plain Conv+BN, nothing ATC lacks
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNets: 3x3 stem without max pooling; `widths`/`blocks` per stage; global average pool."""

    def __init__(self, in_channels: int, num_classes: int, widths: list[int], blocks: list[int]):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0]))
        stages, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stages.append(BasicBlock(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)  # exports as GlobalAveragePool
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


# name -> (role, factory(in_channels, image_size, num_classes, **kwargs), default kwargs)
_Factory = Callable[..., nn.Module]
MODELS: dict[str, tuple[str, _Factory, dict]] = {
    "mlp2000": ("teacher", lambda c, s, n, **k: MLP(c * s * s, num_classes=n, **k), {"hidden": [2000, 2000], "dropout": 0.2}),
    "cnn": ("teacher", lambda c, s, n, **k: PlainCNN(c, s, n, **k),
            {"stages": [[32], [64], [128]], "hidden": [256], "dropout": 0.3}),
    "resnet20": ("teacher", lambda c, s, n, **k: ResNet(c, n, **k), {"widths": [16, 32, 64], "blocks": [3, 3, 3]}),
    "resnet18": ("teacher", lambda c, s, n, **k: ResNet(c, n, **k), {"widths": [64, 128, 256, 512], "blocks": [2, 2, 2, 2]}),
    "mlp50": ("student", lambda c, s, n, **k: MLP(c * s * s, num_classes=n, **k), {"hidden": [50, 50]}),
    "lenet5": ("student", lambda c, s, n, **k: LeNet5(c, s, n, **k), {"channels": [6, 16], "hidden": [120, 84]}),
    "tinycnn": ("student", lambda c, s, n, **k: PlainCNN(c, s, n, **k), {"stages": [[8], [16], [32]], "hidden": []}),
}


def model_names(role: str | None = None) -> list[str]:
    return [name for name, (r, _, _) in MODELS.items() if role is None or r == role]


def is_user_model(name: str) -> bool:
    """`package.module:factory` names a user's own nn.Module factory (the registry's names have no colon)."""
    return ":" in name


def make_arch(name: str, input_shape: tuple[int, int, int] | list[int], num_classes: int,
              model_args: dict | None = None, **overrides) -> dict:
    """The arch dict that rebuilds a model: {"name", "kwargs"} with every constructor argument spelled out.
    A user's model (`package.module:factory`, named by the config) is imported here, so a bad name fails early."""
    if is_user_model(name):
        c, h, w = input_shape
        user_factory(name)
        return {"name": name, "user_model": True, "in_channels": int(c), "image_size": int(h),
                "num_classes": int(num_classes), "kwargs": _plain({**(model_args or {}), **overrides})}
    if model_args:
        raise UserError(f"model_args go with a user's model (package.module:factory); '{name}' takes none")
    if name not in MODELS:
        raise UserError(f"unknown model '{name}' (teachers: {', '.join(model_names('teacher'))}; "
                        f"students: {', '.join(model_names('student'))})")
    c, h, w = input_shape
    if h != w:
        raise UserError(f"model '{name}' expects square inputs, got {h}x{w}")
    kwargs = {**MODELS[name][2], **overrides}
    return {"name": name, "in_channels": int(c), "image_size": int(h), "num_classes": int(num_classes),
            "kwargs": _plain(kwargs)}


def build_model(arch: dict, trusted: str | None = None) -> nn.Module:
    """The network of an arch dict. A user's model is built only when `trusted` names the same factory (the
    config or the command line named it): a checkpoint alone never makes atlas-kd import code."""
    if is_user_model(str(arch.get("name", ""))):
        return _build_user_model(arch, trusted)
    try:
        _, factory, _ = MODELS[arch["name"]]
        return factory(arch["in_channels"], arch["image_size"], arch["num_classes"], **arch["kwargs"])
    except KeyError as e:
        raise UserError(f"unknown model or incomplete arch {arch!r} (missing {e})") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build model {arch.get('name')!r} from {arch.get('kwargs')!r}: {e}") from None


def user_factory(name: str) -> Callable[..., nn.Module]:
    """Import `package.module:factory` (from the current folder or the installed packages): this runs the user's
    code, which is why only a name the config or the command line gives is imported."""
    import importlib
    import sys

    module_name, _, attr = name.partition(":")
    if not module_name or not attr or not all(part.isidentifier() for part in (*module_name.split("."), attr)):
        raise UserError(f"model {name!r}: a user's model is named package.module:factory")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the current folder, as `python -m` has it
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"model {name!r}: cannot import {module_name} ({e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"model {name!r}: {module_name} has no callable {attr}")
    return factory


def _build_user_model(arch: dict, trusted: str | None) -> nn.Module:
    import inspect

    name = arch["name"]
    if trusted != name:
        raise UserError(f"this checkpoint holds a user's model ({name}); atlas-kd imports a model's code only when "
                        f"the config names it: set student.model (or teacher.model) = \"{name}\" and pass --config")
    factory = user_factory(name)
    given = {"in_channels": arch["in_channels"], "image_size": arch["image_size"], "num_classes": arch["num_classes"]}
    try:
        params = inspect.signature(factory).parameters
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        kwargs = {**{k: v for k, v in given.items() if takes_any or k in params}, **arch.get("kwargs", {})}
        model = factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"model {name!r}: the factory failed with {arch.get('kwargs')}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {name!r}: the factory returned a {type(model).__name__}, not a torch nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _plain(value):
    """Tuples -> lists so the arch dict is JSON- and weights_only-safe."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
