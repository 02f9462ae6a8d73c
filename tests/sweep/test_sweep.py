"""distnet sweep (plan, launch, resume, report, fit) and distnet plot's learning curves, with real runs on a
tiny synthetic set: a sweep here is 2 batch sizes of a few steps each on 1 rank."""

import json
import math
import re

import numpy as np
import pytest

from distnet.cli import main
from distnet.sweep.fit import fit
from distnet.sweep.plan import parse_batch_sizes

from ..helpers import assert_not_blank, png_size, rows

# spirals: 3,600 training samples after the 10 % hold-out; batch 1024 takes 3 steps an epoch, 256 takes 14
TINY = ["--batch-sizes", "256,1024", "--epochs", "3", "--target", "accuracy=0.55", "--full-curves",
        "--no-progress"]


@pytest.fixture
def sweep(distnet):
    """sweep(folder, data, *extra, env=None): a TINY sweep (the ``distnet`` fixture: in this process)."""
    def run(folder, data, *extra, env=None):
        return distnet("sweep", "spirals-mlp", "--data", data, "--out", folder, *TINY, *extra, env=env)

    return run


# ---- the fit ----

def test_fit_recovers_the_model_from_its_own_points():
    batches = [32, 64, 128, 256, 512, 1024, 2048, 4096]
    s_min, b_crit = 120.0, 900.0
    f = fit(batches, [s_min * (1 + b_crit / b) for b in batches])
    assert f.s_min == pytest.approx(s_min, rel=1e-9) and f.b_crit == pytest.approx(b_crit, rel=1e-9)
    assert f.e_min == pytest.approx(s_min * b_crit, rel=1e-9) and f.rms_rel < 1e-9
    rng = np.random.default_rng(0)  # 5 % noise: still within 15 %
    noisy = [s_min * (1 + b_crit / b) * math.exp(rng.normal(0, 0.05)) for b in batches]
    g = fit(batches, noisy)
    assert g.s_min == pytest.approx(s_min, rel=0.15) and g.b_crit == pytest.approx(b_crit, rel=0.15)


def test_fit_says_when_one_regime_explains_everything():
    perfect = fit([64, 128, 256, 512], [8000, 4000, 2000, 1000])
    assert math.isinf(perfect.b_crit) and perfect.e_min == pytest.approx(64 * 8000) and "perfect" in perfect.note
    flat = fit([64, 128, 256], [480, 500, 520])  # more steps at larger batches
    assert flat.b_crit == 0 and flat.s_min == pytest.approx(500, rel=0.05)
    assert fit([64], [100]) is None and fit([64, 128], [100, None]) is None


def test_samples_to_target_follow_a_growing_batch():
    from distnet.sweep.collect import _samples_to

    assert _samples_to(10, 64, []) == 640
    # 64 for steps 1..20, then 128 for 21..30, then 512 from 31 on
    assert _samples_to(25, 64, [(20, 128), (30, 512)]) == 20 * 64 + 5 * 128
    assert _samples_to(33, 64, [(20, 128), (30, 512)]) == 20 * 64 + 10 * 128 + 3 * 512
    assert _samples_to(20, 64, [(20, 128)]) == 20 * 64


def test_batch_sizes_take_a_doubling_run():
    assert parse_batch_sizes("32,64,...,8192") == [32 * 2 ** i for i in range(9)]
    assert parse_batch_sizes("100, 300,...,2700") == [100, 300, 900, 2700]
    assert parse_batch_sizes("512,64") == [64, 512]


# ---- user errors: one line, exit 2, nothing written ----

