#!/usr/bin/env python3
"""Validate the step-time model (distnet calibrate + distnet plan) against runs on namespace hosts.

    python launch/scalecheck.py [--data data/fashion-mnist] [--json FILE] [--sweep DIR] [--prefix sck]

Needs root (cluster/netns.sh) and the MPICH wheel's mpiexec. One rank per host, every process 1 thread:
 1. hosts h1..h4 with every link shaped to 1 Gbit/s; `distnet calibrate` of fashion-mlp and fashion-cnn on
    h1, h2 (the only calibration: everything below is predicted from it);
 2. for each row, the model's samples/s (its StepModel, as `distnet plan` computes them; at 100 Mbit/s the
    calibrated bandwidth between hosts replaced by the rate, as `distnet plan --link 100mbit`), then the measured
    samples/s of `distnet bench train` (the real loop) on that many hosts: fashion-mlp at global batch 128 and
    1024 on 2, 3 and 4 hosts at 1 Gbit/s and at 100 Mbit/s (on 3 hosts the nearest multiples of 3, 129 and
    1023), fashion-cnn at 128 on 2 hosts at 1 Gbit/s;
 3. with --sweep DIR (a fashion-mlp sweep's folder), time to its target at two of its batch sizes on 2 hosts
    at 1 Gbit/s: predicted (the sweep's steps x the predicted step) against a real `distnet train` to the
    target (its wall time to the evaluation that reached it, evaluations included).
The hosts are namespaces of this one machine: they share its cores, so 3 and 4 hosts run 3 and 4 ranks on 2
cores, which no prediction for real nodes assumes; the table says which rows that touches. The cluster is
removed at the end (also on failure or SIGTERM).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import netscale as ns  # noqa: E402  (launch/netscale.py: the namespace cluster and its helpers)

MODELS = {"mlp": "fashion-mlp", "cnn": "fashion-cnn"}
CAL_RATE = "1gbit"
ROWS = [("mlp", b, h, r) for r in ("1gbit", "100mbit") for b in (128, 1024) for h in (2, 3, 4)] + \
       [("cnn", 128, 2, "1gbit")]
# measured steps and warm-up per model (the CNN costs ~30x the MLP per sample)
STEPS = {"mlp": (60, 10), "cnn": (12, 3)}
GOAL = 0.20


class Cluster(ns.Cluster):
    """netscale's cluster with N hosts."""

    def up(self, rate, n=4):
        if self.is_up():
            raise RuntimeError(f"a cluster with prefix {self.prefix!r} is already up: pick another --prefix")
        self.started = True
        self.sh("up", str(n), "--rate", rate, timeout=120)

    def mpiexec(self, hosts, *argv):
        """The command line that runs ``argv`` with one rank on each of ``hosts`` (from h1)."""
        names = ",".join(f"h{i}" for i in range(1, hosts + 1))
        return self.cmd("h1", ns.ct.mpiexec(), "-launcher", "ssh", "-launcher-exec", ns.NSSSH, "-localhost",
                        self.addr("h1"), "-hosts", names, "-n", str(hosts), *map(str, argv))

    def run(self, hosts, *argv, timeout=900):
        r = subprocess.run(self.mpiexec(hosts, *argv), env=ns.thread_env(dict(self.env, UCX_TLS="tcp,self")),
                           capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if r.returncode:
            raise RuntimeError(f"{' '.join(map(str, argv[:4]))} on {hosts} hosts failed (exit {r.returncode}): "
                               f"{r.stderr.strip()[-1500:]}")
        return r.stdout


def log(msg):
    print(f"[scalecheck {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def calibrate(cluster, model, data, workdir):
    out = Path(workdir) / f"cal-{model}.json"
    t = time.perf_counter()
    cluster.run(2, sys.executable, "-m", "distnet", "calibrate", MODELS[model], "--data", data, "--out", out)
    log(f"calibrated {model} on 2 hosts in {time.perf_counter() - t:.0f} s")
    return out


def predicted(cal_path, model, batch, hosts, rate):
    from distnet.scale import model as M

    link = None if rate == CAL_RATE else M.parse_link(rate)
    sm = M.StepModel([M.load(cal_path)], sync="bucketed", link=link)
    return sm.step(hosts, 1, batch)


def measured(cluster, model, batch, hosts, data):
    steps, warm = STEPS[model]
    out = cluster.run(hosts, sys.executable, "-m", "distnet", "bench", "train", MODELS[model], "--data", data,
                      "--batch-size", batch, "--steps", steps, "--warmup", warm, "--no-baseline", "--json",
                      "--reps", 10, "--set", 'comm.sync="bucketed"')
    return json.loads(out.strip().splitlines()[-1])


def time_to_target(cluster, cal_path, sweep, batches, data, workdir):
    """Predicted and measured time to the sweep's target on 2 hosts at its best rate for each batch."""
    from distnet.scale import model as M
    from distnet.scale.plan import Steps
    from distnet.sweep import plan as SP

    plan = SP.load(sweep)
    steps = Steps(sweep)
    sm = M.StepModel([M.load(cal_path)], sync="bucketed")
    rows = []
    for batch in batches:
        point = next(p for p in plan.points if p.batch == batch and p.lr_mult == 1)
        metrics = Path(workdir) / f"ttt-{batch}.jsonl"
        args = [a if a != f"{point.name}/metrics.jsonl" else str(metrics) for a in point.args]
        args = [str(Path(sweep).resolve() / a) if a == "config.toml" else a for a in args]
        i = args.index("--checkpoint-dir")
        args[i + 1] = str(Path(workdir) / f"ckpt-{batch}")
        t = time.perf_counter()
        cluster.run(2, sys.executable, "-m", "distnet", *args, "--set", 'comm.sync="bucketed"')
        from distnet import config as C
        from distnet.metrics import elapsed, read_records

        records, segments = read_records(metrics)
        target = C.parse_target(plan.target)
        hit = next((r for r in records if r["event"] == "eval" and r.get("split") == plan.split
                    and C.target_reached(target, r["loss"], r["accuracy"])), None)
        if hit is None:
            raise RuntimeError(f"the 2-host run at batch {batch} did not reach {plan.target}")
        from_start = next(w for r, w in zip(records, elapsed(records, segments)) if r is hit)
        # the run stopped at the target: its loop's wall time (start-up, the data read into memory, left out as
        # the prediction leaves it out), less what it spent off the clock (its evaluations, its last checkpoint)
        summary = next(r for r in records if r["event"] == "summary")
        wall, evals = summary["wall_s"], summary.get("off_clock_s") or 0.0
        step = sm.step(2, 1, batch)
        pred = steps(batch) * step["step_ms"] / 1e3
        rows.append(dict(batch=batch, lr=point.lr, steps_sweep=steps(batch), steps_run=hit["step"],
                         predicted_s=pred, measured_s=wall, eval_s=evals, from_start_s=from_start,
                         run_s=time.perf_counter() - t,
                         error=pred / (wall - evals) - 1))
        log(f"time to {plan.target} at {batch} on 2 hosts: predicted {pred:.2f} s, measured {wall:.2f} s")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"))
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON too")
    ap.add_argument("--sweep", metavar="DIR", help="a fashion-mlp sweep folder: also time to its target")
    ap.add_argument("--ttt-batches", default="256,1024", help="the sweep's batch sizes to run to the target")
    ap.add_argument("--only", choices=["mlp", "cnn"], help="only this model's rows")
    ap.add_argument("--prefix", default="sck", help="namespace prefix (default sck)")
    ap.add_argument("--cal-dir", metavar="DIR", help="also keep the calibration files there "
                    "(<config>-2hosts-1gbit.json)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("scalecheck: must run as root (cluster/netns.sh makes network namespaces)", file=sys.stderr)
        return 2
    if not (Path(args.data) / "train").is_dir():
        print(f"scalecheck: no prepared data at {args.data}: distnet data prepare fashion-mnist --out {args.data}",
              file=sys.stderr)
        return 2
    data = str(Path(args.data).resolve())
    cluster = Cluster(args.prefix)

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    rows, ttt, cals = [], [], {}
    t0 = time.time()
    rates = sorted({r for *_, r in ROWS}, key=lambda r: r != CAL_RATE)
    try:
        with tempfile.TemporaryDirectory(prefix="scalecheck-") as workdir:
            for rate in rates:
                cluster.up(rate)
                try:
                    if rate == CAL_RATE:
                        for m in ("mlp", "cnn"):
                            if not args.only or args.only == m:
                                cals[m] = calibrate(cluster, m, data, workdir)
                                cals[m + "_json"] = json.loads(cals[m].read_text())
                                if args.cal_dir:
                                    Path(args.cal_dir).mkdir(parents=True, exist_ok=True)
                                    keep = Path(args.cal_dir) / f"{MODELS[m]}-2hosts-{CAL_RATE}.json"
                                    keep.write_text(cals[m].read_text())
                    for model, batch, hosts, r in ROWS:
                        if r != rate or (args.only and args.only != model):
                            continue
                        batch = round(batch / hosts) * hosts  # 3 hosts: 129 and 1023, the nearest multiples
                        p = predicted(cals[model], model, batch, hosts, rate)
                        m = measured(cluster, model, batch, hosts, data)
                        row = dict(model=model, batch=batch, hosts=hosts, rate=rate,
                                   predicted=p["samples_per_s"], measured=m["samples_per_s"],
                                   error=p["samples_per_s"] / m["samples_per_s"] - 1, parts=p,
                                   measured_phases=m["phases_ms"], measured_last_arrival_ms=m["comm_last_arrival_ms"])
                        rows.append(row)
                        log(f"{model} B={batch} {hosts} hosts {rate}: predicted {row['predicted']:,.0f}, measured "
                            f"{row['measured']:,.0f} samples/s ({100 * row['error']:+.0f} %); predicted step "
                            f"{p['step_ms']:.2f} ms (compute {p['compute_ms']:.2f}, exposed {p['exposed_ms']:.2f}), "
                            f"measured phases {json.dumps({k: round(v, 2) for k, v in m['phases_ms'].items()})}")
                    if rate == CAL_RATE and args.sweep and "mlp" in cals:
                        ttt = time_to_target(cluster, cals["mlp"], args.sweep,
                                             [int(b) for b in args.ttt_batches.split(",")], data, workdir)
                finally:
                    cluster.down()
    except RuntimeError as e:
        print(f"scalecheck: {e}", file=sys.stderr)
        return 1
    finally:
        cluster.down()
    result = {"settings": {"command": " ".join(["python", "launch/scalecheck.py", *(argv or sys.argv[1:])]),
                           "wall_s": round(time.time() - t0), "machine": _machine(),
                           "calibrations": {k: v for k, v in cals.items() if k.endswith("_json")}},
              "rows": rows, "time_to_target": ttt}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows, ttt))
    return 0


def _machine():
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def table(rows, ttt):
    out = ["| model | global batch | hosts | link | predicted samples/s | measured samples/s | error |",
           "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        mark = "" if abs(r["error"]) <= GOAL else " ✗"
        out.append(f"| {MODELS[r['model']]} | {r['batch']:,} | {r['hosts']} | {r['rate']} | {r['predicted']:,.0f} "
                   f"| {r['measured']:,.0f} | {100 * r['error']:+.0f} %{mark} |")
    if ttt:
        out += ["", "| global batch (2 hosts, 1 Gbit/s) | steps: sweep, run | predicted s | measured s: training "
                "(+ evaluations) | error |", "|---:|---:|---:|---:|---:|"]
        for r in ttt:
            out.append(f"| {r['batch']:,} | {r['steps_sweep']:,.0f}, {r['steps_run']:,} | {r['predicted_s']:.2f} "
                       f"| {r['measured_s'] - r['eval_s']:.2f} (+ {r['eval_s']:.2f}) | {100 * r['error']:+.0f} % |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
