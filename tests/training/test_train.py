"""Training end to end with real processes: rank-count invariance, resume exactness, failures, errors."""

import json
import time

import h5py
import numpy as np
import pytest

from distnet.blas import THREAD_VARS, threads_per_rank

from ..helpers import last_ckpt, metrics, run_distnet, train

pytestmark = pytest.mark.mpi


def train_losses(path):
    return [(m["step"], m["loss"]) for m in metrics(path) if m["event"] == "train"]


def params(path):
    with h5py.File(path, "r") as f:
        return f["model/params"][...]


def test_one_and_two_ranks_follow_the_same_trajectory(tmp_path, spirals_data):
    args = ["--epochs", "8", "--batch-size", "64"]
    r1, o1 = train(tmp_path, "p1", spirals_data, n=1, extra=args)
    r2, o2 = train(tmp_path, "p2", spirals_data, n=2, extra=args)
    assert r1.returncode == 0, r1.stderr
    assert r2.returncode == 0, r2.stderr
    l1, l2 = train_losses(o1 / "m.jsonl"), train_losses(o2 / "m.jsonl")
    assert len(l1) == len(l2) > 20
    assert [s for s, _ in l1] == [s for s, _ in l2]
    np.testing.assert_allclose([v for _, v in l1], [v for _, v in l2], rtol=2e-4, atol=1e-5)
    # The loss actually went down (this is training, not a no-op).
    assert np.mean([v for _, v in l1[-5:]]) < 0.8 * np.mean([v for _, v in l1[:5]])
    np.testing.assert_allclose(params(last_ckpt(o1 / "ck")), params(last_ckpt(o2 / "ck")), rtol=1e-3, atol=1e-4)
    summary = metrics(o2 / "m.jsonl")[-1]
    assert summary["event"] == "summary" and summary["ranks"] == 2 and summary["global_batch"] == 64


def test_metrics_lines_follow_the_contract(tmp_path, spirals_data):
    r, out = train(tmp_path, "m", spirals_data, extra=["--epochs", "1", "--set", "data.val_fraction=0.2"])
    assert r.returncode == 0, r.stderr
    lines = metrics(out / "m.jsonl")
    assert all("event" in m and "step" in m for m in lines)
    trains = [m for m in lines if m["event"] == "train"]
    evals = [m for m in lines if m["event"] == "eval"]
    assert trains and all({"epoch", "loss", "lr", "samples_per_s"} <= set(m) for m in trains)
    assert {m["split"] for m in evals} == {"val", "test"}
    assert all({"epoch", "split", "loss", "accuracy"} <= set(m) for m in evals)
    s = lines[-1]
    assert s["event"] == "summary"
    assert {"wall_s", "samples", "best_accuracy", "ranks", "global_batch"} <= set(s)
    assert s["samples"] == trains[-1]["step"] * s["global_batch"]


def test_resume_after_epoch_one_is_bitwise_identical(tmp_path, spirals_data):
    full, o_full = train(tmp_path, "full", spirals_data, n=2, extra=["--epochs", "2"])
    assert full.returncode == 0, full.stderr
    steps = metrics(o_full / "m.jsonl")[-1]["steps"] // 2
    first, o = train(tmp_path, "part", spirals_data, n=2, extra=["--epochs", "2", "--set", f"train.max_steps={steps}"])
    assert first.returncode == 0, first.stderr
    assert metrics(o / "m.jsonl")[-1]["steps"] == steps
    again, o = train(tmp_path, "part", spirals_data, n=2, extra=["--epochs", "2", "--resume"])
    assert again.returncode == 0, again.stderr
    assert np.array_equal(params(last_ckpt(o_full / "ck")), params(last_ckpt(o / "ck")))
    with h5py.File(last_ckpt(o / "ck"), "r") as f:
        assert f.attrs["epoch"] == 2 and f.attrs["global_step"] == 2 * steps


