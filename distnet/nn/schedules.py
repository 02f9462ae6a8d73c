"""Learning-rate schedules and batch-size scaling rules.

A schedule is a callable ``schedule(step) -> lr`` where ``step`` counts optimizer steps from 0. Each is a pure
function of the step, so resuming a run needs only the step count. Values are Python floats.
"""

import bisect
import inspect
import math
import numbers

from ..errors import ConfigError


def _number(name, value, lo=-math.inf, lo_open=False):
    """``value`` as a float, or ConfigError naming ``name`` when it is not a number above ``lo``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"schedule {name}={value!r} must be a number")
    if value < lo or (lo_open and value == lo):
        raise ConfigError(f"schedule {name}={value!r} must be {'>' if lo_open else '>='} {lo}")
    return float(value)


class Schedule:
    """Base class: a readable repr from the instance's attributes."""

    def __call__(self, step):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """lr(t) = lr."""

    def __init__(self, lr):
        self.lr = _number("lr", lr, 0.0)

    def __call__(self, step):
        return self.lr


class Piecewise(Schedule):
    """lr(t) = values[i] where i = the number of boundaries <= t (a boundary step takes the next value)."""

    def __init__(self, boundaries, values):
        if not isinstance(boundaries, (list, tuple)) or not isinstance(values, (list, tuple)):
            raise ConfigError(f"schedule boundaries={boundaries!r} and values={values!r} must be lists")
        if not all(isinstance(b, numbers.Integral) and not isinstance(b, bool) and b >= 0 for b in boundaries):
            raise ConfigError(f"schedule boundaries={boundaries!r} must be step numbers (integers >= 0)")
        self.boundaries = [int(b) for b in boundaries]
        self.values = [_number("values", v, 0.0) for v in values]
        if len(self.values) != len(self.boundaries) + 1:
            raise ConfigError(f"schedule piecewise needs one value more than boundaries, got "
                              f"{len(self.values)} values for {len(self.boundaries)} boundaries")
        if any(a >= b for a, b in zip(self.boundaries, self.boundaries[1:])):
            raise ConfigError(f"schedule boundaries={self.boundaries} must be strictly increasing")

    def __call__(self, step):
        return self.values[bisect.bisect_right(self.boundaries, step)]


class Power(Schedule):
    """lr(t) = lr / (1 + t / decay_steps) ** power."""

    def __init__(self, lr, decay_steps, power=1.0):
        self.lr = _number("lr", lr, 0.0)
        self.decay_steps = _number("decay_steps", decay_steps, 0.0, lo_open=True)
        self.power = _number("power", power, 0.0)

    def __call__(self, step):
        return self.lr / (1.0 + step / self.decay_steps) ** self.power


class Exponential(Schedule):
    """lr(t) = lr * decay_rate ** (t / decay_steps) (decay_rate 0.1: ten times smaller every decay_steps)."""

    def __init__(self, lr, decay_steps, decay_rate=0.1):
        self.lr = _number("lr", lr, 0.0)
        self.decay_steps = _number("decay_steps", decay_steps, 0.0, lo_open=True)
        self.decay_rate = _number("decay_rate", decay_rate, 0.0, lo_open=True)

    def __call__(self, step):
        return self.lr * self.decay_rate ** (step / self.decay_steps)


class Cosine(Schedule):
    """lr(t) = min_lr + (lr - min_lr) * (1 + cos(pi * t / total_steps)) / 2 for t <= total_steps, then min_lr."""

    def __init__(self, lr, total_steps, min_lr=0.0):
        self.lr = _number("lr", lr, 0.0)
        self.total_steps = int(_number("total_steps", total_steps, 0.0, lo_open=True))
        self.min_lr = _number("min_lr", min_lr, 0.0)

    def __call__(self, step):
        t = min(step, self.total_steps) / self.total_steps
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class OneCycle(Schedule):
    """Smith's 1cycle policy, as PyTorch's OneCycleLR (two phases, no momentum cycling).

    With initial = max_lr / div_factor, final = initial / final_div_factor, peak = pct_start * total_steps - 1
    and last = total_steps - 1: for t <= peak the lr goes from initial (t = 0) to max_lr (t = peak), then from
    max_lr to final (t = last), by ``anneal(a, b, x)`` with x the fraction of the phase done:
    "cos": b + (a - b) * (1 + cos(pi * x)) / 2, "linear": a + (b - a) * x. After ``last`` it stays at final.
    """

    def __init__(self, max_lr, total_steps, pct_start=0.3, div_factor=25.0, final_div_factor=1e4,
                 anneal="cos"):
        self.max_lr = _number("max_lr", max_lr, 0.0)
        self.total_steps = int(_number("total_steps", total_steps, 2.0))
        self.pct_start = _number("pct_start", pct_start, 0.0, lo_open=True)
        self.div_factor = _number("div_factor", div_factor, 0.0, lo_open=True)
        self.final_div_factor = _number("final_div_factor", final_div_factor, 0.0, lo_open=True)
        if anneal not in ("cos", "linear"):
            raise ConfigError(f"schedule anneal={anneal!r} must be 'cos' or 'linear'")
        self.anneal = anneal
        peak = self.pct_start * self.total_steps - 1
        if not 0 < peak < self.total_steps - 1:
            raise ConfigError(f"schedule pct_start={pct_start!r} leaves no room for one of the two phases "
                              f"of {self.total_steps} steps")

    def __call__(self, step):
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        peak, last = self.pct_start * self.total_steps - 1, self.total_steps - 1
        if step <= peak:
            a, b, x = initial, self.max_lr, step / peak
        else:
            a, b, x = self.max_lr, final, (min(step, last) - peak) / (last - peak)
        if self.anneal == "cos":
            return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * x))
        return a + (b - a) * x


