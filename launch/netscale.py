#!/usr/bin/env python3
"""Scaling over a network: distnet and PyTorch DDP on 2 namespace hosts, the link shaped to each rate.

    python launch/netscale.py [--models mlp,cnn] [--batches 128,1024] [--rates 1gbit,10gbit,none]
                              [--repeats 3] [--json [FILE]]

Needs root (cluster/netns.sh), the MPICH wheel's mpiexec and PyTorch. For each rate, cluster/netns.sh brings
up hosts h1 and h2 (prefix --prefix, not the default "dn", so another cluster on this machine is left alone)
with every link shaped by tc tbf to that rate ("none": unshaped veth), probes the link with one TCP transfer,
and runs, for each model and global batch, 1 rank on each host:
  distnet   mpiexec inside h1 (hydra, -launcher ssh -launcher-exec cluster/nsssh -localhost <h1> -hosts h1,h2),
            UCX_TLS=tcp,self (else UCX finds shared memory between the namespaces), --profile
  DDP       torch DistributedDataParallel, gloo over TCP, MASTER_ADDR = h1's address, one process per host
Before the rates, each model and batch runs once in 1 process (distnet without mpiexec, torch eager) for the
scaling efficiency eff = samples/s(2 hosts) / (2 x samples/s(1 rank)) at the same global batch.
Every process runs 1 thread (OMP/OPENBLAS/MKL_NUM_THREADS=1, torch.set_num_threads(1)).

Throughput is measured as launch/compare_torch.py does (its functions are reused): samples/s of each of REPEATS
segments of STEPS steps after WARMUP steps, in the same processes, median reported (steps by model and batch:
--steps/--warmup override). distnet's exposed communication wait is its summary's ms_comm_last_arrival_mean
(the comm wait of the rank that arrived last, i.e. without skew; mean over all steps but the first, warm-up
included); it is set against one allreduce of the gradients on the link, bytes x 8 / rate (gradient bytes =
4 x params; ring allreduce of 2 ranks: each rank sends and receives the buffer once). Compute per step is
rank 0's data+forward+backward+optimizer over the timed windows. The veth byte counters (cluster/netns.sh
bytes hN) of each run show what crossed the link. The whole cluster is removed at the end (cluster/netns.sh
down, also on failure or SIGTERM).
"""

import argparse
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NETNS = ROOT / "cluster" / "netns.sh"
NSSSH = ROOT / "cluster" / "nsssh"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import compare_torch as ct  # noqa: E402  (launch/compare_torch.py: imports no torch at the top)

MODELS = {"mlp": "fashion-mlp", "cnn": "fashion-cnn"}
# Samples per timed segment and per warm-up, per model: the CNN costs ~30x the MLP per sample.
SEGMENT_SAMPLES = {"mlp": (12800, 3840, 20, 5), "cnn": (5120, 640, 5, 3)}  # segment, warm-up, min steps, min warm-up
UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
UNSHAPED = "none"
RUN_TIMEOUT_S = 600
PROBE_PORT = 29400


# -- arithmetic ---------------------------------------------------------------------------------------

