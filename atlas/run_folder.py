"""The run folder is the contract between stages: every artifact's name and every JSON record, defined once.

Stages never reach into each other's Python objects: a later stage learns about an earlier one only through the
files named here. A record is a dict with the keys later stages rely on, checked when it is read (one line naming
the file when it is missing, corrupt or not what it claims to be) and written atomically. Records are extensible:
a subclass of `Record` with its file name is a new record; extra keys in a record are kept. Freshness: records keep
the sha256 of what their stage consumed, so a later stage can tell when an input was rebuilt since (`stale_*`).
A derived run is a run folder of its own inside its parent: `<run>/pruned/`, `<run>/int8/`, `<run>/locate/`.

`atlas/board/` ships alone to the board and keeps its own copies of the board-side names (a test checks they
equal the ones here).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from atlas.errors import UserError
from atlas.fileio import read_json, require_writable, sha256_file, write_json

# --- artifacts, relative to the run folder (the stage that writes each: see docs/architecture.md) ------------
CONFIG = "config.json"  # train: the config the run was made with; every later stage reads it
TEACHER = "teacher.pt"
STUDENT = "student.pt"
BASELINE = "baseline.pt"
CHECKPOINTS = {"teacher": TEACHER, "student": STUDENT, "baseline": BASELINE}
TRAIN_STATE = "state"  # train: per-phase state while a phase runs (--resume)
CURVES = "curves.png"
RAW_ONNX = "model.raw.onnx"  # export: as torch (or the user) gave it
ONNX = "model.onnx"  # export: simplified; what ATC converts
GOLDEN = "golden"
GOLDEN_INPUTS = "golden/inputs.npy"  # what the board is fed (float32 NCHW, or uint8 NHWC with AIPP)
GOLDEN_LABELS = "golden/labels.npy"
GOLDEN_REFERENCE = "golden/reference.npy"  # onnxruntime fp32 outputs
GOLDEN_INPUTS_NPZ = "golden/inputs.npz"  # a model with several inputs: one array per input name
GOLDEN_REFERENCE_NPZ = "golden/reference.npz"  # several outputs: one array per output name
GOLDEN_IMAGES = "golden/images"  # export.dvpp: the JPEGs the board decodes on DVPP, in golden order (000000.jpg, ...)
MODEL_OM = "model.om"
ATC_LOG = "atc.log"
INSERT_OP_CFG = "insert_op.cfg"  # om: the AIPP config, when export chose AIPP
ATC_BUILD_PREFIX = ".atc-"  # om: ATC's temp build folder inside the run folder
BOARD = "board"  # deploy: board/ (one board) or board/<label>/ (several)
BOARD_OUTPUTS = "outputs.npy"
BOARD_OUTPUTS_NPZ = "outputs.npz"  # a model with several outputs: one array per output
BOARD_TIMING = "timing.json"
BOARD_LOG = "log.txt"
BOARD_PROFILE = "profile.json"  # deploy.profile: per-operator times (acl.prof; CPU on the sim board)
CONFUSION = "confusion.png"  # verify, beside each board's outputs
REPORT = "report.md"  # verify: one page over every record of the run
PRUNED = "pruned"  # prune: the derived run
LOCATE = "locate"  # locate: the derived run with the extra outputs (and bisect-<k>/ prefix models inside)
LOCATE_CSV = "locate.csv"  # locate, in the parent run: one row per observed tensor
LOCATE_PLOT = "locate.png"  # error along depth
SPLIT = "split"  # split: the derived run (split.json, head.npz, the sub-model runs A/ and B/; deploy: board/A, board/B)
SPLIT_A = "A"  # split: sub-model A's run folder (export and om take it; deploy and verify take the split run)
SPLIT_B = "B"
SPLIT_HEAD = "head.npz"  # split: the merge head A's board applies (weight [classes, nodes_a + nodes_b], bias)
SPLIT_ONNX = "sub_model.onnx"  # split, in A/ and B/: the sub-model as split wrote it (export.onnx of their config)
SPLIT_STATE = "split-state"  # split, in the parent run: one finished seed per file (--resume)
INT8 = "int8"  # quantize: the derived run (its model.onnx is the deploy model, AscendQuant/AscendDequant)
INT8_REFERENCE_ONNX = "model.fake_quant.onnx"  # quantize: the int8 CPU reference (AMCT's fake-quant form)
CALIBRATION_INPUTS = "calibration/inputs.npy"  # quantize: the calibration set as AMCT takes it (model inputs)
CALIBRATION_LABELS = "calibration/labels.npy"
GOLDEN_REFERENCE_FP32 = "golden/reference_fp32.npy"  # quantize: the fp32 reference beside the int8 one
GOLDEN_REFERENCE_FP32_NPZ = "golden/reference_fp32.npz"
QAT_STUDENT = "qat-student.pt"  # quantize --qat: the fine-tuned student (not student.pt: export must not take it)
QAT_ONNX = "model.qat.onnx"  # its fp32 ONNX, the model the int8 one is quantised from
AMCT = "amct"  # quantize --amct, in the int8 run: what Huawei's AMCT takes and writes
AMCT_ONNX = "amct/model.onnx"
AMCT_CALIBRATION = "amct/calibration.npy"
AMCT_SCRIPT = "amct/amct_calibrate.py"
AMCT_PREFIX = "amct/model"  # AMCT's save_path: it writes <prefix>_deploy_model.onnx, <prefix>_fake_quant_model.onnx
AMCT_DEPLOY = "amct/model_deploy_model.onnx"
AMCT_FAKE_QUANT = "amct/model_fake_quant_model.onnx"
AMCT_RECORD = "amct/amct.json"  # the sha256 of the model and calibration set AMCT quantised
BOARD_HELD = "held"  # deploy with deploy.delta, beside a board's outputs: copies of what the board holds (the
#                      next delta's base: model.onnx or model.om, manifest.json)

# --- on the board, under <deploy.remote_dir>/<run name>/ ------------------------------------------------------
REMOTE_MODEL = "model.om"
REMOTE_INPUTS = "inputs.npy"
REMOTE_INPUTS_NPZ = "inputs.npz"
REMOTE_IMAGES = "images"  # export.dvpp: golden/images/ (images-<count>/ on the board: no file of a larger set stays)
REMOTE_APP = "app"
REMOTE_OUTPUTS = "outputs.npy"  # = BOARD_OUTPUTS: fetched under the same names
REMOTE_OUTPUTS_NPZ = "outputs.npz"
REMOTE_TIMING = "timing.json"
REMOTE_PROFILE = "profile.json"  # = BOARD_PROFILE: infer.py --profile writes it beside timing.json
REMOTE_ATC = "atc"  # om --on-board: ATC's folder
REMOTE_RESULTS = (REMOTE_OUTPUTS, REMOTE_TIMING, REMOTE_PROFILE)  # written only by the app: removed before each run
REMOTE_SPLIT_HEAD = "head.npz"  # split: the merge head, on A's board
REMOTE_LINK_DIR = ".link"  # split: a 0700 folder holding the link's key (REMOTE_LINK_KEY), on both boards
REMOTE_LINK_KEY = "link.key"
REMOTE_ONNX = "model.onnx"  # deploy.delta with ATC on the board: the ONNX the board built its model.om from
REMOTE_MANIFEST = "manifest.json"  # deploy.delta: what the board holds, by file and by tensor (docs/delta.md)
REMOTE_STAGING = ".update"  # deploy.delta: an update's files until they are committed onto their names
REMOTE_DELTA = "update.delta"  # deploy.delta: the delta, in the staging folder


DERIVED_NAMES = (PRUNED, INT8, LOCATE, SPLIT, SPLIT_A, SPLIT_B)  # and locate's bisect-<k>/


def is_derived_name(folder: str) -> bool:
    """Whether a folder of this name is a derived run (inside the run it was derived from)."""
    return folder in DERIVED_NAMES or folder.startswith("bisect-")


class Run:
    """A run folder: where its artifacts are, and its derived runs."""

    def __init__(self, path: str | os.PathLike | Run):
        self.path = Path(path.path if isinstance(path, Run) else path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def name(self) -> str:
        """The run's name on a board: its folder's name, joined to its parents' for a derived run
        (runs/mnist/int8 -> mnist-int8), so that two runs' derived runs never share a folder on one board."""
        path = self.path.resolve()
        parts = [path.name]
        while is_derived_name(parts[0]) and path.parent != path:
            path = path.parent
            parts.insert(0, path.name)
        return "-".join(parts)

    def derived(self, kind: str) -> Run:
        return Run(self.path / kind)

    def check_writable(self) -> Run:
        """Say in one line, before any work, when the folder cannot be written (a file in the way, read-only, no
        permission); nothing is created yet."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"run folder {self.path} is a file, not a folder: pass --run with a folder path")
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.is_file():
            raise UserError(f"cannot create the run folder {self.path}: {existing} is a file, not a folder (pass --run "
                            "with a folder path)")
        require_writable([existing], "the stage writes its artifacts there (or pass --run with another folder)")
        return self

    def create(self) -> Run:
        """Make the folder (and its parents) for a stage to write into; one line when it cannot be one."""
        self.check_writable()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the run folder {self.path}: {e.strerror or e} (pass --run with a folder "
                            "you can write)") from None
        require_writable([self.path], "the stage writes its artifacts there (or pass --run with another folder)")
        return self


def as_run(run: str | os.PathLike | Run) -> Run:
    return run if isinstance(run, Run) else Run(run)


R = TypeVar("R", bound="Record")


class Record(dict):
    """One JSON record of a run: a plain dict (JSON-ready), with `read`, `check` and `write`.

    Subclasses name their FILE, what makes it (MADE_BY, for the one-line hints) and the top-level keys later
    stages rely on (REQUIRED); `check` can add rules.
    """

    FILE: ClassVar[str] = ""
    MADE_BY: ClassVar[str] = ""  # e.g. "`atlas-kd export --run {run}` (make onnx)"
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def path(cls, run: str | os.PathLike | Run) -> Path:
        return as_run(run) / cls.FILE

    @classmethod
    def hint(cls, run: str | os.PathLike | Run) -> str:
        return cls.MADE_BY.format(run=as_run(run).path)

    @classmethod
    def exists(cls, run: str | os.PathLike | Run) -> bool:
        return cls.path(run).is_file()

    @classmethod
    def read(cls: type[R], run: str | os.PathLike | Run) -> R:
        """The record, checked; a UserError naming the file when it is missing, not JSON, or not this record."""
        path = cls.path(run)
        if not path.is_file():
            raise UserError(f"{path}: not found; run {cls.hint(run)} first")
        data = read_json(path)
        record = cls(data if isinstance(data, dict) else {})
        problem = record.problem() if isinstance(data, dict) else (record.problem() or "it is not a JSON object")
        if problem:
            raise UserError(f"{path}: {problem}: fix it and re-run {cls.hint(run)}")
        return record

    @classmethod
    def read_if_present(cls: type[R], run: str | os.PathLike | Run) -> R | None:
        return cls.read(run) if cls.exists(run) else None

    @classmethod
    def read_unchecked(cls: type[R], run: str | os.PathLike | Run) -> R | None:
        """The record as it is (unreadable JSON is still one line), None when absent or not a JSON object: for
        a stage that looks at a few keys and tolerates a hand-edited record."""
        if not cls.exists(run):
            return None
        data = read_json(cls.path(run))
        return cls(data) if isinstance(data, dict) else None

    @classmethod
    def read_for_report(cls: type[R], run: str | os.PathLike | Run) -> R | None:
        """The record when it is there and readable, else None: a report leaves a hand-edited record out."""
        try:
            return cls.read_if_present(run)
        except UserError:
            return None

    def problem(self) -> str | None:
        """Why this is not a usable record (None: it is)."""
        missing = [key for key in self.REQUIRED if key not in self]
        if missing:
            return f"it is not a complete {self.FILE} record (no {', '.join(missing)})"
        return None

    def write(self, run: str | os.PathLike | Run) -> Path:
        path = self.path(run)
        write_json(path, dict(self))
        return path

    @classmethod
    def remove(cls, run: str | os.PathLike | Run) -> None:
        cls.path(run).unlink(missing_ok=True)


# --- the records -------------------------------------------------------------------------------------------

class TrainRecord(Record):
    FILE = "train.json"
    MADE_BY = "`atlas-kd train --run {run}` (make train)"
    REQUIRED = ("teacher", "student", "distillation", "dataset")


class PruneRecord(Record):
    FILE = "prune.json"
    MADE_BY = "`atlas-kd prune --run <the run {run} was pruned from>` (make prune)"
    REQUIRED = ("before", "after", "ratios")


class ExportRecord(Record):
    """export.json: the ONNX, its input and output, the golden set, and what the board is fed.
    A failed export leaves `{"failed": stage, "error": ...}` so that no later stage trusts an earlier record."""

    FILE = "export.json"
    MADE_BY = "`atlas-kd export --run {run}` (make onnx)"
    REQUIRED = ("onnx", "input", "board_input")

    def problem(self) -> str | None:
        if self.get("failed"):
            return f"the last export failed ({self['failed']})"
        if not isinstance(self.get("onnx"), dict) or not isinstance(self.get("board_input"), dict):
            return "it is not the record of a finished export"
        return super().problem() and "it is not the record of a finished export"

    def onnx_path(self, run: str | os.PathLike | Run) -> Path:
        return as_run(run) / self["onnx"].get("path", ONNX)

    def board_inputs_path(self, run: str | os.PathLike | Run) -> Path:
        return as_run(run) / self["board_input"].get("path", GOLDEN_INPUTS)

    def board_images(self, run: str | os.PathLike | Run) -> list[Path] | None:
        """export.dvpp: the JPEG files the board decodes, in golden order; None when the board is fed arrays."""
        if not self["board_input"].get("images"):
            return None
        count = int(self["board_input"].get("image_count", 0))
        return [as_run(run) / GOLDEN_IMAGES / golden_image_name(i) for i in range(count)]

    @property
    def batch(self) -> int:
        return int(self["input"]["shape"][0])

    @property
    def aipp(self) -> bool:
        """Whether export chose on-chip normalisation (uint8 NHWC board inputs): decided once, read by om."""
        return bool(self["board_input"].get("aipp"))

    @property
    def normalization(self) -> dict[str, list[float]]:
        return self.get("normalization") or {}


class AtcRecord(Record):
    FILE = "atc.json"
    MADE_BY = "`atlas-kd om --run {run}` (make om, or make om SIM=1)"
    REQUIRED = ("tool", "success", "onnx")

    @property
    def built_from(self) -> str | None:
        """The sha256 of the ONNX this .om was built from."""
        return (self.get("onnx") or {}).get("sha256")


class DeployRecord(Record):
    FILE = "deploy.json"
    MADE_BY = "`atlas-kd deploy --run {run}` (make deploy)"
    REQUIRED = ("boards",)

    def ok_boards(self) -> list[dict[str, Any]]:
        return [b for b in self.get("boards") or [] if b.get("status") == "ok"]

    @staticmethod
    def held_weights(run: str | os.PathLike | Run, board: dict[str, Any]) -> Path | None:
        """This machine's copy of the ONNX a board holds when its weights are not the export's (a lossy delta
        rebuilt them): verify's reference for that board. None when the board holds the exported model."""
        delta = board.get("delta") or {}
        held = delta.get("board_onnx") or {}
        if not held.get("sha256") or held["sha256"] == delta.get("exact_onnx_sha256"):
            return None
        return as_run(run) / board["local_dir"] / held["path"]


