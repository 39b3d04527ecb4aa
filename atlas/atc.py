"""ATC, the Ascend model converter: find it, set up its environment, build its command, run it, read its log.

Facts come from spec/atc.md; section numbers below refer to it. The same runner and parser serve the real
`atc` and the board-free stand-in `atc-sim`, so the sim route exercises this code too.
"""
from __future__ import annotations

import codecs
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

from atlas.atc_rules import DYNAMIC_OPTIONS, dynamic_axes
from atlas.errors import UserError

# --- the lines ATC prints (§3; GE5 main(), all on stdout) -------------------------------------------------
START_LINE = "ATC start working now, please wait for a moment."
SUCCESS_LINE = "ATC run success, welcome to the next use."
FAILURE_LINE = "ATC run failed, Please check the detail log, Try 'atc --help' for more information"
CONTINUATION = " " * 8  # error-block continuation lines are indented 8 spaces (§3)

# §3: search, don't anchor (newer ATC may add a prefix). The look-behind keeps "XE10001:" inside a word out.
CODE_RE = re.compile(r"(?<![0-9A-Za-z])([EW][0-9A-Z]\d{4}): (.*)")
# §1: the opset-too-new signature, one line per failing node
OPSET_RE = re.compile(r"E(?:19|Z9)010: No parser is registered for Op \[(.*?), optype \[([^:]*)::(\d+)::(\w+)\]\]")

TOOLKIT_ROOTS = ("/usr/local/Ascend/ascend-toolkit/latest",)
# set_env.sh locations besides the ones found next to the toolkit (§3 Environment; the DK's user install)
SET_ENV_SCRIPTS = ("/usr/local/Ascend/ascend-toolkit/set_env.sh", "/home/HwHiAiUser/Ascend/ascend-toolkit/set_env.sh")

INSTALL_HINT = ("no ATC found (looked at --atc / om.atc, PATH, $ASCEND_TOOLKIT_HOME/bin/atc, "
                "/usr/local/Ascend/ascend-toolkit/latest/bin/atc): install the CANN toolkit (5.x, at most the board's "
                "version) and `source <install>/ascend-toolkit/set_env.sh`, pass --atc PATH, or run with SIM=1 "
                "(`atlas-kd om --sim`) for a board-free rehearsal with atc-sim")


# --- error codes: explanation and fix hint for every code or family in the §4 table ---------------------

