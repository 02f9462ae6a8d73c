"""distnet eval beyond loss and accuracy: top-k, confusion matrix, reject option, committees and figures;
hand-computed values on tiny inputs, a direct computation of a committee, and 1 vs 2 ranks."""

import json

import numpy as np
import pytest

from distnet.comm import SerialWorld
from distnet.evaluate import assess
from distnet.nn.losses import MSE, BinaryCrossEntropy, SoftmaxCrossEntropy

from ..helpers import run_distnet

# Four samples of three classes, given as probabilities (logits log p: softmax gives p back).
P = np.array([[0.70, 0.20, 0.10],   # true 0: right, margin 0.50
              [0.40, 0.35, 0.25],   # true 1: predicted 0, margin 0.05, true class second
              [0.10, 0.30, 0.60],   # true 0: predicted 2, margin 0.30, true class last
              [0.20, 0.50, 0.30]])  # true 1: right, margin 0.20
Y = np.array([0, 1, 0, 1])


def totals(outputs, losses, y=Y, rule="mean", k=2, margins=(0.0, 0.1, 0.25, 0.4)):
    tally = assess.Tally(outputs[0].shape[1], len(outputs), top_k=k, margins=margins, rule=rule)
    tally.add(losses, [o[:2] for o in outputs], y[:2], 0)  # two batches, as a rank reads them
    tally.add(losses, [o[2:] for o in outputs], y[2:], 2)
    t = tally.totals(SerialWorld())
    return t, assess.report(t, ["a", "b", "c"], k, margins=np.asarray(margins))