@pytest.mark.parametrize("args, message", [
    (["--batch-sizes", "64,x"], "--batch-sizes '64,x': expected global batch sizes"),
    (["--batch-sizes", "32,64,...,100,200"], "expected global batch sizes"),
    (["--batch-sizes", "64,96", "--ranks", "64"], "96 not divisible by ranks x accumulation steps = 64 x 1"),
    (["--batch-sizes", "64", "--lr-grid", "1,-2"], "--lr-grid '1,-2': expected distinct positive numbers"),
    (["--batch-sizes", "64", "--target", "acc=0.9"], "--target 'acc=0.9': expected METRIC=VALUE"),
    (["--batch-sizes", "64", "--target", ""], "distnet sweep needs --target"),
    (["--batch-sizes", "64", "--resolution", "2"], "--resolution 2.0: give a fraction"),
    (["--batch-sizes", "64", "--set", "train.bogus=1"], "unknown config key train.bogus"),
])
def test_bad_arguments_are_one_line_user_errors(tmp_path, spirals_data, capsys, args, message):
    base = {"--target": "accuracy=0.9"}
    full = ["sweep", "spirals-mlp", "--data", spirals_data, "--out", tmp_path / "s", *args]
    for k, v in base.items():
        if k not in args:
            full += [k, v]
    assert main(full) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distnet: error:") and message in err, err
    assert not (tmp_path / "s").exists()


def test_missing_data_report_of_no_sweep_and_other_settings(tmp_path, spirals_data, capsys):
    assert main(["sweep", "spirals-mlp", "--data", tmp_path / "none", "--batch-sizes", "64", "--target",
                 "accuracy=0.9", "--out", tmp_path / "s"]) == 2
    assert "does not exist: run 'distnet data prepare spirals" in capsys.readouterr().err
    assert main(["sweep", "--report", tmp_path]) == 2
    assert "is not a sweep folder (no sweep.json)" in capsys.readouterr().err
    assert main(["sweep", "--report", tmp_path, "--out", tmp_path]) == 2
    assert "--report reads the settings from the sweep folder" in capsys.readouterr().err
    common = ["sweep", "spirals-mlp", "--data", spirals_data, "--target", "accuracy=0.9", "--out", tmp_path / "s",
              "--slurm-array"]
    assert main([*common, "--batch-sizes", "64,128"]) == 0
    capsys.readouterr()
    assert main([*common, "--batch-sizes", "64,256"]) == 2
    err = capsys.readouterr().err  # the first setting that differs, with both values
    assert err.count("\n") == 1 and "holds a sweep with other settings (sweep.json points[1].name is " \
        '"b00128-lr1-s0" there, "b00256-lr1-s0" here): rerun it with the same options' in err, err
    assert main([*common, "--batch-sizes", "64,128", "--set", "train.clip_grad_norm=1.0"]) == 2
    assert "(config.toml train.clip_grad_norm is 0.0 there, 1.0 here)" in capsys.readouterr().err
    assert main([*common, "--batch-sizes", "64,128"]) == 0  # the same settings again: continued


def test_more_batch_sizes_grow_a_sweep_and_keep_its_points(tmp_path, spirals_data, sweep):
    out = tmp_path / "s"
    r = sweep(out, spirals_data, "--batch-sizes", "1024")
    assert r.returncode == 0, r.stdout + r.stderr
    old = out / "b01024-lr1-s0" / "metrics.jsonl"
    kept, mtime = old.read_text(), old.stat().st_mtime_ns
    r = sweep(out, spirals_data, "--batch-sizes", "512,1024")  # one more: added and run, the old one kept
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 points in" in r.stderr and "(1 done, 0 to resume)" in r.stderr, r.stderr
    assert old.stat().st_mtime_ns == mtime and old.read_text() == kept  # not run again
    plan = json.loads((out / "sweep.json").read_text())
    assert [(p["index"], p["name"]) for p in plan["points"]] == [(0, "b01024-lr1-s0"), (1, "b00512-lr1-s0")]
    got = rows(out)
    assert sorted(got) == ["b00512-lr1-s0", "b01024-lr1-s0"]
    assert all(p["status"] in ("reached", "not reached") for p in got.values()), got
    r = sweep(out, spirals_data, "--batch-sizes", "512,1024,2048", "--lr-rule", "linear")  # not a growth
    assert r.returncode == 2 and 'sweep.json lr_rule is "sqrt" there, "linear" here' in r.stderr, r.stderr
    assert len(json.loads((out / "sweep.json").read_text())["points"]) == 2


