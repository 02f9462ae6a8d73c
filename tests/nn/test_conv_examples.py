"""Convolution and pooling against hand-worked examples, a direct reference, and the adjoint identity."""

import numpy as np
import pytest

from distnet.nn.layers import AvgPool2D, Conv2D, ConvTranspose2D, MaxPool2D


def reference_conv2d(x, w, b, stride, pads):
    """Direct cross-correlation, one output pixel at a time (test-only, slow)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + pads[0] + pads[1], wd + pads[2] + pads[3]))
    xp[:, :, pads[0]:pads[0] + h, pads[2]:pads[2] + wd] = x
    ho, wo = (xp.shape[2] - kh) // stride[0] + 1, (xp.shape[3] - kw) // stride[1] + 1
    y = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            y[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return y


def test_lecture_max_pooling_example():
    x = np.array([[12, 20, 30, 0], [8, 12, 2, 0], [34, 70, 37, 4], [112, 100, 25, 12]], np.float32)
    y = MaxPool2D(2).forward(x[None, None])
    np.testing.assert_array_equal(y[0, 0], [[20, 30], [112, 37]])


def test_lecture_transposed_convolution_example():
    layer = ConvTranspose2D(1, 1, 3, stride=2, bias=False, dtype=np.float64)
    layer.params["W"][0, 0] = [[1, 1, 1], [1, 2, 1], [1, 1, 1]]
    y = layer.forward(np.array([[[[4, 3], [2, 0]]]], np.float64))
    expected = [[4, 4, 7, 3, 3], [4, 8, 7, 6, 3], [6, 6, 9, 3, 3], [2, 4, 2, 0, 0], [2, 2, 2, 0, 0]]
    np.testing.assert_array_equal(y[0, 0], expected)


def test_hand_computed_conv2d():
    x = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
    layer = Conv2D(1, 1, 2, dtype=np.float64)
    layer.params["W"][0, 0] = [[1, 2], [3, 4]]
    layer.params["b"][...] = 1
    np.testing.assert_array_equal(layer.forward(x)[0, 0], [[38, 48], [68, 78]])
    ones = Conv2D(1, 1, 3, padding="same", bias=False, dtype=np.float64)
    ones.params["W"][...] = 1
    np.testing.assert_array_equal(ones.forward(x)[0, 0], [[12, 21, 16], [27, 45, 33], [24, 39, 28]])


def test_hand_computed_average_pooling():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(AvgPool2D(2).forward(x)[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_array_equal(MaxPool2D(3, stride=1).forward(x)[0, 0], [[10, 11], [14, 15]])


@pytest.mark.parametrize("kernel,stride,padding,pads", [
    (3, 1, 0, (0, 0, 0, 0)), (5, 1, "same", (2, 2, 2, 2)), (4, 1, "same", (1, 2, 1, 2)),
    (3, 2, "same", (1, 1, 0, 1)), ((2, 3), (2, 1), 1, (1, 1, 1, 1)), (3, 3, "valid", (0, 0, 0, 0))])
def test_conv2d_matches_direct_reference(kernel, stride, padding, pads):
    rng = np.random.default_rng(0)
    layer = Conv2D(3, 4, kernel, stride=stride, padding=padding, dtype=np.float64, seed=1)
    layer.params["b"][...] = rng.standard_normal(4)
    x = rng.standard_normal((2, 3, 9, 8))
    expected = reference_conv2d(x, layer.params["W"], layer.params["b"], layer.stride, pads)
    layer.method = "im2col"
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-10, atol=1e-12)  # CHWN buffers
    np.testing.assert_allclose(layer.forward(x, training=False), expected, rtol=1e-10, atol=1e-12)  # CNHW
    layer.PER_SAMPLE_GEMM = 0
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-10, atol=1e-12)  # NCHW


@pytest.mark.parametrize("kernel,padding,pads", [
    (3, 0, (0, 0, 0, 0)), (5, "same", (2, 2, 2, 2)), (4, "same", (1, 2, 1, 2)), ((2, 3), 1, (1, 1, 1, 1)),
    (3, 4, (4, 4, 4, 4)), (9, (4, 1), (4, 4, 1, 1))])
def test_spectral_conv2d_matches_direct_reference(kernel, padding, pads):
    rng = np.random.default_rng(0)
    layer = Conv2D(3, 4, kernel, padding=padding, dtype=np.float64, seed=1)
    layer.method = "spectral"
    layer.params["b"][...] = rng.standard_normal(4)
    x = rng.standard_normal((2, 3, 9, 8))
    expected = reference_conv2d(x, layer.params["W"], layer.params["b"], (1, 1), pads)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_spectral_and_im2col_agree_on_the_reference_cnn_conv(dtype, tol):
    """The reference CNN's 32->64 5x5 convolution runs spectral by default; both paths give the same numbers."""
    rng = np.random.default_rng(3)
    layers = [Conv2D(32, 64, 5, padding="same", dtype=dtype, seed=4) for _ in range(2)]
    layers[1].method = "im2col"
    x = rng.standard_normal((5, 32, 14, 14)).astype(dtype)
    dy = rng.standard_normal((5, 64, 14, 14)).astype(dtype)
    for layer in layers:
        layer.params["b"][...] = np.arange(64) / 64
    (y, y_ref), (dx, dx_ref) = [layer.forward(x) for layer in layers], [layer.backward(dy) for layer in layers]
    assert layers[0]._cache[0] == "spectral" and y.dtype == dx.dtype == layers[0].grads["W"].dtype == dtype
    scale = lambda a: tol * np.abs(a).max()  # noqa: E731
    np.testing.assert_allclose(y, y_ref, atol=scale(y_ref))
    np.testing.assert_allclose(dx, dx_ref, atol=scale(dx_ref))
    for name in ("W", "b"):
        g, g_ref = layers[0].grads[name], layers[1].grads[name]
        np.testing.assert_allclose(g, g_ref, atol=scale(g_ref))
    assert Conv2D(1, 32, 5, padding="same").spectrum((28, 28), (2, 2, 2, 2)) is None  # one input channel: im2col


