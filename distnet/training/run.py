"""A run: everything one training job holds, built once by ``setup`` and positioned by ``resume``.

Any rank may fail in either (a missing file, a bad checkpoint); callers run them inside ``comm.agreed``.
"""

import hashlib
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import build, comm, outputs
from .. import checkpoint as ckpt
from .. import config as C
from ..data.reader import conversion_of
from ..errors import ConfigError, UserError
from ..nn.layers import Layer
from ..nn.schedules import scale_lr
from .noise import NoiseScale


@dataclass
class Position:
    """Where a run stands; a checkpoint keeps it. ``epoch`` counts completed epochs (0-based index of the
    epoch in progress; users see ``epoch + 1``)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float = -1.0  # best evaluation accuracy so far (-1: none yet)
    bad_evals: int = 0  # evaluations since the validation accuracy last improved
    skips: int = 0  # steps skipped for a non-finite loss or gradient


def _no_clock(phase):
    pass


@dataclass
class Run:
    world: object
    cfg: dict
    data_dir: str
    dataset: object
    train_split: object
    val_split: object
    sampler: object
    reader: object
    model: object
    loss: object
    optimizer: object
    schedule: object
    sync: object
    steps_per_epoch: int
    total_steps: int
    pos: Position = field(default_factory=Position)
    accum: np.ndarray = None  # the earlier micro-steps' gradient sum (accumulation only)
    noise: object = None  # the gradient noise scale estimator (``train.noise_every``), None when off
    global_batch: int = 0  # the global batch now (``train.batch_size``, or where "auto" has grown it)
    start_batch: int = 0  # the first epoch's global batch ("auto": the schedule's and lr scaling's reference)
    draws: bool = False  # some layer draws random numbers in training (it overrides Layer.reseed)
    samples: int = 0  # global samples trained by this process (a resumed run counts from its start)
    stop: str = ""  # why the loop should end before its epochs are done ("" = go on)
    stop_vote: float = 0.0  # 1: this rank asks all to stop at this step (a signal); summed with the step's stats
    last_eval: float = None  # the latest evaluation's accuracy (validation, else test)
    last_results: dict = None  # the latest evaluation: {"step": s, split: {"loss": l, "accuracy": a}}
    mark: object = _no_clock  # a step timer's phase clock (a function of the phase name), when one listens
    paused_s: float = 0.0  # seconds spent off the clock (evaluation, checkpoints) so far
    skipped_checkpoints: list = field(default_factory=list)  # damaged newer checkpoints that resume passed over
    data_fingerprint: list = None  # this rank's copy of the data, as ``check_same_data`` compares it
    resumed_from: str = ""  # the checkpoint ``resume`` loaded ("" = a fresh start)
    initialized_from: str = ""  # the checkpoint ``init_from`` took the parameters from ("" = none)

    @contextmanager
    def off_clock(self):
        """Work that is not training (evaluation, checkpoints): left out of samples/s and the step phases."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t
            self.mark(None)

    @property
    def batch(self):
        return self.global_batch

    @property
    def auto(self):
        """Whether the global batch grows during training (``train.batch_size = "auto"``)."""
        return self.cfg["train"]["batch_size"] == "auto"

    def set_batch(self, batch):
        """Change the global batch at an epoch boundary (or to a checkpoint's): the sampler cuts each epoch's
        order, which depends on (seed, epoch) only, into batches of the new size from the next epoch on."""
        self.sampler = self.sampler.with_batch(batch)
        self.global_batch, self.steps_per_epoch = batch, self.sampler.steps_per_epoch
        pos = self.pos
        self.total_steps = pos.global_step - pos.step_in_epoch + (self.epochs - pos.epoch) * self.steps_per_epoch

    def lr(self, step):
        """The learning rate of global step STEP (the current one). With a growing batch the schedule runs
        on epochs (in steps of the first batch), and the configured rule (``optimizer.lr_scaling``) scales
        it from the first batch to the current one."""
        if not self.auto:
            return self.schedule(step)
        oc, pos = self.cfg["optimizer"], self.pos
        first_spe = self.sampler.num_samples // self.start_batch
        clock = (pos.epoch + pos.step_in_epoch / self.steps_per_epoch) * first_spe
        factor = scale_lr(1.0, oc["base_batch"], self.batch, oc["lr_scaling"]) / \
            scale_lr(1.0, oc["base_batch"], self.start_batch, oc["lr_scaling"])
        return self.schedule(clock) * factor

    @property
    def epochs(self):
        return self.cfg["train"]["epochs"]

    def done(self):
        """True when the run should not start another step."""
        max_steps = self.cfg["train"]["max_steps"]
        return bool(self.stop) or self.pos.epoch >= self.epochs or bool(max_steps and self.pos.global_step >= max_steps)

    def batches(self):
        """This rank's (x, y, global sample indices) for the rest of the current epoch; close() it to stop early."""
        return _Batches(self)

    def meta(self):
        """What a checkpoint keeps besides arrays: the position and what the position depends on."""
        s, ds = self.sampler, self.dataset
        return dict(asdict(self.pos), config=C.to_toml(self.cfg), seed=self.cfg["train"]["seed"],
                    global_batch=self.batch, world_size=self.world.size, dataset=ds.name,
                    input_shape=list(ds.input_shape), num_classes=ds.num_classes, num_samples=s.num_samples,
                    class_names=list(ds.class_names), inputs=conversion_of(self.reader.split),
                    drop_last=s.drop_last, noise=self.noise.state() if self.noise is not None else None,
                    **s.order_state())

    def close(self):
        self.reader.close()


