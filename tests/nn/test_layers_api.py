"""Layer behaviour beyond gradients: conventions, dtypes, shape inference, Sequential integration."""

import numpy as np
import pytest

from distnet.errors import ConfigError
from distnet.nn.layers import (
    ELU,
    LAYERS,
    SELU,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    ConvTranspose2D,
    Dense,
    Dropout,
    Flatten,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
)
from distnet.nn.layers.gradcheck import numeric_grad, rel_error
from distnet.nn.losses import SoftmaxCrossEntropy
from distnet.nn.model import Sequential


def test_relu_derivative_at_zero_is_one():
    relu = ReLU()
    relu.forward(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(relu.backward(np.ones(3)), [0, 1, 1])


def test_selu_constants_and_values():
    assert SELU.LAMBDA == pytest.approx(1.0507009873554805, abs=1e-15)
    assert SELU.ALPHA == pytest.approx(1.6732632423543772, abs=1e-15)
    y = SELU().forward(np.array([1.0, -1.0, -50.0]))
    np.testing.assert_allclose(y, [1.0507009873554805, 1.0507009873554805 * 1.6732632423543772 * (np.exp(-1) - 1),
                                   -1.0507009873554805 * 1.6732632423543772], rtol=1e-12)


def test_activation_values():
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(LeakyReLU(0.1).forward(x), [-0.2, 0, 3])
    np.testing.assert_allclose(Tanh(lecun=True).forward(x), 1.7159 * np.tanh(2 * x / 3))
    np.testing.assert_allclose(ELU(2.0).forward(x), [2 * (np.exp(-2) - 1), 0, 3])
    np.testing.assert_allclose(Softplus().forward(x), np.log1p(np.exp(x)))
    np.testing.assert_allclose(Sigmoid().forward(x), 1 / (1 + np.exp(-x)))


def test_stable_for_large_inputs():
    x = np.array([[-1000.0, 0.0, 1000.0]], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        np.testing.assert_array_equal(Sigmoid().forward(x), [[0, 0.5, 1]])
        np.testing.assert_allclose(Softplus().forward(x), [[0, np.log(2), 1000]])
        np.testing.assert_allclose(Softmax().forward(x), [[0, 0, 1]])
        assert np.isfinite(ELU().forward(x)).all()


def test_softmax_rows_sum_to_one():
    y = Softmax().forward(np.random.default_rng(0).standard_normal((4, 7)) * 10)
    np.testing.assert_allclose(y.sum(axis=1), 1)


def test_dropout_scales_kept_units_and_is_identity_at_evaluation():
    layer = Dropout(0.25)
    x = np.ones((200, 50), np.float32)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    y = layer.forward(x)
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)} and y.dtype == np.float32
    assert abs((y == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(layer.backward(x), y)
    layer.reseed(np.random.default_rng(1))
    a = layer.forward(x)
    layer.reseed(np.random.default_rng(1))
    np.testing.assert_array_equal(a, layer.forward(x))
    with pytest.raises(ConfigError):
        Dropout(1.0)


def test_batchnorm_normalizes_and_tracks_running_statistics():
    rng = np.random.default_rng(0)
    bn = BatchNorm(3, momentum=0.5)
    x = (rng.standard_normal((64, 3, 4, 4)) * np.array([2, 3, 4])[None, :, None, None] + 5).astype(np.float32)
    y = bn.forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.5 * x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(bn.buffers["running_var"], 0.5 + 0.5 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-4)
    mean, var = bn.buffers["running_mean"].copy(), bn.buffers["running_var"].copy()
    y_eval = bn.forward(x, training=False)
    np.testing.assert_allclose(y_eval, (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(bn.buffers["running_mean"], mean)  # evaluation leaves them alone
    assert BatchNorm.decay == () and Dense.decay == ("W",) and Conv2D.decay == ("W",)


LAYER_CASES = [
    (lambda: Dense(None, 6), (5,)), (lambda: Conv2D(None, 4, 3, padding="same"), (2, 6, 6)),
    (lambda: Conv2D(None, 4, (3, 2), stride=2), (2, 7, 6)), (lambda: ConvTranspose2D(None, 3, 4, 2, 1), (2, 3, 3)),
    (lambda: MaxPool2D(2), (2, 6, 6)), (lambda: MaxPool2D(3, 2), (2, 7, 7)), (lambda: AvgPool2D(2), (2, 6, 6)),
    (lambda: Flatten(), (2, 3, 3)), (lambda: Dropout(0.5), (5,)), (lambda: BatchNorm(), (5,)),
    (lambda: BatchNorm(), (2, 3, 3)), *[(cls, (5,)) for cls in (ReLU, LeakyReLU, Sigmoid, Tanh, Softplus, ELU, SELU,
                                                                 Softmax)], (lambda: Tanh(lecun=True), (5,)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make,shape", LAYER_CASES, ids=lambda v: repr(v() if callable(v) else v))
def test_layers_keep_the_dtype_and_the_inferred_shape(make, shape, dtype):
    layer = make()
    out_shape = layer.build(shape, dtype, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((3, *shape)).astype(dtype)
    y = layer.forward(x)
    assert y.dtype == dtype and y.shape == (3, *out_shape)
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == dtype and dx.shape == x.shape
    assert all(p.dtype == dtype for p in [*layer.params.values(), *layer.grads.values(), *layer.buffers.values()])
    assert layer.forward(x, training=False).dtype == dtype


def _spectral_conv():
    layer = Conv2D(None, 8, 3, padding="same")
    layer.method = "spectral"
    return layer


def _per_sample_conv():
    layer = Conv2D(None, 4, 3, padding=1)
    layer.PER_SAMPLE_GEMM = 0
    return layer


@pytest.mark.parametrize("make,shape", LAYER_CASES + [(_spectral_conv, (8, 6, 6)), (_per_sample_conv, (2, 6, 6))],
                         ids=lambda v: repr(v() if callable(v) else v))
def test_outputs_are_fresh_arrays(make, shape):
    """A later call never overwrites an array a layer returned (layers reuse only private work arrays)."""
    layer = make()
    layer.build(shape, np.float64, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal((2, 3, *shape))
    y1 = layer.forward(x1)
    dx1 = layer.backward(np.ones_like(y1))
    kept = y1.copy(), dx1.copy()
    y2 = layer.forward(x2)
    dx2 = layer.backward(2 * np.ones_like(y2))
    assert not np.shares_memory(y1, y2) and not np.shares_memory(dx1, dx2)
    np.testing.assert_array_equal(y1, kept[0])
    np.testing.assert_array_equal(dx1, kept[1])


def test_lecture_network_has_13002_parameters_and_a_summary():
    model = Sequential([Dense(None, 16), Sigmoid(), Dense(None, 16), Sigmoid(), Dense(None, 10)], input_shape=(784,))
    assert model.num_params == 13002
    text = model.summary()
    for part in ["Dense(784, 16)", "Dense(16, 16)", "Dense(16, 10)", "12,560", "272", "170", "13,002", "(10,)"]:
        assert part in text


def test_shape_inference_builds_a_cnn():
    model = Sequential([Conv2D(None, 32, 5, padding="same"), ReLU(), MaxPool2D(2), Flatten(), Dense(None, 10)],
                       input_shape=(1, 28, 28))
    assert model.shapes == [(1, 28, 28), (32, 28, 28), (32, 28, 28), (32, 14, 14), (6272,), (10,)]
    assert model.num_params == 32 * 25 + 32 + 6272 * 10 + 10
    assert repr(model.layers[0]) == "Conv2D(1, 32, k=5, s=1, p=same)"
    assert model.forward(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)


def test_flops_count_multiply_adds_as_two():
    assert Dense(784, 256).flops() == 2 * 784 * 256
    conv = Conv2D(32, 64, 5, padding="same")
    assert conv.flops((32, 14, 14)) == 2 * 32 * 25 * 64 * 14 * 14
    assert Conv2D(1, 8, 3, stride=2).flops((1, 9, 9)) == 2 * 9 * 8 * 4 * 4
    assert ConvTranspose2D(4, 2, 3, stride=2).flops((4, 5, 5)) == 2 * 4 * 2 * 9 * 25


def test_sequential_gradients_land_in_the_arena():
    model = Sequential([Conv2D(None, 3, 3, stride=2, padding=1), BatchNorm(), ELU(), AvgPool2D(2), Flatten(),
                        Dense(None, 5), Tanh(), Dense(None, 4)], input_shape=(2, 8, 8), dtype=np.float64, seed=3)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 2, 8, 8)), rng.integers(0, 4, 4)
    loss = SoftmaxCrossEntropy()
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    analytic = model.grads_flat.copy()
    numeric = numeric_grad(lambda: loss.forward(model.forward(x), y), model.params_flat)
    assert rel_error(analytic, numeric) < 1e-6


def test_reference_cnn_gradients_with_the_default_conv_paths():
    """The bench CNN's layer pattern, small: the paths chosen by default (im2col per sample for one input channel,
    spectral for 8 -> 8) give the model's gradients, the skipped first input gradient included."""
    model = Sequential([Conv2D(None, 8, 5, padding="same"), ReLU(), MaxPool2D(2), Conv2D(None, 8, 5, padding="same"),
                        ReLU(), MaxPool2D(2), Flatten(), Dense(None, 6), ReLU(), Dense(None, 3)],
                       input_shape=(1, 16, 16), dtype=np.float64, seed=5)
    conv1, conv2 = model.layers[0], model.layers[3]
    assert conv1.spectrum((16, 16), (2, 2, 2, 2)) is None and conv2.spectrum((8, 8), (2, 2, 2, 2)) is not None
    model.skip_input_grad()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 1, 16, 16)), rng.integers(0, 3, 3)
    loss = SoftmaxCrossEntropy()
    loss.forward(model.forward(x), y)
    assert model.backward(loss.backward()) is None
    analytic = model.grads_flat.copy()
    numeric = numeric_grad(lambda: loss.forward(model.forward(x), y), model.params_flat)
    assert rel_error(analytic, numeric) < 1e-6


def test_build_is_deterministic_from_the_rng():
    make = lambda: Sequential([Conv2D(None, 4, 3), Flatten(), Dense(None, 3)], input_shape=(1, 5, 5), seed=11)  # noqa
    np.testing.assert_array_equal(make().params_flat, make().params_flat)


def test_every_layer_has_a_configuration_repr():
    assert repr(Dense(3, 2)) == "Dense(3, 2)"
    assert repr(Conv2D(3, 8, (3, 5), stride=2, padding=1)) == "Conv2D(3, 8, k=3x5, s=2, p=1)"
    assert repr(MaxPool2D(3, 2)) == "MaxPool2D(3, stride=2)"
    assert repr(Dropout(0.3)) == "Dropout(p=0.3)"
    assert set(LAYERS) >= {"Dense", "Conv2D", "ConvTranspose2D", "MaxPool2D", "AvgPool2D", "Flatten", "Dropout",
                           "BatchNorm", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softplus", "ELU", "SELU", "Softmax"}


def test_bad_configurations_say_what_is_wrong():
    with pytest.raises(ConfigError, match="Flatten"):
        Sequential([Dense(None, 3)], input_shape=(1, 4, 4))
    with pytest.raises(ConfigError, match="padding"):
        Conv2D(1, 2, 3, padding="full")
    with pytest.raises(ConfigError, match="kernel_size"):
        Conv2D(1, 2, (3, 3, 3))
    with pytest.raises(ConfigError, match="does not fit"):
        Sequential([Conv2D(None, 2, 5)], input_shape=(1, 3, 3))
