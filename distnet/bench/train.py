"""``distnet bench train``: a short training run on the real data, measured.

It runs the real training loop (``distnet.train.loop.train``, with its ``--profile`` step timer) for
``--warmup`` + ``--steps`` steps, no evaluation and no checkpoints, and reports from the steps after the
warm-up:

- the mean step split into data wait, forward, backward, exposed communication wait and optimizer (rank
  0's timer: rank 0's comm wait also absorbs any lateness of the other ranks); from the timer's trace,
  every rank's phases, and the comm wait of the rank that arrived last at it (min over ranks per step),
  which waiting for other ranks cannot explain;
- samples/s (wall time of the measured steps over the global samples they processed);
- beside the exposed comm wait, one plain blocking MPI_Allreduce of the whole gradient buffer (the
  project floor: exposed wait per step <= half of that allreduce);
- scaling efficiency against one rank: after the P-rank run, rank 0 runs the 1-rank baseline as a
  subprocess of itself (``DISTNET_NO_MPI=1``, so it does not touch this MPI job) while the other ranks
  wait in a sleeping barrier, so the baseline has a quiet core. Two baselines, both at 1 rank:
  strong scaling (same global batch B):  eff = sps(P, B) / (P x sps(1, B))
  weak scaling (same per-rank batch B/P): eff = sps(P, B) / (P x sps(1, B/P))

The warm-up excludes itself through the metrics file: metric lines are written every gcd(warmup, steps)
steps, each with the timer's per-phase means over its window, and the windows before the warm-up ends are
dropped (so is a window that follows an epoch-end evaluation, if the run crosses an epoch).

    mpiexec -n 2 distnet bench train fashion-mlp
    mpiexec -n 2 distnet bench train fashion-cnn --steps 30 --json
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import comm
from .. import config as C
from ..errors import UserError
from ..train.profile import PHASES
from .allreduce import median_time
from ..blas import set_blas_threads

# Launcher variables a child must not inherit: with them it could try to join this MPI job.
_LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "MPIR_", "OMPI_", "MPI_LOCAL")


def add_arguments(p):
    p.add_argument("config", nargs="?", default="fashion-mlp", metavar="CONFIG_OR_PRESET",
                   help=f"a TOML config or a preset (default fashion-mlp): {', '.join(C.preset_names())}")
    p.add_argument("--data", metavar="DIR", help="prepared dataset folder (default: as distnet train: "
                   "data.path, else data/NAME)")
    p.add_argument("--steps", type=int, default=50, help="measured steps (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="steps run first and not measured (default 10)")
    p.add_argument("--batch-size", type=int, help="the GLOBAL batch over all ranks (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key, as in distnet train")
    p.add_argument("--reps", type=int, default=30, help="repetitions of the flat allreduce (median; default 30)")
    p.add_argument("--no-baseline", action="store_true", help="skip the 1-rank runs (no efficiency figures)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def load_config(args):
    """The config as ``distnet train`` resolves it, then the bench's overrides: a short, quiet run."""
    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps must be >= 1 and --warmup >= 0")
    total = args.warmup + args.steps
    sets = list(args.set)
    if args.batch_size is not None:
        sets.append(f"train.batch_size={args.batch_size}")
    cfg = C.load(args.config, sets=sets)
    bench = {"max_steps": total, "eval_every": 0, "patience": 0, "log_every": math.gcd(args.warmup, args.steps),
             "epochs": max(cfg["train"]["epochs"], total)}  # max_steps, not epochs, ends the run
    cfg["train"].update(bench)
    cfg["checkpoint"].update(dir="", every=0)
    return cfg


def measured(metrics_path, warmup, global_batch):
    """Per-phase mean ms and samples/s over the metric windows after the warm-up."""
    steps, seconds, phase_ms, dirty, prev, kept = 0, 0.0, dict.fromkeys(PHASES, 0.0), False, 0, []
    for line in Path(metrics_path).read_text().splitlines():
        rec = json.loads(line)
        if rec["event"] == "eval":
            dirty = True  # the next window holds the evaluation's time
        if rec["event"] != "train":
            continue
        n, prev = rec["step"] - prev, rec["step"]
        if rec["step"] - n >= warmup and not dirty and n > 0:
            steps += n
            kept.append((rec["step"] - n, rec["step"]))
            seconds += n * global_batch / float(rec["samples_per_s"])
            for ph in PHASES:
                phase_ms[ph] += n * float(rec[f"ms_{ph}"])
        dirty = False
    if not steps:
        raise RuntimeError(f"no measured steps in {metrics_path}: every window was warm-up or held an evaluation")
    phases = {ph: v / steps for ph, v in phase_ms.items()}
    return {"steps_measured": steps, "phases_ms": phases, "step_ms": sum(phases.values()),
            "wall_ms_per_step": 1e3 * seconds / steps, "samples_per_s": steps * global_batch / seconds,
            "measured_steps": kept}


