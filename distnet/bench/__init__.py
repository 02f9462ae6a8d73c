"""``distnet bench``: benchmarks. Each kind lives in its own module with ``add_arguments`` and ``run``."""

import importlib

KINDS = {
    "step": ("distnet.bench.step", "single-process training step time and GFLOP/s of the reference models"),
    "compute": ("distnet.bench.compute", "per-layer forward/backward time and GFLOP/s against the measured GEMM peak"),
    "allreduce": ("distnet.bench.allreduce", "MPI allreduce bandwidth by size, and a model's bucketed gradient sync"),
    "train": ("distnet.bench.train", "a short real training run: step-time breakdown, samples/s, scaling efficiency"),
    "data": ("distnet.bench.data", "reader throughput (in-memory and streaming) and streaming peak memory"),
}


def add_arguments(parser):
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for name, (module, help_) in KINDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_bench=mod.run)


def check_args(args):
    """The kind's own checks of its command line before any work, where it has them (``bench train``)."""
    check = getattr(importlib.import_module(KINDS[args.kind][0]), "check_args", None)
    return check(args) if check else None


def run(args):
    return args._bench(args)
