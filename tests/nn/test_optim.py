"""Optimizers against updates worked out by hand, on a quadratic, and through a state round trip."""

import math
import tracemalloc

import numpy as np
import pytest

from distnet.errors import ConfigError
from distnet.nn.optim import SGD, AdaGrad, Adam, AdamW, RMSProp, clip_grad_norm, make_optimizer

P0 = [1.0, -2.0, 0.5]
G1 = [0.5, -1.0, 2.0]
G2 = [1.0, 1.0, -1.0]


def run(opt_cls, grads_seq, params=P0, **kw):
    """Step an optimizer once per gradient in grads_seq; return the params after each step."""
    p = np.array(params, dtype=np.float64)
    g = np.zeros_like(p)
    opt = opt_cls(p, g, **kw)
    out = []
    for gs in grads_seq:
        g[:] = gs
        opt.step()
        out.append(p.copy())
    assert opt.params is p and opt.step_count == len(grads_seq)
    return out


def test_sgd_by_hand():
    p1, p2 = run(SGD, [G1, G2], lr=0.1)
    np.testing.assert_allclose(p1, [0.95, -1.9, 0.3], rtol=0, atol=1e-15)   # p0 - 0.1 * g1
    np.testing.assert_allclose(p2, [0.85, -2.0, 0.4], rtol=0, atol=1e-15)   # p1 - 0.1 * g2


def test_momentum_by_hand():
    p1, p2 = run(SGD, [G1, G2], lr=0.1, momentum=0.9)
    # v1 = g1; p1 = p0 - 0.1 * g1
    np.testing.assert_allclose(p1, [0.95, -1.9, 0.3], atol=1e-15)
    # v2 = 0.9 * [0.5, -1, 2] + [1, 1, -1] = [1.45, 0.1, 0.8]; p2 = p1 - 0.1 * v2
    np.testing.assert_allclose(p2, [0.805, -1.91, 0.22], atol=1e-15)


def test_nesterov_by_hand_and_differs_from_momentum():
    p1, p2 = run(SGD, [G1, G2], lr=0.1, momentum=0.9, nesterov=True)
    # v1 = g1; p1 = p0 - 0.1 * (g1 + 0.9 * g1) = p0 - 0.19 * g1
    np.testing.assert_allclose(p1, [0.905, -1.81, 0.12], atol=1e-15)
    # v2 = [1.45, 0.1, 0.8]; g2 + 0.9 * v2 = [2.305, 1.09, -0.28]; p2 = p1 - 0.1 * that
    np.testing.assert_allclose(p2, [0.6745, -1.919, 0.148], atol=1e-15)
    # Nesterov looks ahead: its first step is (1 + mu) times the heavy-ball one
    m1, _ = run(SGD, [G1, G2], lr=0.1, momentum=0.9)
    np.testing.assert_allclose(np.subtract(P0, p1), 1.9 * np.subtract(P0, m1), atol=1e-15)


def test_adagrad_by_hand():
    p1, p2 = run(AdaGrad, [G1, G2], lr=0.1)
    # s1 = g1^2, so the first step is lr * sign(g1)
    np.testing.assert_allclose(p1, [0.9, -1.9, 0.4], atol=1e-9)
    # s2 = g1^2 + g2^2 = [1.25, 2, 5]; step = 0.1 * g2 / sqrt(s2)
    expected = [0.9 - 0.1 / math.sqrt(1.25), -1.9 - 0.1 / math.sqrt(2.0), 0.4 + 0.1 / math.sqrt(5.0)]
    np.testing.assert_allclose(p2, expected, atol=1e-9)


