"""How fast ``distnet data import`` converts, and how little memory it holds (a benchmark, not a test).

    flock -x /tmp/distnet-cpu.lock python launch/import_bench.py            # ~2 min, ~9 GB of /tmp at the peak

Makes, in a temporary folder under --tmp (deleted at the end, also on failure): a float32 ``x.npy`` of
--npy-gib GiB (256 features a row) with its ``y.npy``, an HDF5 file of --hdf5-mib MiB, a CSV of --csv-mb MB
(20 features and a label name a row) and --images 28x28 gray PNGs in 10 class folders. Each is imported by
``python -m distnet data import`` in a child process (``--test-fraction 0.1``); the child's peak resident
memory is its ``ru_maxrss`` from ``os.wait4`` (Linux carries a parent's peak into a child it forks, so the
sources are made by other child processes and this one stays small). For scale, the time
``shutil.copyfile`` takes to copy ``x.npy`` beside itself. The sources were just written, so they are read
from the page cache, and the output is written into it: the figures are conversion speed, not disk speed.
Prints one JSON object.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROW_FEATURES = 256


def make_npy(folder, gib, rng):
    """x.npy (float32, written a block at a time: never held whole here either) and y.npy."""
    rows = int(gib * 2**30) // (ROW_FEATURES * 4)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=(rows, ROW_FEATURES))
    block = 1 << 16
    for lo in range(0, rows, block):
        n = min(block, rows - lo)
        x[lo:lo + n] = rng.standard_normal((n, ROW_FEATURES), dtype=np.float32)
    x.flush()
    del x
    np.save(folder / "y.npy", rng.integers(0, 10, rows))
    return rows


def make_hdf5(folder, mib, rng):
    import h5py

    rows = int(mib * 2**20) // (ROW_FEATURES * 4)
    with h5py.File(folder / "d.h5", "w") as f:
        x = f.create_dataset("x", (rows, ROW_FEATURES), np.float32)
        for lo in range(0, rows, 1 << 16):
            n = min(1 << 16, rows - lo)
            x[lo:lo + n] = rng.standard_normal((n, ROW_FEATURES), dtype=np.float32)
        f["y"] = rng.integers(0, 10, rows)
    return rows


def make_csv(folder, mb, rng):
    """A CSV of about MB megabytes: a header, then 20 numbers with 6 decimals and a label name a row."""
    names = np.array([f"class{k}" for k in range(10)])
    rows, size = 0, 0
    with open(folder / "d.csv", "w") as f:
        f.write(",".join(f"f{k}" for k in range(20)) + ",label\n")
        while size < mb * 1e6:
            x = rng.standard_normal((20000, 20))
            text = "\n".join(",".join(r) for r in np.char.mod("%.6f", x).tolist())
            labels = names[rng.integers(0, 10, 20000)]
            lines = [f"{a},{b}" for a, b in zip(text.split("\n"), labels)]
            chunk = "\n".join(lines) + "\n"
            f.write(chunk)
            size += len(chunk)
            rows += 20000
    return rows


def make_images(folder, count, rng):
    from PIL import Image

    for k in range(count):
        d = folder / "img" / f"c{k % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(d / f"{k}.png")
    return count


def run_import(args, out):
    """(seconds, peak RSS MiB) of one import in a child process."""
    cmd = [sys.executable, "-m", "distnet", "data", "import", *map(str, args), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"import failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    shutil.rmtree(out)
    return seconds, usage.ru_maxrss / 1024


MAKERS = {"npy": make_npy, "hdf5": make_hdf5, "csv": make_csv, "images": make_images}


def make(kind, folder, size):
    """Make a source in a child process (see the docstring); returns its row count."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import numpy as np; "
            f"from pathlib import Path; import import_bench as b; "
            f"print(b.MAKERS[{kind!r}](Path({str(folder)!r}), {size!r}, np.random.default_rng(0)))")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npy-gib", type=float, default=2.0)
    ap.add_argument("--hdf5-mib", type=float, default=512)
    ap.add_argument("--csv-mb", type=float, default=100)
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--tmp", default="/tmp", help="where the sources and outputs go (not a RAM file system)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="distnet-import-bench-", dir=args.tmp))
    out, results = folder / "out", {}
    try:
        base = subprocess.run([sys.executable, "-c", "import resource, distnet.data.imports, h5py; "
                               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                              capture_output=True, text=True, check=True)
        results["baseline_rss_mib"] = round(int(base.stdout) / 1024)  # the interpreter and the imports alone
        rows = make("npy", folder, args.npy_gib)
        nbytes = (folder / "x.npy").stat().st_size
        start = time.perf_counter()
        shutil.copyfile(folder / "x.npy", folder / "copy.npy")
        copy_s = time.perf_counter() - start
        (folder / "copy.npy").unlink()
        s, rss = run_import([folder / "x.npy", "--labels", folder / "y.npy", "--test-fraction", "0.1"], out)
        results["npy"] = dict(bytes=nbytes, rows=rows, seconds=round(s, 2), mb_per_s=round(nbytes / s / 1e6),
                              peak_rss_mib=round(rss), copyfile_seconds=round(copy_s, 2),
                              copyfile_mb_per_s=round(nbytes / copy_s / 1e6))
        for f in ("x.npy", "y.npy"):
            (folder / f).unlink()
        if args.hdf5_mib:
            rows = make("hdf5", folder, args.hdf5_mib)
            nbytes = (folder / "d.h5").stat().st_size
            s, rss = run_import([folder / "d.h5", "--test-fraction", "0.1"], out)
            results["hdf5"] = dict(bytes=nbytes, rows=rows, seconds=round(s, 2), mb_per_s=round(nbytes / s / 1e6),
                                   peak_rss_mib=round(rss))
            (folder / "d.h5").unlink()
        if args.csv_mb:
            rows = make("csv", folder, args.csv_mb)
            nbytes = (folder / "d.csv").stat().st_size
            s, rss = run_import([folder / "d.csv", "--label-column", "label", "--test-fraction", "0.1"], out)
            results["csv"] = dict(bytes=nbytes, rows=rows, seconds=round(s, 2), mb_per_s=round(nbytes / s / 1e6, 1),
                                  rows_per_s=round(rows / s), peak_rss_mib=round(rss))
        if args.images:
            count = make("images", folder, args.images)
            s, rss = run_import([folder / "img", "--test-fraction", "0.1"], out)
            results["images"] = dict(files=count, size="28x28 gray PNG", seconds=round(s, 2),
                                     images_per_s=round(count / s), peak_rss_mib=round(rss))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
