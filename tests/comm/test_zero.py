"""ZeRO-1 (comm.sync = "zero", and "shm" through shared memory on one host): the replicated optimizer's
parameters (bitwise where the sums are), resumable on any rank count, optimizer state per rank / P."""

import textwrap

import numpy as np
import pytest

from distnet.comm.sync.zero import parts

from ..helpers import checkpoint_state as state
from ..helpers import metrics, run_python_mpi, train

pytestmark = pytest.mark.mpi

F64 = ["--batch-size", "96", "--set", "model.dtype=float64"]


def test_parts_are_consecutive_and_uneven():
    assert parts(7, 3) == [3, 2, 2] and parts(2, 3) == [1, 1, 0] and sum(parts(235146, 3)) == 235146


CASES = [(2, []), (3, []), (3, ["--set", "optimizer.name=momentum", "--set", "optimizer.weight_decay=0.01"]),
         (2, ["--accumulate", "2"])]


@pytest.mark.parametrize("sync", ["zero", "shm"])
@pytest.mark.parametrize("n,optimizer", CASES)
def test_sharding_matches_the_replicated_optimizer(tmp_path, spirals_data, n, optimizer, sync):
    args = ["--epochs", "1", *F64, *optimizer]
    a, oa = train(tmp_path, "rep", spirals_data, n=n, extra=args)
    b, ob = train(tmp_path, sync, spirals_data, n=n, extra=[*args, "--set", f"comm.sync={sync}"])
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    rep, zero = state(oa / "ck"), state(ob / "ck")
    assert rep.keys() == zero.keys() and len(rep) >= 3  # params, step and the momentum/Adam buffers
    ma, mb = metrics(oa / "m.jsonl"), metrics(ob / "m.jsonl")
    la, lb = ([m["loss"] for m in ms if m["event"] == "train"] for ms in (ma, mb))
    if sync == "shm" and n > 2:  # shm sums in rank order, MPI's allreduce maybe not: equal to rounding
        for key in rep:
            np.testing.assert_allclose(zero[key], rep[key], rtol=1e-9, atol=1e-15, err_msg=key)
        np.testing.assert_allclose(lb, la, rtol=1e-9)
        return
    for key in rep:
        assert np.array_equal(rep[key], zero[key]), key  # the gathered state is the replicated layout
    assert la == lb


def test_zero_with_clipping_follows_the_replicated_run(tmp_path, spirals_data):
    args = ["--epochs", "1", *F64, "--set", "train.clip_grad_norm=0.05"]
    a, oa = train(tmp_path, "rep", spirals_data, n=2, extra=args)
    b, ob = train(tmp_path, "zero", spirals_data, n=2, extra=[*args, "--set", "comm.sync=zero"])
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    # the global norm is a sum of shard norms (rounded differently), so equal to rounding, not bitwise
    np.testing.assert_allclose(state(ob / "ck")["params"], state(oa / "ck")["params"], rtol=1e-9, atol=1e-12)
    norms = [[m["grad_norm"] for m in metrics(o / "m.jsonl") if m["event"] == "train"] for o in (oa, ob)]
    assert norms[0] and all(g > 0.05 for g in norms[0][:3])  # the clip was active
    np.testing.assert_allclose(norms[1], norms[0], rtol=1e-9)


@pytest.mark.parametrize("first,then", [("zero", "zero"), ("shm", "zero"), ("zero", "shm")])
def test_resume_a_sharded_run_on_another_rank_count(tmp_path, spirals_data, first, then):
    args = ["--epochs", "2", *F64]
    ref, o_ref = train(tmp_path, "ref", spirals_data, n=2, extra=[*args, "--set", "comm.sync=zero"])
    assert ref.returncode == 0, ref.stderr
    steps = metrics(o_ref / "m.jsonl")[-1]["steps"] // 2
    r, o = train(tmp_path, "mixed", spirals_data, n=2,
                 extra=[*args, "--set", f"comm.sync={first}", "--set", f"train.max_steps={steps}"])
    assert r.returncode == 0, r.stderr
    again, o = train(tmp_path, "mixed", spirals_data, n=3, extra=[*args, "--set", f"comm.sync={then}", "--resume"])
    assert again.returncode == 0, again.stderr
    resumed, full = state(o / "ck"), state(o_ref / "ck")
    assert resumed["step"] == full["step"] == 2 * steps
    for key in ("params", "m", "v"):  # three ranks sum in another order: equal to float64 rounding
        np.testing.assert_allclose(resumed[key], full[key], rtol=1e-9, atol=1e-15)


