"""Bucketed, overlapped allreduce: each bucket of the arena is sent as soon as backward has finished it."""

from ...schema import NUM, Key
from .base import Flat, Rows, Sync, register

# the [comm] keys of every strategy that sends the arena in buckets (bucketed, zero, fp16, bf16, powersgd)
SIZES = {
    "bucket_mb": Key(NUM, 1.0, gt=0),  # gradient bucket size
    "split_mb": Key(NUM, 0.25, ge=0),  # send the first layer's dW in row blocks of this size (0 = whole)
}


def sizes(opts):
    """``Bucketed``'s size arguments from the ``SIZES`` options."""
    return dict(bucket_bytes=int(opts["bucket_mb"] * 2 ** 20), split_bytes=int(opts["split_mb"] * 2 ** 20))


def plain(w, model, opts):
    """The plain bucketed step (what a strategy that sends buckets is on one rank, where nothing is sent)."""
    return Bucketed(w, model, **sizes(opts))


class Bucketed(Sync):
    """Sum the gradient arena over ranks in buckets that start as soon as backward has finished them.

    Buckets are contiguous slices of the arena, formed in backward's order (from the last layer towards the
    first) until each holds at least ``bucket_bytes``; a bucket starts its non-blocking allreduce when
    backward has finished all of it, and ``finish()`` waits for all. Between layers the strategy calls
    Testall, since MPI moves data only inside MPI calls.

    The first layer with parameters is last in backward, so whatever bucket holds it would wait for the
    whole backward pass and its allreduce would be fully exposed. When that layer is a Dense layer with a
    large weight (the MLP's 784x256 is 85 % of its gradients), it computes dW in row blocks of about
    ``split_bytes`` (0: never split), last rows first (the arena's descending order), and each block is
    sent as soon as it is computed, overlapping the next block's matrix product, so that only the last
    block's allreduce need be exposed. Each block is itself computed in four row pieces with a Testall
    after each: on shared memory with one core per rank MPI moves data only inside MPI calls, so polling
    within a block (rather than once per block) is what lets the previous block travel.

    With gradient accumulation, ``accum`` holds the earlier micro-steps' sum; it is added bucket by bucket
    just before that bucket's allreduce starts, so accumulation costs no extra pass over the arena. When the
    step asks for this rank's squared gradient norm (``norm_at``), each bucket adds its dot product just
    before that (in cache, as the bucket was just written), and the stats leave with the last bucket.
    """

    name = "bucketed"

    def __init__(self, w, model, bucket_bytes=1 << 20, split_bytes=256 << 10):
        super().__init__(w, model)
        itemsize = self.grads.itemsize
        self.split_index, self.row_blocks, self.pieces = None, None, None
        units = []  # (ready key, lo, hi, closes its bucket), in the order backward makes them ready
        with_params = [i for i, (lo, hi) in enumerate(model.layer_ranges) if hi > lo]
        for i in reversed(with_params):
            lo, hi = model.layer_ranges[i]
            blocks = self._row_blocks(model, i, split_bytes) if w.size > 1 and i == with_params[0] else None
            if blocks is None:
                units.append((i, lo, hi, False))
                continue
            self.split_index, self.row_blocks = i, blocks
            self.pieces = self._pieces(blocks)
            out = model.layers[i].grads["W"].shape[1]
            (r0, _), rest = blocks[0], blocks[1:]
            units.append(((i, r0), lo + r0 * out, hi, True))  # the last rows, the bias, and the open bucket
            units += [((i, a), lo + a * out, lo + b * out, True) for a, b in rest]
        self.buckets = []  # (ready key, slice), in the order they become ready
        stop = None
        for n, (key, lo, hi, closes) in enumerate(units):
            stop = hi if stop is None else stop
            if closes or (stop - lo) * itemsize >= bucket_bytes or n == len(units) - 1:
                self.buckets.append((key, slice(lo, stop)))
                stop = None
        self.ready_at = dict(self.buckets)

    @staticmethod
    def _row_blocks(model, i, split_bytes):
        """Row blocks [(lo, hi), ...] (last first) for layer i's dW, or None if it should not be split."""
        layer = model.layers[i]
        if split_bytes <= 0 or not getattr(layer, "reports_rows", False) or "W" not in layer.grads:
            return None
        gW = layer.grads["W"]
        lo = model.layer_ranges[i][0]
        if gW.nbytes < 2 * split_bytes or gW.ctypes.data != model.grads_flat[lo:].ctypes.data:
            return None
        rows = max(1, split_bytes // (gW.shape[1] * gW.itemsize))
        return [(a, min(a + rows, gW.shape[0])) for a in range(0, gW.shape[0], rows)][::-1]

    @staticmethod
    def _pieces(blocks, parts=4):
        """Each block's rows in PARTS pieces, last rows first: the matrix products between two polls."""
        out = []
        for a, b in blocks:
            step = max(1, -(-(b - a) // parts))
            out += [(x, min(x + step, b)) for x in range(a, b, step)][::-1]
        return out

    def begin(self, accum=None, stats=None, norm_at=None):
        self.started = 0
        super().begin(accum, stats, norm_at)

    def _start(self, sl):
        self._local(sl)
        if self.accum is not None:
            self.grads[sl] += self.accum[sl]
        if self.w.size > 1:
            self._send(sl)
        self.started += 1
        if self.started == len(self.buckets):
            self._send_stats()

    def _send(self, sl):
        """Start summing bucket ``sl`` over the ranks."""
        self.reqs.append(self.w.iallreduce(self.grads[sl]))

    def rows(self, i):
        return Rows(self.pieces, self._rows_done) if i == self.split_index else None

    def _rows_done(self, lo, hi):
        """Rows lo:hi of the split layer's dW are final; a block is ready with its first rows."""
        sl = self.ready_at.get((self.split_index, lo))
        if sl is not None:
            self._start(sl)
        self.w.testall(self.reqs)

    def layer_done(self, i):
        sl = self.ready_at.get(i)
        if sl is not None:
            self._start(sl)
        elif self.reqs:
            self.w.testall(self.reqs)


register("bucketed", lambda w, model, opts: plain(w, model, opts) if opts["overlap"] else Flat(w, model),
         {**SIZES, "overlap": Key(bool, True)},  # overlap: start each bucket's allreduce during backward
         auto=lambda w, model: 0)  # auto's choice where shm does not fit
