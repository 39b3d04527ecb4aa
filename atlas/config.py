"""The run configuration: one dataclass per section, defaults here and nowhere else.

Precedence: defaults < TOML file (or the run folder's saved `config.json`) < command-line options.
Every field gets a command-line option `--<section>-<field>` (dashes for underscores), e.g.
`--student-epochs 3`, `--data-dir ../shared/data/mnist`; top-level fields are `--name`, `--seed`,
`--device`. `--set section.field=value` reaches any field too. A command's short flags (`--board`, `--sim`,
`--teacher`, `--channels`, ...) are `Alias`es of fields: the config is the one channel a stage reads.
Never config fields: `--trust-new-host`, passwords and key passphrases (not written to config.json or any record).
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
from atlas.run_folder import CONFIG


@dataclass
class DataConfig:
    dataset: str = "mnist-sample"  # mnist | mnist-sample | cifar10 | imagefolder (your own images: train/<class>/*)
    dir: str = ""  # folder with the official files (or the image folder); empty: download (mnist-sample is embedded)
    batch_size: int = 128
    augment: bool = False  # random crop + flip (CIFAR-10); turns off the teacher-logit cache
    train_limit: int = 0  # use only the first N training images (0: all); for smoke tests and quick looks
    test_limit: int = 0  # likewise for the test images
    # imagefolder only (training/imagefolder.py): how images become model inputs
    image_size: int = 32  # square side after resizing
    channels: str = "rgb"  # rgb | gray
    resize: str = "crop"  # crop: shorter side to image_size, then the centre | stretch: straight to the size
    classes: list[str] = field(default_factory=list)  # label order; empty: the sorted class folder names
    test_fraction: float = 0.1  # held out of train/ (stratified, seeded) when there is no test/ folder
    mean: list[float] = field(default_factory=list)  # per channel, after /255; empty: computed from train
    std: list[float] = field(default_factory=list)


@dataclass
class TrainConfig:
    """How one network is trained (used for the teacher and for the student)."""

    model: str = ""  # a registry name (training/models.py), or your own: "package.module:factory"
    model_args: dict = field(default_factory=dict)  # keyword arguments for your own model's factory
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
    teacher_checkpoint: str = ""  # reuse this trained teacher (copied into the run) instead of training one
    augment_views: int = 0  # with data.augment: K fixed augmented views, teacher logits cached for each (KD at
    #                        plain-training cost); student and baseline see the same views. 0: teacher per batch


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
    widths: list[int] = field(default_factory=list)  # channels `prune` keeps per conv (replaces channels/align)


@dataclass
class ExportConfig:
    opset: int = 11  # the only opset the ATC of CANN 5.x (Atlas 200 DK) parses
    batch: int = 1
    golden_count: int = 1000
    simplify: bool = True
    parity_atol: float = 1e-4
    checkpoint: str = ""  # the checkpoint to export; empty: the run's student.pt
    onnx: str = ""  # export your own ONNX instead of a checkpoint
    input_shape: str = ""  # with onnx: fix dynamic input dims, ATC's form "x:1,3,640,640;y:1,4"
    images: str = ""  # with onnx: golden inputs from this folder of images (class folders give labels)
    inputs: str = ""  # with onnx: golden inputs already preprocessed (.npy; .npz by input name for several)
    dvpp: bool = False  # with images (JPEG): the board decodes and resizes them on DVPP into a YUV420SP AIPP model


@dataclass
class OmConfig:
    soc_version: str = "Ascend310"
    precision_mode: str = "force_fp16"
    aipp: bool = False  # normalise on chip (uint8 NHWC board inputs): decided at export, recorded in export.json
    sim: bool = False  # use atc-sim (board-free rehearsal) instead of the real ATC
    onnx: str = ""  # convert this ONNX instead of the run's export (output in the run folder)
    lint: bool = True  # lint the ONNX before ATC (false: let ATC decide)
    on_board: str = ""  # run ATC on this board over SSH (upload the ONNX, convert there, fetch the .om)
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
    known_hosts: str = ""  # empty: UserKnownHostsFile from the ssh config, else ~/.ssh/known_hosts
    ssh_config: str = ""  # empty: ~/.ssh/config when it exists
    identities: list[str] = field(default_factory=list)  # private keys to offer first
    python: str = "python3"
    env_script: str = ""  # sourced before the app runs, e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh
    connect_timeout_s: float = 10.0
    retries: int = 4
    memory_mib: int = 8192  # the board's memory: lint refuses a tensor larger than this (an Atlas 200 DK: 8 GB)
    profile: bool = False  # time every operator on the board (acl.prof; CPU times on the sim board): profile.json
    # model updates that send only what changed (docs/delta.md): off | lossless | lossy
    delta: str = "off"
    delta_tolerance: float = 1e-3  # lossy: each rebuilt weight within this fraction of its tensor's RMS
    delta_route: str = "auto"  # auto: ATC on the board when it has one, else a binary delta of the .om | atc | om
    atc: str = ""  # the board's ATC for delta rebuilds; empty: atc on its PATH (atc-sim for a sim .om)


@dataclass
class VerifyConfig:
    min_top1_agreement: float = 0.999
    min_cosine: float = 0.999
    board_dir: str = ""  # folder with a board's outputs.npy; empty: the folders deploy.json lists
    locate: bool = False  # on a FAIL, run `atlas-kd locate` to find the first tensor that diverges
    # an int8 run (quantize's derived run): the board against the int8 CPU reference (near exact), and against
    # the fp32 reference (the quantisation error the user pays)
    int8_min_top1_agreement: float = 0.999
    int8_min_cosine: float = 0.999
    int8_fp32_min_top1_agreement: float = 0.98
    int8_fp32_min_cosine: float = 0.95


@dataclass
class QuantConfig:
    """`atlas-kd quantize`: the calibration set, AMCT's default scheme (docs/int8.md), the budget, QAT, AMCT."""

    calibration_count: int = 32  # drawn from the training split, class-balanced (AMCT advises at most 50)
    calibration_seed: int = 0
    calibration: str = ""  # your own preprocessed calibration inputs (.npy) instead of the draw
    activation_offset: bool = True  # AMCT's default: asymmetric activations (with an offset); false: symmetric
    channel_wise: bool = True  # one weight scale per Conv output channel (AMCT's default; a Gemm has one)
    weight_bits: int = 8  # 2-8, stored as int8 either way (fewer bits: a study of where PTQ breaks)
    max_percentile: float = 0.999999  # IFMR's initial clip points ...
    min_percentile: float = 0.999999
    search_start: float = 0.7  # ... and the search of the max: [start, end) in steps
    search_end: float = 1.3
    search_step: float = 0.01
    skip_layers: list[str] = field(default_factory=list)  # node names kept in float
    budget_pts: float = 0.3  # the accuracy PTQ may cost, in points; beyond it, try --qat
    amct: bool = False  # Huawei's AMCT (amct_onnx) instead of atlas-kd's quantiser
    qat: bool = False  # fine-tune with fake quantisation and KD from the run's teacher, then quantise
    qat_epochs: int = 3
    qat_lr: float = 0.01