@pytest.mark.parametrize("n", [9, 10])
def test_same_padding_output_is_ceil_of_input_over_stride(n):
    for stride in (1, 2, 3):
        for k in (2, 3, 4, 5):
            layer = Conv2D(1, 1, k, stride=stride, padding="same")
            assert layer.forward(np.zeros((1, 1, n, n))).shape[2:] == (-(-n // stride),) * 2
            assert layer.build((1, n, n)) == (1, -(-n // stride), -(-n // stride))


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 0), (3, 2, 1), (4, 2, 1), ((2, 3), (2, 1), (0, 1))])
def test_conv_transpose_is_the_adjoint_of_conv(kernel, stride, padding):
    rng = np.random.default_rng(5)
    convt = ConvTranspose2D(4, 3, kernel, stride=stride, padding=padding, bias=False, dtype=np.float64, seed=2)
    conv = Conv2D(3, 4, kernel, stride=stride, padding=padding, bias=False, dtype=np.float64)
    conv.params["W"][...] = convt.params["W"]  # both (4, 3, kh, kw)
    y = rng.standard_normal((2, 4, 5, 4))
    ty = convt.forward(y)
    x = rng.standard_normal(ty.shape)
    cx = conv.forward(x)
    assert cx.shape == y.shape
    np.testing.assert_allclose(np.vdot(cx, y), np.vdot(x, ty), rtol=1e-12)


def test_conv_transpose_output_size():
    for n, k, s, p in [(4, 3, 2, 1), (7, 4, 2, 1), (5, 3, 1, 0), (3, 5, 3, 2)]:
        layer = ConvTranspose2D(2, 3, k, stride=s, padding=p)
        m = (n - 1) * s - 2 * p + k
        assert layer.forward(np.zeros((1, 2, n, n), np.float32)).shape == (1, 3, m, m)


def test_max_pool_gradient_goes_to_the_maximum_only():
    x = np.array([[[[1, 5], [3, 2]]]], np.float64)
    pool = MaxPool2D(2)
    pool.forward(x)
    np.testing.assert_array_equal(pool.backward(np.array([[[[7.0]]]])), [[[[0, 7], [0, 0]]]])


def test_pooling_crops_an_odd_border():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7))
    y = MaxPool2D(2).forward(x)
    assert y.shape == (2, 3, 2, 3)
    np.testing.assert_array_equal(y, x[:, :, :4, :6].reshape(2, 3, 2, 2, 3, 2).max(axis=(3, 5)))


def test_conv2d_alternating_training_and_evaluation_layouts():
    """Training and evaluation use different buffer layouts, of equal shapes when N = H + 2p = W + 2p."""
    rng = np.random.default_rng(1)
    layer = Conv2D(1, 2, 3, padding=1, dtype=np.float64, seed=0)
    x = rng.standard_normal((6, 1, 4, 4))
    expected = reference_conv2d(x, layer.params["W"], layer.params["b"], (1, 1), (1, 1, 1, 1))
    for training in (False, True, False):
        np.testing.assert_allclose(layer.forward(x, training=training), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3])
def test_max_pool_ties_route_to_the_first_maximum(k):
    """After a ReLU whole windows tie at 0; the gradient goes to the first one (np.argmax's choice)."""
    rng = np.random.default_rng(2)
    x = np.maximum(rng.integers(-3, 3, (2, 3, 2 * k, 3 * k)), 0).astype(np.float32)
    pool = MaxPool2D(k)
    y = pool.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    windows = x.reshape(2, 3, 2, k, 3, k).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 2, 3, k * k)
    onehot = np.arange(k * k) == windows.argmax(axis=-1)[..., None]
    expected = (onehot * dy[..., None]).reshape(2, 3, 2, 3, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(x.shape)
    np.testing.assert_array_equal(y, windows.max(axis=-1))
    np.testing.assert_array_equal(pool.backward(dy), expected)
