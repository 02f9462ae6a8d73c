"""``distnet bench compute`` and ``distnet bench train``: tables, JSON, and figures that add up."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from distnet.bench.train import measured
from distnet.training.profile import PHASES

from ..helpers import run_distnet


def test_bench_compute_json_per_layer_figures_add_up():
    result = run_distnet(["bench", "compute", "--model", "mlp", "--batch", 16, "--repeats", 3, "--warmup", 1,
                          "--json"], timeout=60)
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["peak_gflops"] > 0 and r["blas_threads"] in (1, None)
    names = [row["layer"] for row in r["layers"]]
    assert names == ["Dense(784, 256)", "ReLU()", "Dense(256, 128)", "ReLU()", "Dense(128, 10)"]
    for row in r["layers"]:
        assert row["forward_ms"] > 0 and row["backward_ms"] > 0, row
        for ph in ("forward", "backward"):
            if row[f"{ph}_flops"]:
                assert row[f"{ph}_gflops"] == pytest.approx(row[f"{ph}_flops"] / row[f"{ph}_ms"] / 1e6, rel=1e-9)
                assert row[f"{ph}_pct_peak"] == pytest.approx(100 * row[f"{ph}_gflops"] / r["peak_gflops"])
            else:
                assert row[f"{ph}_gflops"] is None
    dense0 = r["layers"][0]
    assert dense0["forward_flops"] == 2 * 784 * 256 * 16
    assert dense0["backward_flops"] == dense0["forward_flops"]  # the first layer's input gradient is skipped
    assert r["layers"][2]["backward_flops"] == 2 * r["layers"][2]["forward_flops"]
    assert len(dense0["gemms"]) == 2 and dense0["gemm_forward_ms"] > 0
    t = r["total"]
    assert t["forward_ms"] == pytest.approx(sum(row["forward_ms"] for row in r["layers"]))
    assert t["gflops"] == pytest.approx(t["flops"] / t["ms"] / 1e6)


def test_bench_compute_table_for_a_cnn_preset():
    result = run_distnet(["bench", "compute", "--model", "shapes-cnn", "--batch", 4, "--repeats", 2, "--warmup", 0,
                          "--no-gemm"], timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "measured matmul peak" in out and "GFLOP/s" in out and "%peak" in out
    assert "Conv2D(1, 16, k=5" in out and "MaxPool2D(2)" in out
    assert "% of the measured peak" in out


def test_measured_drops_warmup_and_the_first_step_of_each_epoch():
    # 2 ranks, steps 0-19, 12 steps per epoch: warm-up 5 drops steps 0-4, and step 12 (an epoch's first,
    # which holds the reader's start) is left out too. Rank 0 spends 1 ms per phase, 9 ms of data at step 12;
    # rank 1 waits 0.5 ms in comm on even steps and 2 ms on odd ones.
    steps = np.arange(20)
    ph = np.full((2, 20, len(PHASES)), 1e-3)
    ph[0, 12, PHASES.index("data")] = 9e-3
    ph[1, :, PHASES.index("comm")] = np.where(steps % 2, 2e-3, 0.5e-3)
    run = SimpleNamespace(steps_per_epoch=12, batch=10)
    r = measured(SimpleNamespace(timings={"steps": steps, "phases": ph}, run=run), warmup=5)
    assert r["steps_measured"] == 14
    assert r["phases_ms"] == pytest.approx(dict.fromkeys(PHASES, 1.0))
    assert r["samples_per_s"] == pytest.approx(10 / 5e-3)
    assert r["step_ms"] == pytest.approx(5.0)
    odd = sum(1 for s in range(5, 20) if s != 12 and s % 2)
    assert r["comm_last_arrival_ms"] == pytest.approx((odd * 1.0 + (14 - odd) * 0.5) / 14)
    assert r["per_rank_phases_ms"][0] == r["phases_ms"]


def test_bench_train_one_rank_table_across_an_epoch_end(spirals_data):
    # spirals: 4,000 samples / batch 64 = 62 steps per epoch, so 2 + 70 steps cross one epoch end
    result = run_distnet(["bench", "train", "spirals-mlp", "--data", spirals_data, "--steps", 70, "--warmup", 2],
                         timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for word in ("data wait", "forward", "backward", "comm wait (exposed)", "optimizer", "samples/s"):
        assert word in out, out
    assert "69 steps measured after 2 warm-up" in out  # step 62 starts epoch 2 (its reader): left out
    assert "own baseline" in out


def test_bench_train_missing_data_is_a_one_line_user_error(tmp_path):
    result = run_distnet(["bench", "train", "spirals-mlp", "--data", tmp_path / "nope"], timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
    assert "distnet data prepare spirals" in result.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("sync", ["auto", "bucketed"])
def test_bench_train_two_ranks_json(spirals_data, sync):
    result = run_distnet(["bench", "train", "spirals-mlp", "--data", spirals_data, "--steps", 10, "--warmup", 2,
                          "--reps", 5, "--json", "--set", f"comm.sync={sync}"], n=2, timeout=120)
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["ranks"] == 2 and r["global_batch"] == 64 and r["per_rank_batch"] == 32
    assert r["steps_measured"] == 10
    assert set(r["phases_ms"]) == set(PHASES)
    assert all(v >= 0 for v in r["phases_ms"].values()) and r["phases_ms"]["forward"] > 0
    assert r["samples_per_s"] > 0
    assert r["flat_allreduce_ms"] > 0 and r["grad_bytes"] == 4 * r["params"]
    # shm (auto's choice on one host) sends no gradient: its wait is not judged against an allreduce
    assert (r["sync"], r["comm_floor_ok"] is None) == (("shm", True) if sync == "auto" else ("bucketed", False))
    assert len(r["per_rank_phases_ms"]) == 2
    assert r["per_rank_phases_ms"][0]["comm"] == pytest.approx(r["phases_ms"]["comm"], rel=0.05, abs=0.01)
    assert 0 <= r["comm_last_arrival_ms"] <= min(q["comm"] for q in r["per_rank_phases_ms"]) + 1e-9
    assert r["baseline"]["strong"]["global_batch"] == 64 and r["baseline"]["weak"]["global_batch"] == 32
    for kind in ("strong", "weak"):
        assert r["baseline"][kind]["samples_per_s"] > 0
        assert r[f"efficiency_{kind}"] == pytest.approx(r["samples_per_s"] / (2 * r["baseline"][kind]["samples_per_s"]))
