"""Static input shapes for a user's ONNX with dynamic dims: `export.input_shape` (`--input-shape
name:1,3,640,640;other:...`, the form of ATC's `--input_shape`) fixes them before onnx-simplifier folds the shape
chains, so lint judges, and ATC gets, the static model the Ascend 310 needs."""
from __future__ import annotations

import re

import onnx

from atlas.errors import UserError

FORM = "name:d1,d2,...[;name2:...]"


def parse_input_shape(text: str) -> dict[str, list[int]]:
    """`name:1,3,640,640;x2:1,4` -> {name: dims}; one line for anything else."""
    shapes: dict[str, list[int]] = {}
    for segment in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, dims = segment.rpartition(":")
        if not sep or not name or not re.fullmatch(r"\d+(,\d+)*", dims.replace(" ", "")):
            raise UserError(f"--input-shape {text!r}: expected {FORM} with positive sizes, e.g. x:1,3,640,640")
        values = [int(d) for d in dims.replace(" ", "").split(",")]
        if 0 in values:
            raise UserError(f"--input-shape {text!r}: sizes must be positive (input {name!r})")
        shapes[name] = values
    if not shapes:
        raise UserError(f"--input-shape {text!r}: expected {FORM}")
    return shapes


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """Set the dims of the named graph inputs (static dims must agree); the model is changed in place."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise UserError(f"--input-shape names {unknown[0]!r}, not an input of the model (its inputs: "
                        f"{', '.join(inputs)})")
    for name, dims in shapes.items():
        tensor = inputs[name].type.tensor_type
        if len(tensor.shape.dim) not in (0, len(dims)):
            raise UserError(f"--input-shape {name}: {len(dims)} dims for an input of rank {len(tensor.shape.dim)}")
        for axis, (dim, size) in enumerate(zip(tensor.shape.dim, dims)):
            if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
                raise UserError(f"--input-shape {name}: axis {axis} is {dim.dim_value} in the model, not {size}")
        tensor.shape.ClearField("dim")
        for size in dims:
            tensor.shape.dim.add().dim_value = size
    return model


def fill_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """After the inputs were given new shapes: every graph output gets the shape inference finds from them (the
    declared ones may be stale, or a -1 batch onnxsim leaves, which the onnx checker then refuses)."""
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")  # let inference say, rather than conflict with the old one
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    found = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
    for output in model.graph.output:
        value = found.get(output.name)
        if value is not None and value.type.tensor_type.HasField("shape"):
            output.type.tensor_type.shape.CopyFrom(value.type.tensor_type.shape)
    return model
