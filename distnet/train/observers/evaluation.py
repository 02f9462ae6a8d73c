"""Evaluation cadence: every ``train.eval_every`` steps (if set) and at each epoch end."""

from ... import comm
from ..evaluate import Evaluator
from .base import Observer


class Evaluation(Observer):
    """Evaluates on the validation split (when held out) and the test split; keeps ``run.last_eval`` (the
    validation accuracy, else the test accuracy) and ``run.pos.best_metric``."""

    def __init__(self, run, log):
        self.log = log
        tc = run.cfg["train"]
        self.every = tc["eval_every"]
        self.evaluator = Evaluator(run.world, run.model, run.loss, batch_size=tc["eval_batch_size"],
                                   mode=run.cfg["data"]["reader"])

    def evaluate(self, run):
        with run.off_clock():
            comm.average_buffers(run.world, run.model)
            results = {}
            for name, split in (("val", run.val_split), ("test", run.dataset["test"])):
                if split is not None:
                    loss, acc, n = self.evaluator(name, split)
                    results[name] = acc
                    self.log.eval(run, name, loss, acc, n)
            run.last_eval = results.get("val", results.get("test"))

    def on_step(self, run, stats):
        if self.every and run.pos.global_step % self.every == 0:
            self.evaluate(run)

    def on_epoch_end(self, run):
        self.evaluate(run)
        if run.last_eval is not None:
            run.pos.best_metric = max(run.pos.best_metric, run.last_eval)

    def on_end(self, run):
        self.evaluator.close()
