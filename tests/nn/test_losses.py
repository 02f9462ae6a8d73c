"""Losses: values, stability, finite-difference gradients, label checks, correct counts."""

import numpy as np
import pytest

from distnet.errors import ConfigError, DataError
from distnet.nn.layers.gradcheck import numeric_grad, rel_error
from distnet.nn.losses import MSE, BinaryCrossEntropy, SoftmaxCrossEntropy, accuracy, get


def grad_error(loss, output, target):
    loss.forward(output, target)
    analytic = loss.backward()
    return rel_error(analytic, numeric_grad(lambda: loss.forward(output, target), output))


def test_softmax_cross_entropy_gradient_and_value():
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((5, 4)) * 3, rng.integers(0, 4, 5)
    assert grad_error(SoftmaxCrossEntropy(), z, y) < 1e-6
    expected = np.mean([np.log(np.exp(row).sum()) - row[label] for row, label in zip(z, y)])
    assert SoftmaxCrossEntropy().forward(z, y) == pytest.approx(expected, rel=1e-12)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    loss = SoftmaxCrossEntropy()
    z = np.array([[1000.0, -1000.0, 0.0]] * 2, np.float32)
    assert loss.forward(z, np.array([0, 0])) == pytest.approx(0, abs=1e-6)
    assert loss.forward(z, np.array([1, 2])) == pytest.approx((2000 + 1000) / 2)
    g = loss.backward()
    assert np.isfinite(g).all() and g.dtype == np.float32
    np.testing.assert_allclose(g, [[0.5, -0.5, 0], [0.5, 0, -0.5]], atol=1e-6)


@pytest.mark.parametrize("labels,bad", [([0, 3], 3), ([-1, 0], -1), ([0, 7], 7)])
def test_out_of_range_labels_raise_a_data_error(labels, bad):
    with pytest.raises(DataError, match=rf"label {bad} .*3 classes"):
        SoftmaxCrossEntropy().forward(np.zeros((2, 3)), np.array(labels))


def test_mse_is_the_mean_over_all_elements():
    rng = np.random.default_rng(1)
    out, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    assert MSE().forward(out, t) == pytest.approx(np.mean((out - t) ** 2))
    assert grad_error(MSE(), out, t) < 1e-6


@pytest.mark.parametrize("from_logits", [True, False])
def test_binary_cross_entropy_gradient(from_logits):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((6, 1)) * 2
    out = z if from_logits else 1 / (1 + np.exp(-z))
    t = rng.integers(0, 2, (6, 1)).astype(float)
    assert grad_error(BinaryCrossEntropy(from_logits), out, t) < 1e-6


def test_binary_cross_entropy_logits_and_probabilities_agree_and_are_stable():
    z = np.array([[-3.0], [0.5], [2.0]])
    t = np.array([[0.0], [1.0], [1.0]])
    p = 1 / (1 + np.exp(-z))
    expected = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    assert BinaryCrossEntropy().forward(z, t) == pytest.approx(expected, rel=1e-12)
    assert BinaryCrossEntropy(from_logits=False).forward(p, t) == pytest.approx(expected, rel=1e-9)
    huge = BinaryCrossEntropy()
    assert huge.forward(np.array([[1000.0], [-1000.0]]), np.array([[0.0], [0.0]])) == pytest.approx(500)
    assert np.isfinite(huge.backward()).all()


def test_correct_counts():
    z = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0]])
    assert SoftmaxCrossEntropy().correct(z, np.array([0, 1, 1])) == 2
    assert accuracy(SoftmaxCrossEntropy(), z, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert BinaryCrossEntropy().correct(np.array([[-1.0], [2.0], [0.5]]), np.array([[0], [1], [0]])) == 2
    assert BinaryCrossEntropy(from_logits=False).correct(np.array([0.2, 0.9]), np.array([1, 1])) == 1
    assert MSE().correct(z, np.eye(2)[[0, 0, 0]]) == 2


def test_get_by_name():
    assert isinstance(get("cross_entropy"), SoftmaxCrossEntropy)
    assert get("bce", from_logits=False).from_logits is False
    with pytest.raises(ConfigError, match="mse"):
        get("hinge")
