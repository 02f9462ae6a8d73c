"""Every layer's backward against finite differences, in float64, w.r.t. its input and each parameter."""

import numpy as np
import pytest

from distnet.nn.layers import (
    ELU,
    SELU,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    ConvTranspose2D,
    Dense,
    Dropout,
    Flatten,
    L2Pool2D,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
)
from distnet.nn.layers.gradcheck import check_layer

F64 = np.float64


def built(layer, shape, seed=0):
    """The layer built in float64 for per-sample ``shape``, with random (not default) parameters."""
    layer.build(shape, F64, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape)
    return layer


def randn(*shape, seed=7):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("bias", [True, False])
def test_dense(bias):
    check_layer(built(Dense(5, 4, bias=bias), (5,)), randn(3, 5))


CONVS = [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=4, padding="same"),  # even kernel: asymmetric padding
    dict(kernel_size=4, stride=2, padding="same"),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0)),
    dict(kernel_size=(3, 2), padding="valid"),
    dict(kernel_size=1),
]


@pytest.mark.parametrize("per_sample", [False, True], ids=["one-gemm", "per-sample-gemm"])
@pytest.mark.parametrize("cfg", CONVS, ids=str)
def test_conv2d(cfg, per_sample):
    layer = built(Conv2D(2, 3, **cfg), (2, 7, 6))
    layer.method, layer.PER_SAMPLE_GEMM = "im2col", 0 if per_sample else 10**9
    check_layer(layer, randn(2, 2, 7, 6))


@pytest.mark.parametrize("cfg", [c for c in CONVS if c.get("stride", 1) == 1] + [
    dict(kernel_size=3, padding=3), dict(kernel_size=7, padding=3)], ids=str)  # frames smaller than the kernel
def test_conv2d_spectral(cfg):
    layer = built(Conv2D(2, 3, **cfg), (2, 7, 6))
    layer.method = "spectral"
    check_layer(layer, randn(2, 2, 7, 6))
    assert layer._cache[0] == "spectral"


def test_conv2d_without_bias_and_inferred_channels():
    layer = built(Conv2D(None, 2, 3, padding=1, bias=False), (3, 5, 5))
    assert layer.in_channels == 3 and "b" not in layer.params
    check_layer(layer, randn(2, 3, 5, 5))


def test_conv2d_skips_input_grad_when_not_needed():
    layer = built(Conv2D(2, 3, 3), (2, 5, 5))
    x = randn(2, 2, 5, 5)
    layer.forward(x)
    full = layer.backward(randn(2, 3, 3, 3))
    w_grad = layer.grads["W"].copy()
    layer.needs_dx = False
    layer.forward(x)
    assert full is not None and layer.backward(randn(2, 3, 3, 3)) is None
    np.testing.assert_allclose(layer.grads["W"], w_grad)


CONVTS = [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=4, stride=2, padding=1),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(0, 1)),
]


@pytest.mark.parametrize("cfg", CONVTS, ids=str)
def test_conv_transpose2d(cfg):
    check_layer(built(ConvTranspose2D(3, 2, **cfg), (3, 4, 5)), randn(2, 3, 4, 5))


@pytest.mark.parametrize("layer", [MaxPool2D(2), MaxPool2D(3, stride=2), MaxPool2D((2, 3), stride=1),
                                   AvgPool2D(2), AvgPool2D(3, stride=2), AvgPool2D(2, stride=1),
                                   L2Pool2D(2), L2Pool2D(3, stride=2), L2Pool2D((2, 3), stride=1)], ids=repr)
def test_pooling(layer):
    check_layer(built(layer, (2, 7, 6)), randn(2, 2, 7, 6))


L2POOLS = [dict(kernel_size=2), dict(kernel_size=3, stride=2), dict(kernel_size=(2, 3), stride=1)]


@pytest.mark.parametrize("cfg", L2POOLS, ids=str)
def test_l2_pooling_matches_pytorch_lp_pool2d_or_the_definition(cfg):
    """Against torch.nn.functional.lp_pool2d(x, 2, k, s) (value and gradient) when PyTorch is installed; else
    against sqrt(sum of squares) per window written out directly. Finite differences: test_pooling."""
    x, dy = randn(2, 3, 7, 6), randn(2, 3, *L2Pool2D(**cfg).out_hw((7, 6)), seed=8)
    layer = built(L2Pool2D(**cfg), (3, 7, 6))
    y, dx = layer.forward(x), layer.backward(dy)
    try:
        import torch
    except ImportError:
        (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
        ref = np.array([[[[np.sqrt(np.sum(x[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw] ** 2))
                           for j in range(y.shape[3])] for i in range(y.shape[2])] for c in range(3)]
                        for n in range(2)])
        np.testing.assert_allclose(y, ref, rtol=1e-12)
        return
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.lp_pool2d(xt, 2, cfg["kernel_size"], cfg.get("stride"))
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-8, atol=1e-12)


def test_l2_pooling_gradient_of_an_all_zero_window_is_zero():
    layer = built(L2Pool2D(2), (1, 4, 4))
    x = randn(1, 1, 4, 4)
    x[:, :, :2, :2] = 0
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert y[0, 0, 0, 0] == 0 and np.all(np.isfinite(dx)) and np.all(dx[:, :, :2, :2] == 0)
    np.testing.assert_allclose(dx[:, :, 2:, 2:], x[:, :, 2:, 2:] / y[:, :, 1:, 1:].repeat(2, 2).repeat(2, 3))


def test_flatten():
    check_layer(built(Flatten(), (2, 3, 4)), randn(2, 2, 3, 4))


def test_dropout_with_fixed_mask():
    layer = built(Dropout(0.4), (20,))
    check_layer(layer, randn(5, 20), prepare=lambda: layer.reseed(np.random.default_rng(3)))


@pytest.mark.parametrize("shape", [(4,), (3, 4, 5)], ids=["1d", "2d"])
def test_batchnorm_training(shape):
    layer = built(BatchNorm(), shape)
    check_layer(layer, randn(6, *shape) * 3 + 1)


def test_batchnorm_evaluation_mode_gradient():
    layer = built(BatchNorm(), (3, 2, 2))
    layer.buffers["running_mean"][...] = [0.5, -1, 2]
    layer.buffers["running_var"][...] = [2, 0.5, 1]
    x, r = randn(4, 3, 2, 2), randn(4, 3, 2, 2, seed=9)
    layer.forward(x, training=False)
    dx = layer.backward(r)
    numeric = [(np.sum(layer.forward(x + d, training=False) * r) - np.sum(layer.forward(x - d, training=False) * r))
               / 2e-6 for d in np.eye(x.size).reshape(x.size, *x.shape) * 1e-6]
    np.testing.assert_allclose(dx.ravel(), numeric, rtol=1e-6, atol=1e-8)


ACTIVATIONS = [ReLU(), LeakyReLU(0.1), Sigmoid(), Tanh(), Tanh(lecun=True), Softplus(), ELU(), ELU(0.5), SELU(),
               Softmax()]


@pytest.mark.parametrize("layer", ACTIVATIONS, ids=repr)
def test_activation(layer):
    check_layer(built(layer, (5,)), randn(4, 5) * 2)


@pytest.mark.parametrize("layer", ACTIVATIONS, ids=repr)
def test_activation_on_images(layer):
    check_layer(built(layer, (2, 3, 3)), randn(2, 2, 3, 3))
