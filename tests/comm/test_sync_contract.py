"""The contract every gradient-sync strategy keeps, run for every registered one (``distnet.comm.sync``'s
registry, so a new strategy is covered without editing this file) and for one defined here, on 1, 2 and 3
ranks: the parameters of ``flat`` after some steps, the step's statistics honoured (the loss sums, the
gradient noise scale's terms, the ranks' stop vote, a non-finite gradient skipped), and resume bitwise.

One mpiexec launch per rank count runs every strategy through ``distnet.training`` (the API's road into the
trainer: the config validated, the strategy built by name). Per strategy and rank count, run A trains
``STEPS`` steps with a checkpoint halfway, a non-finite batch on the last rank at step ``NAN_AT`` (skipped:
``train.nonfinite = "skip"``) and a SIGTERM raised on the last rank after step ``STEPS - 2``: only that rank
votes, so every rank stopping after step ``STEPS - 1`` shows the vote was summed with the gradients. Run B
resumes from A's halfway checkpoint; its final checkpoint (parameters and optimizer state) must be A's.

Lossy strategies (``exact = False``: fp16, bf16, powersgd) follow flat within their documented error:
``Strategy.error`` (the relative rounding of each rank's contribution: 2^-11 for fp16, 2^-8 for bf16)
times ``LOSSY_MARGIN`` relative to how far flat's parameters moved, and powersgd (no per-element bound: a
rank-r projection) within ``PROJECTION_TOLERANCE`` of it. A strategy that keeps state outside the checkpoint
(``resumable = False``: error-feedback residuals, PowerSGD's Q) resumes within the same tolerance of the
uninterrupted run, and two resumes from one checkpoint are bitwise alike (run C, for those only).
"""

import json
import textwrap

import numpy as np
import pytest

from distnet import comm
from distnet import config as C
from distnet.errors import ConfigError

from ..helpers import checkpoint_state, metrics, run_python_mpi

pytestmark = pytest.mark.mpi

STEPS, NAN_AT = 8, 3
RANKS = (1, 2, 3)
# A lossy strategy's parameters may be off flat's by LOSSY_MARGIN x its declared error x the rank count (each
# rank's contribution is rounded; where they cancel, the sum's relative error grows) relative to the distance
# flat's moved from the start: seen here 0.35 (fp16) and up to 2.2 (bf16, 3 ranks) of error x ranks.
LOSSY_MARGIN = 8.0
# ... and one without a per-element bound (error None: powersgd, a rank-r projection): seen here 1e-3
PROJECTION_TOLERANCE = 0.02
# the settings under which each strategy does its work within STEPS steps of a 4,400-parameter model:
# several buckets and row blocks, PowerSGD compressing after 2 plain steps
EXERCISE = {"bucket_mb": 0.01, "split_mb": 0.002, "powersgd_warmup": 2, "powersgd_min_size": 0}

# A strategy of this test's own, registered from outside the package as a plugin would be: the arena summed
# in PIECES non-blocking allreduces once backward is done, with an option key of its own.
PLUGIN = textwrap.dedent('''
    import numpy as np

    from distnet.comm.sync import Sync, register
    from distnet.schema import Key


    class Pieces(Sync):
        name = "pieces"

        def __init__(self, w, model, pieces):
            super().__init__(w, model)
            cuts = np.linspace(0, self.grads.size, pieces + 1).astype(int)
            self.slices = [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]

        def _complete(self):
            for sl in self.slices:
                self._local(sl)  # this rank's squared norm, before the sum (the noise scale's term)
                if self.accum is not None:
                    self.grads[sl] += self.accum[sl]
                if self.w.size > 1:
                    self.reqs.append(self.w.iallreduce(self.grads[sl]))
            self._send_stats()  # the loss sums and the stop votes travel with the last piece


    register("pieces", lambda w, model, opts: Pieces(w, model, opts["pieces_count"]),
             {"pieces_count": Key(int, 3, ge=1)})
''')
PLUGIN_SETTINGS = {"pieces_count": 4}

