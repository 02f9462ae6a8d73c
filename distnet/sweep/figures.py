"""The sweep's figures (PNG through ``distnet.plot``): steps and samples to target against batch size,
accuracy and generalization gap against batch size, and every point's learning curve; with several rank
counts, samples/s and scaling efficiency against ranks, and time to target against batch size per count."""

import math
from pathlib import Path

from ..plot import pyplot, save
from . import collect

FIGURES = {"steps": "steps_to_target.png", "samples": "samples_to_target.png", "accuracy": "accuracy_gap.png",
           "curves": "curves.png", "scaling": "scaling.png", "time": "time_to_target.png"}


def draw(plan, folder, rows, per_batch, f, noise, scale=()):
    """Draw what the rows allow (``scale``: report.scaling's rows, with several rank counts); returns the file
    names written."""
    plt, folder, made = pyplot(), Path(folder), []
    if per_batch:
        made.append(_steps(plt, folder, rows, per_batch, f, noise, plan))
        made.append(_samples(plt, folder, rows, per_batch, f, noise, plan))
    if any(r["best_val_accuracy"] is not None or r["best_test_accuracy"] is not None for r in rows):
        made.append(_accuracy(plt, folder, rows, per_batch, plan))
    made.append(_curves(plt, folder, plan, {r['point'] for r in rows if r.get('best_lr')}))
    if any(d["samples_per_s"] is not None for d in scale):
        made.append(_scaling(plt, folder, scale, plan))
        made.append(_time(plt, folder, scale, plan))
    return [m for m in made if m]


def _batch_axis(ax, batches):
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches], rotation=45 if len(batches) > 6 else 0)
    ax.minorticks_off()
    ax.set_xlabel("global batch size")
    ax.grid(True, which="major", alpha=0.3)


def _marks(ax, f, noise):
    if f is not None and math.isfinite(f.b_crit) and f.b_crit > 0:
        ax.axvline(f.b_crit, color="C3", ls="--", lw=1, label=f"B_crit (fit) {f.b_crit:,.0f}")
    if noise:
        ax.axvline(noise, color="C2", ls=":", lw=1.5, label=f"noise scale at target (smallest batch) {noise:,.0f}")


def _fit_grid(batches):
    lo, hi = math.log2(min(batches)) - 0.3, math.log2(max(batches)) + 0.3
    return [2 ** (lo + (hi - lo) * i / 100) for i in range(101)]


def _log_labels(ax):
    """Numbers on a log y axis that spans less than two decades: otherwise it may show one label, or none."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = ax.get_ylim()
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2, 3, 5)))  # after _batch_axis's minorticks_off
    ax.yaxis.set_minor_formatter(plain if hi < 100 * lo else NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _unreached(ax, batches, reached):
    """Hollow markers along the top for the batch sizes where no rate reached the target within the cap."""
    missing = [b for b in batches if b not in set(reached)]
    if missing:
        top = ax.get_ylim()[1]
        ax.scatter(missing, [top] * len(missing), marker="v", s=40, facecolors="none", edgecolors="C3",
                   clip_on=False, zorder=4, label="not reached within the cap")


def _steps(plt, folder, rows, per_batch, f, noise, plan):
    fig, ax = plt.subplots(figsize=(7, 4.8))
    batches = sorted({r["batch"] for r in rows})
    others = [r for r in rows if r["status"] == "reached" and not r.get("best_lr")]
    if others:
        ax.scatter([r["batch"] for r in others], [r["steps_to_target"] for r in others], s=14, color="0.6",
                   label="other learning rates", zorder=2)
    bb = [d["batch"] for d in per_batch]
    ss = [d["steps_to_target"] for d in per_batch]
    ax.plot(bb, ss, "o-", color="C0", label="best learning rate", zorder=3)
    grid = _fit_grid(batches)
    ax.plot(grid, [ss[0] * bb[0] / b for b in grid], color="0.3", lw=1, ls="-.", label="perfect scaling")
    if f is not None:
        ax.plot(grid, [f.steps(b) for b in grid], color="C3", lw=1.2, label="fit S_min(1+B_crit/B)")
        if f.s_min > 0:
            ax.axhline(f.s_min, color="C3", lw=0.8, ls=":", label=f"S_min {f.s_min:,.0f} (an unlimited batch)")
    _marks(ax, f, noise)
    ax.set_yscale("log")
    _unreached(ax, batches, bb)
    _batch_axis(ax, batches)
    _log_labels(ax)
    ax.set_ylabel(f"steps to {plan.split} {plan.target.replace('=', ' ')}")
    ax.set_title(f"{plan.config}: steps to target")
    ax.legend(fontsize=8)
    return save(fig, folder / FIGURES["steps"]).name


def _samples(plt, folder, rows, per_batch, f, noise, plan):
    fig, ax = plt.subplots(figsize=(7, 4.8))
    batches = sorted({r["batch"] for r in rows})
    bb = [d["batch"] for d in per_batch]
    ax.plot(bb, [d["samples_to_target"] for d in per_batch], "o-", color="C0", label="best learning rate")
    if f is not None:
        grid = _fit_grid(batches)
        ax.plot(grid, [b * f.steps(b) for b in grid], color="C3", lw=1.2,
                label=f"fit E_min(1+B/B_crit): E_min {f.e_min:,.0f}")
    _marks(ax, f, noise)
    ax.set_yscale("log")
    _unreached(ax, batches, bb)
    _batch_axis(ax, batches)
    _log_labels(ax)
    ax.set_ylabel("training samples to target")
    ax.set_title(f"{plan.config}: samples to target")
    ax.legend(fontsize=8)
    return save(fig, folder / FIGURES["samples"]).name


def _accuracy(plt, folder, rows, per_batch, plan):
    """Accuracy and generalization gap against batch size, side by side; constrained layout keeps the right
    panel's long y label clear of the left panel's ticks (a fixed spacing let them touch when the gap's tick
    labels are wide, e.g. negative)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    fig.get_layout_engine().set(wspace=0.05)  # and a clear gap: the label would sit right beside the ticks
    batches = sorted({r["batch"] for r in rows})
    best = {d["batch"]: d for d in per_batch}
    # per batch: the best rate's mean where one reached the target, else the best value any rate got
    def per(key, pick=max):
        xs, ys = [], []
        for b in batches:
            if b in best and best[b][key] is not None:
                xs.append(b), ys.append(best[b][key])
                continue
            vals = [r[key] for r in rows if r["batch"] == b and r[key] is not None]
            if vals:
                xs.append(b), ys.append(pick(vals))
        return xs, [100 * y for y in ys]

    for key, label in (("best_val_accuracy", "best validation"), ("best_test_accuracy", "best test"),
                       ("final_train_accuracy", "final training")):
        xs, ys = per(key)
        if xs:
            a1.plot(xs, ys, "o-", label=label)
    metric, _, value = plan.target.partition("=")
    if metric == "accuracy":
        a1.axhline(100 * float(value), color="0.4", lw=0.8, ls="--", label="target")
    a1.set_ylabel("accuracy %")
    a1.legend(fontsize=8)
    _batch_axis(a1, batches)
    a1.set_title("accuracy (best rate per batch)")
    xs, ys = per("generalization_gap", pick=min)
    a2.plot(xs, ys, "o-", color="C4")
    a2.axhline(0, color="0.4", lw=0.6)
    a2.set_ylabel("final training − test accuracy, points")
    _batch_axis(a2, batches)
    a2.set_title("generalization gap")
    return save(fig, folder / FIGURES["accuracy"]).name


