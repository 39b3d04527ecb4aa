"""`atc-sim`: a board-free stand-in for ATC (never named `atc`), for rehearsals without the CANN toolkit.

Same command line as the real ATC for what atlas-kd uses, parsed gflags-style (spec/atc.md §2.1), checked the
way the spec says ATC checks it, with the same output lines, error blocks, codes and exit status (§3, §4).
It runs atlas-kd's lint and fails on lint errors the way ATC would. On success it writes `<--output>.om`: a
simulated .om (atlas/om_container.py, its own magic, never `IMOD`) holding the model prepared for float16
execution (atlas/fp16.py; a quantised deploy model as it is, marked int8), the AIPP settings and metadata. Options it does not emulate are refused, not
ignored. Exit 0 on success, 255 on failure, 1 for command-line (gflags) errors.
"""
from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.atc import CONTINUATION, FAILURE_LINE, START_LINE, SUCCESS_LINE, OnnxInput, graph_inputs
from atlas import quant_ops
from atlas.atc_rules import (ATC_5X_FLAGS, DYNAMIC_OPTIONS, DYNAMIC_PROFILES_MAX, DYNAMIC_PROFILES_MIN,
                             DYNAMIC_TENSOR_NAME, LOG_LEVELS, ONNX_INPUT_FORMATS, OUTPUT_TYPES, PRECISION_MODES, RULES,
                             SOC_VERSIONS_310, dynamic_axes)

EXIT_FAILED = 255  # domi::FAILED / return -1 (§3)
EXIT_FLAGS = 1  # gflags errors (§2.1)

GFLAGS_BUILTINS = frozenset(("help helpfull helpshort helpmatch helpon helppackage helpxml version flagfile fromenv "
                             "tryfromenv undefok tab_completion_columns tab_completion_word").split())
HELP_FLAGS = frozenset(("help", "h", "helpfull", "helpshort"))
BOOL_FLAGS = HELP_FLAGS | {"version"}  # gflags bools: `--help` takes no value
INT_FLAGS = frozenset(("framework", "mode"))  # int32 in GE5: a non-integer is a gflags error (§2.1)

# What the stand-in does with each accepted flag. Anything else in ATC_5X_FLAGS is refused as not emulated.
IMPLEMENTED = frozenset(("model", "output", "framework", "soc_version", "input_shape", "input_format",
                         "precision_mode", "log", "insert_op_conf", "mode", "output_type", "input_fp16_nodes",
                         "out_nodes", "dynamic_batch_size", "dynamic_image_size"))
# flags that name files or say how to log: not part of what identifies the build inside the .om (issue 15 item 8)
NOT_RECORDED = frozenset(("model", "output", "insert_op_conf", "log"))
# performance, tuning and debug knobs: they change how fast the .om runs or what ATC writes beside it, not what
# it computes, so the stand-in accepts them and records them as having no effect
NO_NUMERIC_EFFECT = frozenset(("enable_small_channel", "disable_reuse_memory", "buffer_optimize",
                               "enable_single_stream", "fusion_switch_file", "auto_tune_mode", "op_debug_level",
                               "debug_dir", "op_compiler_cache_dir", "op_compiler_cache_mode", "mdl_bank_path",
                               "op_bank_path", "device_id", "core_type", "aicore_num", "save_original_model",
                               "check_report", "dump_mode"))

INPUT_SHAPE_FORMAT = '"input_name1:n1,c1,h1,w1;input_name2:n2,c2,h2,w2"'
NOT_EMULATED = "atc-sim (the board-free stand-in) does not emulate it; use the real ATC of the CANN toolkit"


class FlagError(Exception):
    """A gflags-level error: one `ERROR: ...` line on stderr, exit 1."""


@dataclass
class AtcError:
    """One error block: `CODE: message` plus indented continuation lines (§3)."""

    code: str
    message: str
    details: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"{self.code}: {self.message}"] + [CONTINUATION + d for d in self.details]


class AtcFailure(Exception):
    def __init__(self, errors: list[AtcError]):
        super().__init__(errors[0].message if errors else "failed")
        self.errors = errors


# --- command line (gflags semantics, §2.1) ----------------------------------------------------------------

