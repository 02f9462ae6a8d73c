"""Finite-difference gradient checks for layers (float64, central differences on a projection sum(y * R))."""

import numpy as np

EPS = 1e-6
TOL = 1e-6


def rel_error(a, b):
    """Relative error of two arrays, robust to both being ~0."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-12))


def numeric_grad(f, a, eps=EPS):
    """d f() / d a by central differences, perturbing ``a`` in place."""
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def check_layer(layer, x, seed=0, prepare=lambda: None, tol=TOL):
    """Assert that ``layer.backward`` matches finite differences w.r.t. the input and every parameter."""
    rng = np.random.default_rng(seed)
    x = np.array(x, dtype=np.float64)
    prepare()
    y = layer.forward(x, training=True)
    r = rng.standard_normal(y.shape)
    dx = layer.backward(r)
    grads = {k: g.copy() for k, g in layer.grads.items()}

    def projected():
        prepare()
        return float(np.sum(layer.forward(x, training=True) * r))

    errors = {"x": rel_error(dx, numeric_grad(projected, x))}
    for name, p in layer.params.items():
        errors[name] = rel_error(grads[name], numeric_grad(projected, p))
    assert max(errors.values()) < tol, f"{layer!r}: relative errors {errors}"
    return errors
