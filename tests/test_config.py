"""Configs: extends, name changes in [optimizer]/[schedule], layer error messages, and the registries that
``distnet.build`` turns a config into."""

from types import SimpleNamespace

import numpy as np
import pytest

from distnet import build
from distnet import config as C
from distnet.errors import ConfigError, UserError
from distnet.nn import init, losses, optim, schedules
from distnet.nn.layers import LAYER_TYPES, AvgPool2D, Conv2D, ConvTranspose2D, Dense, MaxPool2D

from .helpers import run_distnet

PRESETS = C.preset_names()


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- extends ------------------------------------------------------------------------------------------

def test_a_config_extends_a_preset_and_holds_only_what_differs(tmp_path):
    cfg = C.load(write(tmp_path / "c.toml", 'extends = "fashion-mlp"\n[optimizer]\nname = "sgd"\n'))
    base = C.load("fashion-mlp")
    assert cfg["optimizer"] == {"name": "sgd", "lr": base["optimizer"]["lr"], "lr_scaling": "none", "base_batch": 128}
    assert cfg["model"] == base["model"] and cfg["train"] == base["train"] and cfg["schedule"] == base["schedule"]
    assert "extends" not in C.to_toml(cfg)  # the resolved config stands alone (checkpoints store it)
    assert C.merge(C.defaults(), C.parse_toml(C.to_toml(cfg), "x"), "x") == cfg


def test_extends_a_path_relative_to_the_extending_file_recursively(tmp_path, monkeypatch):
    write(tmp_path / "base" / "net.toml", 'extends = "spirals-mlp"\n[train]\nepochs = 3\nseed = 7\n'
          '[model]\nlayers = [{ type = "dense", out_features = 2 }]\n')
    write(tmp_path / "runs" / "a.toml", 'extends = "../base/net.toml"\n[train]\nepochs = 4\n')
    monkeypatch.chdir(tmp_path / "runs")  # the path is relative to the file, not to the working directory
    cfg = C.load("a.toml", ["train.batch_size=32"])
    assert (cfg["train"]["epochs"], cfg["train"]["seed"], cfg["train"]["batch_size"]) == (4, 7, 32)
    assert cfg["model"]["layers"] == [{"type": "dense", "out_features": 2}]  # a list replaces the base's whole
    assert cfg["data"]["dataset"] == "spirals" and cfg["optimizer"]["name"] == "adam"


@pytest.mark.parametrize("files,message", [
    ({"a.toml": 'extends = "a.toml"\n'}, "cycle: a.toml -> a.toml"),
    ({"a.toml": 'extends = "b.toml"\n', "b.toml": 'extends = "a.toml"\n'}, "cycle: a.toml -> b.toml -> a.toml"),
    ({"a.toml": 'extends = "no-such-preset"\n'}, "a.toml: extends = 'no-such-preset': unknown preset"),
    ({"a.toml": 'extends = "missing.toml"\n'}, "a.toml: extends = 'missing.toml': config file"),
    ({"a.toml": "extends = 3\n"}, "extends must be a preset name or a path"),
    ({"a.toml": '[train]\nextends = "spirals-mlp"\n'}, "extends goes at the top of the file"),
    ({"a.toml": 'extends = "b.toml"\n', "b.toml": 'extends = "spirals-mlp"\n[train]\nepoch = 2\n'},
     "unknown config key train.epoch"),
])
def test_bad_extends_are_user_errors_naming_the_file(tmp_path, monkeypatch, files, message):
    for name, text in files.items():
        write(tmp_path / name, text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="extends|unknown config key") as e:
        C.load("a.toml")
    assert message in str(e.value)


def test_a_three_line_config_trains(tmp_path, spirals_data):
    cfg = write(tmp_path / "c.toml", 'extends = "spirals-mlp"\n[optimizer]\nname = "sgd"\n')
    r = run_distnet(["train", cfg, "--print-config"], timeout=60)
    assert r.returncode == 0, r.stderr
    assert 'name = "sgd"' in r.stdout and 'dataset = "spirals"' in r.stdout and "beta1" not in r.stdout
    r = run_distnet(["train", cfg, "--data", spirals_data, "--set", "train.max_steps=20", "--quiet"], timeout=120)
    assert r.returncode == 0, r.stderr


