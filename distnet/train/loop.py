"""The data-parallel training loop, readable top to bottom.

One process:             distnet train fashion-mlp
Several on one machine:  mpiexec -n 4 distnet train fashion-mlp      (or launch/local.sh 4 fashion-mlp)
Several machines:        srun distnet train fashion-mlp               (see cluster/README.md)

Every rank builds the same model from the seed, reads its contiguous part of each global batch, computes
gradients, and the ranks sum them with MPI (in buckets, overlapped with backward) before all take the same
optimizer step. Rank 0 alone logs, writes metrics and writes checkpoints.
"""

import math
import sys
import time
from pathlib import Path

import numpy as np

from .. import checkpoint as ckpt
from .. import comm
from .. import config as C
from ..errors import ConfigError, UserError
from ..optim import clip_grad_norm, make_optimizer
from ..schedules import make_schedule, scale_lr
from .evaluate import Evaluator
from .faults import FaultInjector
from .metrics import MetricsWriter, Progress
from .profile import StepTimer


class Stop(Exception):
    """Raised on every rank at once after a collective decision; ``message`` is printed by rank 0."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


def run_on_every_rank(w, body):
    """Call ``body()`` on every rank and turn a failure into an exit code: a Stop (decided collectively) is
    said once, by rank 0; any other exception is one rank failing alone, which ends all ranks."""
    try:
        body()
        return 0
    except Stop as e:
        if e.args[0] and w.rank == 0:
            print(f"distnet: error: {e.args[0]}", file=sys.stderr, flush=True)
        return e.exit_code
    except BaseException as e:  # noqa: BLE001 - one rank failing must end all ranks
        return comm.fail_alone(w, e)


def setup(cfg, opts, w):
    """Open data, build model, optimizer and schedule; any rank may fail here, so callers agree after."""
    from ..data import open_dataset

    data_dir = opts.get("data") or cfg["data"]["path"] or (f"data/{cfg['data']['dataset']}"
                                                           if cfg["data"]["dataset"] else "")
    if not data_dir:
        raise ConfigError("no dataset given: pass --data DIR or set data.path in the config")
    if not Path(data_dir).exists():
        name = cfg["data"]["dataset"] or "NAME"
        raise UserError(f"dataset folder {data_dir} does not exist: run 'distnet data prepare {name} "
                        f"--out {data_dir}' or pass --data DIR")
    ds = open_dataset(data_dir)
    model = C.build_model(cfg, ds.input_shape)
    if model.output_shape != (ds.num_classes,) and cfg["train"]["loss"] == "softmax_cross_entropy":
        raise ConfigError(f"the model's output shape {model.output_shape} does not match the "
                          f"{ds.num_classes} classes of {data_dir}: make the last layer out_features = "
                          f"{ds.num_classes}")
    model.skip_input_grad()
    loss = C.build_loss(cfg)
    return ds, model, loss, data_dir


def train(cfg, opts):
    """Run training as configured; ``opts`` holds command-line extras (data, metrics, resume, quiet, ...)."""
    w = comm.world()
    t_start = time.perf_counter()
    tc, oc = cfg["train"], cfg["optimizer"]
    B, k, p = tc["batch_size"], tc["accumulate"], w.size

    # -- setup: every rank does it; any rank's failure stops all of them cleanly -------------------------
    err = None
    try:
        if B % (p * k):
            raise ConfigError(f"global batch {B} is not divisible by ranks x accumulation steps = {p} x {k}: "
                              f"choose a batch size that is a multiple of {p * k}")
        ds, model, loss, data_dir = setup(cfg, opts, w)
        from ..data import Augment, BatchReader, Sampler, holdout

        train_split, val_split = ds["train"], None
        if cfg["data"]["val_fraction"] > 0:
            train_split, val_split = holdout(train_split, cfg["data"]["val_fraction"], tc["seed"])
        sampler = Sampler(len(train_split), B, w.rank, p, tc["seed"])
        augment = None
        if cfg["data"]["augment_shift"] or cfg["data"]["augment_flip"]:
            augment = Augment(cfg["data"]["augment_shift"], cfg["data"]["augment_flip"], seed=tc["seed"])
        reader = BatchReader(train_split, mode=cfg["data"]["reader"], dtype=model.dtype, augment=augment,
                             prefetch=cfg["data"]["prefetch"])
        steps_per_epoch = sampler.steps_per_epoch
        total_steps = tc["epochs"] * steps_per_epoch
        lr0 = scale_lr(oc["lr"], oc["base_batch"], B, oc["lr_scaling"])
        schedule = make_schedule(cfg["schedule"], lr0, total_steps)
        opt = make_optimizer(oc["name"], model.params_flat, model.grads_flat, decay_mask=model.decay_mask,
                             lr=lr0, **C.factory_kwargs(cfg, "optimizer"))
        state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": -1.0, "bad_evals": 0,
                 "skips": 0}
        ckpt_dir = opts.get("checkpoint_dir") or cfg["checkpoint"]["dir"]
        if opts.get("resume"):
            if not ckpt_dir:
                raise ConfigError("--resume needs a checkpoint folder: pass --checkpoint-dir DIR")
            path = ckpt.latest(ckpt_dir)
            if path is None:
                raise UserError(f"--resume: no checkpoint in {ckpt_dir}: start without --resume")
            meta = ckpt.load_training(path, model, opt)
            if int(meta["global_batch"]) != B:
                raise ConfigError(f"--resume: {path} was trained with global batch {meta['global_batch']}, "
                                  f"not {B}: resume with --batch-size {meta['global_batch']}")
            # the same data, seed and batch, or the rest of the run would not follow the saved sample order
            sampler.check_state({"epoch": int(meta["epoch"]), "step": int(meta["step_in_epoch"]),
                                 "global_batch": int(meta["global_batch"]), "seed": int(meta["seed"]),
                                 "num_samples": int(meta.get("num_samples", sampler.num_samples)),
                                 "drop_last": bool(meta.get("drop_last", sampler.drop_last))})
            for key in state:
                state[key] = type(state[key])(meta[key])
    except Exception as e:  # noqa: BLE001 - reported collectively below
        err = e
    code = comm.settle(w, err)
    if code:
        raise Stop(None, code)

    comm.check_replicas(w, model, "at the start")
    is_root = w.rank == 0
    metrics = MetricsWriter(opts.get("metrics") if is_root else None, append=bool(opts.get("resume")))
    mode = "none" if opts.get("quiet") or not is_root else opts.get("progress") or "auto"
    progress = Progress(total_steps, initial=state["global_step"], mode=mode)
    cc = cfg["comm"]
    sync = comm.GradSync(w, model, bucket_bytes=int(cc["bucket_mb"] * 2 ** 20), overlap=cc["overlap"],
                         split_bytes=int(cc["split_mb"] * 2 ** 20))
    accum = np.zeros_like(model.grads_flat) if k > 1 else None
    timer = StepTimer(w, enabled=opts.get("profile", False), trace_path=opts.get("trace"))
    faults = FaultInjector.from_env(w.rank)
    stochastic = any(getattr(layer, "stochastic", False) for layer in model.layers)
    max_steps = tc["max_steps"] or math.inf
    evaluator = Evaluator(w, model, loss, batch_size=tc["eval_batch_size"], mode=cfg["data"]["reader"])
    if is_root:
        threads = f" x {opts['blas_threads']} BLAS thread(s)" if opts.get("blas_threads") else ""
        progress.line(f"distnet: {p} rank(s){threads}, global batch {B} ({B // p} per rank"
                      + (f", {k} micro-steps" if k > 1 else "") + f"), {model.num_params:,} parameters, "
                      f"{steps_per_epoch} steps/epoch, data {data_dir}")

    def off_the_clock(fn):
        """Leave FN's time (evaluation, checkpoints) out of the train lines' samples/s and phases."""
        def timed(*a):
            t = time.perf_counter()
            try:
                return fn(*a)
            finally:
                window["t"] += time.perf_counter() - t
                timer.mark(None)  # nor in the step-time breakdown
        return timed

    @off_the_clock
    def save_checkpoint(tag=None):
        comm.average_buffers(w, model)
        comm.check_replicas(w, model, f"at step {state['global_step']}")
        if is_root and ckpt_dir:
            meta = dict(state, config=C.to_toml(cfg), seed=tc["seed"], global_batch=B, world_size=p,
                        dataset=ds.name, input_shape=list(ds.input_shape), num_classes=ds.num_classes,
                        num_samples=sampler.num_samples, drop_last=sampler.drop_last)
            path = Path(ckpt_dir) / f"{tag}.h5" if tag else ckpt.checkpoint_path(ckpt_dir, state["global_step"])
            ckpt.save_training(path, model, opt, meta)
            if not tag:
                ckpt.prune(ckpt_dir, cfg["checkpoint"]["keep"])

    @off_the_clock
    def run_eval():
        """Evaluate on validation (if held out) and test; returns the validation (else test) accuracy."""
        comm.average_buffers(w, model)
        results = {}
        for name, split in (("val", val_split), ("test", ds["test"])):
            if split is None:
                continue
            ev_loss, ev_acc, n = evaluator(name, split)
            results[name] = ev_acc
            metrics.write("eval", state["global_step"], epoch=state["epoch"], split=name, loss=ev_loss,
                          accuracy=ev_acc, samples=n)
            progress.line(f"  epoch {state['epoch'] + 1}/{tc['epochs']} step {state['global_step']}: {name} loss "
                          f"{ev_loss:.4f} accuracy {ev_acc:.4f}")
        return results.get("val", results.get("test"))

    # -- the loop ---------------------------------------------------------------------------------------
    window = {"loss": 0.0, "correct": 0.0, "n": 0.0, "t": time.perf_counter(), "steps": 0}
    samples_done, stopped_early, last_eval = 0, False, None
    while state["epoch"] < tc["epochs"] and state["global_step"] < max_steps and not stopped_early:
        epoch = state["epoch"]
        batches = reader.epoch(sampler, epoch, start_step=state["step_in_epoch"])
        finished = True
        for x, y in batches:
            timer.mark("data")
            step = state["global_step"]
            faults.maybe_fail(step)
            n_local = len(y)
            micro = n_local // k
            loss_sum = correct = 0.0
            for m in range(k):
                xm, ym = (x, y) if k == 1 else (x[m * micro:(m + 1) * micro], y[m * micro:(m + 1) * micro])
                if stochastic:
                    model.reseed(np.random.default_rng([tc["seed"], epoch, state["step_in_epoch"], m, w.rank]))
                out = model.forward(xm, training=True)
                lm = loss.forward(out, ym)
                loss_sum += lm * len(ym)
                correct += loss.correct(out, ym)
                # The loss is a mean over this micro-batch; scaling its gradient by len(ym)/B makes the
                # ranks' SUM-allreduce the gradient of the global-batch mean (the "divide by the global
                # sample count" of the design, done on the small output gradient, not the whole arena).
                dy = loss.backward()
                dy *= len(ym) / B
                timer.mark("forward")
                if m < k - 1:
                    model.backward(dy)
                    if m == 0:
                        accum[...] = model.grads_flat
                    else:
                        accum += model.grads_flat
                else:
                    # the loss sums travel with the gradients (summed during backward, no extra collective)
                    totals = np.array([faults.maybe_corrupt(step, loss_sum), correct, n_local], np.float64)
                    sync.begin(accum if k > 1 else None, stats=totals)
                    model.backward(dy, on_layer_done=sync.on_layer_done)
                timer.mark("backward")
            sync.finish()
            timer.mark("comm")
            g = model.grads_flat
            gnorm = float(np.sqrt(np.dot(g, g)))  # identical on every rank: the gradients are summed
            if not (math.isfinite(gnorm) and math.isfinite(totals[0])):
                what = "loss" if not math.isfinite(totals[0]) else "gradient"
                if tc["nonfinite"] == "skip" and state["skips"] < tc["max_skips"]:
                    state["skips"] += 1
                    metrics.write("skip", step, epoch=epoch, reason=f"non-finite {what}")
                else:
                    raise Stop(f"non-finite {what} at step {step} (epoch {epoch + 1}): lower the learning rate "
                               f"(optimizer.lr = {oc['lr']}), add clip_grad_norm, or set train.nonfinite = "
                               "\"skip\"")
            else:
                if tc["clip_grad_norm"] > 0:
                    clip_grad_norm(g, tc["clip_grad_norm"])
                lr = schedule(step)
                opt.step(lr)
            timer.mark("optimizer")
            timer.end_step(step)
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            samples_done += B
            window["loss"] += totals[0]
            window["correct"] += totals[1]
            window["n"] += totals[2]
            window["steps"] += 1
            gs = state["global_step"]
            if gs % tc["log_every"] == 0 or state["step_in_epoch"] == steps_per_epoch:
                now = time.perf_counter()
                sps = window["steps"] * B / max(now - window["t"], 1e-9)
                mean_loss = window["loss"] / max(window["n"], 1)
                acc = window["correct"] / max(window["n"], 1)
                extra = timer.summary() if timer.enabled else {}
                metrics.write("train", gs, epoch=epoch, loss=mean_loss, accuracy=acc, lr=schedule(step),
                              samples_per_s=sps, grad_norm=gnorm, **extra)
                progress.update(window["steps"], loss=mean_loss, acc=acc, sps=round(sps))
                window.update(loss=0.0, correct=0.0, n=0.0, t=now, steps=0)
            if tc["eval_every"] and gs % tc["eval_every"] == 0:
                last_eval = run_eval()
            if cfg["checkpoint"]["every"] and gs % cfg["checkpoint"]["every"] == 0:
                save_checkpoint()
            if gs >= max_steps:
                finished = state["step_in_epoch"] == steps_per_epoch
                break
            timer.mark(None)
        if hasattr(batches, "close"):
            batches.close()  # stops the prefetch thread when the epoch ended early
        if finished:
            last_eval = run_eval()
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            if val_split is not None and tc["patience"]:
                if last_eval > state["best_metric"]:
                    state["best_metric"], state["bad_evals"] = last_eval, 0
                    save_checkpoint("best")
                else:
                    state["bad_evals"] += 1
                    if state["bad_evals"] >= tc["patience"]:
                        progress.line(f"  early stop: validation accuracy has not improved for "
                                      f"{tc['patience']} epoch(s); best {state['best_metric']:.4f}")
                        stopped_early = True
            else:
                state["best_metric"] = max(state["best_metric"], last_eval)
            if ckpt_dir and not cfg["checkpoint"]["every"]:
                save_checkpoint()

    # -- the end ----------------------------------------------------------------------------------------
    reader.close()
    evaluator.close()
    progress.close()
    if ckpt_dir:
        save_checkpoint()
    comm.average_buffers(w, model)
    comm.check_replicas(w, model, "at the end")
    wall = time.perf_counter() - t_start
    best = state["best_metric"] if state["best_metric"] >= 0 else None  # None: no evaluation ran
    summary = dict(wall_s=wall, samples=samples_done, best_accuracy=best, ranks=p,
                   global_batch=B, epochs=state["epoch"], steps=state["global_step"], early_stopped=stopped_early,
                   param_hash=model.param_hash()[:16], last_accuracy=last_eval)
    if timer.enabled:
        summary.update(timer.totals())
        timer.write_trace()
    metrics.write("summary", state["global_step"], **summary)
    metrics.close()
    if is_root and not opts.get("quiet"):
        print(f"distnet: done in {wall:.1f} s, {state['global_step']} steps, "
              + (f"best accuracy {best:.4f}" if best is not None else "no evaluation ran"), flush=True)
    return summary
