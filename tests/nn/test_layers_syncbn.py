"""BatchNorm with sync=True: global-batch statistics through ``distribute(allreduce)``, two threads as two ranks."""

import threading

import numpy as np
import pytest

from distnet.errors import ConfigError
from distnet.nn.layers import BatchNorm, Dense, ReLU
from distnet.nn.layers.gradcheck import check_layer
from distnet.nn.model import Sequential

TOL = dict(rtol=1e-12, atol=1e-12)


def thread_allreduces(n):
    """``n`` allreduce functions, one per thread standing in for a rank: each sums its array with the others'
    (in rank order, so every thread gets the same bits) in place, as an MPI SUM allreduce."""
    barrier = threading.Barrier(n, timeout=20)
    slots = [None] * n
    calls = []

    def make(rank):
        def allreduce(a):
            assert a.dtype == np.float64
            slots[rank] = a.copy()
            barrier.wait()
            total = np.sum(slots, axis=0)
            barrier.wait()  # nobody refills a slot before every rank has read them all
            a[...] = total
            if rank == 0:
                calls.append(a.size)
            return a
        return allreduce
    return [make(r) for r in range(n)], calls


def run_ranks(work, n):
    """Run ``work(rank)`` on n threads at once; their results in rank order (re-raising a thread's error)."""
    results, errors = [None] * n, []

    def run(r):
        try:
            results[r] = work(r)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)
    threads = [threading.Thread(target=run, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def random_bn(shape, sync, seed=0):
    bn = BatchNorm(momentum=0.3, sync=sync)
    bn.build(shape, np.float64)
    rng = np.random.default_rng(seed)
    bn.params["gamma"][...] = rng.standard_normal(shape[0])
    bn.params["beta"][...] = rng.standard_normal(shape[0])
    return bn


@pytest.mark.parametrize("shape,split", [((5,), 7), ((3, 4, 5), 2), ((3, 4, 5), 5)], ids=["2d", "4d", "4d-uneven"])
def test_two_synced_replicas_equal_one_batchnorm_over_the_whole_batch(shape, split):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, *shape)) * 3 + 2
    dy = rng.standard_normal(x.shape)
    whole = random_bn(shape, sync=False)
    y = whole.forward(x)
    dx = whole.backward(dy)
    parts = [slice(0, split), slice(split, 12)]
    allreduces, calls = thread_allreduces(2)
    replicas = [random_bn(shape, sync=True) for _ in parts]
    for bn, allreduce in zip(replicas, allreduces):
        bn.distribute(allreduce)

    def step(r):
        out = replicas[r].forward(x[parts[r]])
        return out, replicas[r].backward(dy[parts[r]])
    results = run_ranks(step, 2)
    assert calls == [2 * shape[0] + 1, 2 * shape[0]]  # one allreduce in forward, one in backward
    np.testing.assert_allclose(np.concatenate([r[0] for r in results]), y, **TOL)
    np.testing.assert_allclose(np.concatenate([r[1] for r in results]), dx, **TOL)
    for name in ("gamma", "beta"):  # each rank's own sum: the gradient sync adds them up
        np.testing.assert_allclose(sum(bn.grads[name] for bn in replicas), whole.grads[name], **TOL)
        assert not np.allclose(replicas[0].grads[name], whole.grads[name])
    for bn in replicas:  # running statistics from the global batch (variance unbiased with the global count)
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(bn.buffers[name], whole.buffers[name], **TOL)


def test_a_model_with_synced_batchnorm_on_two_ranks_has_the_whole_batch_gradients():
    def model():
        return Sequential([Dense(None, 8), BatchNorm(sync=True), ReLU(), Dense(None, 3)], input_shape=(6,),
                          dtype=np.float64, seed=2)
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((10, 6)), rng.standard_normal((10, 3))
    whole = model()  # alone: no reduction given, so plain BatchNorm over the whole batch
    whole.forward(x)
    whole.backward(dy)
    parts = [slice(0, 6), slice(6, 10)]
    replicas = [model() for _ in parts]
    for m, allreduce in zip(replicas, thread_allreduces(2)[0]):
        m.distribute(allreduce)

    def step(r):
        replicas[r].forward(x[parts[r]])
        replicas[r].backward(dy[parts[r]])
        return replicas[r].grads_flat.copy()
    np.testing.assert_allclose(sum(run_ranks(step, 2)), whole.grads_flat, **TOL)


@pytest.mark.parametrize("shape", [(4,), (3, 4, 5)], ids=["1d", "2d"])
def test_synced_batchnorm_gradient_with_one_rank(shape):
    bn = random_bn(shape, sync=True)
    bn.distribute(lambda a: a)  # the sum over one rank
    check_layer(bn, np.random.default_rng(7).standard_normal((6, *shape)) * 3 + 1)
    plain = random_bn(shape, sync=False)
    x, dy = np.random.default_rng(8).standard_normal((2, 6, *shape))
    np.testing.assert_allclose(bn.forward(x), plain.forward(x), **TOL)
    np.testing.assert_allclose(bn.backward(dy), plain.backward(dy), **TOL)


def test_synced_batchnorm_without_a_reduction_or_in_evaluation_is_plain_batchnorm():
    x, dy = np.random.default_rng(4).standard_normal((2, 8, 3, 2, 2))
    alone, plain = random_bn((3, 2, 2), sync=True), random_bn((3, 2, 2), sync=False)
    np.testing.assert_array_equal(alone.forward(x), plain.forward(x))
    np.testing.assert_array_equal(alone.backward(dy), plain.backward(dy))

    def refuse(a):
        raise AssertionError("evaluation must not communicate")
    alone.distribute(refuse)
    np.testing.assert_array_equal(alone.forward(x, training=False), plain.forward(x, training=False))
    np.testing.assert_array_equal(alone.backward(dy), plain.backward(dy))
    np.testing.assert_array_equal(alone.buffers["running_var"], plain.buffers["running_var"])


def test_synced_batchnorm_in_float32_keeps_the_dtype():
    bn = BatchNorm(4, sync=True)
    bn.distribute(lambda a: a)
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32) * 5 + 3
    y = bn.forward(x)
    assert y.dtype == np.float32 and bn.backward(np.ones_like(y)).dtype == np.float32
    assert bn.buffers["running_var"].dtype == np.float32
    np.testing.assert_allclose(y, BatchNorm(4).forward(x), rtol=1e-5, atol=1e-5)


def test_sync_is_a_boolean_constructor_argument():
    assert BatchNorm().sync is False and BatchNorm(sync=True).sync is True
    assert repr(BatchNorm(3, sync=True)) == "BatchNorm(3, momentum=0.1, eps=1e-05, sync=True)"
    assert repr(BatchNorm(3)) == "BatchNorm(3, momentum=0.1, eps=1e-05)"
    with pytest.raises(ConfigError, match="sync must be true or false"):
        BatchNorm(sync="yes")
