"""Observers add fields to the train lines (``Observer.on_train_line``): a new per-step metric is one observer,
defined here, with no edit of the logger; the step timer's phases arrive the same way."""

from distnet import config as C
from distnet.training.loop import train
from distnet.training.observers import Observer
from distnet.training.profile import PHASES

from ..helpers import metrics


class LossSpread(Observer):
    """A per-step metric of its own: the largest and smallest step loss since the last train line, and how
    many steps that was."""

    def __init__(self):
        self.losses = []

    def on_step(self, run, stats):
        self.losses.append(stats.loss_sum / stats.count)

    def on_train_line(self, run, fields):
        fields.update(loss_max=max(self.losses), loss_min=min(self.losses), steps_seen=len(self.losses))
        self.losses = []


class Bare:
    """An observer not derived from ``Observer``: the five hooks and no ``on_train_line``."""

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


def test_an_observer_adds_its_fields_to_every_train_line(tmp_path, spirals_data):
    path = tmp_path / "m.jsonl"
    cfg = C.load("spirals-mlp", sets=[f'data.path="{spirals_data}"', f'log.metrics="{path}"', "log.quiet=true",
                                      "train.max_steps=7", "train.log_every=3", "log.profile=true"])
    train(cfg, observers=[LossSpread(), Bare()])
    lines = [m for m in metrics(path) if m["event"] == "train"]
    # every 3 steps, and the steps left at the end: the observer's window is the line's
    assert [(m["step"], m["steps_seen"]) for m in lines] == [(3, 3), (6, 3), (7, 1)]
    for m in lines:
        assert m["loss_min"] <= m["loss"] <= m["loss_max"]  # the line's loss: the mean over its steps
        assert all(m[f"ms_{phase}"] >= 0 for phase in PHASES)  # the step timer's fields, through the same hook
    assert lines[-1]["loss_min"] == lines[-1]["loss_max"] == lines[-1]["loss"]  # one step in the last line
