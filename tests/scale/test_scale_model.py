"""The step-time model: alpha-beta costs against hand-computed values, the compute interpolation, the parts of
a predicted step, and distnet plan's output and bad inputs (in-process, on a calibration made here)."""

import json
import math

import pytest

from distnet import build
from distnet import config as C
from distnet.cli import main
from distnet.scale import collectives as K
from distnet.scale import model as M


def test_ring_recursive_doubling_and_rabenseifner_by_hand():
    a, beta = 1e-5, 1e9
    # ring, 4 ranks, 1 MB: 2*3 alpha + 2*3/4 * 1e6 / 1e9
    assert K.ring(4, 1e6, a, beta) == pytest.approx(6e-5 + 1.5e-3)
    # recursive doubling, 4 ranks, 1 kB: 2 rounds of (alpha + n/beta)
    assert K.recursive_doubling(4, 1e3, a, beta) == pytest.approx(2 * (1e-5 + 1e-6))
    assert K.recursive_doubling(5, 1e3, a, beta) == pytest.approx(3 * (1e-5 + 1e-6))
    # Rabenseifner, 4 ranks: 2 log2(4) alpha + 2*3/4 n/beta
    assert K.rabenseifner(4, 1e6, a, beta) == pytest.approx(4e-5 + 1.5e-3)
    # 3 ranks: over 2 (2 alpha + n/beta) plus the hand-off and return of the third rank's vector, which load
    # the partner's link with n more bytes (2 n in all) in two more rounds of latency
    assert K.rabenseifner(3, 1e6, a, beta) == pytest.approx(2e-5 + 1e-3 + 2e-5 + 1e-3)
    assert K.reduce_scatter(4, 1e6, a, beta) == pytest.approx(2e-5 + 0.75e-3)
    for f in (K.ring, K.recursive_doubling, K.rabenseifner, K.reduce_scatter):
        assert f(1, 1e6, a, beta) == 0.0


def test_the_algorithm_each_library_runs():
    assert K.algorithm("mpich", 2048, 4) == "recursive doubling"
    assert K.algorithm("mpich", 2052, 4) == "Rabenseifner"
    assert K.algorithm("openmpi", 5000, 4) == "recursive doubling"
    assert K.algorithm("openmpi", 1e6, 4) == "ring"
    assert K.algorithm("mpich", 1e6, 1) == "none"


def test_hierarchical_allreduce_sends_one_gradient_between_hosts_whatever_the_ranks_per_host():
    intra, inter = (1e-6, 1e10), (5e-5, 1.25e8)
    n = 1.88e6
    one = K.hierarchical("mpich", 2, 1, n, intra, inter)
    two = K.hierarchical("mpich", 2, 2, n, intra, inter)
    assert one == pytest.approx(K.rabenseifner(2, n, *inter))
    assert two == pytest.approx(one + K.rabenseifner(2, n, *intra))  # the host's stages, at memory speed
    # Open MPI's flat ring: 4 ranks, every round at the link's speed
    assert K.hierarchical("openmpi", 2, 2, n, intra, inter) == pytest.approx(K.ring(4, n, *inter))


def test_fit_recovers_alpha_and_beta():
    alpha, beta = 20e-6, 3e8
    pts = [(n, K.allreduce("mpich", 3, n, alpha, beta)) for n in (8, 128, 2048, 32768, 524288, 4 << 20)]
    a, b, rms = K.fit(pts, "mpich", 3)
    assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(beta, rel=1e-6) and rms < 1e-9
    with pytest.raises(ValueError):
        K.fit([(8, 1e-5)], "mpich", 2)


def test_interpolate_log_log_between_points_and_per_sample_past_them():
    xs, ys = [8, 32, 128], [1.0, 2.0, 6.0]
    assert [M.interpolate(xs, ys, x) for x in xs] == pytest.approx(ys)
    assert M.interpolate(xs, ys, 16) == pytest.approx(math.sqrt(2.0))  # halfway in log-log between 1 and 2
    assert M.interpolate(xs, ys, 256) == pytest.approx(6.0 + 4 / 96 * 128)  # the last segment's ms per sample
    assert M.interpolate(xs, ys, 4) == pytest.approx(math.sqrt(0.5))  # the first segment's power law, (x/8)^(1/2)


