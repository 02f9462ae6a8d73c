"""PowerSGD (Vogels, Karimireddy & Jaggi 2019; PyTorch DDP's powerSGD hook): each matrix-shaped gradient
sent as a rank-r product, with error feedback and a warm-started Q.

For a layer's weight gradient M (n x m: a Dense W as in x out, a Conv W as out x in*kh*kw), with this rank's
residual e added (M <- M + e) and the previous step's Q (m x r; random at first, the same on every rank):

    P <- M Q          allreduce (sum) P,  P <- orthonormal basis of P (QR)
    Q <- M^T P        e <- M - P Q^T  (what this rank's projection dropped)
                      allreduce (sum) Q,  gradient <- P Q^T   (= P P^T sum_ranks M)

so (n + m) r numbers cross the wire instead of n m. Biases, matrices that would not shrink at least twice
(n m < 2 r (n + m), DDP's ``min_compression_rate``) and matrices of fewer than ``min_size`` elements (their QR
and products cost more time than their few kB take on a 1 Gbit/s link: fashion-mlp's 128 x 10) are sent as
they are, in the same message as the P's: one allreduce when backward ends, then one of all the Q's, which
travel while each rank computes its residuals. The first ``warmup`` steps use the plain bucketed allreduce
(the paper's and DDP's warm-up: early gradients change fast and compress badly).

Exactness: the sum is the projection of the true sum on a rank-r subspace (exact when the summed gradient has
rank <= r); error feedback keeps what each rank's projection dropped and adds it to the next step's gradient,
so the sent gradients' running sum stays within one step's residual of the true running sum. Q, the residuals
and the step count are not checkpointed: a resumed run warms up again from a fresh Q.
"""

import numpy as np

from ...blas import subtract_product
from ...schema import Key
from .base import Sync, register
from .bucketed import SIZES, Bucketed, plain, sizes
from .compressed import FEEDBACK


