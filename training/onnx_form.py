"""A torch model -> ONNX the way ATC of CANN 5.x wants it: legacy exporter, opset 11, static shape.

Here, upstream of export/, because prune measures its models as ONNX too (training never imports export/).

torch >= 2.9 defaults to the dynamo exporter (opset >= 18), which the Atlas 200 DK's ATC cannot parse
(spec/atc.md §1), hence `dynamo=False`. The input is named "input" and the output "logits"; weights are
embedded (no external data), and the batch dimension is fixed (no dynamic axes: Ascend 310 has no shape ranges).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from atlas.errors import UserError
from atlas.fileio import atomic_path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, input_shape: list[int], path: str | Path, opset: int = 11) -> None:
    """Write `model` as ONNX with a static [B, C, H, W] float32 input."""
    if opset < 7 or opset > 20:
        raise UserError(f"export.opset {opset} is out of range (use 11 for the Atlas 200 DK; 12-13 only for newer CANN)")
    model = model.eval().cpu()
    dummy = torch.zeros(*input_shape, dtype=torch.float32)
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        # The legacy exporter announces its own deprecation; it is the one ATC 5.x needs.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                          export_params=True)