def test_a_sweep_grows_only_when_its_points_stay_as_they_were(tmp_path, spirals_data, capsys):
    common = ["sweep", "spirals-mlp", "--data", spirals_data, "--target", "accuracy=0.9", "--slurm-array", "--out"]
    assert main([*common, tmp_path / "s", "--batch-sizes", "64,256"]) == 0
    assert main([*common, tmp_path / "s", "--batch-sizes", "64,128,256", "--lr-grid", "1,2", "--repeats", "2"]) == 0
    names = [p["name"] for p in json.loads((tmp_path / "s" / "sweep.json").read_text())["points"]]
    assert names[:2] == ["b00064-lr1-s0", "b00256-lr1-s0"] and len(names) == 12 and len(set(names)) == 12
    assert "#SBATCH --array=0-11" in (tmp_path / "s" / "sweep.sbatch").read_text()
    capsys.readouterr()
    # an adaptive point grows up to the largest batch size: one more size would change it
    assert main([*common, tmp_path / "a", "--batch-sizes", "64,256", "--auto"]) == 0
    assert main([*common, tmp_path / "a", "--batch-sizes", "64,256,512", "--auto"]) == 2
    err = capsys.readouterr().err
    assert "sweep.json point bauto-lr1-s0 args[" in err and '"train.batch_max=256" there' in err, err


def test_the_first_difference_of_two_settings():
    from distnet.sweep.plan import first_difference

    assert first_difference({"a": 1, "b": [1, {"c": 2}]}, {"a": 1, "b": [1, {"c": 2}]}) is None
    assert first_difference({"a": 1, "b": [1, {"c": 2}]}, {"a": 1, "b": [1, {"c": 3}]}) == ("b[1].c", "2", "3")
    assert first_difference({"a": [1]}, {"a": [1, 2]}) == ("a[1]", "absent", "2")
    assert first_difference({"a": 1}, {"a": 1, "d": "x"}) == ("d", "absent", '"x"')
    assert first_difference({"a": 1}, {"a": 1.0}) == ("a", "1", "1.0")


# ---- Slurm array, --run-point, --report ----