def _table() -> dict[str, tuple[str, str]]:
    rows: list[tuple[str, str, str]] = [
        ("E10001", "a parameter has an invalid value (bad --mode or --input_format, or AIPP with --dynamic_dims)",
         "fix the value named in the message; ONNX takes --input_format NCHW, ND or NCDHW"),
        ("E10002", "--input_shape is malformed (each input must be 'name:d1,d2,...', inputs joined by ';')",
         'write it as --input_shape="input:1,1,28,28"'),
        ("E10004", "a required option is empty (--model or --output, or --om/--json in modes 1 and 6)",
         "pass the missing option"),
        ("E10007", "--framework is missing or not 0, 1, 3 or 5", "pass --framework=5 for ONNX"),
        ("E10009", "dynamic-shape options are mutually exclusive", "keep only one dynamic option"),
        ("E10010", "--log has an invalid value", "use --log=debug, info, warning, error or null"),
        ("E10011", "--input_shape values must be positive integers (-1 only with a dynamic option)",
         "give a fixed positive size for every dimension"),
        ("E10016", "an input name given in --input_shape (or another option) is not an input of the model",
         "use the ONNX input name (atlas-kd reads it from the model; see `atlas-kd lint`)"),
        ("E10012,E10018-E10020,E10031,E10035-E10040,E10045,E10046,E10048",
         "dynamic-shape profile error (only N or only H,W may be -1, 2..100 profiles, no '~')",
         "atlas-kd builds static-shape models: drop the dynamic options"),
        ("E10003", "an argument has an invalid value", "fix the argument named in the message"),
        ("E10005,E10006,E10008,E10013,E10014,E10017,E10021",
         # §4 lists these together: true/false or 1/0 expected, --weight for Caffe, out of range, not a Data op,
         # path too long; which code is which is not given, so we do not pretend to know [INFER]
         "an argument check failed (a true/false or 1/0 value, --weight for Caffe, a value out of range, "
         "a node that is not a Data op, or a path that is too long)", "fix the argument named in the message"),
        ("E10022", "--output has no file name (e.g. it ends with '/')", "give --output a base name without .om"),
        ("E10023-E10030,E10401-E10406", "--singleop problem", "atlas-kd does not use --singleop"),
        ("E10032", "a JSON input file could not be parsed", "fix the JSON file named in the message"),
        ("E10034", "a node connected to AIPP is listed in --input_fp16_nodes (AIPP feeds uint8)",
         "drop that input from --input_fp16_nodes"),
        ("E10041", "the model file could not be loaded (corrupt, larger than 2 GB, or not the --framework given)",
         "re-export the ONNX (atlas-kd export) and check --framework=5"),
        ("E10044", "less than 2 GB of free memory (5.x checks it only with --auto_tune_mode)", "free memory"),
        ("E10047", "two options that are mutually exclusive were given", "drop one of them"),
        ("E10049", "the number of dims in --input_shape differs from the model's input",
         "give as many dims as the ONNX input has (atlas-kd reads them from the model)"),
        ("E10050", "an --input_shape dimension is out of range", "fix --input_shape"),
        ("E10052", "the AIPP configuration is invalid", "fix insert_op.cfg (see spec §6), or rebuild without --aipp"),
        ("E10054-E10063", "an option value is empty, unquoted or unsupported, two options conflict, or one needs "
                          "another (E10057), or a stage/API failed", "quote option values; read the detail log"),
        ("E10410", "the --keep_dtype file is missing", "fix the path"),
        ("E10501", "operator IR not registered: the op plugins were not found",
         "set ASCEND_OPP_PATH (source set_env.sh of the CANN toolkit)"),
        ("E11017", "a node named by --out_nodes does not exist (after fusion)", "name a node that exists"),
        ("E13000-E13004,E13026", "a path is empty or a file could not be opened, read or written",
         "check the paths and permissions"),
        ("E13005", "a file could not be parsed", "re-export the model; check the protobuf version"),
        ("E13009,E13014,E13015,E13023,E13024",
         "duplicate op name, bad op parameter, file size limit, .om too large, or a bad environment variable",
         "re-export the model; check the CANN environment"),
        ("E13010", "no operator plugin is registered for an op", "check the OPP install and the supported-op list"),
        ("E13018", "the AIPP config file has a syntax error", "fix the syntax of insert_op.cfg (protobuf text)"),
        ("E14001", "an operator argument is invalid", "run `atlas-kd lint` on the model and fix what it reports"),
        ("E16001,E16004", "the ONNX model has no input/output node, or no graph",
         "re-export the model and check it with onnx.checker"),
        ("E16002", "no ONNX parser is registered for an op type", "replace the op, or export with opset 11"),
        ("E16005", "the model has several default-domain opset versions (old parser)", "keep one default opset"),
        ("E19010,EZ9010", "no parser is registered for an op at this opset", "export with opset 11"),
        ("E19999", "internal error, or the opset of a domain has no matching version",
         "read the detail log; check the OPP and the .om match the CANN version"),
        ("W11001,W11002,W11003", "an op does not hit the high-priority operator library (performance only)",
         "nothing to fix; informational"),
        ("EZ3002", "an op's dtype, format or attribute is outside what its kernel supports",
         "run `atlas-kd lint`; change the op's dtype or attributes"),
        ("EZ3003", "no kernel or engine supports an op", "replace the op; check the OPP install"),
        ("EZ9999", "internal error", "read the detail log (plog)"),
        ("E40021", "TBE failed to compile an op", "read the plog and the Python stack in it"),
        ("E40000,EC0010", "a Python import failed in the op compiler (TBE)",
         "source set_env.sh so PYTHONPATH has the TBE packages; check the Python version CANN needs"),
        ("EB0000,EB0500", "a TBE pass failed", "read the detail log (plog)"),
    ]
    table: dict[str, tuple[str, str]] = {}
    for codes, explanation, hint in rows:
        for code in _expand_codes(codes):
            table[code] = (explanation, hint)
    return table


def _expand_codes(spec: str) -> list[str]:
    codes = []
    for part in spec.split(","):
        if "-" in part:
            first, last = part.split("-")
            prefix = first[:2] if first[1].isalpha() else first[:1]
            codes += [f"{prefix}{n:0{len(first) - len(prefix)}d}" for n in range(int(first[len(prefix):]),
                                                                                   int(last[len(prefix):]) + 1)]
        else:
            codes.append(part)
    return codes


