"""The model on a board brought up to date by sending only what changed (`deploy.delta`, docs/delta.md).

The board keeps a manifest of what it holds (rf.REMOTE_MANIFEST: each file's sha256, and the weights its model
was built from, by tensor); this machine keeps a copy of the same model file beside the board's outputs
(rf.BOARD_HELD): the base of the next delta. One update:

  probe   app/delta.py reports the manifest, the model files' sha256, its codecs and whether ATC is there
  plan    the route (ATC on the board: its ONNX is the base; no ATC: its .om is) and a delta against the base,
          or a full upload with one line saying why (no manifest, a base changed, missing or not held here,
          another architecture, a delta no smaller than the file)
  send    into the staging folder (rf.REMOTE_STAGING): the delta, rebuilt and checked there (delta.py apply),
          or the whole file; on the ATC route the board then builds its .om from the rebuilt ONNX
  commit  delta.py commit renames the staged files onto their names (each rename atomic), then the manifest

Until the commit the real names hold the old model, and every step is safe to repeat: a dropped link is retried.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from atlas import atc as atc_tool
from atlas import run_folder as rf
from atlas.atc_remote import atc_on_board
from atlas.board import delta as fmt
from atlas.board_access import BOARD_APP_DIR, with_env_script
from atlas.config import Config
from atlas.delta import Delta, FullUpload, best_codec, binary_delta, onnx_delta
from atlas.errors import UserError
from atlas.fileio import sha256_file, write_bytes, write_json

TOOL = "delta.py"  # shipped in app/ with deploy.delta: the board's half of model updates
TOOL_PATH = BOARD_APP_DIR / TOOL
ROUTES = ("auto", "atc", "om")
_BASE_CHANGED = 3  # delta.py apply: the base is not the delta's (the board's copy changed under us)


@dataclass
class NewModel:
    """The model to deploy, as the run folder has it."""

    onnx: Path
    om: Path
    sim: bool
    aipp_cfg: Path | None

    @property
    def atc_tool(self) -> str:
        return "atc-sim" if self.sim else "atc"


@dataclass
class Plan:
    """What one board gets: `kind` "delta", "full" or "none" (it holds this model already) of `file` on `route`."""

    route: str  # "atc": the board builds its .om from the ONNX; "om": the .om itself
    mode: str  # "lossless" or "lossy" (only on the atc route)
    kind: str
    file: str  # rf.REMOTE_ONNX or rf.REMOTE_MODEL
    full: Path  # what a full upload sends
    exact_sha256: str  # the exported ONNX's
    delta: Delta | None = None
    reason: str | None = None  # why a full upload
    codec: str = "lzma"
    held_model: dict = field(default_factory=dict)  # the board's manifest's "model" (kept when nothing is sent)

    @property
    def upload_bytes(self) -> int:
        if self.kind == "none":
            return 0
        return len(self.delta.data) if self.delta is not None else self.full.stat().st_size

    @property
    def target_sha256(self) -> str:
        return self.delta.target_sha256 if self.delta is not None else sha256_file(self.full)


@dataclass
class ModelUpdate:
    """One board's model update over an open session (`remote`: the board's run folder)."""

    session: object
    cfg: Config
    model: NewModel
    remote: str
    local_dir: Path
    say: Callable[[str], None]
    uploads: list[dict] = field(default_factory=list)  # deploy.json's entries for what this update put
    command_bytes: int = 0  # the manifest's details, sent as the commit command's argument

    @property
    def stage(self) -> str:
        return f"{self.remote}/{rf.REMOTE_STAGING}"

    @property
    def held(self) -> Path:
        return self.local_dir / rf.BOARD_HELD

    # --- the board's tool ----------------------------------------------------------------------------------

    def tool(self, *args: str, failures: tuple[int, ...] = ()) -> tuple[int, dict | str]:
        """Run app/delta.py; (0, its JSON) or, for an exit status in `failures`, (status, its error line)."""
        argv = with_env_script([self.cfg.deploy.python, f"{self.remote}/{rf.REMOTE_APP}/{TOOL}", *args],
                               self.cfg.deploy.env_script)
        result = self.session.run(argv, check=False)
        if result.exit_status == 0:
            return 0, json.loads(result.stdout.strip().splitlines()[-1])
        why = (result.stderr.strip().splitlines() or ["no output"])[-1]
        if result.exit_status in failures:
            return result.exit_status, why
        raise UserError(f"board {self.session.display}: delta.py {args[0]} failed (exit {result.exit_status}): {why}",
                        exit_code=1)

    def probe(self) -> dict:
        return self.tool("probe", "--dir", self.remote, "--atc", self.cfg.deploy.atc or self.model.atc_tool)[1]

    # --- planning ------------------------------------------------------------------------------------------

    def plan(self) -> Plan:
        """Probe the board and decide what it gets (a line for every fallback)."""
        board = self.probe()
        route, mode = self.route(board)
        file = rf.REMOTE_ONNX if route == "atc" else rf.REMOTE_MODEL
        plan = Plan(route, mode, "full", file, self.model.onnx if route == "atc" else self.model.om,
                    sha256_file(self.model.onnx), codec=best_codec(board["codecs"]))
        reason = base_problem(board, file, self.held / file)
        if reason is None and self.holds_already(board, plan):
            plan.kind, plan.held_model = "none", board["manifest"].get("model") or {}
            return plan
        if reason is None:
            reason = self.encode(plan)
        if reason is not None:
            plan.reason = reason
            self.say(f"delta: full upload of {file}: {reason}")
        return plan

    def route(self, board: dict) -> tuple[str, str]:
        """ATC on the board (its ONNX is the base) or the .om itself; lossy needs the former."""
        deploy, atc = self.cfg.deploy, self.cfg.deploy.atc or self.model.atc_tool
        if deploy.delta_route == "atc" and not board.get("atc"):
            raise UserError(f"board {self.session.display}: deploy.delta_route is atc but `{atc}` is not found "
                            "there; source the CANN set_env.sh (deploy.env_script), set deploy.atc, or use "
                            "delta_route auto")
        route = "atc" if deploy.delta_route == "atc" or (deploy.delta_route == "auto" and board.get("atc")) else "om"
        mode = deploy.delta
        if route == "om" and mode == "lossy":
            why = "deploy.delta_route is om" if deploy.delta_route == "om" else f"`{atc}` is not found there"
            self.say(f"delta: lossy needs ATC on the board (the .om is rebuilt there) and {why}: sending a lossless "
                     "delta of the .om instead")
            mode = "lossless"
        return route, mode

    def holds_already(self, board: dict, plan: Plan) -> bool:
        """The board's base is the new model (or its lossy reconstruction) and its .om was built the same way."""
        model = board["manifest"].get("model") or {}
        om = (board["manifest"].get("files") or {}).get(rf.REMOTE_MODEL) or {}
        if model.get("exact_onnx_sha256") != plan.exact_sha256 or om.get("sha256") != board["files"].get(rf.REMOTE_MODEL):
            return False
        if plan.route == "om":
            return om.get("sha256") == sha256_file(self.model.om)
        lossy = model.get("lossy")  # the board holds a reconstruction: good enough only within this tolerance
        close = (board["files"].get(rf.REMOTE_ONNX) == plan.exact_sha256 if lossy is None or plan.mode == "lossless"
                 else lossy.get("tolerance", 1.0) <= self.cfg.deploy.delta_tolerance)
        return close and model.get("route") == "atc" and model.get("build") == self.build_options(plan)

    def encode(self, plan: Plan) -> str | None:
        """The delta against the held base, into `plan`; or why a full upload goes instead."""
        base, new = (self.held / plan.file).read_bytes(), plan.full.read_bytes()
        try:
            if plan.route == "atc":
                plan.delta = onnx_delta(base, new, mode=plan.mode, tolerance=self.cfg.deploy.delta_tolerance,
                                        codec=plan.codec, progress=True)
            else:
                plan.delta = binary_delta(base, new, codec=plan.codec)
        except FullUpload as e:
            return str(e)
        if len(plan.delta.data) >= len(new):
            size = len(plan.delta.data)
            plan.delta = None
            return f"the delta ({size:,} bytes) is no smaller than the file ({len(new):,} bytes)"
        plan.kind = "delta"
        return None

    def build_options(self, plan: Plan) -> list[str]:
        """The ATC options a .om is built with, paths left out: a change means the board must rebuild."""
        cmd = atc_tool.build_atc_command(rf.REMOTE_ONNX, "model", atc=self.cfg.deploy.atc or self.model.atc_tool,
                                         soc_version=self.cfg.om.soc_version,
                                         precision_mode=self.cfg.om.precision_mode, log=self.cfg.om.log,
                                         insert_op_conf=rf.INSERT_OP_CFG if self.model.aipp_cfg else None,
                                         extra=self.cfg.om.extra, inputs=atc_tool.read_onnx_inputs(self.model.onnx))
        return cmd[1:]

    # --- sending -------------------------------------------------------------------------------------------

    def send(self, plan: Plan, files: list[str]) -> dict:
        """Stage, rebuild, commit; returns deploy.json's "delta" entry. `files`: the other files deployed (the
        manifest lists them too)."""
        self.local_dir.mkdir(parents=True, exist_ok=True)
        if plan.kind == "none":
            self.say(f"delta: the board already holds this model ({plan.file} {plan.exact_sha256[:12]})")
            manifest = self.commit(plan, [], {}, files)
            return self.entry(plan, manifest, None, 0)
        check = self.stage_model(plan)
        expect = {plan.file: plan.target_sha256}
        if plan.route == "atc":
            expect[rf.REMOTE_MODEL] = self.build_om(plan)
        manifest = self.commit(plan, list(expect), expect, files)
        self.keep(plan, manifest)
        return self.entry(plan, manifest, check, sum(u["bytes_sent"] for u in self.uploads))

    def stage_model(self, plan: Plan) -> dict:
        """The new model file under the staging folder: rebuilt from a delta (falling back to the whole file
        when the board's base changed meanwhile) or uploaded whole; returns the reconstruction check."""
        staged = f"{self.stage}/{plan.file}"
        if plan.delta is not None:
            with tempfile.TemporaryDirectory(dir=self.local_dir) as tmp:
                local = Path(tmp) / rf.REMOTE_DELTA
                write_bytes(local, plan.delta.data)
                self.put(local, f"{self.stage}/{rf.REMOTE_DELTA}", rf.REMOTE_DELTA)
            status, out = self.tool("apply", "--delta", f"{self.stage}/{rf.REMOTE_DELTA}", "--base",
                                    f"{self.remote}/{plan.file}", "--out", staged, failures=(_BASE_CHANGED,))
            if status == 0:
                kind = "sha256 of the new file" if plan.mode == "lossless" else "sha256 of the host's reconstruction"
                return {"kind": kind, "expected": plan.target_sha256, "board": out["sha256"],
                        "ok": out["sha256"] == plan.target_sha256}
            plan.kind, plan.delta, plan.reason = "full", None, f"the board's base changed during the update ({out})"
            self.say(f"delta: full upload of {plan.file}: {plan.reason}")
        put = self.put(plan.full, staged, plan.file)
        return {"kind": "sha256 of the upload", "expected": put["sha256"], "board": put["sha256"], "ok": True}

    def put(self, local: Path, remote: str, name: str) -> dict:
        put = self.session.put(local, remote, progress=True)
        entry = {"file": f"{rf.REMOTE_STAGING}/{name}", "remote": put.remote, "sent": put.sent,
                 "bytes_sent": put.bytes_sent, "bytes": local.stat().st_size, "sha256": put.sha256,
                 "retries": put.retries}
        self.uploads.append(entry)
        return entry

    def build_om(self, plan: Plan) -> str:
        """ATC on the board: the staged ONNX -> the staged .om; its sha256 (one line when ATC failed)."""
        config = None
        if self.model.aipp_cfg is not None:
            config = f"{self.stage}/{rf.INSERT_OP_CFG}"
            self.put(self.model.aipp_cfg, config, rf.INSERT_OP_CFG)
        tool = self.cfg.deploy.atc or self.model.atc_tool
        log = self.local_dir / rf.ATC_LOG
        run = atc_on_board(self.session, self.cfg, f"{self.stage}/{rf.REMOTE_ONNX}", f"{self.stage}/model", atc=tool,
                           tool=self.model.atc_tool, insert_op_conf=config,
                           inputs=atc_tool.read_onnx_inputs(self.model.onnx), log_path=log, echo=self.say,
                           hint="set deploy.atc to its path on the board")
        digest = self.session.sha256(f"{self.stage}/{rf.REMOTE_MODEL}") if run.exit_code == 0 else None
        if not (run.exit_code == 0 and run.log.success_line and digest):
            where = f"{self.model.atc_tool} on {self.session.display}"
            raise UserError(f"{atc_tool.failure_summary(run, Path(rf.REMOTE_MODEL), where)}; the board keeps its "
                            f"old model (log: {log})", exit_code=1)
        return digest

    def commit(self, plan: Plan, names: list[str], expect: dict[str, str], files: list[str]) -> dict:
        """delta.py commit: the staged files onto their names, then the manifest (safe to repeat)."""
        if not expect:  # nothing staged: the board's model files stay, as its manifest lists them
            expect = {name: digest for name, digest in self.probe()["files"].items() if digest}
        info = {"commit": names, "expect": expect, "files": files, "model": self.manifest_model(plan),
                "remove": [rf.REMOTE_ONNX] if plan.route == "om" else []}
        self.command_bytes = len(json.dumps(info))
        return self.tool("commit", "--dir", self.remote, "--stage", self.stage, "--info", json.dumps(info))[1]

    def manifest_model(self, plan: Plan) -> dict:
        """The manifest's "model": its route, the exported ONNX it stands for, how lossy, how it was built."""
        if plan.kind == "none":
            return plan.held_model
        model = {"route": plan.route, "file": plan.file, "exact_onnx_sha256": plan.exact_sha256,
                 "lossy": None if plan.delta is None or plan.mode != "lossy" else
                 {"tolerance": self.cfg.deploy.delta_tolerance, "max_error_rms": plan.delta.stats["max_error_rms"]}}
        if plan.route == "atc":
            model["build"] = self.build_options(plan)
        else:  # the board has no ONNX to read them from: the weights its .om was built from, by tensor
            model["tensors"] = fmt.tensor_table(str(self.model.onnx))
        return model

    def keep(self, plan: Plan, manifest: dict) -> None:
        """This machine's copy of what the board now holds: the next delta's base."""
        self.held.mkdir(parents=True, exist_ok=True)
        target = plan.delta.target if plan.delta is not None else plan.full.read_bytes()
        write_bytes(self.held / plan.file, target)
        for other in (rf.REMOTE_ONNX, rf.REMOTE_MODEL):
            if other != plan.file:
                (self.held / other).unlink(missing_ok=True)
        write_json(self.held / rf.REMOTE_MANIFEST, manifest)

    def entry(self, plan: Plan, manifest: dict, check: dict | None, sent: int) -> dict:
        """deploy.json's record of the update: bytes sent against a full upload, the mode, the check."""
        full = plan.full.stat().st_size
        held = self.held / rf.REMOTE_ONNX
        entry = {"route": plan.route, "mode": plan.mode if plan.kind == "delta" else plan.kind,
                 "requested": self.cfg.deploy.delta, "kind": plan.kind, "reason": plan.reason, "codec": plan.codec,
                 "bytes_sent": sent, "full_bytes": full, "full_file": plan.file, "ratio": sent / full if full else None,
                 "check": check, "stats": plan.delta.stats if plan.delta is not None else None,
                 "tolerance": self.cfg.deploy.delta_tolerance if plan.kind == "delta" and plan.mode == "lossy" else None,
                 "exact_onnx_sha256": plan.exact_sha256,
                 "om_sha256": (manifest.get("files") or {}).get(rf.REMOTE_MODEL, {}).get("sha256"),
                 "command_bytes": self.command_bytes}
        if plan.route == "atc" and held.is_file():  # relative to the board's local folder
            entry["board_onnx"] = {"path": f"{rf.BOARD_HELD}/{rf.REMOTE_ONNX}",
                                   "sha256": (manifest.get("files") or {}).get(rf.REMOTE_ONNX, {}).get("sha256")}
        return entry


