"""The deploy stage: check the board, push the model, the app and the golden inputs, run the app, fetch the results.

`atlas-kd deploy --board BOARD [--board B2 ...] --run runs/NAME`. On the board everything lives under
`<home>/<remote_dir>/<run name>/` (model.om, app/, inputs.npy, outputs.npy, timing.json). Uploads go through
`BoardSession.put` (temp name, sha256 check on the board, rename; skipped when the board already has the file),
so a second deploy of the same run sends no bytes. Several boards are deployed in parallel, one thread each.
Local results: `runs/NAME/board/` (one board) or `runs/NAME/board/<label>/` (several), and `deploy.json`.
"""
from __future__ import annotations

import argparse
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import atlas.board
from atlas.config import Config, DeployConfig, add_config_arguments, config_from_args
from atlas.errors import UserError
from atlas.fileio import read_json, require_writable, write_json, write_text
from atlas.om_stage import read_export
from atlas.sim import sim_om
from atlas.ssh import BoardSession, add_ssh_arguments, address_from_args

APP_DIR = Path(atlas.board.__file__).resolve().parent
# Files that may only ever be written by the app: removed before each run so a failed run cannot leave
# a previous run's results to be fetched as if they were new.
RESULT_FILES = ("outputs.npy", "timing.json")
_SPACE_MARGIN = 1 << 20  # outputs, timing and the app's own temp files

# Runs on the board's python3 (3.6+), stdlib and numpy/acl only. argv[1] is the target folder.
PREFLIGHT = r'''
import json, os, platform, sys
r = {"python": platform.python_version(), "python_ok": sys.version_info >= (3, 6), "executable": sys.executable}
try:
    import numpy
    r["numpy"] = numpy.__version__
except Exception as e:
    r["numpy"] = None
    r["numpy_error"] = "%s: %s" % (type(e).__name__, e)
try:
    import acl
    r["acl"] = True
    r["acl_sim"] = bool(getattr(acl, "__atlas_kd_sim__", False))
    r["acl_path"] = getattr(acl, "__file__", None)
except Exception as e:
    r["acl"] = False
    r["acl_sim"] = False
    r["acl_error"] = "%s: %s" % (type(e).__name__, e)
p = sys.argv[1]
while not os.path.isdir(p):
    p = os.path.dirname(p) or "/"
st = os.statvfs(p)
r["free_bytes"] = st.f_bavail * st.f_frsize
r["free_checked_at"] = p
r["cann"] = None
homes = [os.environ.get("ASCEND_TOOLKIT_HOME", ""), "/usr/local/Ascend/ascend-toolkit/latest",
         "/home/HwHiAiUser/Ascend/ascend-toolkit/latest"]
names = ["version.cfg", "ascend_toolkit_install.info", "aarch64-linux/ascend_toolkit_install.info",
         "x86_64-linux/ascend_toolkit_install.info"]
for f in [os.path.join(h, n) for h in homes if h for n in names] + ["/usr/local/Ascend/driver/version.info"]:
    try:
        with open(f) as fh:
            lines = [l.strip() for l in fh.read().splitlines() if "version" in l.lower()][:3]
    except (IOError, OSError):
        continue
    r["cann"] = {"file": f, "lines": lines}
    break
print(json.dumps(r))
'''


@dataclass
class Bundle:
    """What goes to every board, read from the run folder once."""

    run_dir: Path
    name: str
    model: Path
    inputs: Path
    app_files: list[Path]
    batch: int
    sim_model: bool
    files: list[tuple[Path, str]] = field(default_factory=list)  # (local, path relative to the remote run folder)

    @property
    def size(self) -> int:
        return sum(local.stat().st_size for local, _ in self.files)


