"""Objects from a resolved config (``distnet.config``): layers, model, loss, optimizer and schedule.

Each kind has one registry, owned by its package; this module only reads a config's keys into them:

- layer types: ``distnet.nn.layers.LAYER_TYPES`` (type name -> class), filled by ``@register("name")`` beside each
  class; a layer's config keys are its constructor's arguments
- losses: ``distnet.nn.losses.LOSSES``
- optimizers: ``distnet.nn.optim.OPTIMIZERS`` (keys: ``optim.optimizer_keys``)
- schedules: ``distnet.nn.schedules.SCHEDULES`` (keys: ``schedules.schedule_keys``)
- initializers: ``distnet.nn.init.INITIALIZERS`` (and ``ALIASES``), named by a layer's ``init`` key

Errors about a layer name its index and what it is, e.g. ``layer 4, Dense(?, 0): ...`` (``?``: a size still
to be inferred from the input).
"""

import inspect

import numpy as np

from .errors import ConfigError

INFERRED = ("in_features", "in_channels", "num_features")  # sizes a layer takes from its input when left out
HIDDEN = ("self", "dtype", "seed")  # constructor arguments that are not config keys (the model sets them)


def layer_keys(cls):
    """The config keys of a layer class (its constructor's arguments but dtype and seed)."""
    return [p for p in inspect.signature(cls.__init__).parameters if p not in HIDDEN]


def describe(spec, cls=None):
    """``Dense(?, 10)``, ``Conv2D(?, 32, 5, padding='same')``: a layer table as its class would be called,
    required arguments in order (``?`` where left out) and then the other keys given; ``type 'x'`` when the
    type is unknown."""
    if cls is None:
        return f"type {spec.get('type')!r}" if isinstance(spec, dict) else repr(spec)
    params = inspect.signature(cls.__init__).parameters
    required = [p for p, v in params.items() if p not in HIDDEN and v.default is inspect.Parameter.empty]
    args = [repr(spec[p]) if p in spec else "?" for p in required]
    args += [f"{k}={v!r}" for k, v in spec.items() if k != "type" and k not in required and k in params]
    return f"{cls.__name__}({', '.join(args)})"


def _layer(i, spec, default_init):
    """(description, layer object) of the ``i``-th ``[[model.layers]]`` table."""
    from .nn.layers import LAYER_TYPES, layer_class

    if not isinstance(spec, dict) or "type" not in spec or not isinstance(spec["type"], str):
        raise ConfigError(f"layer {i}: model.layers[{i}] must be a table with a 'type' key, e.g. type = \"dense\", "
                          f"got {spec!r}")
    kwargs = dict(spec)
    kind = kwargs.pop("type")
    try:
        cls = layer_class(kind)
    except ValueError as e:
        raise ConfigError(f"layer {i}: {e}") from None
    if cls is None:
        raise ConfigError(f"layer {i}, type {kind!r}: unknown layer type: valid types are "
                          f"{', '.join(sorted(LAYER_TYPES))}, or a layer of your own as \"module:Class\"")
    what = f"layer {i}, {describe(spec, cls)}"
    valid = layer_keys(cls)
    for key in kwargs:
        if key not in valid:
            raise ConfigError(f"{what}: unknown key {key!r} for {kind}: valid keys are {', '.join(valid) or 'none'}")
    params = inspect.signature(cls.__init__).parameters
    for key in valid:
        if key not in kwargs and params[key].default is inspect.Parameter.empty:
            if key not in INFERRED:
                raise ConfigError(f"{what}: {kind} needs key {key!r}")
            kwargs[key] = None
    if default_init and "init" in params and "init" not in kwargs:
        kwargs["init"] = default_init
    try:
        return what, cls(**kwargs)
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"{what}: {e}") from None


def layers(specs, default_init=""):
    """Layer objects from ``[[model.layers]]`` tables; sizes left out are inferred when the model is built.

    ``default_init`` (``model.init``) goes to every layer that takes ``init`` and names none itself.
    """
    return [_layer(i, spec, default_init)[1] for i, spec in enumerate(specs)]


