"""The run configuration: one dataclass per section, defaults here and nowhere else.

Precedence: defaults < TOML file (or the run folder's saved `config.json`) < command-line options.
Every field gets a command-line option `--<section>-<field>` (dashes for underscores), e.g.
`--student-epochs 3`, `--data-dir ../shared/data/mnist`; top-level fields are `--name`, `--seed`,
`--device`. `--set section.field=value` reaches any field too.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.errors import UserError
from atlas.fileio import require_writable


@dataclass
class DataConfig:
    dataset: str = "mnist-sample"  # mnist | mnist-sample | cifar10
    dir: str = ""  # folder with the official files; empty: download into the cache (mnist-sample is embedded)
    batch_size: int = 128
    augment: bool = False  # random crop + flip (CIFAR-10); turns off the teacher-logit cache
    train_limit: int = 0  # use only the first N training images (0: all); for smoke tests and quick looks
    test_limit: int = 0  # likewise for the test images


@dataclass
class TrainConfig:
    """How one network is trained (used for the teacher and for the student)."""

    model: str = ""
    epochs: int = 5
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd | pmw (PMW-SGD on the Linear weights, strength compress.pmw_strength) | adam | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # onecycle | cosine | constant


@dataclass
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft-target term; 1 - alpha goes to hard-label CE
    baseline: bool = True  # also train the student without KD under the same budget


@dataclass
class CompressConfig:
    slim: float = 0.0  # L1 weight on the student's BatchNorm scale factors during training (network slimming)
    channels: float = 0.5  # fraction of conv channels `atlas-kd prune` removes (global threshold)
    align: int = 1  # round each pruned layer's width to a multiple of this (16: the Ascend Cube's channel block)
    finetune_epochs: int = 5  # KD fine-tuning after channel pruning
    finetune_lr: float = 0.02
    pmw_strength: float = 2.0  # PMW-SGD: how much more the largest weights move than the smallest (0 = SGD)
    fc_sparsity: float = 0.0  # fraction of FC weights `atlas-kd prune` zeroes by magnitude (unstructured)
    fc_scope: str = "global"  # global: rank all FC weights together | layer: each FC layer to the same sparsity


@dataclass
class ExportConfig:
    opset: int = 11  # the only opset the ATC of CANN 5.x (Atlas 200 DK) parses
    batch: int = 1
    golden_count: int = 1000
    simplify: bool = True
    parity_atol: float = 1e-4


@dataclass
class OmConfig:
    soc_version: str = "Ascend310"
    precision_mode: str = "force_fp16"
    aipp: bool = False  # normalise on chip: the board is fed uint8 NHWC images
    sim: bool = False  # use atc-sim (board-free rehearsal) instead of the real ATC
    atc: str = ""  # path to the real atc; empty: search PATH and the CANN install folders
    log: str = "error"
    timeout_s: int = 900
    extra: list[str] = field(default_factory=list)  # passed to ATC verbatim, e.g. ["--enable_small_channel=1"]


@dataclass
class DeployConfig:
    boards: list[str] = field(default_factory=list)  # user@host[:port] or ~/.ssh/config aliases
    remote_dir: str = "atlas-kd"  # relative to the login's home unless absolute
    batch: int = 1
    loop: int = 1
    known_hosts: str = ""  # empty: ~/.ssh/known_hosts
    python: str = "python3"
    env_script: str = ""  # sourced before the app runs, e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh
    connect_timeout_s: float = 10.0
    retries: int = 4


@dataclass
class VerifyConfig:
    min_top1_agreement: float = 0.999
    min_cosine: float = 0.999


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TrainConfig = field(default_factory=lambda: TrainConfig(model="cnn"))
    student: TrainConfig = field(default_factory=lambda: TrainConfig(model="tinycnn"))
    distill: DistillConfig = field(default_factory=DistillConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    om: OmConfig = field(default_factory=OmConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ["data", "teacher", "student", "distill", "compress", "export", "om", "deploy", "verify"]


# --- loading -------------------------------------------------------------------------------------------

def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the file (TOML, or a run folder's config.json), then `overrides` ({"student.epochs": 3})."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        data = _read_config_file(path)
        if "name" not in data and path.suffix == ".toml":
            data["name"] = path.stem
        _apply_mapping(cfg, data, where=str(path))
    for key, value in (overrides or {}).items():
        set_value(cfg, key, value, where="command line")
    return cfg


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"config file {path} not found (see configs/ for the recipes)") from None
    except OSError as e:
        raise UserError(f"config file {path} cannot be read: {e.strerror}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a table at the top level")
    return data


def _apply_mapping(cfg: Config, data: dict[str, Any], where: str) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            section = getattr(cfg, key, None)
            if not dataclasses.is_dataclass(section):
                raise UserError(f"{where}: unknown section [{key}] (known: {', '.join(SECTIONS)})")
            for sub, subvalue in value.items():
                set_value(cfg, f"{key}.{sub}", subvalue, where=where)
        else:
            set_value(cfg, key, value, where=where)


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def set_value(cfg: Config, dotted: str, value: Any, where: str) -> None:
    """Set `section.field` (or a top-level field) with strict type checking; strings from the CLI are parsed."""
    parts = dotted.split(".")
    target: Any = cfg
    for part in parts[:-1]:
        target = getattr(target, part, None) if part in SECTIONS else None
        if not dataclasses.is_dataclass(target):
            raise UserError(f"{where}: unknown config key '{dotted}' (sections: {', '.join(SECTIONS)})")
    name = parts[-1]
    types = _field_types(target)
    if name not in types or dataclasses.is_dataclass(getattr(target, name)):
        known = ", ".join(k for k in types if not dataclasses.is_dataclass(getattr(target, k)))
        raise UserError(f"{where}: unknown config key '{dotted}' (known here: {known})")
    setattr(target, name, _coerce(types[name], value, dotted, where))


def _coerce(tp: Any, value: Any, key: str, where: str) -> Any:
    from_cli = isinstance(value, str) and where == "command line"
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_cli and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise UserError(f"{where}: '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_cli:
            try:
                return int(value)
            except ValueError:
                pass
        raise UserError(f"{where}: '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_cli:
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where}: '{key}' must be a string, got {value!r}")
    if typing.get_origin(tp) is list:
        if from_cli:
            return [v for v in value.split(",") if v] if value else []
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise UserError(f"{where}: '{key}' must be a list of strings, got {value!r}")
    raise AssertionError(f"unsupported config type {tp} for {key}")


# --- command line ---------------------------------------------------------------------------------------

_TOP_LEVEL = ("name", "seed", "device")


def option_name(dotted: str) -> str:
    return "--" + dotted.replace(".", "-").replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, sections: list[str] | None = None,
                         exclude: tuple[str, ...] = ()) -> None:
    """Add `--config`, `--set` and one `--section-field` option per config field (all sections by default),
    except the dotted fields in `exclude`: options a command would accept and silently ignore."""
    parser.add_argument("--config", metavar="TOML", help="recipe file (default: the run folder's config.json, else built-in defaults)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override any config key, e.g. student.epochs=3")
    group = parser.add_argument_group("config overrides")
    defaults = Config()
    for name in _TOP_LEVEL:
        group.add_argument(option_name(name), dest=f"cfg:{name}", metavar="VALUE", default=None,
                           help=f"(default {getattr(defaults, name)!r})")
    for section in sections or SECTIONS:
        obj = getattr(defaults, section)
        for f in dataclasses.fields(obj):
            dotted = f"{section}.{f.name}"
            if dotted in exclude:
                continue
            group.add_argument(option_name(dotted), dest=f"cfg:{dotted}", metavar="VALUE", default=None,
                               help=f"(default {getattr(obj, f.name)!r})")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in getattr(args, "set", []) or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set student.epochs=3")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    for dest, value in vars(args).items():
        if dest.startswith("cfg:") and value is not None:
            overrides[dest[4:]] = value
    return overrides


def config_from_args(args: argparse.Namespace, run_dir: str | Path | None = None) -> Config:
    """The config a stage runs with: --config, else `<run_dir>/config.json` when present, plus overrides."""
    path = getattr(args, "config", None)
    if path is None and run_dir is not None and (Path(run_dir) / "config.json").exists():
        path = Path(run_dir) / "config.json"
    return load_config(path, overrides_from_args(args))


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / cfg.name


def make_run_dir(run_dir: str | Path) -> Path:
    """Create the run folder (and its parents) for a stage to write into; a UserError when it cannot be one."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} is a file, not a folder: pass --run with a folder path")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {run_dir}: {e.strerror or e} (pass --run with a folder "
                        "you can write)") from None
    require_writable([run_dir], "the stage writes its artifacts there (or pass --run with another folder)")
    return run_dir
