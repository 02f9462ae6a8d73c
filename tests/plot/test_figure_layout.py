"""The layout of the figures, measured on matplotlib's objects: labels that do not run into the next panel,
legends off the data, lines that show on white, axes limited to the data, a title close to what it names.
Each drawing function is called on made-up inputs; ``kept`` keeps the figure it would save open to measure."""

import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from distnet.evaluate import noise as noisecli
from distnet.plot import curves, evaluation, pyplot
from distnet.sweep import figures
from distnet.sweep.plan import Plan, Point

BATCHES = [64, 128, 256, 512, 1024, 2048]


@pytest.fixture
def kept(monkeypatch):
    """``kept(module)``: the module's ``save`` leaves the figure open and drawn (the layout applied) in the
    list returned. It writes no PNG: the tests measure the figure as drawn at its own dpi, and a savefig
    before that draw (dpi 120, a tight bounding box: two more renderings, two thirds of these tests' time)
    moved no measure here by more than a pixel (constrained layout refines a little on each draw)."""
    figs = []

    def save(fig, path):
        fig.canvas.draw()
        figs.append(fig)
        return Path(path)

    def keep(module):
        monkeypatch.setattr(module, "save", save)
        return figs

    yield keep
    for fig in figs:
        pyplot().close(fig)


def extent(artist, fig):
    return artist.get_window_extent(fig.canvas.get_renderer())


def plan_of(batches, points=()):
    return Plan(config="made-up", ranks=1, lr_rule="sqrt", base_batch=64, base_lr=0.1, target="accuracy=0.88",
                split="val", epochs=3, resolution=0.03, full_curves=False, points=list(points))


def contrast_on_white(color):
    """WCAG's contrast ratio of a colour against white (1: invisible, 21: black)."""
    from matplotlib.colors import to_rgb

    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(color)]
    return 1.05 / (0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2] + 0.05)


def test_accuracy_gap_panels_keep_the_right_label_clear_of_the_left_panel(tmp_path, kept):
    figs = kept(figures)
    # a negative gap: the right panel's tick labels are wide ("-0.5"), its label nearer the left panel
    rows = [dict(batch=b, best_val_accuracy=0.9017, best_test_accuracy=0.8904, final_train_accuracy=0.8768,
                 generalization_gap=-0.0136 - 0.001 * i) for i, b in enumerate(BATCHES)]
    figures._accuracy(pyplot(), tmp_path, rows, rows, plan_of(BATCHES))
    fig = figs[0]
    left, right = fig.axes
    gap = extent(right.yaxis.label, fig).x0 - left.get_tightbbox(fig.canvas.get_renderer()).x1
    assert gap >= 0.2 * fig.dpi, f"the right panel's y label is {gap:.0f} px from the left panel"


def write_curve(folder, name, steps, accuracy):
    (folder / name).mkdir(parents=True)
    lines = [dict(event="eval", split="val", step=s, accuracy=a) for s, a in zip(steps, accuracy)]
    (folder / name / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_learning_curves_show_on_white_and_span_the_data_only(tmp_path, kept):
    figs = kept(figures)
    points = [Point(i, f"b{b:05d}-lr1-s0", b, 1.0, 0.1, 0) for i, b in enumerate(BATCHES)]
    for p in points:  # evaluations from step 1; accuracy passes the axis's floor (0.88 - 0.25) after step 8
        steps = list(range(1, 12 * 2048 // p.batch + 1))
        write_curve(tmp_path, p.name, steps, [0.9 - 0.8 / s ** 0.5 for s in steps])
    assert figures._curves(pyplot(), tmp_path, plan_of(BATCHES, points), set()) == "curves.png"
    ax = figs[0].axes[0]
    for line in ax.get_lines():
        assert contrast_on_white(line.get_color()) >= 2, f"{line.get_color()} is too light to see on white"
    assert ax.get_ylim()[0] == pytest.approx(0.63)
    assert ax.get_xlim() == (8, 12 * 2048 // 64)  # from the step before the first shown, to the last


def test_noise_figure_keeps_its_legend_off_the_points(tmp_path, kept):
    import distnet.plot

    figs = kept(distnet.plot)  # noisecli imports save from distnet.plot when it draws
    m = np.array([2 ** k for k in range(3, 13)], float)
    result = dict(sizes=m.tolist(), mean_sq=(134 / m * (1 - m / 60000)).tolist(),
                  sem_sq=(3 / m).tolist(), samples=60000, full_grad_sq=0.05)
    result.update(noisecli.fit(result))
    noisecli.figure(result, tmp_path / "noise.png")
    fig = figs[0]
    ax = fig.axes[0]
    legend, box = extent(ax.get_legend(), fig), extent(ax, fig)
    assert legend.y1 <= box.y0, "the legend lies on the axes, over the points of some sizes"
    assert len(ax.get_legend().get_texts()) == 6


def write_run(path, steps=(10, 20, 30)):
    lines = [dict(event="start", step=0, time=0.0, global_batch=64)]
    lines += [dict(event="train", step=s, time=float(s), loss=1 / s, accuracy=1 - 1 / s, lr=0.1) for s in steps]
    lines += [dict(event="eval", split="test", step=s, time=float(s), loss=1.2 / s, accuracy=1 - 1.2 / s)
              for s in steps]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_plot_labels_every_y_axis_and_names_a_single_run(tmp_path, kept):
    figs = kept(curves)
    one = write_run(tmp_path / "run-a.jsonl")
    curves.main(Namespace(runs=[one], out=tmp_path / "a.png", x="steps"))
    fig = figs[0]
    assert all(ax.get_ylabel() for ax in fig.axes), [ax.get_title() for ax in fig.axes if not ax.get_ylabel()]
    assert fig.get_suptitle() == "run-a"
    curves.main(Namespace(runs=[one, write_run(tmp_path / "run-b.jsonl")], out=tmp_path / "b.png", x="steps"))
    assert figs[1].get_suptitle() == ""  # several runs: the legends name them
    assert all(ax.get_ylabel() for ax in figs[1].axes)


def test_misclassified_grid_title_sits_just_above_the_images(tmp_path, kept):
    figs = kept(evaluation)
    report = dict(misclassified=[dict(index=i, true=0, predicted=1) for i in range(36)], classes=["coat", "shirt"],
                  split="test")
    images = np.random.default_rng(0).random((36, 1, 28, 28))
    evaluation.misclassified(report, images, tmp_path / "misclassified.png")
    fig = figs[0]
    top = max(extent(ax.title, fig).y1 for ax in fig.axes)
    gap = extent(fig._suptitle, fig).y0 - top
    assert 0 <= gap <= 0.25 * fig.dpi, f"{gap:.0f} px between the title and the first row"
