"""Sequential of layers that already own their arrays: built at once, keeping their values."""

import numpy as np
import pytest

from distnet.errors import ConfigError
from distnet.nn.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, ReLU, Sigmoid
from distnet.nn.model import Sequential


def lecture_layers():
    return [Dense(784, 16), Sigmoid(), Dense(16, 16), Sigmoid(), Dense(16, 10)]


def test_the_lecture_network_from_built_layers_works_at_once():
    layers = lecture_layers()
    before = [{k: p.copy() for k, p in layer.params.items()} for layer in layers]
    model = Sequential(layers)
    assert model.num_params == 13002 and model.params_flat.size == 13002
    assert model.shapes == [(784,), (16,), (16,), (16,), (16,), (10,)] and model.dtype == np.float32
    for layer, params in zip(layers, before):  # the same values, now views into the arena
        for name, p in params.items():
            np.testing.assert_array_equal(layer.params[name], p)
            assert np.shares_memory(layer.params[name], model.params_flat)
            assert np.shares_memory(layer.grads[name], model.grads_flat)
    x = np.random.default_rng(0).standard_normal((3, 784)).astype(np.float32)
    h = x
    for _, params in zip(layers, before):  # forward as the layers computed it before
        h = h @ params["W"] + params["b"] if params else 1 / (1 + np.exp(-h))
    np.testing.assert_allclose(model.forward(x), h, rtol=1e-5)
    model.backward(np.ones((3, 10), np.float32))
    assert np.abs(model.grads_flat).sum() > 0
    text = model.summary()
    for part in ["Dense(784, 16)", "Dense(16, 10)", "12,560", "272", "170", "13,002", "(10,)", "input (784,)"]:
        assert part in text


def test_shapes_after_the_first_known_layer_are_inferred_and_new_layers_initialized_from_the_seed():
    def make(seed=7):
        return Sequential([Dropout(0.2), ReLU(), Dense(5, 4), ReLU(), Dense(None, 3), BatchNorm()], seed=seed)
    model = make()
    assert model.shapes == [(5,), (5,), (5,), (4,), (4,), (3,), (3,)]
    assert model.num_params == 5 * 4 + 4 + 4 * 3 + 3 + 2 * 3
    np.testing.assert_array_equal(make().params_flat, model.params_flat)
    other = make(seed=8)
    np.testing.assert_array_equal(other.layers[2].params["W"], model.layers[2].params["W"])  # kept as built
    assert not np.array_equal(other.layers[4].params["W"], model.layers[4].params["W"])  # new: from the seed
    assert model.forward(np.ones((2, 5), np.float32)).shape == (2, 3)


def test_dtype_and_buffers_keep_their_values():
    dense, bn = Dense(3, 2, seed=4), BatchNorm(2)
    bn.params["gamma"][...] = [2, 3]
    bn.buffers["running_var"][...] = [5, 6]
    w = dense.params["W"].copy()
    model = Sequential([dense, bn, ReLU()], dtype=np.float64)
    assert model.dtype == np.float64 and dense.params["W"].dtype == np.float64
    np.testing.assert_array_equal(dense.params["W"], w.astype(np.float64))
    np.testing.assert_array_equal(bn.params["gamma"], [2, 3])
    np.testing.assert_array_equal(model.buffers["1.running_var"], [5, 6])
    assert Sequential([Dense(3, 2, dtype=np.float64)]).dtype == np.float64  # dtype of the layers by default


def test_a_given_input_shape_still_initializes_from_the_model_seed():
    a = Sequential(lecture_layers(), input_shape=(784,), seed=1)
    b = Sequential(lecture_layers(), input_shape=(784,), seed=2)
    assert a.num_params == 13002 and not np.array_equal(a.params_flat, b.params_flat)


def test_without_a_known_input_shape_the_model_waits_for_build():
    model = Sequential([Conv2D(1, 4, 3), ReLU(), Flatten(), Dense(None, 10)])
    assert model.params_flat is None and model.shapes is None
    assert "not known yet" in model.summary()
    model.build((1, 6, 6))
    assert model.num_params == 4 * 9 + 4 + 4 * 16 * 10 + 10
    model = Sequential([Flatten(), Dense(16, 3)])  # Flatten in front: the input shape cannot be inferred
    assert model.params_flat is None and model.num_params == 16 * 3 + 3
    model.build((1, 4, 4))
    assert model.params_flat.size == 51


def test_layers_that_do_not_fit_say_so_at_construction():
    with pytest.raises(ConfigError, match="Dense"):
        Sequential([Dense(4, 3), ReLU(), Dense(5, 2)])
