"""``DIR/results.csv``, ``DIR/report.md`` and the figures, from whatever points have run so far."""

import csv
import io
import math
import sys
from pathlib import Path

from . import collect
from . import fit as F
from .figures import FIGURES

COLUMNS = ["point", "ranks", "batch", "auto", "final_batch", "lr_mult", "lr", "seed", "status", "best_lr",
           "steps_to_target", "samples_to_target", "epochs_to_target", "wall_s_to_target", "steps_run", "epochs_run",
           "best_val_accuracy", "best_test_accuracy", "final_train_accuracy", "final_test_accuracy",
           "generalization_gap", "noise_scale_mean", "noise_scale_at_target", "noise_biased", "samples_per_s",
           "strong_efficiency", "weak_efficiency", "wall_s"]


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def best_per_pair(rows):
    """For each (rank count, batch size), the rows of its best learning-rate multiplier: the one whose seeds all
    reached the target, in the fewest steps on average. Marks those rows ``best_lr``. Returns
    {(ranks, batch): [rows]}, ascending."""
    groups = {}
    for r in rows:
        groups.setdefault((r["ranks"], r["batch"], r["lr_mult"]), []).append(r)
    best = {}
    for (p, b, _), rs in sorted(groups.items()):
        if not all(r["status"] == "reached" for r in rs):
            continue
        s = _mean([r["steps_to_target"] for r in rs])
        if (p, b) not in best or s < best[p, b][0]:
            best[p, b] = (s, rs)
    for r in rows:
        r["best_lr"] = any(r is x for x in best.get((r["ranks"], r["batch"]), (0, []))[1])
    return {k: rs for k, (_, rs) in sorted(best.items())}


def summarize(rows):
    """Per batch size (its best rate, averaged over seeds) and the fit; ``(per_batch, fit, noise)``. Steps to
    the target do not depend on the rank count (the same trajectory on any number of ranks), so a batch size's
    row is that of the smallest rank count whose best rate reached the target there; ``ranks`` lists every
    count that reached it and ``steps_by_ranks`` their steps (the report says how far they differ)."""
    keys = ["lr_mult", "lr", "steps_to_target", "samples_to_target", "epochs_to_target", "wall_s_to_target",
            "best_val_accuracy", "best_test_accuracy", "final_train_accuracy", "generalization_gap",
            "noise_scale_mean", "noise_scale_at_target", "samples_per_s"]
    rows_of = {}
    for (p, b), rs in best_per_pair(rows).items():  # ascending: a batch size's smallest rank count first
        if b not in rows_of:
            rows_of[b] = {"batch": b, "seeds": len(rs), "ranks": [], "steps_by_ranks": {}, "from_ranks": p}
            rows_of[b].update({k: _mean([r[k] for r in rs]) for k in keys})
        rows_of[b]["ranks"].append(p)
        rows_of[b]["steps_by_ranks"][p] = _mean([r["steps_to_target"] for r in rs])
    per_batch = [rows_of[b] for b in sorted(rows_of)]
    if per_batch:  # the speed-up in steps over the smallest batch, relative to perfect scaling (1 = perfect)
        b0, s0 = per_batch[0]["batch"], per_batch[0]["steps_to_target"]
        for d in per_batch:
            d["scaling_efficiency"] = s0 / d["steps_to_target"] / (d["batch"] / b0)
    f = F.fit([d["batch"] for d in per_batch], [d["steps_to_target"] for d in per_batch])
    # B_crit is compared with the noise scale at the target of the smallest batch's best run: its longest run,
    # where the moving average is most local (in a run of a few hundred steps it still holds the early,
    # smaller values)
    at = [d["noise_scale_at_target"] for d in per_batch if d["noise_scale_at_target"] is not None]
    return per_batch, f, (at[0] if at else None, at)


