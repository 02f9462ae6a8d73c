"""Optimizers that update the flat parameter arena in place, a few vectorized operations per step.

Every optimizer takes the arena's ``params`` and ``grads`` (1-D arrays of one dtype), updates ``params`` in
place (never rebinding it) and leaves ``grads`` untouched: the regularized gradient is built in a scratch
buffer of the arena's size, so a step allocates no arena-sized temporaries and float32 stays float32.

Regularization, for the optimizers without a ``W``: ``g <- g + weight_decay * p + l1 * sign(p)``, both terms
only where ``decay_mask`` is True (weights, not biases or BatchNorm); ``decay_mask=None`` applies them to
every parameter. ``AdamW`` instead decays the parameters themselves (decoupled: ``p <- p - lr * wd * p``).

State (step count and moment buffers) is plain arrays: ``state_dict()`` returns copies, ``load_state_dict``
copies back into the existing buffers, so a resumed run continues bit for bit.
"""

import inspect
import math

import numpy as np

from ..errors import ConfigError


def _check_range(name, value, lo, hi=math.inf, hi_open=True):
    """Raise ConfigError unless ``value`` is a real number in [lo, hi) (or [lo, hi] when not hi_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"optimizer {name}={value!r} must be a number")
    if not (lo <= value and (value < hi if hi_open else value <= hi)):
        raise ConfigError(f"optimizer {name}={value!r} must be in [{lo}, {hi}{')' if hi_open else ']'}")
    return float(value)


BLOCK = 32768  # elements per block of a multi-pass update (5 float32 arrays: 640 kB, within a core's L2)


def _blocks(n):
    """Slices of about BLOCK elements covering range(n) (one slice when n is small)."""
    return [slice(lo, min(lo + BLOCK, n)) for lo in range(0, n, BLOCK)] if n > BLOCK else [slice(0, n)]


class Optimizer:
    """Base class: argument checks, regularized gradient, step counting, state round trip."""

    state_names = ()  # names of the arena-sized state buffers, also the state_dict keys
    reads_gradient_only = False  # True: _update(g, lr) never writes to g, so g may be the gradient itself

    def __init__(self, params, grads, lr=0.01, weight_decay=0.0, decay_mask=None, l1=0.0):
        if params.ndim != 1 or grads.shape != params.shape or grads.dtype != params.dtype:
            raise ValueError(f"params and grads must be 1-D arrays of one shape and dtype, got "
                             f"{params.shape} {params.dtype} and {grads.shape} {grads.dtype}")
        if decay_mask is not None and (decay_mask.shape != params.shape or decay_mask.dtype != bool):
            raise ValueError(f"decay_mask must be a bool array of shape {params.shape}")
        self.params = params
        self.grads = grads
        self.lr = _check_range("lr", lr, 0.0)
        self.weight_decay = _check_range("weight_decay", weight_decay, 0.0)
        self.l1 = _check_range("l1", l1, 0.0)
        self.decay_mask = decay_mask
        self._decay_factor = None if decay_mask is None else decay_mask.astype(params.dtype)
        self.step_count = 0
        self._g = np.empty_like(params)  # regularized gradient, then free for the update's own use
        self._t = np.empty_like(params)  # second scratch buffer
        for name in self.state_names:
            setattr(self, name, np.zeros_like(params))

    def step(self, lr=None):
        """Apply one update with learning rate ``lr`` (the constructor's when None)."""
        lr = self.lr if lr is None else float(lr)  # a numpy float64 lr would upcast float32 temporaries
        self.step_count += 1
        self._update(self._gradient(), lr)

    def _update(self, g, lr):
        raise NotImplementedError

    def _gradient(self):
        """The gradient plus the L2 and L1 terms, in the scratch buffer ``self._g``."""
        g, p = self._g, self.params
        if self._l2 == 0.0 and self.l1 == 0.0 and self.reads_gradient_only:
            return self.grads  # nothing to add, and _update will not write to it: skip the copy
        if self._l2 > 0.0:
            np.multiply(p, self._l2, out=g)
            self._mask(g)
            g += self.grads
        else:
            np.copyto(g, self.grads)
        if self.l1 > 0.0:
            np.sign(p, out=self._t)
            self._t *= self.l1
            self._mask(self._t)
            g += self._t
        return g

    @property
    def _l2(self):
        return self.weight_decay

    def _mask(self, x):
        """Zero ``x`` where weight decay does not apply."""
        if self._decay_factor is not None:
            x *= self._decay_factor

    def state_dict(self):
        """Step count and copies of the state buffers: {"step": int, name: array, ...}."""
        return {"step": self.step_count, **{name: getattr(self, name).copy() for name in self.state_names}}

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned, copying into the existing buffers."""
        expected = {"step", *self.state_names}
        if set(state) != expected:
            raise ConfigError(f"{type(self).__name__} state has keys {sorted(state)}, expected {sorted(expected)}")
        for name in self.state_names:
            buf, saved = getattr(self, name), np.asarray(state[name])
            if saved.shape != buf.shape:
                raise ConfigError(f"{type(self).__name__} state '{name}' has shape {saved.shape}, "
                                  f"expected {buf.shape} (a different model?)")
            np.copyto(buf, saved)
        self.step_count = int(state["step"])

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in inspect.signature(type(self)).parameters
                         if k not in ("params", "grads", "decay_mask"))
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum, in PyTorch's convention.

    plain:     p <- p - lr * g
    momentum:  v <- mu * v + g;  p <- p - lr * v
    Nesterov:  v <- mu * v + g;  p <- p - lr * (g + mu * v)
    with v = 0 before the first step. The lectures' form v <- mu * v - lr * g; p <- p + v is the same
    trajectory (v scaled by -lr) while lr is constant; with a schedule this form applies each step's lr to
    the whole velocity, which is what PyTorch does too.
    """

    def __init__(self, params, grads, lr=0.01, weight_decay=0.0, decay_mask=None, l1=0.0, momentum=0.0,
                 nesterov=False):
        self.momentum = _check_range("momentum", momentum, 0.0, 1.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise ConfigError("optimizer nesterov=true needs momentum > 0")
        self.state_names = ("velocity",) if self.momentum > 0.0 else ()
        super().__init__(params, grads, lr, weight_decay, decay_mask, l1)

    def _update(self, g, lr):
        p = self.params
        if self.momentum == 0.0:
            g *= lr
            p -= g
            return
        v = self.velocity
        v *= self.momentum
        v += g
        if self.nesterov:  # p -= lr * g + lr * mu * v, in two passes through the scratch buffer
            g *= lr
            p -= g
            np.multiply(v, lr * self.momentum, out=g)
        else:
            np.multiply(v, lr, out=g)
        p -= g


class AdaGrad(Optimizer):
    """AdaGrad (Duchi et al. 2011): s <- s + g^2;  p <- p - lr * g / (sqrt(s) + eps)."""

    state_names = ("sum_sq",)

    def __init__(self, params, grads, lr=0.01, weight_decay=0.0, decay_mask=None, l1=0.0, eps=1e-10):
        self.eps = _check_range("eps", eps, 0.0)
        super().__init__(params, grads, lr, weight_decay, decay_mask, l1)

    def _update(self, g, lr):
        t = self._t
        np.square(g, out=t)
        self.sum_sq += t
        np.sqrt(self.sum_sq, out=t)
        t += self.eps
        np.divide(g, t, out=g)
        g *= lr
        self.params -= g


class RMSProp(Optimizer):
    """RMSProp (Hinton's lecture 6e): a <- rho * a + (1 - rho) * g^2;  p <- p - lr * g / (sqrt(a) + eps).

    eps is added outside the square root, as in PyTorch (Goodfellow et al. add it inside).
    """

    state_names = ("square_avg",)

    def __init__(self, params, grads, lr=0.001, weight_decay=0.0, decay_mask=None, l1=0.0, rho=0.9, eps=1e-8):
        self.rho = _check_range("rho", rho, 0.0, 1.0)
        self.eps = _check_range("eps", eps, 0.0)
        super().__init__(params, grads, lr, weight_decay, decay_mask, l1)

    def _update(self, g, lr):
        a, t = self.square_avg, self._t
        np.square(g, out=t)
        t *= 1.0 - self.rho
        a *= self.rho
        a += t
        np.sqrt(a, out=t)
        t += self.eps
        np.divide(g, t, out=g)
        g *= lr
        self.params -= g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, at step k = 1, 2, ...:

    m <- b1 * m + (1 - b1) * g;  v <- b2 * v + (1 - b2) * g^2
    p <- p - lr * (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + eps)
    ``weight_decay`` here is L2 (added to g); use ``AdamW`` for decoupled decay.
    """

    state_names = ("m", "v")
    reads_gradient_only = True

    def __init__(self, params, grads, lr=0.001, weight_decay=0.0, decay_mask=None, l1=0.0, beta1=0.9,
                 beta2=0.999, eps=1e-8):
        self.beta1 = _check_range("beta1", beta1, 0.0, 1.0)
        self.beta2 = _check_range("beta2", beta2, 0.0, 1.0)
        self.eps = _check_range("eps", eps, 0.0)
        super().__init__(params, grads, lr, weight_decay, decay_mask, l1)

    def _update(self, g, lr):
        # 12 in-place passes, over one block of the arena at a time so that its five arrays stay in the
        # core's cache between passes (bitwise the same as whole-arena passes: every element's arithmetic is);
        # the bias corrections are folded into eps and the step size:
        # lr * (m / c1) / (sqrt(v / c2) + eps) = (lr * sqrt(c2) / c1) * m / (sqrt(v) + eps * sqrt(c2))
        k = self.step_count
        c1, root_c2 = 1.0 - self.beta1 ** k, math.sqrt(1.0 - self.beta2 ** k)
        a1, a2, b2 = 1.0 - self.beta1, 1.0 - self.beta2, self.beta2
        eps, size = self.eps * root_c2, lr * root_c2 / c1
        for sl in _blocks(g.size):
            gb, m, v, t = g[sl], self.m[sl], self.v[sl], self._t[sl]
            np.subtract(gb, m, out=t)  # m <- m + (1 - b1) (g - m)
            t *= a1
            m += t
            np.square(gb, out=t)
            t *= a2
            v *= b2
            v += t
            np.sqrt(v, out=t)
            t += eps
            np.divide(m, t, out=t)
            t *= size
            self.params[sl] -= t


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as PyTorch's AdamW:

    first p <- p - lr * weight_decay * p (only where decay_mask is True), then the Adam update on g
    (the gradient plus the L1 term, without L2).
    """

    @property
    def _l2(self):
        return 0.0

    def _update(self, g, lr):
        if self.weight_decay > 0.0:
            if self._decay_factor is None:
                self.params *= 1.0 - lr * self.weight_decay
            else:
                np.multiply(self.params, lr * self.weight_decay, out=self._t)
                self._mask(self._t)
                self.params -= self._t
        super()._update(g, lr)


def clip_grad_norm(grads, max_norm, norm=None):
    """Scale ``grads`` in place to global L2 norm ``max_norm`` if it is above; return the norm before.

    ``norm``: the global norm when ``grads`` is only a part of the gradient (a sharded optimizer's shard);
    None computes it from ``grads``. A non-finite norm leaves ``grads`` as they are (scaling would turn them
    all into NaN); the caller's NaN check sees the returned norm.
    """
    norm = float(np.sqrt(np.dot(grads, grads))) if norm is None else norm
    if math.isfinite(norm) and norm > max_norm:
        grads *= max_norm / norm
    return norm


# The registry: config name -> (class, defaults over the class's own). Its keyword arguments but params, grads
# and decay_mask are the name's config keys (optimizer_keys).
OPTIMIZERS = {
    "sgd": (SGD, {}),
    "momentum": (SGD, {"momentum": 0.9}),
    "nesterov": (SGD, {"momentum": 0.9, "nesterov": True}),
    "adagrad": (AdaGrad, {}),
    "rmsprop": (RMSProp, {}),
    "adam": (Adam, {}),
    "adamw": (AdamW, {}),
}


def optimizer_keys(name):
    """The keyword arguments optimizer ``name`` takes from a config, in signature order (ConfigError if unknown)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{name}' (valid: {', '.join(OPTIMIZERS)})")
    cls = OPTIMIZERS[name][0]
    return [k for k in inspect.signature(cls).parameters
            if k not in ("params", "grads", "decay_mask") and not (name != "sgd" and k == "nesterov")]


def make_optimizer(name, params, grads, decay_mask=None, **kwargs):
    """Build the optimizer a config names; "momentum" and "nesterov" are SGD with momentum 0.9 by default."""
    valid = optimizer_keys(name)
    for key in kwargs:
        if key not in valid:
            others = [n for n in OPTIMIZERS if key in optimizer_keys(n)]
            hint = ""
            if others:
                pick = key if key in others else others[0]
                hint = (f"; '{key}' is a key of {', '.join(others)}: change the optimizer too, "
                        f"e.g. --set optimizer.name={pick}")
            raise ConfigError(f"unknown key '{key}' for optimizer '{name}' (valid: {', '.join(valid)}){hint}")
    cls, defaults = OPTIMIZERS[name]
    return cls(params, grads, decay_mask=decay_mask, **{**defaults, **kwargs})