class VerifyRecord(Record):
    FILE = "verify.json"
    MADE_BY = "`atlas-kd verify --run {run}` (make verify)"
    REQUIRED = ("boards", "passed")


class QuantRecord(Record):
    FILE = "quant.json"
    MADE_BY = "`atlas-kd quantize --run <the run {run} was quantised from>` (make quant)"
    REQUIRED = ("accuracy", "layers", "bytes")

    @property
    def summary(self) -> str:
        """One line: what int8 costs in accuracy and saves in weight bytes (quantize prints it, report.md shows it)."""
        a, b, qat = self["accuracy"], self["bytes"], self.get("qat")
        accuracy = "no labels: accuracy not judged" if a.get("drop_pts") is None else (
            f"fp32 {100 * a['fp32']:.2f} % -> int8 {100 * a['int8']:.2f} % on {a['count']:,} images of the {a['on']} "
            f"({-a['drop_pts']:+.2f} pts, budget {a['budget_pts']} pts{'' if a['within_budget'] else ': over it'})")
        if qat:
            accuracy += (f"; after QAT (PTQ alone {100 * qat['accuracy_ptq']:.2f} %, QAT recovered "
                         + ("n/a" if qat["recovered"] is None else f"{100 * qat['recovered']:.0f} %") + " of the gap)")
        return (f"int8 ({self.get('tool', 'atlas-kd')}): {accuracy}; weights {b['fp32']['weights']:,} -> "
                f"{b['deploy']['weights']:,} bytes ({b['weights_ratio']:.2f}); {len(self['layers'])} int8 layers")