def test_rmsprop_by_hand():
    p1, p2 = run(RMSProp, [G1, G2], lr=0.01, rho=0.9)
    # a1 = 0.1 * g1^2 = [0.025, 0.1, 0.4]; step = 0.01 * g1 / sqrt(a1) = 0.01 * sign(g1) / sqrt(0.1)
    s = 0.01 / math.sqrt(0.1)
    np.testing.assert_allclose(p1, [1.0 - s, -2.0 + s, 0.5 - s], atol=1e-8)
    # a2 = 0.9 * a1 + 0.1 * g2^2 = [0.1225, 0.19, 0.46]
    expected = [p1[0] - 0.01 / 0.35, p1[1] - 0.01 / math.sqrt(0.19), p1[2] + 0.01 / math.sqrt(0.46)]
    np.testing.assert_allclose(p2, expected, atol=1e-8)


def test_adam_by_hand():
    p1, p2, p3 = run(Adam, [G1, G2, G2], lr=0.1)
    g1, g2 = np.array(G1), np.array(G2)
    # step 1: m_hat = g1, v_hat = g1^2, so the step is lr * sign(g1)
    np.testing.assert_allclose(p1, [0.9, -1.9, 0.4], atol=1e-8)
    # step 2: m2 = 0.09 g1 + 0.1 g2 = [0.145, 0.01, 0.08]; v2 = 0.000999 g1^2 + 0.001 g2^2
    m_hat = np.array([0.145, 0.01, 0.08]) / (1 - 0.9 ** 2)
    v_hat = (0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2) / (1 - 0.999 ** 2)
    np.testing.assert_allclose(v_hat, [0.6251876, 1.0, 2.4992496], rtol=1e-6)  # the hand arithmetic itself
    np.testing.assert_allclose(p2, p1 - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8), atol=1e-12)
    # step 3, gradient g2 again
    m3 = 0.9 * np.array([0.145, 0.01, 0.08]) + 0.1 * g2
    v3 = 0.999 * (0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2) + 0.001 * g2 ** 2
    step3 = 0.1 * (m3 / (1 - 0.9 ** 3)) / (np.sqrt(v3 / (1 - 0.999 ** 3)) + 1e-8)
    np.testing.assert_allclose(p3, p2 - step3, atol=1e-12)


def test_sgd_l2_weight_decay_with_and_without_mask():
    mask = np.array([True, False, True])
    (p1,) = run(SGD, [G1], lr=0.1, weight_decay=0.1, decay_mask=mask)
    # g' = g1 + 0.1 * p0 where masked = [0.6, -1.0, 2.05]
    np.testing.assert_allclose(p1, [0.94, -1.9, 0.295], atol=1e-15)
    (p1,) = run(SGD, [G1], lr=0.1, weight_decay=0.1)
    # no mask: g' = [0.6, -1.2, 2.05]
    np.testing.assert_allclose(p1, [0.94, -1.88, 0.295], atol=1e-15)


def test_l1_adds_sign_of_params():
    (p1,) = run(SGD, [G1], lr=0.1, l1=0.1)
    # g' = g1 + 0.1 * sign(p0) = [0.6, -1.1, 2.1]
    np.testing.assert_allclose(p1, [0.94, -1.89, 0.29], atol=1e-15)
    (p1,) = run(SGD, [G1], lr=0.1, l1=0.1, decay_mask=np.array([False, True, False]))
    np.testing.assert_allclose(p1, [0.95, -1.89, 0.3], atol=1e-15)


def test_adamw_decouples_decay_unlike_adam_l2():
    mask = np.array([True, False, True])
    (w1,) = run(AdamW, [G1], lr=0.1, weight_decay=0.1, decay_mask=mask)
    # p <- p - 0.1 * 0.1 * p where masked, then the Adam step lr * sign(g1)
    np.testing.assert_allclose(w1, [0.99 - 0.1, -2.0 + 0.1, 0.495 - 0.1], atol=1e-8)
    (w1,) = run(AdamW, [G1], lr=0.1, weight_decay=0.1)
    np.testing.assert_allclose(w1, [0.89, -1.88, 0.395], atol=1e-8)
    # Adam + L2: g' = g1 + 0.1 * p0 keeps the signs of g1, so the first step is still lr * sign(g1)
    (a1,) = run(Adam, [G1], lr=0.1, weight_decay=0.1)
    np.testing.assert_allclose(a1, [0.9, -1.9, 0.4], atol=1e-8)


