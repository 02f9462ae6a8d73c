"""Weight initializers: ``fn(shape, fan_in, fan_out, rng, dtype) -> ndarray``, and ``get`` by name or spec.

Draws are made in float64 from the given generator and then cast, so a model starts from the same values in
float32 and float64 and on every rank (the same rng seed gives the same parameters everywhere).

Defaults used by the layers: ``he_normal`` for Dense/Conv2D/ConvTranspose2D weights (ReLU networks are the
common case; pass ``init="glorot_uniform"`` etc. for sigmoid/tanh networks, ``"lecun_normal"`` for SELU) and
``zeros`` for biases. For a conv kernel ``(out, in, kh, kw)``: fan_in = in*kh*kw, fan_out = out*kh*kw.
"""

import functools
import math

import numpy as np

from ..errors import ConfigError


def normal(shape, fan_in, fan_out, rng, dtype=np.float32, std=0.01):
    """N(0, std^2)."""
    return (rng.standard_normal(shape) * std).astype(dtype)


def uniform(shape, fan_in, fan_out, rng, dtype=np.float32, a=0.05):
    """U(-a, a)."""
    return rng.uniform(-a, a, shape).astype(dtype)


def glorot_normal(shape, fan_in, fan_out, rng, dtype=np.float32):
    """Glorot/Xavier normal: std = sqrt(2 / (fan_in + fan_out))."""
    return normal(shape, fan_in, fan_out, rng, dtype, std=math.sqrt(2.0 / (fan_in + fan_out)))


def glorot_uniform(shape, fan_in, fan_out, rng, dtype=np.float32):
    """Glorot/Xavier uniform: a = sqrt(6 / (fan_in + fan_out))."""
    return uniform(shape, fan_in, fan_out, rng, dtype, a=math.sqrt(6.0 / (fan_in + fan_out)))


def he_normal(shape, fan_in, fan_out, rng, dtype=np.float32):
    """He/Kaiming normal for ReLU: std = sqrt(2 / fan_in)."""
    return normal(shape, fan_in, fan_out, rng, dtype, std=math.sqrt(2.0 / fan_in))


def he_uniform(shape, fan_in, fan_out, rng, dtype=np.float32):
    """He/Kaiming uniform for ReLU: a = sqrt(6 / fan_in)."""
    return uniform(shape, fan_in, fan_out, rng, dtype, a=math.sqrt(6.0 / fan_in))


def lecun_normal(shape, fan_in, fan_out, rng, dtype=np.float32):
    """LeCun normal (tanh, SELU): std = sqrt(1 / fan_in)."""
    return normal(shape, fan_in, fan_out, rng, dtype, std=math.sqrt(1.0 / fan_in))


def zeros(shape, fan_in, fan_out, rng, dtype=np.float32):
    """All zeros (biases)."""
    return np.zeros(shape, dtype)


def ones(shape, fan_in, fan_out, rng, dtype=np.float32):
    """All ones (BatchNorm scale)."""
    return np.ones(shape, dtype)


INITIALIZERS = {f.__name__: f for f in (normal, uniform, glorot_normal, glorot_uniform, he_normal, he_uniform,
                                        lecun_normal, zeros, ones)}
ALIASES = {"xavier_normal": "glorot_normal", "xavier_uniform": "glorot_uniform",
           "kaiming_normal": "he_normal", "kaiming_uniform": "he_uniform"}
OPTIONS = {"normal": {"std"}, "uniform": {"a"}}


def get(spec, default="he_normal"):
    """An initializer from a name, a dict like {"name": "normal", "std": 0.01}, a callable, or None (default)."""
    if spec is None:
        spec = default
    if callable(spec):
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name", None)
    elif isinstance(spec, str):
        name, spec = spec, {}
    else:
        raise ConfigError(f"initializer must be a name or a dict with 'name', got {spec!r}")
    name = ALIASES.get(name, name)
    if name not in INITIALIZERS:
        raise ConfigError(f"unknown initializer {name!r}; valid: {', '.join(sorted(INITIALIZERS))}")
    bad = set(spec) - OPTIONS.get(name, set())
    if bad:
        allowed = ", ".join(sorted(OPTIONS.get(name, ()))) or "none"
        raise ConfigError(f"initializer {name!r} takes no option {', '.join(sorted(bad))} (options: {allowed})")
    fn = INITIALIZERS[name]
    return functools.partial(fn, **{k: float(v) for k, v in spec.items()}) if spec else fn


def conv_fans(shape):
    """(fan_in, fan_out) of a kernel (out, in, kh, kw) or a dense matrix (in, out)."""
    if len(shape) == 2:
        return shape[0], shape[1]
    field = int(np.prod(shape[2:]))
    return shape[1] * field, shape[0] * field
