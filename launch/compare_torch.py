#!/usr/bin/env python3
"""Training throughput of distnet beside PyTorch on the same models, data, batch, ranks and threads.

    python launch/compare_torch.py [--models mlp,cnn] [--ranks 2] [--batch 128] [--json]

Needs PyTorch (pip install -e '.[torch]'); exits 2 with one line without it. Each model is a distnet preset
(fashion-mlp, fashion-cnn); the PyTorch model is built from the preset's layer list and must have the same
parameter count. Every process runs 1 thread (OPENBLAS/OMP/MKL_NUM_THREADS=1; torch.set_num_threads(1)).
Three settings per model, each run by both frameworks in fresh processes:
  1 process, the per-rank batch B/P  distnet in one process (no mpiexec) | torch eager (no DDP)
  1 process, the global batch B      distnet in one process              | torch eager
  P ranks, global batch B            mpiexec -n P distnet train          | torch DDP, gloo on 127.0.0.1
Throughput = samples/s of optimizer steps after WARMUP steps, over STEPS steps, REPEATS times in the same
processes; the table gives the median (and the spread, (max-min)/median). Data paths as each framework
would use them: distnet its own reader (background prefetch thread); torch a pre-loaded float32 tensor
standardized like distnet's reader ((x/255 - mean)/std), indexed per batch in a shuffled order, each DDP
rank taking its contiguous B/P part of every global batch. distnet's rate comes from its metrics lines
(windows that hold start-up or an epoch-end evaluation are left out); evaluation is off otherwise.
"""

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MODELS = {"mlp": ("fashion-mlp", 30, 200), "cnn": ("fashion-cnn", 10, 40)}  # preset, warm-up, timed steps


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn (default: both)")
    ap.add_argument("--data", default="data/fashion-mnist", help="prepared Fashion-MNIST folder")
    ap.add_argument("--ranks", type=int, default=2, help="P: ranks (processes) for distnet and DDP")
    ap.add_argument("--batch", type=int, default=128, help="B: the global batch")
    ap.add_argument("--repeats", type=int, default=3, help="timed segments per run (median reported)")
    for name, (_, warm, steps) in MODELS.items():
        ap.add_argument(f"--{name}-warmup", type=int, default=warm, help=f"{name} warm-up steps ({warm})")
        ap.add_argument(f"--{name}-steps", type=int, default=steps, help=f"{name} timed steps ({steps})")
    ap.add_argument("--seed", type=int, default=0, help="both frameworks' seed (init, order)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        ap.error(f"--models: unknown {bad}; choose from {', '.join(MODELS)}")
    if args.ranks < 1 or args.batch < 1 or args.batch % args.ranks or args.repeats < 1:
        ap.error("--ranks, --batch, --repeats must be positive and --batch divisible by --ranks")
    if any(getattr(args, f"{m}_warmup") < 1 or getattr(args, f"{m}_steps") < 1 for m in MODELS):
        ap.error("warm-up and timed steps must be at least 1 (the first steps include start-up)")
    return args


# -- distnet ------------------------------------------------------------------------------------------

def mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def distnet_rates(preset, data, procs, batch, warmup, steps, repeats, workdir, seed=0):
    """samples/s of each timed segment of one `distnet train` run with PROCS processes."""
    log_every = math.gcd(warmup, steps)  # metric windows then tile the warm-up and every segment
    metrics = Path(workdir) / f"distnet-{preset}-{procs}x{batch}.jsonl"
    cmd = [sys.executable, "-m", "distnet", "train", preset, "--data", str(data), "--batch-size", str(batch),
           "--seed", str(seed), "--set", f"train.max_steps={warmup + steps * repeats}",
           "--set", "train.eval_every=0", "--set", f"train.log_every={log_every}", "--metrics", str(metrics),
           "--quiet"]
    if procs > 1:
        if not mpiexec():
            sys.exit("compare_torch: no mpiexec found: pip install -e '.[mpich]'")
        cmd = [mpiexec(), "-n", str(procs), *cmd]
    r = subprocess.run(cmd, env=dict(os.environ, **THREAD_ENV), capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"compare_torch: distnet failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rates = segment_rates(records, batch, warmup, steps)
    if len(rates) != repeats:
        sys.exit(f"compare_torch: distnet ran {records[-1]['step']} steps, not {warmup + steps * repeats}: "
                 f"fewer steps or repeats (the preset's train.epochs limits them)")
    return rates


def segment_rates(records, batch, warmup, steps):
    """samples/s per timed segment of STEPS steps after WARMUP, from distnet's metric windows that count
    (distnet.metrics.train_windows: no start-up, no epoch end)."""
    from distnet.metrics import train_windows

    seconds, counted = {}, {}
    for start, n, secs in train_windows(records, warmup, batch):
        seg = (start - warmup) // steps
        seconds[seg] = seconds.get(seg, 0.0) + secs
        counted[seg] = counted.get(seg, 0) + n
    return [counted[s] * batch / seconds[s] for s in sorted(seconds)]


# -- PyTorch ------------------------------------------------------------------------------------------

def torch_model(layer_specs, input_shape):
    """The torch.nn.Sequential of a distnet layer list (the types the Fashion presets use)."""
    import torch
    from torch import nn

    mods, shape = [], (1, *input_shape)
    for spec in layer_specs:
        kind, c = spec["type"], shape[1] if len(shape) > 1 else None
        if kind == "dense":
            mods.append(nn.Linear(math.prod(shape[1:]), spec["out_features"]))
        elif kind == "conv2d":
            k, pad = spec["kernel_size"], spec.get("padding", 0)
            pad = {"same": k // 2, "valid": 0}.get(pad, pad)
            mods.append(nn.Conv2d(c, spec["out_channels"], k, stride=spec.get("stride", 1), padding=pad))
        elif kind == "maxpool2d":
            mods.append(nn.MaxPool2d(spec["kernel_size"], spec.get("stride")))
        elif kind == "dropout":
            mods.append(nn.Dropout(spec.get("p", 0.5)))
        elif kind == "batchnorm":  # distnet's defaults: momentum 0.1, eps 1e-5, as PyTorch's
            norm = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
            mods.append(norm(c, eps=spec.get("eps", 1e-5), momentum=spec.get("momentum", 0.1)))
        elif kind in ("relu", "flatten"):
            mods.append(nn.ReLU() if kind == "relu" else nn.Flatten())
        else:
            raise ValueError(f"compare_torch: no PyTorch equivalent for layer type {kind!r}")
        with torch.no_grad():
            shape = tuple(mods[-1](torch.zeros(shape)).shape)
    return nn.Sequential(*mods)


def load_train(data, split="train"):
    """The whole train split (or SPLIT) as standardized float32 NCHW and int64 labels (numpy), as distnet reads it."""
    import h5py
    import numpy as np

    xs, ys = [], []
    for path in sorted((Path(data) / split).glob("*.h5")):
        with h5py.File(path, "r") as f:
            x = f["x"][...]
            xs.append(x.reshape(len(x), 1, *x.shape[1:]) if x.ndim == 3 else x)
            ys.append(f["y"][...].astype(np.int64))
            scale, mean, std = f.attrs["pixel_scale"], f.attrs["mean"], f.attrs["std"]
    x = np.concatenate(xs).astype(np.float32)
    x /= np.float32(round(1 / scale))
    x -= np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    x *= (1 / np.asarray(std, np.float64)).astype(np.float32).reshape(1, -1, 1, 1)
    return x, np.concatenate(ys)


def torch_worker(rank, world, job, out_path):
    """One torch process: eager when WORLD is 1, else a DDP rank. Rank 0 writes its rates as JSON."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    x_np, y_np = load_train(job["data"])
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    torch.manual_seed(job["seed"])
    model = torch_model(job["layers"], x.shape[1:])
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{job['port']}", rank=rank,
                                world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=job["lr"])
    batch, per = job["batch"], job["batch"] // world

    def batches():
        for epoch in range(10 ** 9):  # same order on every rank; rank r takes its contiguous part
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(job["seed"] * 7919 + epoch))
            for t in range(len(y) // batch):
                idx = order[t * batch + rank * per: t * batch + (rank + 1) * per]
                yield x[idx], y[idx]

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.item()

    it = batches()
    for _ in range(job["warmup"]):
        step(*next(it))
    rates = []
    for _ in range(job["repeats"]):
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        for _ in range(job["steps"]):
            step(*next(it))
        if world > 1:
            dist.barrier()
        rates.append(job["steps"] * batch / (time.perf_counter() - t0))
    if rank == 0:
        Path(out_path).write_text(json.dumps(rates))
    if world > 1:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torch_rates(job, procs, workdir):
    import torch.multiprocessing as mp

    out = Path(workdir) / f"torch-{procs}x{job['batch']}.json"
    mp.spawn(torch_worker, args=(procs, dict(job, port=free_port()), str(out)), nprocs=procs, join=True)
    return json.loads(out.read_text())


# -- the comparison -----------------------------------------------------------------------------------

def summarize(rates):
    med = statistics.median(rates)
    return {"median": med, "spread": (max(rates) - min(rates)) / med, "repeats": rates}


def compare(args, workdir):
    from distnet import build
    from distnet import config as C

    rows, P, B = [], args.ranks, args.batch
    settings = [(1, B // P), (1, B), (P, B)] if P > 1 else [(1, B)]
    for name in args.models:
        preset = MODELS[name][0]
        warmup, steps = getattr(args, f"{name}_warmup"), getattr(args, f"{name}_steps")
        cfg = C.load(preset)
        layers, lr = cfg["model"]["layers"], cfg["optimizer"]["lr"]
        ours = build.model(cfg, (1, 28, 28)).num_params
        theirs = sum(p.numel() for p in torch_model(layers, (1, 28, 28)).parameters())
        if ours != theirs:
            sys.exit(f"compare_torch: {preset}: distnet has {ours} parameters, the torch model {theirs}")
        for procs, batch in settings:
            d = distnet_rates(preset, args.data, procs, batch, warmup, steps, args.repeats, workdir, args.seed)
            job = dict(data=str(args.data), layers=layers, lr=lr, batch=batch, seed=args.seed, warmup=warmup,
                       steps=steps, repeats=args.repeats)
            t = torch_rates(job, procs, workdir)
            d, t = summarize(d), summarize(t)
            setting = (f"{procs} ranks x 1 thread, global batch {B} ({batch // procs}/rank)" if procs > 1 else
                       f"1 process x 1 thread, batch {batch} (= {'global' if batch == B else 'per-rank'})")
            rows.append(dict(model=name, preset=preset, setting=setting, procs=procs, batch=batch,
                             per_process_batch=batch // procs, torch_mode="DDP gloo" if procs > 1 else "eager",
                             params=ours, warmup=warmup, steps=steps, distnet=d, torch=t,
                             ratio=d["median"] / t["median"]))
            print(f"compare_torch: {name}, {setting}: distnet {d['median']:.0f}, torch {t['median']:.0f} "
                  "samples/s", file=sys.stderr, flush=True)
    return rows


def print_table(rows, args):
    head = ("model", "setting", "distnet samples/s", "torch mode", "torch samples/s", "distnet/torch")
    body = [(r["model"], r["setting"], f"{r['distnet']['median']:,.0f} ±{r['distnet']['spread']:.0%}",
             r["torch_mode"], f"{r['torch']['median']:,.0f} ±{r['torch']['spread']:.0%}", f"{r['ratio']:.2f}")
            for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    for line in [head, tuple("-" * w for w in widths), *body]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    print(f"median of {args.repeats} timed segment(s) after warm-up; ± = (max-min)/median; 1 thread per process;"
          f" {os.cpu_count()} CPU(s) on this machine")


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("compare_torch: PyTorch is not installed: pip install -e '.[torch]'", file=sys.stderr)
        return 2
    if not (Path(args.data) / "train").is_dir():
        print(f"compare_torch: no prepared data at {args.data}: distnet data prepare fashion-mnist --out "
              f"{args.data}", file=sys.stderr)
        return 2
    os.environ.update(THREAD_ENV)  # the spawned torch processes inherit it
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="compare_torch-") as workdir:
        rows = compare(args, workdir)
    if args.json:
        meta = dict(ranks=args.ranks, global_batch=args.batch, repeats=args.repeats, threads_per_process=1,
                    cpus=os.cpu_count(), torch=torch.__version__, data=str(args.data))
        print(json.dumps({"settings": meta, "rows": rows}, indent=1))
    else:
        print_table(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
