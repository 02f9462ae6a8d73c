"""ZeRO-1 (comm.sync = "zero", and "shm" through shared memory on one host): the replicated optimizer's
parameters (bitwise where the sums are), resumable on any rank count, optimizer state per rank / P.

The trainings run through ``distnet.train`` (what ``distnet train`` runs), each in a folder of its own, all
those of one rank count in one mpiexec launch with this module's other scripts (``launched``: a launch is
most of a short run's cost)."""

import json
import textwrap

import numpy as np
import pytest

from distnet.comm.sync.zero import parts

from ..helpers import checkpoint_state as state
from ..helpers import metrics

pytestmark = pytest.mark.mpi

# float64 at batch 96 (42 steps an epoch on spirals); the replicated reference is the bucketed allreduce
# (comm.sync = "auto" would take shm on this host: a sharded optimizer itself)
F64 = ["model.dtype=\"float64\"", "train.batch_size=96", "train.epochs=1", "train.log_every=1"]
REPLICATED = "comm.sync=\"bucketed\""
# Steps of a comparison: past Adam's first steps and momentum's first buffer, every step of which a wrong
# shard (offset, size, state kept across steps) would already change the parameters.
STEPS = 10
# the optimizer cases: name -> (rank count, settings)
CASES = {"adam-2": (2, []), "adam-3": (3, []),
         "momentum-wd-3": (3, ["optimizer.name=\"momentum\"", "optimizer.weight_decay=0.01"]),
         "accumulate-2": (2, ["train.accumulate=2"])}
SYNCS = {"rep": REPLICATED, "zero": "comm.sync=\"zero\"", "shm": "comm.sync=\"shm\""}
CLIP = "train.clip_grad_norm=0.05"
RESUME_STEPS = 12  # the uninterrupted run's; the interrupted one stops halfway, mid-epoch, and resumes on 3 ranks
RESUMES = [("zero", "zero"), ("shm", "zero"), ("zero", "shm")]


def planned(n):
    """The trainings on n ranks: (name, settings, resume from this launch's or an earlier one's run, env)."""
    runs = []
    for case, (ranks, sets) in CASES.items():
        if ranks == n:
            runs += [(f"{sync}-{case}", [*F64, *sets, f"train.max_steps={STEPS}", how], None, {})
                     for sync, how in SYNCS.items()]
    if n == 2:
        runs += [(f"clip-{sync}", [*F64, CLIP, f"train.max_steps={STEPS}", SYNCS[sync]], None, {})
                 for sync in ("rep", "zero")]
        resume = [*F64, "train.epochs=2"]
        runs.append(("resume-ref", [*resume, f"train.max_steps={RESUME_STEPS}", SYNCS["zero"]], None, {}))
        runs += [(f"half-{first}", [*resume, f"train.max_steps={RESUME_STEPS // 2}", SYNCS[first]], None, {})
                 for first in sorted({first for first, _ in RESUMES})]
        # the step after the skipped one is where a missing fence would let a rank write a gradient too soon
        runs.append(("skip", ["train.epochs=1", "train.log_every=1", "train.max_steps=6", "train.nonfinite=\"skip\"",
                              SYNCS["shm"]], None, {"DISTNET_FAULT": "nan@0:2"}))
        runs.append(("auto", ["train.max_steps=2", "train.log_every=1"], None, {}))  # comm.sync = "auto"
    if n == 3:
        runs += [(f"resumed-{first}-{then}", [*F64, "train.epochs=2", f"train.max_steps={RESUME_STEPS}", SYNCS[then]],
                  f"half-{first}", {}) for first, then in RESUMES]
    return runs


TRAIN = textwrap.dedent("""
    import json, os, shutil
    from distnet import api, comm
    from distnet.comm.failures import Stop
    from distnet.errors import UserError
    args = json.loads(os.environ["ZERO_RUNS"])
    w = comm.world()
    def failed(out, why):
        if w.rank == 0:
            os.makedirs(out, exist_ok=True)
            with open(out + "/error.txt", "w") as f:
                f.write(why)

    for name, sets, resume_from, env in args["runs"]:
        out = os.path.join(args["out"], name)
        if resume_from:  # a copy of the checkpoints of an earlier training (every rank sees the same files)
            source = os.path.join(args["out"], resume_from, "ck")
            if not os.path.isdir(source):
                failed(out, f"nothing to resume from: {source} is missing")
                continue
            if w.rank == 0:
                shutil.copytree(source, os.path.join(out, "ck"))
            w.barrier()
        os.environ.pop("DISTNET_FAULT", None)
        os.environ.update(env)
        overrides = {"data": {"path": args["data"]}, "log": {"metrics": out + "/m.jsonl", "quiet": True},
                     "checkpoint": {"dir": out + "/ck", "resume": bool(resume_from)}}
        try:
            api.train("spirals-mlp", overrides=overrides, sets=sets)
        except (UserError, Stop) as e:  # raised on every rank alike: the next training can run
            failed(out, f"{type(e).__name__}: {e}")
    if w.rank == 0:
        print("OK", w.size, flush=True)
""")


