"""Writing a prepared dataset atomically: a temporary folder beside DIR, renamed into place at the end."""

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError
from ..outputs import check_folder
from ..signals import deferred
from .layout import (
    FORMAT_VERSION,
    channel_stats,
    encode,
    foreign_entries,
    listing,
    pixel_scale,
    sha256_rows,
    shard_name,
)

COMPRESS_CHUNK_BYTES = 16 << 10  # small: random access decompresses a whole chunk per sample


WRITE_BLOCK_BYTES = 32 << 20  # x is written (and hashed) a block of rows at a time


def row_bytes(x):
    return max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * np.dtype(x.dtype).itemsize)


def chunk_rows(x):
    """Rows per HDF5 chunk for compressed storage (about COMPRESS_CHUNK_BYTES per chunk)."""
    return max(1, min(len(x), COMPRESS_CHUNK_BYTES // row_bytes(x)))


def write_shard(path, x, y, attrs, compress):
    """One shard file: x (uncompressed contiguous, or gzip-chunked), y int64 and the attributes. X is an array,
    or anything sliced into one by ``np.asarray(x[lo:hi])`` (``distnet data import`` passes rows read from
    disk on demand), which is written and hashed a block at a time, never held whole."""
    layout = {}
    if compress:
        layout = dict(chunks=(chunk_rows(x), *x.shape[1:]), compression="gzip", compression_opts=4)
    with h5py.File(path, "w") as f:
        if isinstance(x, np.ndarray):  # at hand: one write (the same file, byte for byte, as ever)
            f.create_dataset("x", data=x, **layout)
            x_sha256 = sha256_rows(x)
        else:
            x_sha256 = write_blocks(f.create_dataset("x", shape=x.shape, dtype=x.dtype, **layout), x)
        f.create_dataset("y", data=y.astype(np.int64))
        f.attrs.update(attrs)
        f.attrs["x_sha256"] = x_sha256
        f.attrs["y_sha256"] = sha256_rows(y.astype(np.int64))


def write_blocks(dx, x):
    """Write X into the dataset DX a block of rows at a time (whole chunks when chunked); its SHA-256."""
    step = max(1, WRITE_BLOCK_BYTES // row_bytes(x))
    if dx.chunks:
        step = max(1, step // dx.chunks[0]) * dx.chunks[0]
    digest = hashlib.sha256()
    for lo in range(0, len(x), step):
        block = np.ascontiguousarray(x[lo:lo + step])
        dx[lo:lo + len(block)] = block
        digest.update(block)
    return digest.hexdigest()


def write_split(folder, split, x, y, common, shards, compress):
    """SPLIT's arrays as SHARDS contiguous files under FOLDER/SPLIT."""
    if shards < 1 or shards > len(x):
        raise DataError(f"--shards {shards} is invalid for the {len(x)}-sample {split} split: use 1..{len(x)}")
    (folder / split).mkdir()
    bounds = np.linspace(0, len(x), shards + 1).round().astype(int)
    for k in range(shards):
        lo, hi = bounds[k], bounds[k + 1]
        attrs = dict(common, split=split, num_samples_total=len(x), shard_index=k, shard_count=shards,
                     shard_start=lo)
        write_shard(folder / split / shard_name(k, shards), x[lo:hi], y[lo:hi], attrs, compress)


def common_attrs(name, class_names, train_x, source_sha256, extra, stats=None):
    """Attributes shared by every shard: format, names, shape and the training split's statistics (STATS,
    (mean, std), when the caller computed them already)."""
    mean, std = channel_stats(train_x) if stats is None else stats
    return dict(format_version=FORMAT_VERSION, dataset=name, class_names=encode(list(class_names)),
                input_shape=np.array(train_x.shape[1:], np.int64), mean=mean, std=std,
                pixel_scale=pixel_scale(train_x.dtype), source_sha256=encode(source_sha256), **extra)


def check_target(out, force):
    """OUT may be written: it does not exist, is an empty folder, or (with FORCE) holds a prepared dataset.
    Anything distnet did not write is never replaced, --force or not (a raw IDX folder passed as --out)."""
    out = Path(out)
    check_folder(out.parent, f"--out {out}: its folder", "--out")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise DataError(f"--out {out} is a {'link' if out.is_symlink() else 'file'}, not a dataset folder: "
                        "choose another --out")
    foreign = foreign_entries(out)
    if foreign:
        raise DataError(f"--out {out} holds {len(foreign)} file(s) that distnet did not write "
                        f"({listing(foreign)}): choose another --out")
    if any(out.iterdir()) and not force:
        raise DataError(f"{out} already holds a prepared dataset: pass --force to replace it, or choose another "
                        "--out")


@contextmanager
def scratch_folder(prefix, parent):
    """A new folder PREFIX* in PARENT for the block, removed after it (if still there), also when a stop signal
    lands as it is made: the signal waits until the name is held (``tempfile.TemporaryDirectory`` would lose
    a folder made just before the signal)."""
    path = None
    try:
        with deferred():
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        yield path
    finally:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def write_dataset(out, name, class_names, splits, source_sha256, shards=1, compress=False, force=False,
                  extra=None, stats=None):
    """Write SPLITS {'train': (x, y), 'test': (x, y)} as a prepared dataset at OUT, atomically. STATS: the
    train split's (mean, std) as ``channel_stats`` defines them, when already computed."""
    out = Path(out)
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    common = common_attrs(name, class_names, splits["train"][0], source_sha256, extra or {}, stats)
    try:
        with scratch_folder(f".{out.name}.tmp-", out.parent) as tmp:  # gone after the rename, or on failure
            tmp.chmod(0o755)
            for split, (x, y) in splits.items():
                write_split(tmp, split, x, y, common, shards, compress)
            with deferred():  # a stop signal waits until OUT is the old dataset or the new one, never neither
                replace_dir(tmp, out)
    except OSError as e:  # a full or failing disk: the user's to fix, and nothing was changed
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise DataError(f"cannot write the dataset beside {out} ({reason}): {out} is unchanged; free space "
                        "there or choose another --out") from None
    return out


def replace_dir(tmp, out):
    """Rename TMP to OUT; an existing OUT (a prepared dataset or an empty folder: ``check_target``) is moved
    aside first and removed only after the rename."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
