"""The gradient noise scale measured during training converges to the exact one of a finite problem.

The problem: 2,048 2-D points of four gaussian blobs, a float64 Dense(32)-tanh-Dense(4) classifier, and
learning rate 0, so the parameters stay at their initial values and every step draws a new minibatch
gradient at the same point. There the per-sample gradients g_i can be computed one by one, so the full
gradient G = mean g_i and their spread are known exactly.

What "exact" means here: training draws minibatches WITHOUT replacement (each epoch is a permutation cut
into global batches, each rank's and micro-step's part a contiguous piece), so a batch of b samples is a
uniform random subset of the N training samples and E|G_b|² = |G|² + s²(1/b − 1/N) with
s² = Σ|g_i − G|²/(N − 1) (the finite-population variance of a sample mean). The two-batch-size estimator
of McCandlish et al. then converges to tr(Σ) → s² and |G|² → |G|² − s²/N, whatever b and B are, so the
exact target is B_exact = s² / (|G|² − s²/N). (For sampling with replacement it would be
tr(Σ)/|G|² with tr(Σ) = mean|g_i − G|²; at N = 2,048 the two differ by about 3 % here, so the test could
not tell them apart by much, but it asserts the one the sampler actually realizes.)

The moving averages use decay 0.9999, nearly a plain mean over a run's 2,016 (or 1,008) steps; it must
land within 10 % of B_exact. How far a run of n steps lands from it by chance (the sampler's draws from
these per-sample gradients, 200 seeds simulated): b = 32 (2 ranks): 3.2 % standard deviation at n = 2,016,
4.7 % at 1,008; b = 16 (2 ranks x 2 micro-steps, or 1 x 4): 2.2 % at 2,016, 3.4 % at 1,008. The runs with
b = 16 that check a sync strategy's small-batch norms (flat, shm) therefore run 1,008 steps: 10 % is still
3 standard deviations, as for b = 32 at 2,016, and a strategy that got the norms wrong (taken after the
sum, or summed where they are averaged) would miss by a factor, not by percents. The 1 x 4 run keeps
2,016 steps for b = 16.
"""

import json
import shutil

import numpy as np
import pytest

from distnet import build
from distnet import checkpoint as ckpt
from distnet import config as C
from distnet.checkpoint import latest
from distnet.data import BatchReader, open_dataset
from distnet.training.noise import NoiseScale

from ..helpers import run_distnet

N = 2048
CONFIG = """
[data]
dataset = "gaussians"
[model]
dtype = "float64"
layers = [
  { type = "dense", out_features = 32 },
  { type = "tanh" },
  { type = "dense", out_features = 4 },
]
[train]
epochs = 1000
max_steps = 2048
batch_size = 64
log_every = 2048
noise_every = 1
noise_decay = 0.9999
[optimizer]
name = "sgd"
lr = 0.0
[comm]
bucket_mb = 0.0001
split_mb = 0.0001
"""


@pytest.fixture(scope="module")
def gaussians(tmp_path_factory):
    from distnet.data.prepare import prepare
    return prepare("gaussians", tmp_path_factory.mktemp("data") / "gaussians", num_train=N, num_test=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, gaussians):
    """The config, and a checkpoint after one epoch at lr 0.1 (no noise measured): at the initial
    parameters the gradient dominates (B_simple ~ 2.4, below any batch worth testing); here it is ~66."""
    folder = tmp_path_factory.mktemp("trained")
    config = folder / "noise.toml"
    config.write_text(CONFIG)
    r = run_distnet(["train", config, "--data", gaussians, "--quiet", "--checkpoint-dir", folder / "ckpt",
                     "--set", "train.max_steps=32", "--set", "train.noise_every=0", "--lr", 0.1], timeout=120)
    assert r.returncode == 0, r.stderr
    return config, folder / "ckpt" / "ckpt-000000032.h5"


def exact_noise_scale(config_path, data, checkpoint):
    """B_exact (see the module docstring) and the with-replacement tr(Σ)/|G|², from per-sample gradients."""
    cfg = C.load(str(config_path), sets=[f'data.path="{data}"'])
    split = open_dataset(data)["train"]
    x, y = BatchReader(split, mode="memory", dtype=np.float64).batch(np.arange(len(split)))
    model = build.model(cfg, split.input_shape)
    ckpt.read_model_arrays(checkpoint, model)
    loss = build.loss(cfg)
    per_sample = np.empty((len(y), model.num_params))
    for i in range(len(y)):  # one by one, on purpose: no batched formula to share a mistake with the trainer
        loss.forward(model.forward(x[i:i + 1]), y[i:i + 1])
        model.backward(loss.backward())
        per_sample[i] = model.grads_flat
    g = per_sample.mean(axis=0)
    s2 = ((per_sample - g) ** 2).sum() / (len(y) - 1)
    grad_sq = float(g @ g)
    return s2 / (grad_sq - s2 / len(y)), s2 * (len(y) - 1) / len(y) / grad_sq


