"""distnet plot --boundary: the decision regions of a trained 2-D classifier as a PNG, and the clear error
for data that is not 2-D."""

import numpy as np

from ..helpers import run_distnet


def images(folder):
    """A tiny dataset of 1x8x8 images (inputs that are not 2-D), written here: preparing ``shapes`` for it
    would cost a second."""
    from distnet.data import write_dataset

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8), rng.integers(0, 2, 30)
    return write_dataset(folder, x[:20], y[:20], x[20:], y[20:], class_names=["a", "b"])


def test_boundary_of_a_spirals_network(tmp_path, spirals_data):
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--epochs", 3, "--quiet", "--checkpoint-dir",
                     tmp_path / "ck"], timeout=120)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "fig" / "boundary.png"
    p = run_distnet(["plot", "--boundary", tmp_path / "ck", "--data", spirals_data, "--out", out], timeout=60)
    assert p.returncode == 0 and f"wrote {out}" in p.stdout, p.stderr
    import matplotlib.image

    img = matplotlib.image.imread(str(out))
    assert img.shape[0] >= 500 and img.shape[1] >= 500, img.shape
    assert img[..., :3].std() > 0.05 and len(np.unique(img[..., :3].reshape(-1, 3), axis=0)) > 50  # regions, points
    bad = run_distnet(["plot", "--boundary", tmp_path / "ck", "--data", images(tmp_path / "images"), "--out",
                       tmp_path / "x.png"], timeout=60)
    assert bad.returncode == 2 and "--boundary draws 2-D inputs" in bad.stderr, bad.stderr
    assert not (tmp_path / "x.png").exists()
