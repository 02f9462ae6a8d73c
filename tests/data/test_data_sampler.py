"""Sampler contract: coverage, equal steps, rank-count independence, resume, and the evaluation partition."""

import numpy as np
import pytest

from distnet.data import Sampler, eval_partition
from distnet.errors import ConfigError, DataError

CASES = [(n, b, p) for n in (100, 1000, 1003) for b in (8, 32, 100) for p in (1, 2, 4)]


def samplers(n, b, p, seed=7, **kw):
    return [Sampler(n, b, r, p, seed=seed, **kw) for r in range(p)]


@pytest.mark.parametrize("n,b,p", CASES)
def test_epoch_coverage_equal_steps_and_rank_independence(n, b, p):
    ranks = samplers(n, b, p)
    reference = Sampler(n, b, 0, 1, seed=7)
    steps = {s.steps_per_epoch for s in ranks}
    assert steps == {n // b}
    for epoch in (0, 3):
        order = reference.global_order(epoch)
        assert sorted(order) == list(range(n))
        per_rank = [list(s.epoch_batches(epoch)) for s in ranks]
        assert all(len(batches) == n // b for batches in per_rank)
        for step in range(n // b):
            parts = [per_rank[r][step][1] for r in range(p)]
            assert all(len(part) == b // p for part in parts)
            np.testing.assert_array_equal(np.concatenate(parts), reference.batch_indices(epoch, step))
            np.testing.assert_array_equal(np.concatenate(parts), order[step * b:(step + 1) * b])
        seen = np.concatenate([idx for batches in per_rank for _, idx in batches])
        assert len(np.unique(seen)) == len(seen) == (n // b) * b
        np.testing.assert_array_equal(np.sort(seen), np.sort(order[:(n // b) * b]))


def test_each_epoch_has_a_different_order_and_the_seed_matters():
    s = Sampler(1000, 32, seed=1)
    orders = [s.global_order(e) for e in range(4)]
    assert all(not np.array_equal(orders[i], orders[j]) for i in range(4) for j in range(i + 1, 4))
    np.testing.assert_array_equal(Sampler(1000, 32, seed=1).global_order(2), orders[2])
    assert not np.array_equal(Sampler(1000, 32, seed=2).global_order(0), orders[0])


@pytest.mark.parametrize("p_before,p_after", [(2, 4), (4, 1), (1, 2)])
def test_resume_position_gives_the_same_remaining_batches_under_another_rank_count(p_before, p_after):
    n, b, epoch, step = 1003, 32, 2, 11
    before = samplers(n, b, p_before)
    state = before[0].state(epoch, step)
    after = samplers(n, b, p_after)
    resumed = [s.check_state(state) for s in after]
    assert resumed == [(epoch, step)] * p_after

    def remaining(group, start):
        runs = [list(s.epoch_batches(epoch, start)) for s in group]
        return [np.concatenate([run[i][1] for run in runs]) for i in range(len(runs[0]))]

    got, expected = remaining(after, step), remaining(before, step)
    assert len(got) == len(expected) == n // b - step
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    assert [s for s, _ in after[0].epoch_batches(epoch, step)] == list(range(step, n // b))


def test_resume_with_another_global_batch_is_refused():
    state = Sampler(1000, 32, seed=3).state(1, 5)
    with pytest.raises(ConfigError, match="global_batch=32 but this run has global_batch=64") as e:
        Sampler(1000, 64, seed=3).check_state(state)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_drop_last_false_adds_one_smaller_batch_split_like_eval():
    n, b, p = 1003, 32, 4
    ranks = samplers(n, b, p, drop_last=False)
    assert {s.steps_per_epoch for s in ranks} == {n // b + 1}
    last = [s.batch_indices(0, n // b) for s in ranks]
    assert sorted(len(x) for x in last) == [2, 3, 3, 3]
    everything = np.concatenate([idx for s in ranks for _, idx in s.epoch_batches(0)])
    assert sorted(everything) == list(range(n))


def test_global_batch_not_divisible_by_ranks_is_a_user_error():
    with pytest.raises(ConfigError) as e:
        Sampler(1000, 30, rank=0, world_size=4)
    assert e.value.exit_code == 2
    assert str(e.value) == ("global batch size 30 is not divisible by 4 ranks: choose a batch size that is a "
                            "multiple of 4")


def test_dataset_smaller_than_one_global_batch_is_a_user_error():
    with pytest.raises(DataError) as e:
        Sampler(50, 64)
    assert e.value.exit_code == 2
    assert str(e.value) == ("the dataset has 50 samples, fewer than one global batch of 64: use a batch size "
                            "of at most 50")


@pytest.mark.parametrize("n,p", [(10, 3), (1003, 4), (3, 4), (0, 2), (64, 1)])
def test_eval_partition_covers_each_sample_once(n, p):
    parts = [np.arange(n)[eval_partition(n, r, p)] for r in range(p)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(n))
    sizes = [len(x) for x in parts]
    assert max(sizes) - min(sizes) <= 1


BLOCKS = dict(order="blocks", block_size=16, block_window=4)


def test_the_default_order_is_unchanged():
    # the default is today's order bit for bit: a plain permutation from (seed, epoch)
    for kw in ({}, {"order": "random"}, {"order": "random", "block_size": 3, "block_window": 5}):
        np.testing.assert_array_equal(Sampler(1003, 32, seed=7, **kw).global_order(2),
                                      np.random.default_rng([7, 2]).permutation(1003))
    assert Sampler(1003, 32).state(0, 0)["order"] == "random"


def closed_segments(order, size):
    """The order cut wherever every block begun since the last cut is complete: the blocks of each piece."""
    n = len(order)
    lengths = np.minimum(size, n - np.arange(-(-n // size)) * size)
    pieces, piece, left = [], set(), {}
    for row in order.tolist():
        b = row // size
        left[b] = left.get(b, lengths[b]) - 1
        piece.add(b)
        if not left[b]:
            del left[b]
        if not left:
            pieces.append(piece)
            piece = set()
    return pieces


@pytest.mark.parametrize("n,size,window", [(1003, 16, 4), (1024, 16, 4), (1000, 7, 3), (100, 256, 16),
                                           (65, 8, 8), (64, 1, 1), (17, 1, 5), (300, 10, 1)])
def test_block_order_is_a_permutation_of_blocks_shuffled_within_windows(n, size, window):
    s = Sampler(n, 8, seed=3, order="blocks", block_size=size, block_window=window)
    for epoch in (0, 1):
        order = s.global_order(epoch)
        assert order.dtype == np.int64 and sorted(order) == list(range(n))  # every sample once per epoch
        # the order is whole blocks of consecutive rows, at most WINDOW of them mixed at a time
        pieces = closed_segments(order, size)
        assert max(len(p) for p in pieces) <= window
        if window > 1 and size > 1 and n > size:
            assert max(len(p) for p in pieces) > 1
        if window == 1:  # one block at a time, shuffled within
            assert all(len(p) == 1 for p in pieces) and len(pieces) == -(-n // size)
    assert not np.array_equal(s.global_order(0), s.global_order(1))


def test_block_order_reads_blocks_and_shuffles_within_windows():
    s = Sampler(4096, 128, seed=1, order="blocks", block_size=256, block_window=4)
    order = s.global_order(0)
    # a global batch comes from at most 2 windows = 8 blocks of the file
    assert max(len(np.unique(order[i:i + 128] // 256)) for i in range(0, 4096, 128)) <= 8
    assert not np.array_equal(order[:1024], np.sort(order[:1024]))  # shuffled within the window
    assert len(np.unique(order[:1024] // 256)) == 4  # ... and the window is 4 whole blocks


def test_block_order_depends_on_the_seed_epoch_and_settings_only():
    one = Sampler(1003, 32, seed=5, **BLOCKS)
    np.testing.assert_array_equal(one.global_order(3), Sampler(1003, 64, rank=1, world_size=4, seed=5,
                                                               **BLOCKS).global_order(3))
    assert not np.array_equal(one.global_order(3), Sampler(1003, 32, seed=6, **BLOCKS).global_order(3))
    assert not np.array_equal(one.global_order(3), Sampler(1003, 32, seed=5, order="blocks", block_size=16,
                                                           block_window=2).global_order(3))


@pytest.mark.parametrize("n,b,p", [(1003, 32, 4), (1000, 8, 2), (100, 100, 4)])
def test_block_order_batches_are_independent_of_the_rank_count(n, b, p):
    reference = Sampler(n, b, 0, 1, seed=2, **BLOCKS)
    ranks = samplers(n, b, p, seed=2, **BLOCKS)
    per_rank = [list(s.epoch_batches(1)) for s in ranks]
    for step in range(n // b):
        np.testing.assert_array_equal(np.concatenate([per_rank[r][step][1] for r in range(p)]),
                                      reference.batch_indices(1, step))


def test_block_order_resumes_on_the_same_batches_and_keeps_its_order_on_a_new_batch_size():
    n, b, epoch, step = 1003, 32, 2, 11
    before = samplers(n, b, 2, **BLOCKS)
    state = before[0].state(epoch, step)
    assert state["order"] == "blocks" and state["block_size"] == 16 and state["block_window"] == 4
    after = samplers(n, b, 4, **BLOCKS)
    assert [s.check_state(state) for s in after] == [(epoch, step)] * 4
    got = [np.concatenate([run[i][1] for run in [list(s.epoch_batches(epoch, step)) for s in after]])
           for i in range(n // b - step)]
    np.testing.assert_array_equal(np.concatenate(got), before[0].global_order(epoch)[step * b:(n // b) * b])
    grown = before[1].with_batch(64)
    assert (grown.order_options, grown.rank, grown.global_batch) == (before[1].order_options, 1, 64)
    np.testing.assert_array_equal(grown.global_order(epoch), before[1].global_order(epoch))


@pytest.mark.parametrize("saved,now", [({}, BLOCKS), (BLOCKS, {}),
                                       (BLOCKS, dict(BLOCKS, block_size=32)),
                                       (BLOCKS, dict(BLOCKS, block_window=8))])
def test_resume_with_another_order_is_refused(saved, now):
    state = Sampler(1000, 32, seed=3, **saved).state(1, 5)
    with pytest.raises(ConfigError, match="cannot resume: the saved position was written with --set "
                                          "data.order=") as e:
        Sampler(1000, 32, seed=3, **now).check_state(state)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    assert str(e.value).endswith(" ".join(f'--set data.{k}={v!r}'.replace("'", '"')
                                          for k, v in Sampler(1000, 32, **saved).order_state().items()))


def test_a_position_saved_before_orders_existed_still_resumes():
    state = Sampler(1000, 32, seed=3).state(1, 5)
    del state["order"]
    assert Sampler(1000, 32, seed=3).check_state(state) == (1, 5)


@pytest.mark.parametrize("kw,message", [({"order": "sorted"}, "data.order 'sorted' is not one of random, blocks"),
                                        ({"block_size": 0}, "data.block_size = 0: use a whole number >= 1"),
                                        ({"block_window": 1.5}, "data.block_window = 1.5: use a whole number")])
def test_bad_order_settings_are_user_errors(kw, message):
    with pytest.raises(ConfigError, match=message) as e:
        Sampler(1000, 32, **kw)
    assert e.value.exit_code == 2
