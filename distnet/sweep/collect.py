"""One point's metrics (``metrics.jsonl``, possibly written by several resumed runs) -> its row."""

import math
from pathlib import Path

from .. import config as C
from ..metrics import elapsed, read_records, train_windows


def read_metrics(path):
    """``read_records`` of a point's metrics file; nothing yet if it has none."""
    path = Path(path)
    return read_records(path) if path.is_file() else ([], [])


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def row(plan, point, folder):
    """The point's results as a dict (the columns of results.csv); None where not measured."""
    records, segments = read_metrics(Path(folder) / point.name / "metrics.jsonl")
    target = C.parse_target(plan.target)
    start = next((r for r in records if r["event"] == "start"), {})
    summary = next((r for r in records if r["event"] == "summary"), None)
    evals = [r for r in records if r["event"] == "eval"]
    trains = [r for r in records if r["event"] == "train"]
    hit = next((r for r in evals if r.get("split") == plan.split
                and C.target_reached(target, r["loss"], r["accuracy"])), None)
    out = dict(point=point.name, ranks=point.ranks, batch=point.batch, lr_mult=point.lr_mult, lr=point.lr,
               seed=point.seed, auto=point.auto)
    status = "pending" if not records else "incomplete"
    if summary is not None:
        status = "reached" if hit else "not reached"
    out["status"] = status
    steps = hit["step"] if hit else None
    out["steps_to_target"] = steps
    first = start.get("global_batch") or point.batch
    changes = sorted((r["step"], r["global_batch"]) for r in records if r["event"] == "batch")
    out["samples_to_target"] = _samples_to(steps, first, changes) if steps else None
    out["final_batch"] = changes[-1][1] if changes else first
    spe = start.get("steps_per_epoch")
    out["epochs_to_target"] = out["samples_to_target"] / (spe * first) if steps and spe else None
    # running time until the evaluation that reached it (evaluations included, restarts' redone work not)
    out["wall_s_to_target"] = next(t for r, t in zip(records, elapsed(records, segments)) if r is hit) if hit else None
    last_step = records[-1]["step"] if records else 0
    out["steps_run"] = last_step
    out["epochs_run"] = last_step / spe if spe else None
    for split in ("val", "test"):
        accs = [r["accuracy"] for r in evals if r.get("split") == split and _finite(r.get("accuracy"))]
        out[f"best_{split}_accuracy"] = max(accs) if accs else None
    tests = [r for r in evals if r.get("split") == "test"]
    out["final_test_accuracy"] = tests[-1]["accuracy"] if tests else None
    out["final_train_accuracy"] = _final_train_accuracy(trains)
    gap = None
    if _finite(out["final_train_accuracy"]) and _finite(out["final_test_accuracy"]):
        gap = out["final_train_accuracy"] - out["final_test_accuracy"]
    out["generalization_gap"] = gap
    upto = steps if steps else last_step
    noise = [r["noise_scale"] for r in trains if r["step"] <= upto and _finite(r.get("noise_scale"))]
    out["noise_scale_mean"] = sum(noise) / len(noise) if noise else None
    # the scale grows as training goes on (McCandlish et al.); its value where the target was reached is the
    # one B_crit is about (a moving average over the last ~1/(1 - train.noise_decay) measured steps)
    out["noise_scale_at_target"] = noise[-1] if noise else None
    out["noise_biased"] = any(r.get("noise_biased") for r in trains)  # 1 rank, 1 micro-step: biased upwards
    out["samples_per_s"] = _samples_per_s(trains, point.batch) if not changes else _mean_rate(trains, first)
    out["wall_s"] = sum(b - a for a, b in segments) if segments else None
    return out


def _final_train_accuracy(trains, fraction=0.1):
    """Training accuracy over the last ``fraction`` of the steps run (at least the last train line), each
    line weighted by the steps it covers: one line may hold a single small batch."""
    if not trains:
        return None
    last = trains[-1]["step"]
    acc = steps = 0.0
    prev = 0
    for r in trains:
        n, prev = r["step"] - prev, r["step"]
        if (r["step"] > (1 - fraction) * last or r is trains[-1]) and _finite(r.get("accuracy")) and n > 0:
            acc, steps = acc + n * r["accuracy"], steps + n
    return acc / steps if steps else None


def _samples_to(steps, first, changes):
    """Samples trained in the first ``steps`` steps, the batch changing after the steps of ``changes``
    ((step, new global batch), from ``train.batch_size = "auto"``)."""
    total, prev, batch = 0, 0, first
    for step, new in changes:
        if step >= steps:
            break
        total, prev, batch = total + (step - prev) * batch, step, new
    return total + (steps - prev) * batch


def _mean_rate(trains, first):
    """Throughput of a run whose batch grew: each train line's window weighted by its samples."""
    samples = seconds = 0.0
    prev = trains[0]["step"] if trains else 0
    for r in trains[1:]:
        n, prev = r["step"] - prev, r["step"]
        b = r.get("global_batch") or first
        if n > 0 and _finite(r.get("samples_per_s")) and r["samples_per_s"] > 0:
            samples, seconds = samples + n * b, seconds + n * b / r["samples_per_s"]
    return samples / seconds if seconds else None


def _samples_per_s(trains, batch):
    """Training throughput: the train-line windows that measure training alone (see ``train_windows``)."""
    if not trains:
        return None
    windows = train_windows(trains, warmup=trains[0]["step"], batch=batch)
    if windows:
        return sum(n for _, n, _ in windows) * batch / sum(s for _, _, s in windows)
    rates = [r["samples_per_s"] for r in trains if _finite(r.get("samples_per_s"))]
    return sum(rates) / len(rates) if rates else None
