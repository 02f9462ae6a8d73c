"""Compressed gradients: fp16 or bf16 on the wire, the sum restored in float32 on arrival (Horovod's fp16
compression, PyTorch DDP's fp16/bf16 hooks), with optional error feedback.

Each bucket (the same buckets as ``Bucketed``, started as soon as backward finished them) is rounded to 16 bits
and allgathered; on arrival every rank decompresses the P contributions and sums them in the arena's dtype, in
rank order, so every rank holds the same sum. Why an allgather and not an allreduce of 16-bit values: MPI
cannot sum fp16 or bf16 (no such types, and no custom operation through our world), and summing in 16 bits
would round at every hop; an allgather of P compressed buckets sends (P - 1) x 2 bytes per element where an
allreduce of float32 sends about 2 x 4 (P - 1) / P, so it sends less up to P = 4 ranks and more beyond:
this strategy is for a few ranks (hosts) on a slow network.

fp16 keeps 11 significant bits but only 5 exponent bits, so gradients (often 1e-4 to 1e-8) would underflow:
each rank scales its bucket by a power of two (exact) that brings the bucket's L2 norm, a bound on its largest
element, to 2^14 (below fp16's 65504), and sends the scale with it, as dynamic loss scaling does. What then
lies below fp16's smallest normal number (2^-14, so 2^-28 of the bucket's norm) is sent as 0 (flushed, as
hardware does with denormals off): NumPy converts float16 subnormals on a slow path, 30x slower than normal
values, and a few percent of a real gradient's elements are that small (flushing them made fp16 run 1.5x
faster on fashion-mlp). Error feedback carries them to a later step. bf16 keeps float32's exponent and 8
significant bits; NumPy has no bf16, so it is the upper half of the float32 bits, rounded to nearest even on
the uint32 view. Non-finite gradients stay non-finite on the wire (the scale is 1
then), so the non-finite check sees them.

Exactness: each rank's contribution is rounded to the format (relative error 2^-11 for fp16, 2^-8 for bf16;
fp16 also drops elements under 2^-28 of their bucket's norm),
so the trajectory is no longer the 1-rank one. With ``error_feedback`` each rank keeps what rounding dropped
(its residual) and adds it to the next step's gradient, so nothing is lost over steps, only delayed; the
residual is not checkpointed (a resumed run starts it at zero), and a bucket that is not finite (its step will be
skipped) leaves a zero residual, not a NaN that would make every later step non-finite too.
"""

import math

import numpy as np

from ...schema import Key
from .base import register
from .bucketed import SIZES, Bucketed, plain, sizes

FORMATS = ("fp16", "bf16")
# fp16/bf16/powersgd: carry what compression dropped to the next step
FEEDBACK = {"error_feedback": Key(bool, True)}
ERROR = {"fp16": 2.0 ** -11, "bf16": 2.0 ** -8}  # relative rounding error of each rank's contribution
SMALLEST_NORMAL = np.float32(2.0 ** -14)  # fp16's; below it fp16 is subnormal