class Warmup(Schedule):
    """Linear warm-up in front of ``inner``, which is not shifted (it sees the real step t).

    For t < warmup_steps: lr(t) = s + (inner(warmup_steps) - s) * t / warmup_steps with s = start_factor *
    inner(0), a straight line from s to inner(warmup_steps); from warmup_steps on, lr(t) = inner(t).
    """

    def __init__(self, inner, warmup_steps, start_factor=0.0):
        self.inner = inner
        self.warmup_steps = int(_number("warmup_steps", warmup_steps, 0.0))
        self.start_factor = _number("warmup_start_factor", start_factor, 0.0)

    def __call__(self, step):
        w = self.warmup_steps
        if step >= w:
            return self.inner(step)
        start = self.start_factor * self.inner(0)
        return start + (self.inner(w) - start) * step / w


# optimizer.lr_scaling: rule -> the lr's factor for a global batch ``ratio`` times the one it was tuned at.
# "linear": Goyal et al. 2017; "sqrt": Krizhevsky 2014, Hoffer et al. 2017; "none": the lr as given.
LR_SCALING = {"none": lambda ratio: 1.0, "linear": lambda ratio: ratio, "sqrt": math.sqrt}


def scale_lr(base_lr, base_batch, batch, rule):
    """The lr for global batch ``batch`` given one tuned at ``base_batch``, by ``LR_SCALING[rule]``."""
    if not (isinstance(base_batch, numbers.Integral) and isinstance(batch, numbers.Integral)
            and base_batch > 0 and batch > 0):
        raise ConfigError(f"batch sizes must be positive integers, got base_batch={base_batch!r} batch={batch!r}")
    if rule not in LR_SCALING:
        raise ConfigError(f"unknown lr scaling rule '{rule}' (valid: {', '.join(LR_SCALING)})")
    return float(base_lr) * LR_SCALING[rule](batch / base_batch)


# Each schedule's builder from a config table: builder(base_lr, total_steps, **its keys). Its keyword arguments
# are the schedule's config keys (schedule_keys), those without a default the required ones.

def _constant(lr, total_steps):
    return Constant(lr)


def _piecewise(lr, total_steps, boundaries, factors=None, values=None):
    if (factors is None) == (values is None):
        raise ConfigError("schedule 'piecewise' needs exactly one of 'factors' (times base lr) or 'values'")
    if values is not None:
        return Piecewise(boundaries, values)
    if not isinstance(factors, (list, tuple)):
        raise ConfigError(f"schedule factors={factors!r} must be a list")
    return Piecewise(boundaries, [lr * _number("factors", f) for f in factors])


def _power(lr, total_steps, decay_steps, power=1.0):
    return Power(lr, decay_steps, power)


def _exponential(lr, total_steps, decay_steps, decay_rate=0.1):
    return Exponential(lr, decay_steps, decay_rate)


def _cosine(lr, total_steps, min_lr=0.0):
    return Cosine(lr, total_steps, min_lr)


def _onecycle(lr, total_steps, pct_start=0.3, div_factor=25.0, final_div_factor=1e4, anneal="cos"):
    return OneCycle(lr, total_steps, pct_start, div_factor, final_div_factor, anneal)


# The registry: config name -> builder.
SCHEDULES = {"constant": _constant, "piecewise": _piecewise, "power": _power, "exponential": _exponential,
             "cosine": _cosine, "onecycle": _onecycle}
WARMUP_KEYS = ("warmup_steps", "warmup_start_factor")  # every schedule takes these


def _parameters(name):
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule name {name!r} (valid: {', '.join(SCHEDULES)})")
    return list(inspect.signature(SCHEDULES[name]).parameters.values())[2:]


def schedule_keys(name):
    """The keys schedule ``name`` takes from a config table besides "name" and the warm-up keys."""
    return [p.name for p in _parameters(name)]


def make_schedule(spec, base_lr, total_steps):
    """Build a schedule from a config table: {"name": ..., its keys..., "warmup_steps": w (optional)}.

    onecycle's max_lr is base_lr; piecewise takes "factors" (times base_lr) or "values" (absolute).
    """
    name = spec.get("name")
    params = _parameters(name)
    valid = ("name", *(p.name for p in params), *WARMUP_KEYS)
    for key in spec:
        if key not in valid:
            others = [n for n in SCHEDULES if key in schedule_keys(n)]
            hint = (f"; '{key}' is a key of {', '.join(others)}: change the schedule too, e.g. "
                    f"--set schedule.name={others[0]}") if others else ""
            raise ConfigError(f"unknown key '{key}' for schedule '{name}' (valid: {', '.join(valid)}){hint}")
    for p in params:
        if p.default is inspect.Parameter.empty and p.name not in spec:
            raise ConfigError(f"schedule '{name}' needs key '{p.name}'")
    schedule = SCHEDULES[name](base_lr, total_steps, **{p.name: spec[p.name] for p in params if p.name in spec})
    if spec.get("warmup_steps", 0):
        schedule = Warmup(schedule, spec["warmup_steps"], spec.get("warmup_start_factor", 0.0))
    return schedule
