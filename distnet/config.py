"""Training configs: TOML files (or presets shipped in the package), validated against one schema.

Every key has a type, a default and its bounds (a ``distnet.schema.Key``: numbers' ranges, strings' allowed
names, path keys' kind); an unknown key, a wrong type or a value out of bounds is a ConfigError naming the key,
the value and what is allowed, in one line. docs/guide/training.md ("Configs") documents the same table.

One road: a config is resolved in layers, each merged over the one before as a dict: the defaults, the file a
config ``extends`` (a preset or a path relative to it, itself resolved the same way), the config's own tables,
``--set`` items, then a command's own overrides (its flags, its settings) (``resolve``); ``validate`` then
holds every check, once (``load`` does both). Nothing changes a config after it was validated.
``distnet.build`` turns a validated config into objects.
"""

import math
import sys
from collections import ChainMap
from importlib import resources
from pathlib import Path

from . import build
from .comm import sync as strategies
from .comm.world import WAITS
from .errors import ConfigError
from .schema import Input, Key, Output, as_key, check_value, nonfinite, normalized, printable, type_ok

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NUM = (int, float)
SEED_MAX = 2 ** 32 - 1  # the seed range NumPy's legacy generators take; every seed of a run fits it


def _losses():
    from .nn.losses import LOSSES

    return tuple(LOSSES)


def _optimizers():
    from .nn.optim import OPTIMIZERS

    return tuple(OPTIMIZERS)


def _schedules():
    from .nn.schedules import SCHEDULES

    return tuple(SCHEDULES)


def _reader_modes():
    from .data.reader import MODES

    return tuple(MODES)


def _progress_modes():
    from .metrics import PROGRESS_MODES

    return tuple(PROGRESS_MODES)


def _lr_scalings():
    from .nn.schedules import LR_SCALING

    return tuple(LR_SCALING)


def _target_problem(text):
    """None for "" (no target) or a target some metric can reach, else what a target must be."""
    return None if not text or _parse_target(text) is not None else TARGET_WORDS


