"""--init-from CHECKPOINT: a new run that starts from another run's parameters, at any batch size, rank count
and optimizer; --init-from-optimizer also takes the optimizer state. --resume stays the same run."""

import json
import textwrap

import numpy as np
import pytest

from distnet import checkpoint as ckpt

from ..helpers import run_distnet, run_python_mpi

F64 = ["--set", "model.dtype=\"float64\"", "--quiet"]


@pytest.fixture(scope="module")
def source(spirals_data, tmp_path_factory):
    """A float64 spirals-mlp checkpoint after 30 steps at global batch 64 (adam), trained in this process (the
    tests read only the checkpoint; they start their own runs from it)."""
    from distnet import config as C
    from distnet.training.loop import train

    out = tmp_path_factory.mktemp("source")
    train(C.load("spirals-mlp", sets=[f'data.path="{spirals_data}"', f'checkpoint.dir="{out / "ck"}"',
                                      "train.max_steps=30", 'model.dtype="float64"', "log.quiet=true"]))
    return ckpt.latest(out / "ck")


@pytest.mark.mpi
@pytest.mark.parametrize("ranks, batch", [(1, 32), (2, 128)])
def test_the_first_step_starts_from_the_checkpoints_parameters(source, spirals_data, tmp_path, ranks, batch):
    # an observer sees the parameters before the first step; the run then trains on at its own batch size
    script = textwrap.dedent(f"""
        import numpy as np
        from distnet import api
        from distnet.training.observers.base import Observer

        class First(Observer):
            def on_start(self, run):
                np.save("{tmp_path}/first-%d.npy" % run.world.rank, run.model.params_flat.copy())

        r = api.train("spirals-mlp", observers=[First()], sets=[
            'data.path="{spirals_data}"', 'train.init_from="{source.parent}"', "train.batch_size={batch}",
            "train.max_steps=5", 'model.dtype="float64"', "log.quiet=true", 'log.metrics="{tmp_path}/m.jsonl"',
            'optimizer.name="sgd"'])
        print("steps", r.summary["steps"], r.summary["global_batch"])
    """)
    r = run_python_mpi(script, ranks, timeout=120)
    assert r.returncode == 0, r.stderr
    saved = ckpt.read_verified(source)[0]["model/params"]
    for rank in range(ranks):
        assert np.array_equal(np.load(tmp_path / f"first-{rank}.npy"), saved)
    assert f"steps 5 {batch}" in r.stdout
    start = json.loads(open(tmp_path / "m.jsonl").readline())
    assert start["event"] == "start" and start["initialized_from"] == str(source) and start["step"] == 0
    assert start["global_batch"] == batch and start["ranks"] == ranks


def test_the_console_says_where_the_parameters_came_from(source, spirals_data, tmp_path):
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--init-from", source, "--init-from-optimizer",
                     "--set", "train.max_steps=3", "--set", "model.dtype=\"float64\"",
                     "--metrics", tmp_path / "m.jsonl"], timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"distnet: parameters from {source} with its optimizer state" in r.stdout, r.stdout


@pytest.mark.parametrize("change, says", [
    (["--set", 'model.layers=[{type="dense", out_features=16}, {type="relu"}, {type="dense", out_features=2}]'],
     "layer 0 is Dense(2, 64) there but Dense(2, 16) here"),
    (["--set", 'model.layers=[{type="dense", out_features=64}, {type="tanh"}, {type="dense", out_features=64}, '
      '{type="tanh"}, {type="dense", out_features=2}, {type="tanh"}]'], "it has 5 layers, this model 6"),
    (["--init-from-optimizer", "--set", 'optimizer.name="sgd"'], "was trained with optimizer 'adam'"),
])
def test_a_checkpoint_that_does_not_fit_is_one_line(source, spirals_data, tmp_path, change, says):
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--init-from", source, *change, *F64,
                     "--set", "train.max_steps=3"], timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distnet: error: ") and says in lines[0], r.stderr


def test_a_missing_checkpoint_is_one_line(spirals_data, tmp_path):
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--init-from", tmp_path / "nope.h5",
                     "--quiet"], timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "nope.h5 does not exist" in r.stderr, r.stderr
