"""distnet sweep over rank counts (``--ranks 1,2``): the plan and its left-out pairs, the Slurm array, old
single-rank sweep folders, the scaling efficiencies, and one real sweep on 1 and 2 ranks on the tiny spirals
set (4 points of 2 epochs)."""

import json

import pytest

from distnet.cli import main
from distnet.errors import UserError
from distnet.sweep import launch
from distnet.sweep import plan as P
from distnet.sweep.report import scaling, steps_fit, summarize

from ..helpers import assert_not_blank, png_size, rows

TARGET = ["--target", "accuracy=0.55"]


def sweep_args(data, out, *extra):
    return ["sweep", "spirals-mlp", "--data", data, "--out", out, *TARGET, *extra]


# ---- the plan, its left-out pairs and the Slurm array ----

def test_a_rank_list_leaves_out_the_pairs_it_cannot_divide(tmp_path, spirals_data, capsys, monkeypatch):
    out = tmp_path / "s"
    assert main(sweep_args(spirals_data, out, "--batch-sizes", "125,256", "--ranks", "2,1", "--lr-grid", "0.5,1",
                           "--slurm-array")) == 0
    err = capsys.readouterr().err
    note = "left out batch 125 on 2 ranks (not divisible by ranks x accumulation steps = 2 x 1)"
    assert f"distnet sweep: {note}" in err
    plan = json.loads((out / "sweep.json").read_text())
    assert plan["ranks"] == [1, 2] and plan["version"] == 2 and note in plan["notes"]
    assert [(p["name"], p["ranks"], p["batch"]) for p in plan["points"]] == [
        ("p1-b00125-lr0.5-s0", 1, 125), ("p1-b00125-lr1-s0", 1, 125), ("p1-b00256-lr0.5-s0", 1, 256),
        ("p1-b00256-lr1-s0", 1, 256), ("p2-b00256-lr0.5-s0", 2, 256), ("p2-b00256-lr1-s0", 2, 256)]
    # the same command again continues the sweep (its plan unchanged); the report says what was left out
    assert main(sweep_args(spirals_data, out, "--batch-sizes", "125,256", "--ranks", "1,2", "--lr-grid", "0.5,1",
                           "--slurm-array")) == 0
    assert main(["sweep", "--report", out]) == 0
    report = (out / "report.md").read_text()
    assert f"The sweep {note}." in report and "rank counts 1, 2" in report and "| pending |" in report
    assert [r["ranks"] for r in rows(out).values()] == ["1", "1", "1", "1", "2", "2"]
    # the array: an allocation of the largest count; each task's point on its own count with srun -n
    script = (out / "sweep.sbatch").read_text()
    for line in ("#SBATCH --array=0-5", "#SBATCH --ntasks=2", "#   tasks 0-3: 1 rank(s)",
                 "#   tasks 4-5: 2 rank(s)", f"sbatch --array=4-5 --ntasks=2 {out / 'sweep.sbatch'}"):
        assert line in script, line
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("DISTNET_SRUN_MPI", "pmi2")
    loaded = P.load(out)
    for point, n in ((loaded.points[3], "1"), (loaded.points[4], "2")):
        cmd, env = launch.command(loaded, point, out)
        assert cmd[:4] == ["srun", "-n", n, "--mpi=pmi2"] and point.name + "/metrics.jsonl" in cmd, cmd
    capsys.readouterr()
    assert main(sweep_args(spirals_data, tmp_path / "t", "--batch-sizes", "125,255", "--ranks", "2,4")) == 2
    assert "none is divisible by ranks x accumulation steps for any of --ranks 2,4" in capsys.readouterr().err
    assert main(sweep_args(spirals_data, tmp_path / "t", "--batch-sizes", "64", "--ranks", "1,x")) == 2
    assert "--ranks '1,x': expected a rank count" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_an_old_single_rank_sweep_folder_still_loads_reports_and_continues(tmp_path, spirals_data, capsys):
    # a sweep of one rank count is written as before: ranks an int, its points without theirs
    new = tmp_path / "new"
    args = sweep_args(spirals_data, new, "--batch-sizes", "256,1024", "--ranks", "2", "--slurm-array")
    assert main(args) == 0
    plan = json.loads((new / "sweep.json").read_text())
    assert plan["ranks"] == 2 and plan["version"] == 1 and all("ranks" not in p for p in plan["points"])
    assert [p["name"] for p in plan["points"]] == ["b00256-lr1-s0", "b01024-lr1-s0"]
    assert main(args) == 0  # the same command again: the same plan
    # a folder written by the old code (its sweep.json by hand), one point run
    old = tmp_path / "old"
    (old / "b00256-lr1-s0").mkdir(parents=True)
    points = [dict(index=i, name=f"b{b:05d}-lr1-s0", batch=b, lr_mult=1.0, lr=0.02, seed=0, args=[], auto=False)
              for i, b in enumerate((256, 1024))]
    (old / "sweep.json").write_text(json.dumps(dict(
        config="spirals-mlp", ranks=2, lr_rule="sqrt", base_batch=64, base_lr=0.01, target="accuracy=0.55",
        split="val", epochs=3, resolution=0.03, full_curves=False, points=points, notes=[], version=1), indent=1))
    lines = [dict(event="start", step=0, time=100.0, steps_per_epoch=14, global_batch=256),
             dict(event="train", step=5, epoch=0, time=101.0, samples_per_s=1280.0, accuracy=0.5),
             dict(event="train", step=10, epoch=0, time=102.0, samples_per_s=1280.0, accuracy=0.6),
             dict(event="eval", step=10, split="val", loss=0.5, accuracy=0.6, time=102.5),
             dict(event="summary", step=10, time=103.0)]
    (old / "b00256-lr1-s0" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["sweep", "--report", old]) == 0
    assert "1 of 2 points done" in capsys.readouterr().err
    got = rows(old)
    assert got["b00256-lr1-s0"]["ranks"] == "2" and got["b01024-lr1-s0"]["ranks"] == "2"
    assert got["b00256-lr1-s0"]["status"] == "reached" and got["b00256-lr1-s0"]["steps_to_target"] == "10"
    assert got["b00256-lr1-s0"]["wall_s_to_target"] == "2.5" and got["b00256-lr1-s0"]["samples_per_s"] == "1280"
    assert got["b00256-lr1-s0"]["strong_efficiency"] == ""  # one rank count: no scaling against another
    report = (old / "report.md").read_text()
    assert "2 rank(s) per run" in report and "## Rank counts" not in report and "| ranks |" not in report
    f, per_batch = steps_fit(old)
    assert f is None and [(d["batch"], d["steps_to_target"], d["ranks"]) for d in per_batch] == [(256, 10, [2])]
    assert P.load(old).points[1].ranks == 2


