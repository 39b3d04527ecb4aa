"""`atlas-kd <command>`: a thin shell over the stage functions.

Each command lives in its own module with `add_arguments(parser)` and `run(args) -> int`; modules are
imported only when their command runs, so `atlas-kd lint` does not pay for importing torch.
A `UserError` becomes one line on stderr and its exit code; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from atlas.errors import UserError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.train", "train the teacher, the KD student and the baseline"),
    "export": ("export.stage", "student checkpoint -> simplified, linted ONNX + golden reference"),
    "lint": ("export.lint", "check any ONNX file against what ATC accepts for Ascend 310"),
    "om": ("atlas.om_stage", "ONNX -> .om with ATC (or atc-sim with --sim); --inspect FILE.om"),
    "deploy": ("atlas.deploy", "push the model, the app and the golden inputs to a board and run there"),
    "verify": ("atlas.verify", "compare the board's outputs with the onnxruntime reference"),
    "sim-board": ("atlas.sim.sim_board", "start / stop / status of the local sim board (sshd on 127.0.0.1)"),
    "prune": ("training.prune_stage", "remove channels (and/or zero FC weights) from a trained student and "
                                      "fine-tune it with KD"),
    "doctor": ("atlas.doctor", "report what is available: versions, ATC, boards"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (what is wrong, where help is), not the whole usage block;
    subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="atlas-kd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(p)
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
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"atlas-kd {args.command}: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"atlas-kd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
