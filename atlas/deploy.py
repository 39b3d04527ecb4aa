"""The deploy stage: check the board, push the model, the app and the golden inputs, run the app, fetch the results.

`deploy(cfg, run) -> DeployRecord` deploys to every board of `deploy.boards` (`--board B [--board B2 ...]`). On
the board everything lives under
`<home>/<remote_dir>/<run name>/` (model.om, app/, inputs.npy, outputs.npy, timing.json). Uploads go through
`BoardSession.put` (temp name, sha256 check on the board, rename; skipped when the board already has the file),
so a second deploy of the same run sends no bytes. Several boards are deployed in parallel, one thread each.
Local results: `runs/NAME/board/` (one board) or `runs/NAME/board/<label>/` (several), and `deploy.json`.
"""
from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from atlas import run_folder as rf
from atlas.board_access import (BOARD_APP_DIR, board_session, check_runtime, preflight, remote_run_dir,
                                with_env_script)
from atlas.config import Config, DeployConfig
from atlas.delta import MODES
from atlas.errors import UserError
from atlas.fileio import read_json, require_writable, sha256_file, write_text
from atlas.model_update import ROUTES, TOOL, TOOL_PATH, ModelUpdate, NewModel, describe
from atlas.om_container import is_real_om, is_sim_om

# the app's own files (the preflight runs with `python3 -c` and is not shipped)
APP_FILES = ("infer.py", "acl_session.py", "acl_consts.py", "dvpp_images.py")
PROFILE_FILES = ("profiling.py",)  # with deploy.profile: infer.py --profile's acl.prof reader
_SPACE_MARGIN = 1 << 20  # outputs, timing and the app's own temp files


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
    digests: dict[Path, str] = field(default_factory=dict)  # sha256 of each file, read once for every board
    remote_inputs: str = rf.REMOTE_INPUTS  # inputs.npz for a model with several inputs
    remote_outputs: str = rf.REMOTE_OUTPUTS  # outputs.npz for a model with several outputs
    new_model: NewModel | None = None  # with deploy.delta: the model as a ModelUpdate sends it

    @property
    def size(self) -> int:
        return sum(local.stat().st_size for local, _ in self.files)

    def digest(self, local: Path) -> str:
        return self.digests[local]


def load_bundle(run: rf.Run, cfg: DeployConfig) -> Bundle:
    if not rf.ExportRecord.exists(run):
        raise UserError(f"{rf.ExportRecord.path(run)} not found: run the export stage first (make onnx)")
    export = rf.ExportRecord.read(run)
    # checked before the board does any work for nothing
    require_writable([run.path, run / rf.BOARD], "deploy fetches the board's outputs and writes deploy.json there")
    model = run / rf.MODEL_OM
    if not model.is_file():
        raise UserError(f"{model} not found: build it first (make om, or make om SIM=1 for the sim board)")
    inputs = export.board_inputs_path(run)
    if not inputs.is_file():
        raise UserError(f"{inputs} not found: run the export stage again (make onnx)")
    stale = rf.stale_om(run, export)
    if stale:  # re-exported since: golden/ is not this .om's
        raise UserError(stale)
    with open(model, "rb") as f:
        head = f.read(8)
    if not (is_sim_om(head) or is_real_om(head)):
        raise UserError(f"{model} is not an offline model (no IMOD or AKDSIMOM magic): rebuild it with make om")
    batch = export.batch
    if cfg.batch not in (DeployConfig().batch, batch):
        raise UserError(f"deploy.batch {cfg.batch} differs from the model's batch {batch}: an .om runs with the "
                        f"batch it was built with (export again with --export-batch {cfg.batch})")
    if cfg.loop < 1:
        raise UserError(f"deploy.loop must be >= 1 (got {cfg.loop})")
    check_delta_options(cfg)
    app_files = [BOARD_APP_DIR / name for name in APP_FILES + (PROFILE_FILES if cfg.profile else ())]
    bundle = Bundle(run.path, run.name, model, inputs, app_files, batch, is_sim_om(head))
    bundle.remote_inputs = rf.REMOTE_INPUTS_NPZ if inputs.suffix == ".npz" else rf.REMOTE_INPUTS
    bundle.remote_outputs = rf.REMOTE_OUTPUTS_NPZ if len(export.get("outputs") or [None]) > 1 else rf.REMOTE_OUTPUTS
    bundle.files = [(model, rf.REMOTE_MODEL), (inputs, bundle.remote_inputs)] + \
                   [(p, f"{rf.REMOTE_APP}/{p.name}") for p in app_files]
    images = export.board_images(run)
    if images:  # export.dvpp: the JPEGs go instead, and the app decodes the folder it is given as --input
        if not all(p.is_file() for p in images):
            raise UserError(f"{run / rf.GOLDEN_IMAGES}: not the {len(images)} JPEGs export.json lists: export again")
        bundle.remote_inputs = rf.remote_images_dir(len(images))
        bundle.files[1:2] = [(p, f"{bundle.remote_inputs}/{p.name}") for p in images]
    bundle.digests = {local: sha256_file(local) for local, _ in bundle.files}
    if cfg.delta != "off":
        aipp = run / rf.INSERT_OP_CFG
        bundle.new_model = NewModel(export.onnx_path(run), model, bundle.sim_model, aipp if export.aipp else None)
    return bundle