ERROR_TABLE = _table()


class AtcFailed(UserError):
    """ATC ran and failed: the message is the explained first error; `raw_lines` are ATC's own lines."""

    def __init__(self, message: str, raw_lines: Sequence[str] = (), exit_code: int = 1):
        super().__init__(message, exit_code=exit_code)
        self.raw_lines = list(raw_lines)


@dataclass
class AtcMessage:
    """One `CODE: message` line from ATC, with our explanation and fix hint (None for codes we do not know)."""

    code: str
    message: str
    explanation: str | None
    hint: str | None
    details: list[str] = field(default_factory=list)  # PossibleCause / Solution lines of its block

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "explanation": self.explanation, "hint": self.hint,
                "details": self.details}

    def one_line(self) -> str:
        if self.explanation is None:
            return f"{self.code}: {self.message} (a code atlas-kd does not know; read the detail log)"
        return f"{self.code}: {self.explanation} ({self.message.rstrip('.')}); fix: {self.hint}"


def explain(code: str, message: str) -> AtcMessage:
    """Attach the explanation and hint for `code`; the opset signature (§1) gets its own."""
    m = OPSET_RE.search(f"{code}: {message}")
    if m:
        node, domain, opset, op_type = m.groups()
        if opset != "11":
            return AtcMessage(code, message, f"ATC has no parser for {domain}::{opset}::{op_type} (node {node}): the model "
                                             f"is at opset {opset}, and this ATC parses opset 11, so every node fails",
                              "re-export with opset 11 (atlas-kd export --export-opset 11)")
        return AtcMessage(code, message, f"ATC has no parser for {op_type} at opset 11 (node {node}): the op is not "
                                         "supported", "replace the op (run `atlas-kd lint` for the supported list)")
    explanation, hint = ERROR_TABLE.get(code, (None, None))
    return AtcMessage(code, message, explanation, hint)


@dataclass
class AtcLog:
    """What the ATC output says: success line seen, errors and warnings (in order, duplicates dropped)."""

    success_line: bool
    failure_line: bool
    errors: list[AtcMessage]
    warnings: list[AtcMessage]
    error_lines: list[str]  # the raw lines from the failure line on (or the lines with a code), for the user


def parse_atc_output(lines: Iterable[str]) -> AtcLog:
    """Parse ATC's stdout. Lines are matched by substring: TBE prints progress dots without a newline (§3)."""
    lines = [line.rstrip("\r\n") for line in lines]
    errors: list[AtcMessage] = []
    warnings: list[AtcMessage] = []
    seen: set[tuple[str, str]] = set()
    current: AtcMessage | None = None
    success = failure = False
    raw_from = None
    for i, line in enumerate(lines):
        if SUCCESS_LINE in line:
            success = True
        if "ATC run failed" in line:
            failure = True
            raw_from = i if raw_from is None else raw_from
        m = CODE_RE.search(line)
        if m:
            code, message = m.group(1), m.group(2).strip()
            if (code, message) in seen:
                current = None
                continue
            seen.add((code, message))
            current = explain(code, message)
            (warnings if code.startswith("W") else errors).append(current)
            if raw_from is None and not code.startswith("W"):
                raw_from = i
        elif current is not None and line.startswith(CONTINUATION):
            detail = line.strip()
            if detail.startswith(("PossibleCause:", "Solution:")):
                current.details.append(detail)
        elif current is not None and line.strip():
            current = None
    error_lines = [line for line in lines[raw_from:] if line.strip()] if raw_from is not None else []
    return AtcLog(success, failure, errors, warnings, error_lines)


# --- finding ATC and its environment (§3 Environment) ---------------------------------------------------

