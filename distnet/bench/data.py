"""``distnet bench data``: reader throughput (in-memory and streaming) and the streaming mode's peak memory.

A shapes-like uint8 dataset (N x 1 x 28 x 28, images drawn from a pool of generated shapes, so it compresses
like real data) is written to a temporary folder twice: contiguous (memory-mappable) and gzip-chunked. Each
timed pass reads shuffled global batches through ``BatchReader.epoch`` (prefetch 2, standardized float32) for
about ``--seconds``; the figure is the median samples/s over ``--repeats`` passes. Peak memory of streaming
is measured in a fresh child process per storage kind: tracemalloc's peak of Python allocations and the growth
of the resident-set high-water mark (VmHWM) over the process's size before reading, against ``--budget-mb``.

    distnet bench data                          # 200,000 samples (150 MiB), budget 32 MiB
    distnet bench data --samples 50000 --json
"""

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..data import BatchReader, Sampler, open_dataset
from ..data.synthetic import shapes
from ..data.writer import write_dataset

POOL = 4096


def add_arguments(parser):
    parser.add_argument("--samples", type=int, default=200_000, help="training samples (default 200,000)")
    parser.add_argument("--batch", type=int, default=256, help="global batch (default 256)")
    parser.add_argument("--budget-mb", type=float, default=32, help="streaming memory budget (default 32)")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one timed pass (default 1.5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per mode (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def make_data(folder, n):
    """Contiguous and compressed copies of an N-sample shapes-like set under FOLDER."""
    rng = np.random.default_rng(0)
    pool_x, pool_y = shapes(rng, POOL)
    pick = rng.integers(0, POOL, n)
    splits = {"train": (pool_x[pick], pool_y[pick]), "test": (pool_x[:100], pool_y[:100])}
    names = [f"blob-{k}" for k in range(10)]
    return {kind: write_dataset(folder / kind, "bench", names, splits, {}, compress=kind == "gzip")
            for kind in ("contiguous", "gzip")}


def timed_pass(reader, sampler, epoch, seconds):
    """Samples per second reading batches of EPOCH for about SECONDS."""
    it = reader.epoch(sampler, epoch)
    count, start = 0, time.perf_counter()
    try:
        for x, _ in it:
            count += len(x)
            if time.perf_counter() - start >= seconds:
                break
    finally:
        it.close()
    return count / (time.perf_counter() - start)


def throughput(path, mode, args):
    """Median samples/s of MODE over the repeats, and every repeat's figure."""
    split = open_dataset(path)["train"]
    sampler = Sampler(len(split), args.batch, seed=0)
    budget = int(args.budget_mb * 2**20)
    with BatchReader(split, mode=mode, memory_budget_bytes=budget) as reader:
        timed_pass(reader, sampler, 99, min(0.3, args.seconds))  # warm-up: page cache, file handles
        runs = [timed_pass(reader, sampler, e, args.seconds) for e in range(args.repeats)]
    return statistics.median(runs), runs


def vm_kib(field):
    """A /proc/self/status memory field in KiB (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure_stream(path, batch, budget, seconds):
    """In this (fresh) process: memory used by one streaming pass, as a dict."""
    import tracemalloc

    split = open_dataset(path)["train"]
    before = vm_kib("VmRSS")
    tracemalloc.start()
    with BatchReader(split, mode="stream", memory_budget_bytes=budget) as reader:
        rate = timed_pass(reader, Sampler(len(split), batch, seed=1), 0, seconds)
    peak = tracemalloc.get_traced_memory()[1]
    return {"tracemalloc_peak_bytes": peak, "rss_before_kib": before, "rss_hwm_kib": vm_kib("VmHWM"),
            "rss_growth_bytes": (vm_kib("VmHWM") - before) * 1024, "samples_per_s": rate}


def peak_memory(path, args):
    """Run measure_stream in a child process (so the high-water mark is its own)."""
    code = ("import json, sys; from distnet.bench.data import measure_stream; "
            f"print(json.dumps(measure_stream({str(path)!r}, {args.batch}, {int(args.budget_mb * 2**20)}, "
            f"{args.seconds})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def run(args):
    with tempfile.TemporaryDirectory(prefix="distnet-bench-data-") as tmp:
        paths = make_data(Path(tmp), args.samples)
        nbytes = open_dataset(paths["contiguous"])["train"].nbytes
        rows = []
        for mode, kind in (("memory", "contiguous"), ("stream", "contiguous"), ("memory", "gzip"),
                           ("stream", "gzip")):
            median, runs = throughput(paths[kind], mode, args)
            rows.append({"mode": mode, "storage": kind, "samples_per_s": median, "repeats": runs})
        memory = [dict(storage=kind, **peak_memory(paths[kind], args)) for kind in ("contiguous", "gzip")]
    result = {"samples": args.samples, "dataset_bytes": nbytes, "batch": args.batch,
              "budget_bytes": int(args.budget_mb * 2**20), "throughput": rows, "stream_memory": memory}
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def render(r):
    """The result as a table."""
    mib = 2**20
    lines = [f"dataset: {r['samples']} samples x 1x28x28 uint8 = {r['dataset_bytes'] / mib:.0f} MiB; "
             f"global batch {r['batch']}; streaming budget {r['budget_bytes'] / mib:.0f} MiB",
             f"{'mode':<8} {'storage':<11} {'samples/s (median)':>19}  repeats"]
    for row in r["throughput"]:
        reps = ", ".join(f"{v:,.0f}" for v in row["repeats"])
        lines.append(f"{row['mode']:<8} {row['storage']:<11} {row['samples_per_s']:>19,.0f}  {reps}")
    lines.append("streaming peak memory (fresh process, one pass):")
    for m in r["stream_memory"]:
        lines.append(f"  {m['storage']:<11} tracemalloc peak {m['tracemalloc_peak_bytes'] / mib:6.1f} MiB, "
                     f"RSS high-water growth {m['rss_growth_bytes'] / mib:6.1f} MiB "
                     f"(budget {r['budget_bytes'] / mib:.0f} MiB, data {r['dataset_bytes'] / mib:.0f} MiB)")
    return "\n".join(lines)
