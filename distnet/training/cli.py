"""``distnet train CONFIG_OR_PRESET [options]``: the same command alone, under mpiexec, mpirun or srun."""

import argparse
import sys

from .. import blas, comm
from .. import config as C
from ..errors import UserError
from ..metrics import PROGRESS_MODES, progress_mode


def add_arguments(p):
    p.add_argument("config", metavar="CONFIG_OR_PRESET",
                   help=f"a TOML config file or a preset: {', '.join(C.preset_names())}")
    p.add_argument("--data", metavar="DIR", help="prepared dataset folder (default: data.path, else data/NAME)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--batch-size", type=_batch_size, metavar="B|auto",
                   help="train.batch_size: the GLOBAL batch over all ranks, or auto (grown toward the noise scale)")
    p.add_argument("--lr", type=float, help="optimizer.lr")
    p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--accumulate", type=int, help="train.accumulate: micro-steps per step")
    p.add_argument("--metrics", metavar="FILE", help="write metrics JSON lines here (rank 0)")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint.dir")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="checkpoint.every")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the folder")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="a new run starting from the parameters of a checkpoint (file or folder) of a model of "
                        "the same layers, at any batch size, rank count, optimizer and data")
    p.add_argument("--init-from-optimizer", action="store_true",
                   help="with --init-from: also take its optimizer state (the same optimizer)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key (TOML value syntax), e.g. --set optimizer.name=momentum "
                        "--set optimizer.momentum=0.95")
    p.add_argument("--profile", action="store_true",
                   help="record the step-time breakdown (data, forward, backward, comm, optimizer) in the metrics")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome trace-event timeline of every rank's phases")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--progress", choices=[m for m in PROGRESS_MODES if m != "none"], default=None,
                   help="rank 0's progress display (default auto: a bar on a terminal, else lines; under "
                        "mpiexec stderr is a pipe, so ask for the bar here or with DISTNET_PROGRESS=bar)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _batch_size(text):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of samples or auto") from None


# Every flag is a config key: the resolved config (--print-config, the checkpoint's copy) is the whole run.
FLAGS = {"data": "data.path", "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "optimizer.lr",
         "seed": "train.seed", "accumulate": "train.accumulate", "metrics": "log.metrics",
         "checkpoint_dir": "checkpoint.dir", "checkpoint_every": "checkpoint.every", "resume": "checkpoint.resume",
         "init_from": "train.init_from", "init_from_optimizer": "train.init_from_optimizer",
         "profile": "log.profile", "trace": "log.trace", "quiet": "log.quiet", "progress": "log.progress"}


def flag_overrides(args):
    """(source, {section: {key: value}}) for each flag given on the command line, as argparse typed it; merged
    after the user's --set items, so flags win."""
    out = []
    for flag, key in FLAGS.items():
        value = getattr(args, flag, None)
        if value is None or value is False:
            continue
        section, name = key.split(".", 1)
        option = "--" + flag.replace("_", "-")
        out.append((option if value is True else f"{option} {value}", {section: {name: value}}))
    return out


def resolve(args):
    """The config this command line runs, validated once: the file or preset, the --set items, the flags, and
    log.progress "auto" settled (DISTNET_PROGRESS, else whether stderr is a terminal), so that the config
    (--print-config, the checkpoint's copy) is the whole run."""
    cfg = C.resolve(args.config, args.set, flag_overrides(args))
    if cfg["log"]["progress"] == "auto":
        C.merge(cfg, {"log": {"progress": progress_mode("auto")}}, "DISTNET_PROGRESS or the terminal")
    return C.validate(cfg)


def check_args(args):
    """Every check of the command line before any work (what --print-config runs): the resolved config."""
    return resolve(args)


def run(args):
    from .loop import train

    w = comm.world()
    try:
        cfg = check_args(args)  # every rank parses the same file: all fail alike, no collective needed
    except UserError as e:
        if w.rank == 0:
            print(f"distnet: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    if args.print_config:
        if w.rank == 0:
            print(C.to_toml(cfg))
        return 0
    # Ranks on one host must not each start a BLAS thread per core: N ranks x all cores threads run several
    # times slower than N x cores/N. The user's OPENBLAS/OMP/MKL_NUM_THREADS wins when set.
    threads = blas.configure(w)
    return comm.run_on_every_rank(w, lambda: train(cfg, blas_threads=threads))
