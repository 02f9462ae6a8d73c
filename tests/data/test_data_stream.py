"""The streaming source's read path: cached runs read at once, the others announced together and then read,
the same rows either way, and a file cut short while open is an error, not garbage."""

import os
import shutil

import h5py
import numpy as np
import pytest

from distnet.data import open_dataset
from distnet.data import sources as S
from distnet.data.prepare import prepare


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return prepare("shapes", tmp_path_factory.mktemp("s") / "shapes", num_train=900, num_test=100, shards=3)


def stored_x(split):
    xs = []
    for shard in split.shards:
        with h5py.File(shard.path) as f:
            xs.append(f["x"][:])
    return np.concatenate(xs)


def advice_log(monkeypatch):
    """Every posix_fadvise call the source makes: (advice, length)."""
    calls, real = [], os.posix_fadvise

    def spy(fd, offset, length, advice):
        calls.append((advice, length))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(S.os, "posix_fadvise", spy)
    return calls


# rows across all 3 shards, with runs of consecutive rows, repeats and any order
ROWS = np.array([899, 5, 6, 7, 300, 301, 0, 450, 451, 452, 453, 7, 612, 2, 599, 600, 898])


@pytest.mark.parametrize("nowait", [True, False])
def test_stream_gathers_the_stored_rows_whether_cached_or_announced(sharded, monkeypatch, nowait):
    split = open_dataset(sharded)["train"]
    x_all = stored_x(split)  # now in the page cache
    calls = advice_log(monkeypatch)
    source = S.StreamSource(split, 1 << 20)
    if not nowait:
        source.nowait = None  # as on a system without RWF_NOWAIT: every run is announced, then read
    out = np.zeros((len(ROWS), *split.input_shape), split.dtype)
    try:
        np.testing.assert_array_equal(source.gather(ROWS, out), x_all[ROWS])
    finally:
        source.close()
    assert [a for a, _ in calls].count(os.POSIX_FADV_RANDOM) == 3  # every shard opened without read-ahead
    announced = [n for a, n in calls if a == os.POSIX_FADV_WILLNEED]
    if nowait:
        assert announced == []  # all cached: nothing to announce
    else:  # one announcement per run of consecutive rows, of the run's bytes
        row = int(np.prod(split.input_shape))
        assert sorted(announced) == sorted(row * n for n in (1, 1, 3, 1, 2, 4, 1, 1, 1, 2))


def test_a_file_cut_short_after_opening_is_a_read_error(sharded, tmp_path):
    folder = shutil.copytree(sharded, tmp_path / "copy")
    split = open_dataset(folder)["train"]
    source = S.StreamSource(split, 1 << 20)
    out = np.zeros((2, *split.input_shape), split.dtype)
    try:
        source.gather(np.array([0, 1]), out)  # opens the first shard
        shard = split.shards[0]
        os.truncate(shard.path, shard.x_offset + 10 * int(np.prod(split.input_shape)))
        with pytest.raises(OSError, match="short read"):
            source.gather(np.array([3, 250]), out)
    finally:
        source.close()
