"""Training configs: TOML files (or presets shipped in the package), validated against one schema.

Every key has a type and a default; an unknown key or a wrong type is a ConfigError naming the key.
docs/guide/training.md ("Configs") documents the same table. A config is resolved in layers, each merged over
the one before: the defaults, the file a config ``extends`` (a preset or a path relative to it, itself
resolved the same way), the config's own tables, then ``--set`` overrides (see ``merge`` for the rules).
``distnet.build`` turns a resolved config into objects.
"""

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
        "batch_size": ((int, str), 128),  # the GLOBAL batch, or "auto": grown toward the noise scale
        "batch_min": (int, 128),        # "auto": the first epoch's global batch
        "batch_max": (int, 8192),       # "auto": the largest global batch
        "accumulate": (int, 1),         # micro-steps per step (gradient accumulation)
        "seed": (int, 0),
        "loss": (str, "softmax_cross_entropy"),
        "clip_grad_norm": (NUM, 0.0),   # 0 = off
        "eval_every": (int, 0),         # steps; 0 = at epoch ends only (with eval_growth: the smallest gap)
        "eval_growth": (NUM, 0.0),      # also evaluate once the step count grew by this fraction (0 = off)
        "target": (str, ""),            # "accuracy=0.88" or "loss=0.3": stop once evaluation reaches it
        "eval_batch_size": (int, 256),  # per rank; larger batches cost memory (a CNN's activations) for no speed
        "patience": (int, 0),           # early stopping on validation accuracy; 0 = off
        "nonfinite": (str, "stop"),     # stop | skip (skip the step, stop after max_skips)
        "max_skips": (int, 10),
        "max_steps": (int, 0),          # stop after this many steps (0 = all epochs)
        "init_from": (str, ""),         # a new run starting from this checkpoint's parameters (file or folder)
        "init_from_optimizer": (bool, False),  # ... and from its optimizer state (same optimizer and shapes)
        "log_every": (int, 50),         # steps between train metric lines
        "noise_every": (int, 4),        # measure the gradient noise scale every this many steps (0 = off)
        "noise_decay": (NUM, 0.95),     # its moving averages' decay per measured step (~80 steps at every 4)
    },
    # [optimizer] and [schedule] take the keys of the optimizer or schedule they name (see distnet.nn.optim
    # and distnet.nn.schedules); their factories check them. These are the keys the trainer itself reads:
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
        "resume": (bool, False),        # continue from the newest checkpoint in dir
    },
    "log": {
        "metrics": (str, ""),           # write metrics JSON lines to this file (rank 0)
        "progress": (str, "auto"),      # auto | bar | lines | none: rank 0's progress display
        "profile": (bool, False),       # record the step-time breakdown in the metrics
        "trace": (str, ""),             # write a Chrome trace-event timeline to this file
        "quiet": (bool, False),         # print nothing but errors
    },
    "comm": {
        "sync": (str, "auto"),          # gradient-sync strategy: auto (shm on one host, else bucketed)
                                        # | bucketed (overlapped) | flat (one allreduce)
                                        # | zero (optimizer state sharded over the ranks) | shm (zero
                                        # through shared memory, one host) | fp16 | bf16
                                        # (16-bit gradients on the wire) | powersgd (low-rank gradients)
        "error_feedback": (bool, True),  # fp16/bf16/powersgd: carry what compression dropped to the next step
        "powersgd_rank": (int, 4),      # powersgd: rank of each matrix gradient's approximation
        "powersgd_warmup": (int, 10),   # powersgd: steps sent uncompressed first
        "powersgd_min_size": (int, 4096),  # powersgd: matrices with fewer elements are sent uncompressed
        "bucket_mb": (NUM, 1.0),        # gradient bucket size
        "overlap": (bool, True),        # start each bucket's allreduce during backward
        "split_mb": (NUM, 0.25),        # send the first layer's dW in row blocks of this size (0 = whole)
        "stall_warn_s": (NUM, 60),        # a wait on a collective this long: name the ranks that have not come
        "stall_abort_s": (NUM, 600),      # ... in the training step this long: abort, exit 1 (0 = never)
        "stall_io_abort_s": (NUM, 3600),  # ... elsewhere (setup, evaluation, checkpoints) this long: abort
    },
}


OPEN_SECTIONS = ("optimizer", "schedule")


PROGRESS = ("auto", "bar", "lines", "none")


def _factory_keys(section, name):
    """The keys optimizer or schedule ``name`` takes from its table, or None for an unknown name."""
    from .nn.optim import optimizer_keys
    from .nn.schedules import WARMUP_KEYS, schedule_keys

    try:
        return set(optimizer_keys(name)) if section == "optimizer" else {*schedule_keys(name), *WARMUP_KEYS}
    except ConfigError:
        return None


def _switch(cfg, section, name):
    """Before [optimizer] or [schedule] changes its name to ``name``: drop the keys that only the old one takes
    (a preset's adam beta1 means nothing to sgd). Keys the trainer reads stay, and so do keys valid for neither,
    so that they are still reported."""
    old_keys, new_keys = _factory_keys(section, cfg[section].get("name")), _factory_keys(section, name)
    if cfg[section].get("name") == name or old_keys is None or new_keys is None:
        return
    for key in list(cfg[section]):
        if key in old_keys and key not in new_keys and key not in SCHEMA[section]:
            del cfg[section][key]