# section -> key -> Key(types, default, bounds...): see distnet.schema. docs/guide/training.md ("Configs")
# lists the same keys; tests/test_config_properties.py tries every key at and past its bounds.
SCHEMA = {
    "data": {
        # prepared dataset folder; default data/<dataset>
        "path": Key(str, "", path=Input("dataset folder", "--data")),
        "dataset": Key(str, ""),            # catalog name, used for the default path and messages
        "val_fraction": Key(NUM, 0.0, ge=0, lt=1),  # held out of train for model selection / early stopping
        "reader": Key(str, "auto", choices=_reader_modes),  # auto | memory | stream
        "augment_shift": Key(int, 0, ge=0),  # random translation by up to k pixels
        "augment_flip": Key(bool, False),   # random horizontal flips
        # batches read ahead by a thread; auto: 2 when streaming, else 0
        "prefetch": Key((int, str), "auto", ge=0, choices=("auto",)),
        # sample order: random (a permutation), or blocks (permuted blocks of consecutive rows, shuffled
        # within windows of blocks: near-sequential reads when streaming from disk)
        "order": Key(str, "random", choices=("random", "blocks")),
        "block_size": Key(int, 256, ge=1),  # blocks: consecutive rows per block
        "block_window": Key(int, 16, ge=1),  # blocks: blocks shuffled together
    },
    "model": {
        "layers": Key(list, None),          # list of tables: {type = "dense", out_features = 10, ...}
        "dtype": Key(str, "float32", choices=("float32", "float64")),
        "init": Key((str, dict), ""),       # default weight initializer for all layers ("" = each layer's own)
    },
    "train": {
        "epochs": Key(int, 1, ge=1),
        # the GLOBAL batch, or "auto": grown toward the noise scale
        "batch_size": Key((int, str), 128, ge=1, choices=("auto",)),
        "batch_min": Key(int, 128, ge=1),   # "auto": the first epoch's global batch
        "batch_max": Key(int, 8192, ge=1),  # "auto": the largest global batch
        "accumulate": Key(int, 1, ge=1),    # micro-steps per step (gradient accumulation)
        "seed": Key(int, 0, ge=0, le=SEED_MAX),
        "loss": Key(str, "softmax_cross_entropy", choices=_losses),
        "clip_grad_norm": Key(NUM, 0.0, ge=0),  # 0 = off
        "eval_every": Key(int, 0, ge=0),    # steps; 0 = at epoch ends only (with eval_growth: the smallest gap)
        "eval_growth": Key(NUM, 0.0, ge=0),  # also evaluate once the step count grew by this fraction (0 = off)
        "target": Key(str, "", check=_target_problem),  # "accuracy=0.88" or "loss=0.3": stop once reached
        "eval_batch_size": Key(int, 256, ge=1),  # per rank; larger batches cost memory for no speed
        "patience": Key(int, 0, ge=0),      # early stopping on validation accuracy; 0 = off
        "nonfinite": Key(str, "stop", choices=("stop", "skip")),  # skip: skip the step, stop after max_skips
        "max_skips": Key(int, 10, ge=0),
        "max_steps": Key(int, 0, ge=0),     # stop after this many steps (0 = all epochs)
        # a new run starting from this checkpoint's parameters (file or folder)
        "init_from": Key(str, "", path=Input("checkpoint", "--init-from")),
        "init_from_optimizer": Key(bool, False),  # ... and from its optimizer state (same optimizer and shapes)
        "log_every": Key(int, 50, ge=1),    # steps between train metric lines
        "noise_every": Key(int, 4, ge=0),   # measure the gradient noise scale every this many steps (0 = off)
        # its moving averages' decay per measured step (~80 steps at every 4)
        "noise_decay": Key(NUM, 0.95, ge=0, lt=1),
    },
    # [optimizer] and [schedule] take the keys of the optimizer or schedule they name (see distnet.nn.optim
    # and distnet.nn.schedules); their factories check them. These are the keys the trainer itself reads:
    "optimizer": {
        "name": Key(str, "sgd", choices=_optimizers),
        "lr": Key(NUM, 0.01, ge=0),  # 0: parameters stay (e.g. measuring the gradient noise at fixed ones)
        # scale lr by global batch / base_batch
        "lr_scaling": Key(str, "none", choices=_lr_scalings),
        "base_batch": Key(int, 128, ge=1),
    },
    "schedule": {
        "name": Key(str, "constant", choices=_schedules),
    },
    "checkpoint": {
        "dir": Key(str, "", path=Output("folder", "checkpoint folder", "--checkpoint-dir")),
        "every": Key(int, 0, ge=0),         # steps; 0 = at the end (and at epoch ends when dir is set)
        "keep": Key(int, 3, ge=1),
        "resume": Key(bool, False),         # continue from the newest checkpoint in dir
    },
    "log": {
        # write metrics JSON lines to this file (rank 0)
        "metrics": Key(str, "", path=Output("file", "metrics file", "--metrics", ours="is_metrics")),
        "progress": Key(str, "auto", choices=_progress_modes),  # auto | bar | lines | none: rank 0's display
        "profile": Key(bool, False),        # record the step-time breakdown in the metrics
        # write a Chrome trace-event timeline to this file
        "trace": Key(str, "", path=Output("file", "trace file", "--trace", ours="is_trace", replaced=True)),
        "quiet": Key(bool, False),          # print nothing but errors
    },
    # comm.sync names a registered gradient-sync strategy (distnet.comm.sync: auto, bucketed, flat, zero,
    # shm, fp16, bf16, powersgd, ...), and the strategies own their option keys (bucket_mb, overlap,
    # split_mb, error_feedback, powersgd_*: distnet.comm.sync.OPTIONS, read live, so a strategy registered
    # later brings its keys). A ChainMap lists its last table first: sync, the strategies' keys, the stall keys.
    "comm": ChainMap({
        "stall_warn_s": Key(NUM, 60, ge=0),  # a wait on a collective this long: name the ranks not come (0 = never)
        "stall_abort_s": Key(NUM, 600, ge=0),  # ... in the training step this long: abort, exit 1 (0 = never)
        "stall_io_abort_s": Key(NUM, 3600, ge=0),  # ... elsewhere (setup, evaluation, checkpoints): abort
        # how a rank waits on a collective between polls: yield the core (free when no other process wants
        # it), spin, or sleep (least CPU)
        "wait": Key(str, "yield", choices=tuple(WAITS)),
    }, strategies.OPTIONS, {
        "sync": Key(str, "auto", choices=strategies.names),  # gradient-sync strategy (auto: shm on one host
    }),                                                       # with room, else bucketed)
}


OPEN_SECTIONS = ("optimizer", "schedule")


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


