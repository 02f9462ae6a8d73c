"""The batch reader: identical batches in both modes, conversion, augmentation keyed by the global batch,
views and holdout, and a prefetch thread that never swallows errors or hangs."""

import threading
import time

import h5py
import numpy as np
import pytest

from distnet.data import Augment, BatchReader, Sampler, holdout, open_dataset
from distnet.data.augment import shift_flip
from distnet.data.prefetch import Prefetch
from distnet.data.prepare import prepare


def within(seconds, fn):
    """Run FN in a thread; fail (instead of hanging) if it has not returned after SECONDS."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"did not finish within {seconds} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture(scope="module")
def compressed_shapes(tmp_path_factory):
    return prepare("shapes", tmp_path_factory.mktemp("c") / "shapes", num_train=1200, num_test=300, shards=3,
                   compress=True)


def stored(split):
    """x and y of a split read with h5py directly (the oracle)."""
    xs, ys = [], []
    for shard in split.shards:
        with h5py.File(shard.path) as f:
            xs.append(f["x"][:])
            ys.append(f["y"][:])
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("fixture", ["shapes_data", "compressed_shapes"])
def test_memory_and_stream_modes_give_the_sampler_order_exactly(request, fixture):
    split = open_dataset(request.getfixturevalue(fixture))["train"]
    x_all, y_all = stored(split)
    sampler = Sampler(len(split), 64, rank=1, world_size=2, seed=5)
    results = {}
    for mode in ("memory", "stream"):
        with BatchReader(split, mode=mode, standardize=False, memory_budget_bytes=1 << 20) as reader:
            assert reader.mode == mode
            results[mode] = list(reader.epoch(sampler, epoch=1))
    assert len(results["memory"]) == sampler.steps_per_epoch
    for (_, idx), (xm, ym), (xs, ys) in zip(sampler.epoch_batches(1), results["memory"], results["stream"]):
        np.testing.assert_array_equal(ym, y_all[idx])
        np.testing.assert_array_equal(ys, y_all[idx])
        np.testing.assert_array_equal(xm, x_all[idx].astype(np.float32) / 255)
        np.testing.assert_array_equal(xs, xm)


def test_standardization_uses_the_training_statistics(shapes_data):
    ds = open_dataset(shapes_data)
    x_train = stored(ds["train"])[0].astype(np.float64) / 255
    mean, std = x_train.mean(), x_train.std()
    np.testing.assert_allclose(ds["test"].mean, [mean], rtol=1e-9)
    with BatchReader(ds["train"], mode="memory") as reader:
        x, _ = reader.batch(np.arange(len(ds["train"])))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, (x_train - mean) / std, atol=1e-5)
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-4
    with BatchReader(ds["test"], dtype=np.float64) as reader:
        x, _ = reader.batch(np.arange(5))
    np.testing.assert_allclose(x, (stored(ds["test"])[0][:5] / 255 - mean) / std, rtol=1e-12)


def test_float_data_passes_through(spirals_data):
    split = open_dataset(spirals_data)["train"]
    with BatchReader(split, standardize=False) as reader:
        x, y = reader.batch(np.array([5, 1, 3]))
    np.testing.assert_array_equal(x, stored(split)[0][[5, 1, 3]])


def test_auto_mode_follows_the_memory_budget(shapes_data):
    split = open_dataset(shapes_data)["train"]
    assert BatchReader(split, memory_budget_bytes=split.nbytes).mode == "memory"
    assert BatchReader(split, memory_budget_bytes=split.nbytes - 1).mode == "stream"


def fake_cgroups(tmp_path, version, levels):
    """A /proc/self/cgroup file and a cgroup tree under tmp_path; LEVELS: (limit, usage, cache, shmem) from the
    top group down to this process's own (limit None: no limit)."""
    root = tmp_path / "sys"
    names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_cache", "total_shmem") if version == 1 else \
        ("memory.max", "memory.current", "file", "shmem")
    base = root / "memory" if version == 1 else root
    base.mkdir(parents=True)
    if version == 2:
        (root / "cgroup.controllers").write_text("cpu memory\n")
    folder = base
    for i, (limit, usage, cache, shmem) in enumerate(levels):
        folder = folder / f"g{i}"
        folder.mkdir()
        unlimited = 9223372036854771712 if version == 1 else "max"
        (folder / names[0]).write_text(f"{unlimited if limit is None else limit}\n")
        (folder / names[1]).write_text(f"{usage}\n")
        (folder / "memory.stat").write_text(f"{names[2]} {cache}\n{names[3]} {shmem}\nother 5\n")
    path = "/" + "/".join(f"g{i}" for i in range(len(levels)))
    proc = tmp_path / "cgroup"
    proc.write_text(f"4:memory:{path}\n0::/\n" if version == 1 else f"0::{path}\n")
    return str(proc), str(root)


