"""``distnet eval CHECKPOINT --data DIR``: loss, accuracy, top-k, per-class accuracy, the confusion matrix and
the reject option of a checkpoint, or of a committee (``--ensemble``); figures with ``--figures DIR``. Runs
under mpiexec like training: each rank evaluates a part of the split (see ``assess``)."""

import json
import sys

import numpy as np

from .. import comm
from ..errors import UserError
from ..signals import stoppable
from . import assess
from .trained import load_trained


def add_arguments(p):
    p.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?",
                   help="a checkpoint written by distnet train, or its folder (the newest checkpoint in it)")
    p.add_argument("--data", metavar="DIR", help="prepared dataset folder (default: the training config's)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass on each rank (256)")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="also count a sample correct when its class is among the K highest scores: 1 to the "
                        "number of classes (default 5, at most the number of classes)")
    p.add_argument("--reject", type=float, metavar="MARGIN",
                   help="reject inputs whose two largest class probabilities differ by less than MARGIN "
                        "(0..1): error on the accepted inputs, the rejected fraction, and the curve over margins")
    p.add_argument("--ensemble", nargs="+", metavar="CKPT", default=[],
                   help="a committee: these checkpoints (and CHECKPOINT, if given) average their probabilities")
    p.add_argument("--vote", action="store_true", help="with --ensemble: majority vote instead of averaging")
    p.add_argument("--figures", metavar="DIR",
                   help="write confusion.png, reject.png and misclassified.png (image datasets) into DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def load_checkpoints(args):
    """Models, losses and the split for the checkpoints of ARGS (no collectives: any rank may fail here)."""
    from ..data import open_dataset

    members = [load_trained(p, "evaluate") for p in ([args.checkpoint] if args.checkpoint else []) + args.ensemble]
    args.skipped = [line for m in members for line in m.warnings()]
    data_dir = args.data or members[0].data_path()
    ds = open_dataset(data_dir)
    if args.split not in ds.splits:
        raise UserError(f"{data_dir} has no split {args.split!r}: choose one of {', '.join(ds.splits)}")
    for m in members:
        m.check_data(ds, data_dir)
    return [m.path for m in members], [m.model for m in members], [m.loss for m in members], ds[args.split]


FIGURES = ("confusion.png", "reject.png", "misclassified.png")  # what --figures DIR holds (plot.evaluation)
DEFAULT_TOP_K = 5


def check_args(args):
    """Every check of the command line that needs no checkpoint, before any work (``check_top_k`` needs the
    model's class count)."""
    if not args.checkpoint and not args.ensemble:
        raise UserError("distnet eval needs a CHECKPOINT (a file or folder) or --ensemble CKPT CKPT ...")
    if args.vote and len(args.ensemble) + bool(args.checkpoint) < 2:
        raise UserError("--vote needs a committee: give at least two checkpoints with --ensemble")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if args.reject is not None and not 0 <= args.reject <= 1:  # NaN is not in 0..1 either
        raise UserError(f"--reject MARGIN is a difference of two probabilities, in 0..1; got {args.reject}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.figures:
        from ..outputs import check_figures
        from ..plot import pyplot

        pyplot()  # the plot extra is there, before any work
        check_figures(args.figures, FIGURES, "--figures")


def check_top_k(args, num_classes):
    """``--top-k`` against the model's classes: more than there are is an error (every sample would count as
    correct); without --top-k, 5 or the class count if smaller."""
    if args.top_k is None:
        args.top_k = min(DEFAULT_TOP_K, num_classes)
    elif args.top_k > num_classes:
        raise UserError(f"--top-k {args.top_k}: the model has {num_classes} classes: give K from 1 to "
                        f"{num_classes}")


def evaluate(w, models, losses, split, args, margins):
    """The ranks' totals of a ``Tally`` over the whole split (collective)."""
    from ..data import BatchReader, eval_partition

    tally = assess.Tally(split.num_classes, len(models), args.top_k, margins, "vote" if args.vote else "mean")
    part = eval_partition(len(split), w.rank, w.size)
    starts = range(part.start, part.stop, args.batch_size)
    chunks = (np.arange(i, min(i + args.batch_size, part.stop)) for i in starts)
    with BatchReader(split, dtype=models[0].dtype, prefetch="auto") as reader:
        for start, (x, y) in zip(starts, reader.batches(chunks)):
            outs = [m.forward(x.astype(m.dtype, copy=False), training=False) for m in models]
            tally.add(losses, outs, y, start)
    return tally.totals(w)


def run(args):
    w = comm.world()
    out = {"split": args.split}

    def body():
        with comm.agreed(w):  # any rank may fail to load alone
            check_args(args)
            paths, models, losses, split = load_checkpoints(args)
            check_top_k(args, split.num_classes)
        for line in args.skipped if w.rank == 0 else []:
            print(line, file=sys.stderr, flush=True)
        margins = np.union1d(assess.MARGINS, [] if args.reject is None else [args.reject])
        totals = evaluate(w, models, losses, split, args, margins)
        out.update(assess.report(totals, split.class_names, args.top_k, args.reject, margins))
        out["checkpoints"] = paths
        if args.figures and w.rank == 0:
            from ..plot.evaluation import write_figures
            out["figures"] = [str(p) for p in write_figures(args.figures, out, split)]

    with stoppable():  # again after MPI's start, which takes SIGUSR1: a signal stops eval, exit 3 (distnet/signals.py)
        code = comm.run_on_every_rank(w, body)
    if code or w.rank != 0:
        return code
    if args.json:
        committee = dict(rule="vote" if args.vote else "mean") if len(out["checkpoints"]) > 1 else {}
        print(json.dumps({"checkpoint": out["checkpoints"][0], **committee, **out}))
    else:
        print_text(out, args)
    sys.stdout.flush()
    return 0


def print_text(r, args):
    """The human-readable report."""
    n, paths = r["samples"], r["checkpoints"]
    if len(paths) == 1:
        print(f"{paths[0]}: {args.split} loss {r['loss']:.4f} accuracy {r['accuracy']:.4f} ({n} samples)")
    else:
        for p, m in zip(paths, r["members"]):
            print(f"member {p}: {args.split} loss {m['loss']:.4f} accuracy {m['accuracy']:.4f}")
        best = max(m["accuracy"] for m in r["members"])
        rule = "majority vote" if args.vote else "mean probability"
        print(f"committee of {len(paths)} ({rule}): {args.split} accuracy {r['accuracy']:.4f} ({n} samples), "
              f"{100 * (r['accuracy'] - best):+.2f} points over the best member")
    if args.top_k < len(r["classes"]):
        print(f"top-{args.top_k} accuracy {r['top_k']['accuracy']:.4f}")
    width = max(len(c) for c in r["classes"])
    print("per class (accuracy, samples):")
    for c in r["per_class"]:
        acc = "-" if c["accuracy"] is None else f"{c['accuracy']:.4f}"
        print(f"  {c['name']:<{width}}  {acc:>6}  {c['samples']}")
    print("confusion matrix (rows: true class, columns: predicted, in the order above):")
    cell = max(4, len(str(max(max(row) for row in r["confusion"]))) + 1)
    for name, row in zip(r["classes"], r["confusion"]):
        print(f"  {name:<{width}} " + "".join(f"{v:>{cell}}" for v in row))
    if "reject" in r:
        j = r["reject"]
        percent = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731 (None: all rejected)
        print(f"reject margin {j['margin']:g}: error {percent(j['error'])} % on the accepted inputs, "
              f"{percent(j['rejected'])} % rejected (error without rejection "
              f"{percent(r['reject_curve'][0]['error'])} %)")
        print("  margin  rejected %  error %")
        shown = {0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, j["margin"]}
        for c in r["reject_curve"]:
            if any(np.isclose(c["margin"], s) for s in shown):
                print(f"  {c['margin']:6.2f}  {percent(c['rejected']):>10}  {percent(c['error']):>7}")
    for f in r.get("figures", []):
        print(f"wrote {f}")
