"""``DIR/results.csv``, ``DIR/report.md`` and the figures, from whatever points have run so far."""

import csv
import io
import math
import sys
from pathlib import Path

from . import collect, fit as F

COLUMNS = ["point", "batch", "auto", "final_batch", "lr_mult", "lr", "seed", "status", "best_lr", "steps_to_target", "samples_to_target",
           "epochs_to_target", "wall_s_to_target", "steps_run", "epochs_run", "best_val_accuracy",
           "best_test_accuracy", "final_train_accuracy", "final_test_accuracy", "generalization_gap",
           "noise_scale_mean", "noise_scale_at_target", "noise_biased", "samples_per_s", "wall_s"]
FIGURES = {"steps": "steps_to_target.png", "samples": "samples_to_target.png", "accuracy": "accuracy_gap.png",
           "curves": "curves.png"}


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def best_per_batch(rows):
    """For each batch size, the rows of its best learning-rate multiplier: the one whose seeds all reached
    the target, in the fewest steps on average. Marks those rows ``best_lr``. Returns {batch: [rows]}."""
    groups = {}
    for r in rows:
        groups.setdefault((r["batch"], r["lr_mult"]), []).append(r)
    best = {}
    for (b, m), rs in sorted(groups.items()):
        if not all(r["status"] == "reached" for r in rs):
            continue
        s = _mean([r["steps_to_target"] for r in rs])
        if b not in best or s < best[b][0]:
            best[b] = (s, rs)
    for r in rows:
        r["best_lr"] = r["batch"] in best and r in best[r["batch"]][1]
    return {b: rs for b, (_, rs) in sorted(best.items())}


def summarize(rows):
    """Per batch size (its best rate, averaged over seeds) and the fit; ``(per_batch, fit, noise)``."""
    best = best_per_batch(rows)
    keys = ["lr_mult", "lr", "steps_to_target", "samples_to_target", "epochs_to_target", "wall_s_to_target",
            "best_val_accuracy", "best_test_accuracy", "final_train_accuracy", "generalization_gap",
            "noise_scale_mean", "noise_scale_at_target", "samples_per_s"]
    per_batch = []
    for b, rs in best.items():
        d = {"batch": b, "seeds": len(rs)}
        d.update({k: _mean([r[k] for r in rs]) for k in keys})
        per_batch.append(d)
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


def write(plan, folder, figures=True):
    """Collect every point and write results.csv and report.md (and the figures); returns the rows."""
    folder = Path(folder)
    rows = [collect.row(plan, p, folder) for p in plan.points]
    fixed = [r for r in rows if not r["auto"]]
    per_batch, f, noise = summarize(fixed)
    for r in rows:
        r.setdefault("best_lr", False)
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
            made = G.draw(plan, folder, fixed, per_batch, f, noise[0])
        except UserError as e:  # no matplotlib: the tables still count; say how to get the figures
            missing = str(e)
            print(f"distnet sweep: no figures: {missing}", file=sys.stderr)
    text = markdown(plan, rows, per_batch, f, noise, made)
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


def markdown(plan, rows, per_batch, f, noise, figures):
    metric, _, value = plan.target.partition("=")
    seeds = sorted({p.seed for p in plan.points})
    mults = sorted({p.lr_mult for p in plan.points})
    split = {"val": "validation", "test": "test"}[plan.split]
    out = [f"# Batch-size sweep: {plan.config}", "",
           f"Target: {split} {metric} {'≥' if metric == 'accuracy' else '≤'} {value}, within {plan.epochs} "
           f"epoch(s); {plan.ranks} rank(s) per run; learning rate {plan.base_lr:g} at batch {plan.base_batch} "
           f"scaled by `{plan.lr_rule}` and multiplied by {', '.join(f'{m:g}' for m in mults)} at every batch "
           f"size (the best is the one reaching the target in fewest steps); seed(s) "
           f"{', '.join(map(str, seeds))}. Evaluations as the step count grows by "
           f"{100 * plan.resolution:g} %: steps to target are known to that fraction"
           + (" (each run stopped at the target)." if not plan.full_curves else " (full runs).")]
    out += [f"The sweep set {n}." for n in plan.notes]
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
    out += ["", "## Per batch size (best learning rate)", "",
            "| batch | lr | steps to target | samples | epochs | steps vs perfect scaling | time to target s "
            "| best val % | best test % | train − test % | noise scale: mean, at target | samples/s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in per_batch:
        out.append(f"| {d['batch']} | {_n(d['lr'])} (×{d['lr_mult']:g}) | {_n(d['steps_to_target'])} "
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
    out += [""] + adaptive(rows, per_batch)
    out += ["", "## All points", "",
            "| point | status | steps to target | best val % | best test % | final train % | train − test % "
            "| noise scale: mean, at target | samples/s | time s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
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
    rate: batch, steps_to_target, samples_to_target, wall_s_to_target, seeds) of the sweep in ``folder``, for
    ``distnet plan``. Steps do not depend on the rank count (the same trajectory on any number of ranks)."""
    from . import plan as P

    plan = P.load(folder)  # a UserError naming the folder if it holds no sweep
    rows = [collect.row(plan, p, folder) for p in plan.points]
    per_batch, f, _ = summarize([r for r in rows if not r["auto"]])
    return f, per_batch