def per_rank(trace_path, kept):
    """From the step timer's trace (every rank's phases): each rank's mean ms per phase over the measured
    steps, and the comm wait of the rank that arrived last at it (min over ranks, per step): the wait that
    waiting for other ranks cannot explain."""
    events = json.loads(Path(trace_path).read_text())["traceEvents"]
    wanted = {s for a, b in kept for s in range(a, b)}
    ranks = sorted({e["pid"] for e in events if e.get("ph") == "X"})
    sums = {r: dict.fromkeys(PHASES, 0.0) for r in ranks}
    comm = {}  # step -> rank -> ms
    for e in events:
        if e.get("ph") != "X" or e["args"]["step"] not in wanted:
            continue
        sums[e["pid"]][e["name"]] += e["dur"] / 1e3
        if e["name"] == "comm":
            comm.setdefault(e["args"]["step"], {})[e["pid"]] = e["dur"] / 1e3
    n = max(len(wanted), 1)
    full = [c for c in comm.values() if len(c) == len(ranks)]
    return {"per_rank_phases_ms": [{ph: v / n for ph, v in sums[r].items()} for r in ranks],
            "comm_last_arrival_ms": sum(min(c.values()) for c in full) / len(full) if full else None}


def sleeping_barrier(w, poll_s=0.005):
    """A barrier that sleeps between polls: MPICH's blocking Barrier spins a core, which the baseline needs."""
    if w.size == 1:
        return
    req = w.iallreduce(np.zeros(1))
    while not w.testall([req]):
        time.sleep(poll_s)


