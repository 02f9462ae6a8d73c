"""The on-disk format (contract): DIR/{train,test}/part-KKKKK-of-NNNNN.h5 holding x, y and attributes.

Normalization convention: uint8 images are fed to models as x / 255 (attribute ``pixel_scale``); the stored
``mean``/``std`` are per channel (axis 1; per feature for 2-D data) of the *training* split in that scale,
and every shard of every split carries the same values. Float data has ``pixel_scale`` 1.
"""

import hashlib
import json
import re
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
SPLITS = ("train", "test")
X_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))
REQUIRED_ATTRS = ("format_version", "dataset", "class_names", "input_shape", "mean", "std", "pixel_scale",
                  "source_sha256", "num_samples_total", "shard_index", "shard_count", "x_sha256", "y_sha256")
HASH_ROWS_BYTES = 64 << 20


SHARD_NAME = re.compile(r"^part-\d{5}-of-\d{5}\.h5$")


def shard_name(index, count):
    """File name of shard INDEX of COUNT."""
    return f"part-{index:05d}-of-{count:05d}.h5"


def foreign_entries(folder):
    """What in FOLDER distnet did not write as a prepared dataset (paths relative to FOLDER, a folder with a
    trailing /), in name order: anything but split folders holding shard files. Empty for a prepared dataset,
    damaged or not, and for an empty folder: the only folders ``--force`` may replace."""
    folder, out = Path(folder), []
    for entry in sorted(folder.iterdir()):
        if entry.name in SPLITS and entry.is_dir() and not entry.is_symlink():
            out += [f"{entry.name}/{f.name}" + ("/" if f.is_dir() else "") for f in sorted(entry.iterdir())
                    if not (SHARD_NAME.match(f.name) and f.is_file() and not f.is_symlink())]
        else:
            out.append(entry.name + ("/" if entry.is_dir() else ""))
    return out


def listing(names, limit=4):
    """'a, b, c, ...' for messages."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def pixel_scale(dtype):
    """Factor that maps stored values to model inputs before standardization (1/255 for uint8)."""
    return 1.0 / 255.0 if np.dtype(dtype) == np.uint8 else 1.0


def channel_stats(x, chunk_rows=8192):
    """Per-channel (axis 1) mean and std of X * pixel_scale, accumulated in float64 over row chunks."""
    scale = pixel_scale(x.dtype)
    axes = (0,) + tuple(range(2, x.ndim))
    total = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    count = 0
    for start in range(0, len(x), chunk_rows):
        part = x[start:start + chunk_rows].astype(np.float64) * scale
        total[0][:] += part.sum(axis=axes)
        total[1][:] += np.square(part).sum(axis=axes)
        count += part.size // x.shape[1]
    mean = total[0] / count
    std = np.sqrt(np.maximum(total[1] / count - mean ** 2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


def sha256_rows(dset, rows_per_read=None):
    """SHA-256 of an array's C-order bytes, read in row blocks (works for h5py datasets and ndarrays)."""
    h = hashlib.sha256()
    row_bytes = max(1, int(np.prod(dset.shape[1:], dtype=np.int64)) * dset.dtype.itemsize)
    step = rows_per_read or max(1, HASH_ROWS_BYTES // row_bytes)
    for start in range(0, dset.shape[0], step):
        h.update(np.ascontiguousarray(dset[start:start + step]).tobytes())
    return h.hexdigest()


def file_sha256(path):
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encode(value):
    """JSON text for list/dict attributes (class names, source sums)."""
    return json.dumps(value)