SCRIPT = textwrap.dedent("""
    import json, os, shutil, signal, sys
    args = json.loads(os.environ["CONTRACT"])
    sys.path.insert(0, args["plugins"])
    import pieces_sync  # registers "pieces"
    from distnet import api, checkpoint, comm
    from distnet.comm.failures import Stop
    from distnet.training.observers import Observer

    w = comm.world()
    N, last = args["steps"], w.size - 1

    class Signal(Observer):  # SIGTERM on the last rank after step AT: its vote travels with the next step
        def __init__(self, at):
            self.at = at
        def on_step(self, run, stats):
            if stats.step == self.at and w.rank == last:
                signal.raise_signal(signal.SIGTERM)

    def run(name, tag, resume=False, signal_at=None):
        out = f"{args['out']}/{w.size}/{name}/{tag}"
        overrides = {"data": {"path": args["data"]}, "comm": dict(args["comm"], sync=name),
                     "checkpoint": {"dir": out + "/ck", "every": N // 2, "resume": resume},
                     "log": {"metrics": out + "/m.jsonl"}}
        try:
            api.train("spirals-mlp", overrides=overrides, sets=args["sets"],
                      observers=[Signal(signal_at)] if signal_at is not None else [])
            return 0
        except Stop as e:
            return e.exit_code

    for name in args["strategies"]:
        os.environ["DISTNET_FAULT"] = f"nan@{last}:{args['nan_at']}"
        stopped = w.allgather(run(name, "a", signal_at=N - 2))
        del os.environ["DISTNET_FAULT"]
        for tag in ("b", "c") if not comm.sync.STRATEGIES[name].resumable else ("b",):
            if w.rank == 0:
                os.makedirs(f"{args['out']}/{w.size}/{name}/{tag}/ck")
                half = checkpoint.checkpoint_path(f"{args['out']}/{w.size}/{name}/a/ck", N // 2)
                shutil.copy(half, f"{args['out']}/{w.size}/{name}/{tag}/ck/")
            w.barrier()
            run(name, tag, resume=True)
        if w.rank == 0:
            with open(f"{args['out']}/{w.size}/{name}/stopped.json", "w") as f:
                json.dump(stopped, f)
    if w.rank == 0:
        print("OK", w.size, flush=True)
""")


def strategies():
    """Every registered strategy, then the one this test registers."""
    return [*comm.sync.STRATEGIES, "pieces"]


@pytest.fixture(scope="module")
def contract(tmp_path_factory, spirals_data):
    """launch(n): the folder where the contract's runs on n ranks left their outputs (one launch per n)."""
    root = tmp_path_factory.mktemp("contract")
    (root / "pieces_sync.py").write_text(PLUGIN)
    done = {}

    def launch(n):
        if n not in done:
            args = dict(plugins=str(root), data=str(spirals_data), out=str(root), steps=STEPS, nan_at=NAN_AT,
                        strategies=strategies(), comm={**EXERCISE, **PLUGIN_SETTINGS},
                        sets=["model.dtype=\"float64\"", "train.batch_size=48", f"train.max_steps={STEPS}",
                              "train.log_every=1", "train.noise_every=1", "train.nonfinite=\"skip\"",
                              "log.quiet=true"])
            r = run_python_mpi(SCRIPT, n=n, timeout=120, env={"CONTRACT": json.dumps(args)})
            done[n] = (r, root / str(n))
        r, folder = done[n]
        assert r.returncode == 0 and r.stdout.startswith(f"OK {n}"), r.stdout + r.stderr
        return folder

    return launch


def promises(name):
    """What strategy ``name`` promises (``exact``, ``error``, ``resumable``); the plugin, registered only in
    the launched processes, promises what a ``Strategy`` does by default: exact and resumable."""
    return comm.sync.STRATEGIES.get(name) or comm.sync.Strategy(name, None, {})


def initial_params():
    """The parameters every contract run starts from (the model built from the seed, as setup builds it)."""
    from distnet import build

    return build.model(C.load("spirals-mlp", sets=['model.dtype="float64"']), (2,)).params_flat


