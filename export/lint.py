"""`atlas-kd lint MODEL.onnx`: check any ONNX file against what the ATC of CANN 5.x accepts for Ascend 310.

Target: `atc --framework=5 --soc_version=Ascend310` of the Atlas 200 DK's CANN 5.x (at most 5.1.RC2). Every rule
cites ../shared/spec/atc.md as "spec §N"; where the spec is unsure or silent, the finding says so instead of guessing.
The model is parsed without its external data, and no path outside the model's folder is ever opened.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from atlas import atc_ops, protowire, quant_ops
from atlas.atc_rules import (BOARD_MEMORY_MIB, dynamic_axes, DEFAULT_DOMAINS, DEFAULT_MAX_BOARD_BYTES, ERROR, LARGE_TENSOR_BYTES,
                             NEWER_CANN_OPSETS, PROTOBUF_LIMIT_BYTES, RULES, SUPPORTED_OPSET, UNREADABLE_RULES,
                             WARNING)


@dataclass(frozen=True)
class Finding:
    """One problem: which rule, how bad, what it concerns, what is wrong and how to fix it.

    `target` formats (stable text for people; tools read `subject`): "model", "graph", "opset_import", "opset_import '<domain>'",
    "file '<path>'", "input '<name>'" / "input #<i>", "output '<name>'" / "output #<i>",
    "node '<name>' (<OpType>)" (an unnamed node is '#<index>'; subgraph nodes are '<parent>/<attr>/<name>'),
    "tensor '<name>'" (a Constant's tensor adds " (node '<name>' (Constant))").
    """

    rule: str
    severity: str  # "error" | "warning"
    target: str
    message: str
    hint: str
    # what the target names, as fields: {"node": name, "node_index": i, "op_type": T, "graph": subgraph prefix}
    # for a node, {"input": name} / {"output": name} for graph I/O; empty otherwise. Tools key on these.
    subject: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return asdict(self)


# Inputs that ONNX itself requires to be int64 (shapes, axes, indices): int64 tensors feeding only these are
# shape computation, not int64 arithmetic. spec §5 documents only Reshape's; the rest follow from ATC supporting
# the op at all [INFER].
_INT64_PARAMETER_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Slice": (1, 2, 3, 4), "Pad": (1,), "Unsqueeze": (1,), "Squeeze": (1,),
    "ConstantOfShape": (0,), "Expand": (1,), "Tile": (1,), "Gather": (1,), "Resize": (1, 2, 3), "Upsample": (1,),
    "TopK": (1,), "OneHot": (1,), "ReduceSum": (1,), "Range": (0, 1, 2),
}

_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
_IO_TYPES_OK = (TensorProto.FLOAT, TensorProto.FLOAT16)
FP16_MAX = 65504.0
_CHECKER_STAND_IN_BYTES = 64 << 20  # zero-filled stand-ins for external tensors the checker must see
_CHUNK_ELEMENTS = 1 << 22


def _dtype_name(dtype: int) -> str:
    try:
        return TensorProto.DataType.Name(dtype).lower()
    except ValueError:
        return f"unknown dtype {dtype}"


class _Target(str):
    """A finding's target text that also carries what it names (becomes Finding.subject)."""

    def __new__(cls, text: str, **subject):
        target = super().__new__(cls, text)
        target.subject = subject
        return target


def _finding(rule: str, target: str, message: str, hint: str) -> Finding:
    return Finding(rule, RULES[rule].severity, str(target), message, hint, dict(getattr(target, "subject", {})))


def has_errors(findings: Iterable[Finding]) -> bool:
    """True if any finding is an error (warnings alone are fine)."""
    return any(f.severity == ERROR for f in findings)


def exit_code(findings: Iterable[Finding]) -> int:
    """The CLI's exit code: 2 if the file could not be read, 1 if there are errors, 0 otherwise."""
    findings = list(findings)
    if any(f.rule in UNREADABLE_RULES for f in findings):
        return 2
    return 1 if has_errors(findings) else 0


# ---------------------------------------------------------------------------------------------------------------
# Reading the file


def lint_file(path: str | os.PathLike, *, max_board_bytes: int = DEFAULT_MAX_BOARD_BYTES,
              board_memory_mib: int = BOARD_MEMORY_MIB, dynamic_option: str | None = None) -> list[Finding]:
    """Lint an ONNX file; never raises on a bad file (unreadable files give a finding in UNREADABLE_RULES)."""
    path = Path(path)
    target = f"file '{path}'"
    try:
        if not path.exists():
            return [_finding("file-not-found", target, "no such file",
                             "check the path; the export stage writes runs/<name>/model.onnx")]
        if not path.is_file():
            return [_finding("not-a-file", target, "this is a folder or a special file, not an ONNX file",
                             "pass the path of a .onnx file")]
        size = path.stat().st_size
        if size > PROTOBUF_LIMIT_BYTES:
            return [_finding("file-too-large-to-parse", target,
                             f"{size} bytes: protobuf cannot parse a message of 2 GiB or more, and ATC fails to "
                             "load it (E10041, spec §4)",
                             "store the weights as external data, or shrink the model")]
        data = path.read_bytes()
    except OSError as e:
        return [_finding("file-unreadable", target, f"cannot read: {e.strerror or e}",
                         "check the file's permissions")]
    model, problem = _parse_model(data, target)
    if problem is not None:
        return [problem]
    try:
        return _lint(model, path.parent, max_board_bytes=max_board_bytes, model_bytes=size,
                     board_memory_mib=board_memory_mib, dynamic_option=dynamic_option)
    except Exception as e:  # a lint bug must not hide the model's other findings behind a traceback
        return [_crash_finding("lint", "model", e)]


def _parse_model(data: bytes, target: str) -> tuple[onnx.ModelProto | None, Finding | None]:
    """Parse ModelProto bytes without loading external data; tell truncated from foreign bytes when the wire
    format allows it."""
    if not data:
        return None, _finding("not-onnx", target, "the file is empty", "re-export the model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # DecodeError from upb; other protobuf backends raise other types
        verdict = _classify_wire_format(data)
        if verdict == "truncated":
            return None, _finding(
                "truncated-onnx", target,
                f"the file ends in the middle of a field ({len(data)} bytes): an ONNX model cut short",
                "copy or export the file again; compare its size with the original")
        detail = "its bytes are not an ONNX protobuf" if verdict == "foreign" else \
            f"protobuf cannot parse it ({e}); corrupt inside a field, or not ONNX"
        return None, _finding("not-onnx", target, detail, "pass an .onnx file exported by torch.onnx.export")
    if not (model.HasField("graph") or model.ir_version or len(model.opset_import)):
        # protobuf keeps unknown fields, so some non-ONNX bytes parse "fine" into an empty ModelProto
        return None, _finding("not-onnx", target, "the bytes parse as protobuf but carry none of ONNX's fields",
                              "pass an .onnx file exported by torch.onnx.export")
    return model, None


_WIRE_TYPE_OF = {
    **dict.fromkeys((FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES), 2),
    **dict.fromkeys((FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64), 1),
    **dict.fromkeys((FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32), 5),
    FieldDescriptor.TYPE_GROUP: 3,
}


def _classify_wire_format(data: bytes) -> str:
    """Walk ModelProto's top-level fields: "complete", "truncated" (known fields only, the last one cut off) or
    "foreign" (a field number or wire type ModelProto does not have).

    Reliable for cuts inside a top-level field (the graph is nearly all of a file). A cut exactly between two
    top-level fields leaves a shorter valid model, which no parser can tell from a whole one; lint then reports
    what is missing (e.g. no opset_import). Random bytes that happen to form a valid prefix are called truncated.
    """
    known = onnx.ModelProto.DESCRIPTOR.fields_by_number

    def accept(number: int, wire_type: int) -> bool:
        field_ = known.get(number)
        return field_ is not None and _WIRE_TYPE_OF.get(field_.type, 0) == wire_type

    try:
        for _ in protowire.fields(data, accept):
            pass
    except protowire.WireError as e:
        return "truncated" if e.truncated else "foreign"
    return "complete"


# ---------------------------------------------------------------------------------------------------------------
# The rules


def lint_model(model: onnx.ModelProto, model_dir: Path | None = None, *,
               max_board_bytes: int = DEFAULT_MAX_BOARD_BYTES, board_memory_mib: int = BOARD_MEMORY_MIB,
               dynamic_option: str | None = None) -> list[Finding]:
    """Lint a parsed model (its external data not loaded). `model_dir` is where external data would live; without
    it, external files are not looked at. Never raises on a weird model."""
    try:
        return _lint(model, Path(model_dir) if model_dir is not None else None,
                     max_board_bytes=max_board_bytes, model_bytes=None, board_memory_mib=board_memory_mib,
                     dynamic_option=dynamic_option)
    except Exception as e:
        return [_crash_finding("lint", "model", e)]


class _BadAttribute(Exception):
    """An attribute with the wrong type or an unreadable value: reported as `attribute-invalid`."""


def _crash_finding(rule_name: str, target: str, e: Exception) -> Finding:
    return _finding("lint-rule-crashed", target,
                    f"the {rule_name} check failed on this model ({type(e).__name__}: {e}); it was not checked",
                    "run `onnx.checker.check_model(model, full_check=True)`; report the model if it passes")


def _lint(model: onnx.ModelProto, model_dir: Path | None, *, max_board_bytes: int,
          model_bytes: int | None, board_memory_mib: int = BOARD_MEMORY_MIB,
          dynamic_option: str | None = None) -> list[Finding]:
    findings: list[Finding] = []

    def run_rule(name: str, fn: Callable[..., Iterable[Finding]], *args) -> None:
        # Each rule runs on its own: one that trips over a malformed model reports it and the others still run.
        try:
            for finding in fn(*args):  # one by one: what a rule found before it crashed is kept
                findings.append(finding)
        except Exception as e:
            findings.append(_crash_finding(name, "model", e))

    if not model.HasField("graph"):
        findings.append(_finding("graph-missing", "model", "the model has no graph (ATC: E16004, spec §4)",
                                 "re-export the model; a file cut short before its graph looks the same"))
        run_rule("opset", _check_opset, model)
        return findings

    opset = _default_opset(model)
    context = _ModelContext(model, opset)
    run_rule("opset", _check_opset, model)
    run_rule("graph inputs and outputs", _check_graph_io, model.graph, dynamic_option)
    run_rule("node names", _check_node_names, model.graph)
    run_rule("operators", _check_nodes, model, context)
    run_rule("Shape chains", _check_shape_chains, model.graph)
    run_rule("int64 compute", _check_int64_compute, model.graph, context)
    run_rule("tensor values", _check_tensor_values, model, model_dir)
    external_bytes: list[int] = []
    run_rule("external data", _check_external_data, model, model_dir, external_bytes)
    size = (model_bytes if model_bytes is not None else model.ByteSize()) + sum(external_bytes)
    run_rule("model size", _check_size, size, max_board_bytes)
    run_rule("tensor sizes", _check_tensor_sizes, context, board_memory_mib << 20)
    run_rule("onnx.checker", _check_with_onnx_checker, context)
    return findings


def _default_opset(model: onnx.ModelProto) -> int | None:
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    return versions[0] if len(versions) == 1 else None


def _check_opset(model: onnx.ModelProto) -> Iterator[Finding]:
    hint = "export with torch.onnx.export(..., dynamo=False, opset_version=11)"
    default = [o for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    if not default:
        yield _finding("opset-missing", "opset_import",
                       "no default-domain opset_import: ATC cannot pick a parser for any node "
                       "(its key is ai.onnx::<opset>::<OpType>, spec §1)", hint)
    elif len(default) > 1:
        versions = ", ".join(str(o.version) for o in default)
        yield _finding("opset-duplicate", "opset_import",
                       f"{len(default)} default-domain opset_import entries ({versions}); ATC allows one "
                       "(E16005, spec §4)", "keep one default-domain opset_import, version 11")
    else:
        version = default[0].version
        if version in NEWER_CANN_OPSETS:
            yield _finding("opset-needs-newer-cann", "opset_import",
                           f"opset {version}: the Atlas 200 DK's CANN 5.x ATC parses opset 11 only; newer CANN "
                           "accepts it (spec §1, §10 q1)", hint)
        elif version != SUPPORTED_OPSET:
            yield _finding("opset-unsupported", "opset_import",
                           f"opset {version}: the CANN 5.x ATC parses opset 11 only, and since the opset is "
                           f"model-wide every node fails with E19010 `No parser is registered for Op [..., optype "
                           f"[ai.onnx::{version}::<OpType>]]` (spec §1)", hint)


def _check_graph_io(graph: onnx.GraphProto, dynamic_option: str | None = None) -> Iterator[Finding]:
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers or not i.name]
    if not inputs:
        yield _finding("graph-no-inputs", "graph", "the graph has no inputs (ATC: E16001, spec §4)",
                       "export the model with at least one input tensor")
    if not graph.output:
        yield _finding("graph-no-outputs", "graph", "the graph has no outputs (ATC: E16001, spec §4)",
                       "export the model with its output tensor(s)")
    for kind, values in (("input", inputs), ("output", graph.output)):
        for index, value in enumerate(values):
            target = _Target(f"{kind} '{value.name}'" if value.name else f"{kind} #{index}",
                             **{kind: value.name, f"{kind}_index": index})
            if not value.name:
                yield _finding("io-name-empty", target, f"graph {kind} #{index} has no name; ATC's "
                               "--input_shape and --out_nodes address tensors by name (spec §2.2)",
                               f"name the {kind}, e.g. torch.onnx.export(..., {kind}_names=[...])")
            yield from _check_io_type(kind, value, target, dynamic_option)


def _check_io_type(kind: str, value: onnx.ValueInfoProto, target: str,
                   dynamic_option: str | None = None) -> Iterator[Finding]:
    if value.type.WhichOneof("value") != "tensor_type":
        yield _finding("io-dtype-unsupported", target, f"the {kind} is not a tensor (ATC takes fp32/fp16 "
                       "tensors, spec §5)", "make the model's inputs and outputs plain float32 tensors")
        return
    tensor_type = value.type.tensor_type
    dtype = tensor_type.elem_type
    name = _dtype_name(dtype)
    if dtype == TensorProto.INT64:
        yield _finding("io-dtype-int64", target, f"{kind} dtype int64: use fp32 or fp16; int64 is documented "
                       "only for Reshape's shape input (spec §5 model-level rules)",
                       f"cast the {kind} to float32 inside the model, or do the integer work outside it")
    elif dtype == TensorProto.UINT8:
        detail = ("the spec has uint8 model inputs only through AIPP, where the ONNX input stays float32 and ATC "
                  "makes the .om input uint8 (spec §6); how ATC 5.x treats a uint8 ONNX input is not in the spec"
                  if kind == "input" else
                  "the spec gets uint8 outputs from --output_type=UINT8 (§2.2), not from the ONNX model")
        yield _finding("io-dtype-uint8", target, f"{kind} dtype uint8: {detail}",
                       "export float32 I/O; for uint8 pixels use AIPP (--insert_op_conf), for outputs --output_type")
    elif dtype not in _IO_TYPES_OK:
        yield _finding("io-dtype-unsupported", target, f"{kind} dtype {name}: ATC for Ascend 310 takes fp32 or "
                       "fp16 (spec §5 model-level rules; --output_type FP32/FP16/UINT8, §2.2)",
                       f"make the {kind} float32")
    if kind != "input":
        return
    # spec §5 model-level rules: input dims must be static or fixed with --input_shape; ranges are impossible on
    # 310 (§2.2 --input_shape_range). -1 needs a dynamic option (E10011), which we do not use.
    hint = ("export with a static shape (torch.onnx.export without dynamic_axes) or pass "
            "atc --input_shape=\"name:1,C,H,W\"")
    if not tensor_type.HasField("shape"):
        yield _finding("input-dynamic-dim", target, "the input has no shape at all; ATC on Ascend 310 needs "
                       "static shapes", hint)
        return
    allowed = dynamic_axes(dynamic_option, len(tensor_type.shape.dim)) if dynamic_option else ()
    for axis, dim in enumerate(tensor_type.shape.dim):
        if (dim.HasField("dim_value") and dim.dim_value > 0) or axis in allowed:
            continue  # static, or an axis ATC's dynamic option (--dynamic_batch_size ...) covers
        what = (f"symbolic dim '{dim.dim_param}'" if dim.HasField("dim_param") and dim.dim_param
                else f"dim {dim.dim_value}" if dim.HasField("dim_value") else "an unknown dim")
        yield _finding("input-dynamic-dim", _Target(str(target), **getattr(target, "subject", {}), axis=axis),
                       f"axis {axis} is {what}; ATC on Ascend 310 needs static shapes, or a dynamic option "
                       "for the batch or image size (spec §5 model-level rules)", hint)


def _check_node_names(graph: onnx.GraphProto) -> Iterator[Finding]:
    counts = Counter(node.name for node in graph.node if node.name)
    for name, count in counts.items():
        if count > 1:
            yield _finding("node-name-duplicate", f"node '{name}'",
                           f"{count} nodes share this name; GE rejects duplicate op names (E13009, spec §4), and "
                           "we assume GE keeps ONNX node names [INFER]", "run onnxsim, or rename the nodes")


# ---------------------------------------------------------------------------------------------------------------
# Shapes and types the rules look up (top-level graph; from shape inference where it succeeds)


class _ModelContext:
    """Types, shapes and small constant values of the top-level graph's tensors, and a checker-safe copy."""

    def __init__(self, model: onnx.ModelProto, opset: int | None):
        self.model = model
        self.opset = opset
        self.types: dict[str, onnx.TypeProto] = {}
        self.constants: dict[str, TensorProto] = {}
        self.checkable_failure = ""  # why no checker-safe copy could be made of a malformed model
        try:
            self.checkable, self.checkable_note = _checkable_copy(model)
            if self.checkable is not None:  # a deploy model: the checker and shape inference see its float form
                self.checkable = quant_ops.float_view(self.checkable)
        except Exception as e:
            self.checkable, self.checkable_note = None, ""
            self.checkable_failure = f"{type(e).__name__}: {e}"
        graph = model.graph
        for t in graph.initializer:
            self.constants[t.name] = t
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                for a in node.attribute:
                    if a.name == "value" and a.type == AttributeProto.TENSOR:
                        self.constants[node.output[0]] = a.t
        inferred = graph
        if self.checkable is not None:
            try:
                inferred = onnx.shape_inference.infer_shapes(self.checkable, check_type=False, strict_mode=False,
                                                             data_prop=True).graph
            except Exception:  # shape inference is a help, not a rule: rules skip what it could not tell
                inferred = graph
        for value in (*inferred.input, *inferred.value_info, *inferred.output):
            self.types.setdefault(value.name, value.type)

    def dtype(self, name: str) -> int | None:
        if name in self.constants:
            return self.constants[name].data_type
        t = self.types.get(name)
        if t is not None and t.WhichOneof("value") == "tensor_type" and t.tensor_type.elem_type:
            return t.tensor_type.elem_type
        return None

    def shape(self, name: str) -> list[int | None] | None:
        """Dims (None where unknown), or None if even the rank is unknown."""
        if name in self.constants:
            return list(self.constants[name].dims)
        t = self.types.get(name)
        if t is None or t.WhichOneof("value") != "tensor_type" or not t.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in t.tensor_type.shape.dim]

    def constant_value(self, name: str) -> np.ndarray | None:
        t = self.constants.get(name)
        if t is None or _is_external(t):
            return None
        return numpy_helper.to_array(t)


# ---------------------------------------------------------------------------------------------------------------
# Operators and their attributes (spec §5)


def _iter_graphs(graph: onnx.GraphProto, prefix: str = "") -> Iterator[tuple[str, onnx.GraphProto]]:
    """The graph and every subgraph (If/Loop/Scan bodies), with a prefix naming where each sits."""
    yield prefix, graph
    for index, node in enumerate(graph.node):
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                bodies = [a.g]
            elif a.type == AttributeProto.GRAPHS:
                bodies = list(a.graphs)
            else:
                continue
            for body in bodies:
                yield from _iter_graphs(body, f"{prefix}{node.name or f'#{index}'}/{a.name}/")


def _node_target(node: onnx.NodeProto, index: int, prefix: str = "") -> str:
    name = node.name or f"#{index}"
    return _Target(f"node '{prefix}{name}' ({node.op_type})", node=node.name, node_index=index, op_type=node.op_type,
                   graph=prefix)


def _check_nodes(model: onnx.ModelProto, context: _ModelContext) -> Iterator[Finding]:
    foreign: dict[str, list[tuple[int, onnx.NodeProto, str]]] = {}
    for prefix, graph in _iter_graphs(model.graph):
        for index, node in enumerate(graph.node):
            target = _node_target(node, index, prefix)
            if node.domain not in DEFAULT_DOMAINS:
                foreign.setdefault(node.domain, []).append((index, node, target))
                continue
            try:
                yield from _check_op_type(node, target, context.opset)
                check = _ATTRIBUTE_RULES.get(node.op_type)
                if check is not None:
                    yield from check(node, target, context)
            except _BadAttribute as e:
                yield _finding("attribute-invalid", target, f"{e}; ATC rejects invalid op arguments "
                               "(E14001, spec §4)", "re-export the model; fix the attribute")
            except Exception as e:
                yield _crash_finding(f"{node.op_type} rules", target, e)
    for domain, nodes in foreign.items():  # one root cause, one error: per domain, not per node
        index, node, _ = nodes[0]
        ops = sorted({n.op_type for _, n, _ in nodes})
        target = _Target(f"domain '{domain}'", domain=domain, node=node.name, node_index=index, op_type=node.op_type,
                         graph="")
        yield _finding("domain-unsupported", target, f"{len(nodes)} node(s) of domain '{domain}' "
                       f"({', '.join(ops[:6])}{', ...' if len(ops) > 6 else ''}): ATC has no parsers for ops outside "
                       "the ONNX standard domain (spec atc-onnx-ops.md)",
                       "export with standard ONNX ops only (no custom ops, no onnxruntime contrib ops, no ATen nodes)")


def _check_op_type(node: onnx.NodeProto, target: str, opset: int | None) -> Iterator[Finding]:
    op = node.op_type
    if opset not in (SUPPORTED_OPSET, *NEWER_CANN_OPSETS):
        return  # the opset rule already fails the whole model: a per-node finding would only repeat it
    verdict = atc_ops.parses(op, opset)
    if op in atc_ops.NO_PARSER:
        yield _finding("op-unsupported", target, f"{op}: {atc_ops.NO_PARSER[op]}; ATC fails with E19010",
                       "replace it with ops ATC parses (atlas/atc_ops.py; spec atc-onnx-ops.md)")
    elif verdict is None:
        yield _finding("op-not-in-table", target,
                       f"{op} is not in our table of the ops ATC parses for the Ascend 310 (atlas/atc_ops.py, from "
                       "spec atc-onnx-ops.md); the spec is silent on it, so ATC decides",
                       "check it with `msit analyze -gm model.onnx -soc Ascend310` where CANN is installed, or "
                       "convert and see (spec §5)")
    elif not verdict:
        row = atc_ops.OPS[op]
        reason = (f"ATC's {op} parser has keys for opsets {_ranges(row.opsets)}, not {opset} (spec atc-onnx-ops.md"
                  f" [{row.tag}]){'; ' + row.note if row.note else ''}")
        yield _finding("op-unsupported", target, reason, "re-export at opset 11 with ops ATC parses there")


def _ranges(values: frozenset[int]) -> str:
    """{8, 9, 11, 12} -> "8-9, 11-12"."""
    out, ordered = [], sorted(values)
    start = prev = ordered[0]
    for v in ordered[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}-{prev}" if prev != start else str(start))
        if v is not None:
            start = prev = v
    return ", ".join(out)


def _attrs(node: onnx.NodeProto) -> dict[str, AttributeProto]:
    return {a.name: a for a in node.attribute}


def _typed_attr(node: onnx.NodeProto, name: str, type_: int, what: str) -> AttributeProto | None:
    """The attribute, or None when absent; one of another type is _BadAttribute (the getters below share this)."""
    a = _attrs(node).get(name)
    if a is not None and a.type != type_:
        raise _BadAttribute(f"attribute {name} should be {what}, is {AttributeProto.AttributeType.Name(a.type)}")
    return a


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    a = _typed_attr(node, name, AttributeProto.INT, "an int")
    return default if a is None else a.i


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    a = _typed_attr(node, name, AttributeProto.INTS, "a list of ints")
    return None if a is None else list(a.ints)


def _float(node: onnx.NodeProto, name: str, default: float) -> float:
    a = _typed_attr(node, name, AttributeProto.FLOAT, "a float")
    return default if a is None else a.f


def _string(node: onnx.NodeProto, name: str, default: str) -> str:
    a = _typed_attr(node, name, AttributeProto.STRING, "a string")
    return default if a is None else a.s.decode("utf-8", "replace")


def _input(node: onnx.NodeProto, index: int) -> str | None:
    """The name of an optional input, or None when it is absent (missing or empty name)."""
    return node.input[index] if len(node.input) > index and node.input[index] else None


def _check_input_width(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    shape = context.shape(node.input[0]) if node.input else None
    if shape and len(shape) == 4 and shape[3] is not None and shape[3] > 4096:
        yield _finding("input-width-over-4096", target, f"{node.op_type} input W = {shape[3]} > 4096, which ATC "
                       "does not support on Ascend 310 (spec §5)", "resize the input or split it into tiles")


def _check_conv(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    auto_pad = _string(node, "auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        yield _finding("conv-auto-pad", target, f"auto_pad={auto_pad}: ATC of CANN 5.0.4 allows only NOTSET or "
                       "VALID (spec §5)", "export explicit pads (PyTorch does: padding=... gives NOTSET)")
    kernel = _ints(node, "kernel_shape")
    if kernel is None and len(node.input) > 1:
        weight_shape = context.shape(node.input[1])
        kernel = [d for d in weight_shape[2:] if d is not None] if weight_shape else None
    limits = (("dilations", _ints(node, "dilations"), 1, 255), ("pads", _ints(node, "pads"), 0, 255),
              ("strides", _ints(node, "strides"), 1, 63), ("kernel", kernel, 1, 255))
    for name, values, low, high in limits:
        bad = [v for v in values or () if not low <= v <= high]
        if bad:
            yield _finding("conv-attribute-range", target, f"{name} {values} outside {low}-{high}, the range ATC "
                           "supports for Conv on Ascend 310 (spec §5)", f"keep Conv {name} within {low}-{high}")
    group = _int(node, "group", 1)
    if group != 1:
        # spec §10 q4: the op spec says group = 1, yet ModelZoo converts depthwise nets, so never fail on it.
        yield _finding("conv-group", target, f"group={group}: the ATC op spec says group = 1, but ModelZoo "
                       "converts depthwise nets (spec §5, §10 q4: unresolved)",
                       "expect it to convert; if ATC fails on this node, use group=1 convolutions")
    x_shape = context.shape(node.input[0]) if node.input else None
    if x_shape is not None and len(x_shape) != 4:
        yield _finding("conv-input-not-4d", target, f"Conv input has rank {len(x_shape)}; ATC for Ascend 310 "
                       "takes 4-D NCHW (spec §5)", "use Conv2d (reshape 1-D signals to N,C,1,W)")
    yield from _check_input_width(node, target, context)
    y_shape = context.shape(node.output[0]) if node.output else None
    if y_shape and len(y_shape) == 4 and y_shape[3] == 1 and y_shape[2] not in (None, 1):
        yield _finding("conv-output-width-1", target, f"output H x W = {y_shape[2]} x 1: CANN 5.0.4's Conv does "
                       "not support W = 1 with H != 1 (spec §5)", "transpose H and W, or change the kernel/stride")


def _check_maxpool(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    if _int(node, "storage_order", 0) == 1:
        yield _finding("maxpool-storage-order", target, "storage_order=1 (column major) is not supported by ATC "
                       "(spec §5)", "use the default storage_order=0")
    dilations = _ints(node, "dilations") or []
    if any(d != 1 for d in dilations):
        yield _finding("maxpool-dilations-dropped", target, f"dilations {dilations}: ATC drops MaxPool dilations, "
                       "so the board would compute a different result (spec §5)", "use dilation=1 in MaxPool")
    if _string(node, "auto_pad", "NOTSET") == "VALID" and _int(node, "ceil_mode", 0) != 0:
        yield _finding("maxpool-valid-ceil-mode", target, "auto_pad=VALID with ceil_mode=1 is not supported "
                       "(spec §5)", "use ceil_mode=0, or explicit pads")
    kernel = _ints(node, "kernel_shape") or []
    strides = _ints(node, "strides") or []
    if any(s > 63 for s in strides) or any(k > 255 for k in kernel) or (kernel and math.prod(kernel) > 256):
        yield _finding("maxpool-ai-cpu", target, f"kernel {kernel}, strides {strides}: a stride > 63, a kernel dim "
                       "> 255 or kh*kw > 256 runs on the AI CPU, which is slow (spec §5)",
                       "use smaller pooling windows (e.g. two pools, or GlobalAveragePool)")
    yield from _check_input_width(node, target, context)


def _check_averagepool(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    if _int(node, "count_include_pad", 0) == 1:
        # spec §10 q5: the commercial docs say unsupported, CommunityEdition says supported: warn, don't fail.
        yield _finding("averagepool-count-include-pad", target, "count_include_pad=1: the commercial ATC docs say "
                       "unsupported, CommunityEdition says supported (spec §5, §10 q5: unresolved)",
                       "use count_include_pad=0 (PyTorch: AvgPool2d(..., count_include_pad=False)) to be safe")
    auto_pad = _string(node, "auto_pad", "NOTSET")
    if auto_pad == "SAME_LOWER":
        yield _finding("averagepool-same-lower", target, "auto_pad=SAME_LOWER is not supported (spec §5)",
                       "use explicit pads")
    if _int(node, "ceil_mode", 0) != 0 and auto_pad != "NOTSET":
        yield _finding("averagepool-ceil-mode", target, f"ceil_mode=1 with auto_pad={auto_pad}: ceil_mode works "
                       "only with NOTSET (spec §5)", "use explicit pads with ceil_mode, or ceil_mode=0")


def _check_gemm(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    alpha = _float(node, "alpha", 1.0)
    beta = _float(node, "beta", 1.0) if _input(node, 2) else 1.0  # beta scales C; without C it does nothing
    if alpha != 1.0 or beta != 1.0:
        # A warning, not an error: spec §10 q5 says CommunityEdition docs list alpha/beta as supported.
        yield _finding("gemm-alpha-beta", target, f"alpha={alpha:g}, beta={beta:g}: ATC maps Gemm to MatMulV2 and "
                       "ignores alpha and beta, so the board may compute a different result (spec §5, §10 q5)",
                       "fold alpha/beta into the weights (onnxsim does not), or export nn.Linear as is")


def _check_clip(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    # opset >= 11 passes min/max as optional inputs, older opsets as attributes; accept either.
    names = _attrs(node)
    has_min = _input(node, 1) is not None or "min" in names
    has_max = _input(node, 2) is not None or "max" in names
    if not (has_min or has_max):
        yield _finding("clip-unbounded", target, "Clip has neither min nor max; ATC requires at least one "
                       "(spec §5)", "give the clamp a bound (ReLU6: min=0, max=6), or remove the Clip")


def _check_pad(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    pads_name = _input(node, 1)
    pads = _ints(node, "pads") if pads_name is None else context.constant_value(pads_name)
    if pads is not None and len(np.ravel(pads)) % 2:
        yield _finding("pad-odd-length", target, f"pads has {len(np.ravel(pads))} values; ATC needs an even "
                       "count (begin and end per axis, spec §5)", "give begin and end pads for every axis")


def _refused(target: str, message: str, hint: str) -> Finding:
    return _finding("op-attribute-refused", target, f"{message}: ATC's parser refuses it (spec atc-onnx-ops.md)", hint)


def _check_resize(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    mode = _string(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        yield _refused(target, f"Resize mode={mode}", "use mode nearest or linear")
    transform = _string(node, "coordinate_transformation_mode", "half_pixel")
    if transform not in ("asymmetric", "pytorch_half_pixel", "align_corners"):
        yield _finding("op-semantics-changed", target, f"coordinate_transformation_mode={transform}: ATC computes it "
                       "as asymmetric (spec atc-onnx-ops.md Resize)", "export with asymmetric (nearest) or "
                       "pytorch_half_pixel / align_corners (linear), which ATC keeps")
    for i, what in ((2, "scales"), (3, "sizes")):
        name = _input(node, i)
        if name is not None and name not in context.constants:
            yield _refused(target, f"Resize {what} computed at run time", "fold them to constants (onnx-simplifier "
                           "with a static input shape)")


def _check_upsample(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    mode = _string(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        yield _refused(target, f"Upsample mode={mode}", "use mode nearest or linear")


def _check_arg_reduce(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    if _int(node, "select_last_index", 0):
        yield _refused(target, f"{node.op_type} select_last_index=1", "drop select_last_index (use 0)")


def _check_selu(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    alpha, gamma = _float(node, "alpha", 1.67326319217681884765625), _float(node, "gamma", 1.05070102214813232421875)
    if not (math.isclose(alpha, 1.6732632, rel_tol=1e-6) and math.isclose(gamma, 1.0507010, rel_tol=1e-6)):
        yield _refused(target, f"Selu alpha={alpha:g}, gamma={gamma:g} (not the ONNX defaults)",
                       "use the default alpha and gamma, or write it as Elu/Mul")


def _check_lrn(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    size = _int(node, "size", 0)
    if size <= 0 or size % 2 == 0:
        yield _refused(target, f"LRN size={size or 'absent'} (must be given and odd)", "give LRN an odd size")


def _check_depth_to_space(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    if _int(node, "blocksize", 0) < 2:
        yield _refused(target, f"DepthToSpace blocksize={_int(node, 'blocksize', 0)}", "use a blocksize of 2 or more")


def _check_conv_transpose(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    if _ints(node, "kernel_shape") is None:
        yield _refused(target, "ConvTranspose without kernel_shape", "export it with kernel_shape written out")
    if any(d != 1 for d in _ints(node, "dilations") or []):
        yield _refused(target, f"ConvTranspose dilations {_ints(node, 'dilations')}", "use dilations 1")
    if _string(node, "auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        yield _refused(target, f"ConvTranspose auto_pad={_string(node, 'auto_pad', '')}", "give explicit pads")


def _check_split(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    split = _ints(node, "split")
    if split is not None and len(split) != len(node.output):
        yield _refused(target, f"Split has {len(split)} sizes for {len(node.output)} outputs",
                       "give one split size per output")


def _check_log_softmax(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    if context.opset is not None and context.opset < 13 and _typed_attr(node, "axis", AttributeProto.INT,
                                                                       "an int") is None:
        yield _finding("op-semantics-changed", target, "LogSoftmax without an axis: ONNX below opset 13 means axis 1, "
                       "ATC takes -1 (spec atc-onnx-ops.md)", "write the axis out")


def _check_ascend_quant(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    """AMCT's AscendQuant: a finite scale (1/scale_d) within fp16 range, an integer int8 offset, INT8 output."""
    scale, offset = _float(node, "scale", 0.0), _float(node, "offset", 0.0)
    dst_type = _string(node, "dst_type", quant_ops.DST_TYPE)
    if not (math.isfinite(scale) and 0 < abs(scale) <= FP16_MAX):
        yield _refused(target, f"AscendQuant scale={scale:g} (must be a finite non-zero 1/scale_d within fp16 "
                       "range; the GE doc asks for sqrt_mode beyond it)", "quantise again (atlas-kd quantize)")
    if not (offset == int(offset) and quant_ops.INT8_MIN <= offset <= quant_ops.INT8_MAX):
        yield _refused(target, f"AscendQuant offset={offset:g} (must be an integer in -128..127)",
                       "quantise again (atlas-kd quantize)")
    if dst_type != quant_ops.DST_TYPE:
        yield _refused(target, f"AscendQuant dst_type={dst_type} (the Ascend 310 takes INT8)",
                       "quantise to int8")


def _check_ascend_dequant(node: onnx.NodeProto, target: str, context: _ModelContext) -> Iterator[Finding]:
    """AMCT's AscendDequant: a uint64 deq_scale constant whose low words are finite factors, dtype DT_FLOAT/16."""
    dtype = _int(node, "dtype", quant_ops.DT_FLOAT)
    if dtype not in (quant_ops.DT_FLOAT, quant_ops.DT_FLOAT16):
        yield _refused(target, f"AscendDequant dtype={dtype} (0: DT_FLOAT or 1: DT_FLOAT16)", "quantise again")
    param = _input(node, 1)
    value = context.constant_value(param) if param is not None else None
    if value is None or value.dtype != np.uint64:
        yield _refused(target, "AscendDequant without a constant uint64 deq_scale (its second input)",
                       "quantise again (atlas-kd quantize)")
        return
    deq, shift, offset_w = quant_ops.unpack_deq_scale(value)
    if not np.isfinite(deq).all() or (deq == 0).any() or shift.any() or offset_w.any():
        yield _refused(target, "AscendDequant deq_scale holds a zero or non-finite factor, or a shift_bit / offset_w "
                       "(plain int8 has neither)", "quantise again (atlas-kd quantize)")


_ATTRIBUTE_RULES: dict[str, Callable[[onnx.NodeProto, str, _ModelContext], Iterator[Finding]]] = {
    "Resize": _check_resize,
    "Upsample": _check_upsample,
    "ArgMax": _check_arg_reduce,
    "ArgMin": _check_arg_reduce,
    "Selu": _check_selu,
    "LRN": _check_lrn,
    "DepthToSpace": _check_depth_to_space,
    "ConvTranspose": _check_conv_transpose,
    "Split": _check_split,
    "LogSoftmax": _check_log_softmax,
    "Conv": _check_conv,
    "MaxPool": _check_maxpool,
    "AveragePool": _check_averagepool,
    "Gemm": _check_gemm,
    "Clip": _check_clip,
    "Pad": _check_pad,
    quant_ops.QUANT: _check_ascend_quant,
    quant_ops.DEQUANT: _check_ascend_dequant,
}


# ---------------------------------------------------------------------------------------------------------------
# Graph patterns (top-level graph)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _check_shape_chains(graph: onnx.GraphProto) -> Iterator[Finding]:
    """Reshape whose shape input is computed from a Shape node (the `x.view(x.size(0), -1)` pattern)."""
    producers = _producers(graph)
    for index, node in enumerate(graph.node):
        shape_input = _input(node, 1) if node.op_type == "Reshape" else None
        if shape_input is None:
            continue
        chain_ops: list[str] = []
        found_shape = False
        queue, seen = deque([shape_input]), {shape_input}
        while queue:
            producer = producers.get(queue.popleft())
            if producer is None:
                continue
            if producer.op_type == "Shape":
                found_shape = True
            else:  # x.view(x.size(0), -1) passes Gather/Unsqueeze/Concat; other views add Cast, Slice, Mul, ...
                chain_ops.append(producer.op_type)
                for name in producer.input:
                    if name and name not in seen:
                        seen.add(name)
                        queue.append(name)
        if found_shape:
            # Warning, not error: spec §5 says whether ATC folds this chain is unknown (§10 q6), and every op in it
            # is in the §5 table, so it may well convert; folding it removes the question.
            path = "->".join(["Shape", *dict.fromkeys(reversed(chain_ops)), "Reshape"])
            yield _finding("shape-chain-unfolded", _node_target(node, index),
                           f"the Reshape's shape is computed at run time ({path}); whether ATC folds this is "
                           "unknown (spec §5, §10 q6)",
                           "run onnxsim (python -m onnxsim in.onnx out.onnx) with a static input shape, or export "
                           "x.flatten(1) instead of x.view(x.size(0), -1)")


def _check_int64_compute(graph: onnx.GraphProto, context: _ModelContext) -> Iterator[Finding]:
    """Nodes that produce int64 outside shape computation (spec §5: int64 documented only for Reshape's shape)."""
    producers = _producers(graph)
    parameter_tensors: set[str] = set()
    queue = deque(node.input[i] for node in graph.node for i in _INT64_PARAMETER_INPUTS.get(node.op_type, ())
                  if _input(node, i))
    while queue:
        name = queue.popleft()
        if name in parameter_tensors:
            continue
        parameter_tensors.add(name)
        producer = producers.get(name)
        if producer is not None and producer.op_type != "Shape":  # Shape's input is data, not shape computation
            queue.extend(i for i in producer.input if i)
    graph_outputs = {o.name for o in graph.output}  # an int64 graph output is already an io-dtype-int64 error
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            continue
        int64_outputs = [o for o in node.output if o and context.dtype(o) == TensorProto.INT64
                         and o not in parameter_tensors and o not in graph_outputs]
        if int64_outputs:
            yield _finding("int64-compute", _node_target(node, index),
                           f"produces int64 ({', '.join(map(str, int64_outputs))}) outside shape computation; "
                           "ATC documents int64 only for Reshape's shape input (spec §5 model-level rules [INFER])",
                           "compute in float32, or move the integer step out of the model")


# ---------------------------------------------------------------------------------------------------------------
# Tensors: values, external data, size


def _is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def _iter_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto, bool]]:
    """(target, tensor, holds_values) for every tensor stored in the model: initializers, sparse initializers and
    node attributes (Constant values), in every graph and local function. holds_values is False for sparse
    indices."""
    def from_nodes(nodes, prefix: str) -> Iterator[tuple[str, TensorProto, bool]]:
        for index, node in enumerate(nodes):
            for a in node.attribute:
                label = node.output[0] if node.op_type == "Constant" and node.output else f"{a.name}"
                where = f"({_node_target(node, index, prefix)})"
                if a.type == AttributeProto.TENSOR:
                    yield f"tensor '{a.t.name or label}' {where}", a.t, True
                elif a.type == AttributeProto.TENSORS:
                    for i, t in enumerate(a.tensors):
                        yield f"tensor '{t.name or f'{label}[{i}]'}' {where}", t, True
                elif a.type == AttributeProto.SPARSE_TENSOR:
                    yield f"tensor '{a.sparse_tensor.values.name or label}' {where}", a.sparse_tensor.values, True
                    yield f"tensor '{label}' indices {where}", a.sparse_tensor.indices, False
                elif a.type == AttributeProto.SPARSE_TENSORS:
                    for i, s in enumerate(a.sparse_tensors):
                        yield f"tensor '{s.values.name or f'{label}[{i}]'}' {where}", s.values, True
                        yield f"tensor '{label}[{i}]' indices {where}", s.indices, False

    for prefix, graph in _iter_graphs(model.graph):
        for t in graph.initializer:
            yield f"tensor '{prefix}{t.name}'", t, True
        for s in graph.sparse_initializer:
            yield f"tensor '{prefix}{s.values.name}'", s.values, True
            yield f"tensor '{prefix}{s.values.name}' indices", s.indices, False
        yield from from_nodes(graph.node, prefix)
    for function in model.functions:
        yield from from_nodes(function.node, f"{function.domain}.{function.name}/")


def _check_tensor_values(model: onnx.ModelProto, model_dir: Path | None) -> Iterator[Finding]:
    """NaN/Inf (error) and |x| > 65504 (warning under force_fp16) in every float tensor, external data included
    when it stays inside the model's folder."""
    base = _real_dir(model_dir)
    for target, tensor, holds_values in _iter_tensors(model):
        if not holds_values or tensor.data_type not in _FLOAT_TYPES:
            continue
        try:
            if _is_external(tensor):
                if base is None:
                    continue
                info = _external_info(tensor, base)
                if info.path is None or info.problem is not None:
                    continue  # reported by the external-data rule; never read outside the folder
                chunks = _read_external_chunks(tensor, info)
            else:
                chunks = iter([numpy_helper.to_array(tensor)])
            non_finite = too_big = 0
            largest = 0.0
            for chunk in chunks:
                flat = np.ravel(chunk)
                for start in range(0, flat.size, _CHUNK_ELEMENTS):
                    values = flat[start:start + _CHUNK_ELEMENTS]
                    if values.dtype not in (np.float32, np.float64):  # float16, bfloat16: exact in float32
                        values = values.astype(np.float32)
                    finite = np.isfinite(values)
                    non_finite += int(values.size - np.count_nonzero(finite))
                    if tensor.data_type != TensorProto.FLOAT16:  # float16 weights cannot exceed 65504
                        magnitudes = np.abs(values[finite])
                        too_big += int(np.count_nonzero(magnitudes > FP16_MAX))
                        largest = max(largest, float(magnitudes.max(initial=0.0)))
        except Exception as e:
            yield _finding("tensor-unreadable", target, f"cannot decode the tensor ({type(e).__name__}: {e})",
                           "re-export the model; its data does not match its type and dims")
            continue
        if non_finite:
            yield _finding("tensor-non-finite", target, f"{non_finite} NaN/Inf value(s); every output they reach "
                           "becomes NaN/Inf", "retrain or fix the checkpoint (look for a diverged run)")
        if too_big:
            yield _finding("tensor-fp16-overflow", target, f"{too_big} value(s) above 65504 (largest {largest:g}); "
                           "force_fp16 (ATC's default) turns them into Inf (spec §5, §7)",
                           "rescale the layer, or convert with --precision_mode=allow_fp32_to_fp16")
    # Constant's value_float(s) (opset >= 12) hold values outside any TensorProto
    for prefix, graph in _iter_graphs(model.graph):
        for index, node in enumerate(graph.node):
            if node.op_type != "Constant":
                continue
            for a in node.attribute:
                values = {AttributeProto.FLOAT: [a.f], AttributeProto.FLOATS: list(a.floats)}.get(a.type, [])
                non_finite = sum(not math.isfinite(v) for v in values)
                if non_finite:
                    yield _finding("tensor-non-finite", f"{a.name} ({_node_target(node, index, prefix)})",
                                   f"{non_finite} NaN/Inf value(s); every output they reach becomes NaN/Inf",
                                   "fix the constant in the model source")


@dataclass
class _ExternalInfo:
    location: str
    path: str | None  # the real path inside the model's folder, or None when it must not be touched
    offset: int
    length: int | None
    problem: Finding | None


def _text(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _real_dir(model_dir: Path | None) -> str | None:
    return os.path.realpath(model_dir) if model_dir is not None else None


def _external_info(tensor: TensorProto, base: str | None, target: str = "") -> _ExternalInfo:
    """Where a tensor's external data lives, checked without opening anything: paths outside `base` (absolute,
    `..`, or through a symlink) are refused before any file access."""
    # upb hands out invalid UTF-8 strings as bytes; fsdecode maps them to the file name they spell
    entries = {_text(e.key): _text(e.value) for e in tensor.external_data}
    location = entries.get("location", "")
    info = _ExternalInfo(location, None, 0, None, None)
    try:
        info.offset = int(entries.get("offset", "0") or 0)
        info.length = int(entries["length"]) if entries.get("length") else None
        if info.offset < 0 or (info.length is not None and info.length < 0):
            raise ValueError("negative offset or length")
    except ValueError as e:
        info.problem = _finding("external-data-invalid", target, f"external_data offset/length unreadable ({e})",
                                "re-save the model with onnx.save_model(..., save_as_external_data=True)")
        return info
    if not location or "\0" in location:
        info.problem = _finding("external-data-invalid", target, "external data without a usable location",
                                "re-save the model with onnx.save_model(..., save_as_external_data=True)")
        return info
    outside_hint = ("keep external data files beside the model and give relative locations, or embed the weights "
                    "(onnx.load + onnx.save without external data)")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        info.problem = _finding("external-data-outside-folder", target, f"location '{location}' is an absolute "
                                "path; lint does not follow it", outside_hint)
        return info
    if base is None:
        if ".." in Path(location).parts:
            info.problem = _finding("external-data-outside-folder", target, f"location '{location}' climbs out "
                                    "of the model's folder with '..'", outside_hint)
        return info  # no folder given: nothing on disk is looked at
    # '..' first, on the text alone, so such a path is not even looked up; then symlinks: realpath resolves them
    # with readlink/lstat (metadata of the link's target, never its contents).
    joined = os.path.join(base, location)
    for resolve, how in ((os.path.normpath, "with '..'"), (os.path.realpath, "through a symlink")):
        candidate = resolve(joined)
        if os.path.commonpath([base, candidate]) != base:
            info.problem = _finding("external-data-outside-folder", target, f"location '{location}' leads out of "
                                    f"the model's folder {how}; lint does not follow it", outside_hint)
            return info
    real = candidate
    if not os.path.isfile(real):
        info.problem = _finding("external-data-missing", target, f"external data file '{location}' is missing "
                                "beside the model (or is not a regular file)", "copy the external data file next to the .onnx file")
        return info
    size = os.path.getsize(real)
    needed = info.offset + (info.length if info.length is not None else 0)
    if needed > size or info.offset > size:
        info.problem = _finding("external-data-out-of-range", target, f"'{location}' has {size} bytes but the "
                                f"tensor needs bytes up to {needed}", "copy the complete external data file")
        return info
    info.path = real
    return info


def _read_external_chunks(tensor: TensorProto, info: _ExternalInfo) -> Iterator[np.ndarray]:
    """The tensor's values from a file inside the model's folder, a chunk at a time."""
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    count = math.prod(tensor.dims)
    if count < 0:
        raise ValueError(f"negative dims {list(tensor.dims)}")
    if info.length is not None and info.length != count * dtype.itemsize:
        raise ValueError(f"length {info.length} != {count} x {dtype.itemsize} bytes")
    # O_NOFOLLOW: the checked real path must still be a plain file when we open it
    fd = os.open(info.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        f.seek(info.offset)
        remaining = count
        while remaining:
            n = min(remaining, _CHUNK_ELEMENTS)
            data = f.read(n * dtype.itemsize)
            if len(data) != n * dtype.itemsize:
                raise ValueError("the external data file ends early")
            remaining -= n
            yield np.frombuffer(data, dtype=dtype)


def _check_external_data(model: onnx.ModelProto, model_dir: Path | None,
                         external_bytes: list[int]) -> Iterator[Finding]:
    """Every external-data reference: warn that it is there, fail if it leaves the folder or is missing.
    Appends the sizes of the distinct external files (inside the folder) to `external_bytes`."""
    base = _real_dir(model_dir)
    files: set[str] = set()
    for target, tensor, _ in _iter_tensors(model):
        if not _is_external(tensor):
            continue
        info = _external_info(tensor, base, target)
        yield _finding("external-data", target, f"stored as external data in '{info.location}'; atlas-kd's export "
                       "embeds weights, and the spec does not say whether ATC 5.x reads external data",
                       "embed the weights: onnx.save(onnx.load(path), out) without save_as_external_data")
        if info.problem is not None:
            yield info.problem
        elif base is None:
            yield _finding("external-data", target, "no model folder was given, so the external file was not "
                           "checked", "lint the file with lint_file(path) to check external data")
        if info.path is not None:
            files.add(info.path)
    external_bytes.extend(os.path.getsize(p) for p in sorted(files))


def _size_text(n: int) -> str:
    return f"{n} bytes" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _check_tensor_sizes(context: _ModelContext, memory_bytes: int) -> Iterator[Finding]:
    """Every graph input and every tensor shape inference sized (constants aside): one larger than the board's
    memory cannot be allocated; one above LARGE_TENSOR_BYTES takes a large share of it."""
    graph = context.model.graph
    inputs = {i.name for i in graph.input}
    producers = {out: (index, node) for index, node in enumerate(graph.node) for out in node.output}
    for name in context.types:
        if name in context.constants:
            continue
        shape, dtype = context.shape(name), context.dtype(name)
        if not shape or None in shape or dtype is None:
            continue
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(dtype)).itemsize
        except (KeyError, TypeError, ValueError):
            continue
        nbytes = math.prod(shape) * itemsize
        if nbytes <= LARGE_TENSOR_BYTES:
            continue
        if name in inputs:
            target = _Target(f"input '{name}'", input=name)
        elif name in producers:
            index, node = producers[name]
            target = _Target(f"tensor '{name}' (output of {_node_target(node, index)})", tensor=name,
                             node=node.name, node_index=index, op_type=node.op_type, graph="")
        else:
            target = _Target(f"tensor '{name}'", tensor=name)
        size = f"{shape} {_dtype_name(dtype)} = {_size_text(nbytes)}"
        if nbytes > memory_bytes:
            yield _finding("tensor-over-board-memory", target, f"{size}, more than the board's {_size_text(memory_bytes)} "
                           "of memory in all: it cannot be allocated", "use a smaller input shape or batch "
                           "(export.batch, --input-shape), or raise --board-memory-mib for a larger board")
        else:
            yield _finding("tensor-large", target, f"{size}: one tensor above {_size_text(LARGE_TENSOR_BYTES)} "
                           "takes a large share of the board's memory", "use a smaller input shape or batch")


def _check_size(size: int, max_board_bytes: int) -> Iterator[Finding]:
    if size > PROTOBUF_LIMIT_BYTES:
        yield _finding("model-too-large", "model", f"{_size_text(size)} (model + external data) is over the 2 GB "
                       "a protobuf model can be; ATC fails to load it (E10041, spec §4)",
                       "shrink the model (prune, distil to a smaller student)")
    elif size > max_board_bytes:
        yield _finding("model-over-board-budget", "model", f"{_size_text(size)} (model + external data) is over "
                       f"the board budget of {_size_text(max_board_bytes)} (our assumption for an Atlas 200 DK, "
                       "not a spec fact)", "shrink the model, or raise --max-board-bytes if your board has room")


# ---------------------------------------------------------------------------------------------------------------
# onnx.checker


def _checkable_copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str]:
    """The model as onnx.checker and shape inference may see it: no external-data references left, so neither
    touches a file. External initializers become graph inputs; other external tensors get zero-filled stand-ins
    (up to _CHECKER_STAND_IN_BYTES). Returns (None, why) when that is not possible."""
    if not any(_is_external(t) for _, t, _ in _iter_tensors(model)):
        return model, ""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    input_names = {i.name for i in graph.input}
    kept = [t for t in graph.initializer if not _is_external(t)]
    for t in graph.initializer:
        if _is_external(t) and t.name not in input_names:
            graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    budget = _CHECKER_STAND_IN_BYTES
    for _, t, _ in _iter_tensors(copy):
        if not _is_external(t):
            continue
        nbytes = math.prod(t.dims) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        if nbytes > budget:
            return None, "external tensors outside the initializers are too large to stand in for"
        budget -= nbytes
        t.ClearField("external_data")
        t.data_location = TensorProto.DEFAULT
        t.raw_data = bytes(nbytes)
    return copy, ""


def _check_with_onnx_checker(context: _ModelContext) -> Iterator[Finding]:
    if context.checkable_failure:
        yield _finding("onnx-checker", "model", f"the model's external tensors are malformed "
                       f"({context.checkable_failure}), so onnx.checker could not run",
                       "re-export the model; ATC's parser expects a valid ONNX graph")
        return
    if context.checkable is None:
        yield _finding("onnx-checker-skipped", "model", f"onnx.checker was not run: {context.checkable_note}",
                       "embed the weights to get the full check")
        return
    try:
        onnx.checker.check_model(context.checkable, full_check=True)
    except Exception as e:  # ValidationError, InferenceError, ValueError (too big), ...
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        yield _finding("onnx-checker", "model", f"onnx.checker (full_check) rejects the model: {first_line}",
                       "re-export the model; ATC's parser expects a valid ONNX graph")


# ---------------------------------------------------------------------------------------------------------------
# Output and CLI


def report_dict(findings: Iterable[Finding], model: str | os.PathLike | None = None) -> dict:
    """Findings and counts as JSON-ready data (what `--json` prints and export.json's "lint" holds)."""
    findings = list(findings)
    errors = sum(f.severity == ERROR for f in findings)
    return {
        "model": str(model) if model is not None else None,
        "findings": [f.to_dict() for f in findings],
        "summary": {"errors": errors, "warnings": len(findings) - errors, "exit_code": exit_code(findings)},
    }


def format_findings(findings: Iterable[Finding], source: str | os.PathLike | None = None) -> str:
    """The human table: one line per finding (errors first), then a summary line."""
    findings = sorted(findings, key=lambda f: f.severity != ERROR)
    lines = [f"{f.severity.upper():7} {f.rule} {f.target}: {f.message} (hint: {f.hint})" for f in findings]
    errors = sum(f.severity == ERROR for f in findings)
    warnings = len(findings) - errors
    counts = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    lines.append(f"{source}: {counts}" if source is not None else counts)
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the ONNX file to check")
    parser.add_argument("--json", action="store_true", help="print the findings and a summary as JSON")
    parser.add_argument("--max-board-bytes", type=_positive_int, default=DEFAULT_MAX_BOARD_BYTES,
                        help="warn above this model size (model + external data); default %(default)s, "
                             "our assumption for an Atlas 200 DK")
    dynamic = parser.add_mutually_exclusive_group()
    dynamic.add_argument("--dynamic-batch-size", metavar="B1,B2,...", help="the model will be built with ATC's "
                         "--dynamic_batch_size: a dynamic batch axis is fine")
    dynamic.add_argument("--dynamic-image-size", metavar="H1,W1;H2,W2", help="likewise --dynamic_image_size: "
                         "dynamic H and W of a 4-D input are fine")
    parser.add_argument("--board-memory-mib", type=_positive_int, default=BOARD_MEMORY_MIB,
                        help="the board's memory (MiB): a tensor larger than this is an error; default %(default)s, "
                             "an Atlas 200 DK's 8 GB")


def run(args: argparse.Namespace) -> int:
    """Exit 0: no errors; 1: errors; 2: the file could not be read."""
    option = ("dynamic_batch_size" if args.dynamic_batch_size else
              "dynamic_image_size" if args.dynamic_image_size else None)
    findings = lint_file(args.model, max_board_bytes=args.max_board_bytes, board_memory_mib=args.board_memory_mib,
                         dynamic_option=option)
    if args.json:
        print(json.dumps(report_dict(findings, args.model), indent=2))
    else:
        print(format_findings(findings, source=args.model))
    return exit_code(findings)
