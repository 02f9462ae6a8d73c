"""The sampler (contract): the global order of an epoch depends on (seed, epoch) only, never on ranks.

Global batch t of epoch e is ``global_order(e)[t*B:(t+1)*B]``; rank r of p takes its contiguous B/p part.
Every rank takes ``steps_per_epoch`` steps. With ``drop_last=True`` (the default) the last n mod B samples
of each epoch's order are skipped (a different set each epoch). With ``drop_last=False`` there is one more,
smaller global batch of n mod B samples, split between ranks like ``eval_partition`` (parts may differ by
one and can be empty when n mod B < p); the training loop must then divide by the true global count.

A position is (epoch, step) in global steps: valid under any rank count as long as B and n are the same.
Resuming with a different global batch is refused (see ``check_state``).

Orders (``data.order``): ``"random"`` (the default) is a uniform permutation of all samples. ``"blocks"`` is
for data streamed from a disk, where a random order makes every sample a random read: the samples are cut into
blocks of ``block_size`` consecutive rows, the blocks are permuted, and the samples are shuffled within each
window of ``block_window`` consecutive blocks of that permutation (the last window may be shorter). A global
batch then reads from a few blocks of the file at a time, each block once per epoch. Both depend on (seed,
epoch, n) and the order's settings only.
"""

import numpy as np

from ..errors import ConfigError, DataError

ORDERS = ("random", "blocks")
DEFAULT_BLOCK_SIZE = 256
DEFAULT_BLOCK_WINDOW = 16