class _Batches:
    """The rest of the current epoch: the reader's batches zipped with the sampler's indices (the sampler
    recomputes the epoch's order, a single permutation, instead of the reader handing indices through its
    prefetch thread)."""

    def __init__(self, run):
        epoch, start = run.pos.epoch, run.pos.step_in_epoch
        self.data = run.reader.epoch(run.sampler, epoch, start_step=start)
        self.index = run.sampler.epoch_batches(epoch, start)

    def __iter__(self):
        for (x, y), (_, idx) in zip(self.data, self.index):
            yield x, y, idx

    def close(self):
        if hasattr(self.data, "close"):
            self.data.close()  # stops the prefetch thread when the epoch ended early


def setup(cfg, w):
    """Open the data, build model, loss, optimizer, schedule and gradient sync on every rank."""
    from ..data import Augment, BatchReader, Sampler, fingerprint, holdout, open_dataset

    tc, oc = cfg["train"], cfg["optimizer"]
    B, k, p = tc["batch_size"], tc["accumulate"], w.size
    if B == "auto":  # the smallest multiple of ranks x micro-steps at or above batch_min
        B = -(-tc["batch_min"] // (p * k)) * p * k
    if B % (p * k):
        raise ConfigError(f"global batch {B} is not divisible by ranks x accumulation steps = {p} x {k}: "
                          f"choose a batch size that is a multiple of {p * k}")
    check_outputs(cfg, w)
    data_dir = C.data_path(cfg)
    if not Path(data_dir).exists():
        name = cfg["data"]["dataset"] or "NAME"
        raise UserError(f"dataset folder {data_dir} does not exist: run 'distnet data prepare {name} "
                        f"--out {data_dir}' or pass --data DIR")
    ds = open_dataset(data_dir)
    model = build.model(cfg, ds.input_shape)
    if model.output_shape != (ds.num_classes,) and tc["loss"] == "softmax_cross_entropy":
        raise ConfigError(f"the model's output shape {model.output_shape} does not match the "
                          f"{ds.num_classes} classes of {data_dir}: make the last layer out_features = "
                          f"{ds.num_classes}")
    model.skip_input_grad()
    if w.size > 1:
        model.distribute(w.allreduce)  # layers with global statistics (synced BatchNorm) sum over ranks
    train_split, val_split = ds["train"], None
    if cfg["data"]["val_fraction"] > 0:
        train_split, val_split = holdout(train_split, cfg["data"]["val_fraction"], tc["seed"])
    sampler = Sampler(len(train_split), B, w.rank, p, tc["seed"],
                      **{k: cfg["data"][k] for k in ("order", "block_size", "block_window")})
    augment = None
    if cfg["data"]["augment_shift"] or cfg["data"]["augment_flip"]:
        augment = Augment(cfg["data"]["augment_shift"], cfg["data"]["augment_flip"], seed=tc["seed"])
    reader = BatchReader(train_split, mode=cfg["data"]["reader"], dtype=model.dtype, augment=augment,
                         prefetch=cfg["data"]["prefetch"], local_ranks=w.local_size)
    total_steps = tc["epochs"] * sampler.steps_per_epoch
    lr0 = scale_lr(oc["lr"], oc["base_batch"], B, oc["lr_scaling"])
    sync = comm.sync.make(w, model, cfg["comm"])
    return Run(world=w, cfg=cfg, data_dir=data_dir, dataset=ds, train_split=train_split, val_split=val_split,
               sampler=sampler, reader=reader, model=model, loss=build.loss(cfg),
               optimizer=build.optimizer(cfg, model, lr0, sync), schedule=build.schedule(cfg, lr0, total_steps),
               sync=sync, steps_per_epoch=sampler.steps_per_epoch,
               total_steps=total_steps, accum=np.zeros_like(model.grads_flat) if k > 1 else None,
               draws=any(type(layer).reseed is not Layer.reseed for layer in model.layers),
               noise=NoiseScale(tc["noise_every"], tc["noise_decay"], fallback=p * k == 1)
               if tc["noise_every"] > 0 else None, global_batch=B, start_batch=B,
               data_fingerprint=fingerprint(ds))


def check_same_data(run, hosts):
    """Every rank reads the same prepared data (each node may hold its own copy) and resumed from the same
    checkpoint (a rank may have found the newest damaged where the others did not): the ranks compare with
    rank 0 in one allgather (of digests; the whole fingerprints travel only to name a difference), and all
    stop with one line (exit 2) naming the ranks and hosts that differ.
    Collective; call it after ``setup`` and ``resume``, outside ``comm.agreed``."""
    from ..data import fingerprint_difference

    digest = hashlib.sha256(repr(run.data_fingerprint).encode()).hexdigest()  # small at any shard count
    everyone = run.world.allgather((digest, run.resumed_from or run.initialized_from))
    host = {r: h for h, ranks in hosts.items() for r in ranks}

    def named(ranks):
        return ", ".join(f"{r} ({host.get(r, '?')})" for r in ranks)

    differ = [r for r, (fp, _) in enumerate(everyone) if fp != everyone[0][0]]
    if differ:  # every rank knows: all take part in gathering the whole fingerprints to say where they differ
        full = run.world.allgather(run.data_fingerprint)
        what = fingerprint_difference(full[differ[0]], full[0])
        raise comm.Stop(f"the ranks read different copies of the data {run.data_dir}: rank(s) {named(differ)} "
                        f"differ from rank 0 ({host.get(0, '?')}) in {what}: give every node the same copy "
                        "(prepare it once and copy the folder)", exit_code=2)
    differ = [r for r, (_, path) in enumerate(everyone) if path != everyone[0][1]]
    if differ:
        raise comm.Stop(f"the ranks started from different checkpoints: rank(s) {named(differ)} from "
                        f"{everyone[differ[0]][1]}, rank 0 ({host.get(0, '?')}) from {everyone[0][1]}: every "
                        "rank must see the same checkpoint folder (a shared file system)", exit_code=2)


def check_outputs(cfg, w):
    """Rank 0 (the one that writes) checks before training that every output the config names (its
    ``Output`` keys: the checkpoint folder, the metrics and trace files) can be written, and that nothing is
    lost: a fresh run does not write into an earlier run's checkpoints (its ``prune`` would delete them, or
    keep theirs over its own)."""
    if w.rank != 0:
        return
    for _, path, spec in C.outputs(cfg):
        outputs.check_output(path, spec)
    cc = cfg["checkpoint"]
    if cc["dir"]:
        found = ckpt.list_checkpoints(cc["dir"])
        if found and not cc["resume"]:
            raise UserError(f"checkpoint folder {cc['dir']} already holds {len(found)} checkpoint(s) of an "
                            f"earlier run (newest {found[-1].name}): continue it with --resume, or choose another "
                            "--checkpoint-dir")


def resume(run):
    """Load the newest valid checkpoint of the run's checkpoint folder into it (rank 0 says which damaged
    newer ones it passed over, one line each); returns the checkpoint's path."""
    folder = run.cfg["checkpoint"]["dir"]
    if not folder:
        raise ConfigError("--resume needs a checkpoint folder: pass --checkpoint-dir DIR")
    path, contents, skipped = ckpt.newest_valid(folder)
    if run.world.rank == 0:
        for bad, reason in skipped:
            print(ckpt.skipped_line(bad, reason, path), file=sys.stderr, flush=True)
    run.skipped_checkpoints = [str(bad) for bad, _ in skipped]
    if path is None:
        if skipped:
            raise UserError(f"--resume: every checkpoint in {folder} is damaged ({len(skipped)}, newest "
                            f"{skipped[0][0].name}): move them away and start without --resume")
        raise UserError(f"--resume: no checkpoint in {folder}: start without --resume")
    meta = ckpt.load_training(path, run.model, run.optimizer, contents)
    run.resumed_from = str(path)
    q = run.world.size * run.cfg["train"]["accumulate"]
    if run.auto and int(meta["global_batch"]) % q:
        raise ConfigError(f"--resume: {path} was grown to global batch {meta['global_batch']}, not a multiple of "
                          f"ranks x accumulation steps = {q}: resume on a rank count that divides it")
    if run.auto:
        run.set_batch(int(meta["global_batch"]))
    if int(meta["global_batch"]) != run.batch:
        raise ConfigError(f"--resume: {path} was trained with global batch {meta['global_batch']}, "
                          f"not {run.batch}: resume with --batch-size {meta['global_batch']}")
    # the same data, seed and batch, or the rest of the run would not follow the saved sample order
    s = run.sampler
    s.check_state({"epoch": int(meta["epoch"]), "step": int(meta["step_in_epoch"]),
                   "global_batch": int(meta["global_batch"]), "seed": int(meta["seed"]),
                   "num_samples": int(meta.get("num_samples", s.num_samples)),
                   "drop_last": bool(meta.get("drop_last", s.drop_last)),
                   **{k: meta[k] for k in ("order", "block_size", "block_window") if k in meta}})
    if run.noise is not None and isinstance(meta.get("noise"), dict):
        run.noise.load_state(meta["noise"])
    run.pos = Position(**{k: type(v)(meta[k]) for k, v in asdict(Position()).items()})
    if run.auto:
        run.set_batch(run.batch)  # the steps left, counted from the restored position
    return path


def init_from(run):
    """Start a new run from the parameters (and buffers) of ``train.init_from``, a checkpoint file or folder
    (its newest valid checkpoint), and with ``train.init_from_optimizer`` from its optimizer state too. The
    models must have the same layers with the same parameter shapes; the first that differs is named. The
    batch size, rank count, optimizer settings, schedule and data are this run's own; its position starts
    at 0. Returns the checkpoint's path."""
    from ..evaluate.trained import load_trained

    tc = run.cfg["train"]
    source = load_trained(tc["init_from"], "start from")
    if run.world.rank == 0:
        for line in source.warnings():
            print(line, file=sys.stderr, flush=True)
    mine, theirs = run.model.layers, source.model.layers

    def shapes(layer):
        return {k: v.shape for k, v in {**layer.params, **layer.buffers}.items()}

    for i, (a, b) in enumerate(zip(mine, theirs)):
        if type(a) is not type(b) or shapes(a) != shapes(b):
            raise ConfigError(f"--init-from {source.path}: layer {i} is {b!r} there but {a!r} here: start from a "
                              "checkpoint of a model with the same layers")
    if len(mine) != len(theirs):
        raise ConfigError(f"--init-from {source.path}: it has {len(theirs)} layers, this model {len(mine)}: "
                          "start from a checkpoint of a model with the same layers")
    run.model.params_flat[...] = source.model.params_flat
    for key, buf in run.model.buffers.items():
        buf[...] = source.model.buffers[key]
    if tc["init_from_optimizer"]:
        theirs, mine = source.config["optimizer"]["name"], run.cfg["optimizer"]["name"]
        if theirs != mine:
            raise ConfigError(f"--init-from-optimizer: {source.path} was trained with optimizer {theirs!r}, this "
                              f"run uses {mine!r}: use the same optimizer.name, or drop --init-from-optimizer")
        contents = ckpt.read_verified(source.path)
        try:
            ckpt.load_training(source.path, run.model, run.optimizer, contents)
        except ConfigError as e:
            raise ConfigError(f"--init-from-optimizer: {source.path}'s optimizer state does not fit this run ({e}): "
                              "drop --init-from-optimizer") from None
    run.initialized_from = source.path
    return source.path
