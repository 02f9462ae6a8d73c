"""Shared test helpers: real mpiexec runs with a timeout of their own, so a hang fails the test."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def fashion_source():
    """The Debian package's Fashion-MNIST files; CI installs them, so their absence is a failure."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"{FASHION_DIR} is missing: apt-get install -y dataset-fashion-mnist")
    return FASHION_DIR


@pytest.fixture(scope="session")
def fashion_data(fashion_source, tmp_path_factory):
    """Fashion-MNIST prepared once per session from the Debian package (60,000/10,000); its folder."""
    from distnet.data.prepare import prepare
    return prepare("fashion-mnist", tmp_path_factory.mktemp("data") / "fashion-mnist", source=fashion_source)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """A small ``shapes`` set (2,000/500, seed 0) prepared once per session; its folder."""
    from distnet.data.prepare import prepare
    return prepare("shapes", tmp_path_factory.mktemp("data") / "shapes", num_train=2000, num_test=500)


@pytest.fixture(scope="session")
def spirals_data(tmp_path_factory):
    """The ``spirals`` set (4,000/1,000, seed 0) prepared once per session; its folder."""
    from distnet.data.prepare import prepare
    return prepare("spirals", tmp_path_factory.mktemp("data") / "spirals")


def need_root(request, why):
    """Tests that mount file systems need root: skipped here with the reason shown past pytest's capture, and
    a failure in CI (CI=true, which runs as root), so that they cannot silently stop running there."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} needs root (CI runs as root)", pytrace=False)
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{request.node.nodeid} skipped: {why} needs root", yellow=True)
    pytest.skip(f"{why} needs root")


@pytest.fixture
def tmpfs(request, tmp_path):
    """mount_tmpfs(size, options="") -> a folder of its own file system of that size, unmounted at the end."""
    mounted = []

    def mount(size, options=""):
        need_root(request, "mounting a tmpfs")
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        opts = ",".join(filter(None, [f"size={size}", options]))
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], check=True, timeout=30)
        mounted.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False, timeout=30)