@pytest.fixture(scope="module")
def launched(launch_cases, tmp_path_factory, spirals_data):
    """launched(n): {key: Case} of the one launch on n ranks (its first use runs it): this module's scripts, then
    the trainings of ``planned(n)``, each into a folder of ``launched.root``."""
    root = tmp_path_factory.mktemp("zero")
    done = {}

    def launch(n):
        if n == 3:
            launch(2)  # the 3-rank trainings resume checkpoints of 2-rank ones
        if n not in done:
            args = dict(out=str(root), data=str(spirals_data), runs=planned(n))
            scripts = {"memory": MEMORY, **({"shared": SHARED} if n == 2 else {}), "trainings": TRAIN}
            done[n] = launch_cases(scripts, n=n, timeout=180, env={"ZERO_RUNS": json.dumps(args)})
        return done[n]

    launch.root = root
    return launch


@pytest.fixture(scope="module")
def trainings(launched):
    """run(name): the folder of training ``name`` of ``planned``, asserted to have finished."""
    def run(name):
        n = next(n for n in (2, 3) if name in [p[0] for p in planned(n)])
        launched(n)["trainings"].check(f"OK {n}")
        folder = launched.root / name
        assert not (folder / "error.txt").exists(), (folder / "error.txt").read_text()
        return folder

    return run


def test_parts_are_consecutive_and_uneven():
    assert parts(7, 3) == [3, 2, 2] and parts(2, 3) == [1, 1, 0] and sum(parts(235146, 3)) == 235146


@pytest.mark.parametrize("sync", ["zero", "shm"])
@pytest.mark.parametrize("case", CASES)
def test_sharding_matches_the_replicated_optimizer(trainings, case, sync):
    n = CASES[case][0]
    oa, ob = trainings(f"rep-{case}"), trainings(f"{sync}-{case}")
    ma, mb = metrics(oa / "m.jsonl"), metrics(ob / "m.jsonl")
    assert (ma[0]["sync"], mb[0]["sync"], ma[0]["ranks"]) == ("bucketed", sync, n)
    rep, zero = state(oa / "ck"), state(ob / "ck")
    assert rep["step"] == STEPS
    assert rep.keys() == zero.keys() and len(rep) >= 3  # params, step and the momentum/Adam buffers
    la, lb = ([m["loss"] for m in ms if m["event"] == "train"] for ms in (ma, mb))
    assert len(la) == STEPS
    if sync == "shm" and n > 2:  # shm sums in rank order, MPI's allreduce maybe not: equal to rounding
        for key in rep:
            np.testing.assert_allclose(zero[key], rep[key], rtol=1e-9, atol=1e-15, err_msg=key)
        np.testing.assert_allclose(lb, la, rtol=1e-9)
        return
    for key in rep:
        assert np.array_equal(rep[key], zero[key]), key  # the gathered state is the replicated layout
    assert la == lb


def test_zero_with_clipping_follows_the_replicated_run(trainings):
    oa, ob = trainings("clip-rep"), trainings("clip-zero")
    assert [metrics(o / "m.jsonl")[0]["sync"] for o in (oa, ob)] == ["bucketed", "zero"]
    # the global norm is a sum of shard norms (rounded differently), so equal to rounding, not bitwise
    np.testing.assert_allclose(state(ob / "ck")["params"], state(oa / "ck")["params"], rtol=1e-9, atol=1e-12)
    norms = [[m["grad_norm"] for m in metrics(o / "m.jsonl") if m["event"] == "train"] for o in (oa, ob)]
    assert len(norms[0]) == STEPS and all(g > 0.05 for g in norms[0][:3])  # the clip was active
    np.testing.assert_allclose(norms[1], norms[0], rtol=1e-9)


@pytest.mark.parametrize("first,then", RESUMES)
def test_resume_a_sharded_run_on_another_rank_count(trainings, first, then):
    full_run, half, o = trainings("resume-ref"), trainings(f"half-{first}"), trainings(f"resumed-{first}-{then}")
    assert state(half / "ck")["step"] == RESUME_STEPS // 2
    starts = [m for m in metrics(o / "m.jsonl") if m["event"] == "start"]
    assert [(m["ranks"], m["sync"], m["step"]) for m in starts] == [(3, then, RESUME_STEPS // 2)], starts
    resumed, full = state(o / "ck"), state(full_run / "ck")
    assert resumed["step"] == full["step"] == RESUME_STEPS
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
def test_optimizer_state_per_rank_is_divided_by_the_rank_count(launched, n):
    launched(n)["memory"].check(f"OK {n}")


def test_shm_survives_a_skipped_step(trainings):
    """A skipped update still ends the step with a fence: no rank writes its next gradient while another
    still sums from it (the run finishes with the same replicas)."""
    out = trainings("skip")
    lines = metrics(out / "m.jsonl")
    assert lines[0]["sync"] == "shm" and lines[-1]["event"] == "summary"
    assert [m["step"] for m in lines if m["event"] == "skip"] == [2]
    assert [m["step"] for m in lines if m["event"] == "train"] == list(range(1, 7))  # steps on after the skip


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


def test_shm_ranks_share_one_parameter_arena(launched):
    launched(2)["shared"].check("OK 2")


def test_auto_takes_shm_on_one_host_with_room_else_bucketed(tmp_path, trainings):
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
    assert metrics(trainings("auto") / "m.jsonl")[0]["sync"] == "shm"