def load_bundle(run_dir: Path, cfg: DeployConfig) -> Bundle:
    if not (run_dir / "export.json").exists():
        raise UserError(f"{run_dir}/export.json not found: run the export stage first (make onnx)")
    export = read_export(run_dir, required=True)
    # checked before the board does any work for nothing
    require_writable([run_dir, run_dir / "board"], "deploy fetches the board's outputs and writes deploy.json there")
    model = run_dir / "model.om"
    if not model.is_file():
        raise UserError(f"{model} not found: build it first (make om, or make om SIM=1 for the sim board)")
    inputs = run_dir / export["board_input"]["path"]
    if not inputs.is_file():
        raise UserError(f"{inputs} not found: run the export stage again (make onnx)")
    atc = read_json(run_dir / "atc.json") if (run_dir / "atc.json").is_file() else None
    built_from = ((atc or {}).get("onnx") or {}).get("sha256") if isinstance(atc, dict) else None
    exported = (export.get("onnx") or {}).get("sha256")
    if built_from and exported and built_from != exported:  # re-exported since: golden/ is not this .om's
        raise UserError(f"{model} was built from another ONNX than the current export (atc.json and export.json "
                        "differ): build it again with make om (SIM=1 for the sim board)")
    with open(model, "rb") as f:
        head = f.read(8)
    if not (sim_om.is_sim_om(head) or sim_om.is_real_om(head)):
        raise UserError(f"{model} is not an offline model (no IMOD or AKDSIMOM magic): rebuild it with make om")
    batch = int(export["input"]["shape"][0])
    if cfg.batch not in (DeployConfig().batch, batch):
        raise UserError(f"deploy.batch {cfg.batch} differs from the model's batch {batch}: an .om runs with the "
                        f"batch it was built with (export again with --export-batch {cfg.batch})")
    if cfg.loop < 1:
        raise UserError(f"deploy.loop must be >= 1 (got {cfg.loop})")
    app_files = sorted(p for p in APP_DIR.glob("*.py") if p.name != "__init__.py")
    bundle = Bundle(run_dir, run_dir.resolve().name, model, inputs, app_files, batch, sim_om.is_sim_om(head))
    bundle.files = [(model, "model.om"), (inputs, "inputs.npy")] + [(p, f"app/{p.name}") for p in app_files]
    return bundle


