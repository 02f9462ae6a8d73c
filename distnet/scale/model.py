"""The step-time model: a calibration (``distnet calibrate``) -> the time of one training step on any number of
nodes x ranks per node at any global batch, split into compute, exposed communication and optimizer.

    step = data(b) + forward(b) + backward(b)            b = B / P samples per rank, as measured per rank
         + exposed communication                          the strategy's collectives (collectives.py) less the
                                                          part hidden behind backward
         + optimizer                                      per parameter this rank updates (all, or 1/P sharded)
         + the strategy's own compute                     casts (fp16/bf16), shared-memory sums (shm)

Compute at a per-rank batch between two measured ones is interpolated in log-log; past the largest it grows by
the last measured segment's time per sample, below the smallest by the first segment's power law. The exposed
communication starts from what the calibration measured at that per-rank batch with the same strategy (rank
0's wait: what backward did not hide, and its wait for slower ranks), and adds what the plan's collectives
take beyond the calibration's own setting (step()). How much of an allreduce backward hides is no constant
fraction of either: measured, it grew with backward up to a share of the allreduce and stopped there.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import collectives

FORMAT = "distnet-calibration"
PHASES = ("data", "forward", "backward")
STRATEGIES = ("auto", "bucketed", "flat", "zero", "fp16", "bf16", "shm")
DEFAULT_LATENCY_S = 50e-6  # between hosts when --link is given and no calibration measured between hosts (TCP)
STATS_BYTES = 64  # the step's statistics vector summed beside the gradient (loss, counts, norms)
_UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
LINK_FORMS = "100mbit, 10gbit, 25gbit"


def parse_link(text):
    """Bytes per second of a link rate such as ``100mbit``, ``10gbit``, ``25gbit`` (also 1.5gbit, 400gbit)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]bit)(?:/s)?\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"--link {text!r}: give a link rate such as {LINK_FORMS}")
    return float(m.group(1)) * _UNITS[m.group(2)] / 8


def parse_latency(text):
    """Seconds of a latency such as ``30us``, ``0.5ms``, ``2e-5`` (seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:e-?\d+)?)\s*(us|µs|ms|s)?\s*", str(text).lower())
    if not m:
        raise UserError(f"--latency {text!r}: give a latency such as 30us, 0.5ms or 2e-5 (seconds)")
    return float(m.group(1)) * {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}[m.group(2)]


# -- the calibration file ---------------------------------------------------------------------------------

def load(path):
    """A calibration file as a dict, checked enough that the model can read it (else a one-line UserError)."""
    path = Path(path)
    fix = f"make one with 'distnet calibrate CONFIG --out {path.name}'"
    if not path.is_file():
        raise UserError(f"calibration {path} does not exist: {fix}")
    try:
        cal = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"calibration {path} is not a distnet calibration (not JSON: {e}): {fix}") from None
    if not isinstance(cal, dict) or cal.get("format") != FORMAT:
        raise UserError(f"calibration {path} is not a distnet calibration (no \"format\": \"{FORMAT}\"): {fix}")
    if cal.get("version") != 1:
        raise UserError(f"calibration {path} has version {cal.get('version')!r}, this distnet reads 1: {fix}")
    try:
        c = cal["compute"]
        n = len(c["batches"])
        ok = n >= 1 and all(len(c["phases_ms"][p]) == n for p in PHASES) and cal["model"]["params"] > 0 \
            and cal["optimizer"]["ms_per_param"] >= 0 and isinstance(cal["network"], dict)
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"calibration {path} is incomplete (compute, model, optimizer or network missing): {fix}")
    cal["path"] = str(path)
    return cal


def signature(model):
    """[[layer class, [param shapes]], ...] of a built model: what a calibration must match."""
    return [[type(layer).__name__, [list(v.shape) for v in layer.params.values()]] for layer in model.layers]


def check_model(cal, params, layers):
    """A calibration of another model (parameter count or layer shapes differ) is a UserError."""
    have = cal["model"]
    if have["params"] != params:
        raise UserError(f"calibration {cal['path']} is of a model with {have['params']:,} parameters, this config's "
                        f"has {params:,}: calibrate this config (distnet calibrate CONFIG --out FILE)")
    theirs = have.get("layers")
    if theirs is not None:
        for i, (a, b) in enumerate(zip(theirs, layers)):
            if [a[0], [list(s) for s in a[1]]] != b:
                raise UserError(f"calibration {cal['path']} differs from this config's model at layer {i} "
                                f"({a[0]} {a[1]} there, {b[0]} {b[1]} here): calibrate this config")
        if len(theirs) != len(layers):
            raise UserError(f"calibration {cal['path']} has {len(theirs)} layers, this config's model "
                            f"{len(layers)}: calibrate this config")


# -- pieces ------------------------------------------------------------------------------------------------

def interpolate(xs, ys, x):
    """y at x from measured (xs ascending, ys > 0): log-log between points, the last segment's slope per unit
    past the largest (time per sample settles), the first segment's power law below the smallest."""
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    if x <= xs[0]:
        k = math.log(ys[1] / ys[0]) / math.log(xs[1] / xs[0]) if ys[0] > 0 and ys[1] > 0 else 1.0
        return ys[0] * (x / xs[0]) ** max(k, 0.0)
    if x >= xs[-1]:
        slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), ys[-1] / xs[-1] * 0.5)
        return ys[-1] + slope * (x - xs[-1])
    for i in range(1, len(xs)):
        if x <= xs[i]:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            if y0 <= 0 or y1 <= 0:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
            t = math.log(x / x0) / math.log(x1 / x0)
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    return ys[-1]


