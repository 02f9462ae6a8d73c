"""Training configs: TOML files (or presets shipped in the package), validated against one schema.

Every key has a type and a default; an unknown key or a wrong type is a ConfigError naming the key.
The README's "Configs" section documents the same table.
"""

import inspect
import sys
from importlib import resources
from pathlib import Path

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NUM = (int, float)

# section -> key -> (accepted types, default)
SCHEMA = {
    "data": {
        "path": (str, ""),              # prepared dataset folder; default data/<dataset>
        "dataset": (str, ""),           # catalog name, used for the default path and messages
        "val_fraction": (NUM, 0.0),     # held out of train for model selection / early stopping
        "reader": (str, "auto"),        # auto | memory | stream
        "augment_shift": (int, 0),      # random translation by up to k pixels
        "augment_flip": (bool, False),  # random horizontal flips
        "prefetch": ((int, str), "auto"),  # batches read ahead by a thread; auto: 2 when streaming, else 0
    },
    "model": {
        "layers": (list, None),         # list of tables: {type = "dense", out_features = 10, ...}
        "dtype": (str, "float32"),
        "init": ((str, dict), ""),      # default weight initializer for all layers ("" = each layer's own)
    },
    "train": {
        "epochs": (int, 1),
        "batch_size": (int, 128),       # the GLOBAL batch
        "accumulate": (int, 1),         # micro-steps per step (gradient accumulation)
        "seed": (int, 0),
        "loss": (str, "softmax_cross_entropy"),
        "clip_grad_norm": (NUM, 0.0),   # 0 = off
        "eval_every": (int, 0),         # steps; 0 = at epoch ends only
        "eval_batch_size": (int, 256),  # per rank; 1000 took 1 GB and was slower on the CNN
        "patience": (int, 0),           # early stopping on validation accuracy; 0 = off
        "nonfinite": (str, "stop"),     # stop | skip (skip the step, stop after max_skips)
        "max_skips": (int, 10),
        "max_steps": (int, 0),          # stop after this many steps (0 = all epochs)
        "log_every": (int, 50),         # steps between train metric lines
    },
    # [optimizer] and [schedule] take the keys of the optimizer or schedule they name (see distnet.optim
    # and distnet.schedules); their factories check them. These are the keys the trainer itself reads:
    "optimizer": {
        "name": (str, "sgd"),
        "lr": (NUM, 0.01),
        "lr_scaling": (str, "none"),    # none | linear | sqrt: scale lr by global batch / base_batch
        "base_batch": (int, 128),
    },
    "schedule": {
        "name": (str, "constant"),
    },
    "checkpoint": {
        "dir": (str, ""),
        "every": (int, 0),              # steps; 0 = at the end (and at epoch ends when dir is set)
        "keep": (int, 3),
    },
    "comm": {
        "bucket_mb": (NUM, 1.0),        # gradient bucket size
        "overlap": (bool, True),        # start each bucket's allreduce during backward
        "split_mb": (NUM, 0.25),        # send the first layer's dW in row blocks of this size (0 = whole)
    },
}


OPEN_SECTIONS = ("optimizer", "schedule")
TRAINER_KEYS = {"optimizer": ("name", "lr", "lr_scaling", "base_batch"), "schedule": ()}


def factory_kwargs(cfg, section):
    """The keys of [optimizer] or [schedule] that go to its factory."""
    return {k: v for k, v in cfg[section].items() if k not in TRAINER_KEYS[section]}


def _type_name(types):
    types = types if isinstance(types, tuple) else (types,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             dict: "a table"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


def _check(section, key, value):
    if section not in SCHEMA:
        raise ConfigError(f"unknown config section [{section}]: valid sections are {', '.join(SCHEMA)}")
    if key not in SCHEMA[section]:
        if section in OPEN_SECTIONS:
            return value
        raise ConfigError(f"unknown config key {section}.{key}: valid keys in [{section}] are "
                          f"{', '.join(SCHEMA[section])}")
    types, _ = SCHEMA[section][key]
    types = types if isinstance(types, tuple) else (types,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"config key {section}.{key} must be {_type_name(types)}, "
                          f"got {value!r} ({type(value).__name__})")
    return float(value) if types == (int, float) or types == (float,) else value


def defaults():
    return {s: {k: d for k, (_, d) in keys.items()} for s, keys in SCHEMA.items()}


def merge(cfg, overrides, source):
    """Validate ``overrides`` (nested dict) into ``cfg``; ``source`` names where they came from."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: the top level must be a table of sections")
    for section, table in overrides.items():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown config section [{section}]: valid sections are "
                              f"{', '.join(SCHEMA)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key, value in table.items():
            cfg[section][key] = _check(section, key, value)
    return cfg


def preset_names():
    return sorted(p.name[:-5] for p in resources.files("distnet.presets").iterdir() if p.name.endswith(".toml"))


def load_text(name_or_path):
    """The TOML text of a preset name or a config file path, and a label for messages."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist: pass a TOML file or a preset "
                              f"({', '.join(preset_names())})")
        return p.read_text(), str(p)
    res = resources.files("distnet.presets") / f"{name_or_path}.toml"
    if not res.is_file():
        raise ConfigError(f"unknown preset {name_or_path!r}: presets are {', '.join(preset_names())}, "
                          "or pass a path to a .toml file")
    return res.read_text(), f"preset {name_or_path}"


def parse_toml(text, label):
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{label} is not valid TOML: {e}") from None