def test_confusion_top_k_and_reject_by_hand():
    t, r = totals([np.log(P)], [SoftmaxCrossEntropy()])
    assert r["confusion"] == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]  # rows true, columns predicted
    assert r["accuracy"] == 0.5 and r["top_k"] == {"k": 2, "accuracy": 0.75}
    assert r["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.35, 0.1, 0.5])))
    assert [(c["name"], c["samples"], c["accuracy"]) for c in r["per_class"]] == [
        ("a", 2, 0.5), ("b", 2, 0.5), ("c", 0, None)]
    curve = {c["margin"]: (c["rejected"], c["error"]) for c in r["reject_curve"]}
    assert curve[0.0] == (0.0, 0.5)                          # nothing rejected: 2 of 4 wrong
    assert curve[0.1] == pytest.approx((0.25, 1 / 3))        # sample 1 rejected; 1 of 3 accepted wrong
    assert curve[0.25] == pytest.approx((0.5, 0.5))          # samples 1 and 3 rejected
    assert curve[0.4] == pytest.approx((0.75, 0.0))          # only sample 0 accepted
    assert r["misclassified"] == [dict(index=1, true=1, predicted=0), dict(index=2, true=0, predicted=2)]


def test_every_input_rejected_and_scores_of_other_losses():
    t, r = totals([np.log(P)], [SoftmaxCrossEntropy()], margins=(0.0, 0.9))
    assert r["reject_curve"][1] == dict(margin=0.9, rejected=1.0, error=None)  # no error without inputs
    one = assess.class_scores(BinaryCrossEntropy(), np.array([[0.0], [np.log(3)]]))  # one logit: [1 - p, p]
    np.testing.assert_allclose(one, [[0.5, 0.5], [0.25, 0.75]])
    np.testing.assert_array_equal(assess.class_scores(MSE(), P), P)  # outputs as they are


def test_committee_averages_probabilities_and_votes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    logits = [rng.standard_normal((40, 3)) * 2 for _ in range(3)]
    probs = [np.exp(z) / np.exp(z).sum(axis=1, keepdims=True) for z in logits]
    tally = assess.Tally(3, 3, top_k=1, margins=[0.0, 0.2])
    tally.add([SoftmaxCrossEntropy()] * 3, logits, y, 0)
    r = assess.report(tally.totals(SerialWorld()), ["a", "b", "c"], 1, margins=np.array([0.0, 0.2]))
    mean = np.mean(probs, axis=0)
    direct = mean.argmax(axis=1)
    assert r["accuracy"] == pytest.approx(np.mean(direct == y))
    assert [m["accuracy"] for m in r["members"]] == pytest.approx([np.mean(p.argmax(1) == y) for p in probs])
    expected = np.zeros((3, 3), int)
    np.add.at(expected, (y, direct), 1)
    assert r["confusion"] == expected.tolist()
    top2 = np.sort(mean, axis=1)[:, -2:]
    accepted = top2[:, 1] - top2[:, 0] >= 0.2
    assert r["reject_curve"][1]["error"] == pytest.approx(np.mean(direct[accepted] != y[accepted]))
    # Votes: 2 of 3 members win even where the mean probability favours the third's class.
    sure, unsure = np.array([[0.98, 0.01, 0.01]]), np.array([[0.3, 0.4, 0.3]])
    assert assess.combine([sure, unsure, unsure], "mean").argmax() == 0
    assert assess.combine([sure, unsure, unsure], "vote").argmax() == 1
    tie = assess.combine([np.array([[0.5, 0.4, 0.1]]), np.array([[0.1, 0.45, 0.45]]),
                          np.array([[0.0, 0.3, 0.7]])], "vote")
    assert tie.argmax() == 2  # one vote each; class 2 has the highest mean probability (0.4167)


def direct_committee(paths, data):
    """The committee's mean probabilities on the whole test split, computed in this process."""
    from distnet import build
    from distnet import checkpoint as ckpt
    from distnet import config as C
    from distnet.data import BatchReader, open_dataset

    split = open_dataset(data)["test"]
    with BatchReader(split, mode="memory", prefetch=0) as reader:
        x, y = reader.batch(np.arange(len(split)))
    probs = []
    for p in paths:
        cfg = C.merge(C.defaults(), C.parse_toml(ckpt.read_meta(p)["config"], p), p)
        model = build.model(cfg, split.input_shape)
        ckpt.read_model_arrays(p, model)
        z = model.forward(x, training=False).astype(np.float64)
        probs.append(np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    return np.mean(probs, axis=0), y


def test_committee_on_one_and_two_ranks_matches_a_direct_computation(committee, spirals_data):
    trained, out = committee  # the script's members: seeds 1 and 2, each trained on 2 ranks
    assert trained.returncode == 0, trained.stderr
    members = [out / "seed-1", out / "seed-2"]
    args = ["eval", "--ensemble", *members, "--data", spirals_data, "--reject", "0.15", "--json",
            "--batch-size", "128"]
    one, two = run_distnet(args, timeout=60), run_distnet(args, n=2, timeout=60)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)
    losses = [[m.pop("loss") for m in r["members"]] for r in (r1, r2)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # sums in another order
    assert r1 == r2  # every count and fraction, the misclassified examples too, whatever the rank count
    mean, y = direct_committee(r1["checkpoints"], spirals_data)
    pred = mean.argmax(axis=1)
    assert r1["rule"] == "mean" and r1["samples"] == len(y) == 1000
    assert r1["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    margin = np.abs(mean[:, 0] - mean[:, 1])
    kept = margin >= 0.15
    assert r1["reject"]["rejected"] == pytest.approx(1 - kept.mean())
    assert r1["reject"]["error"] == pytest.approx(np.mean(pred[kept] != y[kept]))
    text = run_distnet(args[:-3], n=2, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "committee of 2 (mean probability)" in text.stdout and "reject margin 0.15" in text.stdout
    vote = run_distnet(args[:-3] + ["--vote"], n=2, timeout=60)
    assert vote.returncode == 0 and "committee of 2 (majority vote)" in vote.stdout, vote.stderr


@pytest.mark.parametrize("args,message", [
    (["--vote"], "--vote needs a committee"),
    (["--reject", "1.5"], "--reject MARGIN is a difference of two probabilities"),
    (["--top-k", "0"], "--top-k must be at least 1"),
])
def test_eval_user_errors(tmp_path, spirals_data, args, message):
    r = run_distnet(["eval", tmp_path / "none.h5", "--data", spirals_data, *args], n=2, timeout=60)
    assert r.returncode == 2 and r.stderr.count("distnet: error:") == 1 and message in r.stderr, r.stderr


def png_pixels(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def test_figures_of_an_image_classifier(tmp_path, shapes_data):
    cfg = tmp_path / "linear.toml"
    cfg.write_text('extends = "shapes-cnn"\n[model]\nlayers = [{ type = "flatten" }, '
                   '{ type = "dense", out_features = 10 }]\n[train]\npatience = 0\n[data]\nval_fraction = 0\n')
    r = run_distnet(["train", cfg, "--data", shapes_data, "--epochs", 1, "--quiet", "--checkpoint-dir",
                     tmp_path / "ck"], timeout=120)
    assert r.returncode == 0, r.stderr
    ev = run_distnet(["eval", tmp_path / "ck", "--data", shapes_data, "--figures", tmp_path / "fig", "--json"],
                     n=2, timeout=60)
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert report["misclassified"], "a one-epoch linear model should make mistakes to show"
    for name, least in [("confusion.png", (300, 300)), ("reject.png", (300, 400)), ("misclassified.png", (300, 600))]:
        path = tmp_path / "fig" / name
        assert str(path) in report["figures"]
        img = png_pixels(path)
        assert img.shape[0] >= least[0] and img.shape[1] >= least[1], (name, img.shape)
        assert img[..., :3].std() > 0.05, f"{name} looks blank"


def committee_script(out, data):
    """``launch/committee.sh``: 2 members (seeds 1, 2) of spirals-mlp on 2 ranks, 2 epochs each, into OUT."""
    import os
    import subprocess
    import sys

    from ..helpers import ROOT

    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    cmd = [str(ROOT / "launch" / "committee.sh"), "2", "spirals-mlp", "2", str(out), "--data", str(data),
           "--epochs", "2", "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


@pytest.fixture(scope="module")
def committee(tmp_path_factory, spirals_data):
    """The committee script run once: (its CompletedProcess, its folder). Its members are also the committee
    that the eval tests compare with a direct computation (they only read the checkpoints)."""
    out = tmp_path_factory.mktemp("committee") / "c"
    return committee_script(out, spirals_data), out


def test_committee_script_trains_k_seeds_and_evaluates_them(committee, spirals_data):
    r, out = committee
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "committee.json").read_text())
    assert [p.split("/")[-2] for p in report["checkpoints"]] == ["seed-1", "seed-2"]
    assert len(report["members"]) == 2 and "committee of 2 (mean probability)" in r.stdout
    from distnet import checkpoint as ckpt

    assert [ckpt.read_meta(p)["seed"] for p in report["checkpoints"]] == [1, 2]
    assert all((out / f"seed-{i}" / "metrics.jsonl").stat().st_size for i in (1, 2))
    again = committee_script(out, spirals_data)  # members kept
    assert again.returncode == 0 and again.stderr.count("already trained") == 2, again.stderr
