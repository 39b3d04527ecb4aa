"""onnx-simplifier over the raw export, then the full onnx checker: the model ATC gets is the folded one."""
from __future__ import annotations

from pathlib import Path

import onnx

from atlas.errors import UserError
from atlas.fileio import atomic_path
from export.static_shapes import fill_output_shapes, fix_input_shapes


def describe(model: onnx.ModelProto, path: Path) -> dict:
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"path": path.name, "bytes": path.stat().st_size, "nodes": len(model.graph.node), "ops": ops}


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every node of the graph gets a unique name (`<OpType>_<index>` where it has none): ATC's --out_nodes,
    and so `atlas-kd locate`, address nodes by name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)
    return model


def simplify_onnx(raw_path: str | Path, out_path: str | Path, input_shapes: dict[str, list[int]] | None = None) -> dict:
    """Simplify `raw_path` into `out_path` (with `input_shapes` fixed first: export/static_shapes.py); returns
    node counts and sizes before and after."""
    from onnxsim import simplify  # imported here: it is slow to import and only this stage needs it

    raw_path, out_path = Path(raw_path), Path(out_path)
    model = onnx.load(str(raw_path))
    before = describe(model, raw_path)
    if input_shapes:
        model = fix_input_shapes(model, input_shapes)
    try:
        simplified, ok = simplify(model, overwrite_input_shapes=input_shapes or None)
        if input_shapes:
            simplified = fill_output_shapes(simplified)
    except Exception as e:  # onnxsim raises many types for models it cannot fold
        raise UserError(f"onnxsim could not simplify {raw_path.name}: {str(e).splitlines()[0][:200]}") from None
    if not ok:
        raise UserError(f"onnxsim's check failed on {raw_path.name}: the simplified model does not match the original")
    name_nodes(simplified)
    with atomic_path(out_path, suffix=".onnx") as tmp:
        onnx.save(simplified, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:  # ValidationError, InferenceError (shapes that contradict each other), ...
            raise UserError(f"simplified model fails the ONNX checker: {str(e).splitlines()[0][:200]}") from None
    return {"before": before, "after": describe(simplified, out_path)}
