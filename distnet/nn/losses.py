"""Losses: ``forward(output, target) -> float`` (mean over the batch), ``backward() -> d output``.

Each loss also counts correct predictions with ``correct(output, target) -> int`` for evaluation.
"""

import numpy as np

from ..errors import ConfigError, DataError
from .layers.activations import sigmoid


def _labels(target, num_classes):
    """Integer class labels (N,), checked to lie in [0, num_classes)."""
    y = np.asarray(target)
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"labels must be integers, got dtype {y.dtype}")
    y = y.reshape(-1)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise DataError(f"label {y[bad][0]} is out of range for {num_classes} classes (valid 0..{num_classes - 1})")
    return y


class SoftmaxCrossEntropy:
    """Softmax + cross-entropy on logits (N, C) and integer labels (N,); fused gradient (softmax - onehot)/N."""

    def forward(self, output, target):
        n, c = output.shape
        y = _labels(target, c)
        if y.size != n:
            raise DataError(f"{y.size} labels for {n} outputs")
        shifted = output - output.max(axis=1, keepdims=True)
        lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        logp = shifted - lse
        self._cache = (np.exp(logp), y)
        return float(-logp[np.arange(n), y].mean(dtype=np.float64))

    def backward(self):
        p, y = self._cache
        g = p.copy()
        g[np.arange(y.size), y] -= 1
        g *= 1.0 / y.size
        return g

    def correct(self, output, target):
        return int((output.argmax(axis=1) == np.asarray(target).reshape(-1)).sum())


class MSE:
    """Mean squared error over all elements (as PyTorch and Keras)."""

    def forward(self, output, target):
        target = np.asarray(target, output.dtype).reshape(output.shape)
        self._diff = output - target
        return float(np.mean(np.square(self._diff), dtype=np.float64))

    def backward(self):
        return self._diff * (2.0 / self._diff.size)

    def correct(self, output, target):
        """Argmax agreement for multi-output (one-hot or integer targets); |error| < 0.5 for one output."""
        target = np.asarray(target)
        if output.ndim == 2 and output.shape[1] > 1:
            labels = target.argmax(axis=1) if target.shape == output.shape else target.reshape(-1)
            return int((output.argmax(axis=1) == labels).sum())
        return int((np.abs(output.reshape(-1) - target.reshape(-1)) < 0.5).sum())


class BinaryCrossEntropy:
    """Binary cross-entropy, mean over all elements; takes logits by default (``from_logits=False``:
    probabilities in [0, 1], clipped to [eps, 1-eps]). Targets are 0/1 (or soft) of the output's shape."""

    def __init__(self, from_logits=True, eps=1e-7):
        self.from_logits = bool(from_logits)
        self.eps = float(eps)

    def forward(self, output, target):
        t = np.asarray(target, output.dtype).reshape(output.shape)
        if self.from_logits:  # max(z,0) - z*t + log(1 + exp(-|z|)), stable for any z
            loss = np.maximum(output, 0) - output * t + np.log1p(np.exp(-np.abs(output)))
            self._cache = (sigmoid(output), t)
        else:
            p = np.clip(output, self.eps, 1 - self.eps)
            loss = -(t * np.log(p) + (1 - t) * np.log1p(-p))
            self._cache = (p, t)
        return float(np.mean(loss, dtype=np.float64))

    def backward(self):
        p, t = self._cache
        g = (p - t) * (1.0 / t.size)
        return g if self.from_logits else g / (p * (1 - p))

    def correct(self, output, target):
        threshold = 0.0 if self.from_logits else 0.5
        pred = output.reshape(-1) > threshold
        return int((pred == (np.asarray(target).reshape(-1) > 0.5)).sum())


LOSSES = {"softmax_cross_entropy": SoftmaxCrossEntropy, "cross_entropy": SoftmaxCrossEntropy, "mse": MSE,
          "binary_cross_entropy": BinaryCrossEntropy, "bce": BinaryCrossEntropy}


def get(name, **options):
    """A loss by name (``softmax_cross_entropy``/``cross_entropy``, ``mse``, ``binary_cross_entropy``/``bce``)."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](**options)


def accuracy(loss, output, target):
    """Fraction of correct predictions of ``output`` for ``target`` under ``loss``'s rule."""
    return loss.correct(output, target) / max(len(output), 1)
