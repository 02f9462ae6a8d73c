"""The observer interface (see the package docstring): every hook does nothing unless overridden."""


class Observer:
    def on_train_line(self, run, fields):
        """A train line is about to be written: ``fields`` (a dict: step, loss, accuracy, ...) takes this
        observer's additions, e.g. a per-step metric's mean since the last line. Told on every rank at the
        same steps (an addition may be collective); rank 0 writes the line."""

    def on_start(self, run):
        pass

    def on_batch(self, run, x, y):
        pass

    def on_step(self, run, stats):
        pass

    def on_epoch_end(self, run):
        pass

    def on_end(self, run):
        pass
