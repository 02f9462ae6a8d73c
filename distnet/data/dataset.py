"""Opening a prepared dataset: every problem is found here, before training, as a one-line DataError."""

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError
from .layout import FORMAT_VERSION, REQUIRED_ATTRS, SPLITS, X_DTYPES, file_sha256, listing

REPREPARE = "re-create it with `distnet data prepare NAME --out DIR --force`"


@dataclass(frozen=True)
class Shard:
    """One HDF5 file of a split: where its rows start in the split and how its x is stored."""

    path: Path
    start: int
    length: int
    x_offset: int | None  # byte offset of x when stored contiguous and uncompressed (memory-mappable)
    chunk_rows: int | None  # rows per HDF5 chunk when x is chunked (compressed)
    sums: tuple = ()  # (x_sha256, y_sha256) as stored at preparation (not verified here: `data inspect` does)


@dataclass(frozen=True)
class Info:
    """What every shard of a dataset agrees on."""

    name: str
    class_names: tuple
    input_shape: tuple
    dtype: np.dtype
    mean: np.ndarray
    std: np.ndarray
    pixel_scale: float


class Split:
    """A split (or a view over an index subset of one): its shards, labels and normalization statistics."""

    def __init__(self, name, shards, labels, info, indices=None):
        self.name, self.shards, self.info = name, tuple(shards), info
        self.base_labels, self.indices = labels, indices
        self.starts = np.array([s.start for s in self.shards], np.int64)

    def __len__(self):
        return len(self.base_labels) if self.indices is None else len(self.indices)

    def __repr__(self):
        return f"Split({self.name!r}, {len(self)} samples, {len(self.shards)} shards)"

    class_names = property(lambda self: self.info.class_names)
    num_classes = property(lambda self: len(self.info.class_names))
    input_shape = property(lambda self: self.info.input_shape)
    dtype = property(lambda self: self.info.dtype)
    mean = property(lambda self: self.info.mean)
    std = property(lambda self: self.info.std)
    pixel_scale = property(lambda self: self.info.pixel_scale)
    compressed = property(lambda self: any(s.x_offset is None for s in self.shards))

    @property
    def nbytes(self):
        """Bytes of x in this split (or view) as stored."""
        return len(self) * int(np.prod(self.input_shape)) * self.dtype.itemsize

    def labels(self):
        """All labels of this split or view, int64, in view order."""
        return self.base_labels if self.indices is None else self.base_labels[self.indices]

    def base_rows(self, indices):
        """Rows of the underlying split for positions INDICES of this view."""
        indices = np.asarray(indices, np.int64)
        return indices if self.indices is None else self.indices[indices]

    def subset(self, indices):
        """A view over positions INDICES of this split (or view); usable wherever a split is."""
        indices = np.asarray(indices, np.int64)
        if indices.ndim != 1 or (len(indices) and (indices.min() < 0 or indices.max() >= len(self))):
            raise DataError(f"subset of {self!r}: indices must be a 1-D array within 0..{len(self) - 1}")
        return Split(self.name, self.shards, self.base_labels, self.info, self.base_rows(indices))

    def locate(self, rows):
        """Shard number of each underlying row."""
        return np.searchsorted(self.starts, rows, side="right") - 1


class Dataset:
    """A prepared dataset: ``ds["train"]``, ``ds["test"]`` and what all shards agree on."""

    def __init__(self, path, splits, info):
        self.path, self.splits, self.info = Path(path), splits, info

    def __getitem__(self, split):
        if split not in self.splits:
            raise DataError(f"{self.path}: no split {split!r}; it has {', '.join(self.splits)}")
        return self.splits[split]

    def __repr__(self):
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"Dataset({self.name!r}, {sizes}, input_shape={self.input_shape})"

    name = property(lambda self: self.info.name)
    class_names = property(lambda self: self.info.class_names)
    num_classes = property(lambda self: len(self.info.class_names))
    input_shape = property(lambda self: self.info.input_shape)
    dtype = property(lambda self: self.info.dtype)
    mean = property(lambda self: self.info.mean)
    std = property(lambda self: self.info.std)


