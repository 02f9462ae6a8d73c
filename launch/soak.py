"""Soak: a long run's resident memory per rank, sampled at every epoch end (a benchmark, not a test).

    flock -x /tmp/distnet-cpu.lock python launch/soak.py --ranks 2 --epochs 50 --checkpoint-every 200

Starts ``mpiexec -n RANKS distnet train PRESET`` with checkpoints every N steps, finds the ranks (the Python
processes under that mpiexec), and at each epoch end (an ``eval`` line in the metrics) reads every rank's VmRSS
from /proc (but the last epoch's: by then the run is freeing its data). Prints one JSON object: the samples,
and per rank the growth from the end of the first epoch
(imports, the data and the arenas are all in place by then) to the end of the run, in MiB and percent.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def descendants(root):
    """Python processes running distnet below ``root``, in pid order (the ranks, not the proxies)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass

    def below(pid):
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == root:
                return True
        return False

    out = []
    for pid in parent:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd[0].endswith(b"python") or b"python" in Path(cmd[0].decode()).name.encode():
            if b"distnet" in b" ".join(cmd) and below(pid):
                out.append(pid)
    return sorted(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mlp")
    p.add_argument("--data", default="data/fashion-mnist")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=200)
    args = p.parse_args()
    mpiexec = Path(sys.executable).parent / "mpiexec"
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        metrics = Path(tmp) / "m.jsonl"
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        job = subprocess.Popen([str(mpiexec), "-n", str(args.ranks), sys.executable, "-m", "distnet", "train",
                                args.preset, "--data", args.data, "--epochs", str(args.epochs), "--quiet",
                                "--metrics", str(metrics), "--checkpoint-dir", str(Path(tmp) / "ck"),
                                "--checkpoint-every", str(args.checkpoint_every)], env=env)
        samples, ranks, seen = [], [], 0
        t0 = time.monotonic()
        while job.poll() is None:
            time.sleep(0.05)
            if not ranks:
                ranks = descendants(job.pid)
                ranks = ranks if len(ranks) == args.ranks else []
                continue
            try:
                evals = [json.loads(s) for s in metrics.read_text().splitlines() if '"eval"' in s]
            except (OSError, ValueError):
                continue
            if len(evals) > seen and evals[-1]["epoch"] < args.epochs:  # at the last, the run is closing
                seen = len(evals)
                try:
                    rss = [rss_kib(pid) for pid in ranks]
                except (OSError, RuntimeError):
                    break  # the run is ending
                samples.append({"epoch": evals[-1]["epoch"], "t_s": round(time.monotonic() - t0, 1),
                                "rss_mib": [round(r / 1024, 2) for r in rss]})
        if job.wait() != 0:
            sys.exit(f"soak: the run failed (exit {job.returncode})")
        ckpts = len(list((Path(tmp) / "ck").glob("*.h5")))
    first, last = samples[0]["rss_mib"], samples[-1]["rss_mib"]
    growth = [{"rank": r, "after_epoch_1_mib": a, "end_mib": b, "growth_mib": round(b - a, 2),
               "growth_pct": round(100 * (b - a) / a, 3), "max_mib": max(s["rss_mib"][r] for s in samples)}
              for r, (a, b) in enumerate(zip(first, last))]
    print(json.dumps({"preset": args.preset, "ranks": args.ranks, "epochs": args.epochs,
                      "checkpoint_every": args.checkpoint_every, "checkpoints_kept_at_end": ckpts,
                      "epochs_sampled": len(samples), "growth": growth, "samples": samples}))


if __name__ == "__main__":
    main()