# -- changing optimizer.name or schedule.name ---------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("sets", [["optimizer.name=sgd", "optimizer.momentum=0.9"],
                                  ["optimizer.momentum=0.9", "optimizer.name=sgd"]])
def test_a_new_optimizer_name_drops_the_old_ones_keys_on_every_preset(preset, sets):
    base = C.load(preset)
    cfg = C.load(preset, sets)
    assert cfg["optimizer"] == {"name": "sgd", "lr": base["optimizer"]["lr"], "lr_scaling": "none",
                                "base_batch": 128, "momentum": 0.9}
    p = np.zeros(4, np.float32)
    model = SimpleNamespace(params_flat=p, grads_flat=np.ones_like(p), decay_mask=np.ones(4, bool))
    opt = build.optimizer(cfg, model, 0.1)
    assert isinstance(opt, optim.SGD) and opt.momentum == 0.9 and opt.lr == 0.1


@pytest.mark.parametrize("preset", PRESETS)
def test_a_new_schedule_name_drops_the_old_ones_keys_on_every_preset(preset):
    base = C.load(preset)
    cfg = C.load(preset, ["schedule.name=constant"])
    kept = {k: v for k, v in base["schedule"].items() if k in schedules.WARMUP_KEYS}
    assert cfg["schedule"] == {"name": "constant", **kept}
    assert build.schedule(cfg, 0.5, 1000)(999) == 0.5


def test_keys_both_take_and_trainer_keys_stay():
    cfg = C.load("fashion-mlp", ["optimizer.eps=1e-6", "optimizer.lr_scaling=sqrt", "optimizer.weight_decay=0.1",
                                 "optimizer.name=rmsprop"])
    assert cfg["optimizer"] == {"name": "rmsprop", "lr": 0.002, "lr_scaling": "sqrt", "base_batch": 128,
                                "eps": 1e-6, "weight_decay": 0.1}
    cfg = C.load("shapes-cnn", ["schedule.name=onecycle"])
    assert cfg["schedule"] == {"name": "onecycle", "warmup_steps": 50}
    cfg = C.load("fashion-mlp", ["schedule.name=exponential", "schedule.decay_steps=10"])
    assert cfg["schedule"] == {"name": "exponential", "decay_steps": 10}


@pytest.mark.parametrize("sets,message", [
    (["optimizer.name=sgd", "optimizer.beta3=1"],
     "unknown key 'beta3' for optimizer 'sgd' (valid: lr, weight_decay, l1, momentum, nesterov)"),
    (["optimizer.beta1=0.8", "optimizer.name=sgd", "optimizer.beta1=0.8"], "unknown key 'beta1' for optimizer 'sgd'"),
    (["optimizer.momentum=0.9"], "'momentum' is a key of sgd, momentum, nesterov: change the optimizer too, "
                                 "e.g. --set optimizer.name=momentum"),
    (["schedule.name=constant", "schedule.min_lr=0.1"], "unknown key 'min_lr' for schedule 'constant' "
                                                        "(valid: name, warmup_steps, warmup_start_factor)"),
    (["schedule.name=cosine", "schedule.decay_rate=0.5"], "e.g. --set schedule.name=exponential"),
    (["optimizer.name=adamax"], "config key optimizer.name must be one of sgd, momentum, nesterov"),
])
def test_keys_the_named_optimizer_or_schedule_does_not_take_are_still_errors(sets, message):
    with pytest.raises(ConfigError) as e:
        C.load("fashion-mlp", sets)
    assert message in str(e.value)


def test_a_config_file_changing_the_name_drops_the_bases_keys(tmp_path):
    cfg = C.load(write(tmp_path / "c.toml", 'extends = "fashion-cnn"\n[optimizer]\nname = "nesterov"\n'
                                            'momentum = 0.8\n[schedule]\nname = "power"\ndecay_steps = 100\n'))
    assert cfg["optimizer"] == {"name": "nesterov", "lr": 0.002, "lr_scaling": "none", "base_batch": 128,
                                "momentum": 0.8}
    assert cfg["schedule"] == {"name": "power", "warmup_steps": 100, "decay_steps": 100}  # warm-up is the trainer's


# -- layer errors ---------------------------------------------------------------------------------------

LAYERS_OK = ['{ type = "flatten" }', '{ type = "dense", out_features = 8 }', '{ type = "relu" }']


