"""Checkpoint cadence: every ``checkpoint.every`` steps, else at each epoch end, and at the end."""

from pathlib import Path

from ... import checkpoint as ckpt
from ... import comm
from ...errors import UserError
from .base import Observer


class Checkpoints(Observer):
    """Rank 0 writes ``DIR/ckpt-<step>.h5`` atomically and keeps the newest ``checkpoint.keep``; every
    rank takes part (the buffers are averaged and the replicas checked first, both collective), and every
    rank learns whether the write succeeded: a full disk or an I/O error stops all of them with one line
    (exit 2) that names the checkpoint still intact."""

    def __init__(self, run):
        cc = run.cfg["checkpoint"]
        self.dir, self.every, self.keep = cc["dir"], cc["every"], cc["keep"]
        if self.dir and run.world.rank == 0:
            ckpt.remove_temporaries(self.dir)  # left by a run killed while writing

    def save(self, run, tag=None):
        """Write a checkpoint now (collective); returns its path (None without a checkpoint folder)."""
        if not self.dir:
            with run.off_clock():
                comm.average_buffers(run.world, run.model)
                comm.check_replicas(run.world, run.model, f"at step {run.pos.global_step}")
            return None
        path = ckpt.checkpoint_path(self.dir, run.pos.global_step) if tag is None else Path(self.dir) / f"{tag}.h5"
        with run.off_clock():
            comm.average_buffers(run.world, run.model)
            comm.check_replicas(run.world, run.model, f"at step {run.pos.global_step}")
            state = run.optimizer.state_dict()  # collective when the state is sharded (comm.sync = "zero")
            with comm.agreed(run.world):  # rank 0 alone may fail; all stop together
                if run.world.rank == 0:
                    self._write(run, path, tag, state)
        return path

    def _write(self, run, path, tag, state):
        try:
            ckpt.save_training(path, run.model, state, run.meta())
        except ckpt.WriteError as e:
            previous = ckpt.latest(self.dir)
            kept = f"{previous} is intact" if previous is not None else "no earlier checkpoint was written"
            fix = "free space there, then continue with --resume" if previous is not None else \
                "free space there or choose another --checkpoint-dir"
            raise UserError(f"cannot write checkpoint {path} at step {run.pos.global_step}: {e.reason}; {kept}: "
                            f"{fix}") from None
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
