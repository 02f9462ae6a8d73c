"""PowerSGD (comm.sync = "powersgd"): exact on gradients of rank <= r, error feedback tracking the true running
sum with a bounded residual, a non-finite gradient still seen, and a small problem still trained to ~zero loss."""

import textwrap

import numpy as np
import pytest

from distnet import comm
from distnet.nn.layers import Conv2D, Dense, Flatten, ReLU
from distnet.nn.model import Sequential

from ..helpers import TwoRanks

pytestmark = pytest.mark.mpi

HEAD = textwrap.dedent("""
    import math, numpy as np
    from distnet import comm
    from distnet.nn.layers import Dense, ReLU
    from distnet.nn.model import Sequential
    w = comm.world()
    model = Sequential([Dense(None, 24), ReLU(), Dense(None, 16), ReLU(), Dense(None, 3)], input_shape=(30,), seed=3,
                       dtype=np.float64)
    R = 2
    sync = comm.sync.make(w, model, dict(sync="powersgd", overlap=True, bucket_mb=1, split_mb=0, error_feedback={ef},
                                         powersgd_rank=R, powersgd_warmup=0, powersgd_min_size=0))
    mats = [m for m in sync.matrices]
    assert [(m.n, m.m) for m in mats] == [(16, 3), (24, 16), (30, 24)][-len(mats):] and len(mats) == 2
    def local(rank, step, low_rank):
        # every gradient of the arena for this rank; the compressed matrices of rank <= R when asked
        rng = np.random.default_rng([rank, step])
        g = rng.standard_normal(model.grads_flat.size)
        for m in mats:
            A = np.random.default_rng([step, m.n]).standard_normal((m.n, R))  # a column space shared by the ranks
            g[m.sl] = (A @ rng.standard_normal((R, m.m))).ravel() if low_rank else g[m.sl]
        return g
    def sync_step(g):
        model.grads_flat[...] = g
        sync.begin(None, stats=np.zeros(1))
        for i in reversed(range(len(model.layers))):
            sync.layer_done(i)
        sync.finish()
        return model.grads_flat.copy()
""")

EXACT = HEAD + textwrap.dedent("""
    for s in range(3):
        got = sync_step(local(w.rank, s, True))
        want = sum(local(r, s, True) for r in range(w.size))
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # with gradient accumulation: the earlier micro-steps' sum arrives apart from the arena's last one
    g = local(w.rank, 5, True)
    part = np.random.default_rng([w.rank, 50]).standard_normal(g.size)
    model.grads_flat[...] = g - part
    sync.begin(part, stats=np.zeros(1))
    for i in reversed(range(len(model.layers))):
        sync.layer_done(i)
    sync.finish()
    np.testing.assert_allclose(model.grads_flat, sum(local(r, 5, True) for r in range(w.size)), rtol=1e-9, atol=1e-9)
    got = sync_step(local(w.rank, 9, False))  # full rank: only the uncompressed parts are exact
    want = sum(local(r, 9, False) for r in range(w.size))
    assert not np.allclose(got, want)
    rest = np.ones(got.size, bool)
    for m in mats:
        rest[m.sl] = False
    np.testing.assert_allclose(got[rest], want[rest], rtol=1e-12)
    g = local(w.rank, 10, False)
    if w.rank == 1:
        g[mats[0].sl.start] = np.nan
    sync_step(g)
    assert not math.isfinite(sync.global_sq())  # a non-finite gradient is seen...
    got = sync_step(local(w.rank, 11, True))
    assert np.isfinite(got).all()  # ...and does not poison the steps after it
    if w.rank == 0:
        print("OK", w.size)
""")

FEEDBACK = HEAD + textwrap.dedent("""
    g = local(w.rank, 0, False)  # one full-rank gradient, sent again and again
    want = sum(local(r, 0, False) for r in range(w.size))
    sent, norms, steps = np.zeros_like(want), [], 80
    for s in range(1, steps + 1):
        sent += sync_step(g)
        residual = sum(w.allgather(np.concatenate([m.e.ravel() for m in mats])) if {ef} else [0])
        norms.append(float(np.linalg.norm(residual)))
        if {ef}:  # what was sent and the residuals make up exactly the true running sum
            parts = np.concatenate([sent[m.sl] for m in mats]), np.concatenate([want[m.sl] for m in mats])
            np.testing.assert_allclose(parts[0] + residual, s * parts[1], rtol=1e-9, atol=1e-9)
    gap = np.linalg.norm(sent - steps * want) / np.linalg.norm(steps * want)
    if {ef}:  # the residual stops growing, so the running sums meet (the gap shrinks as 1 / steps)
        assert max(norms[steps // 2:]) <= 1.5 * max(norms[:steps // 2]) and gap < 0.15, (norms[::10], gap)
    else:  # without feedback the part outside the rank-R projection is lost every step
        assert gap > 0.5, gap
    if w.rank == 0:
        print("OK", w.size)
""")


