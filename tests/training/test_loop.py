"""The loop's shape: train() returns what it measured, observers see every step and can end a run, randomness
(dropout, synced BatchNorm) follows the global batch on any rank count, resume continues the draws, and the
start line says what ran where."""

import json

import numpy as np
import pytest

from distnet import config as C
from distnet.training.loop import train
from distnet.training.observers import Observer
from distnet.training.profile import PHASES

from ..helpers import run_distnet

# A float64 spirals model with Dropout and synced BatchNorm: its trajectory depends on the draws and on the
# batch statistics, so equal losses on 1 and 2 ranks mean both follow the global batch, not the rank.
STOCHASTIC = """
[data]
dataset = "spirals"
[model]
dtype = "float64"
layers = [
  { type = "dense", out_features = 32 },
  { type = "batchnorm", sync = true },
  { type = "tanh" },
  { type = "dropout", p = 0.3 },
  { type = "dense", out_features = 32 },
  { type = "relu" },
  { type = "dropout", p = 0.2 },
  { type = "dense", out_features = 2 },
]
[train]
epochs = 2
batch_size = 64
log_every = 1
[optimizer]
name = "adam"
lr = 0.01
"""


def metrics(path):
    return [json.loads(line) for line in open(path)]


def losses(path):
    return [(m["step"], m["loss"]) for m in metrics(path) if m["event"] == "train"]


def in_process_config(data, *sets):
    return C.load("spirals-mlp", sets=[f'data.path="{data}"', "log.quiet=true", *sets])


def test_train_returns_the_summary_and_every_steps_phases(spirals_data):
    res = train(in_process_config(spirals_data, "train.max_steps=7", "log.profile=true"))
    assert res.summary["steps"] == 7 and res.summary["ranks"] == 1
    assert res.timings["steps"].tolist() == list(range(7))
    assert res.timings["phases"].shape == (1, 7, len(PHASES)) and (res.timings["phases"] >= 0).all()
    assert res.summary["ms_forward_mean"] == pytest.approx(1e3 * res.timings["phases"][0, 1:, 1].mean())
    assert res.run.model.num_params == 4482


class StopAt(Observer):
    """Records the hooks it hears and ends the run after step ``n``."""

    def __init__(self, n):
        self.n, self.heard = n, []

    def on_start(self, run):
        self.heard.append(("start", run.pos.global_step))

    def on_step(self, run, stats):
        self.heard.append(("step", stats.step))
        assert np.isfinite(stats.loss_sum) and stats.count == run.batch and stats.grad_norm > 0
        if run.pos.global_step == self.n:
            run.stop = f"stopped by a test at {self.n}"

    def on_end(self, run):
        self.heard.append(("end", run.pos.global_step))


def test_an_observer_sees_every_step_and_can_end_the_run(spirals_data):
    spy = StopAt(5)
    res = train(in_process_config(spirals_data), observers=[spy])
    assert res.summary["steps"] == 5 and res.summary["epochs"] == 0
    assert spy.heard == [("start", 0)] + [("step", s) for s in range(5)] + [("end", 5)]


@pytest.mark.mpi
def test_dropout_and_synced_batchnorm_follow_the_same_trajectory_on_1_and_2_ranks(tmp_path, spirals_data):
    cfg = tmp_path / "stochastic.toml"
    cfg.write_text(STOCHASTIC)
    runs = {}
    for n in (1, 2):
        m = tmp_path / f"m{n}.jsonl"
        r = run_distnet(["train", cfg, "--data", spirals_data, "--metrics", m, "--quiet"], n=n, timeout=120)
        assert r.returncode == 0, r.stderr
        runs[n] = losses(m)
    assert len(runs[1]) == 124
    assert runs[1] == runs[2]  # float64, to the last logged digit
    # and the draws matter: without dropout the losses differ (so the test would catch per-rank masks)
    plain = tmp_path / "plain.toml"
    plain.write_text(STOCHASTIC.replace("p = 0.3", "p = 0.0").replace("p = 0.2", "p = 0.0"))
    m = tmp_path / "plain.jsonl"
    assert run_distnet(["train", plain, "--data", spirals_data, "--metrics", m, "--quiet"], n=1).returncode == 0
    assert losses(m)[5:] != runs[1][5:]


