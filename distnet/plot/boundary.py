"""``distnet plot --boundary CHECKPOINT --data DIR --out FILE.png``: the decision regions of a classifier of
2-D inputs (spirals, gaussians) with the test points on them, as in the lectures' figures.

The model is evaluated on a grid over the points' range (stored coordinates, standardized as the reader
does for training), each grid cell colored by its predicted class, lighter where the largest class score
is low; the points are colored by their true class, the misclassified ones ringed in red.
"""

from pathlib import Path

import numpy as np

from ..errors import UserError
from . import pyplot, save

GRID = 300  # cells per axis


def load(args):
    """(path, model, loss, split) for the checkpoint and data of ARGS; a damaged checkpoint passed over in a
    folder is named on stderr."""
    import sys

    from ..data import open_dataset
    from ..evaluate.trained import load_trained

    trained = load_trained(args.boundary, "draw")
    for line in trained.warnings():
        print(line, file=sys.stderr, flush=True)
    data_dir = args.data or trained.data_path()
    ds = open_dataset(data_dir)
    if tuple(ds.input_shape) != (2,):
        raise UserError(f"--boundary draws 2-D inputs, but {data_dir} has inputs of shape {tuple(ds.input_shape)}: "
                        "use a 2-D dataset (spirals, gaussians)")
    trained.check_data(ds, data_dir)
    return trained.path, trained.model, trained.loss, ds["test" if "test" in ds.splits else "train"]


def scores(model, loss, reader, points):
    """Class scores of stored 2-D POINTS (n, 2), a few thousand at a time."""
    from ..evaluate.assess import class_scores

    return np.concatenate([class_scores(loss, model.forward(reader.convert(points[i:i + 4096]), training=False))
                           for i in range(0, len(points), 4096)])


def main(args):
    from ..data import BatchReader

    plt = pyplot()  # first: without matplotlib, the one-line message naming the extra
    from matplotlib.colors import to_rgb
    path, model, loss, split = load(args)
    with BatchReader(split, mode="memory", prefetch=0) as reader:
        x, y = reader.raw(np.arange(len(split)))
        pred = scores(model, loss, reader, x).argmax(axis=1)
        pad = 0.08 * (x.max(axis=0) - x.min(axis=0))
        lo, hi = x.min(axis=0) - pad, x.max(axis=0) + pad
        xs, ys = np.linspace(lo[0], hi[0], GRID), np.linspace(lo[1], hi[1], GRID)
        grid = scores(model, loss, reader, np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2))
    cls, top = grid.argmax(axis=1).reshape(GRID, GRID), grid.max(axis=1).reshape(GRID, GRID)
    k = split.num_classes
    colors = np.array([to_rgb(f"C{i % 10}") for i in range(k)])
    confidence = (top - 1 / k) / (1 - 1 / k)  # 0 at chance, 1 when sure
    image = 1 - (1 - colors[cls]) * (0.15 + 0.35 * np.clip(confidence, 0, 1))[..., None]  # pale tints
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(image, origin="lower", extent=(xs[0], xs[-1], ys[0], ys[-1]), aspect="auto", interpolation="nearest")
    ax.contour(xs, ys, cls, levels=np.arange(k) + 0.5, colors="k", linewidths=0.8)
    for c in range(k):
        mine = y == c
        ax.scatter(x[mine, 0], x[mine, 1], s=9, color=colors[c], edgecolors="k", linewidths=0.2,
                   label=split.class_names[c])
    wrong = pred != y
    ax.scatter(x[wrong, 0], x[wrong, 1], s=40, facecolors="none", edgecolors="red", linewidths=0.9,
               label=f"misclassified ({wrong.sum()})")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_title(f"{Path(path).name}: {split.name} accuracy {np.mean(~wrong):.4f} ({len(y)} points)")
    out = save(fig, args.out or Path(path).with_name("boundary.png"))
    print(f"wrote {out}")
    return 0
