"""The image presets of issue 14: LeNet-5's shape, and fashion-cnn-small under 100k parameters."""

import numpy as np

from distnet import build
from distnet import config as C
from distnet.nn.layers import AvgPool2D, Conv2D, Dense, Tanh


def shapes(model, input_shape):
    """(layer, output shape per sample) for each layer of MODEL."""
    x = np.zeros((1, *input_shape), model.dtype)
    out = []
    for layer in model.layers:
        x = layer.forward(x, training=False)
        out.append((layer, x.shape[1:]))
    return out


def test_lenet5_has_lenets_shape_with_scaled_tanh_and_average_pooling():
    model = build.model(C.load("lenet5"), (1, 28, 28))
    trace = [(type(layer).__name__, shape) for layer, shape in shapes(model, (1, 28, 28))]
    assert [t for t in trace if t[0] != "Tanh"] == [
        ("Conv2D", (6, 28, 28)), ("AvgPool2D", (6, 14, 14)), ("Conv2D", (16, 10, 10)), ("AvgPool2D", (16, 5, 5)),
        ("Flatten", (400,)), ("Dense", (120,)), ("Dense", (84,)), ("Dense", (10,))]
    tanhs = [layer for layer in model.layers if isinstance(layer, Tanh)]
    assert len(tanhs) == 4 and all(t.lecun for t in tanhs)
    x = np.array([[0.5, -2.0]])
    np.testing.assert_allclose(tanhs[0].forward(x), 1.7159 * np.tanh(2 * x / 3), rtol=1e-6)
    assert [layer.kernel_size for layer in model.layers if isinstance(layer, (Conv2D, AvgPool2D))] == [
        (5, 5), (2, 2), (5, 5), (2, 2)]
    assert model.num_params == 61706 and sum(isinstance(layer, Dense) for layer in model.layers) == 3


def test_fashion_cnn_small_is_under_100k_parameters_and_fashion_cnn_has_dropout():
    assert build.model(C.load("fashion-cnn-small"), (1, 28, 28)).num_params < 100_000
    assert "dropout" in [spec["type"] for spec in C.load("fashion-cnn")["model"]["layers"]]
