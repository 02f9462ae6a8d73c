"""``distnet bench train``: a short training run on the real data, measured.

It runs the real training loop (``distnet.training.loop.train``, with its step timer) for ``--warmup`` +
``--steps`` steps, no evaluation and no checkpoints, and reports from the steps after the warm-up (leaving
out the first step of an epoch, which holds the reader's start), from the per-step timings ``train``
returns:

- the mean step split into data wait, forward, backward, exposed communication wait and optimizer (rank
  0's timer: rank 0's comm wait also absorbs any lateness of the other ranks); every rank's phases, and the
  comm wait of the rank that arrived last at it (min over ranks per step), which waiting for other ranks
  cannot explain;
- samples/s (the measured steps' global samples over their time);
- beside the exposed comm wait, one plain blocking MPI_Allreduce of the whole gradient buffer (the
  project floor: exposed wait per step <= half of that allreduce);
- scaling efficiency against one rank: after the P-rank run, rank 0 runs the 1-rank baseline as a
  subprocess of itself (``DISTNET_NO_MPI=1``, so it does not touch this MPI job) while the other ranks
  wait in a sleeping barrier, so the baseline has a quiet core. Two baselines, both at 1 rank:
  strong scaling (same global batch B):  eff = sps(P, B) / (P x sps(1, B))
  weak scaling (same per-rank batch B/P): eff = sps(P, B) / (P x sps(1, B/P))

    mpiexec -n 2 distnet bench train fashion-mlp
    mpiexec -n 2 distnet bench train fashion-cnn --steps 30 --json
"""

import json
import os
import subprocess
import sys
import time

import numpy as np

from .. import comm
from .. import config as C
from ..blas import set_blas_threads
from ..errors import UserError
from ..training.loop import train
from ..training.profile import PHASES, last_arrival
from .allreduce import median_time

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


def check_args(args):
    """Every check of the command line before any work: the counts, then the config (``load_config``)."""
    for flag, value, low in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0), ("--reps", args.reps, 1)):
        if value < low:
            raise UserError(f"{flag} {value}: give at least {low}")
    cfg = load_config(args)
    if cfg["train"]["batch_size"] == "auto":
        raise UserError("bench train measures a fixed global batch: pass --batch-size B")
    return cfg


def load_config(args):
    """The config as ``distnet train`` resolves it, then the bench's overrides: a short, quiet, profiled run
    that writes no files; validated once, with them."""
    total = args.warmup + args.steps
    flags = [(f"--data {args.data}", {"data": {"path": args.data}})] if args.data else []
    if args.batch_size is not None:
        flags.append((f"--batch-size {args.batch_size}", {"train": {"batch_size": args.batch_size}}))
    cfg = C.resolve(args.config, args.set, flags)
    C.merge(cfg, {"train": dict(max_steps=total, eval_every=0, patience=0, log_every=total,
                                epochs=max(cfg["train"]["epochs"], total)),  # max_steps, not epochs, ends the run
                  "checkpoint": dict(dir="", every=0, resume=False),
                  "log": dict(metrics="", trace="", profile=True, quiet=True)}, "distnet bench train")
    return C.validate(cfg)


def measured(result, warmup):
    """Per-phase means (rank 0's, and every rank's), samples/s and the last rank's comm wait over the steps
    after WARMUP, leaving out each epoch's first step (it holds the reader's start for that epoch)."""
    t, per_epoch, B = result.timings, result.run.steps_per_epoch, result.run.batch
    keep = (t["steps"] >= warmup) & (t["steps"] % per_epoch != 0)
    if not keep.any():
        raise RuntimeError("no measured steps: every step was warm-up or an epoch's first")
    ph = t["phases"][:, keep]  # (ranks, steps, phases), seconds
    rank0 = ph[0].mean(axis=0) * 1e3
    phases = dict(zip(PHASES, map(float, rank0)))
    seconds = float(ph[0].sum())
    last = last_arrival(ph[:, :, PHASES.index("comm")])
    return {"steps_measured": int(keep.sum()), "phases_ms": phases, "step_ms": sum(phases.values()),
            "wall_ms_per_step": 1e3 * seconds / keep.sum(), "samples_per_s": keep.sum() * B / seconds,
            "per_rank_phases_ms": [dict(zip(PHASES, map(float, r.mean(axis=0) * 1e3))) for r in ph],
            "comm_last_arrival_ms": 1e3 * float(last.mean()) if ph.shape[0] > 1 else None}


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
    w = comm.world()
    threads = set_blas_threads(1)
    try:
        cfg = check_args(args)  # every rank parses the same file: all fail alike
    except UserError as e:
        if w.rank == 0:
            print(f"distnet: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    B, p = cfg["train"]["batch_size"], w.size
    out = {}

    def body():
        res = train(cfg)  # validates data and config exactly as distnet train does (one-line error, exit 2)
        out["result"] = measured(res, args.warmup)
        out["grads"] = grads = res.run.model.grads_flat
        out["sync"] = res.run.sync.name
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
                raise comm.Stop(base_err, 1)
        # -- one plain allreduce of the whole gradient buffer -----------------------------------------------
        out["flat_s"] = median_time(w, lambda: w.allreduce(grads), args.reps) if p > 1 else None

    code = comm.run_on_every_rank(w, body)
    if code or w.rank != 0:
        return code
    result, base, grads, flat_s = out["result"], out.get("base"), out["grads"], out["flat_s"]
    comm_ms = result["phases_ms"]["comm"]
    result.update(config=args.config, ranks=p, global_batch=B, per_rank_batch=B // p, warmup=args.warmup,
                  steps=args.steps, blas_threads=threads, timer_rank=0, params=int(grads.size),
                  grad_bytes=int(grads.nbytes), flat_allreduce_ms=None if flat_s is None else 1e3 * flat_s,
                  sync=out["sync"])
    result["comm_vs_flat_allreduce"] = comm_ms / result["flat_allreduce_ms"] if flat_s else None
    last = result["comm_last_arrival_ms"]
    # the floor judges communication, not skew: the wait of the last rank to arrive (not for shm, which sends
    # no gradient: its wait is a barrier and the sum of this rank's shard)
    judged = flat_s and last is not None and out["sync"] != "shm"
    result["comm_floor_ok"] = last <= 0.5 * result["flat_allreduce_ms"] if judged else None
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
            verdict = ("no floor: comm.sync shm sends no gradient, its wait is a barrier and summing this rank's "
                       "shard" if r["comm_floor_ok"] is None else
                       "floor <= 0.5 x: " + ("OK" if r["comm_floor_ok"] else "ABOVE the floor"))
            print(f"comm wait of the last rank to arrive (min over ranks, mean over steps): "
                  f"{r['comm_last_arrival_ms']:.3f} ms = {r['comm_last_arrival_vs_flat_allreduce']:.2f} x the flat "
                  f"allreduce ({verdict}; the rest of rank 0's wait is waiting for slower ranks)")
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
