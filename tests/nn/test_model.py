"""Sequential's training shortcuts give the same parameter gradients as the full backward pass."""

import numpy as np

from distnet.nn.layers import Conv2D, Dense, Dropout, Flatten, ReLU
from distnet.nn.model import Sequential


def grads_of(model, x, dy):
    model.forward(x)
    dx = model.backward(dy)
    return dx, model.grads_flat.copy()


def test_skip_input_grad_stops_at_the_first_layer_with_parameters(rng):
    model = Sequential([Flatten(), Dropout(0.0), Dense(None, 16), ReLU(), Dense(None, 3)], input_shape=(2, 4, 4),
                       seed=1, dtype=np.float64)
    x = rng.standard_normal((5, 2, 4, 4))
    dy = rng.standard_normal((5, 3))
    dx_full, full = grads_of(model, x, dy)
    assert dx_full.shape == x.shape
    model.skip_input_grad()
    calls = []
    for layer in model.layers[:2]:  # Flatten and Dropout: nothing needs their backward any more
        layer.backward = lambda d, layer=layer: calls.append(layer)
    dx, skipped = grads_of(model, x, dy)
    assert dx is None and calls == []
    assert [layer.needs_dx for layer in model.layers] == [False, False, False, True, True]
    np.testing.assert_array_equal(skipped, full)


def test_skip_input_grad_on_a_conv_first_layer_and_undo(rng):
    model = Sequential([Conv2D(None, 4, 3, padding=1), ReLU(), Flatten(), Dense(None, 2)], input_shape=(1, 6, 6),
                       seed=2, dtype=np.float64)
    x, dy = rng.standard_normal((3, 1, 6, 6)), rng.standard_normal((3, 2))
    _, full = grads_of(model, x, dy)
    model.skip_input_grad()
    dx, skipped = grads_of(model, x, dy)
    assert dx is None
    np.testing.assert_allclose(skipped, full, rtol=1e-12, atol=1e-12)
    model.skip_input_grad(False)
    dx, _ = grads_of(model, x, dy)
    assert dx.shape == x.shape
