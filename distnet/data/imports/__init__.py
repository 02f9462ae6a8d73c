"""``distnet data import SRC --out DIR``: one's own arrays, CSV or images as a prepared dataset.

Sources: ``.npz`` (x_train, y_train, x_test, y_test; or x, y), ``.npy`` (x.npy with ``labels=`` y.npy, or a
folder holding x.npy and y.npy, and x_test.npy/y_test.npy when it has a test split), HDF5 (the same names, or
``x=``/``y=`` keys), CSV (numeric features and a label column) and image folders (``DIR/<class>/*``).

Out of core: x is never held whole. Arrays are read a block of rows at a time (``rows``), a CSV and an image
folder are converted block by block into a scratch file beside the output first; one pass over x checks
every value is finite and computes the train split's statistics (per block, combined exactly with Chan et
al.'s pairwise formulas), and the writer (``distnet.data.writer``, the same as ``prepare``'s) reads it once
more while writing and hashing. Labels (8 bytes a sample) are held in memory.

Everything is written into a temporary folder beside ``out`` and renamed at the end; an error, Ctrl-C or
SIGTERM leaves nothing behind (nor the scratch files, nor folders created for ``out``).
"""

import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ...errors import DataError
from ...signals import deferred
from ..layout import file_sha256, listing, pixel_scale
from ..writer import check_target, scratch_folder, write_dataset
from .arrays import open_hdf5, open_npy, open_npz
from .csvfile import Csv
from .rows import Converted, Subset, rows_of

FORMATS = ("npz", "npy", "hdf5", "csv", "images")
SUFFIXES = {".npz": "npz", ".npy": "npy", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".csv": "csv",
            ".tsv": "csv", ".txt": "csv"}
DTYPES = ("auto", "float32", "float64")
CHUNK_ENV = "DISTNET_IMPORT_CHUNK_BYTES"  # the size of a block read at a time (tests make it small)
CHUNK_BYTES = 16 << 20
SPLIT_SEED = 0x1397  # mixed with --seed: the split's stream is its own

DEFAULTS = dict(format=None, labels=None, x=None, y=None, label_column=None, header=None, delimiter=None,
                size=None, color="auto", classes=None, test_fraction=None, seed=0, name=None, dtype="auto",
                channels_last=False, shards=1, compress=False, force=False, chunk_bytes=None)


class Loaded(SimpleNamespace):
    """A source opened: sets {split or 'all': (x Rows, y array)}, where(split) -> describe(i, index),
    class names it names itself (image folders), source sums, kind."""


def chunk_size(given):
    value = given if given is not None else os.environ.get(CHUNK_ENV) or CHUNK_BYTES
    try:
        value = int(value)
    except ValueError:
        value = 0
    if value < 1:
        raise DataError(f"{CHUNK_ENV}={given or os.environ.get(CHUNK_ENV)}: give a size in bytes (>= 1)")
    return value


def source_format(src, given):
    if given:
        if given not in FORMATS:
            raise DataError(f"--format {given}: choose one of {', '.join(FORMATS)}")
        return given
    if src.is_dir():
        return "npy" if (src / "x.npy").is_file() and (src / "y.npy").is_file() else "images"
    kind = SUFFIXES.get(src.suffix.lower())
    if kind is None:
        raise DataError(f"cannot tell the format of {src} from its name: use .npz, .npy, .h5/.hdf5, .csv, a "
                        f"folder of images, or pass --format ({', '.join(FORMATS)})")
    return kind


def array_where(name):
    """describe(i, index) for samples of an array in file NAME."""
    def describe(i, index=None):
        at = f" at {tuple(int(v) for v in index)}" if index is not None and len(index) > 1 else \
            f", feature {int(index[0])}" if index is not None else ""
        return f"sample {i}{at} of {name}"
    return describe