def first_line(e):
    """The first line of an exception's message."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_attrs(f, path):
    """Info, counters and stored checksums from a shard's attributes, checking the format version first."""
    missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
    if "format_version" in f.attrs and int(f.attrs["format_version"]) != FORMAT_VERSION:
        raise DataError(f"{path}: unknown format_version {int(f.attrs['format_version'])} (this distnet reads "
                        f"{FORMAT_VERSION}): upgrade distnet or {REPREPARE}")
    if missing:
        raise DataError(f"{path}: missing attribute(s) {', '.join(missing)}: not a distnet dataset; {REPREPARE}")
    a = f.attrs
    info = Info(str(a["dataset"]), tuple(json.loads(a["class_names"])), tuple(int(v) for v in a["input_shape"]),
                None, np.asarray(a["mean"], np.float64), np.asarray(a["std"], np.float64), float(a["pixel_scale"]))
    return info, int(a["shard_index"]), int(a["shard_count"]), int(a["num_samples_total"]), \
        (str(a["x_sha256"]), str(a["y_sha256"]))


def check_arrays(f, path, info):
    """x and y exist, have valid dtypes and shapes, and agree in length; returns x's dtype and storage."""
    for key in ("x", "y"):
        if key not in f or not isinstance(f[key], h5py.Dataset):
            raise DataError(f"{path}: missing dataset {key!r}: {REPREPARE}")
    x, y = f["x"], f["y"]
    if y.dtype != np.int64 or y.ndim != 1:
        raise DataError(f"{path}: y must be int64 of shape (N,), found {y.dtype} {y.shape}: {REPREPARE}")
    if x.dtype not in X_DTYPES:
        raise DataError(f"{path}: x has dtype {x.dtype}; expected uint8, float32 or float64: {REPREPARE}")
    if x.shape[1:] != info.input_shape:
        raise DataError(f"{path}: x samples have shape {x.shape[1:]} but input_shape says {info.input_shape}: "
                        f"{REPREPARE}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: x has {x.shape[0]} samples but y has {y.shape[0]}: {REPREPARE}")
    return storage(x, path)


def storage(x, path):
    """(byte offset, None) for contiguous uncompressed x after checking the file is long enough, else
    (None, chunk rows) after reading its last chunk."""
    if x.chunks is None:
        offset = x.id.get_offset()
        size = path.stat().st_size
        if x.shape[0] and (offset is None or offset + x.nbytes > size):
            raise DataError(f"{path}: truncated (x needs {x.nbytes} bytes at offset {offset}, file has {size}): "
                            f"{REPREPARE}")
        return offset, None
    if x.shape[0]:
        x[-1]
    return None, x.chunks[0]


