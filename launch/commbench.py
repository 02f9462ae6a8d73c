#!/usr/bin/env python3
"""Time to accuracy over a slow link: distnet's gradient-sync strategies and PyTorch DDP's comm hooks, full
training runs on 2 namespace hosts.

    python launch/commbench.py [--rates 1gbit] [--preset fashion-mlp] [--epochs N] [--target 0.88]
                               [--strategies bucketed,zero,fp16,bf16,powersgd] [--ddp none,fp16,powersgd]
                               [--powersgd-rank 4] [--json [FILE]]

Needs root (cluster/netns.sh), the MPICH wheel's mpiexec and PyTorch. For each rate, hosts h1 and h2 (prefix
--prefix) come up with every link shaped to it, and each run trains the preset's whole schedule (its epochs,
global batch, Adam and cosine schedule) with 1 rank on each host, evaluating on the test split at every epoch
end:
  distnet   distnet train PRESET --set comm.sync=S, launched as launch/netscale.py does (hydra over ssh into
            the namespaces, UCX_TLS=tcp,self)
  DDP       torch DistributedDataParallel, gloo, the same model, data order, Adam and cosine schedule, with
            no hook, DDP's fp16_compress_hook, or its powerSGD_hook (rank --powersgd-rank, error feedback,
            warm-started, start_powerSGD_iter = comm.powersgd_warmup's default); rank 0 evaluates the test
            split at epoch ends while rank 1 waits
Reported: samples/s (training windows only), time to --target test accuracy (seconds from the start of
training to the end of the first evaluation that reaches it, evaluations and all), the final accuracy, and the
bytes both hosts sent on their veth links per step. One run per row: time to accuracy is one trajectory,
so rows are single measurements on a shared machine (1 thread per process; the hosts share its cores).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import compare_torch as ct  # noqa: E402
import netscale as ns  # noqa: E402

STRATEGIES = ("bucketed", "flat", "zero", "fp16", "bf16", "powersgd")
HOOKS = ("none", "fp16", "powersgd")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="1gbit", help="link rates (tc syntax) or 'none', comma-separated")
    ap.add_argument("--preset", default="fashion-mlp")
    ap.add_argument("--epochs", type=int, default=0, help="epochs (default: the preset's)")
    ap.add_argument("--target", type=float, default=0.88, help="test accuracy to reach (default 0.88)")
    ap.add_argument("--strategies", default="bucketed,zero,fp16,bf16,powersgd", help="distnet comm.sync values")
    ap.add_argument("--ddp", default="none,fp16,powersgd", help="DDP comm hooks: none, fp16, powersgd ('' = no DDP)")
    ap.add_argument("--powersgd-rank", type=int, default=4)
    ap.add_argument("--data", default=str(ns.ROOT / "data" / "fashion-mnist"))
    ap.add_argument("--prefix", default="ncb", help="namespace prefix (not 'dn')")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a config override for every distnet run (repeatable), e.g. log.profile=true to "
                         "record the step-time breakdown in each row")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE")
    args = ap.parse_args(argv)
    args.rates = [r for r in args.rates.split(",") if r]
    args.strategies = [s for s in args.strategies.split(",") if s]
    args.ddp = [h for h in args.ddp.split(",") if h]
    for r in args.rates:
        try:
            ns.rate_bps(r)
        except ValueError as e:
            ap.error(f"--rates: {e}")
    if set(args.strategies) - set(STRATEGIES) or set(args.ddp) - set(HOOKS):
        ap.error(f"--strategies from {', '.join(STRATEGIES)}; --ddp from {', '.join(HOOKS)}")
    if not 0 < args.target < 1 or args.powersgd_rank < 1 or args.prefix == "dn":
        ap.error("--target in (0, 1), --powersgd-rank >= 1, --prefix not 'dn'")
    return args


def time_to(evals, target):
    """Seconds to the first (seconds, accuracy) at or above TARGET; None if never."""
    return next((t for t, acc in evals if acc >= target), None)


def measure(run, target, **row):
    """One row of the table: ``row`` plus what ``run()`` measured, or its ``error`` when it failed (a failed run
    is a row: the runs after it still run, and the JSON keeps them all)."""
    try:
        r = run()
    except RuntimeError as e:
        return dict(row, error=str(e))
    return dict(row, **r, time_to_target_s=time_to(r["evals"], target), final_accuracy=r["evals"][-1][1],
                mb_per_step=r["link_bytes"] / r["steps"] / 1e6)


def report_line(row, target):
    """The row's one-line report."""
    if "error" in row:
        return "failed: " + row["error"][-300:].replace("\n", " | ")
    tt = row["time_to_target_s"]
    return (f"{row['samples_per_s']:,.0f} samples/s, {target:.0%} at {'never' if tt is None else f'{tt:.1f} s'}, "
            f"final {row['final_accuracy']:.4f}, {row['mb_per_step']:.3f} MB/step")


