"""Distributed evaluation: each rank a contiguous part of the split, sums allreduced."""

import numpy as np

from .. import comm

_readers = {}


def evaluate(world, model, loss, split, batch_size=1000, mode="auto"):
    """Mean loss and accuracy of ``model`` over the whole ``split``; returns (loss, accuracy, samples)."""
    from ..data import BatchReader, eval_partition

    key = (id(split), mode)
    reader = _readers.get(key)
    if reader is None:
        reader = _readers[key] = BatchReader(split, mode=mode, dtype=model.dtype, prefetch=1)
    part = eval_partition(len(split), world.rank, world.size)
    chunks = (np.arange(i, min(i + batch_size, part.stop)) for i in range(part.start, part.stop, batch_size))
    loss_sum = correct = n = 0.0
    for x, y in reader.batches(chunks):
        out = model.forward(x, training=False)
        loss_sum += loss.forward(out, y) * len(y)
        correct += loss.correct(out, y)
        n += len(y)
    loss_sum, correct, n = comm.stats_allreduce(world, [loss_sum, correct, n])
    return loss_sum / max(n, 1), correct / max(n, 1), int(n)


def close_readers():
    for reader in _readers.values():
        reader.close()
    _readers.clear()