def _did_you_mean(name, names):
    """" (did you mean X?)" for the closest of ``names`` to a mistyped ``name``, else ""."""
    import difflib

    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def key_spec(section, key):
    """The ``Key`` of ``section.key`` (None for a key of an open section's factory)."""
    entry = SCHEMA[section].get(key)
    return None if entry is None else as_key(entry)


def keys():
    """Every (section, key, Key) of the schema, in its order."""
    return [(section, key, as_key(entry)) for section, table in SCHEMA.items() for key, entry in table.items()]


def _check(section, key, value):
    """``value`` as stored under ``section.key``: a known key of an accepted type (an int for a float becomes a
    float). Bounds are ``validate``'s."""
    if section not in SCHEMA:
        raise ConfigError(f"unknown config section [{printable(section)}]{_did_you_mean(section, SCHEMA)}: valid "
                          f"sections are {', '.join(SCHEMA)}")
    if key not in SCHEMA[section]:
        if section in OPEN_SECTIONS:
            return value
        hint = " (extends goes at the top of the file, before any [section])" if key == "extends" else \
            _did_you_mean(key, SCHEMA[section])
        raise ConfigError(f"unknown config key {section}.{printable(key)}{hint}: valid keys in [{section}] are "
                          f"{', '.join(SCHEMA[section])}")
    spec = key_spec(section, key)
    if not type_ok(spec, value):
        raise ConfigError(f"config key {section}.{key} must be {spec.allowed()}, "
                          f"got {value!r} ({type(value).__name__})")
    return normalized(spec, value)