def parse_flags(argv: list[str]) -> dict[str, str]:
    """`--opt=value`, `--opt value`, `-opt ...`; `-` and `_` interchangeable; `--` ends the flags.

    Raises FlagError with the gflags message for an unknown flag, a missing value or a non-integer int flag.
    """
    flags: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            if i < len(argv):
                raise FlagError(f"unexpected argument '{argv[i]}' (atc takes only --flags)")  # [INFER]
            break
        if not arg.startswith("-") or arg == "-":
            # gflags leaves positional words to the program; ATC does nothing with them [INFER]: refuse, not ignore
            raise FlagError(f"unexpected argument '{arg}' (atc takes only --flags)")
        body = arg[2:] if arg.startswith("--") else arg[1:]
        name, has_value, value = body.partition("=")
        key = name.replace("-", "_")
        if key not in ATC_5X_FLAGS and key not in GFLAGS_BUILTINS:
            raise FlagError(f"unknown command line flag '{name}'")
        if key in BOOL_FLAGS:
            if has_value and value.lower() not in ("true", "false", "1", "0", "yes", "no", "t", "f", "y", "n"):
                raise FlagError(f"illegal value '{value}' specified for bool flag '{name}'")
            flags[key] = value if has_value else "true"
            continue
        if not has_value:
            if i >= len(argv):
                raise FlagError(f"flag '{arg}' is missing its argument")
            value = argv[i]
            i += 1
        if key in INT_FLAGS and not re.fullmatch(r"[+-]?\d+", value.strip()):
            raise FlagError(f"illegal value '{value}' specified for int32 flag '{name}'")
        flags[key] = value
    return flags


def usage() -> str:
    return ("usage: atc-sim --model=MODEL.onnx --framework=5 --output=BASE --soc_version=Ascend310 "
            "[--input_shape=\"name:n,c,h,w\"] [--input_format=NCHW] [--precision_mode=force_fp16] "
            "[--insert_op_conf=insert_op.cfg] [--output_type=FP32|FP16|node:0:FP16;...] [--out_nodes=node:0;...] "
            "[--input_fp16_nodes=name;...] [--dynamic_batch_size=1,2,4] [--dynamic_image_size=h,w;h,w] "
            "[--log=error]\n"
            "atc-sim is atlas-kd's board-free stand-in for ATC: it checks the command and the model as ATC does and "
            "writes a simulated .om that only the pyACL emulator runs.")


def check_flags(flags: dict[str, str]) -> list[AtcError]:
    """Front-end checks, all in one pass so several codes can appear in one run (§2.1 GE5 CheckFlags)."""
    errors: list[AtcError] = []
    mode = flags.get("mode", "0").strip()
    if int(mode) not in (0, 1, 3, 5, 6):
        errors.append(AtcError("E10001", f"Value {mode} for parameter --mode is invalid. Reason: only support "
                                         "0(model to framework model), 1(framework model to json), 3(only pre-check), "
                                         "5(pbtxt to json), 6(display model info)"))
    elif int(mode) != 0:
        errors.append(AtcError("E10001", f"Value {mode} for parameter --mode is invalid. Reason: atc-sim emulates "
                                         "only --mode=0 (build an .om); use the real ATC for the other modes"))
    if not flags.get("model"):
        errors.append(AtcError("E10004", "Value for --model is empty."))
    output = flags.get("output", "")
    if not output:
        errors.append(AtcError("E10004", "Value for --output is empty."))
    elif output.endswith("/"):
        errors.append(AtcError("E10022", f"Value {output} for parameter --output is invalid. Reason: no file name, "
                                         "the path ends with '/'"))
    framework = flags.get("framework", "").strip()
    if framework not in ("0", "1", "3", "5"):
        # the 6.0.1 doc's wording (§2.1)
        errors.append(AtcError("E10007", "[--framework] is required. The value must be [0(Caffe) or 1(MindSpore) "
                                         "or 3(TensorFlow) or 5(Onnx)]."))
    elif framework != "5":
        errors.append(AtcError("E10001", f"Value {framework} for parameter --framework is invalid. Reason: "
                                         f"atc-sim converts ONNX (--framework=5) only; {NOT_EMULATED}"))
    soc = flags.get("soc_version", "")
    # §2.1: 5.x has no front-end soc check; we treat it as required [INFER] and refuse anything outside the 310
    # family of §1. E10004 / E10003 are our choice of codes [INFER].
    if not soc:
        errors.append(AtcError("E10004", "Value for --soc_version is empty."))
    elif soc not in SOC_VERSIONS_310:
        errors.append(AtcError("E10003", f"Value {soc} for parameter --soc_version is invalid. Reason: atc-sim "
                                         f"emulates the Ascend 310 family ({', '.join(SOC_VERSIONS_310)}); "
                                         "the Atlas 200 DK is Ascend310"))
    fmt = flags.get("input_format")
    if fmt is not None and fmt not in ONNX_INPUT_FORMATS:
        errors.append(AtcError("E10001", f"Value {fmt} for parameter --input_format is invalid. Reason: only "
                                         "support NCHW, ND, NCDHW in ONNX model"))
    elif flags.get("insert_op_conf") and fmt not in (None, "NCHW"):
        # §2.2: AIPP needs NCHW; the code is our choice [INFER]
        errors.append(AtcError("E10001", f"Value {fmt} for parameter --input_format is invalid. Reason: AIPP "
                                         "(--insert_op_conf) needs NCHW"))
    precision = flags.get("precision_mode", "force_fp16")
    if precision not in PRECISION_MODES:
        # code: [INFER] (GE reports invalid option values with E10001)
        errors.append(AtcError("E10001", f"Value {precision} for parameter --precision_mode is invalid. Reason: "
                                         f"only support {', '.join(PRECISION_MODES)}"))
    errors += _flag_errors(parse_out_nodes, flags)
    if not errors:
        errors += _flag_errors(parse_output_type, flags)
    dynamic = [name for name in DYNAMIC_OPTIONS if name in flags]
    if len(dynamic) > 1:
        errors.append(AtcError("E10009", "Parameters --dynamic_batch_size, --dynamic_image_size and --dynamic_dims "
                                         "are mutually exclusive: set only one."))
    elif dynamic and dynamic[0] != "dynamic_dims":
        if "input_shape" not in flags:
            errors.append(AtcError("E10004", "Value for --input_shape is empty."))  # GE5 option_utils.cc L530
        errors += _flag_errors(parse_profiles, flags)
    if "input_shape" in flags:
        try:
            parse_input_shape(flags["input_shape"], allow_dynamic=bool(dynamic))
        except AtcFailure as e:
            errors += e.errors
    for name in sorted(flags):
        if name in IMPLEMENTED or name in NO_NUMERIC_EFFECT or name in HELP_FLAGS:
            continue
        errors.append(AtcError("E10001", f"Value {flags[name]} for parameter --{name} is invalid. Reason: "
                                         f"{NOT_EMULATED}"))
    return errors


