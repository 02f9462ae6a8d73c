"""Small MLPs learn XOR and two spirals with plain full-batch gradient descent (written inline here)."""

import numpy as np

from distnet.nn.layers import Dense, ReLU, Tanh
from distnet.nn.losses import SoftmaxCrossEntropy
from distnet.nn.model import Sequential


def train(model, x, y, lr, steps):
    """Full-batch gradient descent on the flat arena; returns the final training accuracy."""
    loss = SoftmaxCrossEntropy()
    for _ in range(steps):
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        model.params_flat -= lr * model.grads_flat
    return loss.correct(model.forward(x, training=False), y) / len(y)


def two_spirals(n, rng):
    """Two interleaved spirals, n points each, with a little noise."""
    t = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi)
    x = np.concatenate([arm, -arm]) + rng.normal(0, 0.01, (2 * n, 2))
    return x.astype(np.float32), np.repeat([0, 1], n)


def test_xor():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([0, 1, 1, 0])
    model = Sequential([Dense(2, 8), Tanh(), Dense(8, 2)], input_shape=(2,), seed=0)
    assert train(model, x, y, lr=0.5, steps=500) == 1.0


def test_two_spirals():
    x, y = two_spirals(100, np.random.default_rng(0))
    model = Sequential([Dense(2, 64), ReLU(), Dense(64, 64), ReLU(), Dense(64, 2)], input_shape=(2,), seed=0)
    assert train(model, x, y, lr=0.2, steps=3000) >= 0.99