@pytest.mark.parametrize("version", [1, 2])
def test_the_memory_left_is_the_tightest_cgroup_limit_with_the_page_cache_counted_free(tmp_path, version):
    from distnet.data.reader import cgroup_room

    mib = 1 << 20
    # a job's group (limit 1,000 MiB, 600 used of which 300 page cache and 100 of that shared memory) holds this
    # process's step group (no limit): 1,000 - (600 - 300 + 100) = 600 MiB left
    proc, root = fake_cgroups(tmp_path, version, [(1000 * mib, 600 * mib, 300 * mib, 100 * mib),
                                                  (None, 50 * mib, 0, 0)])
    assert cgroup_room(proc, root) == 600 * mib
    # a tighter limit below it wins
    proc, root = fake_cgroups(tmp_path / "b", version, [(1000 * mib, 600 * mib, 300 * mib, 100 * mib),
                                                        (200 * mib, 150 * mib, 0, 0)])
    assert cgroup_room(proc, root) == 50 * mib
    # no limit anywhere, or no cgroup file system: the machine's figure stands
    proc, root = fake_cgroups(tmp_path / "c", version, [(None, 600 * mib, 0, 0)])
    assert cgroup_room(proc, root) is None
    assert cgroup_room(str(tmp_path / "missing"), root) is None


