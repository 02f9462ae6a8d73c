"""The batch reader: (x, y) batches in the sampler's order, converted, standardized and augmented.

Conversion: x as float (``dtype``) = stored value / 255 for uint8 images (``pixel_scale`` 1/255; float data
as stored); with ``standardize`` then (x - mean) / std per channel, from the training split's statistics.
Augmentation (images only) works on the stored values before conversion, so shifts fill with 0 (black).
"""

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .prefetch import Prefetch
from .sources import MemorySource, StreamSource

MODES = ("auto", "memory", "stream")
DEFAULT_STREAM_BUDGET = 256 << 20


def available_memory():
    """Bytes of memory this process may still take (0 when the platform cannot say): the machine's available
    memory, or less where a memory cgroup it runs in (a batch scheduler's job, a container) leaves less."""
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        free = 0
    room = cgroup_room()
    return free if room is None else min(free, room) if free else room


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _stat(text, *keys):
    """The sum of KEYS' values in a memory.stat text (a missing key counts 0)."""
    values = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
    return sum(int(values.get(k, 0)) for k in keys)


def cgroup_room(proc="/proc/self/cgroup", root="/sys/fs/cgroup"):
    """The bytes left under the tightest memory limit of this process's cgroup and its ancestors (cgroup v2
    ``memory.max``, v1 ``memory.limit_in_bytes``), counting the page cache they hold as free (the kernel
    reclaims it, shared memory aside); None without a limit or a cgroup file system."""
    lines = (_read(proc) or "").splitlines()
    v1 = [line.split(":", 2)[2] for line in lines if line.count(":") >= 2 and "memory" in line.split(":")[1].split(",")]
    v2 = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    if v1 and Path(root, "memory").is_dir():
        base, files = Path(root, "memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_cache",
                                               "total_shmem")
        path = v1[0]
    elif v2 and Path(root, "cgroup.controllers").exists():
        base, files, path = Path(root), ("memory.max", "memory.current", "file", "shmem"), v2[0]
    else:
        return None
    room = None
    folder = base / path.lstrip("/")
    while True:
        limit, usage, stat = (_read(folder / f) for f in (files[0], files[1], "memory.stat"))
        if limit is not None and limit.strip().isdigit() and usage is not None and usage.strip().isdigit():
            limit = int(limit)
            if limit < 1 << 60:  # v1 says "no limit" with a number near 2**63
                used = int(usage) - (_stat(stat, files[2]) - _stat(stat, files[3]) if stat else 0)
                room = max(0, limit - used) if room is None else min(room, max(0, limit - used))
        if folder == base or base not in folder.parents:
            return room
        folder = folder.parent


def choose_mode(split, mode, budget):
    """'memory' when the split fits within BUDGET (default: half the available memory), else 'stream'."""
    if mode not in MODES:
        raise ConfigError(f"reader mode {mode!r} is not one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    budget = budget if budget is not None else available_memory() // 2
    return "memory" if split.nbytes <= budget else "stream"


class BatchReader:
    """Batches of a split (or view) for given index arrays, read ahead in a background thread."""

    def __init__(self, split, mode="auto", standardize=True, dtype=np.float32, augment=None, prefetch="auto",
                 memory_budget_bytes=None, local_ranks=1):
        self.split, self.standardize, self.dtype = split, standardize, np.dtype(dtype)
        self.augment = augment
        self.mode = choose_mode(split, mode, memory_budget_bytes)
        # "auto": read ahead only when streaming (file reads release the GIL and hide I/O latency). In memory
        # a batch is a short gather and convert, and a reader thread sharing the rank's core costs more in
        # GIL hand-offs than it saves (docs/benchmarks.md).
        if prefetch == "auto":
            prefetch = 2 if self.mode == "stream" else 0
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ConfigError(f"reader prefetch must be \"auto\" or a number of batches >= 0, got {prefetch!r}")
        self.prefetch = prefetch
        if self.mode == "memory":
            # a copy per process (faster gathers) while the host's LOCAL_RANKS copies fit the budget, else a
            # memory map whose pages the processes share
            budget = memory_budget_bytes if memory_budget_bytes is not None else available_memory() // 2
            self.source = MemorySource(split, copy=split.nbytes * max(1, local_ranks) <= budget)
        else:
            budget = memory_budget_bytes or DEFAULT_STREAM_BUDGET
            self.source = StreamSource(split, cache_bytes=budget // 2)
        shape = (1, -1) + (1,) * (len(split.input_shape) - 1)
        self.mean = np.asarray(split.mean, self.dtype).reshape(shape)
        self.inv_std = (1 / np.asarray(split.std, np.float64)).astype(self.dtype).reshape(shape)
        self.divisor = self.dtype.type(round(1 / split.pixel_scale))  # 255 for uint8: x / 255 exactly rounded
        self.open_iterators = []

    def raw(self, indices):
        """Stored x (original dtype) and y for positions INDICES of the split, in that order."""
        rows = self.split.base_rows(indices)
        x = np.empty((len(rows), *self.split.input_shape), self.split.dtype)
        return self.source.gather(rows, x), self.split.base_labels[rows]

    def convert(self, x):
        """Stored values to model inputs: scale, then standardize when asked (``conversion_of`` keeps what
        this needs in a checkpoint, for ``evaluate.trained.Trained.inputs``)."""
        out = x.astype(self.dtype)
        if self.divisor != 1:
            out /= self.divisor
        if self.standardize:
            out -= self.mean
            out *= self.inv_std
        return out

    def batch(self, indices, aug_key=None):
        """(x, y) for INDICES now; AUG_KEY = (epoch, step, offset in global batch, global batch length)."""
        x, y = self.raw(indices)
        if self.augment is not None and aug_key is not None:
            x = self.augment.apply(x, *aug_key)
        return self.convert(x), y

    def batches(self, index_batches, aug_keys=None):
        """Iterator of (x, y) for each index array, PREFETCH batches ahead; close it (or the reader) to stop
        early."""
        keys = aug_keys if aug_keys is not None else iter(lambda: None, 0)
        produce = (self.batch(idx, key) for idx, key in zip(index_batches, keys))
        if not self.prefetch:
            return produce
        it = Prefetch(produce, self.prefetch)
        self.open_iterators = [i for i in self.open_iterators if not i.finished] + [it]
        return it

    def epoch(self, sampler, epoch, start_step=0):
        """This rank's (x, y) for each step of EPOCH from START_STEP, augmentation keyed by (seed of the
        Augment, epoch, step) and this rank's offset within the global batch."""
        n, big_b = sampler.num_samples, sampler.global_batch
        steps = range(start_step, sampler.steps_per_epoch)
        glens = [min(big_b, n - s * big_b) for s in steps]
        keys = [(epoch, s, sampler.rank_slice(g).start, g) for s, g in zip(steps, glens)]
        return self.batches((idx for _, idx in sampler.epoch_batches(epoch, start_step)), keys)

    def close(self):
        """Stop any prefetch threads and release files."""
        for it in self.open_iterators:
            it.close()
        self.open_iterators = []
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def conversion_of(split):
    """What ``BatchReader.convert`` (standardizing) needs of a training split, as JSON-able values: kept in
    every checkpoint's metadata so that a trained model converts new inputs as it was trained."""
    return {"pixel_scale": float(split.pixel_scale), "mean": np.asarray(split.mean, np.float64).ravel().tolist(),
            "std": np.asarray(split.std, np.float64).ravel().tolist()}
