"""``distnet calibrate CONFIG --out cal.json``: measure a config's step and the network it runs on, for
``distnet plan``. Run it under the launcher of the machines to be modelled (one process, mpiexec, mpirun, srun).

1. Compute per rank against the per-rank batch b: the real training loop (``train``, profiled, no evaluation,
   checkpoints or files) at each b of ``--batches``, a few warm-up steps and then steps within a time budget;
   per phase (data, forward, backward, comm, optimizer) rank 0's mean, and the median over ranks.
2. The optimizer per parameter this rank updates (all of them; 1/P for zero and shm, which shard it).
3. The network, per level: allreduce time against message size (8 bytes to 4x the gradient, x4 steps; the
   slowest rank's median of repeats) inside a host (its ranks), between hosts (one leader per host) and over
   the whole world; each level fitted to alpha and beta with the algorithms the library runs (collectives.py).
4. The strategy: one plain allreduce of the gradient's wire bytes against the exposed wait of the last rank
   to arrive, as the fraction of backward that hides communication; shm's sums and fences; fp16/bf16's casts.
"""

import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__, comm
from .. import config as C
from ..blas import set_blas_threads
from ..errors import UserError
from . import collectives
from . import model as M

DEFAULT_BATCHES = "8,16,32,64,128,256,512"
BUDGET_S = 2.0  # measured seconds per batch size (at least MIN_STEPS steps)
MIN_STEPS, MAX_STEPS, WARMUP = 5, 200, 3
NET_BUDGET_S = 0.4  # seconds of repeats per message size and level


