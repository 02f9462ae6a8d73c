"""The Python API (distnet.api: train, load, predict) and layers of one's own named by import path, with the
examples that show them (examples/), each run here as a user would."""

import json
import sys
import textwrap

import numpy as np
import pytest

import distnet
from distnet import api
from distnet.data import BatchReader, open_dataset
from distnet.errors import UserError

from .helpers import ROOT, run_distnet, run_python_mpi

EXAMPLES = ROOT / "examples"


def stored(data, split="test"):
    """A split's inputs as stored (what predict takes) and its labels."""
    s = open_dataset(data)[split]
    with BatchReader(s, mode="memory") as reader:
        return reader.raw(np.arange(len(s)))


@pytest.fixture(scope="module")
def trained(spirals_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    result = api.train({"extends": "spirals-mlp", "train": {"epochs": 2}, "log": {"quiet": True},
                        "checkpoint": {"dir": str(out / "ck")}}, overrides={"data": {"path": str(spirals_data)}})
    return result, out / "ck"


def test_the_api_names_are_the_packages_own():
    import distnet.training.loop  # noqa: F401 - the training package does not hide distnet.train

    assert distnet.train is api.train and distnet.load is api.load


def test_train_from_a_dict_then_load_and_predict_as_eval_does(trained, spirals_data):
    result, ck = trained
    assert result.summary["epochs"] == 2 and result.summary["ranks"] == 1
    model = distnet.load(ck)
    x, y = stored(spirals_data)
    probs = model.predict_proba(x)
    assert probs.shape == (len(y), 2) and np.allclose(probs.sum(axis=1), 1)
    assert np.array_equal(model.predict(x), probs.argmax(axis=1))
    ev = run_distnet(["eval", ck, "--json"], timeout=60)
    assert ev.returncode == 0, ev.stderr
    assert np.mean(model.predict(x) == y) == pytest.approx(json.loads(ev.stdout)["accuracy"], abs=1e-12)
    assert model.predict(x[0]).shape == (1,) and model.predict(x[0])[0] == model.predict(x[:1])[0]
    assert model.class_names == tuple(open_dataset(spirals_data).class_names)


def test_predict_refuses_inputs_of_another_shape_and_old_checkpoints_need_the_data(trained, spirals_data):
    _, ck = trained
    model = distnet.load(ck)
    with pytest.raises(UserError, match=r"inputs of shape \(3, 5\) do not fit .*takes \(N, 2\)"):
        model.predict(np.zeros((3, 5)))
    x, _ = stored(spirals_data)
    del model.meta["inputs"]  # as in a checkpoint from before the input statistics were kept
    with pytest.raises(UserError, match="load it with data=DIR"):
        model.predict(x)
    again = distnet.load(ck, data=spirals_data)  # the statistics from the dataset: the same conversion
    assert np.array_equal(again.predict_proba(x), distnet.load(ck).predict_proba(x))


def test_a_config_error_raises_user_error_in_python(spirals_data):
    with pytest.raises(UserError, match="train.epochs"):
        api.train("spirals-mlp", overrides={"train": {"epochs": "two"}, "data": {"path": str(spirals_data)}})
    with pytest.raises(UserError, match="config must be a preset name"):
        api.train(42)


@pytest.mark.mpi
def test_train_in_python_on_two_ranks_returns_on_both_and_raises_on_both(spirals_data, tmp_path):
    script = textwrap.dedent(f"""
        from distnet import api, comm
        from distnet.errors import UserError
        rank = comm.world().rank
        r = api.train("spirals-mlp", sets=["train.epochs=2", "log.quiet=true", 'data.path="{spirals_data}"'])
        out = [f"summary {{r.summary['ranks']}} {{r.summary['steps']}} {{r.summary['param_hash']}}"]
        try:
            api.train("spirals-mlp", sets=['data.path="{tmp_path / 'nowhere'}"', "log.quiet=true"])
        except UserError as e:
            out.append(f"caught {{e}}")
        open(f"{tmp_path}/out-{{rank}}.txt", "w").write("\\n".join(out))
    """)
    r = run_python_mpi(script, 2, timeout=120)
    assert r.returncode == 0, r.stderr
    summaries, caught = zip(*((tmp_path / f"out-{rank}.txt").read_text().splitlines() for rank in range(2)))
    assert summaries[0] == summaries[1] and summaries[0].split()[1] == "2", summaries
    assert all(c.startswith("caught dataset folder") and "nowhere does not exist" in c for c in caught), caught


@pytest.mark.mpi
def test_a_layer_of_ones_own_by_import_path_is_gradient_checked_and_trains_on_two_ranks(spirals_data, tmp_path):
    folder = EXAMPLES / "custom_layer"
    import subprocess

    check = subprocess.run([sys.executable, "gradcheck_gated.py"], cwd=folder, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0 and "matches finite differences" in check.stdout, check.stderr
    r = run_distnet(["train", "gated.toml", "--data", spirals_data, "--epochs", "3", "--quiet",
                     "--metrics", tmp_path / "m.jsonl", "--checkpoint-dir", tmp_path / "ck"], n=2, cwd=folder)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in open(tmp_path / "m.jsonl")]
    assert lines[-1]["event"] == "summary" and lines[-1]["ranks"] == 2
    assert lines[-1]["last_accuracy"] > 0.55  # it learns (chance is 0.5)
    # the trained model loads where the module is importable
    ev = run_distnet(["eval", tmp_path / "ck", "--json"], cwd=folder, timeout=60)
    assert ev.returncode == 0 and json.loads(ev.stdout)["accuracy"] == lines[-1]["last_accuracy"], ev.stderr


@pytest.mark.parametrize("kind, says", [
    ("no_such_module:Gated", "cannot import module 'no_such_module'"),
    ("myblocks:Nope", "module 'myblocks' has no 'Nope'"),
    ("numpy:ndarray", "numpy.ndarray is not a subclass of distnet.nn.layers.Layer"),
    (":Gated", "an import path is module:Class"),
    ("gatd", "unknown layer type"),
])
def test_a_bad_layer_type_is_one_line(kind, says, tmp_path):
    layers = f'[{{ type = "{kind}", width = 4 }}, {{ type = "dense", out_features = 2 }}]'
    r = run_distnet(["train", "spirals-mlp", "--set", f"model.layers={layers}", "--print-config"],
                    cwd=EXAMPLES / "custom_layer", timeout=60)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, r.stderr


def test_the_predict_example_runs(trained, spirals_data):
    _, ck = trained
    import subprocess

    r = subprocess.run([sys.executable, EXAMPLES / "predict.py", ck, spirals_data], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "sample 0:" in r.stdout


def test_write_dataset_from_memory_reads_back_and_checks_like_the_import(tmp_path):
    from distnet.data import write_dataset
    from distnet.errors import DataError

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    out = write_dataset(tmp_path / "mine", x[:200], y[:200], x[200:], y[200:], class_names=["neg", "pos"])
    ds = open_dataset(out)
    assert ds.class_names == ("neg", "pos") and len(ds["train"]) == 200 and len(ds["test"]) == 100
    xs, ys = stored(out, "test")
    assert np.array_equal(xs, x[200:]) and np.array_equal(ys, y[200:])
    with pytest.raises(DataError, match="label 5 of sample 199"):
        write_dataset(tmp_path / "bad", x[:200], np.r_[y[:199], 5], x[200:], y[200:], class_names=["a", "b"])
    with pytest.raises(DataError, match="no test split"):
        write_dataset(tmp_path / "bad", x, y)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing else left behind


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2])
def test_the_csv_example_imports_and_trains_alone_and_on_two_ranks(tmp_path, ranks):
    import subprocess

    from .helpers import mpiexec_path

    cmd = [sys.executable, str(EXAMPLES / "csv_train.py"), str(tmp_path / "moons")]
    if ranks > 1:
        cmd = [mpiexec_path(), "-n", str(ranks), *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{ranks} rank(s): test accuracy" in r.stdout
    assert float(r.stdout.split("accuracy ")[1].split()[0]) > 0.9
    assert (tmp_path / "moons" / "moons.csv").is_file() and open_dataset(tmp_path / "moons" / "data")