# ---- strong and weak scaling, from hand-made rows ----

def _row(ranks, batch, sps, lr_mult=1.0, steps=None, wall=None, status=None):
    keys = ["lr", "samples_to_target", "epochs_to_target", "best_val_accuracy", "best_test_accuracy",
            "final_train_accuracy", "generalization_gap", "noise_scale_mean", "noise_scale_at_target"]
    return dict(dict.fromkeys(keys), ranks=ranks, batch=batch, samples_per_s=sps, lr_mult=lr_mult,
                status=status or ("reached" if steps else "not reached"), steps_to_target=steps,
                wall_s_to_target=wall)


def test_strong_and_weak_scaling_efficiency_from_hand_made_rows():
    rows = [_row(1, 256, 900, lr_mult=0.5, steps=40, wall=10.0), _row(1, 256, 1100, steps=30, wall=8.0),
            _row(1, 512, 1600, steps=20, wall=6.0),
            _row(2, 256, 1800, steps=30, wall=5.0), _row(2, 256, 1800, lr_mult=2.0),
            _row(2, 512, 1900, steps=21, wall=4.0), _row(2, 512, 1900, steps=19, wall=6.0),  # two seeds
            _row(2, 1024, 2400, steps=12, wall=3.0),
            _row(4, 256, 2000), _row(4, 512, None, status="pending"), _row(4, 1024, 3600, steps=12, wall=2.0)]
    got = {(d["ranks"], d["batch"]): d for d in scaling(rows)}
    assert sorted(got) == [(1, 256), (1, 512), (2, 256), (2, 512), (2, 1024), (4, 256), (4, 512), (4, 1024)]
    expect = {  # (samples/s, strong, its base, weak, its base), by hand
        (1, 256): (1000, 1, 1, 1, 1),  # the mean over both rates' points
        (1, 512): (1600, 1, 1, 1, 1),
        (2, 256): (1800, 1800 / (2 * 1000), 1, 1, 2),  # no 128 per rank on 1 rank: its own base
        (2, 512): (1900, 1900 / (2 * 1600), 1, 1900 / (2 * 1000), 1),
        (2, 1024): (2400, 1, 2, 2400 / (2 * 1600), 1),  # no batch 1024 on 1 rank: strong against 2 ranks
        (4, 256): (2000, 2000 / (4 * 1000), 1, 1, 4),
        (4, 1024): (3600, 3600 / (4 / 2 * 2400), 2, 3600 / (4 * 1000), 1),
    }
    for key, (sps, strong, p_strong, weak, p_weak) in expect.items():
        d = got[key]
        assert d["samples_per_s"] == pytest.approx(sps), key
        assert (d["strong_efficiency"], d["strong_base"]) == (pytest.approx(strong), p_strong), key
        assert (d["weak_efficiency"], d["weak_base"]) == (pytest.approx(weak), p_weak), key
    assert got[2, 512]["strong_efficiency"] == pytest.approx(0.59375)
    assert got[4, 1024]["weak_efficiency"] == pytest.approx(0.9)
    assert got[4, 512]["samples_per_s"] is None and got[4, 512]["strong_efficiency"] is None
    assert got[4, 512]["weak_efficiency"] is None
    # time to target: the best rate's (fewest steps), mean over seeds; none where no rate reached it
    assert (got[1, 256]["wall_s_to_target"], got[1, 256]["lr_mult"]) == (8.0, 1.0)
    assert got[2, 512]["wall_s_to_target"] == 5.0 and got[2, 512]["steps_to_target"] == 20
    assert got[4, 256]["wall_s_to_target"] is None and got[4, 256]["lr_mult"] is None
    # the fit's rows: per batch the smallest rank count that reached the target, every count that did listed
    per_batch, f, _ = summarize(rows)
    pooled = [(d["batch"], d["from_ranks"], d["ranks"], d["steps_to_target"], d["wall_s_to_target"])
              for d in per_batch]
    assert pooled == [(256, 1, [1, 2], 30, 8.0), (512, 1, [1, 2], 20, 6.0), (1024, 2, [2, 4], 12, 3.0)]
    assert per_batch[1]["steps_by_ranks"] == {1: 20, 2: 20} and f is not None and f.n == 3


