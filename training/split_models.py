"""LeNet-A and LeNet-B, the two students of `atlas-kd split` (docs/split.md): LeNet-5 whose last hidden FC layer
is the FC-node layer (A: split.nodes_a units, B: split.nodes_b), followed by a projection to the classes.

LeNet-A's ONNX has two outputs, `logits` [N, classes] (A alone) and `nodes` [N, nodes_a] (what the merge head
takes); LeNet-B's has one, `nodes` [N, nodes_b] (what B's board sends back). Both are built through
training/models.py's `package.module:factory` road, named by the split stage only.
"""
from __future__ import annotations

import torch
from torch import nn

from training.models import LeNet5

NODES_A = "training.split_models:lenet_a"
NODES_B = "training.split_models:lenet_b"
A_OUTPUTS = ("logits", "nodes")  # LeNet-A's ONNX outputs, in order
B_OUTPUTS = ("nodes",)


class SplitLeNet(nn.Module):
    """LeNet-5 (conv 6, conv 16, FC hidden) whose FC-node layer (`nodes` units, ReLU) feeds `proj` ([classes,
    nodes], with bias): for A, proj gives A's logits; for B, B's share of the logits (the part of B not in A)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, nodes: int = 25,
                 channels: list[int] = (6, 16), hidden: int = 120, both_outputs: bool = True):
        super().__init__()
        lenet = LeNet5(in_channels, image_size, num_classes, channels, (hidden, nodes))
        self.features = lenet.features
        self.body = lenet.classifier[:5]  # Flatten, Linear(-> hidden), ReLU, Linear(-> nodes), ReLU
        self.proj = lenet.classifier[5]
        self.both_outputs = both_outputs

    def nodes(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.features(x))

    def forward(self, x: torch.Tensor):
        u = self.nodes(x)
        return (self.proj(u), u) if self.both_outputs else u


def lenet_a(in_channels: int, image_size: int, num_classes: int, nodes: int = 25, **kwargs) -> SplitLeNet:
    return SplitLeNet(in_channels, image_size, num_classes, nodes, both_outputs=True, **kwargs)


def lenet_b(in_channels: int, image_size: int, num_classes: int, nodes: int = 50, **kwargs) -> SplitLeNet:
    return SplitLeNet(in_channels, image_size, num_classes, nodes, both_outputs=False, **kwargs)