@dataclass
class Level:
    alpha: float  # seconds
    beta: float  # bytes per second
    source: str  # where it came from, for the assumptions

    def pair(self):
        return self.alpha, self.beta


def _level(cal, name):
    lv = (cal.get("network") or {}).get(name)
    if not lv or not lv.get("beta_Bps"):
        return None
    return Level(float(lv["alpha_s"]), float(lv["beta_Bps"]),
                 f"{name}-host fit of {Path(cal['path']).name} ({lv.get('ranks', '?')} ranks, "
                 f"rms {100 * lv.get('rms_rel', 0):.0f} %)")


def _describe(level):
    if level is None:
        return "not calibrated"
    return (f"{level.source} (alpha {level.alpha * 1e6:.1f} us, beta {level.beta / 1e6:,.1f} MB/s = "
            f"{8 * level.beta / 1e9:.3g} Gbit/s)")


class StepModel:
    """Predicted step time of the calibrated config. ``cals``: calibrations of the same model, the first for
    compute, optimizer and the strategy; the network levels from the first that measured each. ``link``:
    bytes/s between hosts instead of the calibrated one; ``latency``: seconds between hosts."""

    def __init__(self, cals, sync="auto", link=None, latency=None):
        self.cal = cal = cals[0]
        self.sync = sync
        if sync not in STRATEGIES:
            hint = " (its messages depend on the matrices and the rank; not modelled yet)" if sync == "powersgd" \
                else ""
            raise UserError(f"--sync {sync}{hint}: plan models {', '.join(STRATEGIES)}")
        c = cal["compute"]
        self.batches = [int(b) for b in c["batches"]]
        self.phase_ms = {p: [float(v) for v in c["phases_ms"][p]] for p in PHASES}
        self.params = int(cal["model"]["params"])
        self.grad_bytes = int(cal["model"].get("grad_bytes") or 4 * self.params)
        self.ms_per_param = float(cal["optimizer"]["ms_per_param"])
        s = cal.get("sync") or {}
        self.cal_strategy = s.get("strategy") or "bucketed"
        self.comm_cal = [float(v) for v in c["phases_ms"].get("comm") or []]
        self.extra_ms, self.extra_ms_per_param = s.get("extra_ms"), s.get("extra_ms_per_param")
        m = cal.get("machine") or {}
        self.library = m.get("library", "mpich")
        self.cal_ranks = int(c.get("ranks") or m.get("ranks") or 1)
        self.cal_hosts = int(m.get("hosts") or 1)
        self.cal_per_host = max(m.get("ranks_per_host") or [self.cal_ranks // self.cal_hosts or 1])
        self.intra = next((lv for lv in (_level(k, "intra") for k in cals) if lv), None)
        self.inter = next((lv for lv in (_level(k, "inter") for k in cals) if lv), None)
        # the levels the calibration itself ran on (before --link or --latency replace them), for its own setting
        self.cal_levels = (self.intra.pair() if self.intra else None, self.inter.pair() if self.inter else None)
        self.link, self.latency = link, latency
        if link is not None:
            alpha = latency if latency is not None else self.inter.alpha if self.inter else DEFAULT_LATENCY_S
            how = "--latency" if latency is not None else "calibrated" if self.inter else "assumed (no calibration " \
                "between hosts; --latency sets it)"
            self.inter = Level(alpha, link, f"--link {8 * link / 1e9:g} Gbit/s, latency {alpha * 1e6:g} us {how}")
        elif latency is not None and self.inter:
            self.inter = Level(latency, self.inter.beta, self.inter.source + f", latency {latency * 1e6:g} us "
                               "(--latency)")

    # -- what applies where -------------------------------------------------------------------------------
    def strategy(self, nodes, per_node):
        """The strategy a run on nodes x per_node ranks takes (``auto``: shm on one host, else bucketed)."""
        p = nodes * per_node
        s = self.sync
        if s == "auto":
            s = "shm" if nodes == 1 and p > 1 and self.cal_strategy == "shm" else "bucketed"
        if s == "shm" and nodes > 1:
            raise UserError("--sync shm works inside one host only: plan more than one node with bucketed, zero, "
                            "fp16 or bf16 (auto takes bucketed there)")
        if s in ("fp16", "bf16", "shm") and self.cal_strategy != s and p > 1:
            raise UserError(f"--sync {s}: its own compute was not calibrated ({Path(self.cal['path']).name} ran "
                            f"{self.cal_strategy}): calibrate with --set comm.sync='\"{s}\"'")
        return "bucketed" if p == 1 else s

    def levels(self, nodes, per_node):
        """(intra, inter) (alpha, beta) pairs for a run's levels; a missing level is a UserError."""
        intra = inter = None
        if per_node > 1:
            if self.intra is None:
                raise UserError(f"calibration {self.cal['path']} measured no network inside a host (1 rank per "
                                "host): calibrate with 2 or more ranks on one host (mpiexec -n 2), add that file "
                                "with another --calibration, or plan --ranks-per-node 1")
            intra = self.intra.pair()
        if nodes > 1:
            if self.inter is None:
                raise UserError(f"calibration {self.cal['path']} measured no network between hosts (one host): "
                                "calibrate on 2 or more hosts, add that file with another --calibration, or give "
                                f"--link RATE ({LINK_FORMS})")
            inter = self.inter.pair()
        return intra, inter

    # -- the step ----------------------------------------------------------------------------------------------
    def compute_ms(self, b):
        return {p: interpolate(self.batches, self.phase_ms[p], b) for p in PHASES}

    def collectives_ms(self, s, nodes, per_node, levels):
        """(the strategy's collective time, the statistics' allreduce), ms, on nodes x per_node ranks."""
        p, lib = nodes * per_node, self.library
        intra, inter = levels
        if p == 1 or s == "shm":
            return 0.0, 0.0
        stats = 1e3 * collectives.hierarchical(lib, nodes, per_node, STATS_BYTES, intra, inter)
        lv = inter if nodes > 1 else intra
        if s == "zero":  # one flat reduce-scatter and allgather over every rank
            return 1e3 * (collectives.reduce_scatter(p, self.grad_bytes, *lv)
                          + collectives.allgather(p, self.grad_bytes, *lv)), stats
        if s in ("fp16", "bf16"):  # MPI cannot sum 16-bit values: every rank's buckets are allgathered
            return 1e3 * collectives.allgather(p, p * (self.grad_bytes // 2), *lv), stats
        return 1e3 * collectives.hierarchical(lib, nodes, per_node, self.grad_bytes, intra, inter), stats

    def calibrated_wait(self, s, b):
        """The exposed wait measured at calibration at per-rank batch ``b`` (interpolated in log b, clamped
        to the measured range) and the collectives' time of the calibration's own setting; None when the
        calibration ran another strategy, or one rank."""
        if s != self.cal_strategy or self.cal_ranks < 2 or not self.comm_cal or s == "shm":
            return None
        intra, inter = self.cal_levels
        if (self.cal_per_host > 1 and intra is None) or (self.cal_hosts > 1 and inter is None):
            return None
        cal = self.collectives_ms(s, self.cal_hosts, self.cal_per_host, self.cal_levels)
        xs, ys = self.batches, self.comm_cal
        if b <= xs[0] or len(xs) == 1:
            wait = ys[0]
        elif b >= xs[-1]:
            wait = ys[-1]
        else:
            i = next(k for k in range(1, len(xs)) if b <= xs[k])
            t = math.log(b / xs[i - 1]) / math.log(xs[i] / xs[i - 1])
            wait = ys[i - 1] + t * (ys[i] - ys[i - 1])
        return wait, sum(cal)

    def step(self, nodes, per_node, batch):
        """The predicted step (milliseconds per part, samples/s) of global ``batch`` on nodes x per_node ranks;
        None when the batch is not a multiple of the rank count.

        The exposed communication: where the calibration ran this strategy on several ranks, its measured wait
        at this per-rank batch (rank 0's: what backward did not hide, and waiting for slower ranks) plus what
        the plan's collectives take more (or less) than the calibration's own setting did; elsewhere the
        collectives' whole time (nothing is assumed hidden)."""
        p = nodes * per_node
        if batch % p:
            return None
        b = batch // p
        s = self.strategy(nodes, per_node)
        levels = self.levels(nodes, per_node)
        comp = self.compute_ms(b)
        comm, stats = self.collectives_ms(s, nodes, per_node, levels)
        exposed = extra = 0.0
        updated = math.ceil(self.params / p) if s in ("zero", "shm") else self.params
        if s == "shm" and p > 1:
            frac = (p - 1) / p / ((self.cal_ranks - 1) / self.cal_ranks) if self.cal_ranks > 1 else 1.0
            comm = exposed = float(self.extra_ms or 0.0) * frac  # the sums of this rank's shard and the fences
        elif p > 1:
            measured = self.calibrated_wait(s, b)
            exposed = comm + stats if measured is None else max(measured[0] + comm + stats - measured[1], stats)
            if s in ("fp16", "bf16"):  # one compression and P decompressions a step (calibrated: one of each)
                extra = float(self.extra_ms_per_param or 0.0) * self.params * (1 + p) / 2
        opt = self.ms_per_param * updated
        total = sum(comp.values()) + exposed + opt + extra
        return {"nodes": nodes, "ranks_per_node": per_node, "ranks": p, "batch": batch, "per_rank": b,
                "sync": s, "compute_ms": sum(comp.values()), **{f"{k}_ms": v for k, v in comp.items()},
                "comm_ms": comm, "exposed_ms": exposed, "optimizer_ms": opt, "extra_ms": extra,
                "step_ms": total, "samples_per_s": batch / total * 1e3}

    def single(self, batch):
        """The step of one rank at global ``batch`` (the strong-scaling reference)."""
        return self.step(1, 1, batch)

    def assumptions(self):
        """The model's assumptions, one line each, for the output."""
        m = self.cal.get("machine") or {}
        algo = {"openmpi": "Open MPI (tuned): recursive doubling up to 10 kB, ring above, one flat ring over all "
                           "ranks when hosts hold several",
                "mpich": "MPICH: recursive doubling up to 2 kB, Rabenseifner above; across hosts with several "
                         "ranks each, a reduce inside each host, an allreduce among the hosts' leaders, a "
                         "broadcast inside each host (one gradient crosses each host's link per direction)"}
        out = [f"compute per rank as measured on {m.get('cpu', '?')} ({m.get('blas_threads', '?')} BLAS thread(s) "
               f"per rank, {self.cal_ranks} rank(s) on {m.get('hosts', '?')} host(s)), at per-rank batches "
               f"{', '.join(map(str, self.batches))} (interpolated log-log between them, extrapolated outside)",
               f"collectives: {algo.get(self.library, algo['mpich'])}",
               f"inside a host: {_describe(self.intra)}",
               f"between hosts: {_describe(self.inter)}",
               "overlap and skew: " + (f"the wait {self.cal_strategy} left exposed at calibration ({self.cal_hosts} "
                                       f"host(s) x {self.cal_per_host}), per per-rank batch, plus what the plan's "
                                       "collectives take beyond the calibration's own"
                                       if self.cal_ranks > 1 and self.comm_cal else
                                       "none known (one rank calibrated): the collectives' whole time is exposed"),
               f"optimizer: {self.ms_per_param * 1e6:.3f} ns per parameter updated ({self.params:,} parameters; "
               "zero and shm update 1/P each)",
               "not counted: evaluation, checkpoints, start-up; ranks on a node are assumed not to slow each "
               f"other's compute beyond what {self.cal_ranks} rank(s) per host did at calibration "
               "(memory bandwidth)"]
        return out
