"""The real road to an int8 .om: Huawei's AMCT for ONNX (amct_onnx, inside the CANN toolkit) on the same
calibration set as atlas-kd's quantiser.

`<run>/int8/amct/` holds what AMCT needs (the fp32 model, the calibration set, amct_calibrate.py) and, once it
ran, what it wrote (the deploy and fake-quant models, and amct.json: the sha256 of the model and calibration set
it quantised). Where amct_onnx imports, `quantize --amct` runs the script itself; elsewhere it prepares the
folder and prints the command for the toolkit machine; run again with the folder brought back, it takes AMCT's
models into the derived run (after checking they are of this model and this calibration set).
"""
from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from atlas import run_folder as rf
from atlas.errors import UserError
from atlas.fileio import atomic_dir, read_json, save_npy, sha256_file

SCRIPT = Path(__file__).with_name("amct_calibrate.py")


def available() -> bool:
    """Whether amct_onnx can be imported here (only a CANN toolkit machine has it)."""
    return importlib.util.find_spec("amct_onnx") is not None


def script_argv(folder: Path, batch: int, skip: list[str], activation_offset: bool) -> list[str]:
    """The script's command line, run inside the amct/ folder (paths relative to it)."""
    def local(name: str) -> str:
        return Path(name).relative_to(rf.AMCT).as_posix()

    argv = ["python3", local(rf.AMCT_SCRIPT), "--model", local(rf.AMCT_ONNX), "--calibration",
            local(rf.AMCT_CALIBRATION), "--batch", str(batch), "--out", local(rf.AMCT_PREFIX), "--record",
            local(rf.AMCT_RECORD)]
    argv += [word for name in skip for word in ("--skip", name)]
    return argv + ([] if activation_offset else ["--symmetric"])


def prepare(folder: Path, model_path: Path, calibration: np.ndarray) -> None:
    """Write amct/ whole: the fp32 model, the calibration set and the script (AMCT's earlier outputs go)."""
    with atomic_dir(folder) as tmp:
        shutil.copyfile(model_path, tmp / Path(rf.AMCT_ONNX).name)
        save_npy(tmp / Path(rf.AMCT_CALIBRATION).name, calibration)
        shutil.copyfile(SCRIPT, tmp / Path(rf.AMCT_SCRIPT).name)


def results(run: rf.Run, model_path: Path, calibration: np.ndarray) -> tuple[Path, Path] | None:
    """(deploy model, fake-quant model) AMCT wrote in `run`'s amct/ for this model and calibration set; None
    when it has not run; a UserError when what is there belongs to another model or set."""
    record_path, deploy, fake = run / rf.AMCT_RECORD, run / rf.AMCT_DEPLOY, run / rf.AMCT_FAKE_QUANT
    if not record_path.is_file():
        return None
    record = read_json(record_path)
    staged = run / rf.AMCT_CALIBRATION
    same_set = staged.is_file() and np.array_equal(np.load(staged), calibration)
    if record.get("model_sha256") != sha256_file(model_path) or not same_set:
        raise UserError(f"{record_path}: AMCT quantised another model or calibration set than the run's current "
                        f"ones: delete {run / rf.AMCT} and run `atlas-kd quantize --run {run.path.parent} --amct` "
                        "again")
    missing = [p for p in (deploy, fake) if not p.is_file()]
    if missing:
        raise UserError(f"{missing[0]}: not found, though {record_path} says AMCT ran: copy the whole amct/ folder "
                        "back from the toolkit machine")
    return deploy, fake


def run_here(run: rf.Run, batch: int, skip: list[str], activation_offset: bool) -> None:
    """Run the script with this Python (amct_onnx importable), in the amct/ folder."""
    argv = [sys.executable, *script_argv(run / rf.AMCT, batch, skip, activation_offset)[1:]]
    result = subprocess.run(argv, cwd=run / rf.AMCT, capture_output=True, text=True)
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"AMCT failed in {run / rf.AMCT} (exit {result.returncode}): {last}", exit_code=1)


def instructions(run: rf.Run, parent: Path, batch: int, skip: list[str], activation_offset: bool) -> str:
    """What to run on the CANN toolkit machine, and how to bring the result back."""
    folder = run / rf.AMCT
    command = shlex.join(script_argv(folder, batch, skip, activation_offset))
    return "\n".join([
        f"amct_onnx is not importable here; {folder} holds what AMCT needs (model, calibration set, script).",
        "On the CANN toolkit machine (its Python with amct_onnx, e.g. after `source .../ascend-toolkit/set_env.sh`):",
        f"  scp -r {folder} TOOLKIT:  &&  ssh TOOLKIT 'cd amct && {command}'",
        f"  scp -r TOOLKIT:amct {run}/",
        f"then take AMCT's models into the derived run: atlas-kd quantize --run {parent} --amct",
        f"and convert its deploy model with ATC: make om QUANT=1 RUN={parent}"])