def test_auto_streams_a_split_that_fits_the_machine_but_not_the_jobs_memory_cgroup(request, tmp_path):
    """A real memory cgroup (v1, as on this kind of machine) limited to 256 MiB: inside it the reader's memory
    figure is the cgroup's room, and "auto" streams a 200 MB split the machine itself would hold in memory."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ..helpers import need_root, skip_here_fail_in_ci

    need_root(request, "a memory cgroup")
    own = [line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
           if line.split(":")[1] == "memory"]
    if not own or not Path("/sys/fs/cgroup/memory").is_dir():
        skip_here_fail_in_ci(request, "no cgroup v1 memory controller at /sys/fs/cgroup/memory",
                             "no cgroup v1 memory controller")
    group = Path("/sys/fs/cgroup/memory") / own[0].lstrip("/") / f"distnet-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(256 << 20))
        script = ("from distnet.data.reader import available_memory, choose_mode\n"
                  "class Split:\n    nbytes = 200 * 10**6\n"
                  "print(available_memory() >> 20, choose_mode(Split, 'auto', None))\n")

        def run(inside):
            enter = (lambda: (group / "cgroup.procs").write_text(str(os.getpid()))) if inside else None
            r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                               preexec_fn=enter)
            assert r.returncode == 0, r.stderr
            left, mode = r.stdout.split()
            return int(left), mode

        left, mode = run(inside=True)
        assert 0 < left <= 256 and mode == "stream", (left, mode)
        left, mode = run(inside=False)
        if left < 1024:
            pytest.fail(f"this test needs 1 GiB of free memory outside the cgroup ({left} MiB)")
        assert mode == "memory"
    finally:
        group.rmdir()


def test_stream_cache_stays_within_budget(compressed_shapes):
    split = open_dataset(compressed_shapes)["train"]
    budget = 600_000
    with BatchReader(split, mode="stream", memory_budget_bytes=budget) as reader:
        peak = 0
        for _ in reader.epoch(Sampler(len(split), 100, seed=0), 0):
            peak = max(peak, reader.source.cached)
        assert 0 < peak <= budget // 2


def test_subset_views_and_holdout(shapes_data):
    train = open_dataset(shapes_data)["train"]
    fit, val = holdout(train, 0.2, seed=3)
    assert len(fit) + len(val) == len(train) == 2000
    assert np.bincount(val.labels()).tolist() == [40] * 10
    both = np.concatenate([fit.indices, val.indices])
    assert sorted(both) == list(range(2000))
    again = holdout(train, 0.2, seed=3)[1]
    np.testing.assert_array_equal(again.indices, val.indices)
    assert not np.array_equal(holdout(train, 0.2, seed=4)[1].indices, val.indices)
    x_all, y_all = stored(train)
    inner = val.subset([7, 2, 2])
    with BatchReader(inner, mode="stream", standardize=False) as reader:
        x, y = reader.batch(np.arange(3))
    rows = val.indices[[7, 2, 2]]
    np.testing.assert_array_equal(y, y_all[rows])
    np.testing.assert_array_equal(x, x_all[rows] / np.float32(255))
    with BatchReader(val, mode="memory") as reader:
        assert len(list(reader.epoch(Sampler(len(val), 50, seed=1), 0))) == len(val) // 50


def test_shift_moves_pixels_and_flip_mirrors():
    x = np.zeros((3, 1, 5, 6), np.uint8)
    x[:, 0, 2, 1] = 200
    x[:, 0, 0, 5] = 100
    out = shift_flip(x, dy=np.array([0, 1, -1]), dx=np.array([1, 0, 0]), flip=np.array([False, False, True]),
                     max_shift=1)
    expected = np.zeros_like(x)
    expected[0, 0, 2, 2] = 200            # right by one; the pixel at column 5 leaves the image
    expected[1, 0, 3, 1] = 200            # down by one
    expected[1, 0, 1, 5] = 100
    expected[2, 0, 1, 4] = 200            # mirrored (column 1 -> 4), then up by one
    # the pixel at row 0 leaves the image when moved up
    np.testing.assert_array_equal(out, expected)
    flipped = shift_flip(x, np.zeros(3, int), np.zeros(3, int), np.ones(3, bool), 2)
    np.testing.assert_array_equal(flipped, x[..., ::-1])


def test_augmented_global_batch_is_the_same_for_one_and_two_ranks(shapes_data):
    split = open_dataset(shapes_data)["train"]
    aug = Augment(shift=2, flip=True, seed=9)

    def run(p):
        per_rank = []
        for r in range(p):
            with BatchReader(split, mode="memory", augment=aug) as reader:
                per_rank.append(list(reader.epoch(Sampler(len(split), 40, r, p, seed=4), 2, start_step=3)))
        return [np.concatenate([rank[i][0] for rank in per_rank]) for i in range(len(per_rank[0]))]

    one, two = run(1), run(2)
    assert len(one) == 2000 // 40 - 3
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    with BatchReader(split, mode="memory") as plain:
        x_plain = next(iter(plain.epoch(Sampler(len(split), 40, seed=4), 2, start_step=3)))[0]
    assert not np.array_equal(one[0], x_plain)
    dy, dx, flip = aug.params(2, 3, 40)
    assert set(dy) | set(dx) <= set(range(-2, 3)) and 0 < flip.sum() < 40
    np.testing.assert_array_equal(aug.params(2, 3, 40)[0], dy)
    assert not np.array_equal(aug.params(2, 4, 40)[0], dy)


def test_an_error_in_the_prefetch_thread_reaches_the_consumer(shapes_data):
    split = open_dataset(shapes_data)["train"]
    reader = BatchReader(split, mode="stream", prefetch=2)
    real, calls = reader.source.gather, []

    def flaky(rows, out):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk went away")
        return real(rows, out)

    reader.source.gather = flaky
    it = reader.batches([np.arange(i, i + 10) for i in range(0, 100, 10)])
    got = []

    def consume():
        for batch in it:
            got.append(batch)

    with pytest.raises(OSError, match="disk went away"):
        within(10, consume)
    assert len(got) == 2
    it.thread.join(5)
    assert not it.thread.is_alive()
    reader.close()


def test_closing_mid_epoch_does_not_hang(compressed_shapes):
    split = open_dataset(compressed_shapes)["train"]
    reader = BatchReader(split, mode="stream", prefetch=2)
    it = reader.epoch(Sampler(len(split), 20, seed=0), 0)
    within(10, lambda: [next(it) for _ in range(2)])
    time.sleep(0.2)  # let the thread fill the queue and block on it
    within(10, reader.close)
    assert not it.thread.is_alive()
    assert within(5, lambda: list(it)) == []


def test_prefetch_keeps_order_and_stops_a_slow_producer():
    def slow():
        for i in range(1000):
            time.sleep(0.01)
            yield i

    with Prefetch(iter(range(50)), depth=3) as p:
        assert list(p) == list(range(50))
    p = Prefetch(slow(), depth=2)
    assert [next(p), next(p)] == [0, 1]
    within(5, p.close)
    assert not p.thread.is_alive()


def test_memory_mode_copies_unless_every_local_rank_copy_would_exceed_the_budget(shapes_data, tmp_path):
    """In memory a contiguous shard is read into RAM (faster random gathers than a memory map) while the
    host's ranks' copies fit the budget, and mapped otherwise; both give the same batches."""
    from distnet.data.sources import DataError, _read_exact

    split = open_dataset(shapes_data)["train"]
    rows = np.random.default_rng(3).permutation(len(split))[:50]
    with BatchReader(split, mode="memory", memory_budget_bytes=4 * split.nbytes, local_ranks=2) as copied, \
            BatchReader(split, mode="memory", memory_budget_bytes=4 * split.nbytes, local_ranks=8) as mapped:
        assert not any(isinstance(a, np.memmap) for a in copied.source.arrays)
        assert all(isinstance(a, np.memmap) for a in mapped.source.arrays)
        for a, b in zip(copied.batch(rows), mapped.batch(rows)):
            np.testing.assert_array_equal(a, b)
    short = tmp_path / "short.bin"
    short.write_bytes(bytes(range(10)))
    np.testing.assert_array_equal(_read_exact(short, 2, np.empty(8, np.uint8)), np.arange(2, 10))
    with pytest.raises(DataError, match="short.bin: ends 3 bytes before"):
        _read_exact(short, 5, np.empty(8, np.uint8))