@dataclass
class LocateConfig:
    """`atlas-kd locate`: which tensors, on how many golden inputs, judged how."""

    count: int = 8  # golden inputs the board runs
    layers: list[str] = field(default_factory=list)  # node names to observe; empty: every node output
    min_cosine: float = 0.999  # per tensor, board vs the fp16-emulated reference (worst sample)
    bisect: bool = False  # prefix models, one output each, instead of one model with every tensor as output


@dataclass
class SplitConfig:
    """`atlas-kd split`: the teacher's FC layer split into sub-models A and B, two students learning them, and the
    link between their boards (docs/split.md). The students train with [student]'s optimizer, lr and epochs."""

    sparsity_a: float = 0.95  # FC weights sub-model A removes (by magnitude, after PMW-SGD)
    sparsity_b: float = 0.85  # ... sub-model B; its kept weights hold A's
    nodes_a: int = 25  # LeNet-A's last hidden FC layer: it learns sub-model A's FC-layer outputs
    nodes_b: int = 50  # LeNet-B's: it learns the part of sub-model B not in A
    b_channels: list[int] = field(default_factory=lambda: [6, 16])  # LeNet-B's two conv layers; wider: a larger B
    fc_epochs: int = 5  # PMW-SGD fine-tuning of the teacher's FC layer on its cached inputs (compress.pmw_strength)
    fc_lr: float = 0.01
    joint_epochs: int = 10  # A, B and the merge head fine-tuned as one
    joint_lr: float = 0.005
    joint_a_weight: float = 1.0  # A's own FC-node loss during joint fine-tuning: A alone stays what it learned
    seeds: int = 2  # the whole recipe (and A's baselines) once per seed: seed, seed + 1, ...
    deadline_ms: float = 100.0  # A's board waits this long (from sending) for B's answer, else answers alone
    link_host: str = ""  # B's address as A's board reaches it; empty: the host deploy's SSH login to B used
    link_port: int = 0  # the TCP port B's board listens on; 0: a free one, chosen there
    reconnect_s: float = 1.0  # after a lost link, A's board tries B again at most this often


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
    locate: LocateConfig = field(default_factory=LocateConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ["data", "teacher", "student", "distill", "compress", "export", "om", "deploy", "verify", "locate", "quant", "split"]


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
    coerced = _coerce(types[name], list(value) if isinstance(value, _Appended) else value, dotted, where)
    setattr(target, name, [*getattr(target, name), *coerced] if isinstance(value, _Appended) else coerced)


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
    if tp is dict:
        if from_cli:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise UserError(f"{where}: '{key}' must be a JSON object, e.g. '{{\"width\": 64}}'") from None
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise UserError(f"{where}: '{key}' must be a table (TOML) or a JSON object, got {value!r}")
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        if from_cli:
            value = [v for v in value.split(",") if v] if value else []
        if isinstance(value, list):
            try:
                return [_coerce(item, v, key, where) for v in value]
            except UserError:
                pass
        kind = {str: "strings", int: "integers", float: "numbers"}[item]
        raise UserError(f"{where}: '{key}' must be a list of {kind}, got {value!r}")
    raise AssertionError(f"unsupported config type {tp} for {key}")


# --- command line ---------------------------------------------------------------------------------------

_TOP_LEVEL = ("name", "seed", "device")


@dataclass(frozen=True)
class Alias:
    """A command's short flag for one config field, e.g. `--board B` for `deploy.boards`, `--sim` for `om.sim`.

    kind: "value" (parsed like `--section-field`), "true"/"false" (a switch setting a bool), "list" (repeatable;
    replaces the file's list), "append" (repeatable; added to the file's list).
    """

    flag: str
    key: str
    kind: str = "value"
    help: str = ""
    metavar: str = "VALUE"
    choices: tuple[str, ...] | None = None  # checked by argparse (a bad value is a usage error, exit 2)
    type: Any = None  # likewise: a callable that parses the flag's text


class _Appended(list):
    """Command-line items to add to a list field rather than replace it."""


def option_name(dotted: str) -> str:
    return "--" + dotted.replace(".", "-").replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, sections: list[str] | None = None,
                         exclude: tuple[str, ...] = (), aliases: tuple[Alias, ...] = ()) -> None:
    """Add `--config`, `--set`, one `--section-field` option per config field (all sections by default) except
    the dotted fields in `exclude` (options a command would accept and ignore), and the command's `aliases`."""
    parser.add_argument("--config", metavar="TOML", help="recipe file (default: the run folder's config.json, else built-in defaults)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override any config key, e.g. student.epochs=3")
    for alias in aliases:
        default = _field_default(alias.key)
        text = f"{alias.help} ({alias.key}; default {default!r})" if alias.help else f"alias of {alias.key}"
        if alias.kind in ("true", "false"):
            parser.add_argument(alias.flag, action="store_const", const=alias.kind, dest=f"cfg:{alias.key}", help=text)
        elif alias.kind in ("list", "append"):
            parser.add_argument(alias.flag, action="append", dest=f"cfg-{alias.kind}:{alias.key}", metavar=alias.metavar,
                                help=text + "; repeatable")
        else:
            parser.add_argument(alias.flag, dest=f"cfg:{alias.key}", metavar=alias.metavar, help=text,
                                choices=alias.choices, type=alias.type)
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


