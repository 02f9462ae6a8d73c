"""``distnet bench compute``: tables, JSON, and figures that add up."""

import json

import pytest

from .conftest import run_distnet


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