def test_grads_are_not_modified():
    p = np.array(P0)
    g = np.array(G1)
    for cls in (SGD, AdaGrad, RMSProp, Adam, AdamW):
        cls(p, g, lr=0.1, weight_decay=0.1, l1=0.1).step()
        assert g.tolist() == G1


def test_clip_grad_norm():
    g = np.array([3.0, 0.0, -4.0])
    assert clip_grad_norm(g, 10.0) == 5.0
    assert g.tolist() == [3.0, 0.0, -4.0]
    assert clip_grad_norm(g, 1.0) == 5.0
    np.testing.assert_allclose(g, [0.6, 0.0, -0.8], atol=1e-15)
    g = np.array([np.inf, 1.0])
    assert clip_grad_norm(g, 1.0) == math.inf
    assert g[1] == 1.0


OPTIMIZERS = [
    ("sgd", {"lr": 0.1}),
    ("momentum", {"lr": 0.05}),
    ("nesterov", {"lr": 0.05}),
    ("adagrad", {"lr": 0.5}),
    ("rmsprop", {"lr": 0.01}),
    ("adam", {"lr": 0.05}),
    ("adamw", {"lr": 0.05}),
]


@pytest.mark.parametrize("name,kw", OPTIMIZERS)
def test_minimizes_convex_quadratic(name, kw):
    """f(p) = 1/2 p^T A p - b^T p has its minimum at A p = b."""
    a = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
    b = np.array([1.0, 2.0, 3.0])
    solution = np.linalg.solve(a, b)
    p = np.zeros(3)
    g = np.zeros(3)
    opt = make_optimizer(name, p, g, **kw)
    steps = 3000
    for t in range(steps):
        np.matmul(a, p, out=g)
        g -= b
        opt.step(kw["lr"] * 0.5 * (1 + math.cos(math.pi * t / steps)))  # decay so adaptive methods settle
    np.testing.assert_allclose(p, solution, atol=1e-4)


@pytest.mark.parametrize("name,kw", OPTIMIZERS)
def test_state_round_trip_continues_bit_identically(name, kw):
    rng = np.random.default_rng(0)
    grads_seq = rng.standard_normal((10, 50)).astype(np.float32)
    mask = rng.random(50) < 0.5
    p = rng.standard_normal(50).astype(np.float32)
    g = np.zeros_like(p)
    opt = make_optimizer(name, p, g, decay_mask=mask, weight_decay=0.01, **kw)
    for t in range(5):
        g[:] = grads_seq[t]
        opt.step(0.01 * (t + 1))
    saved_params, saved_state = p.copy(), opt.state_dict()
    for t in range(5, 10):
        g[:] = grads_seq[t]
        opt.step(0.01 * (t + 1))

    p2 = saved_params.copy()
    g2 = np.zeros_like(p2)
    opt2 = make_optimizer(name, p2, g2, decay_mask=mask, weight_decay=0.01, **kw)
    opt2.load_state_dict(saved_state)
    assert opt2.step_count == 5
    for t in range(5, 10):
        g2[:] = grads_seq[t]
        opt2.step(0.01 * (t + 1))
    assert np.array_equal(p, p2)
    assert not np.array_equal(p, saved_params)


