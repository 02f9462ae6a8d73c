"""Where a reader's samples come from: memory-mapped/in-RAM shards, or bounded-memory chunk-aware reads."""

import errno
import os
import threading
from collections import OrderedDict

import h5py
import numpy as np

from ..errors import DataError


def by_shard(split, rows):
    """Yield (shard number, positions in ROWS, rows within that shard), rows sorted for locality."""
    if len(rows) == 0:
        return
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    shard_ids = split.locate(sorted_rows)
    bounds = np.flatnonzero(np.diff(shard_ids)) + 1
    ids = shard_ids[np.r_[0, bounds]]
    for sid, pos, rows_ in zip(ids.tolist(), np.split(order, bounds), np.split(sorted_rows, bounds)):
        yield sid, pos, rows_ - split.shards[sid].start


def runs(local):
    """Split sorted rows into runs of consecutive rows: (start indices into LOCAL, run lengths)."""
    breaks = np.flatnonzero(np.diff(local) != 1) + 1
    starts = np.concatenate([[0], breaks])
    return starts, np.diff(np.concatenate([starts, [len(local)]]))


class MemorySource:
    """All of x at hand: contiguous shards read into RAM (``copy``, the default) or memory-mapped, compressed
    shards read into RAM.

    A copy costs every process its own RAM where a map shares the page cache, but in a training loop it
    gathers a batch's random rows five times faster: 0.04 against 0.20-0.28 ms for 64 Fashion-MNIST images
    between steps that evict the caches (the map's 4 KiB pages miss the TLB, NumPy's large arrays get huge
    pages), 7 % of fashion-mlp's step on 2 ranks. The reader maps instead when copies for every rank on the
    host would not fit its memory budget.
    """

    def __init__(self, split, copy=True):
        self.split = split
        shape = split.input_shape
        self.arrays = []
        for s in split.shards:
            if s.x_offset is not None and copy:
                self.arrays.append(_read_exact(s.path, s.x_offset, np.empty((s.length, *shape), split.dtype)))
            elif s.x_offset is not None:
                self.arrays.append(np.memmap(s.path, split.dtype, "r", s.x_offset, (s.length, *shape)))
            else:
                with h5py.File(s.path, "r") as f:
                    self.arrays.append(f["x"][:])

    def gather(self, rows, out):
        """Fill OUT with x of underlying ROWS (in ROWS order)."""
        if len(self.arrays) == 1:  # the common case: no sorting by shard (half a batch's gather time)
            return np.take(self.arrays[0], rows, axis=0, out=out)
        for sid, pos, local in by_shard(self.split, rows):
            out[pos] = self.arrays[sid][local]
        return out

    def close(self):
        self.arrays = []


def _read_exact(path, offset, out):
    """Fill OUT with the bytes of PATH from OFFSET (a DataError when the file ends first)."""
    view, got = memoryview(out).cast("B"), 0
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                raise DataError(f"{path}: ends {len(view) - got} bytes before its x data does (a truncated copy?): "
                                "prepare the dataset again")
            got += n
    return out


NOWAIT = getattr(os, "RWF_NOWAIT", None)  # Linux: a read that returns EAGAIN instead of waiting for the disk
ADVISE = hasattr(os, "posix_fadvise")