def _flag_errors(parse, flags: dict[str, str]) -> list[AtcError]:
    try:
        parse(flags)
    except AtcFailure as e:
        return e.errors
    return []


def _invalid(flag: str, value: str, reason: str, code: str = "E10001") -> AtcFailure:
    return AtcFailure([AtcError(code, f"Value {value} for parameter --{flag} is invalid. Reason: {reason}.")])


def parse_profiles(flags: dict[str, str]) -> tuple[str | None, list]:
    """(the dynamic option, its profiles): batch sizes, or [h, w] pairs. GE5 option_utils.cc and
    multi_batch_options.cc: E10003 bad characters, E10020 not h,w pairs, E10035/E10036 count, E10038 <= 0, E10039
    duplicates."""
    option = next((name for name in ("dynamic_batch_size", "dynamic_image_size") if name in flags), None)
    if option is None:
        return None, []
    text = flags[option].strip().rstrip(",;")
    allowed = "0123456789, " + (";" if option == "dynamic_image_size" else "")
    if not text or any(c not in allowed for c in text):
        raise _invalid(option, flags[option], f"It can only contain digits, ',', ' '"
                                              f"{' and ;' if ';' in allowed else ''}", "E10003")
    if option == "dynamic_batch_size":
        profiles = [int(v) for v in text.split(",") if v.strip()]
    else:
        groups = [[v for v in group.split(",") if v.strip()] for group in text.split(";")]
        if any(len(g) != 2 for g in groups):
            raise AtcFailure([AtcError("E10020", f"Value {flags[option]} for --dynamic_image_size is invalid: "
                                                 "each profile must be two numbers, height,width.")])
        profiles = [[int(h), int(w)] for h, w in groups]
    if not DYNAMIC_PROFILES_MIN <= len(profiles) <= DYNAMIC_PROFILES_MAX:
        code = "E10035" if len(profiles) < DYNAMIC_PROFILES_MIN else "E10036"
        raise AtcFailure([AtcError(code, f"--{option} has {len(profiles)} profiles; it needs "
                                         f"{DYNAMIC_PROFILES_MIN} to {DYNAMIC_PROFILES_MAX}.")])
    if any(v <= 0 for p in profiles for v in (p if isinstance(p, list) else [p])):
        raise AtcFailure([AtcError("E10038", f"--{option} {flags[option]}: every value must be greater than 0.")])
    if len({str(p) for p in profiles}) != len(profiles):
        raise AtcFailure([AtcError("E10039", f"--{option} {flags[option]} has duplicate profiles.")])
    return option, profiles


def parse_out_nodes(flags: dict[str, str]) -> list[tuple[str, int]]:
    """`node:index;...` -> [(ONNX node name, output index)] (GE5 session/omg.cc ParseOutNodes: E10001; the
    name-only form is for Caffe only in 5.x)."""
    if "out_nodes" not in flags:
        return []
    nodes = []
    for item in flags["out_nodes"].split(";"):
        parts = item.split(":")
        if len(parts) != 2:
            raise _invalid("out_nodes", item, 'the correct format is "node_name1:0;node_name1:1;node_name2:0"')
        if not parts[1].strip().isdigit():
            raise _invalid("out_nodes", flags["out_nodes"], "index is not positive integer")
        nodes.append((parts[0].strip(), int(parts[1])))
    return nodes


