"""The observer interface (see the package docstring): every hook does nothing unless overridden."""


class Observer:
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
