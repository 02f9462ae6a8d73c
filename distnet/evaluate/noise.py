"""``distnet noise CHECKPOINT --batch-sizes 8,16,...,4096``: how a minibatch gradient's error falls with m.

At the checkpoint's fixed parameters: the full training-set gradient G (the training split the run used,
without augmentation), then for each batch size m, ``--draws`` minibatches of m distinct samples drawn at
random, each one's gradient G_m (one batched forward and backward), and the mean of |G_m − G|². For
minibatches drawn without replacement from N samples, E|G_m − G|² = s²(1/m − 1/N) with s² the per-sample
gradients' variance (summed over parameters), so the measured slope on log–log axes is −1 apart from the
finite-population factor (1 − m/N); both slopes are reported, the raw one and the one of the corrected
values m ↦ |G_m − G|²·N/(N − m). The standard deviation falls with half the slope (σ/√m). s² over |G|²
is the checkpoint's noise scale (B_simple), which the live ``noise_scale`` of training estimates.

Under mpiexec each rank computes its part of G and of the draws; the sums meet in one allreduce.
"""

import json
import sys

import numpy as np

from .. import comm
from ..errors import UserError
from .trained import load_trained

DEFAULT_SIZES = "8,16,...,4096"


def add_arguments(p):
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a checkpoint written by distnet train, or its folder (the newest checkpoint in it)")
    p.add_argument("--batch-sizes", default=DEFAULT_SIZES, metavar="M1,M2,...",
                   help=f"minibatch sizes; 'a,b,...,z' continues a,b geometrically up to z (default {DEFAULT_SIZES})")
    p.add_argument("--draws", type=int, default=64, help="minibatches per size (default 64)")
    p.add_argument("--data", metavar="DIR", help="prepared dataset folder (default: the training config's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the minibatch draws (default 0)")
    p.add_argument("--chunk", type=int, default=1024, help="samples per forward pass for the full gradient")
    p.add_argument("--out", metavar="FIG.png", help="write the log-log figure here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def parse_sizes(text):
    """'8,16,...,4096' -> [8, 16, ..., 4096]; a plain list as it is. Sizes must be integers >= 1."""
    parts = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        if "..." in parts:
            i = parts.index("...")
            if i < 2 or i != len(parts) - 2:
                raise ValueError
            head, last = [int(s) for s in parts[:i]], int(parts[-1])
            ratio = head[-1] / head[-2]
            if ratio <= 1 or head[0] < 1:
                raise ValueError
            sizes = list(head)
            while round(sizes[-1] * ratio) <= last:
                sizes.append(int(round(sizes[-1] * ratio)))
            if sizes[-1] != last:
                sizes.append(last)
        else:
            sizes = [int(s) for s in parts]
    except ValueError:
        raise UserError(f"--batch-sizes {text!r}: give integers separated by commas, e.g. 8,16,32 or "
                        f"{DEFAULT_SIZES}") from None
    if not sizes or min(sizes) < 1 or sorted(set(sizes)) != sizes:
        raise UserError(f"--batch-sizes {text!r}: give increasing integers >= 1, e.g. {DEFAULT_SIZES}")
    return sizes


def load(args):
    """Model, loss and the run's training split for the checkpoint (no collectives: any rank may fail)."""
    from ..data import holdout, open_dataset

    trained = load_trained(args.checkpoint, "measure")
    args.checkpoint, args.skipped = trained.path, trained.warnings()
    cfg, model = trained.config, trained.model
    data_dir = args.data or trained.data_path()
    ds = open_dataset(data_dir)
    trained.check_data(ds, data_dir)
    split = ds["train"]
    if cfg["data"]["val_fraction"] > 0:
        split, _ = holdout(split, cfg["data"]["val_fraction"], cfg["train"]["seed"])
    if args.sizes[-1] > len(split):
        raise UserError(f"--batch-sizes: {args.sizes[-1]} is more than the {len(split)} training samples: "
                        f"use sizes up to {len(split)}")
    model.skip_input_grad()
    return model, trained.loss, split, cfg


def gradient(model, loss, x, y):
    """The gradient of the mean loss over (x, y) (the model's arena, overwritten by the next call)."""
    loss.forward(model.forward(x, training=True), y)
    model.backward(loss.backward())
    return model.grads_flat


def measure(w, model, loss, split, sizes, draws, seed=0, chunk=1024):
    """{"full_grad_sq", "samples", "sizes", "mean_sq", "sem_sq"}: see the module docstring."""
    from ..data import BatchReader, eval_partition

    n = len(split)
    reader = BatchReader(split, mode="auto", dtype=model.dtype)
    try:
        part = eval_partition(n, w.rank, w.size)
        full = np.zeros(model.num_params, np.float64)
        chunks = (np.arange(i, min(i + chunk, part.stop)) for i in range(part.start, part.stop, chunk))
        for x, y in reader.batches(chunks):
            full += gradient(model, loss, x, y) * (len(y) / n)
        w.allreduce(full)
        sq = np.zeros((len(sizes), draws), np.float64)  # each rank fills its draws; the sum is all of them
        for i, m in enumerate(sizes):
            for j in range(w.rank, draws, w.size):
                idx = np.sort(np.random.default_rng([seed, m, j]).choice(n, m, replace=False))
                x, y = reader.batch(idx)
                d = gradient(model, loss, x, y) - full
                sq[i, j] = float(np.dot(d, d))
        w.allreduce(sq)
    finally:
        reader.close()
    return {"samples": n, "full_grad_sq": float(full @ full), "sizes": list(sizes),
            "mean_sq": sq.mean(axis=1).tolist(), "sem_sq": (sq.std(axis=1, ddof=1) / np.sqrt(draws)).tolist()
            if draws > 1 else [0.0] * len(sizes)}


def fit(result):
    """The log-log slopes (raw and finite-population corrected), s² and B_simple at the checkpoint."""
    m, v, n = np.array(result["sizes"], float), np.array(result["mean_sq"]), result["samples"]
    corrected = v * n / (n - m) if n > m[-1] else None
    out = {"slope_variance": float(np.polyfit(np.log(m), np.log(v), 1)[0])}
    if corrected is not None:
        out["slope_variance_corrected"] = float(np.polyfit(np.log(m), np.log(corrected), 1)[0])
        s2 = float(np.exp(np.mean(np.log(corrected * m))))  # the fit with slope fixed at -1
        out["trace"] = s2
        out["noise_scale"] = s2 / result["full_grad_sq"] if result["full_grad_sq"] > 0 else None
    out["slope_std"] = out["slope_variance"] / 2
    return out


def figure(result, path, title=""):
    """Mean squared distance and its square root against m, log-log, with the fitted lines; the legend under
    the axes."""
    from ..plot import pyplot, save

    plt = pyplot()
    m, v = np.array(result["sizes"], float), np.array(result["mean_sq"])
    sem = np.array(result["sem_sq"])
    slope, icpt = np.polyfit(np.log(m), np.log(v), 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.plot(m, v, "o", color="C0", label=r"mean $|G_m - G|^2$ (variance)")
    ax.errorbar(m, v, yerr=sem, fmt="none", color="C0")
    ax.plot(m, np.exp(icpt) * m ** slope, "-", color="C0", lw=1, label=f"fit: slope {slope:.3f}")
    sd = np.sqrt(v)
    s_slope, s_icpt = np.polyfit(np.log(m), np.log(sd), 1)
    ax.plot(m, sd, "s", color="C1", label=r"its square root (standard deviation)")
    ax.plot(m, np.exp(s_icpt) * m ** s_slope, "-", color="C1", lw=1, label=f"fit: slope {s_slope:.3f}")
    if result.get("trace"):
        s2, n = result["trace"], result["samples"]
        ax.plot(m, s2 / m, ":", color="gray",
                label=r"$\sigma^2/m$ and $\sigma/\sqrt{m}$ ($\sigma^2$ = tr $\Sigma$ from the fit)")
        ax.plot(m, np.sqrt(s2 / m), ":", color="gray")
        ax.plot(m, s2 * (1 / m - 1 / n), "--", color="gray", lw=0.8,
                label=rf"$\sigma^2(1/m - 1/N)$: drawn without replacement, N = {n}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("minibatch size m")
    ax.set_ylabel("distance to the full-batch gradient")
    ax.set_title(title or "minibatch gradient error at fixed parameters")
    ax.grid(True, which="both", alpha=0.3)
    # under the axes: inside, its lines cover the points of some sizes whatever corner it takes. Two columns,
    # filled down: the variance's entries on the left, the standard deviation's on the right
    handles, labels = ax.get_legend_handles_labels()
    order = [0, 1, 4, 2, 3, 5] if len(handles) == 6 else list(range(len(handles)))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    return save(fig, path)


def check_args(args):
    """Every check of the command line before any work (the sizes against the training split come with the
    checkpoint): sets ``args.sizes``."""
    from ..config import SEED_MAX

    args.sizes = parse_sizes(args.batch_sizes)
    if args.draws < 2 or args.chunk < 1:
        raise UserError("--draws must be at least 2 (the spread needs two) and --chunk at least 1")
    if not 0 <= args.seed <= SEED_MAX:
        raise UserError(f"--seed {args.seed}: give a seed in [0, {SEED_MAX}]")
    if args.out:
        from ..outputs import check_figure

        check_figure(args.out)


def run(args):
    w = comm.world()
    out = {}

    def body():
        with comm.agreed(w):  # any rank may fail to load alone; one line says why
            check_args(args)
            model, loss, split, cfg = load(args)
        for line in args.skipped if w.rank == 0 else []:
            print(line, file=sys.stderr, flush=True)
        out.update(measure(w, model, loss, split, args.sizes, args.draws, args.seed, args.chunk))
        out.update(fit(out))
        if w.rank == 0 and args.out:
            figure(out, args.out, title=f"{cfg['data']['dataset'] or 'data'}, {args.checkpoint}")

    code = comm.run_on_every_rank(w, body)
    if code or w.rank != 0:
        return code
    out = {"checkpoint": args.checkpoint, "draws": args.draws, **out}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.checkpoint}: {out['samples']} training samples, |G|^2 = {out['full_grad_sq']:.4g}, "
              f"{args.draws} minibatches per size")
        print(f"{'m':>6}  {'mean |G_m - G|^2':>17}  {'std. error':>10}  {'x m':>10}")
        for m, v, e in zip(out["sizes"], out["mean_sq"], out["sem_sq"]):
            print(f"{m:>6}  {v:>17.5g}  {e:>10.3g}  {v * m:>10.4g}")
        line = f"log-log slope: variance {out['slope_variance']:.3f}"
        if "slope_variance_corrected" in out:
            line += f" ({out['slope_variance_corrected']:.3f} with the finite-population factor removed)"
        print(line + f", standard deviation {out['slope_std']:.3f} (sigma/sqrt(m): -1 and -0.5)")
        if out.get("noise_scale") is not None:
            print(f"tr(Sigma) = {out['trace']:.4g}, noise scale B_simple = tr(Sigma)/|G|^2 = {out['noise_scale']:.4g}")
        if args.out:
            print(f"figure: {args.out}")
    sys.stdout.flush()
    return 0
