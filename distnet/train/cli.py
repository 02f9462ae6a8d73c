"""``distnet train CONFIG_OR_PRESET [options]``: the same command alone, under mpiexec, mpirun or srun."""

import sys

from .. import blas, comm
from .. import config as C
from ..errors import UserError


def add_arguments(p):
    p.add_argument("config", metavar="CONFIG_OR_PRESET",
                   help=f"a TOML config file or a preset: {', '.join(C.preset_names())}")
    p.add_argument("--data", metavar="DIR", help="prepared dataset folder (default: data.path, else data/NAME)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--batch-size", type=int, help="train.batch_size: the GLOBAL batch over all ranks")
    p.add_argument("--lr", type=float, help="optimizer.lr")
    p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--accumulate", type=int, help="train.accumulate: micro-steps per step")
    p.add_argument("--metrics", metavar="FILE", help="write metrics JSON lines here (rank 0)")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint.dir")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="checkpoint.every")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the folder")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key (TOML value syntax), e.g. --set optimizer.momentum=0.9")
    p.add_argument("--profile", action="store_true",
                   help="record the step-time breakdown (data, forward, backward, comm, optimizer) in the metrics")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome trace-event timeline of every rank's phases")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default=None,
                   help="rank 0's progress display (default auto: a bar on a terminal, else lines; under "
                        "mpiexec stderr is a pipe, so ask for the bar here or with DISTNET_PROGRESS=bar)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


FLAGS = {"epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "optimizer.lr", "seed": "train.seed",
         "accumulate": "train.accumulate", "checkpoint_every": "checkpoint.every"}


def resolve(args):
    sets = [f"{key}={getattr(args, flag)}" for flag, key in FLAGS.items() if getattr(args, flag) is not None]
    return C.load(args.config, sets=list(args.set) + sets)


def run(args):
    from .loop import run_on_every_rank, train
    from .metrics import progress_mode

    w = comm.world()
    try:
        cfg = resolve(args)  # every rank parses the same file: all fail alike, no collective needed
        progress_mode(args.progress or "auto")  # a bad DISTNET_PROGRESS fails here, on every rank alike
    except UserError as e:
        if w.rank == 0:
            print(f"distnet: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    if args.print_config:
        if w.rank == 0:
            print(C.to_toml(cfg))
        return 0
    # Ranks on one machine must not each start a BLAS thread per core: N ranks x all cores threads run
    # several times slower than N x cores/N. The user's OPENBLAS/OMP/MKL_NUM_THREADS wins when set.
    threads = blas.configure(w)
    opts = dict(blas_threads=threads, data=args.data, metrics=args.metrics, checkpoint_dir=args.checkpoint_dir,
                resume=args.resume, quiet=args.quiet, profile=args.profile, trace=args.trace, progress=args.progress)
    return run_on_every_rank(w, lambda: train(cfg, opts))