class Job:
    """Scratch space beside OUT, open files, folders created for OUT: all undone on failure."""

    def __init__(self, out):
        self.out, self.dir, self.made, self.closers = out, None, [], []

    def parents(self):
        missing, p = [], self.out.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        for p in reversed(missing):
            with deferred():  # a stop signal comes once the folder is recorded for removal
                p.mkdir()
                self.made.append(p)

    def scratch(self):
        if self.dir is None:
            self.parents()
            with deferred():  # a stop signal comes once self.dir names the folder, for close() to remove it
                self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.import-", dir=self.out.parent))
        return self.dir

    def close(self, failed):
        for close in reversed(self.closers):
            close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        if failed:
            for p in reversed(self.made):
                try:
                    p.rmdir()
                except OSError:
                    pass


def check_split(src, single, args):
    """A source with one set of samples needs --test-fraction; one with a test split refuses it (checked
    before the source is read)."""
    if args.test_fraction is not None and not single:
        raise DataError(f"{src} has a test split already: --test-fraction splits a source with one set of "
                        "samples (x, y); leave it out")
    if single and args.test_fraction is None:
        raise DataError(f"{src} has one set of samples and no test split: pass --test-fraction F (e.g. 0.2) to "
                        "hold out a test split (chosen from --seed)")


def load_arrays(src, fmt, args, job):
    """Loaded for npz, npy and HDF5 sources."""
    if fmt == "npz":
        sets, names = open_npz(src, args.x, args.y, job.scratch, job.closers, lambda one: check_split(src, one, args))
        sources = [src]
    elif fmt == "hdf5":
        sets, names = open_hdf5(src, args.x, args.y, job.closers)
        sources = [src]
    else:
        if src.is_dir():
            files = {"all": (src / "x.npy", src / "y.npy")}
            if (src / "x_test.npy").is_file() or (src / "y_test.npy").is_file():
                files = {"train": files["all"], "test": (src / "x_test.npy", src / "y_test.npy")}
        elif args.labels is None:
            raise DataError(f"{src} holds no labels: pass --labels y.npy (one label per row of {src.name}), or "
                            "a folder holding x.npy and y.npy")
        else:
            files = {"all": (src, Path(args.labels))}
        for pair in files.values():
            for p in pair:
                if not p.is_file():
                    raise DataError(f"{p} not found: x and labels must both be .npy files")
        sets = {s: (open_npy(px), open_npy(py)) for s, (px, py) in files.items()}
        for x, y in sets.values():
            job.closers += [x.close, y.close]
        names = {s: (px.name, py.name) for s, (px, py) in files.items()}
        sources = [p for pair in files.values() for p in pair]
    prefix = "" if fmt == "npy" else f"{src.name}: "
    check_split(src, "all" in sets, args)
    for s, (x, y) in sets.items():
        if len(x) != len(y):
            raise DataError(f"{prefix}{names[s][0]} has {len(x)} samples but {names[s][1]} has {len(y)} labels: "
                            "give one label per sample (x and y of the same length)")
    sums = {p.name: file_sha256(p) for p in sources}
    return Loaded(sets={s: (x, np.asarray(y)) for s, (x, y) in sets.items()}, kind=fmt, sums=sums,
                  where={s: array_where(names[s][0]) for s in sets}, label_where={s: array_where(names[s][1])
                                                                                 for s in sets},
                  class_names=None)


def load_csv(src, args, job, chunk, dtype):
    csv = Csv(src, args.header, args.delimiter, args.label_column)
    check_split(src, True, args)
    x, y, digest = csv.read(job.scratch(), chunk, np.float32 if dtype == "auto" else dtype)
    job.closers.append(x.close)
    return Loaded(sets={"all": (x, y)}, kind="csv", sums={src.name: digest}, where={"all": csv.where},
                  label_where={"all": csv.where}, class_names=None)


