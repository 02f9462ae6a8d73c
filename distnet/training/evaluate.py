"""Distributed evaluation: each rank a contiguous part of the split, sums allreduced."""

import numpy as np


class Evaluator:
    """Evaluates a model on named splits again and again (each epoch), keeping each split's reader open."""

    def __init__(self, world, model, loss, batch_size=256, mode="auto"):
        self.world, self.model, self.loss, self.batch_size, self.mode = world, model, loss, batch_size, mode
        self.readers = {}

    def __call__(self, name, split):
        """Mean loss and accuracy of the model over the whole ``split``; returns (loss, accuracy, samples)."""
        from ..data import BatchReader, eval_partition

        if name not in self.readers:
            self.readers[name] = BatchReader(split, mode=self.mode, dtype=self.model.dtype, prefetch="auto")
        reader, w, b = self.readers[name], self.world, self.batch_size
        part = eval_partition(len(split), w.rank, w.size)
        chunks = (np.arange(i, min(i + b, part.stop)) for i in range(part.start, part.stop, b))
        loss_sum = correct = n = 0.0
        for x, y in reader.batches(chunks):
            out = self.model.forward(x, training=False)
            loss_sum += self.loss.forward(out, y) * len(y)
            correct += self.loss.correct(out, y)
            n += len(y)
        loss_sum, correct, n = w.sum([loss_sum, correct, n])
        return loss_sum / max(n, 1), correct / max(n, 1), int(n)

    def close(self):
        for reader in self.readers.values():
            reader.close()
        self.readers = {}


def evaluate(world, model, loss, split, batch_size=256, mode="auto"):
    """One evaluation of ``model`` on ``split``: (loss, accuracy, samples)."""
    ev = Evaluator(world, model, loss, batch_size, mode)
    try:
        return ev("split", split)
    finally:
        ev.close()