def parse_set(item):
    """``section.key=value`` (value in TOML syntax, bare words as strings) -> nested dict."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set optimizer.lr=0.05")
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return {section: {key: value}}


def load(name_or_path, sets=()):
    """Defaults, then the config file or preset, then ``--set`` overrides; validated. Returns (cfg, text)."""
    text, label = load_text(name_or_path)
    cfg = merge(defaults(), parse_toml(text, label), label)
    for item in sets:
        cfg = merge(cfg, parse_set(item), f"--set {item}")
    validate(cfg, label)
    return cfg


def validate(cfg, label="config"):
    """Checks that span keys or need ranges."""
    if not cfg["model"]["layers"]:
        raise ConfigError(f"{label}: model.layers is empty: list the layers, e.g. "
                          "[[model.layers]] type = \"dense\" out_features = 10")
    for section, key, low in (("train", "epochs", 1), ("train", "batch_size", 1), ("train", "accumulate", 1),
                              ("train", "eval_batch_size", 1), ("checkpoint", "keep", 1)):
        if cfg[section][key] < low:
            raise ConfigError(f"config key {section}.{key} must be >= {low}, got {cfg[section][key]}")
    if not 0 <= cfg["data"]["val_fraction"] < 1:
        raise ConfigError(f"config key data.val_fraction must be in [0, 1), got {cfg['data']['val_fraction']}")
    choices = {("data", "reader"): ("auto", "memory", "stream"), ("train", "nonfinite"): ("stop", "skip"),
               ("model", "dtype"): ("float32", "float64"), ("optimizer", "lr_scaling"): ("none", "linear", "sqrt"),
               ("train", "loss"): tuple(LOSSES)}
    for (section, key), allowed in choices.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(f"config key {section}.{key} must be one of {', '.join(allowed)}, "
                              f"got {cfg[section][key]!r}")
    if cfg["comm"]["bucket_mb"] <= 0:
        raise ConfigError("config key comm.bucket_mb must be > 0")
    pf = cfg["data"]["prefetch"]
    if pf != "auto" and (not isinstance(pf, int) or pf < 0):
        raise ConfigError(f"config key data.prefetch must be \"auto\" or a number of batches >= 0, got {pf!r}")
    if cfg["comm"]["split_mb"] < 0:
        raise ConfigError("config key comm.split_mb must be >= 0 (0 sends the first layer's gradient whole)")
    # A dry build names a bad optimizer or schedule key now, before any data is opened.
    import numpy as np

    from .optim import make_optimizer
    from .schedules import make_schedule

    dummy = np.zeros(1)
    make_optimizer(cfg["optimizer"]["name"], dummy, dummy.copy(), lr=cfg["optimizer"]["lr"],
                   **factory_kwargs(cfg, "optimizer"))
    make_schedule(cfg["schedule"], cfg["optimizer"]["lr"], 100)


def to_toml(cfg):
    """Serialize a resolved config (stored in checkpoints so `distnet eval` can rebuild the model)."""
    lines = []
    for section, table in cfg.items():
        scalars = {k: v for k, v in table.items() if v is not None and k != "layers"}
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        lines.append("")
        if section == "model":
            for layer in table["layers"]:
                lines.append("[[model.layers]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in layer.items()]
                lines.append("")
    return "\n".join(lines)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return repr(v)
    return str(v)


# -- building objects from a config --------------------------------------------------------------------

def layer_registry():
    from . import layers as L

    return {
        "dense": L.Dense, "conv2d": L.Conv2D, "conv_transpose2d": L.ConvTranspose2D,
        "maxpool2d": L.MaxPool2D, "avgpool2d": L.AvgPool2D, "flatten": L.Flatten, "dropout": L.Dropout,
        "batchnorm": L.BatchNorm, "relu": L.ReLU, "leaky_relu": L.LeakyReLU, "sigmoid": L.Sigmoid,
        "tanh": L.Tanh, "softplus": L.Softplus, "elu": L.ELU, "selu": L.SELU, "softmax": L.Softmax,
    }


LOSSES = {"softmax_cross_entropy": "SoftmaxCrossEntropy", "mse": "MSE", "binary_cross_entropy": "BinaryCrossEntropy"}


def build_layers(specs, default_init=""):
    """Layer objects from ``[[model.layers]]`` tables; sizes left out are inferred from the input."""
    registry = layer_registry()
    out = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "type" not in spec:
            raise ConfigError(f"model.layers[{i}] must be a table with a 'type' key, e.g. type = \"dense\"")
        kwargs = dict(spec)
        kind = kwargs.pop("type")
        cls = registry.get(kind)
        if cls is None:
            raise ConfigError(f"model.layers[{i}].type {kind!r} is unknown: valid types are {', '.join(registry)}")
        sig = inspect.signature(cls.__init__)
        for key in kwargs:
            if key not in sig.parameters or key == "self":
                valid = [p for p in sig.parameters if p not in ("self", "dtype", "seed")]
                raise ConfigError(f"model.layers[{i}] ({kind}) has unknown key {key!r}: valid keys are "
                                  f"{', '.join(valid) or 'none'}")
        for first in ("in_features", "in_channels"):
            if first in sig.parameters and first not in kwargs:
                kwargs[first] = None
        if default_init and "init" in sig.parameters and "init" not in kwargs:
            kwargs["init"] = default_init
        try:
            out.append(cls(**kwargs))
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.layers[{i}] ({kind}): {e}") from None
    return out


def build_model(cfg, input_shape):
    """The Sequential model of a config, built for ``input_shape`` from the config's seed."""
    import numpy as np

    from .model import Sequential

    layers = build_layers(cfg["model"]["layers"], cfg["model"]["init"])
    try:
        return Sequential(layers, input_shape=tuple(input_shape), dtype=np.dtype(cfg["model"]["dtype"]),
                          seed=cfg["train"]["seed"])
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.layers do not fit the input shape {tuple(input_shape)}: {e}") from None


def build_loss(cfg):
    from . import losses

    return getattr(losses, LOSSES[cfg["train"]["loss"]])()
