"""The ``distnet`` command. Each sub-command lives in its own module with ``add_arguments`` and ``run``."""

import argparse
import difflib
import importlib
import sys

from . import __version__
from .errors import UserError

# name -> (module, help). Each module defines add_arguments(parser) and run(args) -> exit code.
COMMANDS = {
    "train": ("distnet.training.cli", "train a model (same command under mpiexec/mpirun/srun)"),
    "eval": ("distnet.evaluate.cli", "evaluate a checkpoint on a dataset"),
    "data": ("distnet.data.commands", "prepare and inspect datasets"),
    "bench": ("distnet.bench", "benchmarks: step, compute, allreduce, train, data"),
    "noise": ("distnet.evaluate.noise", "how a minibatch gradient's error falls with the batch size (sigma/sqrt(m))"),
    "sweep": ("distnet.sweep.cli", "batch-size scaling sweeps: steps to a target, the critical batch size"),
    "plot": ("distnet.plot.cli", "figures (PNG): learning curves of runs, decision regions"),
    "run": ("distnet.supervise", "start a training job and restart it from its checkpoint when it fails"),
    "calibrate": ("distnet.scale.calibrate", "measure a config's step and the network, for distnet plan"),
    "plan": ("distnet.scale.plan", "predict step time, samples/s and time to target for N nodes x R ranks"),
}


# What --help shows under each command: the lines a user would type first.
EXAMPLES = {
    "": ["distnet data prepare fashion-mnist --out data/fashion-mnist",
         "mpiexec -n 2 distnet train fashion-mlp --metrics runs/mlp.jsonl",
         "distnet COMMAND --help"],
    "train": ["distnet train fashion-mlp --epochs 3", "mpiexec -n 4 distnet train fashion-cnn --set train.epochs=10",
              "distnet train my.toml --checkpoint-dir runs/ck --resume", "distnet train fashion-mlp --print-config"],
    "eval": ["distnet eval runs/ck --data data/fashion-mnist", "distnet eval runs/ck --top-k 3 --json"],
    "data": ["distnet data list", "distnet data prepare fashion-mnist --out data/fashion-mnist",
             "distnet data inspect data/fashion-mnist"],
    "bench": ["distnet bench step", "mpiexec -n 2 distnet bench train fashion-mlp"],
    "noise": ["distnet noise runs/ck --batch-sizes 8,16,...,4096 --out noise.png"],
    "sweep": ["distnet sweep fashion-mlp --batch-sizes 64,128,...,2048 --target accuracy=0.88 --out sweeps/mlp",
              "distnet sweep fashion-mlp --batch-sizes 256,1024 --ranks 1,2 --target accuracy=0.88 --out sweeps/r",
              "distnet sweep --report sweeps/mlp"],
    "plot": ["distnet plot runs/a.jsonl runs/b.jsonl --x samples --out curves.png"],
    "run": ["distnet run -n 4 -- train my.toml --checkpoint-dir runs/ck"],
    "calibrate": ["mpiexec -n 2 distnet calibrate fashion-mlp --out cal.json",
                  "srun -n 64 distnet calibrate my.toml --set comm.sync='\"bucketed\"' --out cal.json"],
    "plan": ["distnet plan fashion-mlp --calibration cal.json --nodes 1,2,...,64 --ranks-per-node 32",
             "distnet plan fashion-mlp --calibration cal.json --sweep sweeps/mlp --link 100gbit --out plan.png"],
}


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its errors as one line (a UserError: ``distnet: error: distnet train: argument
    --epochs: invalid int value: 'x' (see distnet train --help)``, exit 2) instead of the usage and a line.
    Sub-commands' parsers are of this class too (``add_subparsers`` makes its parsers of the parent's)."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _epilog(name):
    return "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES.get(name, []))


def build_parser(argv=()):
    """The parser; only the command named in ARGV is imported (a broken or slow module elsewhere, e.g. an
    optional benchmark, cannot stop ``distnet train``, and start-up under many ranks stays short), and only
    its sub-parser is made (all of them without one: ``distnet --help`` lists them)."""
    parser = _Parser(prog="distnet", description="Data-parallel NumPy training over MPI.",
                     epilog=_epilog(""), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"distnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in COMMANDS.items():
        if chosen in COMMANDS and name != chosen:
            continue
        p = sub.add_parser(name, help=help_, description=help_, epilog=_epilog(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def check_sets(argv):
    """``--set KEY VALUE`` (a space for the ``=``) would leave VALUE to argparse as a stray argument, reported
    under the top-level usage: name the fix instead. Stops at ``--`` (what follows is another command's)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            return
        if arg == "--set" and i + 1 < len(argv):
            key, rest = argv[i + 1], argv[i + 2:]
        elif arg.startswith("--set="):
            key, rest = arg[len("--set="):], argv[i + 1:]
        else:
            continue
        if "=" not in key and not key.startswith("-"):
            value = rest[0] if rest and not rest[0].startswith("--") else None
            shown = f"--set {key}" + (f" {value}" if value is not None else "")
            raise UserError(f"{shown}: write --set {key}={value if value is not None else 'VALUE'}")


def innermost(parser, args):
    """The parser of the (sub-)command ARGS were parsed for: ``distnet bench step``'s, not ``distnet``'s."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[name]


def unrecognized(parser, extra):
    """One line for arguments PARSER does not take: the first unknown option with the closest option it
    has (``--batchsize``: did you mean ``--batch-size``?), or the first stray argument."""
    options = {o.lstrip("-"): o for a in parser._actions for o in a.option_strings}
    for arg in extra:
        if arg.startswith("-") and arg != "-":
            option = arg.split("=", 1)[0]
            # names without their dashes: the shared "--" would make any two options look alike
            close = difflib.get_close_matches(option.lstrip("-"), options, n=1, cutoff=0.7)
            fix = f"did you mean {options[close[0]]}?" if close else f"see {parser.prog} --help"
            return f"{parser.prog} has no option {option}: {fix}"
    return f"{parser.prog} does not take {extra[0]!r} here: see {parser.prog} --help"


def check_command(argv):
    """A mistyped command (``distnet trian``) names the closest one instead of argparse's list of choices."""
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen is not None and chosen not in COMMANDS:
        close = difflib.get_close_matches(chosen, COMMANDS, n=1, cutoff=0.6)
        fix = f"did you mean {close[0]}?" if close else f"the commands are {', '.join(COMMANDS)}"
        raise UserError(f"distnet has no command {chosen!r}: {fix}")


def parse(argv):
    """The parsed ARGV; a UserError (one line) for a misspelled command or option, a stray argument or
    ``--set K V``."""
    check_command(argv)
    check_sets(argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        raise UserError(unrecognized(innermost(parser, args), extra))
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    from .signals import stoppable, stopped_line

    try:
        args = parse(argv)
        with stoppable():  # SIGINT, SIGTERM, SIGUSR1 stop any command: one line, exit 3 (distnet/signals.py)
            code = args._run(args)
    except UserError as e:
        print(f"distnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or signals.Interrupted
        return stopped_line(e)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
