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
