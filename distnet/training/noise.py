"""The gradient noise scale B_simple = tr(Σ)/|G|², measured during training (McCandlish et al. 2018).

Data parallelism gives two batch sizes per step for free: each rank's micro-batch gradients (batch b =
B/(P·k), n = P·k of them) before the allreduce and the global gradient (batch B) after it. With
E|G_b|² = |G|² + tr(Σ)/b (appendix A of the paper), the two squared norms give unbiased estimates

    |G|²  ≈ (B |G_B|² − b mean|G_b|²) / (B − b)        tr(Σ) ≈ (mean|G_b|² − |G_B|²) / (1/b − 1/B)

Each is noisy (|G|² can come out negative), so numerator and denominator are smoothed separately by
exponential moving averages with Adam's bias correction, and only their ratio is reported.

With one rank and no accumulation there is only one batch size; then consecutive steps' gradients stand
in for two independent batches of B: tr(Σ) ≈ B |G_t − G_{t−1}|² / 2 and |G|² ≈ G_t · G_{t−1}. The
parameters moved in between, so the estimate is biased (tr(Σ) high), and the metrics say so.

Every rank holds the same estimator and feeds it the same (summed) numbers, so all agree on the result.
"""

import math

import numpy as np


class NoiseScale:
    """Smoothed estimates of |G|² and tr(Σ) from each measured step; ``every`` steps (0 = never)."""

    def __init__(self, every=4, decay=0.95, fallback=False):
        self.every, self.decay, self.fallback = int(every), float(decay), bool(fallback)
        self.ema_grad_sq = self.ema_trace = 0.0
        self.count = 0  # measured steps so far (the bias correction's exponent)
        self.prev = None  # fallback only: the previous step's global gradient

    def due(self, step):
        """Whether step STEP measures the small-batch norms (the fallback measures at the step after the
        one whose gradient it keeps, see ``keeps``)."""
        return self.every > 0 and step % self.every == 0

    def keeps(self, step):
        """Fallback only: whether step STEP's gradient is kept for the next step's difference."""
        return self.fallback and self.every > 0 and (step + 1) % self.every == 0

    def update(self, small_sq, b, big_sq, B):
        """One step's mean squared norm of the batch-b gradients and squared norm of the batch-B one."""
        grad_sq = (B * big_sq - b * small_sq) / (B - b)
        trace = (small_sq - big_sq) / (1.0 / b - 1.0 / B)
        self._smooth(grad_sq, trace)

    def update_consecutive(self, g, B, keep):
        """The fallback: this step's global gradient ``g`` (batch B) against the kept previous one."""
        if self.prev is not None:
            d = g - self.prev
            self._smooth(float(np.dot(g, self.prev)), B * float(np.dot(d, d)) / 2.0)
        if keep:
            if self.prev is None or self.prev.shape != g.shape:
                self.prev = np.empty_like(g)
            self.prev[...] = g
        else:
            self.prev = None

    def _smooth(self, grad_sq, trace):
        if not (math.isfinite(grad_sq) and math.isfinite(trace)):
            return  # a non-finite step (skipped or stopping) says nothing about the noise
        beta = self.decay
        self.ema_grad_sq = beta * self.ema_grad_sq + (1 - beta) * grad_sq
        self.ema_trace = beta * self.ema_trace + (1 - beta) * trace
        self.count += 1

    def value(self):
        """(B_simple or None, tr(Σ), |G|²), bias-corrected; None before any step or while |G|² <= 0."""
        if not self.count:
            return None, None, None
        correction = 1 - self.decay ** self.count
        grad_sq, trace = self.ema_grad_sq / correction, self.ema_trace / correction
        return (trace / grad_sq if grad_sq > 0 else None), trace, grad_sq

    def metrics(self):
        """The keys a train line carries: ``noise_scale``, ``noise_trace``, ``noise_grad_sq``,
        ``noise_biased``; nothing before the first measured step."""
        scale, trace, grad_sq = self.value()
        if trace is None:
            return {}
        return {"noise_scale": scale, "noise_trace": trace, "noise_grad_sq": grad_sq,
                "noise_biased": self.fallback}

    def state(self):
        """What a checkpoint keeps (the fallback's previous gradient is not kept: after a resume it waits
        for two steps)."""
        return {"ema_grad_sq": self.ema_grad_sq, "ema_trace": self.ema_trace, "count": self.count}

    def load_state(self, state):
        self.ema_grad_sq, self.ema_trace = float(state["ema_grad_sq"]), float(state["ema_trace"])
        self.count = int(state["count"])
