"""Counter-based draws (distnet.nn.draws) and the Dropout masks made from them: statistics, keys, invariance."""

import numpy as np
import pytest

import distnet.nn.draws as draws_module
from distnet.nn.draws import GAMMA, M64, Draws, absorb, mix64
from distnet.nn.layers import Dense, Dropout, ReLU
from distnet.nn.layers.gradcheck import check_layer
from distnet.nn.model import Sequential


def reference(seed, epoch, path, index, j):
    """Element j of a sample's float64 draw from the definition, in plain Python integers."""
    key = absorb(absorb(0, seed), epoch)
    for i in path:
        key = absorb(key, i)
    return (mix64(absorb(key, index) + (j + 1) * GAMMA) >> 11) * 2.0 ** -53


def chi2(counts):
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


# -- the generator ---------------------------------------------------------------------------------------
def test_values_follow_the_definition_across_block_boundaries(monkeypatch):
    index = np.array([0, 1, 59999, 2 ** 40, -3])
    d = Draws(11, 2, index).layer(4)
    for chunk in (draws_module.CHUNK, 7):  # rows per block, then columns split into blocks
        monkeypatch.setattr(draws_module, "CHUNK", chunk)
        u = d.uniform((3, 5), np.float64)
        assert u.shape == (5, 3, 5)
        for s, j in [(0, 0), (1, 14), (2, 7), (3, 3), (4, 9)]:
            assert u[s].ravel()[j] == reference(11, 2, (4,), int(index[s]), j)
    big = Draws(5, 0, [3, 8]).uniform(2 * draws_module.CHUNK + 5, np.float64)  # a sample over several blocks
    for j in (0, draws_module.CHUNK, 2 * draws_module.CHUNK + 4):
        assert big[1, j] == reference(5, 0, (), 8, j)


def test_values_are_pinned():
    """Changing the hash changes every mask a resumed run draws: these values must never change."""
    u = Draws(0, 0, [0, 1, 123456]).layer(2).uniform(2, np.float64)
    assert [float(v).hex() for v in u.ravel()] == [
        float(reference(0, 0, (2,), i, j)).hex() for i in (0, 1, 123456) for j in (0, 1)]
    assert float(u[0, 0]).hex() == "0x1.ff3b990ae1b11p-1" and float(u[2, 1]).hex() == "0x1.258defdd75659p-1"


def test_float32_is_the_float64_draw_truncated_to_24_bits():
    d = Draws(3, 1, np.arange(100))
    u32, u64 = d.uniform(300, np.float32), d.uniform(300, "float64")
    assert u32.dtype == np.float32 and u64.dtype == np.float64
    np.testing.assert_array_equal(u32, np.floor(u64 * 2 ** 24) / 2 ** 24)
    assert u32.min() >= 0 and u32.max() < 1 and u64.max() < 1


def test_uniform_statistics():
    u = Draws(7, 3, np.arange(2000)).uniform(500, np.float64)  # 10^6 values
    n = u.size
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / n)
    assert 40 < chi2(np.bincount((u * 100).astype(int).ravel(), minlength=100)) < 99 + 6 * np.sqrt(2 * 99)
    bits = (Draws(7, 3, np.arange(2000)).uniform(500) * 2 ** 24).astype(np.int64).ravel()
    ones = ((bits[:, None] >> np.arange(24)) & 1).mean(axis=0)  # every one of the 24 bits is a fair coin
    assert np.abs(ones - 0.5).max() < 5 * 0.5 / np.sqrt(n)


def _independent(a, b):
    """a, b (equal shapes, uniform): correlation near 0 and their joint 10x10 histogram uniform."""
    a, b = a.ravel(), b.ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(a.size)
    cells = np.bincount((a * 10).astype(int) * 10 + (b * 10).astype(int), minlength=100)
    assert chi2(cells) < 99 + 6 * np.sqrt(2 * 99)


def test_independence_between_neighbouring_samples_elements_layers_and_epochs():
    d = Draws(1, 0, np.arange(1001))
    u = d.uniform(400, np.float64)
    _independent(u[:-1], u[1:])  # samples with consecutive indices
    _independent(u[:, :-1], u[:, 1:])  # neighbouring elements of a sample
    _independent(u, d.layer(0).uniform(400, np.float64))
    _independent(d.layer(0).uniform(400, np.float64), d.layer(1).uniform(400, np.float64))
    _independent(u, Draws(1, 1, np.arange(1001)).uniform(400, np.float64))
    _independent(u, Draws(2, 0, np.arange(1001)).uniform(400, np.float64))


def test_rows_depend_only_on_their_own_index():
    index = np.array([5, 17, 2, 40000, 9, 3])
    whole = Draws(4, 2, index).layer(1).uniform((2, 3, 3))
    for part in (index[:2], index[2:], index[::-1], index[[4]]):
        rows = [list(index).index(i) for i in part]
        np.testing.assert_array_equal(Draws(4, 2, part).layer(1).uniform((2, 3, 3)), whole[rows])