def test_slurm_array_script_and_report_of_the_points_run(tmp_path, spirals_data, capsys, distnet):
    out = tmp_path / "s"
    assert main(["sweep", "spirals-mlp", "--data", spirals_data, "--out", out, "--ranks", "2", "--lr-grid",
                 "0.5,1", "--repeats", "2", *TINY, "--slurm-array", "--launcher-prefix", "nice -n 5"]) == 0
    assert f"sbatch {out / 'sweep.sbatch'}" in capsys.readouterr().out
    script = (out / "sweep.sbatch").read_text()
    assert script.startswith("#!/bin/bash")
    for line in ("#SBATCH --array=0-7", "#SBATCH --ntasks=2", f"--run-point {out.resolve()} \"$SLURM_ARRAY_TASK_ID\"",
                 "--launcher-prefix 'nice -n 5'", f"distnet sweep --report {out.resolve()}"):
        assert line in script, line
    plan = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in plan["points"]][:3] == ["b00256-lr0.5-s0", "b00256-lr0.5-s1", "b00256-lr1-s0"]
    assert not list(out.glob("b0*"))  # nothing ran
    import fcntl  # a point another process is running is left to it

    (out / "b01024-lr1-s0").mkdir()
    with open(out / "b01024-lr1-s0" / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["sweep", "--run-point", out, "6"]) == 2
    assert "point b01024-lr1-s0 of" in capsys.readouterr().err
    # what one array task does (here without Slurm: mpiexec), then the collection
    r = distnet("sweep", "--run-point", out, "6", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = distnet("sweep", "--report", out, timeout=120)
    assert r.returncode == 0 and "1 of 8 points done" in r.stderr, r.stderr
    got = rows(out)
    assert got["b01024-lr1-s0"]["status"] == "reached" and got["b00256-lr1-s0"]["status"] == "pending"
    assert int(got["b01024-lr1-s0"]["steps_to_target"]) <= 9
    assert (out / "report.md").read_text().count("| pending |") == 7
    assert (out / "curves.png").exists()


# ---- a sweep interrupted and run again ----

def test_an_interrupted_sweep_keeps_finished_points_and_resumes_the_other(tmp_path, spirals_data, sweep):
    out = tmp_path / "s"
    # batch 256 runs first; its rank dies at step 20, after its first checkpoint (epoch 1, step 14); batch
    # 1024 (9 steps) never gets there and finishes
    r = sweep(out, spirals_data, env={"DISTNET_FAULT": "crash@0:20"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "distnet sweep: point 1/2 b00256-lr1-s0: failed (exit " in r.stderr, r.stderr
    assert "run the same command again" in r.stderr
    # a log (not a terminal, --no-progress): a line per finished point
    assert re.search(r"^distnet sweep: point 2/2 b01024-lr1-s0: reached in \d+ steps, \d+ s$", r.stderr, re.M), r.stderr
    done = (out / "b01024-lr1-s0" / "metrics.jsonl").read_text()
    assert '"event": "summary"' in done
    assert list((out / "b00256-lr1-s0" / "ckpt").glob("ckpt-000000014.h5"))
    r = sweep(out, spirals_data)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 points in" in r.stderr and "1 done, 1 to resume" in r.stderr
    resumed = re.search(r"^distnet sweep: point 2/2 b00256-lr1-s0: reached in (\d+) steps, \d+ s$", r.stderr, re.M)
    assert resumed and resumed.group(1) == rows(out)["b00256-lr1-s0"]["steps_to_target"], r.stderr
    assert (out / "b01024-lr1-s0" / "metrics.jsonl").read_text() == done  # kept, not run again
    log = (out / "b00256-lr1-s0" / "log.txt").read_text()
    assert log.count("$ ") == 2 and "--resume" in log.splitlines()[-1] or "--resume" in log
    lines = [json.loads(t) for t in (out / "b00256-lr1-s0" / "metrics.jsonl").read_text().splitlines()]
    starts = [m for m in lines if m["event"] == "start"]
    assert len(starts) == 2 and starts[1]["step"] == 14 and "resumed_from" in starts[1]
    assert lines[-1]["event"] == "summary" and lines[-1]["steps"] == 42
    # evaluations grow geometrically (3 %) past a first gap of 3 % of an epoch
    evals = sorted({m["step"] for m in lines if m["event"] == "eval" and m["step"] <= 14})
    assert evals[:3] == [1, 2, 3]
    got = rows(out)
    assert [got[p]["status"] for p in ("b00256-lr1-s0", "b01024-lr1-s0")] == ["reached", "reached"]
    for p in got.values():
        assert float(p["samples_per_s"]) > 0 and 0.5 < float(p["best_val_accuracy"]) <= 1
        assert p["samples_to_target"] == str(int(p["steps_to_target"]) * int(p["batch"]))
        assert abs(float(p["generalization_gap"]) - (float(p["final_train_accuracy"])
                                                    - float(p["final_test_accuracy"]))) < 1e-4
    report = (out / "report.md").read_text()
    assert "## Fit" in report and "S_min" in report and "| 1024 |" in report
    for name in ("steps_to_target.png", "samples_to_target.png", "accuracy_gap.png", "curves.png"):
        assert_not_blank(out / name)


def test_an_adaptive_batch_point_is_compared_with_the_fixed_ones(tmp_path, spirals_data, distnet):
    out = tmp_path / "s"
    r = distnet("sweep", "spirals-mlp", "--data", spirals_data, "--out", out, "--batch-sizes", "64,512",
                "--ranks", "2", "--epochs", "10", "--target", "accuracy=0.85", "--auto")
    assert r.returncode == 0, r.stdout + r.stderr
    # stderr is not a terminal: no bar, a line per point instead
    lines = [t for t in r.stderr.splitlines() if t.startswith("distnet sweep: point ")]
    assert [t.split()[3:5] for t in lines] == [["1/3", "b00064-lr1-s0:"], ["2/3", "b00512-lr1-s0:"],
                                               ["3/3", "bauto-lr1-s0:"]], r.stderr
    assert "point/s" not in r.stderr and "%|" not in r.stderr, r.stderr
    log = (out / "bauto-lr1-s0" / "log.txt").read_text()
    assert "--batch-size auto --set train.batch_min=64 --set train.batch_max=512" in log
    got = rows(out)["bauto-lr1-s0"]
    # a target that takes ~200 steps: the batch grows on the way (three times here; 0.6 was reached at step 1)
    assert got["auto"] == "yes" and got["status"] == "reached" and int(got["final_batch"]) > 64, got
    report = (out / "report.md").read_text()
    assert "## Adaptive batch" in report and "| bauto-lr1-s0 | reached |" in report
    assert "Best fixed batch by time to target:" in report


def test_a_target_ends_the_run_at_the_evaluation_that_reaches_it(tmp_path, spirals_data, distnet):
    m = tmp_path / "m.jsonl"
    r = distnet("train", "spirals-mlp", "--data", spirals_data, "--metrics", m, "--quiet", "--set",
                "data.val_fraction=0.1", "--set", "train.eval_growth=0.1", "--set", 'train.target="loss=0.6"',
                timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(t) for t in m.read_text().splitlines()]
    val = [x for x in lines if x["event"] == "eval" and x["split"] == "val"]
    assert val[-1]["loss"] <= 0.6 and all(x["loss"] > 0.6 for x in val[:-1])
    assert lines[-1]["target_reached"] is True and lines[-1]["steps"] == val[-1]["step"] < 60 * 56
    steps = [x["step"] for x in val]
    assert all(b >= 1.1 * a or b % 56 == 0 for a, b in zip(steps, steps[1:]))  # growth, or an epoch end


# ---- distnet plot ----

def test_plot_draws_learning_curves_of_runs(tmp_path, spirals_data, capsys, distnet):
    runs = []
    for b, noise in ((128, 1), (512, 1), (256, 0)):
        m = tmp_path / f"b{b}.jsonl"
        r = distnet("train", "spirals-mlp", "--data", spirals_data, "--epochs", "2", "--batch-size", b,
                    "--metrics", m, "--quiet", "--set", "data.val_fraction=0.1", "--set", "train.log_every=2",
                    "--set", f"train.noise_every={noise}", timeout=120)
        assert r.returncode == 0, r.stderr
        runs.append(m)
    for x in ("steps", "samples", "time"):  # with the noise scale: 2 x 2 panels, 11 x 7.5 inches at 120 dpi
        png = tmp_path / f"curves-{x}.png"
        assert main(["plot", *runs[:2], "--x", x, "--out", png]) == 0
        w, h = png_size(png)
        assert 1000 < w < 1400 and 700 < h < 950, (w, h)  # bbox tightened
        assert_not_blank(png)
    png = tmp_path / "no-noise.png"  # without: 1 x 3 panels, 14 x 4.2 inches
    assert main(["plot", runs[2], "--out", png]) == 0
    w, h = png_size(png)
    assert 1300 < w < 1750 and 420 < h < 560, (w, h)
    assert_not_blank(png)
    assert main(["plot", runs[0]]) == 0 and (tmp_path / "b128.png").exists()
    capsys.readouterr()
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"event": "start", "step": 0}\n')
    assert main(["plot", empty]) == 2
    assert "has no train or eval lines" in capsys.readouterr().err
    assert not (tmp_path / "empty.png").exists()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_ends_the_running_point_and_leaves_nothing_behind(tmp_path, spirals_data, sig):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "distnet", "sweep", "spirals-mlp", "--data", str(spirals_data), "--out", str(out),
           "--batch-sizes", "256", "--epochs", "20000", "--target", "accuracy=0.999", "--no-progress"]
    # (20000 epochs, minutes: the point must still run when the signal comes; 500 ended first on a busy machine)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    metrics = out / "b00256-lr1-s0" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and '"event": "train"' in metrics.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the point never started"
        time.sleep(0.2)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err  # stopped by a signal, as a training run (docs/guide/checkpoints.md)
    by = "Ctrl-C" if sig == "SIGINT" else "SIGTERM"
    assert f"distnet sweep: interrupted ({by}); run the same command again to continue" in err, err

    def in_sweep(pid):
        try:
            return os.readlink(f"/proc/{pid}/cwd") == str(out)
        except OSError:
            return False

    deadline = time.monotonic() + 30  # the point's launcher and rank are gone (SIGTERM, then SIGKILL)
    while [p for p in os.listdir("/proc") if p.isdigit() and in_sweep(p)]:
        assert time.monotonic() < deadline, "processes of the interrupted point are still running"
        time.sleep(0.2)
    assert "| incomplete |" in (out / "report.md").read_text()