def add_arguments(p):
    p.add_argument("config", metavar="CONFIG_OR_PRESET",
                   help=f"a TOML config or a preset: {', '.join(C.preset_names())}")
    p.add_argument("--out", required=True, metavar="FILE", help="the calibration file to write (JSON)")
    p.add_argument("--data", metavar="DIR", help="prepared dataset folder (as distnet train: data.path)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="as in distnet train")
    p.add_argument("--batches", default=DEFAULT_BATCHES, metavar="B,B,...",
                   help=f"per-rank batch sizes to measure compute at (default {DEFAULT_BATCHES})")
    p.add_argument("--budget", type=float, default=BUDGET_S, metavar="SECONDS",
                   help=f"measured seconds per batch size (default {BUDGET_S:g}; at least {MIN_STEPS} steps)")


def is_calibration(path):
    try:
        return json.loads(Path(path).read_text()).get("format") == M.FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def parse_batches(text):
    try:
        out = sorted({int(t) for t in str(text).split(",") if t.strip()})
    except ValueError:
        out = []
    if not out or out[0] < 1:
        raise UserError(f"--batches {text!r}: give positive per-rank batch sizes such as {DEFAULT_BATCHES}")
    return out


def _library(text):
    return "mpich" if "MPICH" in text else "openmpi" if "Open MPI" in text else "other"


def _launcher(size):
    env = os.environ
    if size == 1 and not any(k in env for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")):
        return "one process"
    if "SLURM_STEP_NUM_TASKS" in env or "SLURM_JOB_ID" in env and "PMI_SIZE" not in env:
        return "srun"
    if "OMPI_COMM_WORLD_SIZE" in env:
        return "mpirun (Open MPI)"
    if any(k.startswith("HYDRA_") or k.startswith("HYDI_") for k in env) or "PMI_SIZE" in env:
        return "mpiexec (MPICH hydra)"
    return "unknown"


def _cpu():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# calibrate's own settings over the config: a profiled run without evaluation, checkpoints or files
OVERRIDES = {"train": dict(eval_every=0, patience=0, accumulate=1, target=""),
             "checkpoint": dict(dir="", every=0, resume=False),
             "log": dict(metrics="", trace="", profile=True, quiet=True)}


def base_config(args):
    """The config as ``distnet train`` resolves it, with calibrate's settings, validated once."""
    flags = [(f"--data {args.data}", {"data": {"path": args.data}})] if args.data else []
    return C.load(args.config, args.set, [*flags, ("distnet calibrate", OVERRIDES)])


def check_args(args, out=True):
    """Every check of the command line before any work: (per-rank batches, config); ``out``: also that --out
    can be written (the writing rank's check: another host may not see that folder)."""
    batches = parse_batches(args.batches)
    if not (math.isfinite(args.budget) and args.budget > 0):
        raise UserError(f"--budget {args.budget}: give a positive number of seconds")
    cfg = base_config(args)
    if out:
        check_out(args.out)
    return batches, cfg


def _config_at(cfg, batch, steps):
    """A new config (``cfg`` is not changed): ``cfg`` at global ``batch``, for ``steps`` steps."""
    return C.derive(cfg, {"train": dict(batch_size=batch, max_steps=steps, log_every=steps,
                                        epochs=max(cfg["train"]["epochs"], steps))}, f"distnet calibrate at {batch}")


def compute(w, cfg, batches, budget, train_size, notes):
    """Per-rank batch -> rank 0's phases (ms), the median over ranks, the last-arrival wait; the last run."""
    from ..bench.train import measured
    from ..training.loop import train

    rows, last, est_ms, prev = [], None, None, None
    for b in batches:
        per_epoch = train_size // (b * w.size)
        if per_epoch < 2:
            notes.append(f"per-rank batch {b} left out: {train_size:,} training samples make fewer than 2 steps of "
                         f"{b * w.size} on {w.size} rank(s)")
            continue
        if est_ms is None:  # the first batch: a short run says how long a step takes (the same on every rank)
            res = train(_config_at(cfg, b * w.size, total_steps(per_epoch, MIN_STEPS)))
            m = measured(res, WARMUP)
            steps = budget_steps(budget, m["wall_ms_per_step"])
            if steps > 2 * MIN_STEPS:  # worth measuring again, longer
                res = train(_config_at(cfg, b * w.size, total_steps(per_epoch, steps)))
                m = measured(res, WARMUP)
        else:  # a step's time grows at most in proportion to the batch
            res = train(_config_at(cfg, b * w.size, total_steps(per_epoch, budget_steps(budget, est_ms * b / prev))))
            m = measured(res, WARMUP)
        per_rank = np.array([[q[k] for k in ("data", "forward", "backward")] for q in m["per_rank_phases_ms"]])
        rows.append({"batch": b, "phases": m["phases_ms"], "median": dict(zip(("data", "forward", "backward"),
                                                                               np.median(per_rank, axis=0).tolist())),
                     "last_arrival": m["comm_last_arrival_ms"], "steps": m["steps_measured"]})
        est_ms, prev, last = m["wall_ms_per_step"], b, res
    if not rows:
        raise comm.Stop(f"no per-rank batch in --batches fits the training split ({train_size:,} samples) on "
                        f"{w.size} rank(s): give smaller --batches", 2)  # every rank decides alike
    return rows, last


def budget_steps(budget, step_ms):
    """Measured steps that take about ``budget`` seconds at ``step_ms`` each, within MIN_STEPS..MAX_STEPS."""
    return int(min(MAX_STEPS, max(MIN_STEPS, 1e3 * budget / max(step_ms, 1e-6))))


def total_steps(per_epoch, steps):
    """Steps to run so that ``steps`` of them are measured: those after WARMUP, less each epoch's first (its
    reader's start), as ``bench.train.measured`` counts them."""
    total, counted = WARMUP, 0
    while counted < steps:
        counted += total % per_epoch != 0
        total += 1
    return total


def sizes(grad_bytes):
    n, out = 8, []
    while n <= 4 * grad_bytes:
        out.append(n)
        n *= 4
    return out


def time_allreduce(w, nbytes):
    """The slowest rank's median seconds of an in-place float32 allreduce of ``nbytes`` on world ``w``."""
    buf = np.ones(max(nbytes // 4, 1), np.float32)
    w.allreduce(buf)  # warm: connections, buffers
    w.barrier()
    t = time.perf_counter()
    w.allreduce(buf)
    first = max(w.allgather(time.perf_counter() - t))
    reps = int(min(50, max(5, NET_BUDGET_S / max(first, 1e-6))))
    times = []
    for _ in range(reps):
        w.barrier()
        t = time.perf_counter()
        w.allreduce(buf)
        times.append(time.perf_counter() - t)
    return max(w.allgather(float(np.median(times))))


def network(w, grad_bytes, library):
    """{"intra", "inter", "world"}: each level's points and fit (None where the level has one rank)."""
    hosts = comm.hosts(w)
    names = sorted(hosts, key=lambda h: hosts[h][0])
    mine = next(h for h in names if w.rank in hosts[h])
    out = {"intra": None, "inter": None, "world": None}
    if w.size == 1:
        return out
    per_host = [len(hosts[h]) for h in names]
    levels = []
    leader = hosts[mine][0] == w.rank
    if max(per_host) > 1:  # (level, color, key, ranks in it, whether this rank measures)
        levels.append(("intra", names.index(mine), hosts[mine].index(w.rank), max(per_host), True))
    if len(names) > 1:  # the other ranks form a group of their own that waits
        levels.append(("inter", 0 if leader else 1, names.index(mine), len(names), leader))
    levels.append(("world", 0, w.rank, w.size, True))
    for name, color, key, p, measures in levels:
        sub = w.split(color, key)
        pts = []
        for n in sizes(grad_bytes):
            t = time_allreduce(sub, n) if measures else 0.0
            pts.append([n, t])
        if hasattr(sub, "free"):
            sub.free()
        w.barrier()
        # every rank learns the points of a level's first group (the host with most ranks for intra)
        pts = w.bcast(pts if w.rank == _first_of(hosts, names, name, per_host) else None)
        level = {"ranks": p, "points": pts, "algorithms": [collectives.algorithm(library, n, p) for n, _ in pts]}
        if name != "world":
            try:
                alpha, beta, rms = collectives.fit([tuple(x) for x in pts], library, p)
                level.update(alpha_s=alpha, beta_Bps=beta, rms_rel=rms)
            except ValueError as e:
                level.update(alpha_s=None, beta_Bps=None, rms_rel=None, error=str(e))
        out[name] = level
    return out


def _first_of(hosts, names, level, per_host):
    if level == "intra":
        return hosts[names[per_host.index(max(per_host))]][0]
    return 0


def check_out(path):
    """``--out`` names a file distnet may write or replace, in a folder that exists and is writable."""
    from ..outputs import check_file

    path = Path(path)
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise UserError(f"--out {path}: its folder {path.parent} {what}: create it or choose another --out")
    check_file(path, "calibration file", "--out", is_calibration, replaced=True)  # written by a rename


def write(cal, path):
    """Write the file atomically (a temporary beside it, fsynced, renamed); a failure leaves nothing behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(cal, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise UserError(f"cannot write {path}: {e.strerror or e}: free space or choose another --out") from None


def run(args):
    w = comm.world()
    threads = set_blas_threads(1)
    try:
        batches, cfg = check_args(args, out=False)
    except UserError as e:  # every rank parses the same: all fail alike, rank 0 says it
        if w.rank == 0:
            print(f"distnet: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    problem = None
    if w.rank == 0:  # the writer checks where it writes (other hosts may not see that folder), before measuring
        try:
            check_out(args.out)
        except UserError as e:
            problem = str(e)
    problem = w.bcast(problem)
    if problem:
        if w.rank == 0:
            print(f"distnet: error: {problem}", file=sys.stderr, flush=True)
        return 2
    t0 = time.perf_counter()
    out = {}

    def body():
        from ..data import open_dataset

        notes = []
        with comm.agreed(w):  # a rank may miss the data alone (its host's copy): all stop, one line
            folder = C.data_path(cfg)
            if not Path(folder).exists():  # as distnet train says it
                name = cfg["data"]["dataset"] or "NAME"
                raise UserError(f"dataset folder {folder} does not exist: run 'distnet data prepare {name} --out "
                                f"{folder}' or pass --data DIR")
            data = open_dataset(folder)
            train_size = len(data["train"]) - int(round(len(data["train"]) * cfg["data"]["val_fraction"]))
        rows, res = compute(w, cfg, batches, args.budget, train_size, notes)
        run_ = res.run
        model, sync = run_.model, run_.sync.name
        params = int(model.num_params)
        grad_bytes = int(model.grads_flat.nbytes)
        library = _library(w.library())
        wire = grad_bytes // 2 if sync in ("fp16", "bf16") else grad_bytes
        flat = None
        if w.size > 1:
            buf = np.zeros(max(wire // 4, 1), np.float32)
            from ..bench.allreduce import median_time

            flat = 1e3 * median_time(w, lambda: w.allreduce(buf), 20)
        net = network(w, grad_bytes, library)
        hidden, extra_ms, extra_pp, hidden_ms, share = None, None, None, None, None
        if w.size > 1 and sync not in ("shm", "flat"):
            fr = [min(max((flat - r["last_arrival"]) / r["phases"]["backward"], 0.0), 1.0)
                  for r in rows if r["last_arrival"] is not None and r["phases"]["backward"] > 0]
            hidden = float(np.median(fr)) if fr else None
            # the same per batch in ms, and as a share of the allreduce: on a fast link the hidden time is about
            # constant, so its fraction of backward falls as 1/b and the median fits only the middle batches
            hidden_ms = [None if r["last_arrival"] is None else flat - r["last_arrival"] for r in rows]
            shares = [min(max(h / flat, 0.0), 1.0) for h in hidden_ms if h is not None and flat > 0]
            share = float(np.median(shares)) if shares else None
        if sync == "shm":
            extra_ms = float(np.median([r["phases"]["comm"] for r in rows]))
            notes.append("comm.sync shm (one host) sends no gradient: no overlap is measured; for a plan across "
                         "hosts calibrate with --set comm.sync=\"bucketed\" (auto's choice there)")
        if sync in ("fp16", "bf16"):
            s = run_.sync
            g = model.grads_flat
            row = np.zeros(g.size + 2, np.uint16)
            t = time.perf_counter()
            for _ in range(5):
                s.compress(g, row, s.f32, s.u32)
                s.decompress(row, s.f32, s.u32)
            extra_pp = (time.perf_counter() - t) / 5 * 1e3 / params  # one compression and one decompression
        updated = -(-params // w.size) if sync in ("zero", "shm") else params
        opt = float(np.median([r["phases"]["optimizer"] for r in rows])) / updated
        hosts = comm.hosts(w)
        out["cal"] = {
            "format": M.FORMAT, "version": 1, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "distnet": __version__, "config": args.config, "command": " ".join(["distnet", *sys.argv[1:]]),
            "model": {"params": params, "grad_bytes": grad_bytes, "dtype": str(model.dtype),
                      "layers": M.signature(model)},
            "machine": {"hosts": len(hosts), "host_names": list(hosts), "ranks": w.size,
                        "ranks_per_host": [len(r) for r in hosts.values()], "cpu": _cpu(), "cores": os.cpu_count(),
                        "blas_threads": threads, "mpi": w.library(), "library": library,
                        "launcher": _launcher(w.size), "python": platform.python_version(),
                        "numpy": np.__version__},
            "sync": {"strategy": sync, "hidden_fraction": hidden, "flat_allreduce_ms": flat, "extra_ms": extra_ms,
                     "extra_ms_per_param": extra_pp, "hidden_ms": hidden_ms, "hidden_share_of_allreduce": share},
            "compute": {"ranks": w.size, "batches": [r["batch"] for r in rows],
                        "phases_ms": {k: [r["phases"][k] for r in rows] for k in
                                      ("data", "forward", "backward", "comm", "optimizer")},
                        "median_over_ranks_ms": {k: [r["median"][k] for r in rows]
                                                 for k in ("data", "forward", "backward")},
                        "comm_last_arrival_ms": [r["last_arrival"] for r in rows],
                        "steps": [r["steps"] for r in rows]},
            "optimizer": {"ms_per_param": opt, "params_updated": updated},
            "network": net, "notes": notes}
        if w.size == 1:
            notes.append("one rank: compute only; run under mpiexec/srun on the machines to be modelled for the "
                         "network")
        out["cal"]["seconds"] = round(time.perf_counter() - t0, 1)
        with comm.agreed(w):  # a failed write (disk full) stops every rank with exit 2
            if w.rank == 0:
                write(out["cal"], Path(args.out))

    code = comm.run_on_every_rank(w, body)
    if code or w.rank != 0:
        return code
    summarize(out["cal"], Path(args.out))
    return 0


def summarize(cal, path, file=None):
    def say(text=""):
        print(text, file=file or sys.stdout)

    m, c = cal["machine"], cal["compute"]
    say(f"distnet calibrate {cal['config']}: {m['ranks']} rank(s) on {m['hosts']} host(s) "
        f"({', '.join(f'{h} x{n}' for h, n in zip(m['host_names'], m['ranks_per_host']))}), {m['cpu']}, "
        f"{m['blas_threads']} BLAS thread(s) per rank, {m['mpi'][:40]}, {m['launcher']}; "
        f"sync {cal['sync']['strategy']}")
    say(f"{'b/rank':>7} {'data':>8} {'forward':>8} {'backward':>9} {'comm':>8} {'optim':>7}  ms per step "
        "(rank 0)")
    for i, b in enumerate(c["batches"]):
        ph = c["phases_ms"]
        say(f"{b:>7} {ph['data'][i]:>8.3f} {ph['forward'][i]:>8.3f} {ph['backward'][i]:>9.3f} {ph['comm'][i]:>8.3f} "
            f"{ph['optimizer'][i]:>7.3f}")
    say(f"optimizer: {cal['optimizer']['ms_per_param'] * 1e6:.3f} ns per parameter updated")
    for name in ("intra", "inter"):
        lv = cal["network"][name]
        if lv and lv.get("beta_Bps"):
            say(f"network {name}-host ({lv['ranks']} ranks): alpha {lv['alpha_s'] * 1e6:.1f} us, beta "
                f"{lv['beta_Bps'] / 1e6:,.0f} MB/s ({8 * lv['beta_Bps'] / 1e9:.2f} Gbit/s), fit rms "
                f"{100 * lv['rms_rel']:.0f} %")
    s = cal["sync"]
    if s["hidden_fraction"] is not None:
        say(f"overlap: {100 * s['hidden_fraction']:.0f} % of backward hides communication (one plain allreduce "
            f"of the gradient {s['flat_allreduce_ms']:.3f} ms)")
    if s.get("hidden_share_of_allreduce") is not None:
        say(f"  = {100 * s['hidden_share_of_allreduce']:.0f} % of that allreduce hidden (median over batches; "
            "ms hidden per batch: " + ", ".join("-" if h is None else f"{h:.3f}" for h in s["hidden_ms"]) + ")")
    if s["extra_ms"] is not None:
        say(f"{s['strategy']}: its own cost (sums and fences) {s['extra_ms']:.3f} ms per step (median over batches)")
    if s["extra_ms_per_param"] is not None:
        say(f"{s['strategy']}: casting to the wire and back {1e6 * s['extra_ms_per_param']:.3f} ns per parameter")
    for n in cal["notes"]:
        say(f"note: {n}")
    say(f"wrote {path} in {cal['seconds']:.0f} s")