def board_label(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_") or "board"


def with_env_script(argv: list[str], env_script: str) -> list[str]:
    """Source the CANN environment first, keeping every word of `argv` a separate, quoted argument."""
    if not env_script:
        return argv
    return ["bash", "-c", '. "$1" && shift && exec "$@"', "bash", env_script, *argv]


def preflight(session: BoardSession, target: str, cfg: DeployConfig) -> dict:
    result = session.run(with_env_script([cfg.python, "-c", PREFLIGHT, target], cfg.env_script), check=False)
    if result.exit_status != 0:
        why = (result.stderr.strip().splitlines() or ["no output"])[-1]
        if result.exit_status == 127 or "not found" in why:
            raise UserError(f"board {session.display}: {cfg.python} not found ({why}); install Python 3 "
                            "or set deploy.python")
        raise UserError(f"board {session.display}: preflight failed (exit {result.exit_status}): {why}")
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise UserError(f"board {session.display}: preflight printed no report ({result.stdout[-200:]!r})") from None


def check_preflight(report: dict, bundle: Bundle | None, display: str) -> None:
    """Refuse, in one line, a board that cannot run this bundle."""
    if not report.get("python_ok"):
        raise UserError(f"board {display}: python {report.get('python')} is too old (the app needs 3.6+)")
    if not report.get("numpy"):
        raise UserError(f"board {display}: numpy is not importable ({report.get('numpy_error')}); "
                        "install it on the board (pip3 install numpy)")
    if not report.get("acl"):
        raise UserError(f"board {display}: acl is not importable ({report.get('acl_error')}): source the CANN "
                        "set_env.sh (deploy.env_script) or install pyACL on the board")
    if bundle is None:
        return
    if bundle.sim_model and not report.get("acl_sim"):
        raise UserError(f"board {display}: {bundle.model} is a simulated .om, built by atc-sim, and this board's "
                        "acl is real: build a real .om with make om (ATC) for it")
    if not bundle.sim_model and report.get("acl_sim"):
        raise UserError(f"board {display} is a sim board (pyACL emulator) and {bundle.model} is a real .om: "
                        "the emulator cannot run it; build with make om SIM=1 for a rehearsal")
    needed = bundle.size + _SPACE_MARGIN
    if report.get("free_bytes", 0) < needed:
        raise UserError(f"board {display}: not enough free space in {report.get('free_checked_at')}: the bundle "
                        f"needs {needed / 2**20:.1f} MiB, {report['free_bytes'] / 2**20:.1f} MiB free")


def remote_run_dir(session: BoardSession, cfg: DeployConfig, run_name: str) -> str:
    base = PurePosixPath(cfg.remote_dir)
    if not base.is_absolute():
        base = PurePosixPath(session.home()) / base
    return str(base / run_name)


def board_session(spec: str, cfg: DeployConfig, args: argparse.Namespace, log) -> BoardSession:
    address = address_from_args(spec, args)
    return BoardSession(address, known_hosts=getattr(args, "known_hosts", None) or cfg.known_hosts or None,
                        trust_new_host=getattr(args, "trust_new_host", False),
                        connect_timeout=cfg.connect_timeout_s, retries=cfg.retries, log=log)


def deploy_one(spec: str, bundle: Bundle, cfg: DeployConfig, args: argparse.Namespace, local_dir: Path,
               say) -> dict:
    """Deploy to one board; returns its deploy.json entry (raises UserError on the first problem)."""
    record: dict = {"board": spec, "local_dir": str(local_dir.relative_to(bundle.run_dir)), "uploads": []}
    durations = record["durations_s"] = {}
    t0 = time.perf_counter()
    with board_session(spec, cfg, args, say) as session:
        record["address"] = session.display
        remote = remote_run_dir(session, cfg, bundle.name)
        record["remote_dir"] = remote
        report = preflight(session, remote, cfg)
        record["preflight"] = report
        check_preflight(report, bundle, session.display)
        durations["preflight"] = time.perf_counter() - t0

        t = time.perf_counter()
        for local, relative in bundle.files:
            put = session.put(local, f"{remote}/{relative}", progress=True)
            record["uploads"].append({"file": relative, "remote": put.remote, "sent": put.sent,
                                      "bytes_sent": put.bytes_sent, "bytes": local.stat().st_size,
                                      "sha256": put.sha256, "retries": put.retries})
        record["bytes_sent"] = sum(u["bytes_sent"] for u in record["uploads"])
        record["model_bytes_sent"] = next(u["bytes_sent"] for u in record["uploads"] if u["file"] == "model.om")
        durations["upload"] = time.perf_counter() - t

        t = time.perf_counter()
        session.run(["rm", "-f", *(f"{remote}/{name}" for name in RESULT_FILES)])
        argv = with_env_script([cfg.python, f"{remote}/app/infer.py", "--model", f"{remote}/model.om",
                                 "--input", f"{remote}/inputs.npy", "--output", f"{remote}/outputs.npy",
                                 "--timing", f"{remote}/timing.json", "--batch", str(bundle.batch),
                                 "--loop", str(cfg.loop)], cfg.env_script)
        record["app"] = {"argv": argv}
        lines: list[str] = []

        def output(line: str) -> None:
            lines.append(line)
            say(line)

        result = session.run(argv, check=False, output=output)
        local_dir.mkdir(parents=True, exist_ok=True)
        write_text(local_dir / "log.txt", "\n".join(lines) + ("\n" if lines else ""))
        record["app"]["exit_status"] = result.exit_status
        durations["run"] = time.perf_counter() - t
        if result.exit_status != 0:
            errors = [line for line in lines if "error:" in line] or lines[-1:] or ["no output"]
            raise UserError(f"board {session.display}: the app failed (exit {result.exit_status}): "
                            f"{errors[-1].strip()} (log: {local_dir / 'log.txt'})", exit_code=1)

        t = time.perf_counter()
        for name in RESULT_FILES:
            session.get(f"{remote}/{name}", local_dir / name)
        durations["fetch"] = time.perf_counter() - t
    timing = read_json(local_dir / "timing.json")
    record["timing"] = {k: timing.get(k) for k in ("acl", "run_mode", "model_load_ms", "batch", "loop", "samples",
                                                   "executions", "latency_ms", "throughput_images_per_s")}
    durations["total"] = time.perf_counter() - t0
    record["status"] = "ok"
    return record


def deploy(run_dir: str | Path, cfg: Config, boards: list[str], args: argparse.Namespace) -> dict:
    run_dir = Path(run_dir)
    if not boards:
        raise UserError("no board given: pass --board user@host[:port] (or an ssh alias), or set deploy.boards")
    bundle = load_bundle(run_dir, cfg.deploy)
    labels = [board_label(b) for b in boards]
    if len(set(labels)) != len(labels):
        raise UserError(f"the same board is named twice: {', '.join(boards)}")
    several = len(boards) > 1
    print_lock = threading.Lock()

    def sayer(label: str):
        def say(line: str) -> None:
            with print_lock:
                print(f"[{label}] {line}" if several else line, flush=True)
        return say

    def one(spec: str, label: str) -> dict:
        local_dir = run_dir / "board" / label if several else run_dir / "board"
        try:
            return deploy_one(spec, bundle, cfg.deploy, args, local_dir, sayer(label))
        except UserError as e:
            return {"board": spec, "status": "error", "error": e.message, "exit_code": e.exit_code,
                    "local_dir": str(local_dir.relative_to(run_dir))}

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(boards)) as pool:
        records = list(pool.map(one, boards, labels))
    report = {"run": bundle.name, "model": "model.om", "sim_model": bundle.sim_model, "batch": bundle.batch,
              "loop": cfg.deploy.loop, "bundle_bytes": bundle.size, "wall_s": time.perf_counter() - t0,
              "boards": records, "ok": all(r["status"] == "ok" for r in records)}
    write_json(run_dir / "deploy.json", report)
    print(format_summary(report))
    failures = [r for r in records if r["status"] != "ok"]
    if failures:
        worst = max(r["exit_code"] for r in failures)
        if not several:
            raise UserError(failures[0]["error"], exit_code=worst)
        raise UserError(f"{len(failures)} of {len(records)} boards failed (see above and deploy.json)", exit_code=worst)
    return report