class StreamSource:
    """Reads only what a batch needs: pread of contiguous runs, or whole HDF5 chunks through a bounded LRU
    cache of CACHE_BYTES.

    Contiguous shards are read for a batch at a time: first every run that the page cache holds (a read
    with RWF_NOWAIT), then all the others are announced to the kernel together (POSIX_FADV_WILLNEED) before
    they are read, so that the disk serves a batch's scattered rows at once rather than one after another
    (on the 2-vCPU VM: 86 us a row one after another, 17 us announced 64 at a time). The files are opened
    with POSIX_FADV_RANDOM: read-ahead would read megabytes around rows that are few and scattered.
    """

    def __init__(self, split, cache_bytes):
        self.split, self.cache_bytes = split, cache_bytes
        self.row_bytes = int(np.prod(split.input_shape)) * split.dtype.itemsize
        self.fds, self.files, self.cache, self.cached = {}, {}, OrderedDict(), 0
        self.lock = threading.Lock()
        self.nowait = NOWAIT

    def gather(self, rows, out):
        """Fill OUT with x of underlying ROWS (in ROWS order)."""
        waiting = []
        for sid, pos, local in by_shard(self.split, rows):
            shard = self.split.shards[sid]
            if shard.x_offset is not None:
                waiting.append(self.start_runs(shard, pos, local))
            else:
                self.read_chunks(shard, pos, local, out)
        for shard, pos, stage, view, missed in waiting:  # every shard's reads announced before any waits
            self.finish_runs(shard, view, missed)
            out[pos] = stage
        return out

    def fd(self, shard):
        """SHARD's file descriptor, opened once, without read-ahead."""
        fd = self.fds.get(shard.path)
        if fd is None:
            fd = self.fds[shard.path] = os.open(shard.path, os.O_RDONLY)
            if ADVISE:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return fd

    def start_runs(self, shard, pos, local):
        """Read the runs of consecutive rows that the page cache holds into a staging array (in row order) and
        announce the others; returns what ``finish_runs`` needs."""
        fd, rb = self.fd(shard), self.row_bytes
        starts, lengths = runs(local)
        stage = np.empty((len(local), *self.split.input_shape), self.split.dtype)
        view = memoryview(stage.reshape(-1).view(np.uint8))
        spans = [(at * rb, n * rb, shard.x_offset + row * rb)
                 for at, n, row in zip(starts.tolist(), lengths.tolist(), local[starts].tolist())]
        missed = spans if self.nowait is None else [s for s in spans if not self.read_cached(fd, view, s)]
        if ADVISE:
            for _, nbytes, offset in missed:
                os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_WILLNEED)
        return shard, pos, stage, view, missed

    def finish_runs(self, shard, view, missed):
        """Read the MISSED spans (waiting for the disk)."""
        fd = self.fd(shard)
        for at, nbytes, offset in missed:
            got = 0
            while got < nbytes:
                n = os.preadv(fd, [view[at + got:at + nbytes]], offset + got)
                if not n:
                    raise OSError(f"{shard.path}: short read (file truncated after opening?)")
                got += n

    def read_cached(self, fd, view, span):
        """Read SPAN (position in VIEW, bytes, file offset) if the page cache holds all of it; False if not."""
        at, nbytes, offset = span
        try:
            return os.preadv(fd, [view[at:at + nbytes]], offset, self.nowait) == nbytes
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self.nowait = None  # a file system without it: plain reads from now on
            return False

    def read_chunks(self, shard, pos, local, out):
        """Each HDF5 chunk touched is read (decompressed) once per batch, or taken from the cache."""
        chunk_ids = local // shard.chunk_rows
        bounds = np.flatnonzero(np.diff(chunk_ids)) + 1
        for p, rows, cid in zip(np.split(pos, bounds), np.split(local, bounds), chunk_ids[np.r_[0, bounds]]):
            out[p] = self.chunk(shard, int(cid))[rows - cid * shard.chunk_rows]

    def chunk(self, shard, cid):
        """Chunk CID of SHARD's x, through the LRU cache."""
        key = (shard.path, cid)
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        f = self.files.get(shard.path)
        if f is None:
            f = self.files[shard.path] = h5py.File(shard.path, "r")
        data = f["x"][cid * shard.chunk_rows:(cid + 1) * shard.chunk_rows]
        with self.lock:
            self.cache[key] = data
            self.cached += data.nbytes
            while self.cached > self.cache_bytes and len(self.cache) > 1:
                self.cached -= self.cache.popitem(last=False)[1].nbytes
        return data

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        for f in self.files.values():
            f.close()
        self.fds, self.files, self.cache, self.cached = {}, {}, OrderedDict(), 0