# ---- a real sweep on 1 and 2 ranks: interrupted, continued, reported ----

@pytest.mark.mpi
def test_a_sweep_over_rank_counts_resumes_and_reports_scaling(tmp_path, spirals_data, distnet):
    out = tmp_path / "s"
    # 256: 14 steps an epoch, 28 in all; on 2 ranks rank 1 dies at step 20, after the checkpoint at 14 (a rank 1
    # only the 2-rank points have; 512, 14 steps, never gets there)
    args = sweep_args(spirals_data, out, "--batch-sizes", "256,512", "--ranks", "1,2", "--epochs", "2",
                      "--full-curves", "--no-progress")
    r = distnet(*args, env={"DISTNET_FAULT": "crash@1:20"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 point(s) failed: p2-b00256-lr1-s0;" in r.stderr
    done = (out / "p2-b00512-lr1-s0" / "metrics.jsonl").read_text()
    r = distnet(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 points in" in r.stderr and "3 done, 1 to resume" in r.stderr
    assert (out / "p2-b00512-lr1-s0" / "metrics.jsonl").read_text() == done
    log = (out / "p2-b00256-lr1-s0" / "log.txt").read_text().splitlines()
    runs = [t for t in log if t.startswith("$ ")]
    assert len(runs) == 2 and all(" -n 2 " in t for t in runs) and runs[1].endswith("--resume"), runs
    starts = [json.loads(t) for t in (out / "p2-b00256-lr1-s0" / "metrics.jsonl").read_text().splitlines()
              if '"start"' in t]
    assert [s["step"] for s in starts] == [0, 14]

    got = rows(out)
    assert sorted(got) == ["p1-b00256-lr1-s0", "p1-b00512-lr1-s0", "p2-b00256-lr1-s0", "p2-b00512-lr1-s0"]
    sps = {}
    for name, row in got.items():
        p, b = int(row["ranks"]), int(row["batch"])
        assert name.startswith(f"p{p}-") and row["status"] == "reached", row
        sps[p, b] = float(row["samples_per_s"])
        assert sps[p, b] > 0
    for b in (256, 512):  # the same training on any number of ranks: the same step reaches the target
        assert got[f"p1-b{b:05d}-lr1-s0"]["steps_to_target"] == got[f"p2-b{b:05d}-lr1-s0"]["steps_to_target"]
        assert float(got[f"p1-b{b:05d}-lr1-s0"]["strong_efficiency"]) == 1
        strong = float(got[f"p2-b{b:05d}-lr1-s0"]["strong_efficiency"])
        assert strong == pytest.approx(sps[2, b] / (2 * sps[1, b]), rel=1e-4)
    weak = float(got["p2-b00512-lr1-s0"]["weak_efficiency"])  # 256 per rank, against batch 256 on 1 rank
    assert weak == pytest.approx(sps[2, 512] / (2 * sps[1, 256]), rel=1e-4)

    report = (out / "report.md").read_text()
    assert "## Rank counts" in report and "rank counts 1, 2" in report
    cells = [c.strip() for c in next(t for t in report.splitlines() if t.startswith("| 2 | 512 | 256 |")).split("|")]
    assert cells[5].endswith(" (1)") and float(cells[5].split()[0]) == pytest.approx(100 * strong, abs=0.06), cells
    assert cells[6].endswith(" (1)") and float(cells[6].split()[0]) == pytest.approx(100 * weak, abs=0.06), cells
    assert "| 256 | **1**, 2 |" in report and "differ by 0.0 % at most" in report
    assert "![scaling](scaling.png)" in report and "![time](time_to_target.png)" in report
    for name, (w, h) in (("scaling.png", (1175, 607)), ("time_to_target.png", (759, 591))):  # at 120 dpi
        assert_not_blank(out / name)
        width, height = png_size(out / name)
        assert w - 250 < width < w + 250 and h - 150 < height < h + 150, (name, width, height)
    assert_not_blank(out / "steps_to_target.png")

    f, per_batch = steps_fit(out)
    assert f is not None and f.n == 2
    assert [(d["batch"], d["ranks"], d["steps_to_target"]) for d in per_batch] == [
        (b, [1, 2], int(got[f"p1-b{b:05d}-lr1-s0"]["steps_to_target"])) for b in (256, 512)]
    with pytest.raises(UserError) as e:
        steps_fit(tmp_path)
    assert "is not a sweep folder" in str(e.value) and "\n" not in str(e.value)