def scaling(rows):
    """Per (rank count, batch size): samples/s (the mean over its points that measured it: the rate does not
    depend on the learning rate or the seed), strong and weak scaling efficiency, and the time to the target
    of its best rate (mean over seeds; None where no rate reached it). Strong: the same global batch B against
    the smallest rank count P0 measured at B, sps(P, B) / (P/P0 sps(P0, B)); weak: the same per-rank batch
    B/P against the smallest P0 measured at B P0/P, sps(P, B) / (P/P0 sps(P0, B P0/P)). A pair with no
    smaller count at its batch (per-rank batch) is its own P0 (1); None where its samples/s are missing. 1 is
    perfect scaling."""
    best = best_per_pair(rows)
    measured = {}
    for r in rows:
        if r["samples_per_s"] is not None:
            measured.setdefault((r["ranks"], r["batch"]), []).append(r["samples_per_s"])
    rate = {k: _mean(v) for k, v in sorted(measured.items())}
    out = []
    for p, b in sorted({(r["ranks"], r["batch"]) for r in rows}):
        s, rs = rate.get((p, b)), best.get((p, b), [])
        strong, p_strong = _efficiency(s, p, [k for k in rate if k[1] == b], rate)
        weak, p_weak = _efficiency(s, p, [k for k in rate if k[1] * p == b * k[0]], rate)
        out.append({"ranks": p, "batch": b, "per_rank_batch": b // p, "samples_per_s": s,
                    "points": len(measured.get((p, b), [])),
                    "strong_efficiency": strong, "strong_base": p_strong, "weak_efficiency": weak,
                    "weak_base": p_weak, "wall_s_to_target": _mean([r["wall_s_to_target"] for r in rs]),
                    "steps_to_target": _mean([r["steps_to_target"] for r in rs]),
                    "lr_mult": rs[0]["lr_mult"] if rs else None})
    return out


def _efficiency(s, p, bases, rate):
    """(s / (p/p0 rate[base]), p0) against the base point of the smallest rank count p0 <= p; (None, None)
    without one."""
    bases = sorted(k for k in bases if k[0] <= p)
    if s is None or not bases or not rate[bases[0]]:
        return None, None
    p0 = bases[0][0]
    return s / (p / p0 * rate[bases[0]]), p0


def write(plan, folder, figures=True):
    """Collect every point and write results.csv and report.md (and the figures); returns the rows."""
    folder = Path(folder)
    rows = [collect.row(plan, p, folder) for p in plan.points]
    fixed = [r for r in rows if not r["auto"]]
    per_batch, f, noise = summarize(fixed)
    scale = scaling(fixed) if plan.several else []
    pairs = {(d["ranks"], d["batch"]): d for d in scale}
    for r in rows:
        r.setdefault("best_lr", False)
        if not r["auto"] and (r["ranks"], r["batch"]) in pairs:  # its (rank count, batch)'s, as in report.md
            r.update({k: pairs[r["ranks"], r["batch"]][k] for k in ("strong_efficiency", "weak_efficiency")})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv(r.get(k)) for k in COLUMNS})
    _write(folder / "results.csv", buf.getvalue())
    made, missing = [], None
    if figures and any(r["status"] != "pending" for r in rows):
        from ..errors import UserError
        from . import figures as G

        try:
            made = G.draw(plan, folder, fixed, per_batch, f, noise[0], scale)
        except UserError as e:  # no matplotlib: the tables still count; say how to get the figures
            missing = str(e)
            print(f"distnet sweep: no figures: {missing}", file=sys.stderr)
    text = markdown(plan, rows, per_batch, f, noise, made, scale)
    if missing:
        text += f"\nNo figures: {missing}; then run distnet sweep --report on this folder.\n"
    _write(folder / "report.md", text)
    return rows


def _write(path, text):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _csv(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, bool):
        return "yes" if v else ""
    return "" if v is None else v


def _n(v, digits=3):
    """A number for a Markdown table: thousands separated, ``digits`` significant digits, "–" for none."""
    if v is None:
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    if isinstance(v, int) or (isinstance(v, float) and abs(v) >= 10 ** digits):
        return f"{round(v):,}"
    return f"{v:.{digits}g}"


def _pct(v):
    return "–" if v is None else f"{100 * v:.1f}"