class Config(dict):
    """A config: {section: {key: value}}, and ``origin``: (section, key) -> where its value was set (a file, a
    preset, ``--set ...``, a flag), for messages. Plain dicts work wherever a Config does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.origin, self.label = {}, "config"


def defaults():
    return Config({s: {k: as_key(e).default for k, e in table.items()} for s, table in SCHEMA.items()})


def merge(cfg, overrides, source):
    """Merge ``overrides`` (nested dict) into ``cfg``; ``source`` names where they came from.

    Each key given replaces the one in ``cfg`` (a list such as model.layers as a whole). A new optimizer.name
    or schedule.name first drops the keys that only the old optimizer or schedule takes (see ``_switch``).
    Types are checked here (a value of the wrong type is not kept), bounds by ``validate`` once everything is
    merged: only the value that ends up in the config must be allowed.
    """
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: the top level must be a table of sections")
    origin = getattr(cfg, "origin", None)
    for section, table in overrides.items():
        if section not in SCHEMA:
            raise ConfigError(f"{printable(source)}: unknown config section [{printable(section)}]"
                              f"{_did_you_mean(section, SCHEMA)}: "
                              f"valid sections are {', '.join(SCHEMA)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        if section in OPEN_SECTIONS and "name" in table:
            try:
                name = _check(section, "name", table["name"])
            except ConfigError as e:
                raise ConfigError(f"{e} (from {printable(source)})") from None
            _switch(cfg, section, name)
        for key, value in table.items():
            try:
                cfg[section][key] = _check(section, key, value)
            except ConfigError as e:
                raise ConfigError(f"{e} (from {printable(source)})") from None
            if origin is not None:
                origin[section, key] = source
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


def resolve(name_or_path, sets=(), overrides=()):
    """Defaults, then the config file or preset (over the one it extends), then ``--set`` items, then
    ``overrides`` ((source, nested dict) pairs, in order: a command's flags, its own settings), merged and NOT
    yet validated: a command that derives settings from the config reads them here, merges its overrides and
    then validates once (``validate``)."""
    cfg = _resolve(name_or_path)
    cfg.label = load_text(name_or_path)[1]
    for item in sets:
        cfg = merge(cfg, parse_set(item), f"--set {item}")
    for source, table in overrides:
        cfg = merge(cfg, table, source)
    return cfg


def derive(cfg, overrides, source):
    """A new config: a copy of ``cfg`` with ``overrides`` (nested dict) merged, validated once; ``cfg`` itself
    is not changed (a command running one config at several settings, e.g. calibrate's batch sizes)."""
    import copy

    return validate(merge(copy.deepcopy(cfg), overrides, source))


def load(name_or_path, sets=(), overrides=()):
    """``resolve``, validated: the config a command runs with. Nothing changes it afterwards."""
    return validate(resolve(name_or_path, sets, overrides))


def data_path(cfg):
    """The prepared dataset folder a config names: data.path, else data/<data.dataset>."""
    if cfg["data"]["path"]:
        return cfg["data"]["path"]
    if cfg["data"]["dataset"]:
        return f"data/{cfg['data']['dataset']}"
    raise ConfigError("no dataset given: pass --data DIR or set data.path in the config")


TARGET_METRICS = {"accuracy": 1, "loss": -1}  # metric -> direction: reached at or above (1), at or below (-1)
# what a target's value may be: a value no evaluation can reach would let a run train to its cap unnoticed
TARGET_VALUES = {"accuracy": Key(NUM, 1.0, gt=0, le=1), "loss": Key(NUM, 0.0, ge=0)}
TARGET_WORDS = "METRIC=VALUE with accuracy in (0, 1] or loss >= 0, e.g. accuracy=0.88 or loss=0.3"


def _parse_target(text):
    """(metric, value) of a reachable target, else None."""
    metric, _, value = str(text).partition("=")
    metric = metric.strip()
    try:
        value = float(value)
    except ValueError:
        return None
    spec = TARGET_VALUES.get(metric)
    if spec is None or not math.isfinite(value) or not spec.in_bounds(value):
        return None
    return metric, value


def parse_target(text, what="target"):
    """``"accuracy=0.88"`` -> ("accuracy", 0.88); "" -> None. A bad or unreachable one (accuracy outside (0, 1],
    loss < 0) is a ConfigError naming ``what``."""
    if not text:
        return None
    target = _parse_target(text)
    if target is None:
        raise ConfigError(f"{what} {text!r}: expected {TARGET_WORDS}")
    return target


def target_reached(target, loss, accuracy):
    """Whether an evaluation's (loss, accuracy) reaches ``target`` (a ``parse_target`` pair)."""
    metric, value = target
    got = accuracy if metric == "accuracy" else loss
    return got >= value if TARGET_METRICS[metric] > 0 else got <= value


def _from(cfg, section, key):
    """`` (from SOURCE)`` where ``cfg`` knows where ``section.key`` was set, else ""."""
    where = getattr(cfg, "origin", {}).get((section, key))
    return f" (from {printable(where)})" if where else ""


def _cross_checks(cfg):
    """Checks that span keys: (keys named, the error) for the first that fails, else None."""
    tc = cfg["train"]
    if tc["batch_size"] == "auto":
        if tc["batch_min"] > tc["batch_max"]:
            return ("train", "batch_min"), (f"train.batch_size = \"auto\" needs train.batch_min <= train.batch_max, "
                                            f"got {tc['batch_min']} and {tc['batch_max']}")
        if tc["noise_every"] < 1:
            return ("train", "noise_every"), ("train.batch_size = \"auto\" grows the batch toward the gradient "
                                              "noise scale: set train.noise_every >= 1 (it is 0, off)")
    return None


def validate(cfg, label=None):
    """Every check of a merged config, before any data is opened: each schema key against its ``Key`` (type,
    bounds, allowed names, check function), no NaN or infinity anywhere (the open sections and the layer
    tables too), the checks that span keys, then a dry build of the layers, optimizer and schedule
    (``build.check``). A ConfigError names the key, the value and what is allowed, in one line."""
    label = label or getattr(cfg, "label", "config")
    if not cfg["model"]["layers"]:
        raise ConfigError(f"{label}: model.layers is empty: list the layers, e.g. "
                          "[[model.layers]] type = \"dense\" out_features = 10")
    for section, key, spec in keys():
        try:
            check_value(f"{section}.{key}", spec, cfg[section][key])
        except ConfigError as e:
            raise ConfigError(f"{e}{_from(cfg, section, key)}") from None
    for section, table in cfg.items():
        for key, value in table.items():
            found = nonfinite(value, f"{section}.{key}")
            if found:
                raise ConfigError(f"config key {found[0]} must be a finite number, got {found[1]!r}"
                                  f"{_from(cfg, section, key)}")
    failed = _cross_checks(cfg)
    if failed:
        raise ConfigError(f"{failed[1]}{_from(cfg, *failed[0])}")
    build.check(cfg)
    return cfg


def outputs(cfg):
    """(section.key, value, ``Output``) of every path key the config sets that distnet writes to."""
    return [(f"{section}.{key}", cfg[section][key], spec.path) for section, key, spec in keys()
            if isinstance(spec.path, Output) and cfg[section][key]]


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
    if isinstance(v, str):  # a basic string: backslash, quote and control characters escaped (TOML allows none raw)
        return '"' + "".join("\\" + c if c in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F
                             else c for c in v) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return repr(v)
    return str(v)
