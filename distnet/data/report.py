"""``distnet data inspect``: schema, counts, class histogram, statistics, and verification of checksums."""

import json

import h5py
import numpy as np

from ..errors import DataError
from . import catalog
from .dataset import open_dataset
from .layout import sha256_rows


def verify_shard(shard):
    """Raise DataError when a shard's x or y bytes differ from its stored SHA-256."""
    with h5py.File(shard.path, "r") as f:
        for key in ("x", "y"):
            actual, stored = sha256_rows(f[key]), str(f.attrs[f"{key}_sha256"])
            if actual != stored:
                raise DataError(f"{shard.path}: checksum mismatch in {key} (stored {stored[:12]}…, "
                                f"computed {actual[:12]}…): the file is corrupt; re-create it with "
                                "`distnet data prepare NAME --out DIR --force`")


# The "checksums" of a summary (each shard's SHA-256 of x and y) in the words of ``render``
SHARD_CHECKSUMS = {"verified": "verified", "not checked": "not checked (--no-verify)",
                   "written": "SHA-256 written; `distnet data inspect {path}` verifies them"}


def catalog_match(name, fname, digest):
    """Whether a source file's sum is the catalog's for that file name. The catalog's own word for where its
    sum comes from ("verified": computed from a copy) is left out: beside "checksums: not checked" it read as
    if the file had been both checked and not."""
    if name not in catalog.names():  # an imported dataset (distnet data import)
        return "not from the catalog"
    known = {e["name"]: e for e in catalog.get(name).get("files", {}).values()}
    entry = known.get(fname)
    if entry is None or not entry.get("sha256"):
        return "not in the catalog: not checked"
    if entry["sha256"] != digest:
        return "differs from the catalog: not the official file"
    return "matches the catalog" + ("'s published sum" if entry.get("sha256_status") == "published" else "")


def storage_of(split):
    """A short description of how x is stored."""
    return "gzip chunked" if split.compressed else "contiguous (memory-mappable)"


def summary(path, verify=True):
    """Everything ``inspect`` reports, as a JSON-ready dict; verifies checksums when VERIFY."""
    ds = open_dataset(path)
    with h5py.File(ds["train"].shards[0].path, "r") as f:
        sources = json.loads(f.attrs["source_sha256"])
    out = {"path": str(ds.path), "dataset": ds.name, "input_shape": list(ds.input_shape),
           "dtype": str(ds.dtype), "class_names": list(ds.class_names), "pixel_scale": ds["train"].pixel_scale,
           "mean": ds.mean.tolist(), "std": ds.std.tolist(), "source_sha256": sources, "splits": {},
           "checksums": "verified" if verify else "not checked"}
    for name, split in ds.splits.items():
        if verify:
            for shard in split.shards:
                verify_shard(shard)
        out["splits"][name] = {"samples": len(split), "shards": len(split.shards), "storage": storage_of(split),
                               "bytes": split.nbytes,
                               "class_counts": np.bincount(split.labels(), minlength=ds.num_classes).tolist()}
    return out


def render(info):
    """Human-readable text of a summary."""
    lines = [f"{info['path']}: {info['dataset']}",
             f"  x: {info['dtype']} per sample {tuple(info['input_shape'])} (NCHW for images); y: int64",
             f"  model input = x * {info['pixel_scale']:.6g}, standardized with the train split's per-channel",
             f"  mean {np.round(info['mean'], 4).tolist()}  std {np.round(info['std'], 4).tolist()}",
             "  shard checksums: " + SHARD_CHECKSUMS.get(info["checksums"], info["checksums"]).format(**info)]
    for name, s in info["splits"].items():
        lines.append(f"  {name}: {s['samples']} samples in {s['shards']} shard(s), {s['storage']}, "
                     f"{s['bytes'] / 2**20:.1f} MiB")
    lines.append("  class histogram:")
    width = max(len(c) for c in info["class_names"])
    for k, cname in enumerate(info["class_names"]):
        counts = "  ".join(f"{name} {s['class_counts'][k]:>7}" for name, s in info["splits"].items())
        lines.append(f"    {k:>3} {cname:<{width}}  {counts}")
    for fname, digest in info["source_sha256"].items():
        lines.append(f"  source {fname}: sha256 {digest} ({catalog_match(info['dataset'], fname, digest)})")
    return "\n".join(lines)
