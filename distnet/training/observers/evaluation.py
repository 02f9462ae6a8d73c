"""Evaluation cadence: every ``train.eval_every`` steps (if set), as the step count grows by
``train.eval_growth`` (if set), and at each epoch end."""

from ... import comm
from ..evaluate import Evaluator
from .base import Observer


class Evaluation(Observer):
    """Evaluates on the validation split (when held out) and the test split; keeps ``run.last_eval`` (the
    validation accuracy, else the test accuracy), ``run.last_results`` and ``run.pos.best_metric``.

    With ``eval_growth`` g an evaluation is due once the step count reached (1 + g) times the last evaluated
    step (and at least ``eval_every`` steps after it): the first step at which a target is met is then
    known to within a fraction g at any scale, with a number of evaluations that grows only as the log of
    the steps (a batch-size sweep runs from tens to thousands of steps)."""

    def __init__(self, run, log):
        self.log = log
        tc = run.cfg["train"]
        self.every, self.growth = tc["eval_every"], tc["eval_growth"]
        self.last = run.pos.global_step  # the step of the latest evaluation (a resumed run: its start)
        self.evaluator = Evaluator(run.world, run.model, run.loss, batch_size=tc["eval_batch_size"],
                                   mode=run.cfg["data"]["reader"])

    def due(self, step):
        if self.growth:
            return step - self.last >= max(self.every, 1) and step >= self.last * (1 + self.growth)
        return bool(self.every) and step % self.every == 0

    def evaluate(self, run):
        with run.off_clock():
            comm.average_buffers(run.world, run.model)
            results = {"step": run.pos.global_step}
            for name, split in (("val", run.val_split), ("test", run.dataset["test"])):
                if split is not None:
                    loss, acc, n = self.evaluator(name, split)
                    results[name] = {"loss": loss, "accuracy": acc}
                    self.log.eval(run, name, loss, acc, n)
            chosen = results.get("val", results.get("test"))
            run.last_eval = chosen and chosen["accuracy"]
            run.last_results = results
            if run.last_eval is not None:
                run.pos.best_metric = max(run.pos.best_metric, run.last_eval)
        self.last = run.pos.global_step

    def on_step(self, run, stats):
        if self.due(run.pos.global_step):
            self.evaluate(run)

    def on_epoch_end(self, run):
        if self.last != run.pos.global_step or run.last_results is None:  # not twice at one step
            self.evaluate(run)

    def on_end(self, run):
        self.evaluator.close()
