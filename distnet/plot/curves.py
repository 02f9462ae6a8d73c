"""Learning curves of runs (``distnet plot RUN.jsonl ...``): loss and accuracy (training lines and every
evaluated split), the learning rate, and the gradient noise scale when the runs measured it, against steps,
samples or running time."""

import math
from pathlib import Path

from ..errors import UserError
from ..metrics import elapsed, read_records
from . import pyplot, save

XLABEL = {"steps": "step", "samples": "training samples", "time": "running time, s"}
STYLE = {"train": "-", "val": "--", "test": ":"}
# the panels' y labels: the titles name the quantity, these its scale (a panel read alone, as in a paper)
YLABEL = {"loss": "loss (log scale)", "accuracy": "accuracy (fraction correct)", "lr": "learning rate",
          "noise_scale": "B_simple, samples (log scale)"}


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load(path):
    """(label, records with their x values) of one metrics file; a UserError if it holds no curve."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such metrics file: give files written by distnet train --metrics")
    records, segments = read_records(p)
    if not any(r["event"] in ("train", "eval") for r in records):
        raise UserError(f"{p} has no train or eval lines: is it a distnet metrics file (distnet train --metrics)?")
    start = next((r for r in records if r["event"] == "start"), {})
    batch = start.get("global_batch") or next((r.get("global_batch") for r in records if r.get("global_batch")), None)
    label = p.parent.name if p.stem == "metrics" and p.parent.name else p.stem
    changes = sorted((r["step"], r["global_batch"]) for r in records if r["event"] == "batch")
    return label, records, elapsed(records, segments), (batch, changes)


def _x(kind, rec, t, batch):
    if kind == "steps":
        return rec["step"]
    if kind == "samples":  # the batch may grow at epoch ends (train.batch_size = "auto": "batch" lines)
        first, changes = batch
        total, prev, b = 0, 0, first
        for step, new in changes:
            if step >= rec["step"]:
                break
            total, prev, b = total + (step - prev) * b, step, new
        return total + (rec["step"] - prev) * b
    return t


def main(args):
    x_kind = getattr(args, "x", None) or "steps"
    runs = [load(r) for r in args.runs]
    if x_kind == "samples":
        missing = [lab for lab, _, _, (b, _) in runs if not b]
        if missing:
            raise UserError(f"--x samples: {', '.join(missing)} does not say its global batch (no start line)")
    out = Path(args.out) if args.out else Path(args.runs[0]).with_suffix(".png")
    noise = any(_finite(r.get("noise_scale")) for _, recs, _, _ in runs for r in recs)
    biased = any(r.get("noise_biased") for _, recs, _, _ in runs for r in recs)
    plt = pyplot()
    panels = ["loss", "accuracy", "lr"] + (["noise_scale"] if noise else [])
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5)) if noise else plt.subplots(1, 3, figsize=(14, 4.2))
    axes = dict(zip(panels, axes.ravel()))
    for i, (label, recs, times, batch) in enumerate(runs):
        color = f"C{i % 10}"
        name = label if len(runs) > 1 else ""
        series = {"train": []}  # split -> [(x, record)]
        for r, t in zip(recs, times):
            if r["event"] in ("train", "eval"):
                split = "train" if r["event"] == "train" else r.get("split", "eval")
                series.setdefault(split, []).append((_x(x_kind, r, t, batch), r))
        for key in ("loss", "accuracy"):
            for split, pts in series.items():
                pts = [(x, r[key]) for x, r in pts if _finite(r.get(key))]
                if pts:
                    axes[key].plot(*zip(*pts), STYLE.get(split, "-."), color=color, lw=1.1,
                                   label=f"{name} {split}".strip())
        for key in ("lr",) + (("noise_scale",) if noise else ()):
            pts = [(x, r[key]) for x, r in series["train"] if _finite(r.get(key))]
            if pts:
                axes[key].plot(*zip(*pts), "-", color=color, lw=1.1, label=name or None)
    titles = {"loss": "loss", "accuracy": "accuracy", "lr": "learning rate",
              "noise_scale": "gradient noise scale B_simple" + (" (biased: 1 rank, 1 micro-step)" if biased else "")}
    for key, ax in axes.items():
        ax.set_title(titles[key])
        ax.set_xlabel(XLABEL[x_kind])
        ax.set_ylabel(YLABEL[key])
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0] and (key in ("loss", "accuracy") or len(runs) > 1):
            ax.legend(fontsize=7)
    if noise:
        axes["noise_scale"].set_yscale("log")
    axes["loss"].set_yscale("log")
    if len(runs) == 1:  # several runs are named in the legends; one alone would be named nowhere
        fig.suptitle(runs[0][0])
    fig.tight_layout()
    save(fig, out)
    print(f"distnet plot: wrote {out}")
    return 0
