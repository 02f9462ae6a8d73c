"""The ``distnet`` command. Each sub-command lives in its own module with ``add_arguments`` and ``run``."""

import argparse
import importlib
import sys

from . import __version__
from .errors import UserError

# name -> (module, help). Each module defines add_arguments(parser) and run(args) -> exit code.
COMMANDS = {
    "train": ("distnet.train.cli", "train a model (same command under mpiexec/mpirun/srun)"),
    "eval": ("distnet.train.evalcli", "evaluate a checkpoint on a dataset"),
    "data": ("distnet.data.commands", "prepare and inspect datasets"),
    "bench": ("distnet.bench", "benchmarks: step, compute, allreduce, train, data"),
    "noise": ("distnet.train.noisecli", "how a minibatch gradient's error falls with the batch size (sigma/sqrt(m))"),
    "sweep": ("distnet.sweep.cli", "batch-size scaling sweeps: steps to a target, the critical batch size"),
    "plot": ("distnet.plot.cli", "figures (PNG): learning curves of runs, decision regions"),
    "run": ("distnet.supervise", "start a training job and restart it from its checkpoint when it fails"),
    "calibrate": ("distnet.scale.calibrate", "measure a config's step and the network, for distnet plan"),
    "plan": ("distnet.scale.plan", "predict step time, samples/s and time to target for N nodes x R ranks"),
}


def build_parser(argv=()):
    """The parser; only the command named in ARGV is imported (a broken or slow module elsewhere, e.g. an
    optional benchmark, cannot stop ``distnet train``, and start-up under many ranks stays short)."""
    parser = argparse.ArgumentParser(prog="distnet", description="Data-parallel NumPy training over MPI.")
    parser.add_argument("--version", action="version", version=f"distnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser(argv).parse_args(argv)
    try:
        code = args._run(args)
    except UserError as e:
        print(f"distnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distnet: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