def find_atc(explicit: str | None = None, environ: dict[str, str] | None = None,
             toolkit_roots: Sequence[str] | None = None) -> Path:
    """The `atc` to run: `explicit` (--atc / om.atc), then PATH, then $ASCEND_TOOLKIT_HOME/bin/atc, then the
    default install. Raises UserError (exit 2) with how to install CANN or use --sim; never falls back to atc-sim."""
    environ = os.environ if environ is None else environ
    toolkit_roots = TOOLKIT_ROOTS if toolkit_roots is None else toolkit_roots
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"--atc {explicit}: no such file (give the path of the CANN toolkit's atc, or use --sim)")
        if not os.access(path, os.X_OK):
            raise UserError(f"--atc {explicit}: not executable (chmod +x, or give the toolkit's bin/atc)")
        return path
    on_path = shutil.which("atc", path=environ.get("PATH", os.defpath))
    if on_path:
        return Path(on_path)
    roots = ([environ["ASCEND_TOOLKIT_HOME"]] if environ.get("ASCEND_TOOLKIT_HOME") else []) + list(toolkit_roots)
    for root in roots:
        # 5.x keeps atc in bin/; the 5.0-era manual layout has atc/bin/ (§3)
        for candidate in (Path(root) / "bin" / "atc", Path(root) / "atc" / "bin" / "atc"):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    raise UserError(INSTALL_HINT)


def find_set_env(atc: Path, scripts: Sequence[str] | None = None) -> Path | None:
    """CANN's set_env.sh for this atc: the nearest one above it (ascend-toolkit/set_env.sh), else a known place."""
    resolved = Path(atc).resolve()
    for parent in list(resolved.parents)[:5]:
        candidate = parent / "set_env.sh"
        if candidate.is_file():
            return candidate
    for script in SET_ENV_SCRIPTS if scripts is None else scripts:
        if Path(script).is_file():
            return Path(script)
    return None


def atc_environment(atc: Path, base_env: dict[str, str] | None = None,
                    scripts: Sequence[str] | None = None) -> tuple[dict[str, str], Path | None]:
    """The environment `atc` needs: what set_env.sh exports, sourced in a bash subshell (so the user need not).

    Returns (env, script used or None). Without a set_env.sh the current environment is used as is.
    """
    env = dict(os.environ if base_env is None else base_env)
    script = find_set_env(atc, scripts)
    if script is None:
        return env, None
    # set_env.sh may print; send that to stderr so stdout carries only `env -0`
    cmd = ["bash", "-c", '. "$1" >&2 && env -0', "_", str(script)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"cannot source {script}: {e}") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise UserError(f"sourcing {script} failed (exit {done.returncode}): {tail[0]}")
    sourced = {}
    for item in done.stdout.split(b"\0"):
        if b"=" in item:
            key, _, value = item.partition(b"=")
            sourced[key.decode(errors="replace")] = value.decode(errors="replace")
    return sourced, script


def sim_atc_argv() -> list[str]:
    """How to start atc-sim: the console script next to this Python, else `python -m atlas.sim.atc_sim`."""
    script = Path(sys.executable).parent / "atc-sim"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "atlas.sim.atc_sim"]


# --- the command (§2) --------------------------------------------------------------------------------------

@dataclass
class OnnxInput:
    name: str
    dims: list[int]
    dtype: str


def graph_inputs(model) -> list[OnnxInput]:
    """A loaded ONNX model's graph inputs (initializers excluded), -1 for a dynamic dim."""
    from onnx.helper import tensor_dtype_to_np_dtype

    initializers = {t.name for t in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim]
        dtype = tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "undefined"
        inputs.append(OnnxInput(value.name, dims, dtype))
    return inputs


def read_onnx_inputs(onnx_path: str | Path) -> list[OnnxInput]:
    """The graph inputs of an ONNX file; a missing or unreadable file is a UserError."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except FileNotFoundError:
        raise UserError(f"{onnx_path}: ONNX model not found") from None
    except Exception as e:  # onnx raises DecodeError, ValueError, OSError... for a damaged file
        raise UserError(f"{onnx_path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    inputs = graph_inputs(model)
    if not inputs:
        raise UserError(f"{onnx_path}: the model has no graph input")
    return inputs


def input_shape_arg(inputs: Sequence[OnnxInput]) -> str:
    """`name:d1,d2;name2:...` (§2.2; a scalar is `name:`)."""
    return ";".join(f"{i.name}:{','.join(str(d) for d in i.dims)}" for i in inputs)


def input_format_for(inputs: Sequence[OnnxInput]) -> str:
    """NCHW for 4-D image inputs, NCDHW for 5-D, ND otherwise (the ONNX values ATC accepts, §2.2)."""
    ranks = {len(i.dims) for i in inputs}
    if ranks == {4}:
        return "NCHW"
    if ranks == {5}:
        return "NCDHW"
    return "ND"


def option_name(arg: str) -> str | None:
    """The normalised flag name of `--opt=value` / `-opt` (gflags: `-` and `_` are interchangeable), else None."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    return arg.lstrip("-").split("=", 1)[0].replace("-", "_")


