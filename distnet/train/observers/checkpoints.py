"""Checkpoint cadence: every ``checkpoint.every`` steps, else at each epoch end, and at the end."""

from pathlib import Path

from ... import checkpoint as ckpt
from ... import comm
from .base import Observer


class Checkpoints(Observer):
    """Rank 0 writes ``DIR/ckpt-<step>.h5`` atomically and keeps the newest ``checkpoint.keep``; every
    rank takes part (the buffers are averaged and the replicas checked first, both collective)."""

    def __init__(self, run):
        cc = run.cfg["checkpoint"]
        self.dir, self.every, self.keep = cc["dir"], cc["every"], cc["keep"]

    def save(self, run, tag=None):
        with run.off_clock():
            comm.average_buffers(run.world, run.model)
            comm.check_replicas(run.world, run.model, f"at step {run.pos.global_step}")
            if run.world.rank == 0 and self.dir:
                path = ckpt.checkpoint_path(self.dir, run.pos.global_step) if tag is None else \
                    Path(self.dir) / f"{tag}.h5"
                ckpt.save_training(path, run.model, run.optimizer, run.meta())
                if tag is None:
                    ckpt.prune(self.dir, self.keep)

    def on_step(self, run, stats):
        if self.every and run.pos.global_step % self.every == 0:
            self.save(run)

    def on_epoch_end(self, run):
        if self.dir and not self.every:
            self.save(run)

    def on_end(self, run):
        if self.dir:
            self.save(run)