@pytest.fixture(scope="module")
def exact(gaussians, trained):
    """exact_noise_scale at the trained checkpoint, computed once: the lr-0 runs below keep its parameters."""
    config, start = trained
    return exact_noise_scale(config, gaussians, start)


def params(checkpoint):
    import h5py

    with h5py.File(checkpoint, "r") as f:
        return f["model"]["params"][...]


@pytest.mark.parametrize("ranks,accumulate,sync,steps", [(2, 1, "bucketed", 2016), (2, 2, "flat", 1008),
                                                         (2, 2, "shm", 1008), (1, 4, "bucketed", 2016)])
def test_live_noise_scale_converges_to_the_exact_one(tmp_path, gaussians, trained, exact, ranks, accumulate,
                                                     sync, steps):
    """STEPS steps at lr 0 from the trained checkpoint (resumed, so the parameters are those of the file)."""
    end = 32 + steps
    config, start = trained
    (tmp_path / "ckpt").mkdir()
    shutil.copy(start, tmp_path / "ckpt" / start.name)
    metrics = tmp_path / "m.jsonl"
    r = run_distnet(["train", config, "--data", gaussians, "--metrics", metrics, "--quiet", "--resume",
                     "--accumulate", accumulate, "--set", f'comm.sync="{sync}"', "--set", f"train.max_steps={end}",
                     "--checkpoint-dir", tmp_path / "ckpt"], n=ranks, timeout=240)
    assert r.returncode == 0, r.stderr
    last = [json.loads(line) for line in open(metrics) if '"train"' in line][-1]
    assert last["step"] == end and last["noise_biased"] is False
    # lr 0: the parameters at the end are those the exact noise scale was computed at, bit for bit
    np.testing.assert_array_equal(params(tmp_path / "ckpt" / f"ckpt-{end:09d}.h5"), params(start))
    exact, with_replacement = exact
    assert 16 < exact < 256, exact  # near the batch sizes (b = 16 or 32, B = 64): both terms matter
    print(f"ranks {ranks} accumulate {accumulate} {sync}: live {last['noise_scale']:.4g} exact {exact:.4g} "
          f"(with replacement {with_replacement:.4g}), ratio {last['noise_scale'] / exact:.4f}")
    assert abs(last["noise_scale"] / exact - 1) < 0.10, (last, exact, with_replacement)


def test_one_rank_without_accumulation_falls_back_and_says_it_is_biased(tmp_path, gaussians):
    config = tmp_path / "noise.toml"
    config.write_text(CONFIG)
    metrics = tmp_path / "m.jsonl"
    r = run_distnet(["train", config, "--data", gaussians, "--metrics", metrics, "--quiet",
                     "--set", "train.max_steps=40", "--set", "train.log_every=20"], timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in open(metrics) if '"train"' in line]
    assert [m["step"] for m in lines] == [20, 32, 40]  # and at the epoch end (2,048 / 64 = 32 steps)
    assert all(m["noise_biased"] is True and m["noise_scale"] > 0 for m in lines)


def test_estimator_formulas_recover_known_terms_and_the_bias_correction():
    # E|G_b|² = |G|² + tr/b exactly: the estimator must return |G|² = 2 and tr = 64, whatever b < B
    est = NoiseScale(every=1, decay=0.9)
    est.update(2 + 64 / 8, 8, 2 + 64 / 32, 32)
    assert est.value() == pytest.approx((32.0, 64.0, 2.0))  # one step: the bias correction undoes (1 - 0.9)
    est.update(2 + 64 / 4, 4, 2 + 64 / 64, 64)
    assert est.value() == pytest.approx((32.0, 64.0, 2.0))
    assert est.metrics()["noise_biased"] is False
    fresh = NoiseScale(decay=0.9)
    fresh.load_state(est.state())
    assert fresh.value() == est.value()
    assert NoiseScale().metrics() == {}  # nothing before the first measured step


