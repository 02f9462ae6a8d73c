"""Preparing datasets: IDX and synthetic sources round-trip exactly, for any shard count and reader mode."""

import gzip
import json
import struct

import h5py
import numpy as np
import pytest

from distnet.data import BatchReader, open_dataset
from distnet.data.prepare import prepare
from distnet.errors import DataError

from ..helpers import make_idx_source, run_distnet


def parse_idx_images(raw):
    """Images from IDX bytes, parsed independently: 16-byte header, then uint8 pixels."""
    n, h, w = struct.unpack(">III", raw[4:16])
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)


def parse_idx_labels(raw):
    (n,) = struct.unpack(">I", raw[4:8])
    return np.frombuffer(raw, np.uint8, offset=8)[:n].astype(np.int64)


def read_back(path, split, mode, rng):
    """All stored x and y of SPLIT via the reader, asked for in a random order and put back in file order."""
    ds = open_dataset(path)
    order = rng.permutation(len(ds[split]))
    with BatchReader(ds[split], mode=mode) as reader:
        parts = [reader.raw(chunk) for chunk in np.array_split(order, 7)]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    inverse = np.argsort(order)
    return x[inverse], y[inverse]


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip_is_exact_for_any_shards_mode_and_compression(tmp_path, rng, shards, compress):
    source = tmp_path / "src"
    arrays = make_idx_source(source, rng)
    out = prepare("mnist", tmp_path / "out", source=source, shards=shards, compress=compress)
    assert len(list((out / "train").glob("*.h5"))) == shards
    for split, (x, y) in arrays.items():
        for mode in ("memory", "stream"):
            got_x, got_y = read_back(out, split, mode, rng)
            np.testing.assert_array_equal(got_x, x[:, None])
            np.testing.assert_array_equal(got_y, y)
    with h5py.File(out / "train" / f"part-00000-of-{shards:05d}.h5") as f:
        assert (f["x"].compression == "gzip") == compress
        assert f["x"].dtype == np.uint8 and f["y"].dtype == np.int64
        assert json.loads(f.attrs["source_sha256"]).keys() == {
            "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte"}
        scaled = arrays["train"][0].astype(np.float64) / 255
        np.testing.assert_allclose(f.attrs["mean"], [scaled.mean()], rtol=1e-10)
        np.testing.assert_allclose(f.attrs["std"], [scaled.std()], rtol=1e-8)


def test_fashion_mnist_from_the_debian_package(fashion_data, fashion_source):
    ds = open_dataset(fashion_data)
    assert (ds.name, ds.input_shape, ds.num_classes) == ("fashion-mnist", (1, 28, 28), 10)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert len(ds["train"]) == 60000 and len(ds["test"]) == 10000
    assert np.bincount(ds["train"].labels()).tolist() == [6000] * 10
    assert np.bincount(ds["test"].labels()).tolist() == [1000] * 10
    np.testing.assert_allclose(ds.mean, [0.2860], atol=1e-4)
    np.testing.assert_allclose(ds.std, [0.3530], atol=1e-4)
    raw_x = gzip.decompress((fashion_source / "t10k-images-idx3-ubyte.gz").read_bytes())
    raw_y = gzip.decompress((fashion_source / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with BatchReader(ds["test"], mode="memory") as reader:
        x, y = reader.raw(np.arange(10000))
    np.testing.assert_array_equal(x[:, 0], parse_idx_images(raw_x))
    np.testing.assert_array_equal(y, parse_idx_labels(raw_y))
    with h5py.File(ds["train"].shards[0].path) as f:
        assert json.loads(f.attrs["source_sha256"])["train-images-idx3-ubyte.gz"] == \
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"


def test_shapes_is_reproducible_balanced_and_independent_of_shards(tmp_path, shapes_data):
    again = prepare("shapes", tmp_path / "again", num_train=2000, num_test=500, shards=4)
    first, second = open_dataset(shapes_data), open_dataset(again)
    for split in ("train", "test"):
        with BatchReader(first[split], mode="memory") as a, BatchReader(second[split], mode="stream") as b:
            idx = np.arange(len(first[split]))
            for got, want in zip(a.raw(idx), b.raw(idx)):
                np.testing.assert_array_equal(got, want)
    assert np.bincount(first["train"].labels()).tolist() == [200] * 10
    other = prepare("shapes", tmp_path / "seed1", num_train=2000, num_test=500, seed=1)
    with BatchReader(open_dataset(other)["train"]) as r, BatchReader(first["train"]) as s:
        assert not np.array_equal(r.raw(np.arange(10))[0], s.raw(np.arange(10))[0])


def test_shapes_classes_differ_on_average(shapes_data):
    """Each class's mean image differs from every other's: the generator draws ten distinct shapes."""
    ds = open_dataset(shapes_data)
    with BatchReader(ds["train"], standardize=False) as r:
        x, y = r.batch(np.arange(len(ds["train"])))
    means = np.stack([x[y == k].mean(axis=0).ravel() for k in range(10)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dist[~np.eye(10, dtype=bool)].min() > 0.5


def test_spirals_and_gaussians_are_float_2d(spirals_data, tmp_path):
    ds = open_dataset(spirals_data)
    assert ds.input_shape == (2,) and ds.dtype == np.float32 and ds.num_classes == 2
    assert (len(ds["train"]), len(ds["test"])) == (4000, 1000)
    with BatchReader(ds["train"], standardize=False) as r:
        x, y = r.batch(np.arange(4000))
    assert x.dtype == np.float32 and np.isfinite(x).all() and np.abs(x).max() < 1.5
    with h5py.File(ds["train"].shards[0].path) as f:
        np.testing.assert_array_equal(x, f["x"][:])
    g = open_dataset(prepare("gaussians", tmp_path / "g", classes=5, num_train=500, num_test=100))
    assert g.num_classes == 5 and np.bincount(g["train"].labels()).tolist() == [100] * 5


def test_cli_prepare_inspect_and_list(tmp_path):
    out = tmp_path / "sp"
    r = run_distnet(["data", "prepare", "spirals", "--out", out, "--num-train", 300, "--num-test", 100,
                     "--shards", 2])
    assert r.returncode == 0, r.stderr
    assert f"shard checksums: SHA-256 written; `distnet data inspect {out}` verifies them" in r.stdout, r.stdout
    assert "not checked" not in r.stdout
    r = run_distnet(["data", "inspect", out])
    assert r.returncode == 0 and "  shard checksums: verified\n" in r.stdout, r.stdout + r.stderr
    r = run_distnet(["data", "inspect", out, "--json"])
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["checksums"] == "verified" and info["dataset"] == "spirals"
    assert info["splits"]["train"]["samples"] == 300 and info["splits"]["train"]["shards"] == 2
    assert sum(info["splits"]["test"]["class_counts"]) == 100
    r = run_distnet(["data", "list"])
    assert r.returncode == 0
    assert all(name in r.stdout for name in ("mnist", "fashion-mnist", "kmnist", "shapes", "spirals"))


def test_failed_prepare_leaves_no_partial_folder(tmp_path, monkeypatch):
    import distnet.data.writer as writer
    calls = []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kw)

    real = writer.write_shard
    monkeypatch.setattr(writer, "write_shard", failing)
    with pytest.raises(DataError, match="disk full"):
        prepare("spirals", tmp_path / "sp", num_train=200, num_test=50, shards=2)
    assert list(tmp_path.iterdir()) == []
