"""im2col/col2im for NCHW convolutions, with a channel-first padded buffer that makes the GEMM contiguous.

The padded input is a buffer in one of three layouts; the columns have that layout with the kernel axes
(kh, kw) inserted after the channel axis.
- ``NCHW`` (order (0, 1, 2, 3)): columns ``(N, C, kh, kw, Ho, Wo)``, one GEMM per sample
  ``W(O, C*kh*kw) @ cols[n]``; no transposes at all, good when Ho*Wo is large enough for efficient GEMMs.
- ``CNHW`` (order (1, 0, 2, 3)): columns ``(C, kh, kw, N, Ho, Wo)`` = a ``(C*kh*kw, positions)`` matrix, so the
  forward is one big GEMM; cheap to convert from/to NCHW; each copy moves rows of Wo pixels.
- ``CHWN`` (order (1, 2, 3, 0)): as CNHW with the batch innermost, so a window row is Wo*N contiguous values and
  col2im's adds run ~2x faster; the NCHW<->CHWN transposes cost more, so it pays only where col2im runs.
The only Python loops run over the kh*kw kernel offsets.
"""

import math

import numpy as np

from ...errors import ConfigError


def pair(v, what):
    """An int or a pair of ints as a pair."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(a, (int, np.integer)) for a in v):
        return int(v[0]), int(v[1])
    raise ConfigError(f"{what} must be an int or a pair of ints, got {v!r}")


def padding_amounts(padding, size, kernel, stride):
    """(top, bottom, left, right) padding for ``padding`` = int, pair, "same" or "valid"."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":  # output = ceil(n / stride); the odd extra row/column goes at the bottom/right
        amounts = []
        for n, k, s in zip(size, kernel, stride):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            amounts += [total // 2, total - total // 2]
        return tuple(amounts)
    if isinstance(padding, str):
        raise ConfigError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    ph, pw = pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ConfigError(f"padding must be >= 0, got {padding!r}")
    return ph, ph, pw, pw


def conv_output_size(size, kernel, stride, pads):
    """(Ho, Wo) of a convolution over ``size`` = (H, W) with (top, bottom, left, right) ``pads``."""
    (h, w), (kh, kw), (sh, sw) = size, kernel, stride
    ho = (h + pads[0] + pads[1] - kh) // sh + 1
    wo = (w + pads[2] + pads[3] - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ConfigError(f"kernel {kh}x{kw} does not fit the padded input {h}x{w} (padding {pads})")
    return ho, wo


NCHW = (0, 1, 2, 3)
CNHW = (1, 0, 2, 3)
CHWN = (1, 2, 3, 0)


def layout_shape(n, c, h, w, order):
    """Shape of an NCHW array of these sizes transposed by ``order``."""
    return tuple((n, c, h, w)[a] for a in order)


def to_nchw(a, order):
    """A layout-``order`` array as NCHW (a view)."""
    return a.transpose(np.argsort(order))


def pad_into(x, buf, top, left, order=CNHW):
    """Copy NCHW ``x`` into the interior of the padded buffer ``buf`` (layout ``order``); borders stay 0."""
    h, w = x.shape[2:]
    to_nchw(buf, order)[:, :, top:top + h, left:left + w] = x


def unpad(buf, top, left, h, w, order=CNHW):
    """The NCHW interior (N, C, h, w) of a padded buffer, as a new contiguous array."""
    return np.ascontiguousarray(to_nchw(buf, order)[:, :, top:top + h, left:left + w])


def windows(xp, i, j, out_hw, stride, order=CNHW):
    """View of the padded buffer ``xp`` seen by kernel offset (i, j): its spatial axes cut to (Ho, Wo)."""
    (ho, wo), (sh, sw) = out_hw, stride
    index = [slice(None)] * 4
    index[order.index(2)] = slice(i, i + sh * (ho - 1) + 1, sh)
    index[order.index(3)] = slice(j, j + sw * (wo - 1) + 1, sw)
    return xp[tuple(index)]


def cols_shape(n, c, kernel, out_hw, order):
    """Shape of the columns: layout ``order`` of (N, C, Ho, Wo), the kernel axes (kh, kw) right after C."""
    shape, at = layout_shape(n, c, *out_hw, order), order.index(1) + 1
    return shape[:at] + tuple(kernel) + shape[at:]


def _offsets(cols, order):
    """(index of cols at kernel offset (i, j), i, j) for every offset, and (Ho, Wo)."""
    at = order.index(1) + 1
    kh, kw = cols.shape[at:at + 2]
    out_hw = cols.shape[order.index(2) + 2], cols.shape[order.index(3) + 2]
    return [((slice(None),) * at + (i, j), i, j) for i in range(kh) for j in range(kw)], out_hw


def im2col(xp, cols, stride, order=CNHW):
    """Fill ``cols`` (see ``cols_shape``) from the padded buffer ``xp`` of layout ``order``."""
    offsets, out_hw = _offsets(cols, order)
    for index, i, j in offsets:
        cols[index] = windows(xp, i, j, out_hw, stride, order)


def col2im(cols, xp, stride, order=CNHW):
    """Sum the columns ``cols`` (see ``cols_shape``) back into the padded buffer ``xp`` (overwritten)."""
    offsets, out_hw = _offsets(cols, order)
    xp.fill(0)
    for index, i, j in offsets:
        view = windows(xp, i, j, out_hw, stride, order)
        np.add(view, cols[index], out=view)


class Scratch:
    """Work arrays reused across steps (no page faults), one per name; a new shape or dtype replaces it."""

    def __init__(self):
        self.arrays = {}

    def get(self, name, shape, dtype, zero=False):
        a = self.arrays.get(name)
        if a is None or a.shape != tuple(shape) or a.dtype != dtype:
            a = self.arrays[name] = (np.zeros if zero else np.empty)(shape, dtype)
        return a
