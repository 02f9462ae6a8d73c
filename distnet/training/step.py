"""One training step: forward, backward with gradient sync, the non-finite policy, clipping, the update.

No printing, no files, no clock of its own: what a step did comes back as ``Stats``, and phase boundaries
are announced to ``run.mark`` (a step timer's clock when one listens, else nothing).
"""

import math
from dataclasses import dataclass, field

import numpy as np

from ..comm import Stop
from ..nn.draws import Draws
from ..nn.optim import clip_grad_norm


@dataclass
class Stats:
    """What one step did, summed over the global batch (identical on every rank)."""

    step: int  # the global step this was (0-based)
    loss_sum: float
    correct: float
    count: float
    grad_norm: float
    lr: float
    skipped: str = ""  # why the update was skipped ("" = applied)
    stop_votes: float = 0.0  # how many ranks asked to stop at this step (``run.stop_vote``)
    sync: dict = field(default_factory=dict)  # what the gradient-sync strategy measured
    noise: dict = field(default_factory=dict)  # the gradient noise scale so far (train.noise_every; noise.py)


def step(run, x, y, index):
    """Train on this rank's part (x, y) of the next global batch; ``index`` holds the samples' global
    indices, which key their random draws (dropout) so that any rank count draws the same ones."""
    tc, model, loss, sync, mark = run.cfg["train"], run.model, run.loss, run.sync, run.mark
    k, B, t = tc["accumulate"], run.batch, run.pos.global_step
    micro = len(y) // k
    loss_sum = correct = small_sq = 0.0
    noise = run.noise
    # the noise scale's small-batch term: each micro-batch's squared gradient norm, before any summing
    measure = noise is not None and not noise.fallback and noise.due(t)
    for m in range(k):
        part = slice(m * micro, (m + 1) * micro)
        xm, ym = (x, y) if k == 1 else (x[part], y[part])
        if run.draws:
            model.reseed(Draws(tc["seed"], run.pos.epoch, index[part]))
        out = model.forward(xm, training=True)
        loss_sum += loss.forward(out, ym) * len(ym)
        correct += loss.correct(out, ym)
        # The loss is a mean over this micro-batch; scaling its gradient by len(ym)/B makes the ranks'
        # SUM-allreduce the gradient of the global-batch mean (done on the small output gradient, not the
        # whole arena).
        dy = loss.backward()
        dy *= len(ym) / B
        mark("forward")
        if m < k - 1:
            model.backward(dy)
            if measure:
                small_sq += float(np.dot(model.grads_flat, model.grads_flat))
            if m == 0:
                run.accum[...] = model.grads_flat
            else:
                run.accum += model.grads_flat
        else:
            # the loss sums travel with the gradients (summed during backward, no extra collective)
            # (and so does the sum of the micro-batches' squared gradient norms, completed by the strategy,
            # and the ranks' votes to stop on a signal)
            totals = np.array([loss_sum, correct, len(y), small_sq, run.stop_vote], np.float64)
            sync.begin(run.accum, stats=totals, norm_at=3 if measure else None)
            model.backward(dy, sync=sync)
        mark("backward")
    sync.finish()
    mark("comm")
    g = sync.summed()  # the summed gradient this rank's optimizer reads (its shard under comm.sync = "zero")
    gsq = sync.global_sq()  # identical on every rank: the gradients are summed
    gnorm = math.sqrt(gsq)
    if measure:
        # the arena holds a micro-batch's gradient scaled by micro/B: its mean gradient is the arena x B/micro
        n = run.world.size * k
        noise.update(totals[3] * (B / micro) ** 2 / n, micro, gsq, B)
    elif noise is not None and noise.fallback and (noise.due(t) or noise.keeps(t)):
        noise.update_consecutive(g, B, keep=noise.keeps(t))  # one rank: g is the whole gradient
    lr = run.lr(t)
    skipped = ""
    if not (math.isfinite(gnorm) and math.isfinite(totals[0])):
        what = "loss" if not math.isfinite(totals[0]) else "gradient"
        if tc["nonfinite"] != "skip" or run.pos.skips >= tc["max_skips"]:
            raise Stop(f"non-finite {what} at step {t} (epoch {run.pos.epoch + 1}): lower the learning rate "
                       f"(optimizer.lr = {run.cfg['optimizer']['lr']}), add clip_grad_norm, or set "
                       "train.nonfinite = \"skip\"")
        run.pos.skips += 1
        skipped = f"non-finite {what}"
    else:
        if tc["clip_grad_norm"] > 0:
            clip_grad_norm(sync.summed(), tc["clip_grad_norm"], norm=gnorm)
        run.optimizer.step(lr)
    sync.done()
    mark("optimizer")
    return Stats(step=t, loss_sum=float(totals[0]), correct=float(totals[1]), count=float(totals[2]),
                 grad_norm=gnorm, lr=lr, skipped=skipped, stop_votes=float(totals[4]), sync=sync.measures(),
                 noise=noise.metrics() if noise is not None else {})
