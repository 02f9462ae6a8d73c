"""What a user passes is checked before training, in seconds, on every rank together; and --force never
deletes what distnet did not write. Real processes (mpiexec -n 2 where ranks matter), each with a timeout."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from distnet.data import fingerprint, fingerprint_difference, open_dataset
from distnet.data.prepare import prepare

from ..helpers import mpiexec_path, run_distnet

pytestmark = pytest.mark.mpi


def one_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("distnet: error: "), r.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def train(data, *args, n=2, timeout=60):
    t = time.monotonic()
    r = run_distnet(["train", "spirals-mlp", "--data", data, "--quiet", *args], n=n, timeout=timeout)
    return r, time.monotonic() - t


# -- outputs ------------------------------------------------------------------------------------------------

def test_a_checkpoint_folder_under_a_file_stops_every_rank_in_seconds(tmp_path, spirals_data):
    (tmp_path / "afile").write_text("x")
    r, seconds = train(spirals_data, "--checkpoint-dir", tmp_path / "afile" / "ck")
    one_error(r, f"checkpoint folder {tmp_path / 'afile' / 'ck'} cannot be created", "is a file",
              "choose another --checkpoint-dir")
    assert seconds < 5


def test_a_read_only_checkpoint_folder_stops_every_rank_in_seconds(request, tmp_path, spirals_data, tmpfs):
    folder = tmpfs("64k", "ro")  # read-only for root too (a chmod would not stop root)
    r, seconds = train(spirals_data, "--checkpoint-dir", folder / "ck")
    one_error(r, f"checkpoint folder {folder / 'ck'} is not writable", "Read-only file system")
    assert seconds < 5
    r, _ = train(spirals_data, "--metrics", folder / "m.jsonl")
    one_error(r, f"metrics file {folder / 'm.jsonl'}: its folder {folder} is not writable", "Read-only file system",
              "--metrics")


def test_a_metrics_file_distnet_did_not_write_is_never_overwritten(tmp_path, spirals_data):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    r, _ = train(spirals_data, "--metrics", notes)
    one_error(r, f"metrics file {notes} exists and distnet did not write it", "choose another --metrics")
    assert notes.read_text() == "my notes\n"
    r, _ = train(spirals_data, "--metrics", tmp_path, n=None)
    one_error(r, f"metrics file {tmp_path} is a folder")
    metrics = tmp_path / "m.jsonl"  # a distnet metrics file is replaced by a new run
    for _ in range(2):
        r, _ = train(spirals_data, "--metrics", metrics, "--set", "train.max_steps=2", n=None)
        assert r.returncode == 0, r.stderr
    assert sum(1 for line in open(metrics) if '"start"' in line) == 1


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory, spirals_data):
    """The checkpoint folder of an earlier 1-rank run (trained in this process: only its files matter here),
    with a checkpoint every 20 steps, stopped at step 40: ckpt-000000020.h5 and ckpt-000000040.h5. Tests that
    write into it or damage it take a copy."""
    from distnet import config as C
    from distnet.training.loop import train as train_here

    ck = tmp_path_factory.mktemp("earlier") / "ck"
    train_here(C.load("spirals-mlp", sets=[f'data.path="{spirals_data}"', f'checkpoint.dir="{ck}"', "log.quiet=true",
                                           "checkpoint.every=20", "train.max_steps=40"]))
    assert sorted(p.name for p in ck.glob("ckpt-*.h5")) == ["ckpt-000000020.h5", "ckpt-000000040.h5"]
    return ck


def test_a_fresh_run_never_writes_into_an_earlier_runs_checkpoints(tmp_path, spirals_data, earlier_run):
    ck = tmp_path / "ck"
    shutil.copytree(earlier_run, ck)
    r, _ = train(spirals_data, "--checkpoint-dir", ck)
    one_error(r, f"checkpoint folder {ck} already holds 2 checkpoint(s) of an earlier run",
              "ckpt-000000040.h5", "--resume")


# -- the data folder ----------------------------------------------------------------------------------------

def test_a_raw_idx_folder_names_the_prepare_command(fashion_source):
    before = sorted(os.listdir(fashion_source))
    r, seconds = train(fashion_source)
    one_error(r, f"{fashion_source} holds raw IDX files (t10k-images-idx3-ubyte.gz",
              f"`distnet data prepare fashion-mnist --source {fashion_source} --out data/fashion-mnist`")
    assert "--force" not in r.stderr and seconds < 5
    assert sorted(os.listdir(fashion_source)) == before


def test_a_folder_that_is_not_a_dataset_is_named_with_what_it_holds(tmp_path, spirals_data):
    (tmp_path / "notes.txt").write_text("x")
    r, _ = train(tmp_path, n=None)
    one_error(r, f"{tmp_path} is not a prepared dataset", "notes.txt", "--out DIR")
    assert "--force" not in r.stderr
    r, _ = train(tmp_path / "notes.txt", n=None)
    one_error(r, f"{tmp_path / 'notes.txt'} is a file, not a prepared dataset folder")


# -- --force --------------------------------------------------------------------------------------------------

def test_force_refuses_a_raw_idx_folder_and_keeps_every_file(tmp_path, fashion_source):
    copy = tmp_path / "fashion-mnist"
    shutil.copytree(fashion_source, copy)
    before = sorted(os.listdir(copy))
    r = run_distnet(["data", "prepare", "fashion-mnist", "--source", copy, "--out", copy, "--force"], timeout=120)
    one_error(r, f"--out {copy} holds 4 file(s) that distnet did not write (t10k-images-idx3-ubyte.gz",
              "choose another --out")
    assert sorted(os.listdir(copy)) == before


def test_force_replaces_only_a_prepared_dataset_or_an_empty_folder(tmp_path):
    small = ["--num-train", "200", "--num-test", "50"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_distnet(["data", "prepare", "spirals", "--out", empty, *small]).returncode == 0
    r = run_distnet(["data", "prepare", "spirals", "--out", empty, *small, "--shards", "2", "--force"])
    assert r.returncode == 0, r.stderr
    assert len(open_dataset(empty)["train"].shards) == 2
    (empty / "train" / "mine.csv").write_text("a,b\n")  # something of the user's inside: kept, and refused
    r = run_distnet(["data", "prepare", "spirals", "--out", empty, *small, "--force"])
    one_error(r, "holds 1 file(s) that distnet did not write (train/mine.csv)")
    assert (empty / "train" / "mine.csv").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_error(run_distnet(["data", "prepare", "spirals", "--out", afile, *small, "--force"]), "is a file")
    assert afile.read_text() == "x"


# -- copies of the data on different nodes -------------------------------------------------------------------

def test_fingerprints_tell_copies_apart_without_reading_the_data(tmp_path, spirals_data):
    same = tmp_path / "same"
    shutil.copytree(spirals_data, same)
    a, b = fingerprint(open_dataset(spirals_data)), fingerprint(open_dataset(same))
    assert a == b and fingerprint_difference(a, b) is None
    other = fingerprint(open_dataset(prepare("spirals", tmp_path / "n", num_train=3000)))
    assert "bytes against" in fingerprint_difference(other, a)


def test_ranks_with_different_copies_of_the_data_stop_with_one_line(tmp_path, spirals_data):
    other = prepare("spirals", tmp_path / "other", seed=1)  # same shapes and sizes, other samples
    cmd = [sys.executable, "-m", "distnet", "train", "spirals-mlp", "--quiet", "--data"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    # MPMD launch: rank 0 reads spirals_data, rank 1 its own copy
    r = subprocess.run([mpiexec_path(), "-n", "1", *cmd, str(spirals_data), ":", "-n", "1", *cmd, str(other)],
                       capture_output=True, text=True, timeout=60, env=env)
    host = socket.gethostname()
    one_error(r, f"the ranks read different copies of the data {spirals_data}",
              f"rank(s) 1 ({host}) differ from rank 0 ({host})", "train/part-00000-of-00001.h5")
    same = tmp_path / "same"
    shutil.copytree(spirals_data, same)
    r = subprocess.run([mpiexec_path(), "-n", "1", *cmd, str(spirals_data), "--set", "train.max_steps=2", ":",
                        "-n", "1", *cmd, str(same), "--set", "train.max_steps=2"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr


def test_ranks_that_resume_from_different_checkpoints_stop_with_one_line(tmp_path, spirals_data, earlier_run):
    # each rank its own checkpoint folder (node-local disks): rank 1's newest is damaged, rank 0's is not
    ck0, ck1 = tmp_path / "ck0", tmp_path / "ck1"
    shutil.copytree(earlier_run, ck0)
    shutil.copytree(earlier_run, ck1)
    newest = sorted(ck1.glob("ckpt-*.h5"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    cmd = [sys.executable, "-m", "distnet", "train", "spirals-mlp", "--quiet", "--data", str(spirals_data),
           "--resume", "--checkpoint-dir"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([mpiexec_path(), "-n", "1", *cmd, str(ck0), ":", "-n", "1", *cmd, str(ck1)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("distnet: error:")]
    assert len(errors) == 1 and "the ranks started from different checkpoints: rank(s) 1 (" in errors[0], r.stderr
    assert str(ck1 / "ckpt-000000020.h5") in errors[0] and str(ck0 / "ckpt-000000040.h5") in errors[0]


def test_a_figure_never_replaces_a_file_that_is_not_a_picture(tmp_path):
    from distnet import plot
    from distnet.errors import UserError

    plt = plot.pyplot()
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture\n")
    with pytest.raises(UserError, match="figure .*notes.png exists and distnet did not write it"):
        plot.save(plt.figure(), fake)
    assert fake.read_text() == "not a picture\n"
    out = plot.save(plt.figure(), tmp_path / "a.png")
    assert plot.save(plt.figure(), out) == out  # a picture is replaced
