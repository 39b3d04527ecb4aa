"""`atc-sim`: a board-free stand-in for ATC (never named `atc`), for rehearsals without the CANN toolkit.

Same command line as the real ATC for what atlas-kd uses, parsed gflags-style (spec/atc.md §2.1), checked the
way the spec says ATC checks it, with the same output lines, error blocks, codes and exit status (§3, §4).
It runs atlas-kd's lint and fails on lint errors the way ATC would. On success it writes `<--output>.om`: a
simulated .om (atlas/sim/sim_om.py, its own magic, never `IMOD`) holding the model prepared for float16
execution (atlas/sim/fp16.py), the AIPP settings and metadata. Options it does not emulate are refused, not
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
from atlas.atc_rules import (ATC_5X_FLAGS, LOG_LEVELS, ONNX_INPUT_FORMATS, PRECISION_MODES, RULES,
                             SOC_VERSIONS_310)

EXIT_FAILED = 255  # domi::FAILED / return -1 (§3)
EXIT_FLAGS = 1  # gflags errors (§2.1)

GFLAGS_BUILTINS = frozenset(("help helpfull helpshort helpmatch helpon helppackage helpxml version flagfile fromenv "
                             "tryfromenv undefok tab_completion_columns tab_completion_word").split())
HELP_FLAGS = frozenset(("help", "h", "helpfull", "helpshort"))
BOOL_FLAGS = HELP_FLAGS | {"version"}  # gflags bools: `--help` takes no value
INT_FLAGS = frozenset(("framework", "mode"))  # int32 in GE5: a non-integer is a gflags error (§2.1)

# What the stand-in does with each accepted flag. Anything else in ATC_5X_FLAGS is refused as not emulated.
IMPLEMENTED = frozenset(("model", "output", "framework", "soc_version", "input_shape", "input_format",
                         "precision_mode", "log", "insert_op_conf", "mode", "output_type"))
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
            "[--insert_op_conf=insert_op.cfg] [--output_type=FP32|FP16] [--log=error]\n"
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
    output_type = flags.get("output_type")
    if output_type is not None and output_type not in ("FP32", "FP16"):
        reason = ("UINT8 outputs and per-node output types are not emulated by atc-sim"
                  if output_type == "UINT8" or ":" in output_type else "only support FP32, FP16, UINT8")
        errors.append(AtcError("E10001", f"Value {output_type} for parameter --output_type is invalid. "
                                         f"Reason: {reason}"))
    if "input_shape" in flags:
        try:
            parse_input_shape(flags["input_shape"])
        except AtcFailure as e:
            errors += e.errors
    for name in sorted(flags):
        if name in IMPLEMENTED or name in NO_NUMERIC_EFFECT or name in HELP_FLAGS:
            continue
        errors.append(AtcError("E10001", f"Value {flags[name]} for parameter --{name} is invalid. Reason: "
                                         f"{NOT_EMULATED}"))
    return errors


def parse_input_shape(text: str) -> dict[str, list[int]]:
    """`name:d1,d2;name2:...` -> {name: dims}; E10002 for the format, E10011 for a dim that is not positive."""
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
        if any(d <= 0 for d in dims):
            raise AtcFailure([AtcError("E10011", f"Value {text} for parameter --input_shape is invalid: the "
                                                 f"dims of {name} must be positive integers (-1 only with a "
                                                 "dynamic-shape option, which atc-sim does not emulate)")])
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


def check_shapes(inputs: list[OnnxInput], requested: dict[str, list[int]]) -> dict[str, list[int]]:
    """The dims each input gets: --input_shape checked against the model (E10016, E10049, E10050 [INFER])."""
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
        elif any(m != -1 and m != d for m, d in zip(model_dims, dims)):
            # A static dim given a different size: the spec names no code; E10050 (dim out of range) is our
            # choice [INFER]. Real ATC may accept it when the graph allows the new shape.
            errors.append(AtcError("E10050", f"The --input_shape dims {dims} of input [{name}] do not match the "
                                             f"model's static dims {model_dims}."))
    if errors:
        raise AtcFailure(errors)
    shapes = {}
    for item in inputs:
        dims = requested.get(item.name, item.dims)
        if -1 in dims:
            raise AtcFailure([AtcError("E10011", f"Value for --input_shape is invalid: input [{item.name}] has a "
                                                 f"dynamic dim {dims} and --input_shape does not fix it.")])
        shapes[item.name] = list(dims)
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

def build(flags: dict[str, str], argv: list[str]) -> tuple[Path, dict[str, Any]]:
    """Check the model against the flags, then write `<output>.om`; raises AtcFailure with ATC-style errors."""
    import onnx

    from atlas.aipp import AippConfigError, check_aipp_matches_model, read_insert_op_cfg
    from atlas.fileio import write_bytes
    from atlas import sim_om
    from atlas.sim.fp16 import PRECISION_NUMERICS, prepare_for_fp16

    model_path = flags["model"]
    model = load_model(model_path)
    inputs = graph_inputs(model)
    requested = parse_input_shape(flags["input_shape"]) if "input_shape" in flags else {}
    shapes = check_shapes(inputs, requested)

    aipp = None
    if flags.get("insert_op_conf"):
        try:
            blocks = read_insert_op_cfg(flags["insert_op_conf"])
            if len(blocks) != 1 or blocks[0].get("related_input_rank", 0) != 0 or len(inputs) != 1:
                raise AippConfigError("E10001", "Value for parameter --insert_op_conf is invalid. Reason: atc-sim "
                                                "emulates one aipp_op block for a single-input model")
            aipp = blocks[0]
            if aipp["aipp_mode"] != "static":
                raise AippConfigError("E10001", f"Value aipp_mode: {aipp['aipp_mode']} in --insert_op_conf is "
                                                f"invalid. Reason: {NOT_EMULATED}")
            if any(aipp.get(k) for k in ("crop", "padding", "csc_switch")):
                raise AippConfigError("E10001", "Value for parameter --insert_op_conf is invalid. Reason: AIPP crop, "
                                                f"padding and CSC: {NOT_EMULATED}")
            check_aipp_matches_model(aipp, shapes[inputs[0].name])
        except AippConfigError as e:
            raise AtcFailure([AtcError(e.code, e.message)]) from None

    errors = lint_errors(model_path, model, set(requested))
    if errors:
        raise AtcFailure(errors)

    precision = flags.get("precision_mode", "force_fp16")
    round_weights, round_activations = PRECISION_NUMERICS[precision]
    output_fp16 = flags.get("output_type") == "FP16"
    for value in model.graph.input:  # --input_shape fixes dynamic dims in the payload too
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                dim.Clear()
                dim.dim_value = size
    payload = prepare_for_fp16(model, weights=round_weights, activations=round_activations, output_fp16=output_fp16)
    payload_bytes = payload.SerializeToString()

    onnx_inputs = [{"name": i.name, "dims": shapes[i.name], "dtype": i.dtype} for i in inputs]
    board_inputs = []
    for item in onnx_inputs:
        fmt = flags.get("input_format") or ("NCHW" if len(item["dims"]) == 4 else "ND")
        if aipp is not None:
            n, c, h, w = item["dims"]  # §6: AIPP turns the fed input into uint8 NHWC
            board_inputs.append({"name": item["name"], "dims": [n, h, w, c], "dtype": "uint8", "format": "NHWC"})
        else:
            board_inputs.append({**item, "format": fmt})
    outputs = []
    for value in payload.graph.output:
        tensor = value.type.tensor_type
        outputs.append({"name": value.name, "dims": [d.dim_value for d in tensor.shape.dim],
                        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name})
    output_base = flags["output"]
    source = Path(model_path)
    meta = {
        "format": "atlas-kd-sim-om",
        "built_by": "atc-sim",
        "model_name": Path(output_base).name,
        "soc_version": flags["soc_version"],
        "precision_mode": precision,
        "framework": 5,
        "source_onnx": str(source.resolve()),
        "source_onnx_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "argv": argv,
        "inputs": board_inputs,
        "onnx_inputs": onnx_inputs,
        "outputs": outputs,
        "aipp": aipp,
        "fp16": {"weights": round_weights, "activations": round_activations},
        "no_effect_options": sorted(k for k in flags if k in NO_NUMERIC_EFFECT),
    }
    om_path = Path(output_base + ".om")
    try:
        write_bytes(om_path, sim_om.pack(meta, payload_bytes))
    except OSError as e:
        raise AtcFailure([AtcError("E13002", f"Failed to write the model to {om_path}: {e.strerror or e}.")]) from None
    return om_path, meta


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
        build(flags, full_argv)
    except AtcFailure as e:
        return _fail(e.errors)
    print(SUCCESS_LINE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