def build_atc_command(onnx_path: str | Path, output: str | Path, *, atc: str | Sequence[str] = "atc",
                      soc_version: str = "Ascend310", precision_mode: str = "force_fp16", log: str = "error",
                      insert_op_conf: str | Path | None = None, extra: Sequence[str] = (),
                      inputs: Sequence[OnnxInput] | None = None) -> list[str]:
    """The ATC command as a list of words, `--opt=value` form.

    `output` is the base name without `.om` (ATC appends it, §2.1). `--input_shape` and `--input_format` come
    from the ONNX itself (or `inputs`). An `extra` option with the name of one we emit replaces ours in place;
    other extra words are appended verbatim.
    """
    if str(output).endswith(".om"):
        raise UserError(f"--output {output}: give the base name without .om (ATC appends .om itself)")
    if inputs is None:
        inputs = read_onnx_inputs(onnx_path)
    _check_dynamic_inputs(onnx_path, inputs, {option_name(w) for w in extra})
    argv = [atc] if isinstance(atc, str) else list(atc)
    options = [
        f"--model={onnx_path}",
        "--framework=5",
        f"--output={output}",
        f"--soc_version={soc_version}",
        f"--input_shape={input_shape_arg(inputs)}",
        f"--input_format={input_format_for(inputs)}",
    ]
    if precision_mode:
        options.append(f"--precision_mode={precision_mode}")
    if log:
        options.append(f"--log={log}")
    if insert_op_conf is not None:
        options.append(f"--insert_op_conf={insert_op_conf}")
    names = [option_name(o) for o in options]
    managed = [w for w in extra if option_name(w) in ("model", "output")]
    if managed:
        raise UserError(f"{managed[0]}: atlas-kd sets --model and --output itself (the .om is built from the "
                        "run's ONNX into <run>/model.om); drop this ATC option, or use --onnx / --run to choose them")
    for word in extra:
        name = option_name(word)
        if name is not None and name in names and "=" in word:
            options[names.index(name)] = word
        else:
            options.append(word)
    return argv + options


def dynamic_option(extra: Sequence[str]) -> str | None:
    """The dynamic-shape option (dynamic_batch_size, dynamic_image_size) among extra ATC options, if any."""
    names = {option_name(word) for word in extra}
    return next((name for name in DYNAMIC_OPTIONS if name in names), None)


def _check_dynamic_inputs(onnx_path, inputs: Sequence[OnnxInput], options: set[str | None]) -> None:
    """A -1 dim needs --input_shape to fix it, or a dynamic option whose axes it is (atc_rules.dynamic_axes): then
    --input_shape keeps the -1 there, as ATC takes it (spec §2.2)."""
    if "input_shape" in options:
        return
    option = next((name for name in DYNAMIC_OPTIONS if name in options), None)  # = dynamic_option, on names
    for item in inputs:
        axes = [axis for axis, d in enumerate(item.dims) if d == -1]
        if axes and (option is None or axes != list(dynamic_axes(option, len(item.dims)))):
            allowed = (f"; --{option} makes only axes {list(dynamic_axes(option, len(item.dims)))} dynamic"
                       if option else "")
            raise UserError(f"{onnx_path}: input '{item.name}' has a dynamic dimension at axes {axes}{allowed}; "
                            f"re-export with a static shape, fix it with --atc-arg=--input_shape={item.name}:1,C,H,W, "
                            "or build a dynamic .om with --atc-arg=--dynamic_batch_size=1,2,4,8")


def rerun_command(cmd: Sequence[str], output: str | Path) -> list[str]:
    """`cmd` with `--output` pointing at `output`: what a user re-runs (we build into a temp folder)."""
    return [f"--output={output}" if option_name(w) == "output" else w for w in cmd]


# --- running it ---------------------------------------------------------------------------------------------

@dataclass
class AtcRun:
    command: list[str]
    exit_code: int | None  # None when killed at the timeout
    duration_s: float
    timed_out: bool
    timeout_s: float
    log: AtcLog
    detail_log: str | None
    output_lines: list[str]


