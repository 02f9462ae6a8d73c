"""Communication: bucket layout, bucketed allreduce == plain sum (real mpiexec), failures end every rank."""

import textwrap
import time

import numpy as np
import pytest

from distnet import comm
from distnet.nn.layers import Dense, ReLU
from distnet.nn.model import Sequential

from ..helpers import TwoRanks, run_python_mpi


def mlp():
    return Sequential([Dense(None, 64), ReLU(), Dense(None, 32), ReLU(), Dense(None, 10)], input_shape=(20,), seed=3)


@pytest.mark.parametrize("bucket_bytes,split_bytes", [(1, 0), (4 * 1024, 0), (1 << 30, 0), (1 << 30, 1024),
                                                      (1, 1024)])
def test_buckets_tile_the_arena_in_backward_order(bucket_bytes, split_bytes):
    model = mlp()
    sync = comm.sync.Bucketed(TwoRanks(), model, bucket_bytes=bucket_bytes, split_bytes=split_bytes)
    slices = [sl for _, sl in sync.buckets]
    # Ready order is backward order: the first bucket ends at the arena's end, each next one ends where
    # the previous one started, and together they cover the arena once.
    assert slices[0].stop == model.num_params
    for a, b in zip(slices, slices[1:]):
        assert b.stop == a.start
    assert slices[-1].start == 0
    out = model.layers[0].grads["W"].shape[1]
    for key, sl in sync.buckets:
        if isinstance(key, tuple):  # a row block of the first layer's dW: it starts at that row
            assert key[0] == 0 and sl.start == key[1] * out
        else:
            assert model.layer_ranges[key][0] == sl.start
    blocks = [key for key, _ in sync.buckets if isinstance(key, tuple)]
    if split_bytes:  # the first layer's W (20 x 64 float32 = 5 KiB) goes in 1 KiB row blocks, last rows first
        assert [row for _, row in blocks] == [16, 12, 8, 4, 0]
        assert sync.row_blocks == [(16, 20), (12, 16), (8, 12), (4, 8), (0, 4)]
        assert sync.pieces == [(r, r + 1) for r in range(19, -1, -1)]  # 4 polls per block, last rows first
        assert comm.sync.Bucketed._pieces([(10, 20), (0, 10)]) == [(19, 20), (16, 19), (13, 16), (10, 13), (9, 10),
                                                               (6, 9), (3, 6), (0, 3)]
    else:
        assert not blocks and sync.split_index is None and sync.rows(0) is None
    if bucket_bytes == 1 and not split_bytes:
        assert len(slices) == 3  # one bucket per parameterized layer
    if bucket_bytes == 1 << 30:
        assert len(slices) == 1 + len(blocks) - bool(blocks)


SCRIPT = textwrap.dedent("""
    import numpy as np, sys
    from distnet import comm
    from distnet.nn.layers import Dense, ReLU
    from distnet.nn.model import Sequential
    w = comm.world()
    model = Sequential([Dense(None, 64), ReLU(), Dense(None, 32), ReLU(), Dense(None, 10)], input_shape=(20,), seed=3)
    K = {accumulate}
    def local_grads(rank, micro):
        x = np.random.default_rng([rank, micro]).standard_normal((8, 20)).astype(np.float32)
        model.forward(x)
        return np.random.default_rng([rank, micro, 1]).standard_normal((8, 10)).astype(np.float32)
    # reference: every rank's accumulated gradient, summed here by hand after an allgather
    expect = None
    for r in range(w.size):
        total = 0
        for m in range(K):
            model.backward(local_grads(r, m))
            total = total + model.grads_flat.copy()
        expect = total if expect is None else expect + total
    sync = comm.sync.make(w, model, dict(sync="bucketed", overlap={overlap}, bucket_mb={bucket_bytes} / 2 ** 20,
                                         split_mb={split_bytes} / 2 ** 20))
    accum = np.zeros_like(model.grads_flat) if K > 1 else None
    for m in range(K):
        dy = local_grads(w.rank, m)
        if m < K - 1:
            model.backward(dy)
            accum[...] = model.grads_flat if m == 0 else accum + model.grads_flat
        else:
            stats = np.array([w.rank + 1.0, 2.0])
            sync.begin(accum, stats=stats)
            model.backward(dy, sync=sync)
    sync.finish()
    assert not any("row" in k for k in vars(model.layers[0]))  # progress came through an argument
    np.testing.assert_allclose(model.grads_flat, expect, rtol=1e-5, atol=1e-5)
    assert stats.tolist() == [w.size * (w.size + 1) / 2, 2.0 * w.size]
    assert (getattr(sync, "split_index", None) is not None) == ({split_bytes} > 0 and {overlap})
    buckets = getattr(sync, "buckets", [None])  # the flat strategy: one allreduce of everything
    assert len(buckets) >= (3 if {bucket_bytes} == 1 and {overlap} else 1)
    if w.rank == 0:
        print("OK", w.size, len(buckets))
""")


