"""Data larger than memory: `fashion-mlp` on 2 ranks, streaming a generated dataset several times the memory
the job may use, against the same model on a dataset of the same kind that fits the page cache (a benchmark,
not a test; as root, on Linux with the cgroup v1 memory controller).

    flock -x /tmp/distnet-cpu.lock python launch/bigdata.py --big-gb 12 --limit-gib 3 --steps 2000 --rounds 2
    flock -x /tmp/distnet-cpu.lock python launch/bigdata.py --accuracy --seeds 0,1,2 --epochs 5

Throughput (the default): generates, out of core, a "big" and a "small" prepared dataset of 28x28 uint8
images in 10 classes (Fashion-MNIST's training images tiled and perturbed: each row a random source image,
shifted by up to 2 pixels, flipped left-right half the time, plus uniform noise in -8..7; the test split is
Fashion-MNIST's own), written in row blocks through ``distnet.data.writer`` (the process never holds more
than a block of the images). Then, in rounds, interleaved (A B A B), for each ``--orders`` item: the small
set warmed in the page cache, then the big one with its pages dropped from the cache first
(``posix_fadvise(DONTNEED)`` on its files only, so other processes' caches stay), each ``mpiexec -n 2 distnet
train fashion-mlp --set data.reader="stream"`` for ``--steps`` steps inside a memory cgroup limited to
``--limit-gib`` (it counts the page cache the job reads, so at most that much of the big set is ever
cached). A reference run with the default reader (the small set copied into each rank's RAM) is added per
round. Samples/s is the steady rate between the first and last ``train`` lines of the metrics (the first
window, holding start-up, is left out). Prints a table; ``--json FILE`` writes every run.

Accuracy (``--accuracy``): ``fashion-mlp`` on Fashion-MNIST (data/fashion-mnist), every seed in ``--seeds``
with each of ``--orders``, final test accuracy as mean +- standard deviation.

The generated files and the cgroup are removed at the end, whatever happens (``--keep`` keeps the files).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distnet.data import open_dataset  # noqa: E402
from distnet.data.writer import write_dataset  # noqa: E402

ROW = 28 * 28
GEN_ROWS = 8192  # rows generated together (from (seed, block number)): the unit of determinism
CGROUPS = Path("/sys/fs/cgroup/memory")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]


# --- generating a dataset out of core ---------------------------------------------------------------------


def fashion_source(data_dir):
    """(train x, train y, test x, test y) of the prepared Fashion-MNIST in DATA_DIR (prepared there if absent)."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        from distnet.data.prepare import prepare

        prepare("fashion-mnist", data_dir)
    ds = open_dataset(data_dir)

    def read(split):
        xs = []
        for shard in ds[split].shards:
            with h5py.File(shard.path, "r") as f:
                xs.append(f["x"][:])
        return np.concatenate(xs), ds[split].labels()

    return (*read("train"), *read("test"))