@pytest.mark.parametrize("bad,message", [
    ('{ type = "dense", out_features = 0 }', "layer 3, Dense(?, 0): Dense sizes must be >= 1"),
    ('{ type = "dense", units = 3 }', "layer 3, Dense(?, ?): unknown key 'units' for dense: valid keys are "
                                      "in_features, out_features, init, bias"),
    ('{ type = "dense" }', "layer 3, Dense(?, ?): dense needs key 'out_features'"),
    ('{ type = "dense", out_features = 2, init = "xavier" }', "layer 3, Dense(?, 2, init='xavier'): unknown "
                                                              "initializer 'xavier'"),
    ('{ type = "conv2d", out_channels = 4, kernel_size = 3, padding = "full" }',
     "layer 3, Conv2D(?, 4, 3, padding='full'): padding must be"),
    ('{ type = "maxpool2d", kernel_size = 0 }', "layer 3, MaxPool2D(0): MaxPool2D: kernel_size and stride"),
    ('{ type = "dense3d" }', "layer 3, type 'dense3d': unknown layer type: valid types are avgpool2d, batchnorm"),
    ('"dense"', "layer 3: model.layers[3] must be a table with a 'type' key"),
])
def test_layer_errors_name_the_index_and_type(bad, message):
    layers = "[" + ", ".join([*LAYERS_OK, bad]) + "]"
    with pytest.raises(ConfigError) as e:
        C.load("spirals-mlp", [f"model.layers={layers}"])
    assert message in str(e.value)


@pytest.mark.parametrize("layers,shape,message", [
    ('[{ type = "dense", out_features = 8 }, { type = "relu" }, { type = "maxpool2d", kernel_size = 2 }]', (2,),
     "layer 2, MaxPool2D(2): MaxPool2D needs per-sample input (C, H, W), got (8,)"),
    ('[{ type = "conv2d", out_channels = 3, kernel_size = 5 }, { type = "dense", out_features = 2 }]', (1, 28, 28),
     "layer 1, Dense(?, 2): Dense needs a 1-D per-sample input, got shape (3, 24, 24): put a Flatten() before it"),
    ('[{ type = "maxpool2d", kernel_size = 2 }, { type = "conv2d", out_channels = 3, kernel_size = 15 }]',
     (1, 28, 28), "layer 1, Conv2D(?, 3, 15): kernel 15x15 does not fit the padded input 14x14"),
    ('[{ type = "dense", in_features = 3, out_features = 2 }]', (2,), "layer 0, Dense(3, 2): Dense(3, 2) got "
                                                                       "per-sample input shape (2,)"),
])
def test_layers_that_do_not_fit_the_input_are_named(layers, shape, message):
    cfg = C.load("spirals-mlp", [f"model.layers={layers}"])
    with pytest.raises(ConfigError) as e:
        build.model(cfg, shape)
    assert message in str(e.value)


@pytest.mark.parametrize("layer,x", [
    (Dense(4, 3), np.zeros((2, 5), np.float32)),
    (Conv2D(2, 3, 3), np.zeros((2, 1, 6, 6), np.float32)),
    (Conv2D(2, 3, 5), np.zeros((2, 2, 3, 3), np.float32)),
    (ConvTranspose2D(2, 3, 3, padding=2), np.zeros((2, 2, 1, 1), np.float32)),
    (MaxPool2D(3), np.zeros((2, 1, 2, 2), np.float32)),
    (AvgPool2D(2), np.zeros((2, 4), np.float32)),
])
def test_a_shape_mismatch_in_forward_is_a_program_error_not_a_user_error(layer, x):
    with pytest.raises(ValueError) as e:
        layer.forward(x)
    assert not isinstance(e.value, UserError)


# -- registries ---------------------------------------------------------------------------------------

REQUIRED_VALUES = {"out_features": 3, "out_channels": 2, "kernel_size": 2}