def _cal(path, params, grad_bytes, layers=None, **over):
    cal = {"format": M.FORMAT, "version": 1,
           "model": {"params": params, "grad_bytes": grad_bytes, "layers": layers},
           "machine": {"hosts": 2, "ranks": 2, "library": "mpich", "cpu": "test", "blas_threads": 1},
           "sync": {"strategy": "bucketed", "hidden_fraction": 0.25},
           "compute": {"ranks": 2, "batches": [8, 32, 128],
                       "phases_ms": {"data": [0.01, 0.02, 0.04], "forward": [0.1, 0.2, 0.4],
                                     "backward": [0.2, 0.4, 0.8]}},
           "optimizer": {"ms_per_param": 1e-6},
           "network": {"intra": {"ranks": 2, "alpha_s": 2e-6, "beta_Bps": 4e9, "rms_rel": 0.1},
                       "inter": {"ranks": 2, "alpha_s": 5e-5, "beta_Bps": 1.25e8, "rms_rel": 0.05}, "world": None}}
    for key, value in over.items():
        cal[key] = value
    path.write_text(json.dumps(cal))
    return path


def test_a_predicted_step_is_its_parts(tmp_path):
    sm = M.StepModel([M.load(_cal(tmp_path / "c.json", 1000, 4_000_000))])
    r = sm.step(2, 1, 64)  # 32 per rank: compute 0.02 + 0.2 + 0.4
    assert r["compute_ms"] == pytest.approx(0.62)
    comm = 1e3 * K.rabenseifner(2, 4e6, 5e-5, 1.25e8)
    assert r["comm_ms"] == pytest.approx(comm)
    stats = 1e3 * K.recursive_doubling(2, M.STATS_BYTES, 5e-5, 1.25e8)
    assert r["exposed_ms"] == pytest.approx(comm + stats)  # no wait measured: nothing is taken as hidden
    assert r["optimizer_ms"] == pytest.approx(1e-3)
    assert r["step_ms"] == pytest.approx(0.62 + comm + stats + 1e-3)
    assert r["samples_per_s"] == pytest.approx(64 / r["step_ms"] * 1e3)
    assert sm.step(2, 1, 63) is None  # not a multiple of the ranks
    # a faster link: the between-hosts beta replaced, the calibrated latency kept
    fast = M.StepModel([M.load(tmp_path / "c.json")], link=M.parse_link("10gbit"))
    assert fast.step(2, 1, 64)["comm_ms"] == pytest.approx(1e3 * K.rabenseifner(2, 4e6, 5e-5, 1.25e9))
    zero = M.StepModel([M.load(tmp_path / "c.json")], sync="zero").step(4, 1, 64)
    assert zero["optimizer_ms"] == pytest.approx(250 * 1e-6)  # a quarter of the parameters each


def test_the_exposed_wait_starts_from_the_calibrated_one(tmp_path):
    """Calibrated on 2 hosts x 1 with waits of 1, 2, 3 ms at per-rank batches 8, 32, 128: the same setting
    predicts those waits; 4 hosts add what their allreduce takes beyond 2 hosts'."""
    path = _cal(tmp_path / "c.json", 1000, 4_000_000)
    cal = json.loads(path.read_text())
    cal["compute"]["phases_ms"]["comm"] = [1.0, 2.0, 3.0]
    cal["machine"]["ranks_per_host"] = [1, 1]
    path.write_text(json.dumps(cal))
    sm = M.StepModel([M.load(path)])
    assert sm.step(2, 1, 64)["exposed_ms"] == pytest.approx(2.0)
    assert sm.step(2, 1, 32)["exposed_ms"] == pytest.approx(1.5)  # halfway in log b between 8 and 32
    assert sm.step(2, 1, 1024)["exposed_ms"] == pytest.approx(3.0)  # past the range: the last wait
    inter = (5e-5, 1.25e8)
    more = 1e3 * (K.rabenseifner(4, 4e6, *inter) - K.rabenseifner(2, 4e6, *inter)
                  + K.recursive_doubling(4, M.STATS_BYTES, *inter) - K.recursive_doubling(2, M.STATS_BYTES, *inter))
    assert sm.step(4, 1, 128)["exposed_ms"] == pytest.approx(2.0 + more)
    # another strategy than the calibrated one: its collectives are taken as wholly exposed
    flat = M.StepModel([M.load(path)], sync="flat").step(2, 1, 64)
    assert flat["exposed_ms"] == pytest.approx(flat["comm_ms"] + 1e3 * K.recursive_doubling(2, M.STATS_BYTES, *inter))