def parse_output_type(flags: dict[str, str]) -> str | dict[tuple[str, int], str]:
    """FP32/FP16 for every output, or {(node, index): type} for the per-output form, whose every node:index must be
    in --out_nodes (GE5 session/omg.cc ParseOutputType, VerifyOutputTypeAndOutNodes: E10001)."""
    text = flags.get("output_type", "FP32").strip()
    if ":" not in text:
        return _output_type(text, text)
    per_output = {}
    out_nodes = set(parse_out_nodes(flags))
    for item in filter(None, text.split(";")):
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 3 or not parts[1].isdigit():
            raise _invalid("output_type", item, 'the correct format is "node_name:0:FP16;node_name:1:FP32"')
        key = (parts[0], int(parts[1]))
        if key not in out_nodes:
            raise _invalid("output_type", f"{parts[0]}:{parts[1]}", "the node and index must also be in --out_nodes")
        per_output[key] = _output_type(parts[2], text)
    return per_output


def _output_type(name: str, text: str) -> str:
    if name not in OUTPUT_TYPES:
        raise _invalid("output_type", text, "only support FP32, FP16, UINT8")
    if name == "UINT8":
        # how the chip converts float results to uint8 (rounding, saturation) is not in our sources
        raise _invalid("output_type", text, f"UINT8 outputs: {NOT_EMULATED}")
    return name


def parse_input_shape(text: str, allow_dynamic: bool = False) -> dict[str, list[int]]:
    """`name:d1,d2;name2:...` -> {name: dims}; E10002 for the format, E10011 for a dim that is not positive (-1 is
    allowed with a dynamic option)."""
    def malformed(reason: str) -> AtcFailure:
        return AtcFailure([AtcError("E10002", f"Value {text} for parameter --input_shape is invalid. Reason: "
                                              f"{reason}. The value must be formatted as {INPUT_SHAPE_FORMAT}.")])

    if not text.strip():
        raise malformed("can not be empty")
    shapes: dict[str, list[int]] = {}
    for segment in text.split(";"):
        if not segment:
            continue
        parts = segment.split(":")
        if len(parts) != 2 or not parts[0]:
            raise malformed(f'{segment} size not equal to 2 split by ":"')
        name, dims_text = parts
        dims: list[int] = []
        for item in (dims_text.split(",") if dims_text else []):
            if not re.fullmatch(r"-?\d+", item.strip()):
                raise malformed(f"{item} is not digit")
            dims.append(int(item))
        if any(d <= 0 and not (d == -1 and allow_dynamic) for d in dims):
            raise AtcFailure([AtcError("E10011", f"Value {text} for parameter --input_shape is invalid: the "
                                                 f"dims of {name} must be positive integers (-1 only with "
                                                 "--dynamic_batch_size or --dynamic_image_size)")])
        shapes[name] = dims
    return shapes


# --- the model ---------------------------------------------------------------------------------------------

def load_model(path: str):
    import onnx

    try:
        return onnx.load(path, load_external_data=False)
    except Exception:  # missing, unreadable, not ONNX: ATC says it could not load the model (§2.2)
        raise AtcFailure([AtcError("E10041", f"Failed to load the model from {path}.",
                                   ["Solution: Check that the model file exists, is an ONNX model and matches "
                                    "--framework."])]) from None


def check_shapes(inputs: list[OnnxInput], requested: dict[str, list[int]],
                 option: str | None = None) -> dict[str, list[int]]:
    """The dims each input gets (-1 on a dynamic axis): --input_shape checked against the model (E10016, E10049,
    E10050 [INFER]) and against the dynamic option (E10018, E10019, E10031: GE5 multi_batch_options.cc)."""
    errors = []
    by_name = {i.name: i for i in inputs}
    for name, dims in requested.items():
        if name not in by_name:
            errors.append(AtcError("E10016", f"Opname [{name}] specified in [--input_shape] is not found in the "
                                             f"model, the model inputs are: {', '.join(by_name)}."))
            continue
        model_dims = by_name[name].dims
        if len(dims) != len(model_dims):
            errors.append(AtcError("E10049", f"The dim count of input [{name}] in --input_shape is {len(dims)}, "
                                             f"but the model input has {len(model_dims)} dims."))
        elif any(m != -1 and d != -1 and m != d for m, d in zip(model_dims, dims)):
            # A static dim given a different size: the spec names no code; E10050 (dim out of range) is our
            # choice [INFER]. Real ATC may accept it when the graph allows the new shape.
            errors.append(AtcError("E10050", f"The --input_shape dims {dims} of input [{name}] do not match the "
                                             f"model's static dims {model_dims}."))
    if errors:
        raise AtcFailure(errors)
    shapes = {}
    for item in inputs:
        dims = requested.get(item.name, item.dims)
        if item.name not in requested and -1 in dims:
            raise AtcFailure([AtcError("E10011", f"Value for --input_shape is invalid: input [{item.name}] has a "
                                                 f"dynamic dim {dims} and --input_shape does not fix it.")])
        axes = [axis for axis, d in enumerate(dims) if d == -1]
        if axes and axes != list(dynamic_axes(option, len(dims))):
            code, what = (("E10018", "only the batch N") if option == "dynamic_batch_size"
                          else ("E10019", "only the height and width of a 4-D NCHW input"))
            raise AtcFailure([AtcError(code, f"--input_shape {item.name}:{','.join(map(str, dims))}: {what} can be "
                                             f"-1 with --{option}.")])
        shapes[item.name] = list(dims)
    if option and not any(-1 in dims for dims in shapes.values()):
        raise AtcFailure([AtcError("E10031" if option == "dynamic_batch_size" else "E10019",
                                   f"--{option} needs -1 in --input_shape on the axes it sets.")])
    return shapes


