"""Batch augmentation for NCHW images: random shifts (zero fill) and horizontal flips, vectorized.

Parameters are drawn for the whole *global* batch from (seed, epoch, step) and each rank applies the slice
for its positions, so the augmented global batch is the same for any number of ranks.
"""

import numpy as np


def shift_flip(x, dy, dx, flip, max_shift):
    """X (n, C, H, W) with sample i flipped left-right when FLIP[i], then moved DY[i] rows down and DX[i]
    columns right (|shift| <= MAX_SHIFT), vacated pixels filled with zeros."""
    n, c, h, w = x.shape
    k = max_shift
    padded = np.pad(x, ((0, 0), (0, 0), (k, k), (k, k)))
    rows = np.arange(h)[None, :] - dy[:, None] + k
    src = np.arange(w)[None, :] - dx[:, None]
    cols = np.where(flip[:, None], w - 1 - src, src) + k
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


class Augment:
    """Random translation by up to SHIFT pixels and (if FLIP) horizontal flips, keyed by (seed, epoch, step)."""

    def __init__(self, shift=1, flip=False, seed=0):
        self.shift, self.flip, self.seed = int(shift), bool(flip), seed

    def __repr__(self):
        return f"Augment(shift={self.shift}, flip={self.flip}, seed={self.seed})"

    def params(self, epoch, step, global_len):
        """(dy, dx, flip) for every position of the global batch of step STEP of EPOCH."""
        rng = np.random.default_rng([self.seed, epoch, step, 0xA0])
        dy, dx = rng.integers(-self.shift, self.shift + 1, (2, global_len))
        flip = rng.random(global_len) < 0.5 if self.flip else np.zeros(global_len, bool)
        return dy, dx, flip

    def apply(self, x, epoch, step, offset, global_len):
        """X holds positions OFFSET.. of the global batch of (EPOCH, STEP), of GLOBAL_LEN samples."""
        if x.ndim != 4:
            raise ValueError(f"augmentation needs NCHW images, got shape {x.shape}")
        dy, dx, flip = (p[offset:offset + len(x)] for p in self.params(epoch, step, global_len))
        return shift_flip(x, dy, dx, flip, self.shift)