def format_summary(report: dict) -> str:
    lines = [f"deploy of {report['run']} ({'sim' if report['sim_model'] else 'real'} .om, batch {report['batch']}, "
             f"loop {report['loop']}) in {report['wall_s']:.1f} s:"]
    for r in report["boards"]:
        if r["status"] != "ok":
            lines.append(f"  {r['board']}: FAILED: {r['error']}")
            continue
        t, d = r["timing"], r["durations_s"]
        lat = t.get("latency_ms") or {}
        lines.append(f"  {r['address']}: sent {r['bytes_sent']:,} bytes (model {r['model_bytes_sent']:,}); "
                     f"{t.get('samples')} images, execute p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
                     f"{t.get('throughput_images_per_s')} images/s (acl {t.get('acl')}); "
                     f"{d['total']:.1f} s -> {r['local_dir']}/")
    return "\n".join(lines)


def check_board(spec: str, args: argparse.Namespace) -> dict:
    """Connect and run the preflight only (for `atlas-kd doctor --board`)."""
    cfg = DeployConfig()
    with board_session(spec, cfg, args, lambda line: None) as session:
        report = preflight(session, remote_run_dir(session, cfg, "."), cfg)
        check_preflight(report, None, session.display)
        cann = report.get("cann") or {}
        report["board"] = session.display
        report["summary"] = (f"ready: python {report['python']}, numpy {report['numpy']}, acl "
                             f"{'emulator (sim board)' if report['acl_sim'] else 'real'}, "
                             f"{report['free_bytes'] / 2**30:.1f} GiB free, CANN "
                             f"{'; '.join(cann.get('lines', [])) or 'version not readable'}")
        return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", metavar="DIR", required=True, help="run folder with model.om and export.json")
    parser.add_argument("--board", action="append", default=[], metavar="BOARD",
                        help="user@host[:port] or an ssh config alias; repeat to deploy to several boards at once")
    add_ssh_arguments(parser)
    add_config_arguments(parser, sections=["deploy"])


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    cfg = config_from_args(args, run_dir)
    deploy(run_dir, cfg, args.board or cfg.deploy.boards, args)
    return 0
