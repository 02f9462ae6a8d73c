"""Early stopping on the validation accuracy, keeping the best model as ``best.h5``."""

from .base import Observer


class EarlyStop(Observer):
    """After each epoch's evaluation (put it after ``Evaluation``): a new best validation accuracy saves
    ``best``; ``train.patience`` epochs without one end the run."""

    def __init__(self, run, checkpoints, log):
        self.patience, self.checkpoints, self.log = run.cfg["train"]["patience"], checkpoints, log
        self.best = run.pos.best_metric  # before this epoch's evaluation raised it

    def on_epoch_end(self, run):
        pos = run.pos
        if run.last_eval > self.best:
            self.best, pos.bad_evals = run.last_eval, 0
            self.checkpoints.save(run, tag="best")
            return
        pos.bad_evals += 1
        if pos.bad_evals >= self.patience:
            self.log.line(f"  early stop: validation accuracy has not improved for {self.patience} epoch(s); "
                          f"best {self.best:.4f}")
            run.stop = "early stop"