class Generated:
    """Rows LO..HI of a tiled, perturbed copy of SOURCE images, made only when read (``np.asarray``).

    Row i is source image ``src[i]`` (drawn from SEED for all rows at once: the labels), shifted, flipped and
    noised with draws from (SEED, i // GEN_ROWS): the same bytes however the rows are sliced."""

    def __init__(self, source, src, seed, lo=0, hi=None):
        self.source, self.src, self.seed = source, src, seed
        self.lo, self.hi = lo, len(src) if hi is None else hi
        self.shape, self.dtype = (self.hi - self.lo, *source.shape[1:]), np.dtype(np.uint8)
        self.padded = np.pad(source, ((0, 0), (0, 0), (2, 2), (2, 2)))
        self.cache = [None, None]  # the last block made, shared by every view

    def __len__(self):
        return self.hi - self.lo

    def __getitem__(self, key):
        start, stop, step = key.indices(len(self))
        assert step == 1
        view = Generated.__new__(Generated)
        view.__dict__.update(self.__dict__)
        view.lo, view.hi = self.lo + start, self.lo + max(start, stop)
        view.shape = (view.hi - view.lo, *self.shape[1:])
        return view

    def block(self, k):
        """Generated rows of block K (GEN_ROWS rows from row k * GEN_ROWS)."""
        if self.cache[0] == k:
            return self.cache[1]
        lo, hi = k * GEN_ROWS, min(len(self.src), (k + 1) * GEN_ROWS)
        rng = np.random.default_rng([self.seed, 1, k])
        src, m = self.src[lo:hi], hi - lo
        shift, flip = rng.integers(0, 25, m), rng.random(m) < 0.5
        out = np.empty((m, *self.source.shape[1:]), np.uint8)
        for s in range(25):  # one gather per shift (25), none per sample
            sel = np.flatnonzero(shift == s)
            dy, dx = divmod(s, 5)
            out[sel] = self.padded[src[sel], :, dy:dy + 28, dx:dx + 28]
        out[flip] = out[flip][..., ::-1]
        noisy = out.astype(np.int16)
        noisy += np.frombuffer(rng.bytes(out.size), np.uint8).reshape(out.shape) & 15
        noisy -= 8
        out = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
        self.cache[:] = [k, out]
        return out

    def __array__(self, dtype=None, copy=None):
        parts = []
        for k in range(self.lo // GEN_ROWS, (self.hi - 1) // GEN_ROWS + 1 if self.hi > self.lo else 0):
            b = self.block(k)
            parts.append(b[max(self.lo - k * GEN_ROWS, 0):self.hi - k * GEN_ROWS])
        x = np.concatenate(parts) if parts else np.empty(self.shape, np.uint8)
        return x if dtype is None else x.astype(dtype)

    def stats(self):
        """(mean, std) per channel of x / 255, from a histogram of every generated value (a pass without disk)."""
        counts = np.zeros(256, np.int64)
        for k in range(self.lo // GEN_ROWS, (self.hi - 1) // GEN_ROWS + 1):
            counts += np.bincount(self.block(k).ravel(), minlength=256)
        v = np.arange(256) / 255.0
        total = counts.sum()
        mean = counts @ v / total
        std = np.sqrt(max(counts @ v ** 2 / total - mean ** 2, 0.0))
        return np.array([mean]), np.array([std])


def generate(out, n_train, source, seed, shard_bytes=1 << 30):
    """Write a prepared dataset of N_TRAIN generated rows (and Fashion-MNIST's test split) at OUT, fsynced
    and dropped from the page cache; returns its shard files."""
    x_train, y_train, x_test, y_test = source
    src = np.random.default_rng([seed, 0]).integers(0, len(x_train), n_train)
    x = Generated(x_train, src, seed)
    stats = x.stats()
    shards = max(1, -(-n_train * ROW // shard_bytes))
    write_dataset(out, "fashion-tiled", CLASS_NAMES, {"train": (x, y_train[src]), "test": (x_test, y_test)},
                  {}, shards=shards, force=True, extra={"generator_seed": seed}, stats=stats)
    files = sorted(Path(out).glob("*/*.h5"))
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    drop_cache(files)
    return files


def drop_cache(files):
    """Evict FILES' clean pages from the page cache (only theirs)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files):
    """Read FILES once so that their pages are cached; returns the bytes read."""
    total = 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while True:
                b = fh.read(8 << 20)
                if not b:
                    break
                total += len(b)
    return total


def resident(files):
    """Bytes of FILES in the page cache now (mincore, through util-linux's fincore)."""
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", *map(str, files)], capture_output=True, text=True)
    return sum(int(v) for v in out.stdout.split()) if out.returncode == 0 else None


# --- the memory cgroup ------------------------------------------------------------------------------------


class MemoryCgroup:
    """A cgroup v1 memory group limited to LIMIT bytes (RSS and the page cache its processes read)."""

    def __init__(self, limit):
        if not (CGROUPS / "cgroup.procs").exists():
            sys.exit(f"bigdata: error: no cgroup v1 memory controller at {CGROUPS}: run on a host that has one")
        self.path = CGROUPS / f"distnet-bigdata-{os.getpid()}"
        self.path.mkdir()
        self.write("memory.limit_in_bytes", limit)
        self.limit = int(self.read("memory.limit_in_bytes"))

    def write(self, name, value):
        (self.path / name).write_text(f"{value}\n")

    def read(self, name):
        return (self.path / name).read_text()

    def enter(self):
        """For preexec_fn: move the calling (child) process into the group; its children inherit it."""
        (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def stat(self):
        return dict((k, int(v)) for k, v in (line.split() for line in self.read("memory.stat").splitlines()))

    def empty(self):
        """Reclaim every page charged to the group (it holds no process now)."""
        self.write("memory.force_empty", 0)

    def reset_peak(self):
        self.write("memory.max_usage_in_bytes", 0)

    def remove(self):
        for _ in range(100):
            if not self.read("cgroup.procs").split():
                break
            time.sleep(0.1)
        try:
            self.empty()
        except OSError:
            pass
        self.path.rmdir()


# --- running and reading training -------------------------------------------------------------------------


def disk_read_bytes(device="vda"):
    """Bytes read from DEVICE since boot (the whole machine's reads: others' too)."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if f[2] == device:
            return int(f[5]) * 512
    return None


def load():
    return os.getloadavg()[0]


def steady_rate(metrics):
    """(samples/s between the first and the last train line, median of the windows after the first, test
    accuracy of the last eval line or None)."""
    lines = [json.loads(x) for x in Path(metrics).read_text().splitlines() if x.strip()]
    train = [x for x in lines if x["event"] == "train"]
    evals = [x for x in lines if x["event"] == "eval" and x.get("split", "test") == "test"]
    acc = evals[-1]["accuracy"] if evals else None
    if len(train) < 2:
        return None, None, acc
    first, last = train[0], train[-1]
    rate = (last["step"] - first["step"]) * first["global_batch"] / (last["time"] - first["time"])
    return rate, statistics.median(x["samples_per_s"] for x in train[1:]), acc


def train(data, metrics, args, extra, cgroup=None, timeout=1800):
    """One `mpiexec -n 2 distnet train fashion-mlp` (in CGROUP when given); returns its metrics' figures."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(args.ranks), sys.executable, "-m",
           "distnet", "train", "fashion-mlp", "--data", str(data), "--metrics", str(metrics), "--quiet", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            preexec_fn=cgroup.enter if cgroup else None, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)  # our own process group only
        proc.wait()
        raise
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.strip()[-2000:]}")
    return steady_rate(metrics)


def throughput(args, work):
    source = fashion_source(args.fashion)
    big_n = int(args.big_gb * 1e9) // ROW
    small_n = int(args.small_gb * 1e9) // ROW
    need = (big_n + small_n) * ROW + (4 << 30)
    free = shutil.disk_usage(work).free
    if free < need and not (work / "big").exists():
        sys.exit(f"bigdata: error: {work} has {free / 1e9:.1f} GB free, these datasets need {need / 1e9:.1f} GB: "
                 "pass a smaller --big-gb or another --dir")
    made = {}
    for name, n, seed in (("small", small_n, 1), ("big", big_n, 2)):
        t = time.time()
        if (work / name).exists() and len(open_dataset(work / name)["train"]) == n:  # --work of a --keep run
            made[name] = sorted((work / name).glob("*/*.h5"))
        else:
            made[name] = generate(work / name, n, source, seed=seed)
        print(f"{name}: {n:,} samples, {n * ROW / 1e9:.2f} GB, {time.time() - t:.0f} s", flush=True)
    small_files, big_files = made["small"], made["big"]
    cgroup = MemoryCgroup(int(args.limit_gib * (1 << 30)))
    runs = []
    try:
        print(f"cgroup {cgroup.path} limit {cgroup.limit / 2**30:.2f} GiB", flush=True)
        base = ["--set", f"train.max_steps={args.steps}", "--set", "train.epochs=1"]
        conditions = []
        for order in args.orders:
            for prefetch in args.prefetch:
                o = ["--set", f'data.order="{order}"', "--set", f"data.prefetch={json.dumps(prefetch)}"]
                conditions += [("small", "stream", order, prefetch, o), ("big", "stream", order, prefetch, o)]
        conditions.append(("small", "memory", "random", "auto", []))
        for rnd in range(args.rounds):
            for data, reader, order, prefetch, o in conditions:
                files = big_files if data == "big" else small_files
                cgroup.empty()  # no page of an earlier run left charged to the group
                if data == "big":
                    drop_cache(files)
                else:
                    warm(files)
                cgroup.reset_peak()
                before_stat, before_disk, before_load = cgroup.stat(), disk_read_bytes(), load()
                metrics = work / f"m-{rnd}-{data}-{reader}-{order}-{prefetch}.jsonl"
                reader_set = ["--set", 'data.reader="stream"'] if reader == "stream" else []
                t = time.time()
                rate, median, _ = train(work / data, metrics, args, base + reader_set + o, cgroup)
                after = cgroup.stat()
                run = dict(round=rnd, data=data, reader=reader, order=order, prefetch=prefetch, samples_per_s=rate,
                           median_window=median, wall_s=time.time() - t, load_before=before_load,
                           load_after=load(), peak_gib=int(cgroup.read("memory.max_usage_in_bytes")) / 2**30,
                           paged_in_gb=(after["total_pgpgin"] - before_stat["total_pgpgin"]) * 4096 / 1e9,
                           disk_read_gb=(disk_read_bytes() - before_disk) / 1e9,
                           resident_gb=(resident(files) or 0) / 1e9)
                runs.append(run)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()}),
                      flush=True)
    finally:
        cgroup.remove()
    return dict(big_samples=big_n, small_samples=small_n, big_gb=big_n * ROW / 1e9, small_gb=small_n * ROW / 1e9,
                limit_gib=args.limit_gib, steps=args.steps, runs=runs)


def summary(result):
    rows, key = {}, lambda r: (r["data"], r["reader"], r["order"], r.get("prefetch", "auto"))  # noqa: E731
    for r in result["runs"]:
        rows.setdefault(key(r), []).append(r)
    print(f"\n{'data':6} {'reader':7} {'order':7} {'prefetch':8} {'samples/s (median)':>19} {'runs':>30} {'load':>9} "
          f"{'disk GB':>8} {'peak GiB':>8}")
    medians = {}
    for k, rs in rows.items():
        rates = [r["samples_per_s"] for r in rs]
        medians[k] = statistics.median(rates)
        print(f"{k[0]:6} {k[1]:7} {k[2]:7} {k[3]:8} {medians[k]:19,.0f} {', '.join(f'{v:,.0f}' for v in rates):>30} "
              f"{statistics.median(r['load_before'] for r in rs):9.2f} "
              f"{statistics.median(r['disk_read_gb'] for r in rs):8.2f} {max(r['peak_gib'] for r in rs):8.2f}")
    runs = result["runs"]
    for order, prefetch in sorted({(k[2], k[3]) for k in rows if k[1] == "stream"}, key=str):
        ratios = {"stream": [], "memory": []}
        for rnd in sorted({r["round"] for r in runs}):
            got = {(r["data"], r["reader"]): r["samples_per_s"] for r in runs if r["round"] == rnd and
                   (r["reader"] == "memory" or (r["order"], r.get("prefetch", "auto")) == (order, prefetch))}
            if ("big", "stream") in got:
                ratios["stream"].append(got[("big", "stream")] / got[("small", "stream")])
                ratios["memory"].append(got[("big", "stream")] / got[("small", "memory")])
        each = {k: ", ".join(f"{v:.2f}" for v in vs) for k, vs in ratios.items()}
        print(f"{order}, prefetch {prefetch}: big streamed / small streamed = "
              f"{statistics.median(ratios['stream']):.2f} (per round {each['stream']}); / small in RAM = "
              f"{statistics.median(ratios['memory']):.2f} (per round {each['memory']})")
    return medians


def accuracy(args):
    results = {}
    with tempfile.TemporaryDirectory(prefix="distnet-bigdata-acc-") as tmp:
        for seed in args.seeds:
            for order in args.orders:
                metrics = Path(tmp) / f"m-{seed}-{order}.jsonl"
                _, _, acc = train(args.fashion, metrics, args,
                                  ["--seed", str(seed), "--epochs", str(args.epochs),
                                   "--set", f'data.order="{order}"'])
                results.setdefault(order, []).append(acc)
                print(json.dumps(dict(seed=seed, order=order, test_accuracy=acc, load=load())), flush=True)
    for order, accs in results.items():
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{order}: {statistics.mean(accs):.4f} +- {sd:.4f} (min {min(accs):.4f}, max {max(accs):.4f}, "
              f"{len(accs)} seeds)")
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--big-gb", type=float, default=12.0, help="size of the big training split (GB)")
    p.add_argument("--small-gb", type=float, default=0.5, help="size of the cached training split (GB)")
    p.add_argument("--limit-gib", type=float, default=3.0, help="the job's memory cgroup limit (GiB)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps per run")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--orders", type=lambda s: s.split(","), default=["random", "blocks"],
                   help="data.order values, comma-separated")
    p.add_argument("--prefetch", type=lambda s: [v if v == "auto" else int(v) for v in s.split(",")],
                   default=["auto"], help="data.prefetch values for the streaming runs, comma-separated")
    p.add_argument("--dir", default="/var/tmp", help="where the generated datasets go (removed at the end)")
    p.add_argument("--fashion", default=str(ROOT / "data/fashion-mnist"), help="prepared Fashion-MNIST")
    p.add_argument("--keep", action="store_true", help="keep the generated datasets (printing where)")
    p.add_argument("--work", help="use this folder (a --keep run's, datasets reused when their sizes match)")
    p.add_argument("--accuracy", action="store_true", help="measure test accuracy per order instead")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))  # so that the finally clauses clean up
    if args.accuracy:
        result = accuracy(args)
    else:
        if os.geteuid() != 0:
            sys.exit("bigdata: error: needs root (a memory cgroup and page-cache control): run it as root")
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="distnet-bigdata-", dir=args.dir))
        work.mkdir(exist_ok=True)
        try:
            result = throughput(args, work)
            summary(result)
        finally:
            if args.keep:
                print(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