def read_shard(path):
    """(Info with dtype, shard numbers, Shard fields, labels) of one file, validated."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({first_line(e)}): it is truncated or not HDF5; "
                        f"{REPREPARE}") from None
    try:
        with f:
            info, index, count, total, sums = read_attrs(f, path)
            offset, chunk_rows = check_arrays(f, path, info)
            info = replace(info, dtype=f["x"].dtype)
            labels = f["y"][:]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: cannot read ({first_line(e)}): the file is damaged; {REPREPARE}") from None
    k = len(info.class_names)
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        bad = labels[(labels < 0) | (labels >= k)][0]
        raise DataError(f"{path}: label {bad} out of range 0..{k - 1} ({k} class names): {REPREPARE}")
    return info, (index, count, total), (offset, chunk_rows, sums), labels


def same_info(a, b):
    """Whether two shards agree on everything in Info."""
    return (a.name, a.class_names, a.input_shape, a.dtype, a.pixel_scale) == \
        (b.name, b.class_names, b.input_shape, b.dtype, b.pixel_scale) and \
        np.array_equal(a.mean, b.mean) and np.array_equal(a.std, b.std)


def open_split(folder, name, info):
    """The validated Split in FOLDER/NAME; INFO (from a previous split) must agree when given."""
    split_dir = folder / name
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: split {name!r} is missing: {REPREPARE}")
    paths = sorted(split_dir.glob("*.h5"))
    if not paths:
        raise DataError(f"{split_dir}: no shards (*.h5 files) in split {name!r}: {REPREPARE}")
    shards, labels, start = [], [], 0
    for i, path in enumerate(paths):
        shard_info, (index, count, total), (offset, chunk_rows, sums), y = read_shard(path)
        if info is None:
            info = shard_info
        elif not same_info(info, shard_info):
            raise DataError(f"{path}: disagrees with {paths[0] if i else folder} on name, class names, input "
                            f"shape, dtype or statistics: all shards must come from one preparation; {REPREPARE}")
        if index != i or count != len(paths):
            raise DataError(f"{path}: is shard {index} of {count} but the folder has {len(paths)} shards and "
                            f"this is number {i}: a shard is missing or extra; {REPREPARE}")
        shards.append(Shard(path, start, len(y), offset, chunk_rows, sums))
        labels.append(y)
        start += len(y)
    if start != total:
        raise DataError(f"{split_dir}: shards hold {start} samples but num_samples_total is {total}: {REPREPARE}")
    return Split(name, shards, np.concatenate(labels), info)


def not_prepared(folder):
    """Why FOLDER, which has none of the splits, is not a prepared dataset, and the command that makes one
    (never one that would write into FOLDER, which may be a raw copy such as /usr/share/datasets/...)."""
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return (f"{folder} is empty, not a prepared dataset: prepare one there with "
                f"`distnet data prepare NAME --out {folder}` (`distnet data list` names them)")
    idx = [e for e in entries if IDX_FILE.search(e)]
    if idx:
        name = identify_idx(folder, idx)
        out = f"data/{name}" if name != "NAME" else "data/NAME"
        return (f"{folder} holds raw IDX files ({listing(idx)}), not a prepared dataset: convert them with "
                f"`distnet data prepare {name} --source {folder} --out {out}` and pass --data {out}")
    return (f"{folder} is not a prepared dataset (no {'/ and '.join(SPLITS)}/ folders of shards; it holds "
            f"{listing(entries)}): prepare one into a new folder with `distnet data prepare NAME --out DIR` "
            "and pass --data DIR")


IDX_FILE = re.compile(r"-idx\d-ubyte(\.gz)?$")


def identify_idx(folder, idx_files):
    """The catalog dataset whose files these are (by the SHA-256 of the smallest one), else NAME."""
    from . import catalog

    smallest = min(idx_files, key=lambda e: (folder / e).stat().st_size)
    digest = None
    for name in catalog.names():
        manifest = catalog.get(name)
        for entry in manifest.get("files", {}).values():
            if entry["name"] == smallest and entry.get("sha256"):
                digest = digest or file_sha256(folder / smallest)
                if entry["sha256"] == digest:
                    return name
    return "NAME"


def open_dataset(path, splits=SPLITS):
    """Open and validate the prepared dataset in folder PATH (all SPLITS must be present)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} is a file, not a prepared dataset folder: pass the folder that "
                        "`distnet data prepare NAME --out DIR` made")
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found: prepare it with "
                        f"`distnet data prepare NAME --out {folder}`")
    if not any((folder / name).is_dir() for name in splits):
        raise DataError(not_prepared(folder))
    opened, info = {}, None
    for name in splits:
        opened[name] = open_split(folder, name, info)
        info = opened[name].info
    return Dataset(folder, opened, info)


def fingerprint(ds):
    """What copies of a prepared dataset on different nodes must agree on, found without reading the data:
    per shard (split/file name, size in bytes, the x and y checksums stored at preparation)."""
    return [(f"{name}/{shard.path.name}", shard.path.stat().st_size, *shard.sums)
            for name, split in ds.splits.items() for shard in split.shards]


def fingerprint_difference(mine, theirs):
    """How fingerprint MINE differs from THEIRS, in words (None when they agree)."""
    if mine == theirs:
        return None
    if [m[0] for m in mine] != [t[0] for t in theirs]:
        return (f"its shards ({listing([m[0] for m in mine], 3)} against {listing([t[0] for t in theirs], 3)})")
    m, t = next((m, t) for m, t in zip(mine, theirs) if m != t)
    if m[1] != t[1]:
        return f"{m[0]} ({m[1]:,} bytes against {t[1]:,})"
    return f"{m[0]} (same size, other contents: prepared differently)"


def holdout(split, fraction, seed=0):
    """(train_view, val_view): a class-stratified FRACTION of SPLIT held out, chosen from SEED only."""
    if not 0 < fraction < 1:
        raise DataError(f"holdout fraction {fraction} must be between 0 and 1 (exclusive)")
    labels = split.labels()
    rng = np.random.default_rng([seed, 0x401D])
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # shuffled within each class
    counts = np.bincount(labels, minlength=split.num_classes)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = np.round(counts * fraction).astype(np.int64)
    rank_in_class = np.arange(len(order)) - np.repeat(first, counts)
    is_val = rank_in_class < np.repeat(take, counts)
    if not is_val.any() or is_val.all():
        raise DataError(f"holdout fraction {fraction} of {len(labels)} samples leaves an empty part: "
                        "change the fraction")
    return split.subset(np.sort(order[~is_val])), split.subset(np.sort(order[is_val]))