def lint_errors(model_path: str, model, fixed_inputs: set[str]) -> list[AtcError]:
    """atlas-kd's lint errors as the ATC errors they stand for (the code of each rule is in atlas/atc_rules.py)."""
    from export.lint import has_errors, lint_file

    findings = [f for f in lint_file(model_path) if f.severity == "error"]
    # a dynamic dim that --input_shape fixes is fine for ATC (§5 model-level rules)
    findings = [f for f in findings if not (f.rule == "input-dynamic-dim" and f.subject.get("input") in fixed_inputs)]
    if not has_errors(findings):
        return []
    errors: list[AtcError] = []
    if {f.rule for f in findings} & {"opset-unsupported", "opset-missing"}:
        errors += _no_parser_errors(model, None)  # the opset is model-wide: every node fails (§1)
    for f in findings:
        if f.rule in ("opset-unsupported", "opset-missing"):
            continue
        code = RULES[f.rule].atc_code
        node = _node_of(model, f.subject)
        if code == "E19010" and node is not None:
            errors += _no_parser_errors(model, node)
        elif code == "E16005":
            count = sum(1 for o in model.opset_import if o.domain in ("", "ai.onnx"))
            errors.append(AtcError("E16005", f"The model has {count} --domain_version fields, but only one is allowed."))
        elif code == "E16004":
            errors.append(AtcError("E16004", "ONNX model has no graph."))
        elif code == "E16001":
            kind = "input" if f.rule == "graph-no-inputs" else "output"
            errors.append(AtcError("E16001", f"The ONNX model has no {kind} node."))
        elif code == "E10011":
            errors.append(AtcError("E10011", f"Value for --input_shape is invalid: {f.target} {f.message}"))
        elif code == "EZ3002":
            op = node.op_type if node is not None else "Data"
            errors.append(AtcError("EZ3002", f"Optype [{op}] of Ops kernel [AIcoreEngine] is unsupported. "
                                             f"Reason: {f.message}.", [f"Solution: {f.hint}"]))
        elif code == "E14001" and node is not None:
            errors.append(AtcError("E14001", f"Argument {f.rule} for Op {node.name or node.op_type} with optype "
                                             f"{node.op_type} is invalid. Reason: {f.message}.",
                                   [f"Solution: {f.hint}"]))
        elif code == "E10041":
            errors.append(AtcError("E10041", f"Failed to load the model from {model_path}.",
                                   [f"PossibleCause: {f.message}", f"Solution: {f.hint}"]))
        else:
            # lint errors with no ATC counterpart (e.g. NaN weights): ATC records nothing specific, GE prints E19999
            errors.append(AtcError("E19999", "Unknown error occurred. Please check the log.",
                                   [f"PossibleCause: atlas-kd lint [{f.rule}] {f.target}: {f.message}",
                                    f"Solution: {f.hint}"]))
    return errors


def _node_of(model, subject: dict):
    """The top-level graph node a finding names (subgraph nodes have no ATC counterpart here)."""
    index = subject.get("node_index")
    if index is None or subject.get("graph") or index >= len(model.graph.node):
        return None
    return model.graph.node[index]


def _no_parser_errors(model, only) -> list[AtcError]:
    """The §1 signature: `E19010: No parser is registered for Op [name, optype [domain::opset::Type]].`"""
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    errors = []
    for index, node in enumerate(model.graph.node):
        if only is not None and node is not only:
            continue
        domain = node.domain or "ai.onnx"
        opset = versions.get(domain, versions.get("ai.onnx", 0))
        name = node.name or f"{node.op_type}_{index}"
        errors.append(AtcError("E19010", f"No parser is registered for Op [{name}, optype "
                                         f"[{domain}::{opset}::{node.op_type}]].",
                               ["Solution: Check the version of the installation package and reinstall the package. "
                                "For details, see the operator specifications."]))
    return errors


# --- building the sim .om ----------------------------------------------------------------------------------