def _type_name(types):
    types = types if isinstance(types, tuple) else (types,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             dict: "a table"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


def _did_you_mean(name, names):
    """" (did you mean X?)" for the closest of ``names`` to a mistyped ``name``, else ""."""
    import difflib

    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _check(section, key, value):
    if section not in SCHEMA:
        raise ConfigError(f"unknown config section [{section}]{_did_you_mean(section, SCHEMA)}: valid sections "
                          f"are {', '.join(SCHEMA)}")
    if key not in SCHEMA[section]:
        if section in OPEN_SECTIONS:
            return value
        hint = " (extends goes at the top of the file, before any [section])" if key == "extends" else \
            _did_you_mean(key, SCHEMA[section])
        raise ConfigError(f"unknown config key {section}.{key}{hint}: valid keys in [{section}] are "
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
    """Validate ``overrides`` (nested dict) into ``cfg``; ``source`` names where they came from.

    Each key given replaces the one in ``cfg`` (a list such as model.layers as a whole). A new optimizer.name
    or schedule.name first drops the keys that only the old optimizer or schedule takes (see ``_switch``).
    """
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: the top level must be a table of sections")
    for section, table in overrides.items():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown config section [{section}]{_did_you_mean(section, SCHEMA)}: "
                              f"valid sections are {', '.join(SCHEMA)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        if section in OPEN_SECTIONS and "name" in table:
            _switch(cfg, section, _check(section, "name", table["name"]))
        for key, value in table.items():
            cfg[section][key] = _check(section, key, value)
    return cfg


def preset_names():
    return sorted(p.name[:-5] for p in resources.files("distnet.presets").iterdir() if p.name.endswith(".toml"))


def load_text(name_or_path):
    """The TOML text of a preset name or a config file path, and a label for messages."""
    text, label, _ = _source(name_or_path)
    return text, label


def _source(ref, folder=None, presets_only=False):
    """(text, label, file) of a preset name or a config file path (relative to ``folder`` when given); ``file``
    is the resolved path, None for a preset. ``presets_only``: ``ref`` names a preset (".toml" optional)."""
    p = Path(ref)
    if folder is not None and not p.is_absolute():
        p = folder / p
    if not presets_only and (p.suffix == ".toml" or p.exists()):
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist: pass a TOML file or a preset "
                              f"({', '.join(preset_names())})")
        label = str(p)
        if folder is not None:  # as the user would name it, where it is under the working directory
            try:
                label = str(p.resolve().relative_to(Path.cwd().resolve()))
            except ValueError:
                pass
        return p.read_text(), label, p.resolve()
    name = ref[:-5] if presets_only and ref.endswith(".toml") else ref
    res = resources.files("distnet.presets") / f"{name}.toml"
    if not res.is_file():
        raise ConfigError(f"unknown preset {name!r}: presets are {', '.join(preset_names())}, "
                          "or pass a path to a .toml file")
    return res.read_text(), f"preset {name}", None


def _resolve(ref, folder=None, presets_only=False, chain=()):
    """The config ``ref`` names, merged over defaults or over the config it ``extends``, recursively.
    ``chain``: (identity, label) of the configs extending this one, to report a cycle."""
    text, label, file = _source(ref, folder, presets_only)
    identity = str(file) if file is not None else f"preset {label[len('preset '):]}"
    seen = [c[0] for c in chain]
    if identity in seen:
        cycle = [c[1] for c in chain[seen.index(identity):]] + [label]
        raise ConfigError(f"configs extend each other in a cycle: {' -> '.join(cycle)}: remove one extends")
    data = parse_toml(text, label)
    base = data.pop("extends", None)
    if base is None:
        return merge(defaults(), data, label)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{label}: extends must be a preset name or a path to a .toml file, got {base!r}")
    # A preset extends presets only; a file extends a preset or a file, a path relative to its own folder.
    try:
        cfg = _resolve(base, None if file is None else file.parent, file is None, (*chain, (identity, label)))
    except ConfigError as e:
        if not str(e).startswith(("unknown preset", "config file")):
            raise
        raise ConfigError(f"{label}: extends = {base!r}: {e}") from None
    return merge(cfg, data, label)


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
    """Defaults, then the config file or preset (over the one it extends), then ``--set`` overrides; validated."""
    cfg = _resolve(name_or_path)
    label = load_text(name_or_path)[1]
    for item in sets:
        cfg = merge(cfg, parse_set(item), f"--set {item}")
    validate(cfg, label)
    return cfg


def data_path(cfg):
    """The prepared dataset folder a config names: data.path, else data/<data.dataset>."""
    if cfg["data"]["path"]:
        return cfg["data"]["path"]
    if cfg["data"]["dataset"]:
        return f"data/{cfg['data']['dataset']}"
    raise ConfigError("no dataset given: pass --data DIR or set data.path in the config")


TARGET_METRICS = {"accuracy": 1, "loss": -1}  # metric -> direction: reached at or above (1), at or below (-1)


def parse_target(text, what="target"):
    """``"accuracy=0.88"`` -> ("accuracy", 0.88); "" -> None. A bad one is a ConfigError naming ``what``."""
    if not text:
        return None
    metric, _, value = text.partition("=")
    try:
        value = float(value)
    except ValueError:
        value = None
    if metric.strip() not in TARGET_METRICS or value is None:
        raise ConfigError(f"{what} {text!r}: expected METRIC=VALUE with METRIC "
                          f"{' or '.join(TARGET_METRICS)}, e.g. accuracy=0.88")
    return metric.strip(), value


def target_reached(target, loss, accuracy):
    """Whether an evaluation's (loss, accuracy) reaches ``target`` (a ``parse_target`` pair)."""
    metric, value = target
    got = accuracy if metric == "accuracy" else loss
    return got >= value if TARGET_METRICS[metric] > 0 else got <= value


def validate(cfg, label="config"):
    """Checks that span keys or need ranges."""
    if not cfg["model"]["layers"]:
        raise ConfigError(f"{label}: model.layers is empty: list the layers, e.g. "
                          "[[model.layers]] type = \"dense\" out_features = 10")
    bs = cfg["train"]["batch_size"]
    if isinstance(bs, str) and bs != "auto":
        raise ConfigError(f"config key train.batch_size must be a number of samples or \"auto\", got {bs!r}")
    if bs == "auto" and not 1 <= cfg["train"]["batch_min"] <= cfg["train"]["batch_max"]:
        raise ConfigError(f"train.batch_size = \"auto\" needs 1 <= train.batch_min <= train.batch_max, got "
                          f"{cfg['train']['batch_min']} and {cfg['train']['batch_max']}")
    if bs == "auto" and cfg["train"]["noise_every"] < 1:
        raise ConfigError("train.batch_size = \"auto\" grows the batch toward the gradient noise scale: set "
                          "train.noise_every >= 1 (it is 0, off)")
    for section, key, low in (("train", "epochs", 1), ("train", "batch_size", 1), ("train", "accumulate", 1),
                              ("train", "eval_batch_size", 1), ("checkpoint", "keep", 1)):
        if key == "batch_size" and bs == "auto":
            continue
        if cfg[section][key] < low:
            raise ConfigError(f"config key {section}.{key} must be >= {low}, got {cfg[section][key]}")
    if cfg["train"]["eval_growth"] < 0:
        raise ConfigError(f"config key train.eval_growth must be >= 0, got {cfg['train']['eval_growth']}")
    parse_target(cfg["train"]["target"], "config key train.target")
    if not 0 <= cfg["data"]["val_fraction"] < 1:
        raise ConfigError(f"config key data.val_fraction must be in [0, 1), got {cfg['data']['val_fraction']}")
    from .nn.losses import LOSSES

    choices = {("data", "reader"): ("auto", "memory", "stream"), ("train", "nonfinite"): ("stop", "skip"),
               ("model", "dtype"): ("float32", "float64"), ("optimizer", "lr_scaling"): ("none", "linear", "sqrt"),
               ("train", "loss"): tuple(LOSSES), ("log", "progress"): PROGRESS,
               ("comm", "sync"): ("auto", "bucketed", "flat", "zero", "shm", "fp16", "bf16",
                                  "powersgd")}
    for (section, key), allowed in choices.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(f"config key {section}.{key} must be one of {', '.join(allowed)}, "
                              f"got {cfg[section][key]!r}")
    for key, lo in (("powersgd_rank", 1), ("powersgd_warmup", 0), ("powersgd_min_size", 0)):
        if cfg["comm"][key] < lo:
            raise ConfigError(f"config key comm.{key} must be >= {lo}, got {cfg['comm'][key]}")
    if cfg["comm"]["bucket_mb"] <= 0:
        raise ConfigError("config key comm.bucket_mb must be > 0")
    pf = cfg["data"]["prefetch"]
    if pf != "auto" and (not isinstance(pf, int) or pf < 0):
        raise ConfigError(f"config key data.prefetch must be \"auto\" or a number of batches >= 0, got {pf!r}")
    for key in ("stall_warn_s", "stall_abort_s", "stall_io_abort_s"):
        if cfg["comm"][key] < 0:
            raise ConfigError(f"config key comm.{key} must be >= 0 seconds (0 = never)")
    if cfg["comm"]["split_mb"] < 0:
        raise ConfigError("config key comm.split_mb must be >= 0 (0 sends the first layer's gradient whole)")
    # A dry build names a bad layer, optimizer or schedule key now, before any data is opened.
    import numpy as np

    from . import build
    from .nn.optim import make_optimizer

    build.layers(cfg["model"]["layers"], cfg["model"]["init"])
    dummy = np.zeros(1)
    make_optimizer(cfg["optimizer"]["name"], dummy, dummy.copy(), lr=cfg["optimizer"]["lr"],
                   **build.factory_kwargs(cfg, "optimizer"))
    build.schedule(cfg, cfg["optimizer"]["lr"], 100)


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