def detail_log_dir(env: dict[str, str]) -> Path:
    """Where ATC's plogs go: ASCEND_PROCESS_LOG_PATH > ASCEND_WORK_PATH > $HOME/ascend/log (§3)."""
    for key in ("ASCEND_PROCESS_LOG_PATH", "ASCEND_WORK_PATH"):
        if env.get(key):
            return Path(env[key])
    return Path(env.get("HOME") or Path.home()) / "ascend" / "log"


def newest_plog(env: dict[str, str], since: float) -> str:
    """The plog written by this run when there is one (debug/plog/plog-<pid>_<ts>.log), else the log folder."""
    base = detail_log_dir(env)
    candidates = []
    for sub in ("debug/plog", "run/plog"):
        folder = base / sub
        if folder.is_dir():
            candidates += [p for p in folder.glob("plog-*.log") if p.stat().st_mtime >= since - 1]
    if candidates:
        return str(max(candidates, key=lambda p: p.stat().st_mtime))
    return str(base / "debug" / "plog")


def run_atc(cmd: Sequence[str], env: dict[str, str] | None, timeout_s: float, log_path: str | Path,
            cwd: str | Path | None = None, echo: TextIO | None = None, detail_log: bool = True) -> AtcRun:
    """Run ATC, streaming its output to `log_path` (and to `echo`), then parse it.

    On timeout the whole process group is killed. Output is read in chunks, not lines: TBE prints progress
    dots without a newline.
    """
    env = dict(os.environ if env is None else env)
    started_wall = time.time()
    started = time.monotonic()
    chunks: list[bytes] = []
    try:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
    except OSError as e:
        raise UserError(f"cannot start {cmd[0]}: {e.strerror or e}") from None
    log_file = open(log_path, "wb")

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a chunk may end mid-character

    def pump() -> None:
        assert proc.stdout is not None
        try:
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                chunks.append(chunk)
                log_file.write(chunk)
                log_file.flush()
                if echo is not None:
                    echo.write(decoder.decode(chunk))
                    echo.flush()
        except (OSError, ValueError):  # the log was closed under us: a grandchild outlived the kill
            return

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        exit_code: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        exit_code = None
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        reader.join(timeout=5)
        log_file.close()
    duration = time.monotonic() - started
    lines = b"".join(chunks).decode(errors="replace").splitlines()
    parsed = parse_atc_output(lines)
    plog = newest_plog(env, started_wall) if detail_log else None
    return AtcRun(list(cmd), exit_code, round(duration, 3), timed_out, timeout_s, parsed, plog, lines)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group ATC runs in (it spawns compilers), SIGKILL what is left after 3 s."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_succeeded(run: AtcRun, om_path: Path) -> bool:
    """§3: success only with exit 0, the success line, and the .om on disk."""
    return run.exit_code == 0 and run.log.success_line and om_path.is_file() and om_path.stat().st_size > 0


def failure_summary(run: AtcRun, om_path: Path, tool: str) -> str:
    """One line that says why the run failed, the first explained error first."""
    if run.timed_out:
        return (f"{tool} did not finish within {run.timeout_s:g} s and was stopped (no .om written); raise "
                f"--timeout (om.timeout_s) or read atc.log and the detail log")
    if run.log.errors:
        first = run.log.errors[0]
        more = f" (+{len(run.log.errors) - 1} more, see atc.json)" if len(run.log.errors) > 1 else ""
        return f"{tool} failed with {first.one_line()}{more}"
    if run.exit_code != 0:
        return f"{tool} exited with status {run.exit_code} without an error code; read atc.log and the detail log"
    if not run.log.success_line:
        return f"{tool} exited 0 but never printed '{SUCCESS_LINE}'; read atc.log"
    return f"{tool} reported success but wrote no {om_path.name}; read atc.log"


def command_line(cmd: Sequence[str]) -> str:
    return shlex.join(list(cmd))


@dataclass
class Conversion:
    """What one ATC run left, wherever it ran: its parsed run, the .om it wrote (None when the build failed),
    how to run it again, the environment script, and the board it ran on (None: this machine)."""

    result: AtcRun
    om_path: Path | None
    tool: str
    rerun: list[str]
    env_script: str | None
    board: str | None = None
    remote_dir: str | None = None