class PowerSGD(Sync):
    """Rank-``rank`` compression of each matrix gradient, after ``warmup`` uncompressed (bucketed) steps."""

    name = "powersgd"

    def __init__(self, w, model, rank=4, warmup=10, min_size=4096, error_feedback=True, seed=0,
                 bucket_bytes=1 << 20, split_bytes=256 << 10):
        super().__init__(w, model)
        self.rank, self.warmup, self.min_size = int(rank), int(warmup), int(min_size)
        self.plain = Bucketed(w, model, bucket_bytes=bucket_bytes, split_bytes=split_bytes)
        self.steps = 0
        self.warm = False  # this step is a warm-up step (sent by self.plain)
        base, size = self.grads.ctypes.data, self.grads.itemsize
        self.rng = rng = np.random.default_rng(seed)  # draws the same Q's on every rank
        self.layers = {}  # layer index -> ([matrix], [(arena slice, its place in the send buffer)])
        self.matrices = []  # every compressed matrix, in backward order
        p_at = q_at = 0
        plain = []
        for i in reversed(range(len(model.layers))):
            mats, rest = [], []
            for g in model.layers[i].grads.values():
                lo = (g.ctypes.data - base) // size
                sl = slice(lo, lo + g.size)
                n, m = (g.shape[0], g.size // g.shape[0]) if g.ndim >= 2 else (1, g.size)
                if g.ndim >= 2 and n * m >= max(2 * self.rank * (n + m), self.min_size):
                    mats.append(_Matrix(sl, n, m, p_at, q_at))
                    p_at, q_at = p_at + n * self.rank, q_at + m * self.rank
                else:
                    rest.append(sl)
            if mats or rest:
                self.layers[i] = (mats, rest)
                self.matrices += mats
                plain += rest
        self.last = min(self.layers) if self.layers else None  # the layer that ends backward
        # one send buffer: every P, then every gradient sent as it is (biases, small matrices)
        dtype = self.grads.dtype
        self.send = np.zeros(p_at + sum(sl.stop - sl.start for sl in plain), dtype)
        self.p_buf, self.q_buf, self.q_sum = self.send[:p_at], np.zeros(q_at, dtype), np.zeros(q_at, dtype)
        at = p_at
        for i, (mats, rest) in self.layers.items():
            placed = []
            for sl in rest:
                placed.append((sl, self.send[at:at + sl.stop - sl.start]))
                at += sl.stop - sl.start
            self.layers[i] = (mats, placed)
        self.plain_parts = [part for mats, placed in self.layers.values() for part in placed]
        for mat in self.matrices:
            mat.bind(self, rng, error_feedback)

    def begin(self, accum=None, stats=None, norm_at=None):
        self.steps += 1
        self.warm = self.steps <= self.warmup or not self.matrices
        if self.warm:
            return self.plain.begin(accum, stats, norm_at)
        super().begin(accum, stats, norm_at)

    def rows(self, i):
        return self.plain.rows(i) if self.warm else None

    def layer_done(self, i):
        """Compress layer i's matrices (P = M Q) and copy its other gradients into the send buffer; after the
        layer that ends backward, send it all in one allreduce (a message per layer costs more in latency
        and in the calls that progress it than its overlap saves: the whole buffer is a few kB)."""
        if self.warm:
            return self.plain.layer_done(i)
        mats, placed = self.layers.get(i, ((), ()))
        for sl, buf in placed:
            self._local(sl)
            if self.accum is not None:
                np.add(self.grads[sl], self.accum[sl], out=buf)
            else:
                np.copyto(buf, self.grads[sl])
        for mat in mats:
            self._local(mat.sl)
            mat.compress(self.accum)
        if i == self.last:
            self._send_stats()
            self.reqs.append(self.w.iallreduce(self.send))

    def finish(self):
        if self.warm:
            self.wait_s = self.plain.finish()
            return self.wait_s
        return super().finish()

    def _complete(self):
        self.w.waitall(self.reqs)
        self.reqs = []
        for sl, buf in self.plain_parts:
            np.copyto(self.grads[sl], buf)
        if not np.isfinite(self.p_buf).all():  # a non-finite gradient somewhere (the same P on every rank)
            self._restart()
            return
        for mat in self.matrices:
            mat.P[...] = np.linalg.qr(mat.P)[0]
            np.matmul(mat.X.T, mat.P, out=mat.Q)
        # the Q's travel (a copy: this rank's own Q's give its residuals) while the residuals are computed
        np.copyto(self.q_sum, self.q_buf)
        req = self.w.iallreduce(self.q_sum)
        for mat in self.matrices:
            mat.drop()
        self.w.waitall([req])
        np.copyto(self.q_buf, self.q_sum)  # the summed Q's: the next step's warm start
        for mat in self.matrices:
            np.matmul(mat.P, mat.Q.T, out=mat.M)  # the sum's projection, into the arena

    def _restart(self):
        """After a non-finite gradient: the matrices read NaN (the step's non-finite check sees it), and the
        residuals and Q start afresh, since a skipped step must not poison the steps after it."""
        for mat in self.matrices:
            mat.M[...] = np.nan
            mat.Q[...] = self.rng.standard_normal(mat.Q.shape)
            if mat.e is not None:
                mat.e[...] = 0


class _Matrix:
    """One compressed gradient: its arena slice M seen as n x m, its P (n x r) and Q (m x r), and X, what it
    compresses: with error feedback its own buffer (M plus the residual; the new residual in place
    afterwards, no pass over M needed), else M itself."""

    def __init__(self, sl, n, m, p_at, q_at):
        self.sl, self.n, self.m, self.p_at, self.q_at = sl, n, m, p_at, q_at

    def bind(self, sync, rng, error_feedback):
        r = sync.rank
        self.M = sync.grads[self.sl].reshape(self.n, self.m)
        self.P = sync.p_buf[self.p_at:self.p_at + self.n * r].reshape(self.n, r)
        self.Q = sync.q_buf[self.q_at:self.q_at + self.m * r].reshape(self.m, r)
        self.Q[...] = rng.standard_normal((self.m, r))  # the same on every rank (one seed)
        self.e = np.zeros((self.n, self.m), sync.grads.dtype) if error_feedback else None
        self.X = self.M if self.e is None else self.e

    def compress(self, accum):
        """X <- this rank's gradient plus the accumulated micro-steps and its residual; P <- X Q."""
        if self.e is not None:
            self.e += self.M
        if accum is not None:
            self.X += accum[self.sl].reshape(self.n, self.m)
        np.matmul(self.X, self.Q, out=self.P)

    def drop(self):
        """The residual, what this rank's projection on P drops: X <- X - P Q^T (Q = X^T P, this rank's),
        in one gemm."""
        if self.e is not None:
            subtract_product(self.e, self.P, self.Q)


register("powersgd",
         lambda w, model, opts: PowerSGD(w, model, rank=opts["powersgd_rank"], warmup=opts["powersgd_warmup"],
                                         min_size=opts["powersgd_min_size"],
                                         error_feedback=opts["error_feedback"], **sizes(opts)),
         {**SIZES, **FEEDBACK,
          "powersgd_rank": Key(int, 4, ge=1),  # the rank of each matrix gradient's approximation
          "powersgd_warmup": Key(int, 10, ge=0),  # steps sent uncompressed first
          "powersgd_min_size": Key(int, 4096, ge=0)},  # matrices with fewer elements are sent uncompressed
         one_rank=plain, exact=False, resumable=False)  # Q, the residuals and the step count: not checkpointed