def load_images(src, args, job, chunk):
    import hashlib

    from .images import ImageFolder, parse_size

    folder = ImageFolder(src, args.classes, parse_size(args.size) if args.size else None, args.color)
    check_split(src, "all" in folder.files, args)
    sets, digest = {}, hashlib.sha256()
    for s in folder.files:
        x = folder.read(s, job.scratch() / f"images-{s}.raw", chunk, digest)
        job.closers.append(x.close)
        sets[s] = (x, folder.labels[s])
    where = {s: folder.where(s) for s in sets}
    return Loaded(sets=sets, kind="images", sums={f"{src.name}/": digest.hexdigest()}, where=where,
                  label_where=where, class_names=folder.class_names)


def parse_classes(text):
    if text is None:
        return None
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    if not names or not all(names):
        raise DataError(f"--classes {text}: give the class names separated by commas, e.g. --classes cat,dog")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"--classes names {dup[0]!r} twice: every class needs its own name")
    return names


def class_ids(y, names, describe, what):
    """(int64 class indices, class names) of labels Y: indices (integers, or integral floats) within the
    classes, or names mapped to classes (in NAMES' order when given, else sorted)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{what}: labels of shape {y.shape}: give one label per sample, shape (N,) (class "
                        "indices or names)")
    if y.dtype.kind in "US":
        if y.dtype.kind == "S":
            y = np.char.decode(y, "utf-8", "replace")
        uniq, inverse = np.unique(y, return_inverse=True)
        if names is None:
            return inverse.reshape(-1).astype(np.int64), [str(u) for u in uniq]
        index = {n: k for k, n in enumerate(names)}
        unknown = [u for u in uniq.tolist() if u not in index]
        if unknown:
            i = int(np.flatnonzero(y == unknown[0])[0])
            raise DataError(f"{what}: label {unknown[0]!r} of {describe(i)} is not one of the --classes "
                            f"({listing(names, 8)}): name every class")
        return np.array([index[u] for u in uniq.tolist()], np.int64)[inverse.reshape(-1)], names
    if y.dtype.kind == "f":
        bad = ~(np.isfinite(y) & (np.floor(y) == y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{what}: label {y[i]:g} of {describe(i)} is not an integer: labels are class indices "
                            "0..K-1 (or class names)")
    elif y.dtype.kind not in "biu":
        raise DataError(f"{what}: labels of type {y.dtype}: give class indices 0..K-1 or class names")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        i = int(np.argmax(y < 0))
        raise DataError(f"{what}: label {y[i]} of {describe(i)} is negative: labels are class indices 0..K-1")
    k = len(names) if names is not None else (int(y.max()) + 1 if len(y) else 0)
    if len(y) and y.max() >= k:
        i = int(np.argmax(y >= k))
        raise DataError(f"{what}: label {y[i]} of {describe(i)} is beyond the {k} classes --classes names "
                        f"(0..{k - 1}): name every class")
    return y, names if names is not None else [str(c) for c in range(k)]


def split_rows(labels, fraction, seed, num_classes):
    """(train rows, test rows), sorted: FRACTION of every class to test, chosen from SEED and the labels only."""
    rng = np.random.default_rng([seed, SPLIT_SEED])
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # shuffled within each class
    counts = np.bincount(labels, minlength=num_classes)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = np.round(counts * fraction).astype(np.int64)
    is_test = np.arange(len(order)) - np.repeat(first, counts) < np.repeat(take, counts)
    if not is_test.any() or is_test.all():
        raise DataError(f"--test-fraction {fraction} of {len(labels)} samples leaves the "
                        f"{'test' if not is_test.any() else 'train'} split empty: change the fraction")
    return np.sort(order[~is_test]), np.sort(order[is_test])


def scan(x, rows, train, describe, what):
    """One pass over X a block of ROWS at a time: a DataError for NaN or infinite values (their count and
    the first), and the per-channel (axis 1) mean and std of X * pixel_scale over the rows where TRAIN (a bool
    mask; True: all rows; False: none), as ``layout.channel_stats`` defines them."""
    scale, axes = pixel_scale(x.dtype), (0,) + tuple(range(2, x.ndim))
    channels = x.shape[1]
    count, mean, m2 = 0, np.zeros(channels), np.zeros(channels)
    bad, first = 0, None
    for lo, block in x.blocks(rows):
        if x.dtype.kind == "f":
            finite = np.isfinite(block)
            if not finite.all():
                flat = ~finite.reshape(len(block), -1)
                bad += int(flat.sum())
                if first is None:
                    r = int(np.flatnonzero(flat.any(axis=1))[0])
                    first = (lo + r, np.unravel_index(int(np.flatnonzero(flat[r])[0]), block.shape[1:]))
        if bad or train is False:
            continue
        part = block if train is True else block[train[lo:lo + len(block)]]
        if not len(part):
            continue
        part = part.astype(np.float64)
        if scale != 1:
            part *= scale
        n = part.size // channels
        m = part.mean(axis=axes)
        part -= m.reshape(1, channels, *([1] * (x.ndim - 2)))
        q = np.square(part, out=part).sum(axis=axes)
        delta, total = m - mean, count + n
        mean = mean + delta * (n / total)
        m2 = m2 + q + delta ** 2 * (count * n / total)
        count = total
    if bad:
        raise DataError(f"{what}: {bad} NaN or infinite feature value{'s' if bad > 1 else ''}, the first in "
                        f"{describe(*first)}: clean or drop those samples before importing")
    if train is False:
        return None
    std = np.sqrt(m2 / max(count, 1))
    return mean, np.where(std > 0, std, 1.0)


def import_data(src, out, **options):
    """Import SRC into the prepared-dataset folder OUT (options as in DEFAULTS); returns the output path."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown import options: {sorted(unknown)}")
    args = SimpleNamespace(**{**DEFAULTS, **options})
    src, out = Path(src), Path(out)
    if not src.exists():
        raise DataError(f"{src} not found: pass a .npz, .npy, .h5, .csv file or a folder of images")
    check_target(out, args.force)
    if args.dtype not in DTYPES:
        raise DataError(f"--dtype {args.dtype}: choose one of {', '.join(DTYPES)}")
    if args.shards < 1:
        raise DataError(f"--shards {args.shards}: give at least 1")
    if args.seed < 0:
        raise DataError(f"--seed {args.seed}: give a seed >= 0")
    if args.test_fraction is not None and not 0 < args.test_fraction < 1:
        raise DataError(f"--test-fraction {args.test_fraction}: give a fraction between 0 and 1, e.g. 0.2")
    fmt, chunk = source_format(src, args.format), chunk_size(args.chunk_bytes)
    names = parse_classes(args.classes)
    job, failed = Job(out), True
    try:
        if fmt == "csv":
            loaded = load_csv(src, args, job, chunk, args.dtype)
        elif fmt == "images":
            loaded = load_images(src, SimpleNamespace(**{**vars(args), "classes": names}), job, chunk)
        else:
            loaded = load_arrays(src, fmt, args, job)
        path = write(src, out, args, loaded, names, chunk, job)
        failed = False
        return path
    finally:
        job.close(failed)