def check_delta_options(cfg: DeployConfig) -> None:
    if cfg.delta not in MODES:
        raise UserError(f"deploy.delta must be one of {', '.join(MODES)} (got {cfg.delta!r})")
    if cfg.delta_route not in ROUTES:
        raise UserError(f"deploy.delta_route must be one of {', '.join(ROUTES)} (got {cfg.delta_route!r})")
    if not 0 < cfg.delta_tolerance < 0.5:
        raise UserError(f"deploy.delta_tolerance must be above 0 and below 0.5 (a fraction of each tensor's RMS; "
                        f"got {cfg.delta_tolerance})")


def board_label(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_") or "board"


def check_board(report: dict, bundle: Bundle, display: str) -> None:
    """Refuse, in one line, a board that cannot run this bundle."""
    check_runtime(report, display)
    if bundle.sim_model and not report.get("acl_sim"):
        raise UserError(f"board {display}: {bundle.model} is a simulated .om, built by atc-sim, and this board's "
                        "acl is real: build a real .om with make om (ATC) for it")
    if not bundle.sim_model and report.get("acl_sim"):
        raise UserError(f"board {display} is a sim board (pyACL emulator) and {bundle.model} is a real .om: "
                        "the emulator cannot run it; build with make om SIM=1 for a rehearsal")


def check_space(report: dict, display: str, to_send: int) -> None:
    """Refuse, in one line, a board without room for `to_send` bytes (what it does not have yet)."""
    needed = to_send + _SPACE_MARGIN  # files the board holds already are not sent again
    if report.get("free_bytes", 0) < needed:
        raise UserError(f"board {display}: not enough free space in {report.get('free_checked_at')}: the bundle "
                        f"needs {needed / 2**20:.1f} MiB, {report['free_bytes'] / 2**20:.1f} MiB free")


def bytes_to_send(session, bundle: Bundle, files: list[tuple[Path, str]], remote: str) -> int:
    """What uploading `files` will really send: those whose copy on the board differs or is missing."""
    return sum(local.stat().st_size for local, relative in files
               if session.sha256(f"{remote}/{relative}") != bundle.digest(local))


def upload(session, bundle: Bundle, files: list[tuple[Path, str]], remote: str, record: dict) -> None:
    for local, relative in files:
        put = session.put(local, f"{remote}/{relative}", progress=True)
        record["uploads"].append({"file": relative, "remote": put.remote, "sent": put.sent,
                                  "bytes_sent": put.bytes_sent, "bytes": local.stat().st_size,
                                  "sha256": put.sha256, "retries": put.retries})


def update_model(session, bundle: Bundle, cfg: Config, remote: str, local_dir: Path, say, record: dict) -> None:
    """deploy.delta: the app and the inputs as always, the model through a ModelUpdate (a delta when the board
    holds a base for one); deploy.json gets its "delta" entry."""
    tool = (TOOL_PATH, f"{rf.REMOTE_APP}/{TOOL}")
    bundle.digests.setdefault(TOOL_PATH, sha256_file(TOOL_PATH))
    upload(session, bundle, [tool], remote, record)  # needed first: it probes the board
    update = ModelUpdate(session, cfg, bundle.new_model, remote, local_dir, say)
    plan = update.plan()
    others = [(local, relative) for local, relative in bundle.files if relative != rf.REMOTE_MODEL]
    staging = plan.full.stat().st_size + (bundle.model.stat().st_size if plan.route == "atc" else 0)
    check_space(record["preflight"], session.display,
                bytes_to_send(session, bundle, others, remote) + plan.upload_bytes + staging)
    upload(session, bundle, others, remote, record)
    record["delta"] = update.send(plan, [relative for _, relative in [*others, tool]])
    record["uploads"] += update.uploads
    record["model_bytes_sent"] = record["delta"]["bytes_sent"]


def deploy_one(spec: str, bundle: Bundle, full_cfg: Config, local_dir: Path, say, trust_new_host: bool) -> dict:
    """Deploy to one board; returns its deploy.json entry (raises UserError on the first problem)."""
    cfg = full_cfg.deploy
    record: dict = {"board": spec, "local_dir": str(local_dir.relative_to(bundle.run_dir)), "uploads": []}
    durations = record["durations_s"] = {}
    t0 = time.perf_counter()
    with board_session(spec, cfg, trust_new_host=trust_new_host, log=say) as session:
        record["address"] = session.display
        remote = remote_run_dir(session, cfg, bundle.name)
        record["remote_dir"] = remote
        report = preflight(session, remote, cfg)
        record["preflight"] = report
        check_board(report, bundle, session.display)
        durations["preflight"] = time.perf_counter() - t0

        t = time.perf_counter()
        if bundle.new_model is None:
            check_space(report, session.display, bytes_to_send(session, bundle, bundle.files, remote))
            upload(session, bundle, bundle.files, remote, record)
            record["model_bytes_sent"] = next(u["bytes_sent"] for u in record["uploads"]
                                              if u["file"] == rf.REMOTE_MODEL)
        else:
            update_model(session, bundle, full_cfg, remote, local_dir, say, record)
        record["bytes_sent"] = sum(u["bytes_sent"] for u in record["uploads"])
        durations["upload"] = time.perf_counter() - t

        t = time.perf_counter()
        results = (bundle.remote_outputs, rf.REMOTE_TIMING) + ((rf.REMOTE_PROFILE,) if cfg.profile else ())
        session.run(["rm", "-f", *(f"{remote}/{name}" for name in (*rf.REMOTE_RESULTS, rf.REMOTE_OUTPUTS_NPZ))])
        argv = with_env_script([cfg.python, f"{remote}/{rf.REMOTE_APP}/infer.py", "--model", f"{remote}/{rf.REMOTE_MODEL}",
                                 "--input", f"{remote}/{bundle.remote_inputs}", "--output", f"{remote}/{bundle.remote_outputs}",
                                 "--timing", f"{remote}/{rf.REMOTE_TIMING}", "--batch", str(bundle.batch),
                                 "--loop", str(cfg.loop), *(["--profile"] if cfg.profile else [])], cfg.env_script)
        record["app"] = {"argv": argv}
        lines: list[str] = []

        def output(line: str) -> None:
            lines.append(line)
            say(line)

        result = session.run(argv, check=False, output=output)
        local_dir.mkdir(parents=True, exist_ok=True)
        write_text(local_dir / rf.BOARD_LOG, "\n".join(lines) + ("\n" if lines else ""))
        record["app"]["exit_status"] = result.exit_status
        durations["run"] = time.perf_counter() - t
        if result.exit_status != 0:
            errors = [line for line in lines if "error:" in line] or lines[-1:] or ["no output"]
            raise UserError(f"board {session.display}: the app failed (exit {result.exit_status}): "
                            f"{errors[-1].strip()} (log: {local_dir / rf.BOARD_LOG})", exit_code=1)

        t = time.perf_counter()
        (local_dir / rf.BOARD_PROFILE).unlink(missing_ok=True)  # never an earlier deploy's beside these outputs
        for name in results:  # fetched under the same names (rf.BOARD_OUTPUTS[_NPZ], rf.BOARD_TIMING)
            session.get(f"{remote}/{name}", local_dir / name)
        durations["fetch"] = time.perf_counter() - t
    timing = read_json(local_dir / rf.BOARD_TIMING)
    record["timing"] = {k: timing.get(k) for k in ("acl", "run_mode", "model_load_ms", "batch", "loop", "samples",
                                                   "executions", "latency_ms", "throughput_images_per_s")}
    record["profile"] = timing.get("profile")  # deploy.profile: profile.json's source and operator count
    durations["total"] = time.perf_counter() - t0
    record["status"] = "ok"
    return record


def deploy(cfg: Config, run: str | Path | rf.Run, *, trust_new_host: bool = False) -> rf.DeployRecord:
    run = rf.as_run(run)
    run_dir, boards = run.path, list(cfg.deploy.boards)
    if not boards:
        raise UserError("no board given: pass --board user@host[:port] (or an ssh alias), or set deploy.boards")
    bundle = load_bundle(run, cfg.deploy)
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
        local_dir = run_dir / rf.BOARD / label if several else run_dir / rf.BOARD
        try:
            return deploy_one(spec, bundle, cfg, local_dir, sayer(label), trust_new_host)
        except UserError as e:
            return {"board": spec, "status": "error", "error": e.message, "exit_code": e.exit_code,
                    "local_dir": str(local_dir.relative_to(run_dir))}

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(boards)) as pool:
        records = list(pool.map(one, boards, labels))
    report = rf.DeployRecord({"run": bundle.name, "model": rf.MODEL_OM, "sim_model": bundle.sim_model,
                              "batch": bundle.batch, "loop": cfg.deploy.loop, "bundle_bytes": bundle.size,
                              "wall_s": time.perf_counter() - t0, "boards": records,
                              "ok": all(r["status"] == "ok" for r in records)})
    report.write(run_dir)
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
        if r.get("delta"):
            lines.append(f"    {describe(r['delta'])}")
    return "\n".join(lines)