@pytest.mark.mpi
def test_resume_with_dropout_is_bitwise_identical(tmp_path, spirals_data):
    cfg = tmp_path / "stochastic.toml"
    cfg.write_text(STOCHASTIC.replace('dtype = "float64"', 'dtype = "float32"'))
    common = ["--data", spirals_data, "--quiet"]
    full = run_distnet(["train", cfg, *common, "--metrics", tmp_path / "full.jsonl", "--checkpoint-dir",
                        tmp_path / "full"], n=2, timeout=120)
    assert full.returncode == 0, full.stderr
    part = ["train", cfg, *common, "--metrics", tmp_path / "part.jsonl", "--checkpoint-dir", tmp_path / "part"]
    first = run_distnet([*part, "--set", "train.max_steps=40"], n=2, timeout=120)  # stops inside epoch 1
    assert first.returncode == 0, first.stderr
    again = run_distnet([*part, "--resume"], n=2, timeout=120)
    assert again.returncode == 0, again.stderr
    assert losses(tmp_path / "part.jsonl") == losses(tmp_path / "full.jsonl")
    assert metrics(tmp_path / "part.jsonl")[-1]["param_hash"] == metrics(tmp_path / "full.jsonl")[-1]["param_hash"]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory, spirals_data):
    """One 2-epoch run on 2 ranks, console and metrics, that the epoch-count and start-line tests both read:
    (CompletedProcess, the metrics file)."""
    m = tmp_path_factory.mktemp("two-epochs") / "m.jsonl"
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--epochs", "2", "--metrics", m], n=2)
    assert r.returncode == 0, r.stderr
    return r, m


def test_epochs_count_from_one_in_metrics_and_console(two_epochs):
    r, m = two_epochs
    lines = metrics(m)
    assert [x["epoch"] for x in lines if x["event"] == "train"][:2] == [1, 1]
    assert {x["epoch"] for x in lines if x["event"] == "train"} == {1, 2}
    evals = [x for x in lines if x["event"] == "eval"]
    assert [(x["step"], x["epoch"]) for x in evals] == [(62, 1), (124, 2)]
    assert "epoch 1/2 step 62: test" in r.stdout and "epoch 2/2 step 124: test" in r.stdout


def test_the_start_line_says_what_ran_where(two_epochs):
    r, m = two_epochs
    start = metrics(m)[0]
    assert start["event"] == "start" and start["ranks"] == 2 and start["step"] == 0
    assert start["mpi_library"].startswith("MPICH") and "\n" not in start["mpi_library"]
    assert list(start["hosts"].values()) == [[0, 1]]
    assert start["blas_threads"] == [1, 1]  # the test environment sets 1 thread per rank
    assert f"distnet: 2 rank(s) x 1 BLAS thread(s) on 1 host(s), {start['mpi_library']}" in r.stdout


@pytest.mark.parametrize("var", ["SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"])
def test_a_world_of_one_where_the_launcher_started_more_is_a_user_error(spirals_data, var):
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data], env={var: "2"})
    assert r.returncode == 2
    # (mpi4py itself warns of an OMPI_* variable under an MPICH build; distnet says one line)
    lines = [x for x in r.stderr.splitlines() if x.startswith("distnet:")]
    assert len(lines) == 1 and f"{var}=2" in lines[0] and "srun --mpi=pmi2" in lines[0], r.stderr


def test_a_run_ending_between_train_lines_writes_its_last_one(spirals_data, tmp_path):
    """train.max_steps mid-epoch (and any end between two log_every steps): the last steps get their line."""
    path = tmp_path / "m.jsonl"
    train(in_process_config(spirals_data, "train.max_steps=7", "train.log_every=5", f'log.metrics="{path}"'))
    lines = metrics(path)
    assert [m["step"] for m in lines if m["event"] == "train"] == [5, 7]
    assert [m["event"] for m in lines][-2:] == ["train", "summary"]
