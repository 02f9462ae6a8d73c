"""``distnet bench data``: it reports both modes, and streaming stays within its memory budget on data
several times larger than the budget."""

import json

from ..helpers import run_distnet


def test_bench_data_streaming_stays_within_budget():
    result = run_distnet(["bench", "data", "--samples", 80000, "--budget-mb", 16, "--seconds", 0.2,
                          "--repeats", 1, "--json"], timeout=180)
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["dataset_bytes"] == 80000 * 784 >= 3 * r["budget_bytes"]
    assert {(row["mode"], row["storage"]) for row in r["throughput"]} == {
        ("memory", "contiguous"), ("stream", "contiguous"), ("memory", "gzip"), ("stream", "gzip")}
    assert all(row["samples_per_s"] > 0 for row in r["throughput"])
    for m in r["stream_memory"]:
        assert m["samples_per_s"] > 0
        assert m["tracemalloc_peak_bytes"] < r["budget_bytes"], m
        assert m["rss_growth_bytes"] < r["budget_bytes"] + (16 << 20), m
