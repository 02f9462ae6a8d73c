"""``distnet bench allreduce``: MPI allreduce time and bus bandwidth by message size, and distnet's own
bucketed, overlapped gradient synchronization of a model next to one plain allreduce of its gradients.

Run it under the launcher you train with:  mpiexec -n 2 distnet bench allreduce --model fashion-mlp
Bus bandwidth is 2(p-1)/p * bytes / time, the figure that is comparable across rank counts (NCCL's).
"""

import json
import time

import numpy as np

from .. import blas, comm


def add_arguments(p):
    p.add_argument("--min-bytes", type=int, default=1 << 10)
    p.add_argument("--max-bytes", type=int, default=16 << 20)
    p.add_argument("--reps", type=int, default=30, help="timed repetitions per size (median reported)")
    p.add_argument("--model", action="append", default=None, metavar="PRESET_OR_CONFIG",
                   help="also time gradient sync for this model (repeatable; default fashion-mlp, fashion-cnn)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch for the model's backward pass")
    p.add_argument("--bucket-mb", type=float, default=None, help="bucket size (default: the config's)")
    p.add_argument("--json", action="store_true")


def median_time(w, fn, reps, warmup=3):
    """Median over ranks-synchronized repetitions of the slowest rank's time for ``fn``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        w.barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    mine = float(np.median(times))
    return max(w.allgather(mine))


def sizes(lo, hi):
    s = lo
    while s <= hi:
        yield s
        s *= 4


def model_sync(w, name, global_batch, bucket_mb, reps):
    """Backward alone, backward + overlapped bucket sync (exposed wait), and one flat allreduce."""
    from .. import build
    from .. import config as C
    from ..data import catalog
    from ..training.profile import last_arrival

    cfg = C.load(name)
    shape = tuple(catalog.get(cfg["data"]["dataset"])["input_shape"])
    model = build.model(cfg, shape)
    model.skip_input_grad()
    loss = build.loss(cfg)
    n = max(global_batch // w.size, 1)
    rng = np.random.default_rng(w.rank)
    x = rng.standard_normal((n, *shape)).astype(model.dtype)
    y = rng.integers(0, model.output_shape[0], n)
    loss.forward(model.forward(x), y)
    dy = loss.backward()
    bucket = bucket_mb if bucket_mb is not None else cfg["comm"]["bucket_mb"]
    sync = comm.sync.Bucketed(w, model, bucket_bytes=int(bucket * 2 ** 20),
                              split_bytes=int(cfg["comm"]["split_mb"] * 2 ** 20))
    waits = []

    def synced():
        sync.begin()
        model.backward(dy, sync=sync)
        waits.append(sync.finish())

    t_bwd = median_time(w, lambda: model.backward(dy), reps)
    t_sync = median_time(w, synced, reps)
    exposed = float(np.median(last_arrival(w.allgather(waits[-reps:]))))
    t_flat = median_time(w, lambda: w.allreduce(model.grads_flat), reps)
    return {"model": name, "params": model.num_params, "bytes": model.grads_flat.nbytes, "buckets": len(sync.buckets),
            "backward_ms": t_bwd * 1e3, "backward_plus_sync_ms": t_sync * 1e3, "exposed_wait_ms": exposed * 1e3,
            "flat_allreduce_ms": t_flat * 1e3, "exposed_vs_flat": exposed / t_flat if t_flat else None}


def run(args):
    w = comm.world()
    blas.configure(w)  # ranks sharing a machine must not each run a BLAS thread per core
    p = w.size
    rows = []
    for nbytes in sizes(args.min_bytes, args.max_bytes):
        buf = np.ones(nbytes // 4, np.float32)
        t = median_time(w, lambda buf=buf: w.allreduce(buf), args.reps)
        rows.append({"bytes": nbytes, "time_us": t * 1e6,
                     "busbw_GBps": (2 * (p - 1) / p * nbytes / t / 1e9) if p > 1 and t > 0 else None})
    models = [model_sync(w, m, args.batch_size, args.bucket_mb, args.reps)
              for m in (args.model or ["fashion-mlp", "fashion-cnn"])]
    if w.rank != 0:
        return 0
    if args.json:
        print(json.dumps({"ranks": p, "allreduce": rows, "models": models}))
        return 0
    print(f"MPI allreduce (in place, float32, SUM), {p} rank(s), median of {args.reps}")
    print(f"{'bytes':>12} {'time us':>10} {'busbw GB/s':>11}")
    for r in rows:
        bw = f"{r['busbw_GBps']:.2f}" if r["busbw_GBps"] is not None else "-"
        print(f"{r['bytes']:>12,} {r['time_us']:>10.1f} {bw:>11}")
    print()
    print(f"gradient synchronization per step (global batch {args.batch_size}), ms")
    print(f"{'model':<14} {'grad MB':>8} {'buckets':>7} {'backward':>9} {'bwd+sync':>9} {'exposed wait':>12} "
          f"{'flat allreduce':>14}")
    for m in models:
        print(f"{m['model']:<14} {m['bytes'] / 2**20:>8.2f} {m['buckets']:>7} {m['backward_ms']:>9.3f} "
              f"{m['backward_plus_sync_ms']:>9.3f} {m['exposed_wait_ms']:>12.3f} {m['flat_allreduce_ms']:>14.3f}")
    return 0