@pytest.mark.parametrize("kind", sorted(LAYER_TYPES))
def test_every_registered_layer_type_builds_from_a_config(kind):
    cls = LAYER_TYPES[kind]
    assert cls.type_name == kind
    spec = {"type": kind, **{k: v for k, v in REQUIRED_VALUES.items() if k in build.layer_keys(cls)}}
    (layer,) = build.layers([spec])
    assert isinstance(layer, cls)
    table = ", ".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in spec.items())
    cfg = C.load("spirals-mlp", [f"model.layers=[{{{table}}}]"])
    built = []
    for shape in ((4,), (2, 6, 6)):
        try:
            built.append((build.model(cfg, shape), shape))
        except ConfigError:
            pass
    assert built, f"{kind} builds for neither a flat nor an image input"
    model, shape = built[0]
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    y = model.forward(x)
    assert y.shape == (2, *model.output_shape)
    assert model.backward(np.ones_like(y)).shape == x.shape


def test_the_layer_registry_has_every_documented_type():
    assert set(LAYER_TYPES) >= {"dense", "conv2d", "conv_transpose2d", "maxpool2d", "avgpool2d", "flatten", "dropout",
                                "batchnorm", "relu", "leaky_relu", "sigmoid", "tanh", "softplus", "elu", "selu",
                                "softmax"}


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_every_registered_loss_builds_from_a_config(name):
    cfg = C.load("spirals-mlp", [f"train.loss={name}"])
    assert type(build.loss(cfg)) is losses.LOSSES[name]


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_every_registered_optimizer_builds_from_a_config(name):
    cfg = C.load("spirals-mlp", [f"optimizer.name={name}", "optimizer.weight_decay=0.1"])
    p = np.ones(6, np.float32)
    mask = np.arange(6) < 4
    model = SimpleNamespace(params_flat=p, grads_flat=np.full_like(p, 0.5), decay_mask=mask)
    opt = build.optimizer(cfg, model, 0.01)
    assert isinstance(opt, optim.OPTIMIZERS[name][0]) and opt.decay_mask is mask
    opt.step()
    assert (p < 1).all() and p.dtype == np.float32


SCHEDULE_KEYS = {"piecewise": ["schedule.boundaries=[10]", "schedule.factors=[1, 0.1]"],
                 "power": ["schedule.decay_steps=10"], "exponential": ["schedule.decay_steps=10"]}


@pytest.mark.parametrize("name", list(schedules.SCHEDULES))
def test_every_registered_schedule_builds_from_a_config(name):
    cfg = C.load("spirals-mlp", [f"schedule.name={name}", *SCHEDULE_KEYS.get(name, []), "schedule.warmup_steps=5"])
    s = build.schedule(cfg, 0.1, 100)
    assert isinstance(s, schedules.Warmup) and s(0) == 0.0 and 0 < s(50) <= 0.1


@pytest.mark.parametrize("name", [*init.INITIALIZERS, *init.ALIASES])
def test_every_registered_initializer_builds_from_a_config(name):
    cfg = C.load("spirals-mlp", [f'model.init="{name}"', 'model.layers=[{type = "dense", out_features = 4}]'])
    model = build.model(cfg, (3,))
    assert model.layers[0].params["W"].shape == (3, 4)


# -- keys for what were command-line options only; the dataset folder -------------------------------------

def test_log_and_resume_keys():
    cfg = C.load("spirals-mlp")
    assert cfg["log"] == {"metrics": "", "progress": "auto", "profile": False, "trace": "", "quiet": False}
    assert cfg["checkpoint"]["resume"] is False
    cfg = C.load("spirals-mlp", ["log.progress=none", "log.quiet=true", "log.metrics=runs/m.jsonl",
                                 "checkpoint.resume=true"])
    assert (cfg["log"]["progress"], cfg["log"]["quiet"], cfg["log"]["metrics"]) == ("none", True, "runs/m.jsonl")
    assert cfg["checkpoint"]["resume"] is True
    with pytest.raises(ConfigError, match="log.progress must be one of auto, bar, lines, none"):
        C.load("spirals-mlp", ["log.progress=fancy"])
    with pytest.raises(ConfigError, match="log.quiet must be true or false"):
        C.load("spirals-mlp", ["log.quiet=1"])


def test_data_path_is_resolved_in_one_place():
    cfg = C.load("spirals-mlp")
    assert C.data_path(cfg) == "data/spirals"
    cfg["data"]["path"] = "/x/y"
    assert C.data_path(cfg) == "/x/y"
    cfg["data"]["path"] = cfg["data"]["dataset"] = ""
    with pytest.raises(ConfigError, match="no dataset given: pass --data DIR or set data.path in the config"):
        C.data_path(cfg)