def baseline(args, global_batch):
    """samples/s and phases of a 1-rank run at ``global_batch``, in a child process outside this MPI job."""
    cmd = [sys.executable, "-m", "distnet", "bench", "train", args.config, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch-size", str(global_batch), "--no-baseline", "--json"]
    if args.data:
        cmd += ["--data", args.data]
    for item in args.set:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
    env.update(DISTNET_NO_MPI="1", PYTHONUNBUFFERED="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the 1-rank baseline at global batch {global_batch} failed (exit {res.returncode}): "
                           f"{tail}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    return {"global_batch": global_batch, "samples_per_s": r["samples_per_s"], "phases_ms": r["phases_ms"],
            "step_ms": r["step_ms"], "steps_measured": r["steps_measured"]}


def run(args):
    from ..train.loop import Stop, run_on_every_rank, setup, train

    w = comm.world()
    threads = set_blas_threads(1)
    try:
        cfg = load_config(args)  # every rank parses the same file: all fail alike
    except UserError as e:
        if w.rank == 0:
            print(f"distnet: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    B, p = cfg["train"]["batch_size"], w.size
    tmp = w.bcast(tempfile.mkdtemp(prefix="distnet-bench-") if w.rank == 0 else None)
    metrics_path, trace_path = os.path.join(tmp, "metrics.jsonl"), os.path.join(tmp, "trace.json")
    # every rank names the trace (writing it is a collective); only rank 0 writes either file
    opts = dict(data=args.data, metrics=metrics_path, trace=trace_path, quiet=True, profile=True)
    out = {}

    def body():
        train(cfg, opts)  # validates data and config exactly as distnet train does (one-line error, exit 2)
        if w.rank == 0:
            out["result"] = measured(metrics_path, args.warmup, B)
            out["result"].update(per_rank(trace_path, out["result"].pop("measured_steps")))
        # -- 1-rank baselines, run by rank 0 while the others sleep ---------------------------------------
        base_err = None
        if p > 1 and not args.no_baseline:
            if w.rank == 0:
                try:
                    out["base"] = {"strong": baseline(args, B), "weak": baseline(args, B // p)}
                except Exception as e:  # noqa: BLE001 - every rank must hear of it
                    base_err = str(e)
            sleeping_barrier(w)
            base_err = w.bcast(base_err)
            if base_err:
                raise Stop(base_err, 1)
        # -- one plain allreduce of the whole gradient buffer -----------------------------------------------
        _, model, _, _ = setup(cfg, opts, w)
        out["grads"] = model.grads_flat
        out["flat_s"] = median_time(w, lambda: comm.flat_allreduce(w, out["grads"]), args.reps) if p > 1 else None

    try:
        code = run_on_every_rank(w, body)
    finally:
        if w.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    if code or w.rank != 0:
        return code
    result, base, grads, flat_s = out["result"], out.get("base"), out["grads"], out["flat_s"]
    comm_ms = result["phases_ms"]["comm"]
    result.update(config=args.config, ranks=p, global_batch=B, per_rank_batch=B // p, warmup=args.warmup,
                  steps=args.steps, blas_threads=threads, timer_rank=0, params=int(grads.size),
                  grad_bytes=int(grads.nbytes), flat_allreduce_ms=None if flat_s is None else 1e3 * flat_s)
    result["comm_vs_flat_allreduce"] = comm_ms / result["flat_allreduce_ms"] if flat_s else None
    last = result["comm_last_arrival_ms"]
    # the floor judges communication, not skew: the wait of the last rank to arrive
    result["comm_floor_ok"] = last <= 0.5 * result["flat_allreduce_ms"] if flat_s and last is not None else None
    result["comm_last_arrival_vs_flat_allreduce"] = last / result["flat_allreduce_ms"] if flat_s and last else None
    if p == 1 and not args.no_baseline:
        base = {k: {"global_batch": B, "samples_per_s": result["samples_per_s"], "phases_ms": result["phases_ms"],
                    "step_ms": result["step_ms"], "steps_measured": result["steps_measured"]}
                for k in ("strong", "weak")}
    result["baseline"] = base
    for kind in ("strong", "weak"):
        result[f"efficiency_{kind}"] = (result["samples_per_s"] / (p * base[kind]["samples_per_s"])
                                        if base else None)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


def print_table(r):
    p, B = r["ranks"], r["global_batch"]
    print(f"distnet bench train {r['config']}: {p} rank(s), global batch {B} ({r['per_rank_batch']} per rank), "
          f"{r['params']:,} params, {r['steps_measured']} steps measured after {r['warmup']} warm-up, "
          f"{r['blas_threads'] if r['blas_threads'] is not None else '?'} BLAS thread(s) per rank")
    print("mean step time by phase (rank 0's timer), ms:")
    names = {"data": "data wait", "forward": "forward (+loss)", "backward": "backward",
             "comm": "comm wait (exposed)", "optimizer": "optimizer"}
    for ph in PHASES:
        v = r["phases_ms"][ph]
        print(f"  {names[ph]:<20} {v:>9.3f}  {100 * v / r['step_ms']:>5.1f}%")
    print(f"  {'sum of phases':<20} {r['step_ms']:>9.3f}   (wall per step {r['wall_ms_per_step']:.3f})")
    print(f"samples/s: {r['samples_per_s']:,.0f}")
    if r["flat_allreduce_ms"] is not None:
        print(f"one blocking allreduce of the whole gradient buffer ({r['grad_bytes'] / 2**20:.2f} MiB): "
              f"{r['flat_allreduce_ms']:.3f} ms; rank 0's comm wait {r['phases_ms']['comm']:.3f} ms = "
              f"{r['comm_vs_flat_allreduce']:.2f} x")
    if p > 1:
        print("every rank's mean ms per phase (from the timer's trace):")
        print("  rank " + "".join(f"{ph:>10}" for ph in PHASES))
        for i, q in enumerate(r["per_rank_phases_ms"]):
            print(f"  {i:>4} " + "".join(f"{q[ph]:>10.3f}" for ph in PHASES))
        if r["comm_last_arrival_ms"] is not None:
            verdict = "OK" if r["comm_floor_ok"] else "ABOVE the floor"
            print(f"comm wait of the last rank to arrive (min over ranks, mean over steps): "
                  f"{r['comm_last_arrival_ms']:.3f} ms = {r['comm_last_arrival_vs_flat_allreduce']:.2f} x the flat "
                  f"allreduce (floor <= 0.5 x: {verdict}; the rest of rank 0's wait is waiting for slower ranks)")
    base = r["baseline"]
    if base is None:
        print("no 1-rank baseline (--no-baseline): no efficiency figures")
    elif p == 1:
        print("1 rank: this run is its own baseline (efficiency 1)")
    else:
        s, wk = base["strong"], base["weak"]
        print("scaling efficiency against 1 rank (1-rank runs in a subprocess while the other ranks slept):")
        print(f"  strong (same global batch {s['global_batch']}):      1 rank {s['samples_per_s']:>9,.0f} samples/s "
              f"-> {100 * r['efficiency_strong']:.0f}%  (= {r['samples_per_s']:,.0f} / ({p} x "
              f"{s['samples_per_s']:,.0f}))")
        print(f"  weak (same per-rank batch {wk['global_batch']}):      1 rank {wk['samples_per_s']:>9,.0f} samples/s "
              f"-> {100 * r['efficiency_weak']:.0f}%  (= {r['samples_per_s']:,.0f} / ({p} x "
              f"{wk['samples_per_s']:,.0f}))")
