"""Outputs the user asked for are written or refused before any work (issue 25): a trace, metrics, figure or
checkpoint path on /proc or /sys, a device that refuses a write (/dev/full), a device or pipe where the file
is replaced by a rename, a full disk; and ``eval --top-k`` against the model's classes."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from distnet import outputs
from distnet.errors import UserError

from .helpers import run_distnet


def refused(fn, *args, **kwargs):
    with pytest.raises(UserError) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_dev_full_takes_no_metrics_and_no_trace():
    assert Path("/dev/full").exists() and Path("/proc/self/mountinfo").exists()  # Linux: CI has both
    assert "No space left on device" in refused(outputs.check_file, "/dev/full", "metrics file", "--metrics",
                                                outputs.is_metrics)
    assert "is a character device, not a file" in refused(outputs.check_file, "/dev/full", "trace file", "--trace",
                                                          outputs.is_trace, replaced=True)
    outputs.check_file("/dev/null", "metrics file", "--metrics", outputs.is_metrics)  # a device that takes writes
    assert "--trace" in refused(outputs.check_file, "/dev/null", "trace file", "--trace", outputs.is_trace,
                                replaced=True)  # a rename would replace the device itself


@pytest.mark.parametrize("path", ["/proc/distnet-test.jsonl", "/proc/self/status", "/proc/sys/vm/drop_caches",
                                  "/sys/distnet-test.jsonl"])
def test_pseudo_file_systems_are_refused(path):
    assert "file system at" in refused(outputs.check_file, path, "metrics file", "--metrics", outputs.is_metrics)
    assert "--checkpoint-dir" in refused(outputs.check_folder, path, "checkpoint folder", "--checkpoint-dir")


def test_a_pipe_without_a_reader_and_a_figure_that_is_no_png(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "cannot be written" in refused(outputs.check_file, fifo, "metrics file", "--metrics", outputs.is_metrics)
    assert "ending in .png" in refused(outputs.check_figure, tmp_path / "x.jpg")
    (tmp_path / "notes.png").write_text("my notes")
    assert "distnet did not write it" in refused(outputs.check_figures, tmp_path, ["notes.png"], "--figures")
    outputs.check_figures(tmp_path / "new" / "figs", ["a.png", "b.png"], "--figures")
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_a_full_disk_is_refused_before_any_work(tmpfs):
    folder = tmpfs("64k")
    with open(folder / "fill", "wb") as f:
        try:
            f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    assert "No space left on device" in refused(outputs.check_folder, folder / "ck", "checkpoint folder",
                                                "--checkpoint-dir")


def test_train_refuses_a_trace_it_cannot_write_before_the_first_step(tmp_path, spirals_data):
    metrics = tmp_path / "m.jsonl"
    for flag, path in (("--trace", "/dev/full"), ("--trace", "/proc/t.json"), ("--metrics", "/dev/full"),
                       ("--checkpoint-dir", "/proc/ck")):
        extra = ["--metrics", metrics] if flag != "--metrics" else []
        r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--quiet", flag, path, *extra], timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and flag in r.stderr, r.stderr
        assert not metrics.exists()  # nothing started


def test_top_k_above_the_classes_is_refused_and_the_default_fits_them(tmp_path, spirals_data):
    from distnet.evaluate.cli import check_top_k

    args = SimpleNamespace(top_k=None)
    check_top_k(args, 2)
    assert args.top_k == 2  # 5 by default, but spirals has 2 classes
    args = SimpleNamespace(top_k=None)
    check_top_k(args, 10)
    assert args.top_k == 5
    assert "--top-k 99: the model has 10 classes" in refused(check_top_k, SimpleNamespace(top_k=99), 10)
    ck = tmp_path / "ck"
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--quiet", "--set", "train.max_steps=2",
                     "--checkpoint-dir", ck], timeout=60)
    assert r.returncode == 0, r.stderr
    r = run_distnet(["eval", ck, "--data", spirals_data, "--top-k", "99"], timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--top-k 99: the model has 2 classes" in r.stderr, \
        r.stderr
