"""``distnet plan CONFIG --calibration cal.json [--sweep DIR] --nodes 1,2,4,...,1024 --ranks-per-node R``:
how many nodes and which global batch reach the target soonest, and what it costs in node-hours.

For each (nodes, global batch) the step-time model (``model.py``) predicts the step from the calibration;
with a batch-size sweep, its steps to the target (measured steps interpolated log-log, the fit
S = S_min (1 + B_crit / B) outside them) turn steps into time to target and node-hours. The output names the
fastest and the cheapest point, and the node count past which more nodes stop paying (no larger count saves a
fifth of the time), and why: the network (with a free network more nodes would still pay) or the critical batch
(with perfect batch scaling they would).
"""

import json
import math
import sys

from .. import config as C
from ..errors import UserError
from . import model as M

STOP_GAIN = 1.25  # more nodes "pay" while some larger node count cuts the time to target by at least 1/5
DEFAULT_BATCHES = "32,64,...,65536"


def add_arguments(p):
    p.add_argument("config", metavar="CONFIG_OR_PRESET", help="the config the calibration measured")
    p.add_argument("--calibration", action="append", required=True, metavar="FILE",
                   help="a distnet calibrate file (repeat: the first gives compute and the strategy, later ones "
                        "fill in network levels the first did not measure, e.g. between hosts)")
    p.add_argument("--sweep", metavar="DIR", help="a distnet sweep folder of this config: steps to the target")
    p.add_argument("--nodes", default="1,2,...,1024", metavar="N,N,...",
                   help="node counts, a list or a doubling run (default 1,2,...,1024)")
    p.add_argument("--ranks-per-node", default="1", metavar="R", help="ranks on each node (default 1)")
    p.add_argument("--batch-sizes", metavar="B,B,...",
                   help=f"global batches (default: the sweep's, else {DEFAULT_BATCHES})")
    p.add_argument("--link", metavar="RATE", help=f"bandwidth between nodes instead of the calibrated one: "
                   f"{M.LINK_FORMS}")
    p.add_argument("--latency", metavar="TIME", help="latency between nodes, e.g. 30us (default: calibrated, else "
                   f"{M.DEFAULT_LATENCY_S * 1e6:g}us with --link)")
    p.add_argument("--sync", default="auto", metavar="STRATEGY",
                   help=f"gradient sync to model: {', '.join(M.STRATEGIES)} (default auto: shm on one node when "
                        "calibrated with it, else bucketed)")
    p.add_argument("--data", metavar="DIR", help="prepared dataset folder (for the input shape; default: the "
                   "config's dataset)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="as in distnet train")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--out", metavar="PLAN.png", help="also draw the plan (matplotlib, the plot extra)")


def parse_counts(text, option):
    """``"1,2,4"`` or a doubling run ``"1,2,...,1024"`` of positive integers, ascending and distinct."""
    from ..sweep.plan import parse_run

    what = "node counts" if option == "--nodes" else "global batch sizes"
    return parse_run(text, option, what, "1,2,4" if option == "--nodes" else "256,1024",
                     "1,2,...,64" if option == "--nodes" else "32,64,...,8192")


def _input_shape(cfg):
    from pathlib import Path

    from ..data import catalog, open_dataset

    path = Path(C.data_path(cfg))
    if path.exists():
        try:
            return tuple(open_dataset(path)["train"].input_shape)
        except UserError:
            pass
    if cfg["data"]["dataset"]:
        return tuple(catalog.get(cfg["data"]["dataset"])["input_shape"])
    raise UserError(f"dataset folder {path} does not exist and the config names no catalog dataset: pass --data DIR "
                    "(for the model's input shape)")


def _model_signature(cfg):
    from .. import build

    model = build.model(cfg, _input_shape(cfg))
    return model.num_params, M.signature(model)


class Steps:
    """Steps to the target at a global batch, from a sweep: its measured points (best learning rate, mean over
    seeds) interpolated log-log, its fit outside them."""

    def __init__(self, folder):
        from ..sweep.report import steps_fit

        self.folder = folder
        self.fit, per_batch = steps_fit(folder)
        pts = sorted((d["batch"], d["steps_to_target"]) for d in per_batch if d.get("steps_to_target"))
        if len(pts) < 2 or self.fit is None:
            raise UserError(f"sweep {folder} has {len(pts)} batch size(s) that reached its target: plan needs at "
                            "least 2 for a fit; run the sweep over more batch sizes (or a longer --epochs cap)")
        self.batches, self.steps = [b for b, _ in pts], [s for _, s in pts]

    def __call__(self, batch):
        if self.batches[0] <= batch <= self.batches[-1]:
            return M.interpolate(self.batches, self.steps, batch)
        return self.fit.steps(batch)

    def perfect(self, batch):
        """Steps if batches scaled perfectly from the smallest measured one (the critical batch removed)."""
        return self.steps[0] * self.batches[0] / batch