def eval_partition(n, rank, world_size):
    """This rank's contiguous slice of N samples; together the ranks cover each sample once (sizes differ
    by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class Sampler:
    """This rank's sample indices for every (epoch, step) of data-parallel training."""

    def __init__(self, num_samples, global_batch, rank=0, world_size=1, seed=0, drop_last=True, order="random",
                 block_size=DEFAULT_BLOCK_SIZE, block_window=DEFAULT_BLOCK_WINDOW):
        if order not in ORDERS:
            raise ConfigError(f"data.order {order!r} is not one of {', '.join(ORDERS)}")
        for key, value in (("block_size", block_size), ("block_window", block_window)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"data.{key} = {value!r}: use a whole number >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not within a world of {world_size} ranks")
        if global_batch < 1 or global_batch % world_size:
            raise ConfigError(f"global batch size {global_batch} is not divisible by {world_size} ranks: "
                              f"choose a batch size that is a multiple of {world_size}")
        if num_samples < global_batch:
            raise DataError(f"the dataset has {num_samples} samples, fewer than one global batch of "
                            f"{global_batch}: use a batch size of at most {num_samples}")
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.order, self.block_size, self.block_window = order, int(block_size), int(block_window)
        self.local_batch = global_batch // world_size
        self.offset = rank * self.local_batch
        full, rest = divmod(num_samples, global_batch)
        self.steps_per_epoch = full + (rest > 0 and not drop_last)

    @property
    def order_options(self):
        """The keyword arguments that choose this sampler's order (for a sampler like this one)."""
        return {"order": self.order, "block_size": self.block_size, "block_window": self.block_window}

    def with_batch(self, global_batch):
        """A sampler like this one (rank, seed, order) cutting the same epoch orders into GLOBAL_BATCH."""
        return Sampler(self.num_samples, global_batch, self.rank, self.world_size, self.seed, self.drop_last,
                       **self.order_options)

    def global_order(self, epoch):
        """The permutation of all samples for EPOCH, from (seed, epoch) only."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.order == "random":
            return rng.permutation(self.num_samples)
        return block_order(rng, self.num_samples, self.block_size, self.block_window)

    def global_batch_indices(self, epoch, step, order=None):
        """All ranks' indices of global batch STEP of EPOCH."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside 0..{self.steps_per_epoch - 1}")
        order = self.global_order(epoch) if order is None else order
        return order[step * self.global_batch:(step + 1) * self.global_batch]

    def rank_slice(self, batch_len):
        """Positions of this rank's part within a global batch of BATCH_LEN samples."""
        if batch_len == self.global_batch:
            return slice(self.offset, self.offset + self.local_batch)
        return eval_partition(batch_len, self.rank, self.world_size)

    def batch_indices(self, epoch, step, order=None):
        """This rank's indices for STEP of EPOCH."""
        batch = self.global_batch_indices(epoch, step, order)
        return batch[self.rank_slice(len(batch))]

    def epoch_batches(self, epoch, start_step=0):
        """Yield (step, this rank's indices) for the steps of EPOCH from START_STEP on."""
        order = self.global_order(epoch)
        for step in range(start_step, self.steps_per_epoch):
            yield step, self.batch_indices(epoch, step, order)

    def order_state(self):
        """What the order depends on besides (seed, epoch, n): {"order": "random"}, or the block settings too."""
        if self.order == "random":
            return {"order": "random"}
        return {"order": self.order, "block_size": self.block_size, "block_window": self.block_window}

    def state(self, epoch, step):
        """A resumable position: the next global step to run and what it depends on."""
        return {"epoch": int(epoch), "step": int(step), "global_batch": self.global_batch,
                "num_samples": self.num_samples, "seed": self.seed, "drop_last": self.drop_last,
                **self.order_state()}

    def check_state(self, state):
        """(epoch, step) of a saved position, refusing one that this sampler would not reproduce. The order's
        keys are checked when the state has them (a position saved without them is checked on the rest)."""
        if "order" in state:
            saved = {k: state[k] for k in ("order", "block_size", "block_window") if k in state}
            if saved != self.order_state():
                def words(o):
                    return " ".join(f"--set data.{k}={v!r}".replace("'", '"') for k, v in o.items())
                raise ConfigError(f"cannot resume: the saved position was written with {words(saved)} but this "
                                  f"run has {words(self.order_state())}; the sample order would change: use "
                                  f"{words(saved)}")
        for key, now in (("global_batch", self.global_batch), ("num_samples", self.num_samples),
                         ("seed", self.seed), ("drop_last", self.drop_last)):
            if state[key] != now:
                fix = {"seed": f"--seed {state[key]}", "global_batch": f"--batch-size {state[key]}",
                       "num_samples": "the same dataset and data.val_fraction as the saved run"}
                raise ConfigError(f"cannot resume: the saved position was written with {key}={state[key]} "
                                  f"but this run has {key}={now}; the sample order would change: "
                                  f"use {fix.get(key, f'{key}={state[key]}')}")
        if not 0 <= state["step"] <= self.steps_per_epoch:
            raise ConfigError(f"cannot resume: saved step {state['step']} is outside this epoch's "
                              f"{self.steps_per_epoch} steps")
        return state["epoch"], state["step"]


def block_order(rng, n, block_size, window):
    """All N samples in blocks: blocks of BLOCK_SIZE consecutive rows (the last may be short) permuted by RNG,
    then the samples shuffled within each WINDOW of consecutive blocks of that permutation."""
    blocks = rng.permutation(-(-n // block_size))
    starts = blocks * block_size
    lengths = np.minimum(block_size, n - starts)
    first = np.cumsum(lengths) - lengths  # where each block begins in the order
    order = np.arange(n, dtype=np.int64) + np.repeat(starts - first, lengths)
    bounds = np.r_[first[::window], n]  # where each window begins, and the end
    span = block_size * window
    # every window is SPAN samples but the one holding the short block and the last one: runs of full
    # windows are shuffled as the rows of a matrix, the (at most two) others one at a time
    odd = np.flatnonzero(np.diff(bounds) != span)
    edges = np.unique(np.r_[0, odd, odd + 1, len(bounds) - 1])
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        lo, hi = int(bounds[a]), int(bounds[b])
        if hi - lo == (b - a) * span:
            order[lo:hi] = rng.permuted(order[lo:hi].reshape(b - a, span), axis=1).ravel()
        else:
            order[lo:hi] = rng.permutation(order[lo:hi])
    return order
