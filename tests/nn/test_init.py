"""Initializers: scales, fans, determinism and configuration errors."""

import math

import numpy as np
import pytest

from distnet.errors import ConfigError
from distnet.nn import init
from distnet.nn.layers import Conv2D, Dense


@pytest.mark.parametrize("name,std", [("he_normal", math.sqrt(2 / 400)), ("glorot_normal", math.sqrt(2 / 700)),
                                      ("lecun_normal", math.sqrt(1 / 400)), ("he_uniform", math.sqrt(2 / 400)),
                                      ("glorot_uniform", math.sqrt(2 / 700))])
def test_scale_matches_the_fans(name, std):
    w = init.get(name)((400, 300), 400, 300, np.random.default_rng(0), np.float64)
    assert abs(w.mean()) < 0.05 * std and w.std() == pytest.approx(std, rel=0.02)


def test_uniform_bounds_and_spec_options():
    w = init.get({"name": "uniform", "a": 0.2})((1000,), 1, 1, np.random.default_rng(0), np.float32)
    assert w.dtype == np.float32 and w.min() >= -0.2 and w.max() <= 0.2 and w.max() > 0.19
    w = init.get({"name": "normal", "std": 0.01})((10000,), 1, 1, np.random.default_rng(0), np.float64)
    assert w.std() == pytest.approx(0.01, rel=0.03)
    assert not init.get("zeros")((3, 3), 3, 3, None, np.float32).any()


def test_unknown_names_and_options_raise_config_errors():
    with pytest.raises(ConfigError, match="he_normal"):
        init.get("kaiming_magic")
    with pytest.raises(ConfigError, match="std"):
        init.get({"name": "he_normal", "std": 1})
    with pytest.raises(ConfigError):
        init.get(3)


def test_conv_fans_and_layer_defaults():
    assert init.conv_fans((64, 32, 5, 5)) == (32 * 25, 64 * 25)
    conv = Conv2D(32, 64, 5, seed=0)
    assert conv.params["W"].std() == pytest.approx(math.sqrt(2 / (32 * 25)), rel=0.02)
    assert not conv.params["b"].any()
    dense = Dense(500, 400, init="glorot_uniform", seed=0)
    assert dense.params["W"].std() == pytest.approx(math.sqrt(2 / 900), rel=0.02)


def test_deterministic_from_the_generator_and_equal_across_dtypes():
    a = init.he_normal((5, 4), 5, 4, np.random.default_rng(7), np.float64)
    b = init.he_normal((5, 4), 5, 4, np.random.default_rng(7), np.float32)
    np.testing.assert_array_equal(a.astype(np.float32), b)
    np.testing.assert_array_equal(Dense(6, 3, seed=2).params["W"], Dense(6, 3, seed=2).params["W"])
    assert not np.array_equal(Dense(6, 3, seed=2).params["W"], Dense(6, 3, seed=3).params["W"])