def test_noise_command_measures_the_one_over_m_law_on_any_rank_count(tmp_path, gaussians, trained, exact):
    """`distnet noise`: 1 process and 2 ranks draw the same minibatches; with the finite-population factor
    removed the variance falls as 1/m (slope -1 within 0.15), and its s²/|G|² is the exact noise scale of
    the checkpoint within 15 % (64 draws per size: the mean's standard error is ~10 % per size)."""
    _, ckpt = trained
    args = ["noise", ckpt, "--data", gaussians, "--batch-sizes", "4,8,...,1024", "--json"]
    one = run_distnet(args + ["--out", tmp_path / "noise.png"], timeout=120)
    two = run_distnet(args, n=2, timeout=120)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a["sizes"] == [4, 8, 16, 32, 64, 128, 256, 512, 1024] and a["samples"] == N
    np.testing.assert_allclose(a["mean_sq"], b["mean_sq"], rtol=1e-9)
    assert -1.15 < a["slope_variance_corrected"] < -0.85 and a["slope_variance"] < a["slope_variance_corrected"]
    assert a["slope_std"] == pytest.approx(a["slope_variance"] / 2)
    assert abs(a["noise_scale"] / exact[0] - 1) < 0.15, (a["noise_scale"], exact)
    assert (tmp_path / "noise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("sizes,message", [("8,16,...,4096", "more than the 2048 training samples"),
                                           ("8,x", "give integers"), ("16,8", "increasing")])
def test_noise_command_refuses_bad_sizes_in_one_line(gaussians, trained, sizes, message):
    r = run_distnet(["noise", trained[1], "--data", gaussians, "--batch-sizes", sizes], n=2, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_batch_size_lists_continue_geometrically():
    from distnet.evaluate.noise import parse_sizes
    assert parse_sizes("8,16,...,128") == [8, 16, 32, 64, 128]
    assert parse_sizes("10,30,...,100") == [10, 30, 90, 100]
    assert parse_sizes("1, 2, 3") == [1, 2, 3]


def _lines(path, event):
    return [json.loads(line) for line in open(path) if f'"{event}"' in line]


def test_auto_batch_grows_toward_the_noise_scale_and_resumes_bitwise(tmp_path, spirals_data):
    """batch_size = "auto" on 2 ranks: the batch grows at epoch ends to the measured noise scale (a multiple
    of 2, non-decreasing, with sqrt lr scaling), and runs stopped in the middle of a later epoch, or killed
    (no checkpoint at the end) a few steps after a growth so that the newest checkpoint is the epoch end's,
    resume to the uninterrupted run's parameters, bit for bit."""
    common = ["train", "spirals-mlp", "--data", spirals_data, "--quiet", "--batch-size", "auto", "--epochs", 4,
              "--set", "train.batch_min=16", "--set", 'optimizer.lr_scaling="sqrt"', "--set", "train.log_every=10"]
    full = run_distnet(common + ["--metrics", tmp_path / "full.jsonl"], n=2, timeout=180)
    assert full.returncode == 0, full.stderr
    grown = _lines(tmp_path / "full.jsonl", "batch")
    assert len(grown) >= 2 and grown[0]["previous"] == 16, grown
    sizes = [16] + [g["global_batch"] for g in grown]
    assert sizes == sorted(set(sizes)) and all(b % 2 == 0 for b in sizes)
    assert all(abs(g["global_batch"] - g["noise_scale"]) <= 2 for g in grown if g["global_batch"] < 8192)
    trains = _lines(tmp_path / "full.jsonl", "train")
    assert {m["global_batch"] for m in trains} == set(sizes)
    want = _lines(tmp_path / "full.jsonl", "summary")[0]["param_hash"]
    for how, stop in (("crash", grown[0]["step"] + 3), ("stop", grown[1]["step"] + 3)):
        ck = tmp_path / f"{how}{stop}"
        if how == "crash":
            first = run_distnet(common + ["--checkpoint-dir", ck], n=2, timeout=180,
                                env={"DISTNET_FAULT": f"crash@1:{stop}"})
            assert first.returncode != 0
            assert latest(ck).name == f"ckpt-{grown[0]['step']:09d}.h5"  # the epoch end's, after the growth
        else:
            first = run_distnet(common + ["--checkpoint-dir", ck, "--set", f"train.max_steps={stop}"], n=2,
                                timeout=180)
            assert first.returncode == 0, first.stderr
        rest = run_distnet(common + ["--checkpoint-dir", ck, "--resume", "--metrics", ck / "m.jsonl"], n=2,
                           timeout=180)
        assert rest.returncode == 0, rest.stderr
        assert _lines(ck / "m.jsonl", "summary")[0]["param_hash"] == want, stop