@pytest.mark.parametrize("key,value", [("powersgd_rank", 0), ("powersgd_warmup", -1), ("powersgd_min_size", -1)])
def test_bad_powersgd_keys_are_named(key, value):
    with pytest.raises(ConfigError, match=f"comm.{key} must be an integer >= ") as e:
        C.load("fashion-mlp", sets=['comm.sync="powersgd"', f"comm.{key}={value}"])
    assert "\n" not in str(e.value)


# -- one road: flags merge as values, bounds in the schema, nothing changed after validation ---------------

def test_flags_merge_as_values_not_as_toml_text(capsys):
    from distnet.cli import main

    odd = 'runs/a "b" \\c=d.jsonl'  # quotes, a backslash and an equals sign: no hand quoting to get wrong
    assert main(["train", "spirals-mlp", "--metrics", odd, "--data", "x'y", "--lr", "0.5", "--print-config"]) == 0
    cfg = C.parse_toml(capsys.readouterr().out, "printed")
    assert (cfg["log"]["metrics"], cfg["data"]["path"], cfg["optimizer"]["lr"]) == (odd, "x'y", 0.5)
    assert main(["train", "spirals-mlp", "--seed", "-1", "--print-config"]) == 2
    assert capsys.readouterr().err == ("distnet: error: config key train.seed must be an integer in [0, 4294967295], "
                                       "got -1 (from --seed -1)\n")


@pytest.mark.parametrize("text,ok", [("accuracy=1", True), ("accuracy=0.5", True), ("loss=0", True),
                                     ("loss=3", True), ("accuracy=2", False), ("accuracy=0", False),
                                     ("accuracy=-0.1", False), ("loss=-1", False), ("loss=nan", False),
                                     ("accuracy=inf", False), ("acc=0.5", False), ("accuracy", False)])
def test_a_target_no_evaluation_can_reach_is_an_error(text, ok):
    if ok:
        assert C.parse_target(text, "--target")[0] in ("accuracy", "loss")
        assert C.load("spirals-mlp", [f'train.target="{text}"'])["train"]["target"] == text
    else:
        with pytest.raises(ConfigError, match=r"accuracy in \(0, 1\] or loss >= 0"):
            C.parse_target(text, "--target")
        with pytest.raises(ConfigError, match="config key train.target"):
            C.load("spirals-mlp", [f'train.target="{text}"'])


def test_derive_and_the_commands_validate_once_and_change_no_validated_config():
    base = C.load("spirals-mlp")
    before = C.to_toml(base)
    cfg = C.derive(base, {"train": {"max_steps": 7}}, "a command")
    assert cfg["train"]["max_steps"] == 7 and C.to_toml(base) == before
    with pytest.raises(ConfigError, match=r"train.max_steps must be an integer >= 0, got -7 \(from a command\)"):
        C.derive(base, {"train": {"max_steps": -7}}, "a command")
    from distnet.bench.train import check_args

    args = SimpleNamespace(config="spirals-mlp", data=None, steps=5, warmup=2, reps=3, batch_size=None, set=[])
    cfg = check_args(args)
    assert (cfg["train"]["max_steps"], cfg["log"]["profile"], cfg["checkpoint"]["dir"]) == (7, True, "")
    with pytest.raises(ConfigError, match=r"train.batch_size .* got 0 \(from --batch-size 0\)"):
        check_args(SimpleNamespace(**{**vars(args), "batch_size": 0}))


def test_allowed_names_may_come_from_a_registry_read_when_validating():
    from distnet.schema import Key, check_value

    names = ["a"]
    key = Key(str, "a", choices=lambda: names)
    with pytest.raises(ConfigError, match="config key s.k must be \"a\", got 'b'"):
        check_value("s.k", key, "b")
    names.append("b")  # registered later: allowed from then on
    assert check_value("s.k", key, "b") == "b"


def test_the_guide_lists_every_bounded_key():
    from .helpers import ROOT

    text = (ROOT / "docs" / "guide" / "training.md").read_text()
    bounds = text[text.index("**Bounds.**"):text.index("Layer types:")]
    missing = [f"{s}.{k}" for s, k, spec in C.keys() if spec.numeric and spec.bounded and f"`{k}`" not in bounds
               and f"`{s}.{k}`" not in bounds]
    assert not missing, f"docs/guide/training.md \"Bounds\" does not list {missing}"
