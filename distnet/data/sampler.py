"""The sampler (contract): the global order of an epoch depends on (seed, epoch) only, never on ranks.

Global batch t of epoch e is ``global_order(e)[t*B:(t+1)*B]``; rank r of p takes its contiguous B/p part.
Every rank takes ``steps_per_epoch`` steps. With ``drop_last=True`` (the default) the last n mod B samples
of each epoch's order are skipped (a different set each epoch). With ``drop_last=False`` there is one more,
smaller global batch of n mod B samples, split between ranks like ``eval_partition`` (parts may differ by
one and can be empty when n mod B < p); the training loop must then divide by the true global count.

A position is (epoch, step) in global steps: valid under any rank count as long as B and n are the same.
Resuming with a different global batch is refused (see ``check_state``).
"""

import numpy as np

from ..errors import ConfigError, DataError


def eval_partition(n, rank, world_size):
    """This rank's contiguous slice of N samples; together the ranks cover each sample once (sizes differ
    by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class Sampler:
    """This rank's sample indices for every (epoch, step) of data-parallel training."""

    def __init__(self, num_samples, global_batch, rank=0, world_size=1, seed=0, drop_last=True):
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
        self.local_batch = global_batch // world_size
        self.offset = rank * self.local_batch
        full, rest = divmod(num_samples, global_batch)
        self.steps_per_epoch = full + (rest > 0 and not drop_last)

    def global_order(self, epoch):
        """The permutation of all samples for EPOCH, from (seed, epoch) only."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

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

    def state(self, epoch, step):
        """A resumable position: the next global step to run and what it depends on."""
        return {"epoch": int(epoch), "step": int(step), "global_batch": self.global_batch,
                "num_samples": self.num_samples, "seed": self.seed, "drop_last": self.drop_last}

    def check_state(self, state):
        """(epoch, step) of a saved position, refusing one that this sampler would not reproduce."""
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
