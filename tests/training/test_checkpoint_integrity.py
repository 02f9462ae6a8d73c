"""Checkpoints that are damaged, truncated or never finished: the checksum, the fall-back to the one before,
and a full disk (a real tmpfs) that must leave the previous checkpoint loadable."""

import json
import shutil

import h5py
import numpy as np
import pytest

from distnet import checkpoint as ckpt

from ..helpers import run_distnet

pytestmark = pytest.mark.mpi


def write(folder, step, value=1.0):
    path = ckpt.checkpoint_path(folder, step)
    ckpt.write_h5_atomic(path, {"model/params": np.full(1000, value, np.float32), "optimizer/t": np.array(3)},
                         attrs={"global_step": step, "config": "x", "flag": True, "shape": [1, 2]},
                         groups_attrs={"optimizer": {"lr": 0.1}})
    return path


def flip_a_byte(path, dataset="model/params", at=10):
    """Change one byte inside an array's data on disk (a bit rot the HDF5 structure does not notice)."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + at)
        byte = fh.read(1)
        fh.seek(offset + at)
        fh.write(bytes([byte[0] ^ 0xFF]))


def truncate(path):
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def test_the_checksum_covers_arrays_and_attributes(tmp_path):
    path = write(tmp_path, 1)
    arrays, attrs = ckpt.read_verified(path)
    assert arrays["model/params"].sum() == 1000 and attrs["optimizer"]["lr"] == 0.1
    flip_a_byte(path)
    with pytest.raises(ckpt.Damaged, match="checksum does not match"):
        ckpt.read_verified(path)
    path = write(tmp_path, 2)
    with h5py.File(path, "r+") as f:
        f.attrs["global_step"] = 3
    with pytest.raises(ckpt.Damaged, match="checksum does not match"):
        ckpt.read_verified(path)
    path = write(tmp_path, 4)
    truncate(path)
    with pytest.raises(ckpt.Damaged, match="truncated or corrupt HDF5"):
        ckpt.read_verified(path)


def test_latest_valid_passes_over_damaged_newer_checkpoints(tmp_path):
    good, bad1, bad2 = write(tmp_path, 10), write(tmp_path, 20), write(tmp_path, 30)
    assert ckpt.latest_valid(tmp_path) == (bad2, [])
    flip_a_byte(bad1)
    truncate(bad2)
    path, skipped = ckpt.latest_valid(tmp_path)
    assert path == good and [p for p, _ in skipped] == [bad2, bad1]
    truncate(good)
    assert ckpt.latest_valid(tmp_path)[0] is None


def test_a_checkpoint_from_before_checksums_is_still_read(tmp_path):
    path = write(tmp_path, 1)
    with h5py.File(path, "r+") as f:
        del f.attrs[ckpt.CHECKSUM]
    assert ckpt.latest_valid(tmp_path) == (path, [])


def test_a_file_that_is_not_hdf5_is_not_a_damaged_checkpoint(tmp_path):
    metrics = tmp_path / "mlp.jsonl"
    metrics.write_text('{"event": "start", "step": 0}\n')
    with pytest.raises(ckpt.NotCheckpoint, match=r"mlp.jsonl is not a distnet checkpoint \(not an HDF5 file\): give a "
                                                 "checkpoint file or a checkpoint folder"):
        ckpt.read_verified(metrics)
    with pytest.raises(ckpt.NotCheckpoint):
        ckpt.read_meta(metrics)
    # in a checkpoint folder, a ckpt-*.h5 that is not HDF5 is passed over like any unreadable one
    good, bad = write(tmp_path, 10), ckpt.checkpoint_path(tmp_path, 20)
    bad.write_bytes(b"\0" * 4096)
    assert ckpt.latest_valid(tmp_path) == (good, [(bad, "not an HDF5 file")])
    assert ckpt.is_hdf5(good) and not ckpt.is_hdf5(metrics)


def test_every_command_that_loads_a_checkpoint_says_not_a_checkpoint(tmp_path, spirals_data):
    readme, metrics = tmp_path / "README.md", tmp_path / "mlp.jsonl"
    readme.write_text("# notes\n" * 200)
    metrics.write_text('{"event": "start", "step": 0}\n')
    for command in (["eval", metrics], ["noise", readme], ["plot", "--boundary", metrics]):
        r = run_distnet([*command, "--data", spirals_data], timeout=60)
        errors = [line for line in r.stderr.splitlines() if line.startswith("distnet: error:")]
        assert r.returncode == 2 and len(errors) == 1, r.stderr
        assert errors[0] == (f"distnet: error: {command[-1]} is not a distnet checkpoint (not an HDF5 file): give "
                             "a checkpoint file or a checkpoint folder"), r.stderr
    shard = next((spirals_data / "train").glob("*.h5"))  # HDF5, but a dataset's shard
    r = run_distnet(["eval", shard, "--data", spirals_data], timeout=60)
    assert r.returncode == 2 and f"{shard} is not a distnet checkpoint (an HDF5 file without model/params)" \
        in r.stderr and "Traceback" not in r.stderr, r.stderr
    truncated = write(tmp_path, 1)
    truncate(truncated)
    r = run_distnet(["eval", truncated, "--data", spirals_data], timeout=60)
    assert r.returncode == 2 and f"checkpoint {truncated} is damaged (truncated or corrupt HDF5)" in r.stderr, r.stderr


def test_temporaries_of_unfinished_writes_are_removed_and_nothing_else(tmp_path):
    kept = [write(tmp_path, 1), tmp_path / "notes.txt", tmp_path / ".ckpt-000000001.h5.tmp-x"]
    kept[1].write_text("x")
    kept[2].write_text("x")
    stale = [tmp_path / ".ckpt-000000002.h5.tmp-4242", tmp_path / ".best.h5.tmp-17"]
    for p in stale:
        p.write_bytes(b"half")
    assert sorted(ckpt.remove_temporaries(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


# -- end to end ---------------------------------------------------------------------------------------------

SPIRALS = ["--set", "train.log_every=1", "--quiet", "--checkpoint-every", "20"]


def metrics(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, spirals_data):
    """A 2-rank run that train.max_steps stopped at step 80, inside epoch 2 (62 steps an epoch), with a
    checkpoint every 20 steps (40, 60 and 80 kept): its folder, holding ck/ and m.jsonl. Tests resume or damage
    a copy of it."""
    out = tmp_path_factory.mktemp("stopped")
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--checkpoint-dir", out / "ck",
                     "--metrics", out / "m.jsonl", *SPIRALS, "--set", "train.max_steps=80"], n=2, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in ckpt.list_checkpoints(out / "ck")] == [ckpt.checkpoint_path(out / "ck", s).name
                                                                    for s in (40, 60, 80)]
    return out


@pytest.mark.parametrize("damage", [truncate, flip_a_byte], ids=["truncated", "flipped"])
def test_resume_falls_back_from_a_damaged_newest_checkpoint(tmp_path, spirals_data, stopped_run, damage):
    shutil.copytree(stopped_run, tmp_path, dirs_exist_ok=True)
    ck, m = tmp_path / "ck", tmp_path / "m.jsonl"
    base = ["train", "spirals-mlp", "--data", spirals_data, "--checkpoint-dir", ck, "--metrics", m, *SPIRALS]
    newest = ckpt.checkpoint_path(ck, 80)
    damage(newest)
    r = run_distnet([*base, "--epochs", "2", "--resume"], n=2, timeout=120)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and str(newest) in warnings[0], r.stderr
    assert f"using {ckpt.checkpoint_path(ck, 60)} instead" in warnings[0]
    start = [x for x in metrics(m) if x["event"] == "start"][-1]
    assert start["step"] == 60 and start["resumed_from"] == str(ckpt.checkpoint_path(ck, 60))
    assert start["skipped_checkpoints"] == [str(newest)]
    assert metrics(m)[-1]["event"] == "summary" and metrics(m)[-1]["steps"] == 124
    # distnet eval of the folder takes the newest valid one too (the damaged one was pruned by now: damage again)
    damage(ckpt.latest(ck))
    ev = run_distnet(["eval", ck, "--data", spirals_data, "--json"], timeout=60)
    assert ev.returncode == 0, ev.stderr
    valid = str(ckpt.list_checkpoints(ck)[-2])
    assert json.loads(ev.stdout)["checkpoint"] == valid
    assert "damaged" in ev.stderr
    # and so do noise and plot --boundary, with the same warning (one road: evaluate.trained.load_trained)
    no = run_distnet(["noise", ck, "--data", spirals_data, "--batch-sizes", "8,16", "--draws", "2", "--json"],
                     timeout=60)
    assert no.returncode == 0 and json.loads(no.stdout)["checkpoint"] == valid, no.stderr
    pl = run_distnet(["plot", "--boundary", ck, "--data", spirals_data, "--out", tmp_path / "b.png"], timeout=60)
    assert pl.returncode == 0 and (tmp_path / "b.png").is_file(), pl.stderr
    for r in (no, pl):
        assert [line for line in r.stderr.splitlines() if "damaged" in line] == \
            [line for line in ev.stderr.splitlines() if "damaged" in line], r.stderr


def test_the_resume_line_says_from_where(tmp_path, spirals_data, stopped_run):
    ck = tmp_path / "ck"
    shutil.copytree(stopped_run / "ck", ck)  # written on 2 ranks, resumed on 1; one step is enough to say it
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--checkpoint-dir", ck, "--epochs", "3",
                     "--resume", "--set", "train.max_steps=81"], timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"distnet: resumed from {ckpt.checkpoint_path(ck, 80)}: step 80, epoch 2 of 3" in r.stdout + r.stderr


def test_a_full_disk_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, spirals_data, tmpfs):
    # one checkpoint is 63 KB: the first fits, the second (written beside it) does not
    ck = tmpfs("96k")
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--checkpoint-dir", ck, "--epochs", "2",
                     "--set", "checkpoint.keep=1", "--quiet"], n=2, timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("distnet: error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    first = ckpt.checkpoint_path(ck, 62)
    assert f"cannot write checkpoint {ckpt.checkpoint_path(ck, 124)} at step 124: No space left on device" \
        in errors[0]
    assert f"{first} is intact" in errors[0] and "--resume" in errors[0]
    assert sorted(p.name for p in ck.iterdir()) == [first.name]  # no temporary file left behind
    assert ckpt.latest_valid(ck) == (first, [])


def test_a_full_disk_under_the_metrics_file_is_one_line_and_exit_2(tmp_path, spirals_data, tmpfs):
    folder = tmpfs("8k")
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--metrics", folder / "m.jsonl", "--quiet",
                     "--set", "train.log_every=1"], n=2, timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("distnet: error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot write metrics file {folder / 'm.jsonl'}: No space left on device" in errors[0]