def numbers(lines, key):
    return np.array([float(m[key]) for m in lines])  # "nan" as written for the skipped step's loss


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("name", strategies())
def test_every_strategy_keeps_the_contract(contract, name, n):
    folder = contract(n)
    ours, flat = folder / name, folder / "flat"
    events = metrics(ours / "a" / "m.jsonl")
    took = events[0]["sync"]  # on one rank a strategy may build the plain step (``Strategy.one_rank``)
    assert events[0]["ranks"] == n and (took == name or (n == 1 and promises(name).one_rank is not None)), took
    s = promises(took)
    a, b, ref = (checkpoint_state(ours / "a" / "ck"), checkpoint_state(ours / "b" / "ck"),
                 checkpoint_state(flat / "a" / "ck"))

    # the stop vote: only the last rank was signalled, yet every rank stopped after the next step (exit 3)
    assert json.loads((ours / "stopped.json").read_text()) == [3] * n
    assert [m["step"] for m in events if m["event"] == "stop"] == [STEPS]
    # the non-finite batch on the last rank: that step skipped on every rank, and no other
    assert [m["step"] for m in events if m["event"] == "skip"] == [NAN_AT]
    assert a["step"] == STEPS - 1 and np.isfinite(a["params"]).all()  # the optimizer's steps: all but one

    # the parameters (and optimizer state) of flat; the statistics that travel with the gradients: the loss
    # sums and the noise scale's terms, in every train line
    lines = [m for m in events if m["event"] == "train"]
    ref_lines = [m for m in metrics(flat / "a" / "m.jsonl") if m["event"] == "train"]
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    assert all("noise_scale" in m for m in lines[1:]) and np.isfinite(numbers(lines[1:], "noise_trace")).all()
    moved = np.linalg.norm(ref["params"] - initial_params())
    if s.exact:
        tolerance = 0.0
        for key in ref:
            np.testing.assert_allclose(a[key], ref[key], rtol=1e-9, atol=1e-12, err_msg=key)
        for key in ("loss", "accuracy", "grad_norm", "noise_trace", "noise_grad_sq"):  # as written: 7 digits
            np.testing.assert_allclose(numbers(lines[1:], key), numbers(ref_lines[1:], key), rtol=1e-6, err_msg=key)
    else:
        tolerance = PROJECTION_TOLERANCE if s.error is None else LOSSY_MARGIN * s.error * n
        off = np.linalg.norm(a["params"] - ref["params"]) / moved
        assert off <= tolerance, f"{name} on {n} ranks: {off:.3g} of flat's distance from the start off"
        for key in ("loss", "noise_trace"):
            np.testing.assert_allclose(numbers(lines[1:], key), numbers(ref_lines[1:], key), rtol=tolerance,
                                       err_msg=key)

    # resume from the halfway checkpoint: bitwise the uninterrupted run, optimizer state too; else (state
    # not checkpointed) within the tolerance of it, and the same whenever resumed from that checkpoint
    assert a.keys() == b.keys() and b["step"] == STEPS - 1
    if s.resumable:
        for key in a:
            assert np.array_equal(a[key], b[key]), key
    else:
        off = np.linalg.norm(b["params"] - a["params"]) / moved
        assert off <= tolerance, f"{name} resumed on {n} ranks: {off:.3g} of flat's distance off"
        c = checkpoint_state(ours / "c" / "ck")
        for key in a:
            assert np.array_equal(b[key], c[key]), key


def test_config_takes_a_registered_strategy_and_its_keys():
    """The names and [comm] keys config accepts are the registry's: the plugin's too, once registered."""
    from distnet.comm.sync import STRATEGIES, register
    from distnet.schema import Key

    cfg = C.defaults()
    assert set(C.SCHEMA["comm"]) >= set(comm.sync.OPTIONS) and "sync" in C.SCHEMA["comm"]
    assert C.key_spec("comm", "sync").names() == ("auto", *STRATEGIES)
    with pytest.raises(ConfigError, match="config key comm.sync must be one of auto, flat"):
        C.validate(C.merge(C.load("spirals-mlp"), {"comm": {"sync": "halves"}}, "test"))
    try:
        register("halves", lambda w, model, opts: comm.sync.Flat(w, model), {"halves_depth": Key(int, 2, ge=1)})
        assert C.defaults()["comm"]["halves_depth"] == 2 and "halves_depth" not in cfg["comm"]
        good = C.merge(C.load("spirals-mlp"), {"comm": {"sync": "halves", "halves_depth": 5}}, "test")
        assert C.validate(good)["comm"]["halves_depth"] == 5
        with pytest.raises(ConfigError, match="config key comm.halves_depth must be an integer >= 1, got 0"):
            C.validate(C.merge(C.load("spirals-mlp"), {"comm": {"halves_depth": 0}}, "test"))
        with pytest.raises(ValueError, match="registered already"):
            register("halves", None)
        with pytest.raises(ValueError, match="declares comm.bucket_mb"):
            register("other", None, {"bucket_mb": Key(int, 1)})
    finally:
        STRATEGIES.pop("halves", None)
        comm.sync.OPTIONS.pop("halves_depth", None)