def distnet_run(cluster, args, sync, workdir):
    metrics = Path(workdir) / f"distnet-{sync}.jsonl"
    cmd = cluster.cmd("h1", ct.mpiexec(), "-launcher", "ssh", "-launcher-exec", ns.NSSSH, "-localhost",
                      cluster.addr("h1"), "-hosts", "h1,h2", "-n", "2", sys.executable, "-m", "distnet", "train",
                      args.preset, "--data", Path(args.data).resolve(), "--set", f"comm.sync={sync}",
                      "--set", f"comm.powersgd_rank={args.powersgd_rank}", "--set", "train.log_every=50",
                      *(["--epochs", args.epochs] if args.epochs else []),
                      *[a for kv in args.set for a in ("--set", kv)], "--metrics", metrics, "--quiet")
    before = cluster.link_bytes()
    r = subprocess.run(cmd, env=ns.thread_env(dict(cluster.env, UCX_TLS="tcp,self")), capture_output=True,
                       text=True, timeout=ns.RUN_TIMEOUT_S, cwd=ns.ROOT)
    sent = sum(a - b for a, b in zip(cluster.link_bytes(), before))
    if r.returncode:
        raise RuntimeError(f"distnet comm.sync={sync} failed (exit {r.returncode}): {r.stderr[-1500:]}")
    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    t0 = next(m for m in recs if m["event"] == "start")["time"]
    evals = [(m["time"] - t0, m["accuracy"]) for m in recs if m["event"] == "eval" and m["split"] == "test"]
    sps = [m["samples_per_s"] for m in recs if m["event"] == "train" and m.get("samples_per_s")]
    summary = next(m for m in recs if m["event"] == "summary")
    phases = {k: v for k, v in summary.items() if k.startswith("ms_") and k.endswith("_mean")}  # log.profile
    return dict(samples_per_s=sorted(sps)[len(sps) // 2], evals=evals, steps=summary["steps"], link_bytes=sent,
                **({"phases_ms": phases} if phases else {}))


def ddp_run(cluster, args, hook, workdir, port):
    from distnet import config as C

    cfg = C.load(args.preset)
    job = dict(data=str(Path(args.data).resolve()), layers=cfg["model"]["layers"], lr=cfg["optimizer"]["lr"],
               min_lr=cfg["schedule"].get("min_lr", 0.0), batch=cfg["train"]["batch_size"],
               epochs=args.epochs or cfg["train"]["epochs"], seed=cfg["train"]["seed"], hook=hook,
               rank=args.powersgd_rank, warmup=C.defaults()["comm"]["powersgd_warmup"],
               warmup_steps=cfg["schedule"].get("warmup_steps", 0))
    job_path, out = Path(workdir) / f"ddp-{hook}.json", Path(workdir) / f"ddp-{hook}.out.json"
    job_path.write_text(json.dumps(job))
    env = ns.thread_env(dict(cluster.env, MASTER_ADDR=cluster.addr("h1"), MASTER_PORT=str(port),
                             GLOO_SOCKET_IFNAME="eth0"))
    before = cluster.link_bytes()
    procs = [subprocess.Popen(cluster.cmd(f"h{r + 1}", sys.executable, __file__, "_ddp", r, job_path, out), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ns.ROOT) for r in (0, 1)]
    try:
        errs = [p.communicate(timeout=ns.RUN_TIMEOUT_S)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    sent = sum(a - b for a, b in zip(cluster.link_bytes(), before))
    if any(p.returncode for p in procs):
        raise RuntimeError(f"DDP hook {hook} failed: " + " | ".join(e[-1500:] for e in errs))
    return dict(json.loads(out.read_text()), link_bytes=sent)


def ddp_worker(rank, job_path, out_path):
    """One DDP rank of 2 (gloo, env://): the preset's schedule with per-epoch test evaluation on rank 0."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    x, y = (torch.from_numpy(a) for a in ct.load_train(job["data"]))
    xt, yt = (torch.from_numpy(a) for a in ct.load_train(job["data"], "test"))
    torch.manual_seed(job["seed"])
    model = ct.torch_model(job["layers"], x.shape[1:])
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=2)
    model = torch.nn.parallel.DistributedDataParallel(model)
    if job["hook"] == "fp16":
        model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif job["hook"] == "powersgd":
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=job["rank"],
                                            start_powerSGD_iter=max(2, job["warmup"]), use_error_feedback=True,
                                            warm_start=True)
        model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    batch, per = job["batch"], job["batch"] // 2
    steps = len(y) // batch
    opt = torch.optim.Adam(model.parameters(), lr=job["lr"])
    total, warm, lr, low = steps * job["epochs"], job.get("warmup_steps", 0), job["lr"], job["min_lr"]

    def factor(t):  # distnet's cosine schedule, after its linear warm-up from 0 to the cosine's value at warm
        cosine = lambda u: (low + (lr - low) * (1 + math.cos(math.pi * min(u, total) / total)) / 2) / lr  # noqa: E731
        return cosine(warm) * t / warm if t < warm else cosine(t)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    evals, train_s = [], 0.0
    dist.barrier()
    t0 = time.perf_counter()
    for epoch in range(job["epochs"]):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(job["seed"] * 7919 + epoch))
        t = time.perf_counter()
        for s in range(steps):
            idx = order[s * batch + rank * per: s * batch + (rank + 1) * per]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
        train_s += time.perf_counter() - t
        if rank == 0:  # in evaluation mode (dropout off, batch norm's running statistics), 1,000 at a time
            model.eval()
            with torch.no_grad():
                right = sum(int((model.module(xt[i:i + 1000]).argmax(1) == yt[i:i + 1000]).sum())
                            for i in range(0, len(yt), 1000))
            model.train()
            evals.append((time.perf_counter() - t0, right / len(yt)))
        dist.barrier()
    if rank == 0:
        Path(out_path).write_text(json.dumps(dict(samples_per_s=steps * batch * job["epochs"] / train_s, evals=evals,
                                                  steps=steps * job["epochs"])))
    dist.destroy_process_group()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_ddp":
        ddp_worker(int(argv[1]), argv[2], argv[3])
        return 0
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("commbench: must run as root (cluster/netns.sh makes network namespaces)", file=sys.stderr)
        return 2
    if args.ddp:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("commbench: PyTorch is not installed: pip install -e '.[torch]'", file=sys.stderr)
            return 2
    os.environ.update(ct.THREAD_ENV)
    cluster, rows, port = ns.Cluster(args.prefix), [], 29600
    t_start, load0 = time.time(), os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory(prefix="commbench-") as workdir:
            for rate in args.rates:
                cluster.up(rate)
                try:
                    probe = ns.probe_link(cluster, ns.rate_bps(rate))
                    runs = [("distnet", s) for s in args.strategies] + [("DDP", h) for h in args.ddp]
                    for who, what in runs:
                        port += 1
                        run = (lambda w=what: distnet_run(cluster, args, w, workdir)) if who == "distnet" else \
                            (lambda w=what, p=port: ddp_run(cluster, args, w, workdir, p))
                        row = measure(run, args.target, rate=rate, probe_gbit_s=probe, who=who, sync=what)
                        rows.append(row)
                        print(f"commbench: {rate} {who} {what}: {report_line(row, args.target)}", file=sys.stderr,
                              flush=True)
                finally:
                    cluster.down()
    except RuntimeError as e:
        print(f"commbench: {e}", file=sys.stderr)
        return 1
    finally:
        cluster.down()
    result = dict(settings=dict(preset=args.preset, target=args.target, powersgd_rank=args.powersgd_rank,
                                load_1min=[load0, os.getloadavg()[0]], wall_s=round(time.time() - t_start, 1),
                                command=" ".join(["python", "launch/commbench.py", *argv])), rows=rows)
    if args.json and args.json != "-":
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.json == "-":
        print(json.dumps(result, indent=1))
        return 0
    print(f"{'rate':8} {'run':18} {'samples/s':>10} {'to ' + format(args.target, '.0%'):>8} {'final':>7} "
          f"{'MB/step':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['rate']:8} {r['who'] + ' ' + r['sync']:18} failed: "
                  f"{' | '.join(x for x in r['error'].splitlines() if x.strip())[:160]}")
            continue
        tt = "never" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f} s"
        print(f"{r['rate']:8} {r['who'] + ' ' + r['sync']:18} {r['samples_per_s']:>10,.0f} {tt:>8} "
              f"{r['final_accuracy']:>7.4f} {r['mb_per_step']:>8.3f}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
