"""Figures (PNG, matplotlib from the ``plot`` extra). Each kind of figure has its module here:
``curves`` (learning curves of runs), ``boundary`` (decision regions of a 2-D classifier); ``cli`` is the
``distnet plot`` command. Nothing here is imported by training.
"""

from ..errors import UserError


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a UserError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("figures need matplotlib: pip install -e '.[plot]' (the 'plot' extra)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path):
    """Write ``fig`` to ``path`` (a .png) atomically: a temporary file beside it, then a rename, so a failed
    plot never leaves half a picture; closes the figure. Returns the path."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"{path}: figures are written as PNG: give a file name ending in .png")
    from ..outputs import check_figure

    check_figure(path)  # never over a file that is not a picture, nor over a device (written by a rename)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        pyplot().close(fig)
    return path