def _field_default(dotted: str) -> Any:
    target: Any = Config()
    for part in dotted.split("."):
        target = getattr(target, part)
    return target


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in getattr(args, "set", []) or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set student.epochs=3")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    for dest, value in vars(args).items():
        if value is None:
            continue
        if dest.startswith("cfg:"):
            overrides[dest[4:]] = value
        elif dest.startswith("cfg-list:"):
            overrides[dest[9:]] = list(value)
        elif dest.startswith("cfg-append:"):
            overrides[dest[11:]] = _Appended(value)
    return overrides


def config_and_run(args: argparse.Namespace) -> tuple[Config, Path, Path | None]:
    """The config and run folder of a stage, the same rule for every command: the run folder is `--run`, else
    `runs/<config name>`; the config is `--config`, else the run folder's config.json, else the defaults; then the
    command-line overrides. Returns (config, run folder, the config file read or None)."""
    overrides = overrides_from_args(args)
    path = Path(args.config) if getattr(args, "config", None) else None
    cfg = load_config(path, overrides)
    run_dir = Path(args.run) if getattr(args, "run", None) else Path("runs") / cfg.name
    if path is None and (run_dir / CONFIG).is_file():
        path = run_dir / CONFIG
        cfg = load_config(path, overrides)
    return cfg, run_dir, path