def test_bad_arguments():
    with pytest.raises(ValueError, match="1-D integer"):
        Draws(0, 0, np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="1-D integer"):
        Draws(0, 0, np.array([0.5]))
    with pytest.raises(ValueError, match="float16"):
        Draws(0, 0, [1]).uniform(3, np.float16)
    assert Draws(0, 0, []).uniform((2, 2)).shape == (0, 2, 2)
    assert Draws(0, 0, [1, 2]).uniform(()).shape == (2,)
    assert absorb(0, -1) == absorb(0, M64)


# -- Dropout with draws ----------------------------------------------------------------------------------
def masks(model, x, draws):
    model.reseed(draws)
    return model.forward(x)


def test_a_batch_split_over_ranks_gets_the_whole_batch_masks():
    model = Sequential([Dropout(0.5), ReLU(), Dropout(0.3)], input_shape=(3, 4, 4))
    index = np.array([812, 3, 44, 9, 1000, 27, 5])
    x = np.ones((7, 3, 4, 4), np.float32)
    whole = masks(model, x, Draws(9, 2, index))
    halves = [masks(model, x[:3], Draws(9, 2, index[:3])), masks(model, x[3:], Draws(9, 2, index[3:]))]
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    np.testing.assert_array_equal(masks(model, x[:1], Draws(9, 2, index[4:5])), whole[4:5])
    assert 0.4 < (whole == 0).mean() < 0.8  # 1 - 0.5 * 0.7 = 0.65 dropped


def test_masks_are_keyed_by_seed_epoch_index_and_layer():
    layer = Dropout(0.5)
    x = np.ones((4, 50), np.float32)
    index = np.arange(10, 14)
    base = Draws(1, 3, index)
    a = masks(layer, x, base.layer(2))
    np.testing.assert_array_equal(a, masks(layer, x, Draws(1, 3, index).layer(2)))
    for other in (Draws(1, 4, index).layer(2), base.layer(1), Draws(2, 3, index).layer(2),
                  Draws(1, 3, index + 1).layer(2)):
        assert (masks(layer, x, other) != a).mean() > 0.3


def test_sequential_gives_each_layer_its_own_draws():
    inner = Sequential([ReLU(), Dropout(0.5)])
    model = Sequential([Dropout(0.5), ReLU(), inner], input_shape=(6,))
    model.reseed(Draws(0, 0, [1, 2]))
    assert model.layers[0].draws.path == (0,) and inner.layers[1].draws.path == (2, 1)
    x = np.ones((2, 6), np.float32)
    model.reseed(None)  # back to the layers' own generators
    assert model.layers[0].draws is None
    assert model.forward(x).shape == (2, 6)


def test_dropout_alone_draws_from_its_own_generator_as_before():
    layer = Dropout(0.25, seed=5)
    x = np.ones((20, 30), np.float32)
    expected = (np.random.default_rng(5).random(x.shape, dtype=np.float32) >= 0.25) / np.float32(0.75)
    np.testing.assert_array_equal(layer.forward(x), expected)
    layer.reseed(Draws(0, 0, np.arange(20)))
    layer.reseed(np.random.default_rng(5))  # a generator unbinds the draws
    np.testing.assert_array_equal(layer.forward(x), expected)


def test_dropout_refuses_draws_for_another_batch_size():
    layer = Dropout(0.5)
    layer.reseed(Draws(0, 0, np.arange(5)))
    with pytest.raises(ValueError, match="3 samples.*5 sample indices"):
        layer.forward(np.ones((3, 4)))
    np.testing.assert_array_equal(layer.forward(np.ones((3, 4)), training=False), 1)  # evaluation draws nothing


def test_dropout_gradient_with_fixed_draws_in_float64():
    layer = Dropout(0.4)
    layer.build((4, 5), np.float64)
    layer.reseed(Draws(3, 1, [7, 8, 100]).layer(0))
    x = np.random.default_rng(0).standard_normal((3, 4, 5))
    y = layer.forward(x)
    assert y.dtype == np.float64 and layer._mask.dtype == np.float64
    check_layer(layer, x)


def test_a_model_with_dropout_trains_the_same_on_split_batches():
    """Parameter gradients of a model with dropout: two half batches (two ranks) sum to the whole batch's."""
    def model():
        return Sequential([Dense(6, 8), ReLU(), Dropout(0.5), Dense(8, 3)], input_shape=(6,), dtype=np.float64,
                          seed=4)
    rng = np.random.default_rng(0)
    x, dy, index = rng.standard_normal((10, 6)), rng.standard_normal((10, 3)), rng.permutation(1000)[:10]
    whole = model()
    whole.reseed(Draws(1, 0, index))
    whole.forward(x)
    whole.backward(dy)
    total = 0
    for part in (slice(0, 4), slice(4, 10)):
        replica = model()
        replica.reseed(Draws(1, 0, index[part]))
        replica.forward(x[part])
        replica.backward(dy[part])
        total = total + replica.grads_flat
    np.testing.assert_allclose(total, whole.grads_flat, rtol=1e-12, atol=1e-12)
