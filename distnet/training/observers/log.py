"""What rank 0 tells the user: metrics JSON lines (the contract in docs/design.md) and the progress display.

Epochs are counted from 1 everywhere a user reads them (console, metrics, messages).
"""

import os
import time

from ...metrics import MetricsWriter, Progress
from .base import Observer


def epoch_label(run):
    """The 1-based epoch the latest step belongs to (at an epoch end: the epoch just finished)."""
    pos = run.pos
    return pos.epoch if pos.step_in_epoch == 0 and pos.epoch > 0 else pos.epoch + 1


def bar_total(run):
    """The steps the run will have taken at its end: the epochs' steps, or ``train.max_steps`` when that is
    fewer (the bar would otherwise end at "200/468")."""
    max_steps = run.cfg["train"]["max_steps"]
    return min(run.total_steps, max_steps) if max_steps else run.total_steps


class Log(Observer):
    """Train lines every ``train.log_every`` steps and at epoch ends, skip lines, eval lines (for the
    evaluation observer), the start and summary lines; rank 0 only.

    Each of ``observers`` (set by whoever assembles the run's observers) adds its fields to the train lines
    (``Observer.on_train_line``). So that each has heard of the line's last step, a line found due at a step
    is written by ``closer``, an observer put after all the others."""

    def __init__(self, run, about=None):
        lc, self.run = run.cfg["log"], run
        self.observers = []
        self.due = None  # the stats of the step whose train line is to be written at the end of its round
        self.closer = TrainLine(self)
        root = run.world.rank == 0
        # distnet run's restarts (DISTNET_ATTEMPT > 0) append, with or without a checkpoint: never truncate
        self.attempt = int(os.environ.get("DISTNET_ATTEMPT") or 0)
        self.metrics = MetricsWriter(lc["metrics"] if root else None,
                                     append=run.cfg["checkpoint"]["resume"] or self.attempt > 0)
        mode = "none" if lc["quiet"] or not root else lc["progress"]
        self.progress = Progress(bar_total(run), initial=run.pos.global_step, mode=mode)
        self.about = about or {}
        self._new_window()

    def _new_window(self):
        self.w_loss = self.w_correct = self.w_n = 0.0
        self.w_steps = 0
        self.w_start, self.w_paused = time.perf_counter(), self.run.paused_s

    def on_start(self, run):
        p, B, k = run.world.size, run.batch, run.cfg["train"]["accumulate"]
        a = self.about
        skipped = {"skipped_checkpoints": run.skipped_checkpoints} if run.skipped_checkpoints else {}
        self.metrics.write("start", run.pos.global_step, epoch=epoch_label(run), ranks=p, global_batch=B,
                           params=run.model.num_params, steps_per_epoch=run.steps_per_epoch, data=run.data_dir,
                           sync=run.sync.name, **a, **skipped, **({"attempt": self.attempt} if self.attempt else {}))
        hosts = a.get("hosts") or {}
        threads = "/".join(map(str, sorted(set(a.get("blas_threads") or []) - {None})))
        self.progress.line(
            f"distnet: {p} rank(s)" + (f" x {threads} BLAS thread(s)" if threads else "")
            + f" on {len(hosts) or 1} host(s)"
            + (" (" + ", ".join(f"{h} x{len(r)}" for h, r in hosts.items()) + ")" if len(hosts) > 1 else "")
            + (f", {a['mpi_library']}" if a.get("mpi_library") else ""))
        self.progress.line(
            f"distnet: global batch {B} ({B // p} per rank" + (f", {k} micro-steps" if k > 1 else "")
            + f"), {run.model.num_params:,} parameters, {run.steps_per_epoch} steps/epoch, data {run.data_dir}"
            + (f", sync {run.sync.name}" if p > 1 else ""))
        if a.get("initialized_from"):
            self.progress.line(f"distnet: parameters from {a['initialized_from']}"
                               + (" with its optimizer state" if run.cfg["train"]["init_from_optimizer"] else ""))
        if a.get("resumed_from"):
            self.progress.line(f"distnet: resumed from {a['resumed_from']}: step {run.pos.global_step}, epoch "
                               f"{epoch_label(run)} of {run.epochs}")
        self._new_window()

    def on_step(self, run, stats):
        if stats.skipped:
            self.metrics.write("skip", stats.step, epoch=epoch_label(run), reason=stats.skipped)
        self.w_loss += stats.loss_sum
        self.w_correct += stats.correct
        self.w_n += stats.count
        self.w_steps += 1
        self.last = stats
        if run.pos.global_step % run.cfg["train"]["log_every"] == 0 or run.pos.step_in_epoch == run.steps_per_epoch:
            self.due = stats

    def _write(self, run, stats):
        """The train line of the steps since the last one, and the progress display's update."""
        now = time.perf_counter()
        trained_s = now - self.w_start - (run.paused_s - self.w_paused)  # evaluation and checkpoints left out
        sps = self.w_steps * run.batch / max(trained_s, 1e-9)
        loss, acc = self.w_loss / max(self.w_n, 1), self.w_correct / max(self.w_n, 1)
        fields = dict(epoch=epoch_label(run), loss=loss, accuracy=acc, lr=stats.lr, samples_per_s=sps,
                      global_batch=run.batch, grad_norm=stats.grad_norm, **stats.sync, **stats.noise)
        for o in self.observers:
            add = getattr(o, "on_train_line", None)  # an observer not derived from Observer may lack it
            if add is not None:
                add(run, fields)
        self.metrics.write("train", run.pos.global_step, **fields)
        self.progress.set_total(bar_total(run))  # a growing batch ("auto") takes fewer steps
        shown = {"noise": round(stats.noise["noise_scale"])} if stats.noise.get("noise_scale") is not None else {}
        self.progress.update(self.w_steps, loss=loss, acc=acc, sps=round(sps), **shown)
        self._new_window()

    def write_due(self, run):
        if self.due is not None:
            stats, self.due = self.due, None
            self._write(run, stats)

    def eval(self, run, split, loss, accuracy, samples):
        self.metrics.write("eval", run.pos.global_step, epoch=epoch_label(run), split=split, loss=loss,
                           accuracy=accuracy, samples=samples)
        self.progress.line(f"  epoch {epoch_label(run)}/{run.epochs} step {run.pos.global_step}: {split} loss "
                           f"{loss:.4f} accuracy {accuracy:.4f}")

    def line(self, text):
        self.progress.line(text)

    def on_end(self, run):
        self.write_due(run)  # a closer that never ran (a run driven without one)
        if self.w_steps:  # the run ended between train lines (train.max_steps, a stop, a target mid-epoch)
            self._write(run, self.last)
        self.progress.close()

    def summary(self, run, summary):
        self.metrics.write("summary", run.pos.global_step, **summary)
        self.metrics.close()
        best = summary["best_accuracy"]  # through the progress display: after the bar, on its stream
        self.progress.line(f"distnet: done in {summary['wall_s']:.1f} s, {run.pos.global_step} steps, "
                           + (f"best accuracy {best:.4f}" if best is not None else "no evaluation ran"))


class TrainLine(Observer):
    """The last of a run's observers: writes the train line ``log`` found due at this step, once every
    observer has heard of the step."""

    def __init__(self, log):
        self.log = log

    def on_step(self, run, stats):
        self.log.write_due(run)