def predict(sm, nodes, per_node, batches, steps=None):
    """Every (nodes, batch) row; and the notes about left-out points."""
    rows, skipped = [], []
    for n in nodes:
        for b in batches:
            r = sm.step(n, per_node, b)
            if r is None:
                skipped.append((n, b))
                continue
            one = sm.single(b)
            r["efficiency"] = one["step_ms"] / (r["ranks"] * r["step_ms"])
            if steps is not None:
                s = steps(b)
                r["steps"] = s
                r["time_s"] = s * r["step_ms"] / 1e3
                r["node_hours"] = n * r["time_s"] / 3600
            rows.append(r)
    notes = []
    if skipped:
        ex = ", ".join(f"{b} on {n * per_node}" for n, b in skipped[:4])
        notes.append(f"left out {len(skipped)} point(s) whose global batch is not a multiple of the rank count "
                     f"(batch on ranks: {ex}{', ...' if len(skipped) > 4 else ''})")
    return rows, notes


def _best_per_node(rows):
    best = {}
    for r in rows:
        if r["nodes"] not in best or r["time_s"] < best[r["nodes"]]["time_s"]:
            best[r["nodes"]] = r
    return [best[n] for n in sorted(best)]


def scaling_limit(sm, rows, per_node, steps):
    """(node count past which more nodes stop paying, the reason) from the best batch per node count."""
    best = _best_per_node(rows)
    for i, a in enumerate(best[:-1]):
        # past a, every larger node count together saves less than 1/5: the next step up (b) tells why
        b = best[i + 1]
        if a["time_s"] / min(r["time_s"] for r in best[i + 1:]) >= STOP_GAIN:
            continue
        gain = a["time_s"] / min(r["time_s"] for r in best[i + 1:])
        nodes = (a["nodes"], b["nodes"])
        batches = sorted({r["batch"] for r in rows})

        def best_time(n, free_network=False, perfect=False, batches=batches):
            ts = []
            for bb in batches:
                r = sm.step(n, per_node, bb)
                if r is None:
                    continue
                ms = r["step_ms"] - (r["exposed_ms"] if free_network else 0.0)
                ts.append((steps.perfect(bb) if perfect else steps(bb)) * ms)
            return min(ts)

        net = best_time(nodes[0], free_network=True) / best_time(nodes[1], free_network=True) >= STOP_GAIN
        crit = best_time(nodes[0], perfect=True) / best_time(nodes[1], perfect=True) >= STOP_GAIN
        b_crit = steps.fit.b_crit
        why = {(True, False): "the network: with communication free, more nodes would still pay",
               (False, True): f"the critical batch (B_crit about {b_crit:,.0f}): batches past it buy few steps, "
                              "and smaller ones leave each rank too little work",
               (True, True): "both: with a free network or with perfect batch scaling more nodes would still pay",
               (False, False): "per-rank overheads: even with a free network and perfect batch scaling, each "
                               "rank's share of the batch is too small to pay"}[(net, crit)]
        return a["nodes"], why, gain
    return None, None, None


def check_args(args):
    """Every check of the command line before any work (reading the calibration and sweep files aside):
    (node counts, ranks per node, link rate, latency, the validated config)."""
    nodes = parse_counts(args.nodes, "--nodes")
    text = str(args.ranks_per_node).strip()
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--ranks-per-node {args.ranks_per_node!r}: give one positive integer, e.g. 32")
    link = M.parse_link(args.link) if args.link else None
    latency = M.parse_latency(args.latency) if args.latency else None
    for flag, value in (("--link", link), ("--latency", latency)):
        if value is not None and not math.isfinite(value):
            raise UserError(f"{flag} {getattr(args, flag[2:])!r}: give a finite value")
    if args.sync not in M.STRATEGIES:
        hint = " (its messages depend on the matrices and the rank; not modelled yet)" if args.sync == "powersgd" \
            else ""
        raise UserError(f"--sync {args.sync}{hint}: plan models {', '.join(M.STRATEGIES)}")
    if args.batch_sizes:
        parse_counts(args.batch_sizes, "--batch-sizes")
    if args.out:
        from ..outputs import check_figure

        check_figure(args.out)
    flags = [(f"--data {args.data}", {"data": {"path": args.data}})] if args.data else []
    return nodes, int(text), link, latency, C.load(args.config, args.set, flags)