def build(flags: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    """Check the model against the flags, then write `<output>.om`; raises AtcFailure with ATC-style errors.

    The .om depends only on the ONNX and the options: no path, time or random id goes inside (issue 15 item 8).
    """
    from atlas.fileio import write_bytes
    from atlas import om_container
    from atlas.fp16 import PRECISION_NUMERICS, prepare_for_fp16

    model_path = flags["model"]
    model = load_model(model_path)
    inputs = graph_inputs(model)
    option, profiles = parse_profiles(flags)
    requested = parse_input_shape(flags["input_shape"], bool(option)) if "input_shape" in flags else {}
    shapes = check_shapes(inputs, requested, option)
    aipp = _aipp(flags, inputs, shapes)
    fp16_inputs = _fp16_inputs(flags, model, inputs, aipp)
    errors = lint_errors(model_path, model, set(requested))
    if errors:
        raise AtcFailure(errors)
    int8 = quant_ops.is_quantized(model)  # AMCT's deploy form: its layers run in int8, the rest is not rounded
    problem = quant_ops.build_problem(flags.get("precision_mode", "force_fp16"), option) if int8 else None
    if problem:
        raise AtcFailure([AtcError("E10001", problem)])  # the code is our choice [INFER]

    _fix_input_dims(model, shapes, option)
    outputs = _select_outputs(model, parse_out_nodes(flags), shapes, profiles, option)
    output_types = _output_dtypes(parse_output_type(flags), outputs)
    precision = flags.get("precision_mode", "force_fp16")
    round_weights, round_activations = (False, False) if int8 else PRECISION_NUMERICS[precision]
    fp16_outputs = {o["name"] for o, dtype in zip(outputs, output_types) if dtype == "float16"}
    payload = prepare_for_fp16(model, weights=round_weights, activations=round_activations,
                               output_fp16=fp16_outputs)
    for entry, dtype in zip(outputs, output_types):
        entry["dtype"] = dtype if entry["dtype"] == "float32" else entry["dtype"]
    onnx_inputs = [_input_entry(i.name, shapes[i.name], i.dtype, option, profiles, (2, 3)) for i in inputs]
    board_inputs = [_board_input(entry, flags, aipp if index == _aipp_rank(aipp) else None, fp16_inputs, option,
                                 profiles) for index, entry in enumerate(onnx_inputs)]
    if option:
        count = 1 if option == "dynamic_batch_size" else 2  # one int64 per dynamic value [INFER: the size]
        board_inputs.append({"name": DYNAMIC_TENSOR_NAME, "dims": [count], "dtype": "int64", "format": "ND",
                             "role": "dynamic"})
    meta = {
        "format": "atlas-kd-sim-om",
        "built_by": "atc-sim",
        "model_name": Path(flags["output"]).name,
        "soc_version": flags["soc_version"],
        "precision_mode": precision,
        "framework": 5,
        "source_onnx_sha256": hashlib.sha256(Path(model_path).read_bytes()).hexdigest(),
        "options": {k: v for k, v in sorted(flags.items()) if k not in NOT_RECORDED},
        "inputs": board_inputs,
        "onnx_inputs": onnx_inputs,
        "outputs": outputs,
        "aipp": aipp,
        "dynamic": {"kind": "batch" if option == "dynamic_batch_size" else "hw", "profiles": profiles} if option
        else None,
        "fp16": {"weights": round_weights, "activations": round_activations},
        "int8": {"layers": quant_ops.quantized_layers(model)} if int8 else None,
        "no_effect_options": sorted(k for k in flags if k in NO_NUMERIC_EFFECT),
    }
    om_path = Path(flags["output"] + ".om")
    try:
        write_bytes(om_path, om_container.pack(meta, payload.SerializeToString(deterministic=True)))
    except OSError as e:
        raise AtcFailure([AtcError("E13002", f"Failed to write the model to {om_path}: {e.strerror or e}.")]) from None
    return om_path, meta


def _aipp(flags: dict[str, str], inputs: list[OnnxInput], shapes: dict[str, list[int]]) -> dict | None:
    """The one static aipp_op block atc-sim emulates (crop, CSC and padding included), checked against the model
    input it feeds (E10001, E10052, and the AIPP kernel's E81012: atlas/aipp.py)."""
    from atlas.aipp import AippConfigError, check_aipp_matches_model, read_insert_op_cfg

    if not flags.get("insert_op_conf"):
        return None
    try:
        blocks = read_insert_op_cfg(flags["insert_op_conf"])
        if len(blocks) != 1 or not 0 <= blocks[0].get("related_input_rank", 0) < len(inputs):
            raise AippConfigError("E10001", "Value for parameter --insert_op_conf is invalid. Reason: atc-sim "
                                            f"emulates one aipp_op block for one of the model's {len(inputs)} "
                                            "input(s) (related_input_rank)")
        aipp = blocks[0]
        if aipp["aipp_mode"] != "static":
            raise AippConfigError("E10001", f"Value aipp_mode: {aipp['aipp_mode']} in --insert_op_conf is "
                                            f"invalid. Reason: {NOT_EMULATED}")
        check_aipp_matches_model(aipp, shapes[inputs[_aipp_rank(aipp)].name])
    except AippConfigError as e:
        raise AtcFailure([AtcError(e.code, e.message)]) from None
    return aipp


def _aipp_rank(aipp: dict | None) -> int | None:
    """The model input AIPP feeds (None: no AIPP)."""
    return None if aipp is None else int(aipp.get("related_input_rank", 0))


def _fp16_inputs(flags: dict[str, str], model, inputs: list[OnnxInput], aipp: dict | None) -> set[str]:
    """--input_fp16_nodes: graph inputs fed as float16 (GE5 session/omg.cc: E10016 no such node, E10017 not an
    input; E10034 an input AIPP feeds)."""
    names = [n.strip() for n in flags.get("input_fp16_nodes", "").split(";") if n.strip()]
    by_name = {i.name for i in inputs}
    for name in names:
        if name not in by_name:
            code = "E10017" if any(node.name == name for node in model.graph.node) else "E10016"
            what = "is not an input of the model" if code == "E10017" else "is not found in the model"
            raise AtcFailure([AtcError(code, f"Opname [{name}] specified in [--input_fp16_nodes] {what}.")])
        if aipp is not None and name == inputs[_aipp_rank(aipp)].name:
            raise AtcFailure([AtcError("E10034", f"Nodes (for example, {name}) connected to AIPP must not be of "
                                                 "type fp16.")])
    return set(names)


def _fix_input_dims(model, shapes: dict[str, list[int]], option: str | None) -> None:
    """--input_shape fixes the payload's input dims; a dynamic axis keeps a symbolic dim."""
    symbols = {0: "batch", 2: "height", 3: "width"}
    for value in model.graph.input:
        if value.name in shapes:
            for axis, (dim, size) in enumerate(zip(value.type.tensor_type.shape.dim, shapes[value.name])):
                dim.Clear()
                if size == -1:
                    dim.dim_param = symbols.get(axis, f"dim{axis}")
                else:
                    dim.dim_value = size


def _profile_dims(dims: list[int], option: str | None, profile, axes) -> list[int]:
    """`dims` with the dynamic axes set to one profile (a batch, or [h, w] on `axes`)."""
    values = [profile] if option == "dynamic_batch_size" else list(profile)
    where = [0] if option == "dynamic_batch_size" else list(axes)
    fixed = list(dims)
    for axis, value in zip(where, values):
        fixed[axis] = value
    return fixed


def _input_entry(name: str, dims: list[int], dtype: str, option, profiles, hw_axes) -> dict:
    """A metadata input: the largest profile's dims, with the axes and dims of each profile when dynamic."""
    entry = {"name": name, "dims": list(dims), "dtype": dtype}
    if -1 in dims:
        per_profile = [_profile_dims(dims, option, p, hw_axes) for p in profiles]
        entry.update(dims=max(per_profile, key=_elements), dynamic_axes=[a for a, d in enumerate(dims) if d == -1],
                     profile_dims=per_profile)
    return entry


def _elements(dims: list[int]) -> int:
    count = 1
    for d in dims:
        count *= d
    return count


def _board_input(entry: dict, flags: dict[str, str], aipp, fp16_inputs: set[str], option, profiles) -> dict:
    """What the board feeds for one ONNX input: uint8 NHWC with AIPP (spec §6), float16 with --input_fp16_nodes."""
    if aipp is None:
        fmt = flags.get("input_format") or ("NCHW" if len(entry["dims"]) == 4 else "ND")
        dtype = "float16" if entry["name"] in fp16_inputs else entry["dtype"]
        return {**entry, "dtype": dtype, "format": fmt}
    from atlas.aipp import YUV420SP, source_size

    n, c, h, w = _nchw_with_dynamic(entry)  # §6: AIPP turns the fed input into uint8 NHWC of the source size
    src_h, src_w = source_size(aipp, h, w)
    board = _input_entry(entry["name"], [n, src_h, src_w, c], "uint8", option, profiles, (1, 2)) | {"format": "NHWC"}
    if aipp.get("input_format") == YUV420SP:
        # the same dims, h*w*3/2 bytes a picture (TBE aipp.py L247-249 input_offset C*h*w/2) [INFER: the dims]
        board["aipp_format"] = YUV420SP
    return board


def _nchw_with_dynamic(entry: dict) -> list[int]:
    """The NCHW dims of an input entry with -1 back on its dynamic axes."""
    axes = entry.get("dynamic_axes", [])
    return [-1 if a in axes else d for a, d in enumerate(entry["dims"])]


def _select_outputs(model, out_nodes: list[tuple[str, int]], shapes, profiles, option) -> list[dict]:
    """The .om's outputs: the graph's, or the --out_nodes node outputs in their order (GE5 omg.cc SetOutputNodeInfo:
    E10016 no such node, E10003 no such output index), each with its dims per profile from shape inference."""
    import onnx

    if out_nodes:
        nodes = {node.name: node for node in model.graph.node if node.name}
        tensors = []
        for name, index in out_nodes:
            if name not in nodes:
                raise AtcFailure([AtcError("E10016", f"Opname [{name}] specified in [--out_nodes] is not found in "
                                                     "the model.")])
            if index >= len(nodes[name].output):
                raise AtcFailure([AtcError("E10003", f"Value {name} for parameter --out_nodes is invalid. Reason: "
                                                     f"output index:{index} must be smaller than output size:"
                                                     f"{len(nodes[name].output)} and can not be negative!")])
            tensors.append(nodes[name].output[index])
        inferred = _infer(model, {k: [max(d, 1) for d in v] for k, v in shapes.items()})
        types = {vi.name: vi.type.tensor_type.elem_type for vi in
                 list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
        del model.graph.output[:]
        model.graph.output.extend(onnx.helper.make_tensor_value_info(t, types.get(t, onnx.TensorProto.FLOAT), None)
                                  for t in tensors)
    entries = [{"name": o.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type).name}
               for o in model.graph.output]
    for entry, (name, index) in zip(entries, out_nodes):
        entry.update(node=name, node_output=index)  # where each output came from: the --out_nodes mapping
    runs = [{k: _profile_dims(v, option, p, (2, 3)) if -1 in v else v for k, v in shapes.items()}
            for p in profiles] or [shapes]
    per_run = [_output_dims(model, fixed) for fixed in runs]
    for i, entry in enumerate(entries):
        dims = [run[i] for run in per_run]
        entry["dims"] = max(dims, key=_elements)
        if option:
            entry["profile_dims"] = dims
    return entries


def _infer(model, fixed: dict[str, list[int]]):
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(quant_ops.float_view(model))  # shape inference knows no Ascend quant op
    for value in probe.graph.input:
        if value.name in fixed:
            for dim, size in zip(value.type.tensor_type.shape.dim, fixed[value.name]):
                dim.Clear()
                dim.dim_value = size
    return onnx.shape_inference.infer_shapes(probe)


def _output_dims(model, fixed: dict[str, list[int]]) -> list[list[int]]:
    """Each graph output's dims with the inputs fixed to `fixed`; E19999 when shape inference cannot tell."""
    inferred = _infer(model, fixed)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    result = []
    for output in model.graph.output:
        vi = known.get(output.name)
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim] if vi else [-1]
        if -1 in dims or not vi.type.tensor_type.HasField("shape"):
            raise AtcFailure([AtcError("E19999", "Unknown error occurred. Please check the log.",
                                       [f"PossibleCause: atc-sim cannot tell the dims of output {output.name} for "
                                        f"inputs {fixed} (ONNX shape inference)"])])
        result.append(dims)
    return result