def test_parse_link_and_latency():
    assert M.parse_link("100mbit") == pytest.approx(12.5e6)
    assert M.parse_link("25Gbit") == pytest.approx(25e9 / 8)
    assert M.parse_latency("30us") == pytest.approx(30e-6) and M.parse_latency("0.5ms") == pytest.approx(5e-4)
    for bad in ("10G", "fast", "0gbit", "-1gbit"):
        with pytest.raises(Exception, match="100mbit, 10gbit, 25gbit"):
            M.parse_link(bad)


@pytest.fixture(scope="module")
def mlp_cal(tmp_path_factory):
    model = build.model(C.load("fashion-mlp"), (784,))
    path = tmp_path_factory.mktemp("cal") / "mlp.json"
    return _cal(path, model.num_params, model.grads_flat.nbytes, M.signature(model))


def test_plan_prints_every_point_and_its_assumptions(mlp_cal, tmp_path, capsys):
    code = main(["plan", "fashion-mlp", "--calibration", str(mlp_cal), "--nodes", "1,2,4", "--ranks-per-node", "2",
                 "--batch-sizes", "128,1024,1002", "--link", "10gbit"])
    out = capsys.readouterr().out
    assert code == 0
    assert "assumptions:" in out and "10 Gbit/s" in out and "Rabenseifner" in out
    assert "left out 2 point(s)" in out  # 1002 on 4 and on 8 ranks
    lines = [t.split() for t in out.splitlines() if t.strip() and t.split()[0].isdigit()]
    assert {(int(t[0]), int(t[2])) for t in lines} == {(1, 128), (1, 1024), (1, 1002), (2, 128), (2, 1024),
                                                       (4, 128), (4, 1024)}