def run(args):
    nodes, per_node, link, latency, cfg = check_args(args)
    cals = [M.load(path) for path in args.calibration]
    params, layers = _model_signature(cfg)
    for cal in cals:
        M.check_model(cal, params, layers)
    sm = M.StepModel(cals, sync=args.sync, link=link, latency=latency)
    steps = Steps(args.sweep) if args.sweep else None
    batches = parse_counts(args.batch_sizes, "--batch-sizes") if args.batch_sizes else \
        (sorted(set(steps.batches) | {b for b in parse_counts(DEFAULT_BATCHES, "") if b > steps.batches[-1]})
         if steps else parse_counts(DEFAULT_BATCHES, ""))
    rows, notes = predict(sm, nodes, per_node, batches, steps)
    if not rows:
        raise UserError(f"no (nodes, batch) point left: every global batch in {batches[0]}..{batches[-1]} is smaller "
                        "than or not a multiple of the rank count; give --batch-sizes that are")
    out = {"config": args.config, "calibrations": [c["path"] for c in cals], "ranks_per_node": per_node,
           "sync": args.sync, "assumptions": sm.assumptions(), "notes": notes, "rows": rows}
    if steps is not None:
        fastest = min(rows, key=lambda r: r["time_s"])
        cheapest = min(rows, key=lambda r: (r["node_hours"], r["time_s"]))
        limit, why, gain = scaling_limit(sm, rows, per_node, steps)
        f = steps.fit
        out.update(sweep=args.sweep, fit={"s_min": f.s_min, "e_min": f.e_min, "b_crit": f.b_crit, "rms_rel": f.rms_rel},
                   fastest=fastest, cheapest=cheapest, stop_paying={"nodes": limit, "why": why, "gain": gain},
                   best_per_node=_best_per_node(rows))
    if args.out:
        from .figures import draw

        out["figure"] = str(draw(out, args.out))
    if args.json:
        print(json.dumps(_finite(out), allow_nan=False))
    else:
        print_plan(out, steps is not None)
    return 0


def _finite(v):
    """``v`` with every non-finite float as None (B_crit is infinite under perfect scaling): JSON has no inf."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _t(seconds):
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def print_plan(out, with_sweep, file=None):
    def say(text=""):
        print(text, file=file or sys.stdout)

    say(f"distnet plan {out['config']}: {out['ranks_per_node']} rank(s) per node, sync {out['sync']} "
        "(a prediction from the calibration, not a measurement)")
    say("assumptions:")
    for a in out["assumptions"]:
        say(f"  - {a}")
    head = f"{'nodes':>6} {'ranks':>6} {'batch':>7} {'b/rank':>7} {'compute':>8} {'comm':>8} {'exposed':>8} " \
           f"{'optim':>7} {'step ms':>8} {'samples/s':>11} {'eff':>5}"
    if with_sweep:
        head += f" {'steps':>8} {'time':>9} {'node-h':>9}"
    say(head)
    last = None
    for r in out["rows"]:
        if last is not None and r["nodes"] != last:
            say()
        last = r["nodes"]
        line = (f"{r['nodes']:>6} {r['ranks']:>6} {r['batch']:>7} {r['per_rank']:>7} {r['compute_ms']:>8.3f} "
                f"{r['comm_ms']:>8.3f} {r['exposed_ms']:>8.3f} {r['optimizer_ms']:>7.3f} {r['step_ms']:>8.3f} "
                f"{r['samples_per_s']:>11,.0f} {100 * r['efficiency']:>4.0f}%")
        if with_sweep:
            line += f" {r['steps']:>8,.0f} {_t(r['time_s']):>9} {r['node_hours']:>9.3g}"
        say(line)
    say("(ms per step; comm: the collectives' time; exposed: the wait at the step's end, what backward does not "
        "hide and waiting for slower ranks, as calibrated; eff: against one rank at the same global batch)")
    for n in out["notes"]:
        say(f"note: {n}")
    if with_sweep:
        f, fa, ch, sp = out["fit"], out["fastest"], out["cheapest"], out["stop_paying"]
        say(f"steps to the target from sweep {out['sweep']}: S_min {f['s_min']:,.0f}, B_crit {f['b_crit']:,.0f} "
            f"(fit rms {100 * f['rms_rel']:.1f} %)")
        say(f"fastest: {fa['nodes']} node(s) x {fa['ranks_per_node']} at global batch {fa['batch']}: "
            f"{_t(fa['time_s'])}, {fa['node_hours']:.3g} node-hours")
        say(f"cheapest: {ch['nodes']} node(s) x {ch['ranks_per_node']} at global batch {ch['batch']}: "
            f"{_t(ch['time_s'])}, {ch['node_hours']:.3g} node-hours")
        if sp["nodes"] is None:
            say("more nodes keep paying over the whole --nodes range (the largest node count is at least "
                f"{100 * (1 - 1 / STOP_GAIN):.0f} % faster than any smaller one)")
        else:
            change = (f"any larger node count saves at most {100 * (1 - 1 / sp['gain']):.0f} % of the time"
                      if sp["gain"] >= 1 else "no larger node count is faster")
            say(f"more nodes stop paying past {sp['nodes']} node(s) ({change}); the next step up: {sp['why']}")
    if out.get("figure"):
        say(f"wrote {out['figure']}")