BUCKETED = [(1, True, 1, 0), (1 << 30, True, 1, 0), (4096, False, 1, 0), (1, True, 3, 0), (1 << 30, True, 1, 1024),
            (1, True, 3, 1024), (4096, False, 1, 1024)]


@pytest.fixture(scope="module")
def on_two_ranks(launch_cases):
    """The 2-rank scripts of this module (every bucketed case, the scatter/gather, the replica check) in one
    launch: {key: Case}."""
    cases = {f"bucketed-{b}-{o}-{a}-{s}": SCRIPT.format(bucket_bytes=b, overlap=o, accumulate=a, split_bytes=s)
             for b, o, a, s in BUCKETED}
    return launch_cases({**cases, "scatter-gather": SCATTER_GATHER, "replicas": REPLICAS}, n=2, timeout=120)


@pytest.mark.mpi
@pytest.mark.parametrize("bucket_bytes,overlap,accumulate,split_bytes", BUCKETED)
def test_bucketed_allreduce_equals_sum_over_ranks(on_two_ranks, bucket_bytes, overlap, accumulate, split_bytes):
    on_two_ranks[f"bucketed-{bucket_bytes}-{overlap}-{accumulate}-{split_bytes}"].check("OK 2")


FAIL = textwrap.dedent("""
    from distnet import comm
    w = comm.world()
    try:
        if w.rank == 1:
            raise ValueError("boom on rank one")
        w.barrier()  # rank 0 waits here: without abort it would hang forever
    except Exception as e:
        raise SystemExit(comm.fail_alone(w, e))
""")


@pytest.mark.mpi
def test_one_rank_failing_ends_all_ranks_promptly():
    t = time.monotonic()
    r = run_python_mpi(FAIL, n=2, timeout=60)
    assert time.monotonic() - t < 30
    assert r.returncode == 1
    assert "rank 1: ValueError: boom on rank one" in r.stderr


AGREE = textwrap.dedent("""
    from distnet import comm
    from distnet.errors import UserError
    w = comm.world()
    err = {{"one": UserError("bad thing on rank 1") if w.rank == 1 else None,
            "all": UserError("bad config"),
            "differ": UserError(f"bad file on rank {{w.rank}}")}}["{case}"]
    raise SystemExit(comm.settle(w, err))
""")


@pytest.mark.mpi
@pytest.mark.parametrize("case,line", [("one", "distnet: error: rank 1: bad thing on rank 1"),
                                       ("all", "distnet: error: bad config"),
                                       ("differ", "distnet: error: rank 0: bad file on rank 0")])
