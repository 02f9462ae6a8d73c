"""``Sequential`` and the flat parameter arena.

All parameters of a model live in one contiguous array (``model.params``) and all gradients in another
(``model.grads``); each layer's ``params``/``grads`` entries are views into them. The optimizer updates the
whole arena in a few vectorized operations and the allreduce works on ``model.grads`` in place.

The arena is laid out in layer order, so backward (last layer first) finishes the arena from its end
towards its start: ``layer_ranges`` tells which slice each layer owns, which is what gradient buckets need.
"""

import hashlib

import numpy as np

from .layers.base import Layer


class Sequential(Layer):
    """A stack of layers that is itself a layer."""

    def __init__(self, layers, input_shape=None, dtype=None, seed=0):
        """With ``input_shape`` (per sample), build at once: every layer (re)initialized from ``seed``, in
        ``dtype`` (float32 by default).

        Without it, the input shape is that of the first layer that knows its own (one built with its sizes,
        such as ``Dense(784, 16)``) when only shape-keeping layers (activations, Dropout) come before it: the
        model is built at once, layers that own arrays keep their values (cast to ``dtype``, by default that of
        the first layer with parameters) and the others are built for the shapes in between. If no layer
        knows its input shape, ``build(input_shape)`` builds the model later.
        """
        super().__init__()
        self.layers = list(layers)
        self.seed = seed
        self.params_flat = None
        self.grads_flat = None
        self.shapes = None  # per-sample shapes: the input, then each layer's output (once built)
        rng = np.random.default_rng(seed)
        if input_shape is not None:
            self.build(input_shape, np.float32 if dtype is None else dtype, rng)
        elif (known := self._known_input_shape()) is not None:
            if dtype is None:
                dtype = next((layer.dtype for layer in self.layers if layer.params), np.float32)
            self._keep_values = True
            try:
                self.build(known, dtype, rng)
            finally:
                self._keep_values = False

    # -- building -------------------------------------------------------------------------------------
    _keep_values = False  # True while building from layers' own input shapes: keep their arrays' values

    def _known_input_shape(self):
        """The model's input shape as the first layer that knows its own implies, else None."""
        for layer in self.layers:
            if layer.input_shape is not None:
                return layer.input_shape
            if type(layer).infer_shape is not Layer.infer_shape:  # changes shapes: nothing to infer through
                return None
        return None

    def infer_shape(self, input_shape):
        shape = tuple(input_shape)
        self.shapes = [shape]
        return shape

    def create(self, rng):
        shape = self.input_shape
        self.shapes = [shape]
        for layer in self.layers:
            kept = {(kind, name): a.copy() for kind in ("params", "buffers")
                    for name, a in getattr(layer, kind).items()} if self._keep_values else {}
            shape = layer.build(shape, self.dtype, rng)
            for (kind, name), a in kept.items():
                new = getattr(layer, kind).get(name)
                if new is not None and new.shape == a.shape:
                    new[...] = a
            self.shapes.append(tuple(shape))
        self.output_shape = shape
        self._make_arena()

    def _make_arena(self):
        entries = [(i, name, p) for i, layer in enumerate(self.layers) for name, p in layer.params.items()]
        total = sum(p.size for _, _, p in entries)
        self.params_flat = np.empty(total, self.dtype)
        self.grads_flat = np.zeros(total, self.dtype)
        self.decay_mask = np.zeros(total, bool)
        self.layer_ranges = []
        self.param_index = []  # (layer index, name, slice) in arena order
        offset = 0
        for i, layer in enumerate(self.layers):
            start = offset
            for name in list(layer.params):
                p = layer.params[name]
                sl = slice(offset, offset + p.size)
                self.params_flat[sl] = p.ravel()
                layer.params[name] = self.params_flat[sl].reshape(p.shape)
                layer.grads[name] = self.grads_flat[sl].reshape(p.shape)
                if name in layer.decay:
                    self.decay_mask[sl] = True
                self.param_index.append((i, name, sl))
                offset += p.size
            self.layer_ranges.append((start, offset))
        self.params = {f"{i}.{name}": self.layers[i].params[name] for i, name, _ in self.param_index}
        self.grads = {f"{i}.{name}": self.layers[i].grads[name] for i, name, _ in self.param_index}
        self.buffers = {f"{i}.{n}": b for i, layer in enumerate(self.layers) for n, b in layer.buffers.items()}

    def relocate(self, params, grads):
        """Move the arena into ``params`` and ``grads`` (1-D arrays of its size and dtype that already hold
        the values, shared memory say): the arena, every layer's views and the name maps point there after."""
        for new, old in ((params, self.params_flat), (grads, self.grads_flat)):
            if new.shape != old.shape or new.dtype != old.dtype:
                raise ValueError(f"relocate: an arena of {old.shape} {old.dtype} needs arrays of that shape and "
                                 f"dtype, got {new.shape} {new.dtype}")
        self.params_flat, self.grads_flat = params, grads
        for i, name, sl in self.param_index:
            layer, shape = self.layers[i], self.layers[i].params[name].shape
            layer.params[name] = params[sl].reshape(shape)
            layer.grads[name] = grads[sl].reshape(shape)
        self.params = {f"{i}.{name}": self.layers[i].params[name] for i, name, _ in self.param_index}
        self.grads = {f"{i}.{name}": self.layers[i].grads[name] for i, name, _ in self.param_index}

    @property
    def num_params(self):
        if self.params_flat is None:  # not built yet: what the layers own so far
            return sum(layer.num_params for layer in self.layers)
        return int(self.params_flat.size)

    # -- computing ------------------------------------------------------------------------------------
    def forward(self, x, training=True):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dy, sync=None):
        """Backpropagate ``dy``. With a gradient-sync strategy ``sync``, each layer gets the row plan
        ``sync.rows(i)`` (when it has one) and ``sync.layer_done(i)`` follows as soon as layer i's gradients
        are final. Nothing is installed on a layer, so an exception midway leaves no state behind.

        After ``skip_input_grad()`` it stops at the first layer with parameters and returns None.
        """
        for i in range(len(self.layers) - 1, self._backward_stop - 1, -1):
            layer = self.layers[i]
            if sync is None:
                dy = layer.backward(dy)
                continue
            plan = sync.rows(i)
            dy = layer.backward(dy) if plan is None else layer.backward(dy, rows=plan)
            sync.layer_done(i)
        return dy if self._backward_stop == 0 else None

    _backward_stop = 0  # backward runs layers[_backward_stop:] (in reverse)

    def skip_input_grad(self, skip=True):
        """Skip what only d(input) needs when nothing consumes it (training a whole model): the layers in
        front of the first layer with parameters (Flatten, input Dropout) do not run backward at all, and
        that layer computes its parameter gradients but not d(its input)."""
        first = next((i for i, layer in enumerate(self.layers) if layer.params), None)
        for i, layer in enumerate(self.layers):
            layer.needs_dx = not (skip and first is not None and i <= first)
        self._backward_stop = first if skip and first is not None else 0

    def reseed(self, draws):
        """Give layer i ``draws.layer(i)`` (``draws``: a ``distnet.nn.draws.Draws`` for this micro-batch); a NumPy
        generator or None goes to every layer as it is."""
        plain = draws is None or isinstance(draws, np.random.Generator)
        for i, layer in enumerate(self.layers):
            layer.reseed(draws if plain else draws.layer(i))

    def distribute(self, allreduce):
        """Give every layer the sum over ranks, ``allreduce(a)`` (float64, in place), for those that need one."""
        for layer in self.layers:
            layer.distribute(allreduce)

    def flops(self, input_shape=None):
        return sum(layer.flops(shape) for layer, shape in zip(self.layers, self.shapes))

    # -- inspecting, saving ---------------------------------------------------------------------------
    def summary(self):
        """A table of layers, per-sample output shapes and parameter counts."""
        rows = [("layer", "output shape", "params")]
        for layer, shape in zip(self.layers, self.shapes[1:] if self.shapes else ["?"] * len(self.layers)):
            rows.append((repr(layer), str(shape), f"{layer.num_params:,}"))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"{a:<{w0}}  {b:<{w1}}  {c:>10}" for a, b, c in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append("-" * len(lines[0]))
        shape = self.input_shape if self.shapes else "not known yet: build(input_shape)"
        lines.append(f"input {shape}, total params {self.num_params:,} ({self.dtype})")
        return "\n".join(lines)

    def param_hash(self):
        """SHA-256 of the parameter arena's bytes (replicas in sync have equal hashes)."""
        return hashlib.sha256(np.ascontiguousarray(self.params_flat).tobytes()).hexdigest()

    def state_arrays(self):
        """name -> array of everything a checkpoint must hold for the model (params and buffers)."""
        out = {"params": self.params_flat}
        for k, b in self.buffers.items():
            out[f"buffers/{k}"] = b
        return out

    def __repr__(self):
        return f"Sequential({len(self.layers)} layers, {self.num_params:,} params)"