def _curves(plt, folder, plan, best):
    """The target split's accuracy (or loss) against steps for every point, coloured by batch size; the
    best rate of each batch size drawn solid, the others faint."""
    metric = plan.target.partition("=")[0]
    batches = sorted({p.batch for p in plan.points if not p.auto})
    cmap = plt.get_cmap("viridis")  # its light green-to-yellow end (past 0.75) is hard to see on white
    color = {b: cmap(0.75 * i / max(1, len(batches) - 1)) for i, b in enumerate(batches)}
    rows = {}
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = set()
    for p in plan.points:
        records, _ = collect.read_metrics(Path(folder) / p.name / "metrics.jsonl")
        ev = [r for r in records if r["event"] == "eval" and r.get("split") == plan.split and r["step"] > 0]
        if not ev:
            continue
        rows[p.name] = ev
        drawn.add(p.batch)
        if p.auto:  # the adaptive batch: black, dashed
            ax.plot([r["step"] for r in ev], [r[metric] for r in ev], color="k", ls="--", lw=1, alpha=0.7)
            continue
        chosen = p.name in best or not best
        ax.plot([r["step"] for r in ev], [r[metric] for r in ev], color=color[p.batch], lw=1.3 if chosen else 0.8,
                alpha=0.9 if chosen else 0.3)
    if not rows:
        plt.close(fig)
        return None
    value = float(plan.target.partition("=")[2])
    target = ax.axhline(value, color="0.3", lw=0.8, ls="--", label="target")
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{plan.split} {metric}")
    floor = None
    if metric == "accuracy":
        lows = [min(r[metric] for r in ev) for ev in rows.values()]
        floor = max(min(lows), value - 0.25)
        ax.set_ylim(floor, None)
    lo, hi = _step_range(rows.values(), metric, floor)
    if lo < hi:  # autoscale would start at 10^0, a decade or more before the first curve shows
        ax.set_xlim(lo, hi)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{plan.config}: learning curves of every point")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=color[b], lw=1.3, label=f"batch {b}") for b in sorted(drawn)]
    if any(p.auto for p in plan.points):
        handles.append(Line2D([], [], color="k", ls="--", lw=1, label="auto"))
    ax.legend(handles=handles + [target], fontsize=7, ncol=2,
              title="best rate solid, others faint" if best else None, title_fontsize=7)
    return save(fig, folder / FIGURES["curves"]).name


def _step_range(curves, metric, floor):
    """(first, last) step of the curves where they show: the first evaluations of an accuracy curve lie under
    the y axis's ``floor``, so it starts at the one before it rises above (its line enters from the bottom)."""
    first = []
    for ev in curves:
        shown = [i for i, r in enumerate(ev) if floor is None or r[metric] >= floor]
        first.append(ev[max(0, shown[0] - 1)]["step"] if shown else ev[-1]["step"])
    return min(first), max(r["step"] for ev in curves for r in ev)


