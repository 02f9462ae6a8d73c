"""Stop at a target: ``train.target`` ("accuracy=0.88", "loss=0.3") on the validation split (the test split
without one). A batch-size sweep measures steps to a target; the steps after it would only cost time."""

from ... import config as C
from .base import Observer


class Target(Observer):
    """After the evaluation observer (it reads ``run.last_results``): the first evaluation that reaches the
    target ends the run (``run.stop = "target"``); the final checkpoint and summary follow as usual."""

    def __init__(self, run, log):
        self.target, self.log = C.parse_target(run.cfg["train"]["target"]), log
        self.split = "val" if run.val_split is not None else "test"

    def check(self, run):
        res = run.last_results
        if res is None or res["step"] != run.pos.global_step or run.stop:
            return
        r = res[self.split]
        if C.target_reached(self.target, r["loss"], r["accuracy"]):
            metric, value = self.target
            self.log.line(f"  target {metric} {value:g} on {self.split} reached at step {run.pos.global_step} "
                          f"({r[metric]:.4f}): stopping")
            run.stop = "target"

    def on_step(self, run, stats):
        self.check(run)

    def on_epoch_end(self, run):
        self.check(run)
