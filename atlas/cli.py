"""`atlas-kd <command>`: a thin shell over the stage functions, one command to one stage.

The pipeline, in order (docs/architecture.md has what each reads and writes in the run folder):

    train    training/train.py      train(cfg, run)      -> train.json, teacher/student/baseline.pt
    prune    training/prune_stage.py prune(cfg, run)     -> <run>/pruned/ (a derived run), prune.json
    export   export/stage.py        export(cfg, run)     -> model.onnx, golden/, export.json
    quantize export/quant/stage.py  quantize(cfg, run)   -> <run>/int8/ (a derived run), quant.json
    om       atlas/om_stage.py      build_om(cfg, run)   -> model.om, atc.json
    deploy   atlas/deploy.py        deploy(cfg, run)     -> board/, deploy.json
    verify   atlas/verify.py        verify(cfg, run)     -> verify.json, report.md
    locate   atlas/locate.py        prepare, om, deploy, judge -> locate.json, locate.csv, locate.png
    split    training/split.py      split(cfg, run)      -> <run>/split/ (A/, B/, head.npz), split.json; deploy and
             atlas/split_deploy.py, atlas/split_verify.py take the split run across two boards

Every stage gets its config and run folder the same way (`config_and_run`): the run folder is `--run`, else
`runs/<config name>`; the config is `--config`, else the run's config.json, else the defaults, then the command
line. A command's flags are aliases of config fields (`Alias`), except the few that say how to run rather than
what to compute (`--resume`, `--no-progress`, `--trust-new-host`, `--out`). Stage modules are imported only when
their command runs, so `atlas-kd lint` does not pay for importing torch. This is the composition root: the one
place that also reaches the rehearsal tools of atlas/sim (by module name), which production code never imports.
A `UserError` becomes one line on stderr and its exit code; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

from atlas import run_folder as rf
from atlas.config import Alias, Config, add_config_arguments, config_and_run
from atlas.errors import UserError
from atlas.fileio import os_error_line

SIM_BOARD_MODULE = "atlas.sim.sim_board"  # the rehearsal tools, reached by name (see the module doc)
SSHD_MODULE = "atlas.sim.sshd"

SSH_ALIASES = (
    Alias("--ssh-config", "deploy.ssh_config", help="ssh config file", metavar="PATH"),
    Alias("--known-hosts", "deploy.known_hosts", help="known_hosts file", metavar="PATH"),
    Alias("--identity", "deploy.identities", "list", help="private key to offer first", metavar="KEYFILE"),
)


MEMORY_ALIAS = Alias("--board-memory-mib", "deploy.memory_mib", help="the board's memory; lint refuses a larger "
                     "tensor", metavar="MIB")


def _widths(text: str) -> list[str]:
    values = text.split(",")
    if not all(v.strip().isdigit() for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated channel counts, e.g. 2,16,10; got {text!r}")
    if min(int(v) for v in values) < 1:
        raise argparse.ArgumentTypeError(f"every width must be >= 1, got {text!r}")
    return values


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (what is wrong, where help is), not the whole usage block;
    subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _run_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", metavar="DIR", help="run folder (default runs/<config name>)")


def _trust_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-new-host", action="store_true",
                        help="accept a board whose host key is not yet known: print its fingerprint and record it "
                             "(a changed key is still refused); never a config field")


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


# --- train ------------------------------------------------------------------------------------------------

def _train_options(p: argparse.ArgumentParser) -> None:
    _run_option(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(p, aliases=(
        Alias("--teacher", "distill.teacher_checkpoint", help="reuse a trained teacher checkpoint", metavar="PATH"),
        Alias("--dataset", "data.dataset", metavar="NAME"),
        Alias("--slim", "compress.slim", help="network slimming: L1 penalty on the student's BN scale factors",
              metavar="LAMBDA"),
    ))


def _train(args: argparse.Namespace) -> int:
    from training.train import train

    cfg, run, _ = config_and_run(args)
    train(cfg, run, resume=args.resume, progress=_progress(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 wrote everything
        written = [role for role, name in rf.CHECKPOINTS.items() if (run / name).exists()]
        print(f"wrote {run}/{{{','.join(written)}}}.pt, train.json, curves.png")
    return 0


# --- prune ------------------------------------------------------------------------------------------------

_PRUNE_ALIASES = (
    Alias("--channels", "compress.channels", help="fraction of conv channels to remove (0: none, e.g. with "
          "--fc-sparsity)", metavar="FRACTION"),
    Alias("--epochs", "compress.finetune_epochs", help="KD fine-tuning epochs after pruning (0: no fine-tuning, "
          "no teacher needed)", metavar="N"),
    Alias("--align", "compress.align", help="round each layer's width to a multiple of N (16 matches the Ascend "
          "Cube's channel blocks)", metavar="N"),
    Alias("--fc-sparsity", "compress.fc_sparsity", help="also zero this fraction of the fully-connected weights, "
          "smallest |w| first (unstructured)", metavar="FRACTION"),
    Alias("--fc-scope", "compress.fc_scope", help="rank FC weights across all FC layers (global) or per layer",
          metavar="{global,layer}", choices=("global", "layer")),
    Alias("--widths", "compress.widths", help="keep this many channels in each conv instead of --channels' "
          "global threshold (the best-scored ones of each layer)", metavar="W1,W2,...", type=_widths),
)


def _prune_options(p: argparse.ArgumentParser) -> None:
    _run_option(p)
    p.add_argument("--out", metavar="DIR", help="where the pruned run goes (default <run>/pruned)")
    # slim and pmw_strength shape training (atlas-kd train); prune's fine-tuning is plain SGD, so it takes neither
    add_config_arguments(p, sections=["data", "compress"], exclude=("compress.slim", "compress.pmw_strength"),
                         aliases=_PRUNE_ALIASES)


def _prune(args: argparse.Namespace) -> int:
    from training.prune_stage import WIDTHS_REPLACE, prune

    cfg, run, source = config_and_run(args)
    if source is None:
        raise UserError(f"{run} has no config.json: train first (atlas-kd train --run {run})")
    if cfg.compress.widths and getattr(args, "cfg:compress.channels", None) is not None:
        raise UserError(WIDTHS_REPLACE)
    prune(cfg, run, args.out)
    return 0


# --- export -----------------------------------------------------------------------------------------------

def _export_options(p: argparse.ArgumentParser) -> None:
    _run_option(p)
    add_config_arguments(p, sections=["data", "student", "export", "om"], aliases=(
        Alias("--checkpoint", "export.checkpoint", help="checkpoint to export (default <run>/student.pt)",
              metavar="PT"),
        Alias("--onnx", "export.onnx", help="start from your own ONNX instead of a checkpoint", metavar="FILE"),
        Alias("--input-shape", "export.input_shape", help="fix a user ONNX's dynamic input dims (ATC's form)",
              metavar="NAME:D1,D2,..."),
        Alias("--images", "export.images", help="golden inputs from this image folder (class folders: labels)",
              metavar="DIR"),
        Alias("--inputs", "export.inputs", help="golden inputs already preprocessed (.npy, or .npz by input name)",
              metavar="FILE"),
        Alias("--dvpp", "export.dvpp", "true", help="the board decodes the --images JPEGs on DVPP into a YUV420SP "
                                                    "AIPP model (docs/your-models.md)"),
        MEMORY_ALIAS,
    ))


def _export(args: argparse.Namespace) -> int:
    from export.stage import export

    cfg, run, source = config_and_run(args)
    if not cfg.export.onnx and source is None:
        raise UserError(f"{run} has no config.json: train first (atlas-kd train), or pass --config / --onnx")
    export(cfg, run)
    return 0


# --- quantize ---------------------------------------------------------------------------------------------

def _quantize_options(p: argparse.ArgumentParser) -> None:
    _run_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(p, sections=["data", "quant"], aliases=(
        Alias("--calibration", "quant.calibration", help="your own preprocessed calibration inputs instead of a "
              "draw from the training split", metavar="FILE.npy"),
        Alias("--qat", "quant.qat", "true", help="first fine-tune with fake quantisation and KD from the run's "
              "teacher (when PTQ misses the budget)"),
        Alias("--amct", "quant.amct", "true", help="Huawei's AMCT where amct_onnx imports; elsewhere prepare its "
              "folder and print what to run on the toolkit machine"),
        Alias("--weight-bits", "quant.weight_bits", help="weight bits (stored as int8)", metavar="N"),
    ))


def _quantize(args: argparse.Namespace) -> int:
    from export.quant.stage import quantize

    cfg, run, _ = config_and_run(args)
    quantize(cfg, run, progress=_progress(args))
    return 0


# --- split: sub-models A and B across two boards (docs/split.md) -------------------------------------------

def _split_options(p: argparse.ArgumentParser) -> None:
    _run_option(p)
    p.add_argument("--resume", action="store_true", help="keep the seeds an interrupted split finished")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(p, sections=["data", "student", "distill", "compress", "export", "split"])


def _split(args: argparse.Namespace) -> int:
    from training.split import split

    cfg, run, source = config_and_run(args)
    if source is None:
        raise UserError(f"{run} has no config.json: train its teacher first (atlas-kd train --run {run})")
    split(cfg, run, resume=args.resume, progress=_progress(args))
    return 0


def _is_split_run(run: Path) -> bool:
    return rf.SplitRecord.exists(run)


# --- om ---------------------------------------------------------------------------------------------------

def _om_options(p: argparse.ArgumentParser) -> None:
    _run_option(p)
    p.add_argument("--inspect", metavar="FILE.om", help="say what an .om file is (real or sim) and what it holds")
    p.add_argument("--json", action="store_true", help="with --inspect: print the report as JSON")
    _trust_option(p)
    add_config_arguments(p, sections=["om", "deploy"], aliases=(
        Alias("--onnx", "om.onnx", help="convert this ONNX instead (output in --run, else beside it)", metavar="PATH"),
        Alias("--sim", "om.sim", "true", help="use atc-sim, the board-free stand-in (same as SIM=1)"),
        Alias("--aipp", "om.aipp", "true", help="insist on AIPP (chosen at export: --om-aipp true)"),
        Alias("--atc", "om.atc", help="the atc to run (default: search PATH and CANN)", metavar="PATH"),
        Alias("--atc-arg", "om.extra", "append", help="extra ATC option; write it with '=', e.g. "
              "--atc-arg=--enable_small_channel=1 (ATC runs in the run folder)", metavar="ARG"),
        Alias("--timeout", "om.timeout_s", help="stop ATC after S seconds", metavar="S"),
        Alias("--skip-lint", "om.lint", "false", help="do not lint the ONNX first; let ATC decide"),
        Alias("--on-board", "om.on_board", help="run ATC on the board over SSH (upload the ONNX, convert there, "
              "fetch the .om)", metavar="BOARD"),
        MEMORY_ALIAS, *SSH_ALIASES,
    ))


def _om(args: argparse.Namespace) -> int:
    from atlas import atc
    from atlas.om_stage import build_om, summary

    if args.inspect:
        others = [flag for flag, key in (("--run", "run"), ("--onnx", "cfg:om.onnx"), ("--on-board", "cfg:om.on_board"))
                  if getattr(args, key, None)]
        if others:
            raise UserError(f"--inspect reads the one .om it names and builds nothing: drop {', '.join(others)} (or "
                            "--inspect, to build)")
        return _inspect(args.inspect, as_json=args.json)
    if args.json:
        raise UserError("--json goes with --inspect FILE.om (the build writes atc.json in the run folder)")
    onnx = getattr(args, "cfg:om.onnx", None)
    if not args.run and not onnx:
        raise UserError("give --run runs/NAME (after `atlas-kd export`), --onnx MODEL.onnx, or --inspect FILE.om")
    if onnx and not args.run:
        args.run = str(Path(onnx).parent)  # a standalone conversion writes beside the model
    cfg, run, _ = config_and_run(args)
    try:
        record = build_om(cfg, run, trust_new_host=args.trust_new_host)
    except atc.AtcFailed as e:
        # the explained error first, ATC's own lines after (the CLI would print only the first line)
        print(f"atlas-kd om: error: {e.message}", file=sys.stderr)
        for line in e.raw_lines[:40]:
            print(f"  | {line}", file=sys.stderr)
        return e.exit_code
    print(summary(record, run))
    return 0


def _inspect(path: str, as_json: bool) -> int:
    from atlas.om_file import OmDamaged, describe, inspect_om

    inspection = inspect_om(path)
    if as_json:
        print(json.dumps({**inspection.report, "damaged": inspection.damaged}, indent=2))
    else:
        print(describe(inspection))
    if inspection.damaged:
        raise OmDamaged(inspection.damaged, inspection.report)
    return 0


# --- deploy and verify ------------------------------------------------------------------------------------

def _deploy_options(p: argparse.ArgumentParser) -> None:
    _run_option(p)
    _trust_option(p)
    add_config_arguments(p, sections=["deploy"], aliases=(
        Alias("--board", "deploy.boards", "list", help="user@host[:port] or an ssh config alias; repeat to deploy "
              "to several boards at once", metavar="BOARD"),
        Alias("--profile", "deploy.profile", "true", help="time every operator (acl.prof; the sim board: CPU times) "
              "into board/profile.json"),
        Alias("--delta", "deploy.delta", help="send only what changed in the model, against what the board holds "
              "(docs/delta.md)", metavar="{off,lossless,lossy}", choices=("off", "lossless", "lossy")),
        # a split run's link between its two boards (docs/split.md); ignored by a plain deploy
        Alias("--deadline-ms", "split.deadline_ms", help="split run: A's board waits this long for B's answer, "
              "else answers alone", metavar="MS"),
        Alias("--link-host", "split.link_host", help="split run: B's address as A's board reaches it (default: the "
              "host of the SSH login to B)", metavar="HOST"),
        Alias("--link-port", "split.link_port", help="split run: the TCP port B's board listens on (0: a free one)",
              metavar="PORT"),
        *SSH_ALIASES,
    ))


def _deploy(args: argparse.Namespace) -> int:
    from atlas.deploy import deploy

    cfg, run, _ = config_and_run(args)
    if _is_split_run(run):  # A and B on their two boards, joined over the link (atlas/split_deploy.py)
        from atlas.split_deploy import deploy_split

        deploy_split(cfg, run, trust_new_host=args.trust_new_host)
        return 0
    deploy(cfg, run, trust_new_host=args.trust_new_host)
    return 0


def _verify_options(p: argparse.ArgumentParser) -> None:
    _run_option(p)
    _trust_option(p)
    add_config_arguments(p, sections=["verify", "locate", "om", "deploy"], aliases=(
        Alias("--board-dir", "verify.board_dir", help="folder with the board's outputs.npy (default: from "
              "deploy.json)", metavar="DIR"),
        Alias("--locate", "verify.locate", "true", help="on a FAIL, find the first tensor that diverges (locate)"),
        Alias("--sim", "om.sim", "true", help="with --locate: build with atc-sim (for the sim board)"),
        Alias("--board", "deploy.boards", "list", help="with --locate: the board (default: the one deploy.json "
              "names)", metavar="BOARD"),
        *SSH_ALIASES,
    ))


def _verify(args: argparse.Namespace) -> int:
    from atlas.verify import verify

    cfg, run, _ = config_and_run(args)
    if _is_split_run(run):  # both modes, each against its reference (atlas/split_verify.py)
        from atlas.split_verify import verify_split

        verify_split(cfg, run)
        return 0
    try:
        verify(cfg, run)
    except UserError as e:
        if e.exit_code != 1 or not cfg.verify.locate:
            raise
        print(f"atlas-kd verify: error: {e.message}", file=sys.stderr)
        print("verify --locate: looking for the first tensor that diverges", flush=True)
        run_locate(cfg, run, trust_new_host=getattr(args, "trust_new_host", False))
        return 1  # verify failed, whatever locate found
    return 0


# --- locate: the derived run R/locate/ through om and deploy, then judged ------------------------------------

def _locate_options(p: argparse.ArgumentParser) -> None:
    _run_option(p)
    _trust_option(p)
    add_config_arguments(p, sections=["locate", "om", "deploy"], aliases=(
        Alias("--count", "locate.count", help="golden inputs the board runs", metavar="N"),
        Alias("--layers", "locate.layers", help="node names to observe, comma-separated (default: every node)",
              metavar="NODE,..."),
        Alias("--bisect", "locate.bisect", "true", help="prefix models cut at a tensor, narrowing to the first "
              "bad node (when extra outputs change what ATC fuses)"),
        Alias("--sim", "om.sim", "true", help="build with atc-sim (for the sim board)"),
        Alias("--board", "deploy.boards", "list", help="the board (default: the one deploy.json names)",
              metavar="BOARD"),
        *SSH_ALIASES,
    ))


def _locate(args: argparse.Namespace) -> int:
    cfg, run, _ = config_and_run(args)
    return run_locate(cfg, run, trust_new_host=args.trust_new_host)


def run_locate(cfg: Config, run: Path, *, trust_new_host: bool = False) -> int:
    """prepare (locate) -> om -> deploy -> judge (locate); with --bisect, once per probe. Exit 1 on a divergence."""
    import dataclasses

    from atlas import locate
    from atlas.deploy import deploy
    from atlas.om_stage import build_om

    if not cfg.deploy.boards:
        boards = [b["board"] for b in (rf.DeployRecord.read_unchecked(run) or {}).get("boards", [])
                  if b.get("status") == "ok"][:1]
        if not boards:
            raise UserError("locate runs on a board: pass --board BOARD (or deploy the run first)")
        cfg = dataclasses.replace(cfg, deploy=dataclasses.replace(cfg.deploy, boards=boards))
    cfg = dataclasses.replace(cfg, deploy=dataclasses.replace(cfg.deploy, boards=cfg.deploy.boards[:1]))

    def build_and_run(plan) -> None:
        build_om(plan.cfg, plan.run, echo=open(os.devnull, "w"), trust_new_host=trust_new_host)
        deploy(plan.cfg, plan.run, trust_new_host=trust_new_host)

    plan = locate.prepare(cfg, run)
    if cfg.locate.bisect:
        probes = []

        def bad(observed) -> bool:
            probe = locate.prepare(cfg, run, bisect_at=observed, observed=plan.observed)
            build_and_run(probe)
            broken, row = locate.probe_is_broken(cfg, rf.as_run(run), probe)
            probes.append(row)
            return broken

        found = locate.bisect_positions(plan.observed, bad)
        record = locate.bisect_record(probes, found, cfg.locate.min_cosine, int(len(plan.labels)))
        locate.write_report(rf.as_run(run), record)
        print(locate.format_summary(record, rf.as_run(run)))
    else:
        build_and_run(plan)
        record = locate.analyze(cfg, run, plan)
    first = record["first_divergent"]
    if first:
        raise UserError(f"the board diverges first at {first['tensor']} (node {first['node']}, {first['op_type']}): "
                        f"{first['why']}, {locate.origin_text(first)}; see {run / rf.LocateRecord.FILE}", exit_code=1)
    return 0


# --- tools: lint, doctor, the sim board -------------------------------------------------------------------

def _lint_options(p: argparse.ArgumentParser) -> None:
    importlib.import_module("export.lint").add_arguments(p)


def _lint(args: argparse.Namespace) -> int:
    return importlib.import_module("export.lint").run(args)


def _doctor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--atc", metavar="PATH", help="check this atc instead of searching for one")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--require", action="append", default=[], choices=("atc", "sshd"),
                   help="exit 2 when this is missing (repeatable): atc (the real ATC), sshd (for the sim board)")
    _trust_option(p)
    add_config_arguments(p, sections=["deploy"], aliases=(
        Alias("--board", "deploy.boards", "list", help="also check a board over SSH (exit non-zero when it is not "
              "ready)", metavar="BOARD"),
        *SSH_ALIASES,
    ))


def _doctor(args: argparse.Namespace) -> int:
    from atlas.doctor import doctor, format_report, verdict

    cfg = _config_only(args)
    report, status = doctor(cfg.deploy, atc=args.atc, boards=cfg.deploy.boards, require=args.require,
                            trust_new_host=args.trust_new_host,
                            sim_board=importlib.import_module(SSHD_MODULE).doctor_report())
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    print(verdict(report), file=sys.stderr if args.json else sys.stdout)  # JSON keeps stdout machine-readable
    return status


def _config_only(args: argparse.Namespace) -> Config:
    from atlas.config import load_config, overrides_from_args

    return load_config(args.config, overrides_from_args(args))


def _sim_board_options(p: argparse.ArgumentParser) -> None:
    importlib.import_module(SIM_BOARD_MODULE).add_arguments(p)


def _sim_board(args: argparse.Namespace) -> int:
    return importlib.import_module(SIM_BOARD_MODULE).run(args)


# command -> (one-line help, add its options, run it)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("train the teacher, the KD student and the baseline", _train_options, _train),
    "prune": ("remove channels (and/or zero FC weights) from a trained student and fine-tune it with KD",
              _prune_options, _prune),
    "export": ("student checkpoint -> simplified, linted ONNX + golden reference", _export_options, _export),
    "quantize": ("INT8 post-training quantisation (AMCT's scheme) into <run>/int8/, a derived run; --qat, --amct",
                 _quantize_options, _quantize),
    "split": ("split the teacher's FC layer into sub-models A and B and distil two students into <run>/split/",
              _split_options, _split),
    "om": ("ONNX -> .om with ATC (or atc-sim with --sim); --inspect FILE.om", _om_options, _om),
    "deploy": ("push the model, the app and the golden inputs to a board and run there", _deploy_options, _deploy),
    "verify": ("compare the board's outputs with the onnxruntime reference", _verify_options, _verify),
    "locate": ("find the first tensor where the board leaves the reference (also: verify --locate)",
               _locate_options, _locate),
    "lint": ("check any ONNX file against what ATC accepts for Ascend 310", _lint_options, _lint),
    "doctor": ("report what is available: versions, ATC, boards", _doctor_options, _doctor),
    "sim-board": ("start / stop / status of the local sim board (sshd on 127.0.0.1)", _sim_board_options, _sim_board),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    # no abbreviations: `--board` must never quietly mean `--board-dir`
    parser = OneLineErrorParser(prog="atlas-kd", description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_options, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        if name == command:
            add_options(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(COMMANDS[args.command][2](args) or 0)
    except UserError as e:
        print(f"atlas-kd {args.command}: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # disk full, read-only, permissions, too many open files: after the stage's cleanup
        print(f"atlas-kd {args.command}: error: {os_error_line(e).message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"atlas-kd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
