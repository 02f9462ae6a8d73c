"""Fixtures the tests share: prepared datasets (session-wide), a random generator, tmpfs mounts."""

import subprocess

import numpy as np
import pytest

from .helpers import FASHION_DIR, need_root


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