def rate_bps(rate):
    """Bits per second of a tc rate such as 1gbit, 10gbit, 500mbit; None for "none" (unshaped)."""
    if rate == UNSHAPED:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgt]?bit)", rate.lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"rate {rate!r}: give a tc rate such as 1gbit, 10gbit, 500mbit, or {UNSHAPED!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def grad_bytes(params, itemsize=4):
    return itemsize * params


def allreduce_ms(params, bps, ranks=2):
    """Milliseconds one ring allreduce of the float32 gradients needs on a link of BPS bits/s: each rank
    sends (and receives) 2(P-1)/P times the buffer, which for P = 2 is the buffer once."""
    return 1e3 * grad_bytes(params) * 2 * (ranks - 1) / ranks * 8 / bps


def efficiency(sps_many, sps_one, ranks=2):
    return sps_many / (ranks * sps_one)


def plan(model, batch):
    """(warm-up steps, steps per timed segment) for MODEL at global BATCH: about the same samples per segment
    at any batch, at least a few steps."""
    seg, warm, min_steps, min_warm = SEGMENT_SAMPLES[model]
    return max(min_warm, warm // batch), max(min_steps, seg // batch)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn (default: both)")
    ap.add_argument("--batches", default="128,1024", help="global batches, comma-separated (default 128,1024)")
    ap.add_argument("--rates", default=f"1gbit,10gbit,{UNSHAPED}",
                    help=f"link rates (tc syntax), comma-separated; {UNSHAPED!r} = unshaped (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="timed segments per run (median reported; default 3)")
    ap.add_argument("--steps", type=int, default=0, help="steps per timed segment for every run (default: by model"
                    " and batch: mlp 100 at 128, 20 at 1024; cnn 40 at 128, 5 at 1024)")
    ap.add_argument("--warmup", type=int, default=0, help="warm-up steps for every run (default: by model and batch)")
    ap.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"), help="prepared Fashion-MNIST folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefix", default="nsc",
                    help="namespace prefix for cluster/netns.sh (its DISTNET_NETNS; default nsc)")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="JSON results: alone, on stdout instead of the table; with FILE, into FILE as well")
    args = ap.parse_args(argv)

    def items(text):
        return [s.strip() for s in text.split(",") if s.strip()]

    args.models = items(args.models)
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        ap.error(f"--models: unknown {bad}; choose from {', '.join(MODELS)}")
    try:
        args.batches = [int(b) for b in items(args.batches)]
    except ValueError:
        ap.error(f"--batches: integers, comma-separated, got {args.batches!r}")
    if not args.batches or any(b < 2 or b % 2 for b in args.batches):
        ap.error("--batches: each global batch must be even and at least 2 (split over 2 ranks)")
    args.rates = items(args.rates)
    if not args.rates:
        ap.error("--rates: give at least one rate")
    for r in args.rates:
        try:
            rate_bps(r)
        except ValueError as e:
            ap.error(f"--rates: {e}")
    if args.repeats < 1 or args.steps < 0 or args.warmup < 0:
        ap.error("--repeats must be at least 1, --steps and --warmup not negative")
    if not re.fullmatch(r"[a-z][a-z0-9]{0,4}", args.prefix) or args.prefix == "dn":
        ap.error("--prefix: 1-5 lower-case letters or digits, starting with a letter, not the default 'dn'")
    return args


# -- the namespace cluster ----------------------------------------------------------------------------

class Cluster:
    """cluster/netns.sh with our own prefix: up(rate), exec, addresses, byte counters; down() always."""

    def __init__(self, prefix):
        self.env = dict(os.environ, DISTNET_NETNS=prefix)
        self.prefix = prefix
        self.started = False

    def sh(self, *args, check=True, timeout=60):
        r = subprocess.run([str(NETNS), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise RuntimeError(f"netns.sh {' '.join(args)} failed (exit {r.returncode}): {r.stderr.strip()}")
        return r.stdout.strip()

    def is_up(self):
        return Path(self.sh("state"), "hosts").exists()

    def up(self, rate):
        if self.is_up():
            raise RuntimeError(f"a cluster with prefix {self.prefix!r} is already up: not ours to reuse or remove; "
                               "pick another --prefix")
        self.started = True  # from here on, down() removes what up made (up also cleans up after itself)
        self.sh("up", "2", *(["--rate", rate] if rate != UNSHAPED else []))

    def down(self):
        if self.started:
            self.sh("down", check=False, timeout=120)
            self.started = False

    def addr(self, host):
        return self.sh("addr", host)

    def link_bytes(self):
        """Bytes sent by h1 and by h2 on their veth links (TX counters)."""
        return [int(self.sh("bytes", h).split()[1]) for h in ("h1", "h2")]

    def cmd(self, host, *argv):
        return [str(NETNS), "exec", host, *map(str, argv)]


def thread_env(extra=None):
    env = dict(os.environ, **ct.THREAD_ENV, PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def probe_link(cluster, bps):
    """Gbit/s of one TCP transfer from h2 to h1 (about half a second at the nominal rate)."""
    nbytes = int(min(256 << 20, max(16 << 20, (bps or 8e9) / 8 * 0.5)))
    script = str(Path(__file__).resolve())
    recv = subprocess.Popen(cluster.cmd("h1", sys.executable, script, "_probe-recv", PROBE_PORT),
                            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        send = subprocess.run(cluster.cmd("h2", sys.executable, script, "_probe-send", cluster.addr("h1"), PROBE_PORT,
                                          nbytes), env=cluster.env, capture_output=True, text=True, timeout=120)
        if send.returncode:
            raise RuntimeError(f"link probe failed: {send.stderr.strip()[-500:]}")
        recv.wait(timeout=30)
        return json.loads(send.stdout)["gbit_s"]
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()


def probe_recv(port):
    with socket.create_server(("0.0.0.0", port)) as srv:
        conn, _ = srv.accept()
        with conn:
            while conn.recv(1 << 20):
                pass
            conn.sendall(b"k")


def probe_send(addr, port, nbytes):
    for _ in range(400):  # the receiver may still be starting (20 s)
        try:
            s = socket.create_connection((addr, port), timeout=30)
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise SystemExit(f"netscale: probe: cannot connect to {addr}:{port}")
    chunk, left = b"\0" * (1 << 20), nbytes
    with s:
        t0 = time.perf_counter()
        while left > 0:
            left -= s.send(chunk[:left])
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
        dt = time.perf_counter() - t0
    print(json.dumps({"bytes": nbytes, "seconds": dt, "gbit_s": nbytes * 8 / dt / 1e9}))


# -- the runs -----------------------------------------------------------------------------------------

def distnet_two_hosts(cluster, preset, data, batch, warmup, steps, repeats, workdir, seed):
    """One `distnet train --profile` with 1 rank on h1 and 1 on h2: rates per segment, the profile, bytes."""
    log_every = math.gcd(warmup, steps)
    total = warmup + steps * repeats
    metrics = Path(workdir) / f"distnet-{preset}-{batch}-2hosts.jsonl"
    mpiexec = ct.mpiexec()
    if not mpiexec:
        sys.exit("netscale: no mpiexec found: pip install -e '.[mpich]'")
    cmd = cluster.cmd("h1", mpiexec, "-launcher", "ssh", "-launcher-exec", NSSSH, "-localhost", cluster.addr("h1"),
                      "-hosts", "h1,h2", "-n", "2",
                      sys.executable, "-m", "distnet", "train", preset, "--data", Path(data).resolve(),
                      "--batch-size", batch, "--seed", seed, "--set", f"train.max_steps={total}",
                      "--set", "train.eval_every=0", "--set", f"train.log_every={log_every}",
                      "--metrics", metrics, "--profile", "--quiet")
    before = cluster.link_bytes()
    r = subprocess.run(cmd, env=thread_env(dict(cluster.env, UCX_TLS="tcp,self")), capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S, cwd=ROOT)
    after = cluster.link_bytes()
    if r.returncode:
        raise RuntimeError(f"distnet on 2 hosts failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    start = next(rec for rec in records if rec["event"] == "start")
    if start.get("hosts") != {"h1": [0], "h2": [1]}:
        raise RuntimeError(f"distnet ran on {start.get('hosts')}, not 1 rank on each of h1, h2")
    rates = ct.segment_rates(records, batch, warmup, steps)
    if len(rates) != repeats:
        raise RuntimeError(f"distnet gave {len(rates)} timed segments, not {repeats}")
    summary = next(rec for rec in records if rec["event"] == "summary")
    # rank 0's phases over the timed windows (the train line that closes each counted window)
    from distnet.metrics import train_windows

    by_step = {rec["step"]: rec for rec in records if rec["event"] == "train"}
    phases, n_all = {}, 0
    for first, n, _ in train_windows(records, warmup, batch):
        rec = by_step[first + n]
        for k in ("data", "forward", "backward", "comm", "optimizer"):
            phases[k] = phases.get(k, 0.0) + rec[f"ms_{k}"] * n
        n_all += n
    phases = {k: v / n_all for k, v in phases.items()}
    return dict(rates=rates, params=start["params"], mpi_library=start.get("mpi_library"), steps_run=total,
                ms_compute=phases["data"] + phases["forward"] + phases["backward"] + phases["optimizer"],
                ms_comm_rank0=phases["comm"], ms_phases=phases,
                ms_comm_last_arrival=summary["ms_comm_last_arrival_mean"],
                link_bytes=[a - b for a, b in zip(after, before)])


def ddp_two_hosts(cluster, job, workdir, port):
    """torch DDP (gloo) with rank 0 on h1 and rank 1 on h2, MASTER_ADDR = h1's address: rates, bytes."""
    job_path = Path(workdir) / f"ddp-{job['batch']}-{port}.json"
    out = Path(workdir) / f"ddp-{job['batch']}-{port}.out.json"
    job_path.write_text(json.dumps(dict(job, port=port)))  # torch_worker reads job["port"]; env:// uses MASTER_PORT
    env = thread_env(dict(cluster.env, MASTER_ADDR=cluster.addr("h1"), MASTER_PORT=str(port),
                          GLOO_SOCKET_IFNAME="eth0"))
    script = str(Path(__file__).resolve())
    before = cluster.link_bytes()
    procs = [subprocess.Popen(cluster.cmd(f"h{r + 1}", sys.executable, script, "_ddp", r, job_path, out), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for r in (0, 1)]
    try:
        errs = [p.communicate(timeout=RUN_TIMEOUT_S)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    after = cluster.link_bytes()
    if any(p.returncode for p in procs):
        raise RuntimeError("DDP on 2 hosts failed: " + " | ".join(f"rank {r} exit {p.returncode}: {e[-1500:]}"
                                                                 for r, (p, e) in enumerate(zip(procs, errs))))
    return dict(rates=json.loads(out.read_text()), link_bytes=[a - b for a, b in zip(after, before)])


def ddp_worker(rank, job_path, out):
    """compare_torch.torch_worker as DDP rank RANK of 2, its process group from MASTER_ADDR/MASTER_PORT."""
    import torch.distributed as dist

    init = dist.init_process_group

    def env_init(backend, init_method=None, **kw):  # torch_worker names 127.0.0.1; the hosts are apart here
        return init(backend, init_method="env://", **kw)

    dist.init_process_group = env_init
    ct.torch_worker(rank, 2, json.loads(Path(job_path).read_text()), out)


# -- the benchmark ------------------------------------------------------------------------------------

def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import numpy
    import torch

    return dict(cpu=cpu, cpus=os.cpu_count(), mem_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                                             / 2 ** 30, 1),
                kernel=platform.release(), python=platform.python_version(), numpy=numpy.__version__,
                torch=torch.__version__, hosts="2 network namespaces on this one machine (they share its CPUs)")


def log(msg):
    print(f"netscale: {msg}", file=sys.stderr, flush=True)


def benchmark(args, cluster, workdir):
    from distnet import build
    from distnet import config as C

    cases = []  # (model, batch, warm-up, steps, layers, lr, params)
    for name in args.models:
        cfg = C.load(MODELS[name])
        layers, lr = cfg["model"]["layers"], cfg["optimizer"]["lr"]
        params = build.model(cfg, (1, 28, 28)).num_params
        theirs = sum(p.numel() for p in ct.torch_model(layers, (1, 28, 28)).parameters())
        if params != theirs:
            sys.exit(f"netscale: {name}: distnet has {params} parameters, the torch model {theirs}")
        for batch in args.batches:
            warm, steps = plan(name, batch)
            cases.append((name, batch, args.warmup or warm, args.steps or steps, layers, lr, params))

    def job(batch, warm, steps, layers, lr):
        return dict(data=str(Path(args.data).resolve()), layers=layers, lr=lr, batch=batch, seed=args.seed,
                    warmup=warm, steps=steps, repeats=args.repeats)

    single = {}
    for name, batch, warm, steps, layers, lr, _ in cases:
        d = ct.distnet_rates(MODELS[name], Path(args.data).resolve(), 1, batch, warm, steps, args.repeats, workdir,
                             args.seed)
        t = ct.torch_rates(job(batch, warm, steps, layers, lr), 1, workdir)
        single[name, batch] = (ct.summarize(d), ct.summarize(t))
        log(f"1 rank: {name} batch {batch}: distnet {single[name, batch][0]['median']:.0f}, "
            f"torch eager {single[name, batch][1]['median']:.0f} samples/s")

    rows, links, port = [], [], 29500
    for rate in args.rates:
        bps = rate_bps(rate)
        cluster.up(rate)
        try:
            probe = probe_link(cluster, bps)
            links.append(dict(rate=rate, nominal_gbit_s=bps / 1e9 if bps else None, probe_gbit_s=probe))
            log(f"link {rate}: up, one TCP stream h2->h1 moved {probe:.2f} Gbit/s")
            for name, batch, warm, steps, layers, lr, params in cases:
                d = distnet_two_hosts(cluster, MODELS[name], args.data, batch, warm, steps, args.repeats, workdir,
                                      args.seed)
                port += 1
                t = ddp_two_hosts(cluster, job(batch, warm, steps, layers, lr), workdir, port)
                d1, t1 = single[name, batch]
                ds, ts = ct.summarize(d["rates"]), ct.summarize(t["rates"])
                wire_bps = bps or probe * 1e9
                ar = allreduce_ms(params, wire_bps)
                step_ms = 1e3 * batch / ds["median"]
                total_steps = warm + steps * args.repeats
                row = dict(
                    model=name, preset=MODELS[name], batch=batch, per_rank_batch=batch // 2, rate=rate,
                    nominal_gbit_s=bps / 1e9 if bps else None, probe_gbit_s=probe, params=params,
                    grad_bytes=grad_bytes(params), warmup=warm, steps=steps, repeats=args.repeats,
                    distnet=dict(ds, one_rank=d1, efficiency=efficiency(ds["median"], d1["median"]), step_ms=step_ms,
                                 ms_compute=d["ms_compute"], ms_comm_rank0=d["ms_comm_rank0"],
                                 ms_phases=d["ms_phases"], ms_exposed_wait=d["ms_comm_last_arrival"],
                                 link_bytes=d["link_bytes"], link_bytes_per_step=sum(d["link_bytes"]) / total_steps,
                                 mpi_library=d["mpi_library"]),
                    ddp=dict(ts, one_rank=t1, efficiency=efficiency(ts["median"], t1["median"]),
                             step_ms=1e3 * batch / ts["median"], link_bytes=t["link_bytes"],
                             link_bytes_per_step=sum(t["link_bytes"]) / total_steps),
                    allreduce_ms=ar, allreduce_rate_from="nominal" if bps else "probe",
                    wait_vs_allreduce=d["ms_comm_last_arrival"] / ar,
                    wait_vs_compute=d["ms_comm_last_arrival"] / d["ms_compute"])
                rows.append(row)
                log(f"{rate} {name} batch {batch}: distnet {ds['median']:.0f} samples/s (eff "
                    f"{row['distnet']['efficiency']:.0%}, exposed wait {d['ms_comm_last_arrival']:.2f} ms, "
                    f"compute {d['ms_compute']:.2f} ms, allreduce {ar:.2f} ms), DDP {ts['median']:.0f} "
                    f"(eff {row['ddp']['efficiency']:.0%})")
        finally:
            cluster.down()
    return rows, links


def link_label(row):
    if row["nominal_gbit_s"] is None:
        return f"unshaped ({row['probe_gbit_s']:.1f})"
    return f"{row['rate']} ({row['probe_gbit_s']:.2f})"


def table(rows):
    head = ("model", "batch", "link (probe Gbit/s)", "distnet sps", "eff", "DDP sps", "eff", "compute ms",
            "wait ms", "bytes/rate ms", "wait/compute", "MB/step d|DDP")
    body = []
    for r in rows:
        d, t = r["distnet"], r["ddp"]
        body.append((r["model"], str(r["batch"]), link_label(r), f"{d['median']:,.0f} ±{d['spread']:.0%}",
                     f"{d['efficiency']:.0%}", f"{t['median']:,.0f} ±{t['spread']:.0%}", f"{t['efficiency']:.0%}",
                     f"{d['ms_compute']:.2f}", f"{d['ms_exposed_wait']:.2f}",
                     f"{r['allreduce_ms']:.2f}{'' if r['allreduce_rate_from'] == 'nominal' else '*'}",
                     f"{r['wait_vs_compute']:.2f}",
                     f"{d['link_bytes_per_step'] / 1e6:.2f}|{t['link_bytes_per_step'] / 1e6:.2f}"))
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
             for line in [head, tuple("-" * w for w in widths), *body]]
    return "\n".join(lines)


def one_rank_table(rows):
    base = {(r["model"], r["batch"]): (r["distnet"]["one_rank"]["median"], r["ddp"]["one_rank"]["median"])
            for r in rows}
    return "1 rank (eff's base), samples/s: " + "; ".join(
        f"{m} {b}: distnet {d:,.0f}, torch eager {t:,.0f}" for (m, b), (d, t) in base.items())


def footer(meta, links):
    m = meta["machine"]
    return "\n".join([
        "sps = samples/s, median of the timed segments (± = (max-min)/median); eff = sps / (2 x 1-rank sps) at the "
        "same global batch; 1 rank per host, 1 thread per process.",
        "compute ms = distnet rank 0's data+forward+backward+optimizer per step; wait ms = distnet's exposed "
        "communication wait (ms_comm_last_arrival_mean, the rank that arrived last); bytes/rate ms = one allreduce "
        "of 4 x params bytes at the link's rate (* = at the probed rate: unshaped); MB/step = bytes both hosts sent "
        "on their veth links per step (distnet | DDP), warm-up and start-up included.",
        "links: " + ", ".join(f"{lk['rate']}: probe {lk['probe_gbit_s']:.2f} Gbit/s" for lk in links),
        f"machine: {m['cpu']}, {m['cpus']} CPU(s), {m['mem_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, "
        f"NumPy {m['numpy']}, PyTorch {m['torch']}, {meta.get('mpi_library')}; {m['hosts']}; load average (1 min) "
        f"{meta['load_1min'][0]:.1f} at the start, {meta['load_1min'][1]:.1f} at the end",
    ])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_ddp":  # internal: one DDP rank on a namespace host
        ddp_worker(int(argv[1]), argv[2], argv[3])
        return 0
    if argv and argv[0] == "_probe-recv":
        probe_recv(int(argv[1]))
        return 0
    if argv and argv[0] == "_probe-send":
        probe_send(argv[1], int(argv[2]), int(argv[3]))
        return 0
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("netscale: PyTorch is not installed: pip install -e '.[torch]'", file=sys.stderr)
        return 2
    if not (Path(args.data) / "train").is_dir():
        print(f"netscale: no prepared data at {args.data}: distnet data prepare fashion-mnist --out {args.data}",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("netscale: must run as root (cluster/netns.sh makes network namespaces)", file=sys.stderr)
        return 2
    if args.json and args.json != "-":  # found now, not after minutes of measuring
        from distnet.errors import UserError
        from distnet.outputs import check_file

        try:
            check_file(args.json, "--json file", "--json", lambda p: b'"settings"' in Path(p).read_bytes()[:64])
        except UserError as e:
            print(f"netscale: {e}", file=sys.stderr)
            return 2
    os.environ.update(ct.THREAD_ENV)
    torch.set_num_threads(1)
    cluster = Cluster(args.prefix)

    def stop(signum, frame):
        raise SystemExit(128 + signum)  # so that the finally below removes the cluster

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    t0, load_start = time.time(), os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory(prefix="netscale-") as workdir:
            rows, links = benchmark(args, cluster, workdir)
    except RuntimeError as e:
        print(f"netscale: {e}", file=sys.stderr)
        return 1
    finally:
        cluster.down()
    meta = dict(machine=machine(), load_1min=[load_start, os.getloadavg()[0]], models=args.models,
                batches=args.batches, rates=args.rates, repeats=args.repeats, threads_per_process=1,
                wall_s=round(time.time() - t0, 1),
                mpi_library=rows[0]["distnet"]["mpi_library"] if rows else None,
                command=" ".join(["python", "launch/netscale.py", *argv]))
    result = {"settings": meta, "links": links, "rows": rows}
    if args.json and args.json != "-":
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.json == "-":
        print(json.dumps(result, indent=1))
    else:
        print(table(rows))
        print(one_rank_table(rows))
        print(footer(meta, links))
        print(f"wall time {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