MEMORY = textwrap.dedent("""
    import numpy as np
    from distnet import build, comm, config
    from distnet.nn.layers import Dense, ReLU
    from distnet.nn.model import Sequential
    w = comm.world()
    model = Sequential([Dense(None, 64), ReLU(), Dense(None, 32), ReLU(), Dense(None, 10)], input_shape=(20,), seed=3)
    cfg = config.defaults()
    cfg["optimizer"]["name"] = "adam"
    cc = dict(cfg["comm"], sync="zero", bucket_mb=1 / 1024, split_mb=1 / 1024)
    opt = build.optimizer(cfg, model, 0.01, comm.sync.make(w, model, cc))
    mine = opt.state_bytes()
    total = sum(w.allgather(mine))
    full = 2 * model.params_flat.nbytes
    assert total == full and mine <= full / w.size + 2 * len(opt.parts) * 4, (mine, total, full)
    if w.rank == 0:
        print("OK", w.size, len(opt.parts))
""")


@pytest.mark.parametrize("n", [2, 3])
def test_optimizer_state_per_rank_is_divided_by_the_rank_count(n):
    r = run_python_mpi(MEMORY, n=n, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"OK {n}"), r.stdout


def test_shm_survives_a_skipped_step(tmp_path, spirals_data):
    """A skipped update still ends the step with a fence: no rank writes its next gradient while another
    still sums from it (the run finishes with the same replicas)."""
    r, out = train(tmp_path, "s", spirals_data, n=2, extra=["--epochs", "1", "--set", "train.nonfinite=\"skip\"",
                                                            "--set", "comm.sync=shm"],
                   env={"DISTNET_FAULT": "nan@0:2"})
    assert r.returncode == 0, r.stderr
    assert [m["step"] for m in metrics(out / "m.jsonl") if m["event"] == "skip"] == [2]


def test_shm_needs_every_rank_on_one_host(spirals_data):
    from distnet import build, comm, config
    from distnet.errors import ConfigError

    class TwoHosts(comm.SerialWorld):
        size, local_size = 2, 1

    model = build.model(config.load("spirals-mlp"), (2,))
    cc = dict(config.defaults()["comm"], sync="shm")
    message = r'comm.sync = "shm" needs every rank on one host \(1 of 2 share this one\): use comm.sync = "zero"'
    with pytest.raises(ConfigError, match=message):
        comm.sync.make(TwoHosts(), model, cc)


SHARED = textwrap.dedent("""
    import numpy as np
    from distnet import build, comm, config
    from distnet.nn.layers import Dense, ReLU
    from distnet.nn.model import Sequential
    w = comm.world()
    model = Sequential([Dense(None, 64), ReLU(), Dense(None, 10)], input_shape=(20,), seed=3)
    before = model.params_flat.copy()
    cfg = config.defaults()
    sync = comm.sync.make(w, model, dict(cfg["comm"], sync="shm"))
    opt = build.optimizer(cfg, model, 0.01, sync)
    comm.sync.attach(w, sync)  # setup holds no collective: the windows come after it
    # one arena for all ranks, the layers' views inside it, the optimizer's part too, the values kept
    assert np.shares_memory(opt.parts[0].params, model.params_flat)
    assert np.array_equal(model.params_flat, before)
    assert np.shares_memory(model.layers[0].params["W"], model.params_flat)
    assert np.shares_memory(model.layers[2].grads["b"], model.grads_flat)
    w.fence()  # every rank has checked the values before one writes
    if w.rank == 1:
        model.params_flat[:3] = 7.0
    w.fence()
    assert list(model.params_flat[:3]) == [7.0] * 3
    if w.rank == 0:
        print("OK", w.size, model.num_params)
""")


def test_shm_ranks_share_one_parameter_arena():
    r = run_python_mpi(SHARED, n=2, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK 2"), r.stdout


def test_auto_takes_shm_on_one_host_with_room_else_bucketed(tmp_path, spirals_data):
    from distnet import build, comm, config
    from distnet.comm.sync import shared_memory_fits

    class OneHost(comm.SerialWorld):
        size, local_size = 2, 2

    class TwoHosts(OneHost):
        local_size = 1

    model = build.model(config.load("spirals-mlp"), (2,))
    assert shared_memory_fits(OneHost(), model, path=tmp_path)
    assert not shared_memory_fits(TwoHosts(), model, path=tmp_path)
    assert not shared_memory_fits(comm.SerialWorld(), model, path=tmp_path)
    assert not shared_memory_fits(OneHost(), model, path=tmp_path / "missing")  # no shared memory: bucketed
    # a real run on 2 ranks of this host says which strategy auto took
    r, out = train(tmp_path, "auto", spirals_data, n=2, extra=["--epochs", "1"])
    assert r.returncode == 0, r.stderr
    assert metrics(out / "m.jsonl")[0]["sync"] == "shm"
