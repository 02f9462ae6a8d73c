"""The layer contract shared by every layer (see DESIGN.md, "Layer API").

A layer is a forward/backward pair plus the arrays it owns:

- ``params``/``grads``: dicts name -> ndarray of equal shapes. Once built, these arrays are never rebound:
  ``Sequential`` replaces them with views into its flat arena, so ``backward`` must *write into* them
  (``np.matmul(..., out=g)`` or ``g[...] = ...``), overwriting each step.
- ``buffers``: non-trained state that a checkpoint keeps (BatchNorm's running statistics).
- ``build(input_shape, dtype, rng)`` infers missing sizes from the per-sample input shape (no batch axis),
  (re)creates and initializes the parameters from ``rng`` and returns the per-sample output shape.
  A layer whose sizes are all given at construction builds itself at once (float32, seed 0), so it works
  alone; ``Sequential`` given an input shape builds again with the model's dtype and seed, and one that
  infers it from such layers keeps their values (see ``Sequential``).
- ``needs_dx``: when a model sets it False on its first layer, ``backward`` may skip computing the
  input gradient (a large saving for a first convolution) and return None.
- ``reseed(draws)``: layers that draw random numbers in training (Dropout) take this micro-batch's
  ``distnet.nn.draws.Draws``, bound to the layer, here: their draws are then a function of (seed, epoch, each
  sample's global index, the layer), never of the rank count.
- ``distribute(allreduce)``: layers whose forward or backward needs a sum over ranks (BatchNorm with
  ``sync=True``) keep ``allreduce(a)``, which sums a float64 array over ranks in place and returns it. Layers
  never import MPI: the trainer hands this function down through ``Sequential.distribute``.
- ``hold(name, a)``: layers return their (always fresh) outputs through it, see there.
"""

import numpy as np

TYPES = {}  # config type name -> layer class: what ``[[model.layers]] type = "..."`` may name


def register(type_name):
    """Class decorator that makes a layer available to configs as ``type = "<type_name>"``.

    Its constructor's arguments are the layer's config keys (``in_features``/``in_channels``/``num_features``
    left out are inferred from the input); the decorated class gets ``type_name``.
    """
    def add(cls):
        known = TYPES.get(type_name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"layer type {type_name!r} is registered twice: {known.__name__} and {cls.__name__}")
        TYPES[type_name] = cls
        cls.type_name = type_name
        return cls
    return add


class Layer:
    """Base class: no parameters, identity shape."""

    needs_dx = True  # False: backward may skip d(input) and return None (first layer of a model)
    decay = ()  # names of the parameters that weight decay applies to (weights, not biases)

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.input_shape = None
        self.output_shape = None
        self.dtype = np.dtype(np.float32)

    def build(self, input_shape, dtype=np.float32, rng=None):
        """Infer sizes, create parameters; return the per-sample output shape."""
        self.input_shape = tuple(input_shape)
        self.dtype = np.dtype(dtype)
        self.output_shape = self.infer_shape(self.input_shape)
        self.create(rng if rng is not None else np.random.default_rng(0))
        return self.output_shape

    def infer_shape(self, input_shape):
        """Per-sample output shape for a per-sample input shape; set missing sizes on the layer."""
        return tuple(input_shape)

    def create(self, rng):
        """Allocate and initialize ``params``, ``grads`` and ``buffers`` (after ``infer_shape``)."""

    def forward(self, x, training=True):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def hold(self, name, a):
        """Return ``a`` and keep a reference to it until this layer's next call. Freeing a step's arrays only once
        their replacements exist lets malloc reuse their memory; freed at the end of a step, glibc hands it back
        to the OS and the next step page-faults it in again (a fifth of a CNN step, measured: docs/benchmarks.md)."""
        setattr(self, "_held_" + name, a)
        return a

    def reseed(self, draws):
        """Take this micro-batch's ``Draws`` bound to this layer (only stochastic layers use them)."""

    def distribute(self, allreduce):
        """Take ``allreduce(a)`` (sums a float64 array over ranks, in place; returns it), if the layer needs one."""

    def flops(self, input_shape=None):
        """Floating-point operations of a forward pass for one sample (multiply-add = 2)."""
        return 0

    @property
    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    def __repr__(self):
        return type(self).__name__ + "()"
