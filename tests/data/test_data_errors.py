"""Every data error is a one-line message naming the file and the fix, with exit code 2."""

import gzip
import shutil

import h5py
import numpy as np
import pytest

from distnet.data import open_dataset
from distnet.data.idx import read_idx
from distnet.data.prepare import prepare
from distnet.errors import DataError

from ..helpers import assert_user_error, idx_bytes, make_idx_source, run_distnet


@pytest.fixture
def small(tmp_path):
    """A fresh 2-shard spirals dataset each test may damage."""
    return prepare("spirals", tmp_path / "ds", num_train=200, num_test=60, shards=2)


def shard(path, split="train", k=0):
    return path / split / f"part-{k:05d}-of-00002.h5"


def rewrite(path, **changes):
    """Rewrite shard PATH with x/y replaced (None removes) and attributes changed."""
    with h5py.File(path, "r") as f:
        data = {"x": f["x"][:], "y": f["y"][:]}
        attrs = dict(f.attrs)
    for key, value in changes.items():
        if key in data:
            data[key] = value
        else:
            attrs[key] = value
    path.unlink()
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            if value is not None:
                f.create_dataset(key, data=value)
        f.attrs.update(attrs)


def inspect_error(path, *fragments):
    assert_user_error(run_distnet(["data", "inspect", path]), *fragments)


def test_truncated_file(small):
    target = shard(small)
    target.write_bytes(target.read_bytes()[:3000])
    inspect_error(small, target, "truncated", "--force")


def test_non_hdf5_file(small):
    shard(small, "test", 1).write_text("not hdf5 at all")
    inspect_error(small, shard(small, "test", 1), "not a readable HDF5 file", "distnet data prepare")


def test_missing_folder_split_and_shards(small, tmp_path):
    inspect_error(tmp_path / "nowhere", tmp_path / "nowhere", "not found", "distnet data prepare")
    for f in (small / "test").iterdir():
        f.unlink()
    inspect_error(small, small / "test", "no shards")
    shutil.rmtree(small / "test")
    inspect_error(small, small / "test", "split 'test' is missing")


def test_missing_x(small):
    rewrite(shard(small), x=None)
    inspect_error(small, shard(small), "missing dataset 'x'")


def test_x_y_length_mismatch(small):
    with h5py.File(shard(small)) as f:
        y = f["y"][:]
    rewrite(shard(small), y=y[:-5])
    inspect_error(small, shard(small), "x has 100 samples but y has 95")


def test_label_out_of_range(small):
    with h5py.File(shard(small, "test", 1)) as f:
        y = f["y"][:]
    y[-1] = 7
    rewrite(shard(small, "test", 1), y=y)
    inspect_error(small, shard(small, "test", 1), "label 7 out of range 0..1")


def test_bad_format_version(small):
    with h5py.File(shard(small), "r+") as f:
        f.attrs["format_version"] = 2
    inspect_error(small, shard(small), "unknown format_version 2", "upgrade distnet")


def test_wrong_dtypes(small):
    with h5py.File(shard(small)) as f:
        y = f["y"][:]
    rewrite(shard(small), y=y.astype(np.int32))
    inspect_error(small, shard(small), "y must be int64")
    rewrite(shard(small), y=y, x=np.zeros((100, 2), np.int16))
    inspect_error(small, shard(small), "x has dtype int16")


def test_shards_disagree(small):
    with h5py.File(shard(small, "train", 1), "r+") as f:
        f.attrs["class_names"] = '["a", "b", "c"]'
    inspect_error(small, shard(small, "train", 1), "disagrees with", "one preparation")


def test_extra_or_missing_shard(small):
    shard(small, "train", 1).rename(small / "train" / "part-00009-of-00010.h5")
    shutil.copy(shard(small), small / "train" / "part-00001-of-00002.h5")
    inspect_error(small, shard(small), "is shard 0 of 2 but the folder has 3 shards")


def test_checksum_mismatch_found_by_inspect_only(small):
    with h5py.File(shard(small, "test"), "r+") as f:
        f["x"][3, 1] += 1.0
    open_dataset(small)  # sizes are fine: opening does not hash
    inspect_error(small, shard(small, "test"), "checksum mismatch in x")
    assert run_distnet(["data", "inspect", small, "--no-verify"]).returncode == 0


def test_output_exists_without_force(small):
    result = run_distnet(["data", "prepare", "spirals", "--out", small])
    assert_user_error(result, small, "already holds a prepared dataset", "--force")
    assert run_distnet(["data", "prepare", "spirals", "--out", small, "--force", "--num-train", 100,
                        "--num-test", 50]).returncode == 0
    assert len(open_dataset(small)["train"]) == 100


def test_bad_idx_magic(tmp_path, rng):
    source = tmp_path / "src"
    make_idx_source(source, rng)
    bad = source / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"\x00\x00\x07\x01" + bad.read_bytes()[4:])
    result = run_distnet(["data", "prepare", "mnist", "--source", source, "--out", tmp_path / "o"])
    assert_user_error(result, bad, "not an IDX file")
    assert not (tmp_path / "o").exists()


def test_truncated_idx_and_bad_gzip(tmp_path, rng):
    x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(x)[:-10])
    with pytest.raises(DataError, match="IDX size mismatch") as e:
        read_idx(path)
    assert str(path) in str(e.value)
    path.write_bytes(gzip.compress(idx_bytes(x))[:-20])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(path)
    path.write_bytes(gzip.compress(idx_bytes(x)))
    np.testing.assert_array_equal(read_idx(path), x)


def test_images_labels_count_mismatch_and_missing_file(tmp_path, rng):
    source = tmp_path / "src"
    make_idx_source(source, rng)
    (source / "t10k-labels-idx1-ubyte").write_bytes(gzip.compress(idx_bytes(np.zeros(3, np.uint8))))
    result = run_distnet(["data", "prepare", "mnist", "--source", source, "--out", tmp_path / "o"])
    assert_user_error(result, "70 images but t10k-labels-idx1-ubyte has 3 labels")
    (source / "t10k-labels-idx1-ubyte").unlink()
    result = run_distnet(["data", "prepare", "mnist", "--source", source, "--out", tmp_path / "o"])
    assert_user_error(result, source / "t10k-labels-idx1-ubyte.gz", "not found", "--source")


def test_unknown_dataset_name(tmp_path):
    assert_user_error(run_distnet(["data", "prepare", "cifar", "--out", tmp_path / "o"]),
                      "unknown dataset 'cifar'", "distnet data list")