def test_resume_on_another_rank_count_follows_the_same_order(tmp_path, spirals_data):
    ref, o_ref = train(tmp_path, "ref", spirals_data, n=1, extra=["--epochs", "2"])
    assert ref.returncode == 0, ref.stderr
    steps = metrics(o_ref / "m.jsonl")[-1]["steps"] // 2
    r, o = train(tmp_path, "mixed", spirals_data, n=2, extra=["--epochs", "2", "--set", f"train.max_steps={steps}"])
    assert r.returncode == 0, r.stderr
    r, o = train(tmp_path, "mixed", spirals_data, n=1, extra=["--epochs", "2", "--resume"])
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(params(last_ckpt(o / "ck")), params(last_ckpt(o_ref / "ck")), rtol=1e-3, atol=1e-4)
    # and the second half's losses match the uninterrupted run's second half
    tail_ref = [v for s, v in train_losses(o_ref / "m.jsonl") if s > steps]
    tail = [v for s, v in train_losses(o / "m.jsonl") if s > steps]
    np.testing.assert_allclose(tail, tail_ref, rtol=2e-3, atol=1e-5)


def test_gradient_accumulation_matches_the_plain_step(tmp_path, spirals_data):
    a, oa = train(tmp_path, "k1", spirals_data, n=2, extra=["--epochs", "1"])
    b, ob = train(tmp_path, "k2", spirals_data, n=2, extra=["--epochs", "1", "--accumulate", "4"])
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    np.testing.assert_allclose([v for _, v in train_losses(oa / "m.jsonl")],
                               [v for _, v in train_losses(ob / "m.jsonl")], rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("fault,message", [("raise@1:3", "rank 1: RuntimeError: injected fault at step 3"),
                                           ("nan@1:2", "non-finite loss at step 2"),
                                           ("crash@1:2", "")])
def test_a_failure_on_one_rank_ends_the_job_in_seconds(tmp_path, spirals_data, fault, message):
    t = time.monotonic()
    r, _ = train(tmp_path, "f", spirals_data, n=2, extra=["--epochs", "3"], env={"DISTNET_FAULT": fault}, timeout=60)
    assert time.monotonic() - t < 30
    assert r.returncode != 0
    assert message in r.stderr
    if fault.startswith("nan"):
        assert r.returncode == 1 and r.stderr.count("non-finite") == 1  # decided collectively, said once


def test_skip_policy_survives_a_non_finite_step(tmp_path, spirals_data):
    r, out = train(tmp_path, "s", spirals_data, n=2, extra=["--epochs", "1", "--set", "train.nonfinite=\"skip\""],
                   env={"DISTNET_FAULT": "nan@0:2"})
    assert r.returncode == 0, r.stderr
    skips = [m for m in metrics(out / "m.jsonl") if m["event"] == "skip"]
    assert [s["step"] for s in skips] == [2]


@pytest.mark.parametrize("args,message", [
    (["--set", "train.bogus=1"], "unknown config key train.bogus"),
    (["--set", "train.epochs=\"two\""], "config key train.epochs must be an integer"),
    (["--batch-size", "63"], "global batch 63 is not divisible by ranks x accumulation steps = 2 x 1"),
    (["--set", "optimizer.betas=3"],
     "unknown key 'betas' for optimizer 'adam' (valid: lr, weight_decay, l1, beta1, beta2, eps)"),
    (["--data", "/nonexistent/x"], "dataset folder /nonexistent/x does not exist"),
    (["--batch-size", "100000"], "the dataset has 4000 samples, fewer than one global batch of 100000"),
])
def test_user_errors_exit_2_on_every_rank_with_one_message(tmp_path, spirals_data, args, message):
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--quiet", *args], n=2, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("distnet: error:")]
    assert len(lines) == 1, r.stderr
    assert message in lines[0]


@pytest.mark.parametrize("args,message", [
    (["train", "fashion-mlp", "--set", "train.epochs", "3"], "--set train.epochs 3: write --set train.epochs=3"),
    (["train", "fashion-mlp", "--set=train.epochs", "3"], "--set train.epochs 3: write --set train.epochs=3"),
    (["train", "fashion-mlp", "--batchsize", "256"],
     "distnet train has no option --batchsize: did you mean --batch-size?"),
    (["train", "fashion-mlp", "--epohcs=3"], "distnet train has no option --epohcs: did you mean --epochs?"),
    (["data", "prepare", "spirals", "--out", "x", "--num-trian", "5"],
     "distnet data prepare has no option --num-trian: did you mean --num-train?"),
    (["sweep", "fashion-mlp", "--frobnicate"], "distnet sweep has no option --frobnicate: see distnet sweep --help"),
    (["eval", "ck", "stray"], "distnet eval does not take 'stray' here: see distnet eval --help"),
])
def test_misspelled_options_and_set_without_equals_are_one_line_errors(capsys, args, message):
    from distnet.cli import main

    assert main(args) == 2
    assert capsys.readouterr().err == f"distnet: error: {message}\n"


def test_unknown_preset_and_bad_layer_key(tmp_path, spirals_data):
    r = run_distnet(["train", "no-such-preset"], timeout=60)
    assert r.returncode == 2 and "unknown preset 'no-such-preset'" in r.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nlayers = [{type = "dense", units = 3}]\n')
    r = run_distnet(["train", cfg, "--data", spirals_data], timeout=60)
    assert r.returncode == 2 and "layer 0, Dense(?, ?): unknown key 'units' for dense" in r.stderr


def test_eval_reports_the_checkpoints_accuracy(tmp_path, spirals_data):
    r, out = train(tmp_path, "e", spirals_data, n=2, extra=["--epochs", "20"])
    assert r.returncode == 0, r.stderr
    test_evals = [m for m in metrics(out / "m.jsonl") if m["event"] == "eval" and m["split"] == "test"]
    ev = run_distnet(["eval", last_ckpt(out / "ck"), "--data", spirals_data, "--json"], n=2, timeout=60)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["accuracy"] == pytest.approx(test_evals[-1]["accuracy"], abs=1e-9)
    assert result["accuracy"] > 0.8
    folder = run_distnet(["eval", out / "ck", "--data", spirals_data, "--json"], timeout=60)  # newest in it
    assert folder.returncode == 0, folder.stderr
    assert json.loads(folder.stdout)["accuracy"] == result["accuracy"]
    bad = run_distnet(["eval", tmp_path / "missing.h5", "--data", spirals_data], n=2, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("distnet: error:") == 1


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, spirals_data):
    r, out = train(tmp_path, "es", spirals_data, extra=["--epochs", "40", "--set", "train.patience=2",
                                                       "--set", "data.val_fraction=0.2", "--lr", "0.5"])
    assert r.returncode == 0, r.stderr
    lines = metrics(out / "m.jsonl")
    vals = [m["accuracy"] for m in lines if m["event"] == "eval" and m["split"] == "val"]
    assert (out / "ck" / "best.h5").exists()
    assert lines[-1]["best_accuracy"] == pytest.approx(max(vals))
    if lines[-1]["early_stopped"]:
        assert len(vals) < 40 and vals[-1] <= max(vals) and vals[-2] <= max(vals)


@pytest.mark.slow
def test_fashion_mlp_reaches_88_percent_on_two_ranks(tmp_path, fashion_data):
    out = tmp_path / "fashion"
    r = run_distnet(["train", "fashion-mlp", "--data", fashion_data, "--metrics", out / "m.jsonl", "--quiet"],
                    n=2, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = metrics(out / "m.jsonl")
    test_acc = [m["accuracy"] for m in lines if m["event"] == "eval" and m["split"] == "test"]
    assert len(test_acc) == 5
    assert test_acc[-1] >= 0.88, test_acc


def test_blas_threads_split_the_cores_unless_the_user_sets_them(spirals_data):
    args = ["train", "spirals-mlp", "--data", spirals_data, "--set", "train.max_steps=2"]
    r = run_distnet(args, n=2, env={v: "" for v in THREAD_VARS}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"2 rank(s) x {threads_per_rank(2)} BLAS thread(s)" in r.stdout + r.stderr
    assert "no evaluation ran" in r.stdout + r.stderr
    r = run_distnet(args, n=2, env={"OPENBLAS_NUM_THREADS": "3"}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "2 rank(s) x 3 BLAS thread(s)" in r.stdout + r.stderr


def test_resume_refuses_a_run_that_would_change_the_sample_order(tmp_path, spirals_data):
    r, out = train(tmp_path, "o", spirals_data, extra=["--epochs", "2", "--set", "train.max_steps=70"])
    assert r.returncode == 0, r.stderr
    for extra, message in ((["--seed", "5"], "written with seed=0 but this run has seed=5"),
                           (["--set", "data.val_fraction=0.1"], "the same dataset and data.val_fraction"),
                           (["--set", 'data.order="blocks"'], 'written with --set data.order="random"')):
        again = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--checkpoint-dir", out / "ck",
                             "--resume", "--epochs", "2", "--quiet", *extra], n=2, timeout=60)
        assert again.returncode == 2 and again.stderr.count("distnet: error:") == 1, again.stderr
        assert "cannot resume" in again.stderr and message in again.stderr
