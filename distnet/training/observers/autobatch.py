"""``train.batch_size = "auto"``: the global batch grows toward the measured gradient noise scale.

McCandlish et al. 2018: the noise scale B_simple = tr(Σ)/|G|² approximates the critical batch, below which
a larger batch cuts the steps almost proportionally and above which it mostly costs samples; it grows as
training proceeds (the gradient shrinks faster than its noise). At each epoch end this observer sets the
next epoch's global batch to the noise scale measured so far (``run.noise``, identical on every rank),
rounded down to a multiple of ranks x micro-steps, never smaller than now and at most ``train.batch_max``;
the learning rate follows by ``optimizer.lr_scaling`` (see ``Run.lr``). Changing only at epoch ends keeps the
sampler's contract: each epoch's order depends on (seed, epoch) only and is cut into equal batches, so a
checkpoint's (epoch, step, global batch) resumes it exactly. Put it before ``Checkpoints``, so that an
epoch-end checkpoint holds the next epoch's batch.
"""

from .base import Observer


class AutoBatch(Observer):
    def __init__(self, run, log):
        tc = run.cfg["train"]
        self.log, self.quantum = log, run.world.size * tc["accumulate"]
        self.most = min(tc["batch_max"], run.sampler.num_samples) // self.quantum * self.quantum

    def on_epoch_end(self, run):
        scale = run.noise.value()[0] if run.noise is not None else None
        if scale is None or run.pos.epoch >= run.epochs:
            return
        target = min(self.most, int(scale // self.quantum) * self.quantum)
        if target <= run.batch:
            return
        old, lr_old = run.batch, run.lr(run.pos.global_step)
        run.set_batch(target)
        lr = run.lr(run.pos.global_step)
        self.log.metrics.write("batch", run.pos.global_step, epoch=run.pos.epoch + 1, global_batch=target,
                               previous=old, noise_scale=scale, lr=lr)
        self.log.line(f"  global batch {old} -> {target} (noise scale {scale:.0f}), lr {lr_old:.3g} -> {lr:.3g}")