def _output_dtypes(output_type, outputs: list[dict]) -> list[str]:
    """The numpy dtype of each .om output: --output_type for all, per output, or the model's own (FP32)."""
    if isinstance(output_type, str):
        return [OUTPUT_TYPES[output_type]] * len(outputs)
    return [OUTPUT_TYPES[output_type.get((o.get("node"), o.get("node_output")), "FP32")] for o in outputs]


# --- main --------------------------------------------------------------------------------------------------

def _fail(errors: list[AtcError]) -> int:
    print(FAILURE_LINE)
    for i, error in enumerate(errors):
        lines = error.lines()
        if i == 0:
            print("\n".join(lines))
            if len(errors) > 1:
                print(CONTINUATION + "TraceBack (most recent call last):")
        else:
            print("\n".join(CONTINUATION + line for line in lines))
    sys.stdout.flush()
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    full_argv = list(sys.argv) if argv is None else ["atc-sim", *argv]
    argv = full_argv[1:]
    print(START_LINE, flush=True)
    try:
        flags = parse_flags(argv)
    except FlagError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return EXIT_FLAGS
    if any(flags.get(h, "false").lower() in ("true", "1", "yes", "t", "y") for h in HELP_FLAGS):
        print(usage())
        return EXIT_FLAGS  # gflags --help exits 1 on 5.x [INFER] (§3)
    if "version" in flags:
        print("atc-sim (atlas-kd board-free stand-in for ATC of CANN 5.x)")
        return 0
    log = flags.get("log", "null")
    if log not in LOG_LEVELS:
        print(f"E10010: invalid value for --log:{log}, only support debug, info, warning, error, null")  # §3, 5.x
        print(FAILURE_LINE)
        return EXIT_FAILED
    errors = check_flags(flags)
    if errors:
        return _fail(errors)
    try:
        build(flags)
    except AtcFailure as e:
        return _fail(e.errors)
    print(SUCCESS_LINE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
