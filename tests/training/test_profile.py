"""The step-time breakdown: phases, the first step left out of the totals, and the every-rank timeline."""

import json

import pytest

from distnet import comm
from distnet.training import profile
from distnet.training.profile import PHASES, StepTimer

from ..helpers import run_distnet


def test_phases_are_charged_and_the_first_step_is_left_out(monkeypatch):
    clock = iter(range(1000))
    monkeypatch.setattr(profile.time, "perf_counter", lambda: float(next(clock)))
    timer = StepTimer(comm.SerialWorld(), enabled=True)
    # step 0 waits 10 s for its first batch (setup), then every phase takes 1 s; steps 1-3 take 1 s each
    for _ in range(9):
        next(clock)
    for step in range(4):
        for phase in PHASES:
            timer.mark(phase)
        timer.end_step(step)
        timer.mark(None)  # logging: charged to nothing
    totals = timer.totals()
    assert totals.pop("ms_comm_last_arrival_mean") == 1000.0  # one rank: its own wait, step 0 left out
    assert totals == {f"ms_{k}_mean": 1000.0 for k in PHASES}


@pytest.mark.mpi
def test_profile_and_trace_of_a_two_rank_run(tmp_path, spirals_data):
    trace, m = tmp_path / "t.json", tmp_path / "m.jsonl"
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--epochs", "2", "--profile", "--trace", trace,
                     "--metrics", m, "--quiet"], n=2, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in open(m)]
    trains = [x for x in lines if x["event"] == "train"]
    assert all(x[f"ms_{k}"] >= 0 for x in trains for k in PHASES)
    summary = lines[-1]
    assert 0 <= summary["ms_comm_last_arrival_mean"] <= summary["ms_comm_mean"] + 1e-6  # rank 0 waits at least that
    per_step = sum(summary[f"ms_{k}_mean"] for k in PHASES)
    assert 0 < per_step < 1e3 * summary["wall_s"] / summary["steps"]  # evaluation is not in the phases
    events = json.load(open(trace))["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1}
    assert {e["name"] for e in spans} == set(PHASES)
    assert {e["args"]["step"] for e in spans if e["pid"] == 1} == set(range(summary["steps"]))
