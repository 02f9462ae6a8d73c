"""``distnet data prepare``: IDX sets (local, Debian package or download) and synthetic sets to HDF5 shards."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..errors import DataError
from . import catalog, download, synthetic
from .idx import read_idx
from .layout import file_sha256
from .writer import check_target, write_dataset


def find_source_file(folder, entry):
    """The file for catalog ENTRY in FOLDER, under its catalog name or without the .gz suffix."""
    name = entry["name"]
    for candidate in (name, name.removesuffix(".gz")):
        if (folder / candidate).is_file():
            return folder / candidate
    raise DataError(f"{folder / name} not found (nor {name.removesuffix('.gz')}): put the {name} file there, "
                    "or pass --source DIR pointing at the folder that holds it")


def source_folder(manifest, source, cache, mirrors, allow_unverified):
    """Folder holding the IDX files: --source, else a known local copy, else a verified download."""
    if source is not None:
        source = Path(source)
        if not source.is_dir():
            raise DataError(f"--source {source} is not a folder: pass the folder that holds the IDX files")
        return source
    if not mirrors:
        for local in map(Path, manifest.get("local_dirs", [])):
            if all((local / e["name"]).is_file() for e in manifest["files"].values()):
                return local
    return download.fetch(manifest, cache or download.default_cache(manifest["name"]), mirrors,
                          allow_unverified)


def load_idx_split(folder, manifest, split, limit):
    """(x (n, 1, H, W) uint8, y int64, {file name: sha256}) for SPLIT from the IDX files in FOLDER."""
    img_entry, lbl_entry = (manifest["files"][k] for k in catalog.SPLIT_FILES[split])
    img_path, lbl_path = find_source_file(folder, img_entry), find_source_file(folder, lbl_entry)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{img_path}: expected uint8 images of shape (N, H, W), got {images.dtype} "
                        f"{images.shape}: pass the images file (idx3-ubyte)")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected labels of shape (N,), got {labels.shape}: pass the labels file")
    if len(images) != len(labels):
        raise DataError(f"{img_path}: {len(images)} images but {lbl_path.name} has {len(labels)} labels: "
                        "use files from the same release")
    k = len(manifest["class_names"])
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise DataError(f"{lbl_path}: labels outside 0..{k - 1}: this is not a {manifest['name']} labels file")
    sums = {path.name: file_sha256(path) for path in (img_path, lbl_path)}
    n = len(labels) if limit is None else min(limit, len(labels))
    return images[:n, None], labels[:n].astype(np.int64), sums


def prepare_idx(manifest, out, args):
    """Arrays, class names and source sums of an IDX dataset."""
    folder = source_folder(manifest, args.source, args.cache, args.mirror and [args.mirror],
                           args.allow_unverified)
    splits, sums = {}, {}
    for split, limit in (("train", args.num_train), ("test", args.num_test)):
        x, y, s = load_idx_split(folder, manifest, split, limit)
        splits[split] = (x, y)
        sums.update(s)
    return splits, manifest["class_names"], sums, {}


def prepare_synthetic(manifest, out, args):
    """Arrays and class names of a synthetic dataset generated from --seed."""
    name, kw, class_names = manifest["name"], {}, manifest["class_names"]
    if name == "gaussians" and args.classes:
        kw["k"] = args.classes
        class_names = [f"blob-{i}" for i in range(args.classes)]
    sizes = {"train": args.num_train or manifest["num_train"], "test": args.num_test or manifest["num_test"]}
    splits = {split: synthetic.generate(name, args.seed, split, n, **kw) for split, n in sizes.items()}
    return splits, class_names, {}, {"generator_seed": args.seed}


DEFAULTS = dict(source=None, shards=1, seed=0, num_train=None, num_test=None, compress=False, force=False,
                mirror=None, cache=None, allow_unverified=False, classes=None)


def prepare(name, out, **options):
    """Prepare dataset NAME into folder OUT (options as in DEFAULTS); returns the output path."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown prepare options: {sorted(unknown)}")
    args = SimpleNamespace(**{**DEFAULTS, **options})
    manifest = catalog.get(name)
    out = Path(out)
    check_target(out, args.force)
    build = prepare_idx if manifest["kind"] == "idx" else prepare_synthetic
    splits, class_names, sums, extra = build(manifest, out, args)
    return write_dataset(out, manifest["name"], class_names, splits, sums, shards=args.shards,
                         compress=args.compress, force=args.force, extra=extra)
