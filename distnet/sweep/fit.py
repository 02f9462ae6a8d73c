"""McCandlish et al.'s model of steps to a target: S = S_min (1 + B_crit / B), E = B S = E_min (1 + B / B_crit),
E_min = S_min B_crit.

The model is linear in 1/B: S = a + b / B with a = S_min and b = E_min. The points span two or three orders
of magnitude in S, so the fit minimizes relative errors, sum ((a + b / B_i) / S_i - 1)^2 (a log-space fit to
first order, with a closed form): in plain least squares the smallest batches would decide everything.
"""

import math
from dataclasses import dataclass


@dataclass
class Fit:
    s_min: float  # steps at an infinite batch
    e_min: float  # samples at batch 1 (a batch far below B_crit)
    b_crit: float  # E_min / S_min; inf: perfect scaling over every batch fitted, 0: no scaling at all
    rms_rel: float  # root mean square relative error of the fit
    n: int  # points fitted
    note: str = ""

    def steps(self, b):
        return self.s_min + self.e_min / b


def fit(batches, steps):
    """Fit the model to (batch, steps to target) pairs; None with fewer than 2 distinct batch sizes."""
    pts = [(float(b), float(s)) for b, s in zip(batches, steps) if s and s > 0]
    if len({b for b, _ in pts}) < 2:
        return None
    u = [1 / s for _, s in pts]  # the a column, divided by S
    v = [1 / (b * s) for b, s in pts]  # the b column, divided by S
    suu, svv, suv = sum(x * x for x in u), sum(x * x for x in v), sum(x * y for x, y in zip(u, v))
    su, sv = sum(u), sum(v)
    det = suu * svv - suv * suv
    a = (su * svv - sv * suv) / det if det > 0 else -1
    b = (sv * suu - su * suv) / det if det > 0 else -1
    note = ""
    if a <= 0 or b < 0:  # the best fit leaves the model: one of the two regimes alone fits better
        only_a = su / suu  # S = S_min: more samples never saved a step
        only_b = sv / svv  # S = E_min / B: perfect scaling throughout
        err_a = sum((only_a * x - 1) ** 2 for x in u)
        err_b = sum((only_b * x - 1) ** 2 for x in v)
        if err_b <= err_a:
            a, b, note = 0.0, only_b, "perfect scaling over every batch size that reached the target"
        else:
            a, b, note = only_a, 0.0, "no batch size took fewer steps than another"
    rms = math.sqrt(sum(((a + b / bb) / s - 1) ** 2 for bb, s in pts) / len(pts))
    b_crit = b / a if a > 0 else math.inf
    return Fit(s_min=a, e_min=b, b_crit=b_crit, rms_rel=rms, n=len(pts), note=note)