def test_plan_json_and_figure(mlp_cal, tmp_path, capsys):
    png = tmp_path / "plan.png"
    assert main(["plan", "fashion-mlp", "--calibration", str(mlp_cal), "--nodes", "1,2,...,8", "--batch-sizes",
                 "256,4096", "--json", "--out", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["nodes"] for r in out["rows"]] == [1, 1, 2, 2, 4, 4, 8, 8]
    assert all(r["step_ms"] == pytest.approx(r["compute_ms"] + r["exposed_ms"] + r["optimizer_ms"] + r["extra_ms"])
               for r in out["rows"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, says", [
    (["--nodes", "0,2"], "--nodes"),
    (["--nodes", "a,b"], "--nodes"),
    (["--ranks-per-node", "x"], "--ranks-per-node"),
    (["--ranks-per-node", "-2"], "--ranks-per-node"),
    (["--link", "10G"], "100mbit, 10gbit, 25gbit"),
    (["--sync", "powersgd"], "not modelled"),
    (["--out", "plan.jpg"], "PNG"),
])
def test_plan_bad_options(mlp_cal, args, says, capsys):
    assert main(["plan", "fashion-mlp", "--calibration", str(mlp_cal), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


def test_plan_refuses_a_calibration_of_another_model_or_not_one(mlp_cal, tmp_path, capsys):
    assert main(["plan", "fashion-cnn", "--calibration", str(mlp_cal)]) == 2
    assert "parameters" in capsys.readouterr().err
    other = json.loads(mlp_cal.read_text())
    first = next(i for i, (_, shapes) in enumerate(other["model"]["layers"]) if shapes)
    w = other["model"]["layers"][first][1][0]
    other["model"]["layers"][first][1][0] = [w[1], w[0]]  # same count, another shape
    (tmp_path / "o.json").write_text(json.dumps(other))
    assert main(["plan", "fashion-mlp", "--calibration", str(tmp_path / "o.json")]) == 2
    assert f"at layer {first}" in capsys.readouterr().err
    (tmp_path / "n.json").write_text('{"event": "start"}')
    for bad in (tmp_path / "n.json", mlp_cal.parent / "README.md", tmp_path / "missing.json"):
        if bad.name == "README.md":
            bad.write_text("# not JSON")
        assert main(["plan", "fashion-mlp", "--calibration", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "distnet calibrate" in err[0]


def test_plan_needs_the_levels_it_uses(mlp_cal, tmp_path, capsys):
    one_host = json.loads(mlp_cal.read_text())
    one_host["network"]["inter"] = None
    (tmp_path / "h.json").write_text(json.dumps(one_host))
    assert main(["plan", "fashion-mlp", "--calibration", str(tmp_path / "h.json"), "--nodes", "1,2"]) == 2
    assert "between hosts" in capsys.readouterr().err
    # --link stands in for the missing level, at an assumed latency the assumptions name
    assert main(["plan", "fashion-mlp", "--calibration", str(tmp_path / "h.json"), "--nodes", "1,2",
                 "--link", "100mbit"]) == 0
    assert "assumed" in capsys.readouterr().out
    # another calibration fills it in
    assert main(["plan", "fashion-mlp", "--calibration", str(tmp_path / "h.json"), "--calibration", str(mlp_cal),
                 "--nodes", "1,2"]) == 0


class _Steps:
    """A sweep's steps to target: S = S_min (1 + B_crit / B)."""

    def __init__(self, s_min, b_crit):
        from distnet.sweep.fit import Fit

        self.fit = Fit(s_min=s_min, e_min=s_min * b_crit, b_crit=b_crit, rms_rel=0.0, n=5)
        self.batches, self.steps = [64], [self.fit.steps(64)]

    def __call__(self, b):
        return self.fit.steps(b)

    def perfect(self, b):
        return self.steps[0] * 64 / b


def _limit(tmp_path, link, b_crit, latency=None):
    from distnet.scale import plan as PL

    sm = M.StepModel([M.load(_cal(tmp_path / "c.json", 235_146, 940_584))], link=M.parse_link(link),
                     latency=latency)
    steps = _Steps(100, b_crit)
    rows, _ = PL.predict(sm, [1, 2, 4, 8, 16, 32, 64], 1, [64 * 2 ** k for k in range(12)], steps)
    return PL.scaling_limit(sm, rows, 1, steps)


def test_why_more_nodes_stop_paying(tmp_path):
    # a slow link and a large critical batch: the network ends scaling
    nodes, why, gain = _limit(tmp_path, "100mbit", 1e6)
    assert nodes is not None and why.startswith("the network") and gain < 1.25
    # a fast, low-latency link and a small critical batch: past B_crit a bigger batch buys no steps
    nodes, why, gain = _limit(tmp_path, "400gbit", 256, latency=1e-7)
    assert nodes is not None and why.startswith("the critical batch")
    # the same link at a cluster's usual latency: small per-rank batches wait on it as well
    nodes, why, gain = _limit(tmp_path, "400gbit", 256, latency=50e-6)
    assert why.startswith("both")


def test_a_link_what_if_keeps_the_calibrations_own_setting(tmp_path):
    """--link replaces the bandwidth between hosts in the plan, not in the setting the calibration measured
    its waits on: at 10x slower links the same 2 hosts wait 10x the allreduce's bandwidth part more."""
    path = _cal(tmp_path / "c.json", 1000, 4_000_000)
    cal = json.loads(path.read_text())
    cal["compute"]["phases_ms"]["comm"] = [1.0, 2.0, 3.0]
    cal["machine"]["ranks_per_host"] = [1, 1]
    path.write_text(json.dumps(cal))
    slow = M.StepModel([M.load(path)], link=1.25e7).step(2, 1, 64)
    assert slow["exposed_ms"] == pytest.approx(2.0 + 1e3 * (4e6 / 1.25e7 - 4e6 / 1.25e8), rel=1e-3)


def _sweep(folder, reached):
    """A sweep folder of fashion-mlp whose points at batches 64, 256, 1024 reached the target in the steps
    ``reached`` gives (None: not run), each point's metrics written as distnet train writes them."""
    from distnet.sweep import plan as SP

    points = [SP.Point(i, SP.point_name(b, 1.0, 0), b, 1.0, 0.001, 0) for i, b in enumerate((64, 256, 1024))]
    plan = SP.Plan(config="fashion-mlp", ranks=1, lr_rule="sqrt", base_batch=128, base_lr=0.002,
                   target="accuracy=0.88", split="val", epochs=5, resolution=0.03, full_curves=False, points=points)
    SP.save(folder, plan, C.load("fashion-mlp"))
    for p, steps in zip(points, reached):
        if steps is None:
            continue
        (folder / p.name).mkdir()
        lines = [{"event": "start", "step": 0, "time": 0.0, "global_batch": p.batch,
                  "steps_per_epoch": 60000 // p.batch},
                 {"event": "eval", "step": steps, "time": 1.0, "split": "val", "loss": 0.3, "accuracy": 0.885},
                 {"event": "summary", "step": steps, "time": 1.1}]
        (folder / p.name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_plan_with_a_sweep_gives_time_to_target(mlp_cal, tmp_path, capsys):
    sweep = _sweep(tmp_path / "sw", [1000, 300, 150])
    assert main(["plan", "fashion-mlp", "--calibration", str(mlp_cal), "--sweep", str(sweep), "--nodes", "1,2,4",
                 "--batch-sizes", "64,256,512,1024,4096", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by = {(r["nodes"], r["batch"]): r for r in out["rows"]}
    assert by[1, 256]["steps"] == pytest.approx(300)  # a measured batch: its own steps
    assert 150 < by[1, 512]["steps"] < 300  # between two measured ones
    assert by[1, 4096]["steps"] == pytest.approx(out["fit"]["s_min"] * (1 + out["fit"]["b_crit"] / 4096))
    assert by[2, 256]["time_s"] == pytest.approx(300 * by[2, 256]["step_ms"] / 1e3)
    assert by[2, 256]["node_hours"] == pytest.approx(2 * by[2, 256]["time_s"] / 3600)
    assert out["fastest"]["time_s"] == min(r["time_s"] for r in out["rows"])
    assert out["cheapest"]["node_hours"] == min(r["node_hours"] for r in out["rows"])


def test_plan_refuses_a_sweep_it_cannot_fit(mlp_cal, tmp_path, capsys):
    sweep = _sweep(tmp_path / "sw", [1000, None, None])
    assert main(["plan", "fashion-mlp", "--calibration", str(mlp_cal), "--sweep", str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 batch size(s) that reached" in err[0] and "at least 2" in err[0]
    assert main(["plan", "fashion-mlp", "--calibration", str(mlp_cal), "--sweep", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a sweep folder" in err[0]


def test_plan_json_is_json_when_the_critical_batch_is_infinite(mlp_cal, tmp_path, capsys):
    """Perfect scaling over every batch fitted gives B_crit = inf, which JSON cannot hold: it is null."""
    sweep = _sweep(tmp_path / "sw", [1600, 400, 100])  # steps x batch the same: perfect scaling
    assert main(["plan", "fashion-mlp", "--calibration", str(mlp_cal), "--sweep", str(sweep), "--nodes", "1,2",
                 "--json"]) == 0
    def no_constants(name):
        raise AssertionError(f"not JSON: {name}")

    out = json.loads(capsys.readouterr().out, parse_constant=no_constants)  # Python would take Infinity
    assert out["fit"]["b_crit"] is None and out["fit"]["s_min"] == 0