def test_setup_errors_are_agreed_so_every_rank_exits_with_the_code(case, line):
    r = run_python_mpi(AGREE.format(case=case), n=2, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("distnet: error:") == 1 and line + "\n" in r.stderr, r.stderr


def test_world_of_one_without_mpiexec():
    w = comm.world()
    assert (w.rank, w.size) == (0, 1)
    a = np.arange(4.0)
    assert w.allreduce(a) is a and a.tolist() == [0, 1, 2, 3]


REPLICAS = textwrap.dedent("""
    from distnet import comm
    from distnet.nn.layers import Dense
    from distnet.nn.model import Sequential
    w = comm.world()
    m = Sequential([Dense(None, 4)], input_shape=(3,), seed=0)
    comm.check_replicas(w, m, "at the start")
    m.params_flat[0] += w.rank
    try:
        comm.check_replicas(w, m, "at step 7")
    except comm.ReplicaMismatch as e:
        if w.rank == 0:
            print("MISMATCH", e)
""")


@pytest.mark.mpi
def test_replica_check_detects_different_parameters(on_two_ranks):
    on_two_ranks["replicas"].check("MISMATCH model replicas differ at step 7: ranks [1]")


def test_an_exception_inside_a_synchronized_backward_leaves_nothing_installed():
    model, reference = mlp(), mlp()
    x, dy = np.ones((8, 20), np.float32), np.ones((8, 10), np.float32)
    first = model.layers[0]
    model.forward(x)
    attributes = set(vars(first))

    class Broken(Exception):
        pass

    def broken(lo, hi):
        raise Broken  # the split layer's first row piece fails mid-backward

    sync = comm.sync.Bucketed(TwoRanks(), model, bucket_bytes=1, split_bytes=1024)
    sync._rows_done = broken
    sync.begin()
    with pytest.raises(Broken):
        model.backward(dy, sync=sync)
    assert set(vars(first)) == attributes  # nothing was installed on the layer
    model.backward(dy)  # so a plain backward afterwards is a plain backward
    reference.forward(x)
    reference.backward(dy)
    np.testing.assert_array_equal(model.grads_flat, reference.grads_flat)


SCATTER_GATHER = textwrap.dedent("""
    import numpy as np
    from distnet import comm
    w = comm.world()
    P, n = w.size, 7
    counts = [n // P + (r < n % P) for r in range(P)]  # uneven parts
    lo = sum(counts[:w.rank])
    recv = np.empty(counts[w.rank])
    w.waitall([w.ireduce_scatter(np.arange(n, dtype=np.float64) * (w.rank + 1), recv, counts)])
    assert np.array_equal(recv, np.arange(n)[lo:lo + counts[w.rank]] * P * (P + 1) / 2), recv
    buf = np.full(n, -1.0)
    buf[lo:lo + counts[w.rank]] = w.rank
    w.waitall([w.iallgather(buf, counts)])
    assert np.array_equal(buf, np.repeat(np.arange(P), counts)), buf
    empty = [0] * (P - 1) + [3]  # parts may be empty
    mine = np.empty(empty[w.rank])
    w.waitall([w.ireduce_scatter(np.ones(3), mine, empty)])
    assert w.rank < P - 1 or mine.tolist() == [P] * 3
    if w.rank == 0:
        print("OK", P)
""")


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_reduce_scatter_and_allgather_in_uneven_parts(on_two_ranks, launch_cases, n):
    case = on_two_ranks["scatter-gather"] if n == 2 else launch_cases({"scatter-gather": SCATTER_GATHER}, n=n,
                                                                      timeout=60)["scatter-gather"]
    case.check(f"OK {n}")


WAIT = textwrap.dedent("""
    import os
    import numpy as np
    from distnet import comm
    w = comm.world()
    said = [w.watchdog.pause is os.sched_yield]  # the default, from the start (setup's waits too)
    for mode in ("spin", "sleep", "yield"):
        w.wait_mode(mode)
        said.append(repr(w.watchdog.pause))
        assert list(w.allreduce(np.ones(2))) == [2, 2]
    everyone = w.allgather(said)
    if w.rank == 0:  # one rank prints: two ranks' lines may interleave under mpiexec
        for rank, said in enumerate(everyone):
            print(rank, *said, flush=True)
""")


@pytest.mark.mpi
def test_a_rank_waiting_on_a_collective_yields_its_core_between_polls_unless_told_otherwise():
    r = run_python_mpi(WAIT, n=2, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [["0", "True", "None"], ["1", "True", "None"]], r.stdout
    assert all("functools.partial(<built-in function sleep>, 2e-05)" in line and "sched_yield" in line.split()[-1]
               for line in lines), r.stdout