def adaptive(rows, per_batch):
    """The "auto" points (``--auto``) beside the best fixed batch by time and by samples."""
    auto = [r for r in rows if r["auto"]]
    if not auto:
        return []
    out = ["## Adaptive batch (`train.batch_size = \"auto\"`)", "",
           "Grown at epoch ends toward the measured noise scale, from the smallest batch size up to the largest, "
           "the rate following the sweep's rule.", "",
           "| point | status | steps to target | samples | time to target s | final batch | best test % |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in auto:
        out.append(f"| {r['point']} | {r['status']} | {_n(r['steps_to_target'])} | {_n(r['samples_to_target'])} "
                   f"| {_n(r['wall_s_to_target'])} | {_n(r['final_batch'])} | {_pct(r['best_test_accuracy'])} |")
    timed = [d for d in per_batch if d["wall_s_to_target"] is not None]
    if timed:
        t = min(timed, key=lambda d: d["wall_s_to_target"])
        e = min(per_batch, key=lambda d: d["samples_to_target"])
        out += ["", f"Best fixed batch by time to target: {t['batch']} ({_n(t['wall_s_to_target'])} s, "
                f"{_n(t['steps_to_target'])} steps); by samples: {e['batch']} ({_n(e['samples_to_target'])})."]
    return out + [""]


def _ranks_text(plan):
    if not plan.several:
        return f"{plan.ranks[0]} rank(s) per run"
    return f"rank counts {', '.join(map(str, plan.ranks))} (each batch size on every count that divides it)"


def _pooled(per_batch):
    """What the per-batch table takes from which rank count, and how far the counts' steps differ."""
    spread = [max(v) / min(v) - 1 for v in (list(d["steps_by_ranks"].values()) for d in per_batch) if len(v) > 1]
    text = ("Steps to the target do not depend on the rank count (the training is the same on any number of "
            "ranks), so this table and the fit take each batch size's row from the smallest rank count whose best "
            "rate reached the target there (in bold under *ranks*, the counts that reached it)")
    if spread:
        text += f"; at the same batch size the counts' steps differ by {100 * max(spread):.1f} % at most"
    return [text + ".", ""]


def rank_counts(scale, figures):
    """The section per (rank count, batch size): samples/s, strong and weak scaling efficiency, time to target."""
    if not scale:
        return []
    out = ["## Rank counts", "",
           "| ranks | batch | per-rank batch | samples/s | strong scaling % | weak scaling % | time to target s "
           "| steps to target | best lr × |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in scale:
        reached = d["lr_mult"] is not None
        lr = f"{d['lr_mult']:g}" if reached else "–"
        out.append(f"| {d['ranks']} | {d['batch']} | {_n(d['per_rank_batch'])} | {_n(d['samples_per_s'])} "
                   f"| {_eff(d['strong_efficiency'], d['strong_base'])} | {_eff(d['weak_efficiency'], d['weak_base'])} "
                   f"| {_n(d['wall_s_to_target']) if reached else 'not reached'} | {_n(d['steps_to_target'])} "
                   f"| {lr} |")
    out += ["", "Samples/s: the training throughput measured by the points of that rank count and batch (every "
            "rate and seed; evaluations and checkpoints left out). Strong scaling: samples/s against P/P0 times "
            "those of the smallest rank count P0 run at the same global batch; weak scaling: against P/P0 times "
            "those of the smallest P0 run at the same per-rank batch (global batch × P0/P). P0 in parentheses (a "
            "row that is its own P0 is the base of the others: 100 %); 100 % is perfect scaling. Time to target: "
            "the best rate's running time to the evaluation that reached it (mean over seeds).", ""]
    for key in ("scaling", "time"):
        if FIGURES[key] in figures:
            out.append(f"![{key}]({FIGURES[key]})")
    return out + [""]


def _eff(value, base):
    return "–" if value is None else f"{100 * value:.1f} ({base})"


def markdown(plan, rows, per_batch, f, noise, figures, scale=()):
    metric, _, value = plan.target.partition("=")
    seeds = sorted({p.seed for p in plan.points})
    mults = sorted({p.lr_mult for p in plan.points})
    split = {"val": "validation", "test": "test"}[plan.split]
    out = [f"# Batch-size sweep: {plan.config}", "",
           f"Target: {split} {metric} {'≥' if metric == 'accuracy' else '≤'} {value}, within {plan.epochs} "
           f"epoch(s); {_ranks_text(plan)}; learning rate {plan.base_lr:g} at batch {plan.base_batch} "
           f"scaled by `{plan.lr_rule}` and multiplied by {', '.join(f'{m:g}' for m in mults)} at every batch "
           f"size (the best is the one reaching the target in fewest steps); seed(s) "
           f"{', '.join(map(str, seeds))}. Evaluations as the step count grows by "
           f"{100 * plan.resolution:g} %: steps to target are known to that fraction"
           + (" (each run stopped at the target)." if not plan.full_curves else " (full runs).")]
    out += [f"The sweep {n}." if n.startswith("left out ") else f"The sweep set {n}." for n in plan.notes]
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    out += ["", "Points: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".", ""]
    out += ["## Fit", ""]
    if f is None:
        out.append("Fewer than two batch sizes reached the target: no fit.")
    else:
        out.append(f"S = S_min (1 + B_crit / B) over {f.n} batch sizes (relative least squares, rms error "
                   f"{100 * f.rms_rel:.1f} %): **S_min = {_n(f.s_min)} steps, E_min = {_n(f.e_min)} samples, "
                   f"B_crit = {_n(f.b_crit)}**." + (f" {f.note[0].upper()}{f.note[1:]}." if f.note else ""))
    first, values = noise
    if first is None:
        out.append("The runs measured no gradient noise scale (`noise_scale` in the metrics).")
    else:
        out.append(f"Measured gradient noise scale B_simple where the target was reached: **{_n(first)}** in the "
                   f"smallest batch's best run (its longest: the moving average there is the most local), "
                   f"{_n(min(values))}–{_n(max(values))} over the best runs of all batch sizes (shorter runs "
                   "average in more of their early, smaller values)"
                   + (f"; B_crit / B_simple = {f.b_crit / first:.2g}." if f and first and math.isfinite(f.b_crit)
                      else "."))
    if any(r.get("noise_biased") for r in rows):
        out.append("The noise scale of runs on 1 rank without accumulation is the biased estimate from consecutive "
                   "steps (`noise_biased` in the metrics): run the sweep with --ranks 2 or more, or "
                   "--set train.accumulate=2, for the unbiased one.")
    several = plan.several
    out += ["", "## Per batch size (best learning rate)", ""] + (_pooled(per_batch) if several else []) + [
            "| batch |" + (" ranks |" if several else "") + " lr | steps to target | samples | epochs "
            "| steps vs perfect scaling | time to target s | best val % | best test % | train − test % "
            "| noise scale: mean, at target | samples/s |", "|---:|" + ("---|" if several else "")
            + "---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in per_batch:
        ranks = f" {', '.join(f'**{p}**' if p == d['from_ranks'] else str(p) for p in d['ranks'])} |"
        out.append(f"| {d['batch']} |{ranks if several else ''} {_n(d['lr'])} (×{d['lr_mult']:g}) "
                   f"| {_n(d['steps_to_target'])} "
                   f"| {_n(d['samples_to_target'])} | {_n(d['epochs_to_target'])} | {_n(d['scaling_efficiency'], 2)} "
                   f"| {_n(d['wall_s_to_target'])} | {_pct(d['best_val_accuracy'])} | {_pct(d['best_test_accuracy'])} "
                   f"| {_pct(d['generalization_gap'])} | {_n(d['noise_scale_mean'])}, {_n(d['noise_scale_at_target'])} "
                   f"| {_n(d['samples_per_s'])} |")
    unreached = sorted({r["batch"] for r in rows} - {d["batch"] for d in per_batch})
    if unreached:
        out.append("")
        out.append(f"No rate reached the target at batch {', '.join(map(str, unreached))} (within the cap, or "
                   "not yet run).")
    out += ["", "\"Steps vs perfect scaling\" is the smallest batch's steps divided by this batch's, divided by the "
            "batch ratio: 1 while doubling the batch halves the steps.", ""]
    for key in ("steps", "samples", "accuracy", "curves"):
        if FIGURES[key] in figures:
            out.append(f"![{key}]({FIGURES[key]})")
    out += [""] + rank_counts(scale, figures) + adaptive(rows, per_batch)
    out += ["", "## All points", "",
            "| point | status | steps to target | best val % | best test % | final train % | train − test % "
            "| noise scale: mean, at target | samples/s | time s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = " **best**" if r.get("best_lr") else ""
        out.append(f"| {r['point']}{mark} | {r['status']} | {_n(r['steps_to_target'])} "
                   f"| {_pct(r['best_val_accuracy'])} | {_pct(r['best_test_accuracy'])} "
                   f"| {_pct(r['final_train_accuracy'])} | {_pct(r['generalization_gap'])} "
                   f"| {_n(r['noise_scale_mean'])}, {_n(r['noise_scale_at_target'])} | {_n(r['samples_per_s'])} "
                   f"| {_n(r['wall_s'])} |")
    return "\n".join(out) + "\n"


def steps_fit(folder):
    """(the fit of steps to the target against the batch, or None; the per-batch rows of the best learning
    rate: batch, steps_to_target, samples_to_target, wall_s_to_target, seeds, ranks) of the sweep in
    ``folder``, for ``distnet plan --sweep``. Steps do not depend on the rank count (the same trajectory on any
    number of ranks): a batch size's row is its smallest rank count's that reached the target (``from_ranks``),
    ``ranks`` every count that did. A UserError naming the folder if it holds no sweep."""
    from . import plan as P

    plan = P.load(folder)
    rows = [collect.row(plan, p, folder) for p in plan.points]
    per_batch, f, _ = summarize([r for r in rows if not r["auto"]])
    return f, per_batch