@pytest.mark.parametrize("name,kw", OPTIMIZERS)
def test_float32_stays_float32(name, kw):
    p = np.array(P0, np.float32)
    g = np.array(G1, np.float32)
    opt = make_optimizer(name, p, g, weight_decay=0.1, l1=0.01, **kw)
    opt.step(np.float64(0.1))
    opt.step()
    assert p.dtype == np.float32 and opt.params is p
    assert all(v.dtype == np.float32 for k, v in opt.state_dict().items() if k != "step")
    # the float32 trajectory is the float64 one rounded (no precision lost to a wrong dtype mix)
    p64 = np.array(P0)
    opt64 = make_optimizer(name, p64, np.array(G1), weight_decay=0.1, l1=0.01, **kw)
    opt64.step(0.1)
    opt64.step()
    np.testing.assert_allclose(p, p64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kw", OPTIMIZERS)
def test_step_allocates_no_arena_sized_temporaries(name, kw):
    n = 100_000
    p = np.ones(n, np.float32)
    g = np.full(n, 0.1, np.float32)
    opt = make_optimizer(name, p, g, decay_mask=np.arange(n) % 2 == 0, weight_decay=0.1, l1=0.01, **kw)
    opt.step()
    tracemalloc.start()
    opt.step(np.float64(0.01))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < p.nbytes // 10


def test_state_dict_is_a_copy_and_load_checks_keys():
    p, g = np.array(P0), np.array(G1)
    opt = Adam(p, g, lr=0.1)
    opt.step()
    state = opt.state_dict()
    assert set(state) == {"step", "m", "v"} and state["step"] == 1
    np.testing.assert_allclose(state["m"], 0.1 * np.array(G1))
    opt.step()
    np.testing.assert_allclose(state["m"], 0.1 * np.array(G1))  # not a view of the live buffer
    with pytest.raises(ConfigError, match="expected"):
        SGD(p, g, momentum=0.9).load_state_dict(state)
    with pytest.raises(ConfigError, match="shape"):
        Adam(np.zeros(4), np.zeros(4)).load_state_dict(state)


def test_factory_aliases():
    p, g = np.zeros(3), np.zeros(3)
    opt = make_optimizer("momentum", p, g, lr=0.1)
    assert type(opt) is SGD and opt.momentum == 0.9 and not opt.nesterov
    opt = make_optimizer("nesterov", p, g, momentum=0.5)
    assert opt.nesterov and opt.momentum == 0.5
    assert type(make_optimizer("adamw", p, g)) is AdamW
    assert make_optimizer("sgd", p, g).momentum == 0.0
    assert repr(make_optimizer("rmsprop", p, g, rho=0.5)).startswith("RMSProp(lr=0.001")


def test_factory_errors_name_the_bad_key():
    p, g = np.zeros(3), np.zeros(3)
    with pytest.raises(ConfigError, match="'adamax'.*valid: sgd, momentum, nesterov"):
        make_optimizer("adamax", p, g)
    with pytest.raises(ConfigError, match="'betas'.*valid: .*beta1"):
        make_optimizer("adam", p, g, betas=[0.9, 0.99])
    with pytest.raises(ConfigError, match="'momentum'"):
        make_optimizer("adagrad", p, g, momentum=0.9)
    with pytest.raises(ConfigError, match="'nesterov'"):
        make_optimizer("momentum", p, g, nesterov=False)
    with pytest.raises(ConfigError, match="lr='0.1'"):
        make_optimizer("sgd", p, g, lr="0.1")
    with pytest.raises(ConfigError, match="momentum=1.5"):
        make_optimizer("sgd", p, g, momentum=1.5)


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_adam_in_blocks_is_bitwise_the_whole_arena_update(monkeypatch, cls):
    """Adam runs its passes over one cache-sized block of the arena at a time: the same arithmetic per element."""
    import distnet.nn.optim as optim

    rng = np.random.default_rng(5)
    p0, grads = rng.standard_normal(1000).astype(np.float32), rng.standard_normal((3, 1000)).astype(np.float32)
    results = []
    for block in (1 << 30, 64, 7):  # one block, and blocks that do not divide the arena
        monkeypatch.setattr(optim, "BLOCK", block)
        p, g = p0.copy(), np.empty_like(p0)
        opt = cls(p, g, lr=0.01, weight_decay=0.01)
        for gi in grads:
            g[...] = gi
            opt.step()
        results.append((p.copy(), opt.m.copy(), opt.v.copy()))
    assert len(optim._blocks(1000)) == 143  # the last setting did run in blocks
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(results[0][0], p0)