@pytest.fixture(scope="module")
def on_two_ranks(launch_cases):
    """This module's 2-rank scripts in one launch: {key: Case}."""
    return launch_cases({"exact": EXACT.format(ef=True), "feedback-True": FEEDBACK.format(ef=True),
                         "feedback-False": FEEDBACK.format(ef=False), "small": SMALL}, n=2, timeout=120)


@pytest.mark.parametrize("n", [2, 3])
def test_a_gradient_of_rank_at_most_r_arrives_exactly(on_two_ranks, launch_cases, n):
    case = on_two_ranks["exact"] if n == 2 else launch_cases({"exact": EXACT.format(ef=True)}, n=n, timeout=60)["exact"]
    case.check(f"OK {n}")


@pytest.mark.parametrize("ef", [True, False])
def test_error_feedback_tracks_the_true_running_sum(on_two_ranks, ef):
    on_two_ranks[f"feedback-{ef}"].check("OK 2")


def test_which_gradients_are_compressed():
    model = Sequential([Conv2D(None, 8, 3), ReLU(), Flatten(), Dense(None, 64), ReLU(), Dense(None, 16), ReLU(),
                        Dense(None, 2)], input_shape=(1, 8, 8), seed=0)
    sync = comm.sync.PowerSGD(TwoRanks(), model, rank=4, warmup=5)
    # Conv W as out x in*kh*kw (8 x 9: 72 < 2*4*17, sent whole), Dense W as in x out; Dense 64x2 would not
    # shrink twice, Dense 64x16 would (1024 >= 2*4*80) but is under min_size (4096 elements by default)
    assert [(m.n, m.m) for m in sync.matrices] == [(288, 64)]
    assert sync.matrices[0].M.base is not None and np.shares_memory(sync.matrices[0].M, model.grads_flat)
    assert [(m.n, m.m) for m in comm.sync.PowerSGD(TwoRanks(), model, rank=4, min_size=0).matrices] == \
        [(64, 16), (288, 64)]
    # everything not compressed travels in the P's message, in the send buffer after the P's
    assert sync.send.size == 288 * 4 + model.grads_flat.size - 288 * 64


SMALL = textwrap.dedent("""
    import numpy as np
    from distnet import comm
    from distnet.nn import losses
    from distnet.nn.layers import Dense, Tanh
    from distnet.nn.model import Sequential
    from distnet.nn.optim import Adam
    w = comm.world()
    model = Sequential([Dense(None, 32), Tanh(), Dense(None, 32), Tanh(), Dense(None, 4)], input_shape=(8,), seed=1)
    sync = comm.sync.make(w, model, dict(sync="powersgd", overlap=True, bucket_mb=1, split_mb=0, error_feedback=True,
                                         powersgd_rank=1, powersgd_warmup=5, powersgd_min_size=0))
    assert len(sync.matrices) == 3  # rank 1: every weight matrix
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 8)).astype(np.float32), rng.standard_normal((64, 4)).astype(np.float32)
    mine = slice(32 * w.rank // w.size, 32 * (w.rank + 1) // w.size)
    x, y = x[mine], y[mine]
    loss, opt = losses.get("mse"), Adam(model.params_flat, model.grads_flat, lr=0.01)
    for step in range(600):
        out = model.forward(x, training=True)
        value = w.sum([loss.forward(out, y) * len(y)])[0] / 32
        sync.begin(None)
        model.backward(loss.backward() * (len(y) / 32), sync=sync)
        sync.finish()
        opt.step()
    if w.rank == 0:
        print("OK", value)
""")


def test_a_small_problem_still_trains_to_near_zero_loss(on_two_ranks):
    case = on_two_ranks["small"]
    case.check("OK")
    assert float(case.stdout.split()[1]) < 0.01, case.stdout
