"""Checkpoints: plain dicts of tensors and primitives, written atomically, read with weights_only=True.

A model checkpoint carries everything a later stage needs without the training code's objects:
the arch dict (rebuilds the network, pruned widths included), the state dict, the data set's
normalisation and input shape, the config it was trained with and its metrics.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atlas.errors import UserError
from atlas.fileio import atomic_path, short_write
from training.models import build_model

FORMAT = "atlas-kd.checkpoint.v1"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle (protocol 2+)
STATE_FORMAT = "atlas-kd.train-state.v1"


def save(path: str | Path, payload: dict[str, Any]) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as e:  # torch reports a full disk as "[enforce fail ...] unexpected pos ..."
            full = short_write(tmp.parent)
            if full is None:
                raise
            raise full from e


def load(path: str | Path, expect_format: str = FORMAT) -> dict[str, Any]:
    """Load and sanity-check a checkpoint; every way it can be bad becomes one UserError line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found (train first: atlas-kd train, or pass the right path)")
    head = _head(path)
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise UserError(f"{path}: truncated or not a PyTorch checkpoint (its first bytes are neither a zip archive "
                        "nor a pickle: damaged or another kind of file); train again or pass the right path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise UserError(f"{path}: holds objects other than tensors and plain data; refusing to unpickle it "
                            "(only atlas-kd checkpoints are accepted)") from None
        raise UserError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as e:  # KeyError: junk bytes
        raise UserError(f"{path}: truncated or not a PyTorch checkpoint ({_first_line(e)})") from None
    if not isinstance(payload, dict) or payload.get("format") != expect_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise UserError(f"{path}: not an atlas-kd checkpoint (format {found!r}, expected {expect_format!r})")
    return payload


def model_payload(model: nn.Module, arch: dict, role: str, dataset: dict, config: dict, metrics: dict) -> dict:
    return {
        "format": FORMAT,
        "role": role,
        "arch": arch,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "dataset": dataset["name"],
        "input_shape": list(dataset["input_shape"]),
        "num_classes": dataset["num_classes"],
        "normalization": {"mean": list(dataset["mean"]), "std": list(dataset["std"])},
        "class_names": list(dataset["class_names"]),
        "config": config,
        "metrics": metrics,
    }


def load_model(path: str | Path, expect_arch: str | None = None,
               trusted: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from a checkpoint and load its weights strictly (eval mode). A user's model is imported
    only when `trusted` (default `expect_arch`: what the config names) is its factory."""
    payload = load(path)
    arch = payload.get("arch") or {}
    if expect_arch is not None and arch.get("name") != expect_arch:
        raise UserError(f"{path}: checkpoint holds a '{arch.get('name')}' but the config names '{expect_arch}' "
                        "(pass the matching --config or checkpoint)")
    model = build_model(arch, trusted=trusted or expect_arch)
    check_finite(payload.get("state_dict") or {}, path)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError) as e:
        raise UserError(f"{path}: weights do not fit the '{arch.get('name')}' architecture it names "
                        f"({_first_line(e)})") from None
    model.eval()
    return model, payload


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None


def check_finite(state_dict: dict[str, Any], path: str | Path) -> None:
    """Refuse weights with NaN or Inf, naming the first such tensor: a model that diverged (or a damaged file)
    would make every later stage compute garbage."""
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise UserError(f"{path}: tensor {name} holds {bad} NaN/Inf value(s) of {value.numel()}: these weights "
                            "diverged or are damaged, so every output would be garbage; train the model again")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