class LocateRecord(Record):
    FILE = "locate.json"
    MADE_BY = "`atlas-kd locate --run {run}`"
    REQUIRED = ("tensors", "first_divergent")


class SplitRecord(Record):
    """split.json: the teacher's sub-models, the students' accuracies per seed (A alone, A+B, A's plain and KD
    baselines) and how A and B combine; its folder is the split run that deploy and verify take."""

    FILE = "split.json"
    MADE_BY = "`atlas-kd split --run <the run {run} was split from>`"
    REQUIRED = ("teacher", "seeds", "summary", "combination")


RECORDS: tuple[type[Record], ...] = (TrainRecord, PruneRecord, ExportRecord, AtcRecord, DeployRecord, VerifyRecord,
                                     LocateRecord, QuantRecord, SplitRecord)


# --- freshness: is what a later stage consumed still what it was? ---------------------------------------------

def stale_om(run: str | os.PathLike | Run, export: ExportRecord) -> str | None:
    """Why model.om does not belong to the current export (None: it does, or nothing says otherwise)."""
    atc = AtcRecord.read_for_report(run)
    built_from, exported = (atc.built_from if atc else None), (export.get("onnx") or {}).get("sha256")
    if built_from and exported and built_from != exported:
        return (f"{as_run(run) / MODEL_OM} was built from another ONNX than the current export (atc.json and "
                "export.json differ): build it again with make om (SIM=1 for the sim board)")
    return None


