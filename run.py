"""LatentMAS-KV: one entry point for runs, sweeps, reports and merges. It parses and exits; the work is in the
modules each command names (runner.py for a run).

    python run.py --method latent_mas --task gsm8k --max_samples 5        # run (the default command)
    python run.py --config config/knn_seed.yaml --max_samples 20           # an experiment file; typed flags win
    python run.py --resume RUN_DIR                                         # continue an interrupted run
    python run.py sweep FILE.yaml [--dry_run] [--cell_shard I/N] [flags]   # a grid of runs (sweep.py)
    python run.py report RUN_DIR...  /  python run.py merge RUN_DIR...
    python run.py import-team REF_DIR --out DIR                           # a reference's prompts as team files

Adding a command: a module function that adds its arguments to a parser and one that runs it (returns the exit
code, raises errors.RunError for bad input), and one line in COMMANDS below.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

import interrupts
from errors import RunError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    module: str  # imported when the command line is parsed; nothing there imports torch at module level
    add_arguments: str  # module function(parser): the command's arguments
    run: str  # module function(args: argparse.Namespace) -> exit code


COMMANDS = [
    Command("run", "run one method on one task (the default: 'run.py --method ...' is 'run.py run --method ...')",
            "runner", "add_arguments", "command"),
    Command("sweep", "run the grid of an experiment file whose keys hold lists", "sweep", "add_arguments", "command"),
    Command("report", "compare run directories: Markdown tables, statistics, plots", "report", "add_arguments",
            "command"),
    Command("merge", "combine the shards of one run into one run directory", "parallel", "add_merge_arguments",
            "merge_command"),
    Command("import-team", "team files from a reference checkout's own prompt builders (docs/reproduce.md)",
            "reference_import", "add_arguments", "command"),
]


class CleanParser(argparse.ArgumentParser):
    """Bad input gets one line naming the fix and exit code 2, not a usage dump."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see python {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_cli() -> CleanParser:
    p = CleanParser(prog="run.py", description="LatentMAS-KV: latent multi-agent reasoning over a shared KV cache. "
                    "Without a command name, the arguments are the run command's.",
                    epilog="Each command's flags: python run.py COMMAND --help. The run command's flags follow (also "
                    "in docs/flags.md).")
    sub = p.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for c in COMMANDS:
        module = importlib.import_module(c.module)
        sp = sub.add_parser(c.name, help=c.help, prog="run.py" if c.name == "run" else f"run.py {c.name}",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        getattr(module, c.add_arguments)(sp)
        sp.set_defaults(handler=getattr(module, c.run))
        if c.name == "run":
            p.run_parser = sp
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cli = build_cli()
    if argv in (["-h"], ["--help"]):
        # the commands, then the default command's flags: 'run.py --help' has always listed the run's settings
        print(cli.format_help())
        print(cli.run_parser.format_help())
        return 0
    if not argv or argv[0].startswith("-"):
        argv = ["run", *argv]  # the default command
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = cli.parse_args(argv)
    args.argv = argv[1:]  # the command's arguments as typed (a report records the command that made it)
    prog = "run.py" if args.command == "run" else f"run.py {args.command}"
    previous = interrupts.install()  # SIGTERM (a SLURM time limit) stops a run as Ctrl-C does
    try:
        return interrupts.exit_code(args.handler(args))
    except RunError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # a stop while the model loads, or a second one while the first is handled
        print(f"{prog}: interrupted; the items finished so far are on disk (continue with the same command, or "
              "--resume RUN_DIR for a run)", file=sys.stderr)
        return interrupts.interrupted_code()
    finally:
        interrupts.restore(previous)


if __name__ == "__main__":
    sys.exit(main())