def write(src, out, args, loaded, names, chunk, job):
    """Labels to classes, x converted, split, scanned, then written by the prepared-format writer."""
    sets = loaded.sets
    for s, (x, _) in sets.items():
        if len(x) == 0:
            raise DataError(f"{src}: {'the ' + s + ' split has ' if s != 'all' else ''}zero samples: nothing "
                            "to import")
    ys = [y for _, y in sets.values()]
    offsets = np.cumsum([0] + [len(y) for y in ys])
    order = list(sets)

    def describe_label(i):
        k = int(np.searchsorted(offsets, i, side="right") - 1)
        return loaded.label_where[order[k]](i - int(offsets[k]))

    y_all, class_names = class_ids(np.concatenate(ys) if len(ys) > 1 else ys[0],
                                   names if loaded.class_names is None else loaded.class_names,
                                   describe_label, src.name)
    labels = {s: y_all[offsets[k]:offsets[k + 1]] for k, s in enumerate(order)}
    dtype = None if args.dtype == "auto" else np.dtype(args.dtype)
    xs = {}
    for s, (x, _) in sets.items():
        x = rows_of(x)
        if x.dtype.kind not in "biuf":
            raise DataError(f"{src}: x holds {x.dtype} values: features must be numbers")
        if args.channels_last and x.ndim != 4:
            raise DataError(f"--channels-last: {src}'s samples have shape {x.shape[1:]}, not (H, W, C): leave it out")
        keep = x.dtype in (np.uint8, np.float32, np.float64) and x.dtype.isnative
        xs[s] = Converted(x, dtype or (x.dtype.newbyteorder("=") if keep else np.float32), args.channels_last)
    shapes = {s: x.shape[1:] for s, x in xs.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{src}: train samples have shape {shapes['train']} but test samples {shapes['test']}: "
                        "both splits need samples of one shape")
    rows = {s: max(1, chunk // x.row_bytes) for s, x in xs.items()}
    if "all" in xs:
        x = xs["all"]
        train_rows, test_rows = split_rows(labels["all"], args.test_fraction, args.seed, len(class_names))
        mask = np.zeros(len(x), bool)
        mask[train_rows] = True
        stats = scan(x, rows["all"], mask, loaded.where["all"], src.name)
        splits = {"train": (Subset(x, train_rows, rows["all"]), labels["all"][train_rows]),
                  "test": (Subset(x, test_rows, rows["all"]), labels["all"][test_rows])}
    else:
        stats = scan(xs["train"], rows["train"], True, loaded.where["train"], src.name)
        scan(xs["test"], rows["test"], False, loaded.where["test"], src.name)
        splits = {s: (xs[s], labels[s]) for s in ("train", "test")}
    job.parents()
    name = args.name or (src.name if src.is_dir() else src.stem)
    return write_dataset(out, name, class_names, splits, loaded.sums, shards=args.shards, compress=args.compress,
                         force=args.force, extra={"imported_from": loaded.kind}, stats=stats)


def write_arrays(out, x_train, y_train, x_test=None, y_test=None, class_names=None, test_fraction=None,
                  seed=0, name=None, force=False):
    """Write arrays already in memory as a prepared dataset at OUT (what ``distnet data import`` writes, with
    the same checks: labels within the classes, no NaN or infinite values, equal lengths), atomically.
    Without ``x_test``/``y_test``, ``test_fraction`` of every class is held out (from ``seed``). Labels are
    class indices 0..K-1 or names; ``class_names`` (a list) names the classes, in index order. Returns OUT.
    The arrays pass through a scratch .npz beside OUT (removed), which the import reads in blocks."""
    if (x_test is None) != (y_test is None):
        raise DataError("distnet.data.write_dataset: give both x_test and y_test, or neither (with test_fraction)")
    if x_test is None and test_fraction is None:
        raise DataError("distnet.data.write_dataset: no test split: give x_test and y_test, or test_fraction=F "
                        "(e.g. 0.2) to hold out that fraction of every class")
    arrays = {"x_train": x_train, "y_train": y_train} if x_test is not None else {"x": x_train, "y": y_train}
    if x_test is not None:
        arrays.update(x_test=x_test, y_test=y_test)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    out = Path(out)
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    with scratch_folder(f".{out.name}.arrays-", out.parent) as scratch:
        src = scratch / "arrays.npz"
        np.savez(src, **arrays)
        classes = None if class_names is None else ",".join(map(str, class_names))
        return import_data(src, out, classes=classes, test_fraction=test_fraction, seed=seed,
                           name=name or out.name, force=force)