def golden_image_name(index: int) -> str:
    return f"{index:06d}.jpg"


def remote_images_dir(count: int) -> str:
    return f"{REMOTE_IMAGES}-{count}"


def stale_upload(run: str | os.PathLike | Run, board: dict[str, Any], inputs: Path) -> str | None:
    """Why a board's outputs no longer answer the current model.om and golden inputs (deploy.json keeps the
    sha256 of what it sent); None when they still do."""
    run = as_run(run)
    current = {REMOTE_MODEL: run / MODEL_OM, REMOTE_INPUTS: inputs, REMOTE_INPUTS_NPZ: inputs}
    export = ExportRecord.read_unchecked(run)
    images = export.board_images(run) if export is not None and "board_input" in export else None
    for path in images or []:  # export.dvpp: the JPEGs, by their name on the board
        current[f"{remote_images_dir(len(images))}/{path.name}"] = path
    for upload in board.get("uploads") or []:
        local = current.get(upload.get("file"))
        if local is not None and local.is_file() and upload.get("sha256") and sha256_file(local) != upload["sha256"]:
            what = "built again" if upload["file"] == REMOTE_MODEL else "exported again"  # the inputs
            return (f"{run / board['local_dir']}: the board ran an earlier {upload['file']} ({local} was {what} "
                    "since): deploy again (make deploy), or pass --board-dir DIR with outputs you trust")
    updated_from = (board.get("delta") or {}).get("exact_onnx_sha256")  # deploy.delta: the ONNX the update was of
    exported = ((ExportRecord.read_unchecked(run) or {}).get("onnx") or {}).get("sha256")
    if updated_from and exported and updated_from != exported:
        return (f"{run / board['local_dir']}: the board holds a model updated from an earlier {ONNX} (exported "
                "again since): deploy again (make deploy), or pass --board-dir DIR with outputs you trust")
    return None
