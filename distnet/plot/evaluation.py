"""The pictures of ``distnet eval --figures DIR``: the confusion matrix as a heat map with the class names, the
reject option's error-vs-rejection curve, and a grid of misclassified images with true and predicted labels.
Each takes the report of ``distnet.evaluate.assess.report`` (as printed by ``distnet eval --json``)."""

from pathlib import Path

import numpy as np

from . import pyplot, save


def confusion(report, path):
    """Heat map of the confusion matrix, rows normalized to the true class's samples, counts in the cells."""
    plt = pyplot()
    counts = np.asarray(report["confusion"])
    names = report["classes"]
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.6 + 0.55 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if len(names) <= 20:
        for (i, j), v in np.ndenumerate(counts):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_title(f"{report['split']}: accuracy {report['accuracy']:.4f} ({report['samples']} samples)")
    return save(fig, path)


def reject_curve(report, path):
    """Error on the accepted inputs against the rejected fraction, over the reject margins."""
    plt = pyplot()
    curve = [c for c in report["reject_curve"] if c["error"] is not None]  # None: every input rejected
    rejected = [100 * c["rejected"] for c in curve]
    error = [100 * c["error"] for c in curve]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(rejected, error, marker=".", markersize=3)
    for c in curve:
        if any(np.isclose(c["margin"], m) for m in (0.1, 0.3, 0.5, 0.7, 0.9)):
            ax.annotate(f"{c['margin']:g}", (100 * c["rejected"], 100 * c["error"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    if "reject" in report:
        j = report["reject"]
        ax.plot([100 * j["rejected"]], [100 * j["error"]], "o", color="C3", label=f"margin {j['margin']:g}")
        ax.legend()
    ax.set_xlabel("rejected inputs (%)")
    ax.set_ylabel("error on the accepted inputs (%)")
    ax.set_title("reject option: margin between the two largest probabilities")
    ax.grid(alpha=0.3)
    return save(fig, path)


def misclassified(report, images, path):
    """A grid of IMAGES (stored values, (n, C, H, W), in the order of ``report["misclassified"]``) titled
    with their true and predicted class names."""
    plt = pyplot()
    wrong, names = report["misclassified"], report["classes"]
    cols = min(6, len(wrong))
    rows = -(-len(wrong) // cols)
    # constrained layout puts the title just above the first row; a fixed figure height left a gap under it
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.5 * rows), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, w, img in zip(axes.ravel(), wrong, images):
        img = np.moveaxis(np.asarray(img), 0, -1)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
        ax.set_title(f"#{w['index']}\ntrue {names[w['true']]}\npred {names[w['predicted']]}", fontsize=7)
    fig.suptitle(f"first {len(wrong)} misclassified {report['split']} images")
    return save(fig, path)


def write_figures(folder, report, split):
    """confusion.png, reject.png and, for image data with mistakes, misclassified.png in FOLDER; the paths."""
    from ..data import BatchReader

    folder = Path(folder)
    paths = [confusion(report, folder / "confusion.png"), reject_curve(report, folder / "reject.png")]
    if report["misclassified"] and len(split.input_shape) == 3:
        with BatchReader(split, mode="stream", prefetch=0) as reader:
            images, _ = reader.raw([w["index"] for w in report["misclassified"]])
        paths.append(misclassified(report, images, folder / "misclassified.png"))
    return paths