def describe(entry: dict) -> str:
    """One line for deploy's summary: what the model update sent, against a full upload."""
    if entry["kind"] == "none":
        return "model: the board already held it (nothing sent)"
    what = f"{entry['mode']} delta" if entry["kind"] == "delta" else "full upload"
    ratio = f" ({100 * entry['ratio']:.1f} %)" if entry.get("ratio") is not None else ""
    check = entry.get("check") or {}
    return (f"model: {what} on the {entry['route']} route, {entry['bytes_sent']:,} bytes of {entry['full_file']}'s "
            f"{entry['full_bytes']:,}{ratio}; check: {check.get('kind')} {'ok' if check.get('ok') else 'FAILED'}")


def base_problem(board: dict, name: str, held: Path) -> str | None:
    """Why the board's `name` cannot be a delta's base (None: it can): no manifest, not listed, missing, changed
    since the manifest was written, or no copy of it here."""
    manifest = board.get("manifest")
    if manifest is None:
        return board.get("manifest_problem") or ("the board has no manifest (its first deploy with deploy.delta, "
                                                 "or an earlier deploy without it)")
    listed = ((manifest.get("files") or {}).get(name) or {}).get("sha256")
    actual = (board.get("files") or {}).get(name)
    if listed is None:
        return f"the board's manifest lists no {name} (its last update took the other route)"
    if actual is None:
        return f"the board's {name} is missing (deleted since the last deploy?)"
    if actual != listed:
        return (f"the board's {name} changed since the last deploy (sha256 {actual[:12]}, its manifest says "
                f"{listed[:12]})")
    if not held.is_file() or sha256_file(held) != listed:
        return f"this machine holds no copy of the board's {name} ({held}): it was deployed from elsewhere"
    return None