class Compressed(Bucketed):
    """Bucketed sync with each bucket sent as 16-bit values (``fmt``: fp16 or bf16) and summed on arrival."""

    def __init__(self, w, model, fmt="fp16", error_feedback=True, bucket_bytes=1 << 20, split_bytes=256 << 10):
        super().__init__(w, model, bucket_bytes=bucket_bytes, split_bytes=split_bytes)
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r} (valid: {', '.join(FORMATS)})")
        self.name = self.fmt = fmt
        n = self.grads.size
        self.f32 = np.empty(n, np.float32)  # a bucket's decompressed values
        self.u32 = np.empty(n, np.uint32) if fmt == "bf16" else None
        # fp16: |scaled values| and where they would be subnormal
        self.abs, self.tiny = (np.empty(n, np.float32), np.empty(n, bool)) if fmt == "fp16" else (None, None)
        self.residual = np.zeros_like(self.grads) if error_feedback else None
        # per bucket: P rows of its values in 16 bits and 2 more holding the sender's float32 scale
        self.wire = {sl.start: np.zeros((w.size, sl.stop - sl.start + 2), np.uint16) for _, sl in self.buckets}
        self.sent = []

    def begin(self, accum=None, stats=None, norm_at=None):
        super().begin(accum, stats, norm_at)
        self.sent = []

    def _send(self, sl):
        g, wire = self.grads[sl], self.wire[sl.start]
        if self.residual is not None:
            g += self.residual[sl]
        row = wire[self.w.rank]
        finite = self.compress(g, row, self.f32[sl], None if self.u32 is None else self.u32[sl])
        if self.residual is not None and not finite:  # the step will be skipped: carry nothing (not NaN)
            self.residual[sl] = 0
        elif self.residual is not None:  # what rounding dropped: g - decompress(row)
            np.subtract(g, self.decompress(row, self.f32[sl], None if self.u32 is None else self.u32[sl]),
                        out=self.residual[sl])
        self.reqs.append(self.w.iallgather(wire.reshape(-1), [wire.shape[1]] * self.w.size))
        self.sent.append(sl)

    def _arrived(self):
        for sl in self.sent:
            g, wire, f32 = self.grads[sl], self.wire[sl.start], self.f32[sl]
            u32 = None if self.u32 is None else self.u32[sl]
            for r in range(self.w.size):
                v = self.decompress(wire[r], f32, u32)
                if r == 0:
                    g[...] = v
                else:
                    g += v
        self.sent = []

    def compress(self, x, row, f32, u32):
        """Round ``x`` into ``row`` (its values, then the float32 scale in the last two slots); returns whether
        ``x`` is finite (from the squared norm that the format needs anyway)."""
        values, scale = row[:-2], row[-2:].view(np.float32)
        if self.fmt == "fp16":
            sq = float(np.dot(x, x))
            s = 2.0 ** min(100, 14 - math.ceil(math.log2(math.sqrt(sq)))) if math.isfinite(sq) and sq > 0 else 1.0
            scale[0] = s
            np.multiply(x, s, out=f32)
            tiny = self.tiny[:f32.size]
            np.less(np.abs(f32, out=self.abs[:f32.size]), SMALLEST_NORMAL, out=tiny)
            np.copyto(f32, 0, where=tiny)
            values.view(np.float16)[...] = f32
            return math.isfinite(sq)
        scale[0] = 1.0
        if x.dtype != np.float32:
            f32[...] = x
            x = f32
        u = x.view(np.uint32)
        np.right_shift(u, 16, out=u32)  # round to nearest even: add 0x7FFF plus the lowest kept bit
        u32 &= 1
        u32 += 0x7FFF
        u32 += u
        np.right_shift(u32, 16, out=u32)
        values[...] = u32
        if not math.isfinite(float(np.dot(x, x))):  # NaNs whose low bits carry past 0xFFFF wrap: keep them NaN
            values[np.isnan(x)] = 0x7FC0
            return False
        return True

    def decompress(self, row, f32, u32):
        """The float32 values ``row`` holds (in ``f32`` for fp16, a view of ``u32`` for bf16)."""
        values, scale = row[:-2], row[-2:].view(np.float32)[0]
        if self.fmt == "fp16":
            np.multiply(values.view(np.float16), np.float32(1.0 / scale), out=f32)
        else:
            u32[...] = values
            u32 <<= 16
            return u32.view(np.float32)
        return f32


def _build(fmt):
    return lambda w, model, opts: Compressed(w, model, fmt, error_feedback=opts["error_feedback"], **sizes(opts))


for _fmt in FORMATS:
    # not resumable: the residual is not checkpointed (error feedback starts again from zero)
    register(_fmt, _build(_fmt), {**SIZES, **FEEDBACK}, one_rank=plain, exact=False, error=ERROR[_fmt],
             resumable=False)