def _ranks_axis(ax, counts):
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts)
    ax.set_xticklabels([str(p) for p in counts])
    ax.minorticks_off()
    ax.set_xlabel("ranks")
    ax.grid(True, which="major", alpha=0.3)


def _log_y(ax):
    """A log y axis labelled in plain numbers; at 1, 2 and 5 of each decade when the data span under two
    decades (else a short range shows one label or none)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5) if hi < 100 * lo else (1,)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _legend_below(ax):
    """The legend under the axes, where it can hide no curve whatever the values."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def _series(scale, key, value):
    """{key value: [(ranks, value), ...]} of the rows where ``value`` was measured, ascending."""
    out = {}
    for d in scale:
        if d[value] is not None:
            out.setdefault(d[key], []).append((d["ranks"], d[value]))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _scaling(plt, folder, scale, plan):
    """samples/s against ranks per batch size beside the ideal from its smallest rank count; strong (per
    batch size) and weak (per per-rank batch) efficiency against ranks."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    counts = sorted({d["ranks"] for d in scale})
    for i, (b, pts) in enumerate(_series(scale, "batch", "samples_per_s").items()):
        (p0, s0), ps = pts[0], [p for p in counts if pts[0][0] <= p <= pts[-1][0]]
        a1.plot([p for p, _ in pts], [s for _, s in pts], "o-", color=f"C{i % 10}", label=f"batch {b}")
        a1.plot(ps, [p / p0 * s0 for p in ps], ls="--", lw=0.9, color=f"C{i % 10}", alpha=0.6)
    a1.plot([], [], ls="--", lw=0.9, color="0.4", label="ideal: P/P0 × smallest count's")
    _log_y(a1)
    _ranks_axis(a1, counts)
    a1.set_ylabel("training samples/s")
    a1.set_title("throughput")
    _legend_below(a1)
    strong = {b: v for b, v in _series(scale, "batch", "strong_efficiency").items() if len(v) > 1}
    weak = {b: v for b, v in _series(scale, "per_rank_batch", "weak_efficiency").items() if len(v) > 1}
    batches = sorted({d["batch"] for d in scale})
    for b, pts in strong.items():
        a2.plot([p for p, _ in pts], [100 * e for _, e in pts], "o-", color=f"C{batches.index(b) % 10}",
                label=f"strong, batch {b}")
    for m, pts in weak.items():  # batch m's colour: from 1 rank, its curve starts at that batch's point
        color = f"C{batches.index(m) % 10}" if m in batches else "0.4"
        a2.plot([p for p, _ in pts], [100 * e for _, e in pts], "s--", color=color, mfc="none",
                label=f"weak, {m} per rank")
    a2.axhline(100, color="0.3", lw=0.8, ls=":", label="perfect (100 %)")
    top = max([100] + [100 * e for v in (*strong.values(), *weak.values()) for _, e in v])
    a2.set_ylim(0, top * 1.12)
    _ranks_axis(a2, counts)
    a2.set_ylabel("scaling efficiency %")
    a2.set_title("strong (same global batch), weak (same per-rank batch)", fontsize=10)
    _legend_below(a2)
    fig.suptitle(f"{plan.config}: scaling over ranks")
    return save(fig, folder / FIGURES["scaling"]).name


def _time(plt, folder, scale, plan):
    """Time to target against the global batch, a curve per rank count; a (rank count, batch) whose points ran
    but did not reach the target is a hollow marker along the top."""
    fig, ax = plt.subplots(figsize=(7, 4.8))
    counts = sorted({d["ranks"] for d in scale})
    missed = []
    for i, p in enumerate(counts):
        mine = [d for d in scale if d["ranks"] == p]
        hit = [d for d in mine if d["wall_s_to_target"] is not None]
        ax.plot([d["batch"] for d in hit], [d["wall_s_to_target"] for d in hit], "o-", color=f"C{i % 10}",
                label=f"{p} rank{'s' * (p > 1)}")
        miss = [d["batch"] for d in mine if d["wall_s_to_target"] is None and d["samples_per_s"] is not None]
        missed.append((miss, f"C{i % 10}"))
    ax.set_yscale("log")
    if any(m for m, _ in missed):  # a strip above the curves for them
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (hi / lo) ** 0.15)
        for miss, color in missed:
            ax.plot(miss, [0.95] * len(miss), "o", mfc="none", color=color, ms=8, transform=ax.get_xaxis_transform())
        ax.plot([], [], "o", mfc="none", color="0.3", label="not reached (along the top)")
    _log_y(ax)
    _batch_axis(ax, sorted({d["batch"] for d in scale}))
    ax.set_ylabel(f"seconds to {plan.split} {plan.target.replace('=', ' ')}")
    ax.set_title(f"{plan.config}: time to target (best rate) per rank count")
    _legend_below(ax)
    return save(fig, folder / FIGURES["time"]).name