def model(cfg, input_shape):
    """The Sequential model of a config, built for the per-sample ``input_shape`` from ``train.seed``."""
    from .nn.model import Sequential

    input_shape = tuple(input_shape)
    specs, default_init = cfg["model"]["layers"], cfg["model"]["init"]
    dtype, seed = np.dtype(cfg["model"]["dtype"]), cfg["train"]["seed"]
    objects = layers(specs, default_init)
    try:
        return Sequential(objects, input_shape=input_shape, dtype=dtype, seed=seed)
    except (ConfigError, ValueError, TypeError) as e:
        error = e
    # Which layer does not fit? Build fresh copies one by one to find it (only on this error path).
    shape, rng = input_shape, np.random.default_rng(seed)
    for i, spec in enumerate(specs):
        what, layer = _layer(i, spec, default_init)
        try:
            shape = layer.build(shape, dtype, rng)
        except (ConfigError, ValueError, TypeError) as e:
            shown = "" if str(tuple(shape)) in str(e) else f" (its per-sample input shape is {tuple(shape)})"
            raise ConfigError(f"{what}: {e}{shown}") from None
    raise ConfigError(f"model.layers do not fit the input shape {input_shape}: {error}") from None


def loss(cfg):
    """The loss ``train.loss`` names."""
    from .nn import losses

    return losses.get(cfg["train"]["loss"])


# The keys of [optimizer] and [schedule] that the trainer reads itself and does not pass to the factory.
TRAINER_KEYS = {"optimizer": ("name", "lr", "lr_scaling", "base_batch"), "schedule": ()}


def factory_kwargs(cfg, section):
    """The keys of ``[optimizer]`` or ``[schedule]`` that go to its factory (not those the trainer reads)."""
    return {k: v for k, v in cfg[section].items() if k not in TRAINER_KEYS[section]}


def optimizer(cfg, model, lr, sync=None):
    """The optimizer ``[optimizer]`` configures, over ``model``'s parameter arena, starting at learning rate ``lr``
    (``optimizer.lr`` after batch-size scaling); weight decay only where ``model.decay_mask`` is True. With a
    gradient-sync strategy ``sync``, over what that strategy says this rank updates (its shard under ZeRO)."""
    from .nn.optim import make_optimizer

    def make(params, grads, decay_mask):
        return make_optimizer(cfg["optimizer"]["name"], params, grads, decay_mask=decay_mask, lr=lr,
                              **factory_kwargs(cfg, "optimizer"))

    return make(model.params_flat, model.grads_flat, model.decay_mask) if sync is None else sync.optimizer(make)


def schedule(cfg, lr0, total_steps):
    """The learning-rate schedule ``[schedule]`` configures, from ``lr0`` over ``total_steps`` optimizer steps."""
    from .nn.schedules import make_schedule

    return make_schedule(cfg["schedule"], lr0, total_steps)


def check(cfg):
    """A dry build of what a config names, before any data is opened (``config.validate`` ends with it): every
    layer (its type and keys; sizes are inferred later), the default initializer, the optimizer over a
    one-element dummy and the schedule. A bad layer, initializer, optimizer or schedule key is a ConfigError
    now, not after the data is read."""
    from .nn import init
    from .nn.optim import make_optimizer

    layers(cfg["model"]["layers"], cfg["model"]["init"])
    if cfg["model"]["init"]:
        try:
            init.get(cfg["model"]["init"])
        except (ConfigError, TypeError, ValueError) as e:
            raise ConfigError(f"config key model.init: {e}") from None
    dummy = np.zeros(1)
    make_optimizer(cfg["optimizer"]["name"], dummy, dummy.copy(), lr=cfg["optimizer"]["lr"],
                   **factory_kwargs(cfg, "optimizer"))
    schedule(cfg, cfg["optimizer"]["lr"], 100)
