"""Helpers the tests share (fixtures are in conftest.py): real mpiexec runs with a timeout of their own, so a
hang fails the test, and small checks that several test modules make."""

import csv
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distnet import comm

ROOT = Path(__file__).resolve().parents[1]


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def mpiexec_path():
    """mpiexec beside this Python (the MPICH wheel in a venv), else on PATH; failing loudly if absent."""
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        pytest.fail("mpiexec not found: install the 'mpich' extra (pip install -e '.[mpich,test]')")
    return found


def run_distnet(args, n=None, timeout=120, env=None, cwd=None):
    """Run ``distnet ARGS`` (under ``mpiexec -n N`` when n is given); return CompletedProcess."""
    cmd = [sys.executable, "-m", "distnet", *map(str, args)]
    if n is not None:
        cmd = [mpiexec_path(), "-n", str(n), *cmd]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                    PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd)


def run_python_mpi(script, n, timeout=120, env=None):
    """Run a Python source string under ``mpiexec -n N``."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    return subprocess.run([mpiexec_path(), "-n", str(n), sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def skip_here_fail_in_ci(request, failure, skipped, shown=None):
    """A test that cannot run on this machine: a failure in CI (CI=true, where .ci/run installs everything and
    runs as root), so that it cannot silently stop running there; elsewhere skipped, with SHOWN written past
    pytest's capture so that a plain ``pytest -q`` says why."""
    if os.environ.get("CI") == "true":
        pytest.fail(failure, pytrace=False)
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if shown and reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(shown, yellow=True)
    pytest.skip(skipped)


def need_root(request, why):
    """Tests that mount file systems need root (see ``skip_here_fail_in_ci``)."""
    if os.geteuid() == 0:
        return
    skip_here_fail_in_ci(request, f"{why} needs root (CI runs as root)", f"{why} needs root",
                         f"\n{request.node.nodeid} skipped: {why} needs root")


class TwoRanks(comm.SerialWorld):
    size = 2  # enough for GradSync to plan overlapped buckets; nothing is sent


def assert_user_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distnet: error: "), result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])


FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(arr):
    """IDX encoding of a uint8 array, written here independently of distnet's parser."""
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def make_idx_source(folder, rng, sizes=(300, 70)):
    """A small MNIST-like IDX folder. Names deliberately lie about compression: the .gz-named train files
    hold raw bytes and the plain-named test files are gzipped, so detection must use the magic bytes."""
    folder.mkdir()
    arrays = {}
    for (split, (img, lbl)), n in zip(FILES.items(), sizes):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        arrays[split] = (x, y.astype(np.int64))
        for name, arr in ((img, x), (lbl, y)):
            if split == "train":
                (folder / f"{name}.gz").write_bytes(idx_bytes(arr))
            else:
                (folder / name).write_bytes(gzip.compress(idx_bytes(arr)))
    return arrays


def rows(folder):
    with open(folder / "results.csv") as f:
        return {r["point"]: r for r in csv.DictReader(f)}


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def assert_not_blank(path):
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img[..., :3].std() > 0.05, f"{path} is (nearly) one colour"


SMALL = ["--set", "train.log_every=1", "--quiet"]


def metrics(path):
    return [json.loads(line) for line in open(path)]


def last_ckpt(folder):
    return sorted(folder.glob("ckpt-*.h5"))[-1]


def checkpoint_state(folder):
    """The newest checkpoint in ``folder``: its parameters, its optimizer state arrays and attributes (the
    step), as {name: value}: what two runs that should agree are compared by."""
    import h5py

    with h5py.File(last_ckpt(folder), "r") as f:
        return {"params": f["model"]["params"][...]} | {k: v[...] for k, v in f["optimizer"].items()} | \
            dict(f["optimizer"].attrs)


def train(tmp_path, name, data, n=None, extra=(), env=None, timeout=180, preset="spirals-mlp"):
    out = tmp_path / name
    r = run_distnet(["train", preset, "--data", data, "--metrics", out / "m.jsonl", "--checkpoint-dir", out / "ck",
                     *SMALL, *extra], n=n, env=env, timeout=timeout)
    return r, out
