"""``distnet calibrate``: the file it writes (every key of the schema ``distnet plan`` reads), its network levels
under mpiexec, its one-line errors, the sub-communicators it measures the levels on, and the alpha-beta fit."""

import json
import math

import numpy as np
import pytest

from distnet.scale import collectives

from ..helpers import run_distnet, run_python_mpi

FAST = ["--budget", "0.2"]  # measured seconds per batch size (at least 5 steps)


def sizes_for(grad_bytes):
    """The message sizes calibrate measures: 8 bytes to 4 x the gradient, x4 steps."""
    out, n = [], 8
    while n <= 4 * grad_bytes:
        out.append(n)
        n *= 4
    return out


def check_schema(c, ranks):
    assert c["format"] == "distnet-calibration" and c["version"] == 1
    for key in ("created", "distnet", "config", "command"):
        assert isinstance(c[key], str) and c[key]
    m = c["model"]
    assert isinstance(m["params"], int) and m["params"] > 0
    assert m["grad_bytes"] == 4 * m["params"] and m["dtype"] == "float32"
    assert all(isinstance(name, str) and all(isinstance(s, list) for s in shapes) for name, shapes in m["layers"])
    assert sum(math.prod(s) for _, shapes in m["layers"] for s in shapes) == m["params"]
    mc = c["machine"]
    assert mc["ranks"] == ranks and mc["hosts"] == len(mc["host_names"]) == len(mc["ranks_per_host"]) == 1
    assert sum(mc["ranks_per_host"]) == ranks
    for key in ("cpu", "mpi", "launcher", "python", "numpy"):
        assert isinstance(mc[key], str) and mc[key]
    assert isinstance(mc["cores"], int) and mc["cores"] >= 1
    assert mc["blas_threads"] is None or isinstance(mc["blas_threads"], int)
    assert mc["library"] in ("mpich", "openmpi", "other")
    s = c["sync"]
    assert isinstance(s["strategy"], str)
    for key in ("hidden_fraction", "flat_allreduce_ms", "extra_ms", "extra_ms_per_param"):
        assert s[key] is None or isinstance(s[key], float)
    cc = c["compute"]
    n = len(cc["batches"])
    assert cc["ranks"] == ranks and n >= 1 and all(isinstance(b, int) and b > 0 for b in cc["batches"])
    assert set(cc["phases_ms"]) == {"data", "forward", "backward", "comm", "optimizer"}
    assert set(cc["median_over_ranks_ms"]) == {"data", "forward", "backward"}
    for values in (*cc["phases_ms"].values(), *cc["median_over_ranks_ms"].values(), cc["comm_last_arrival_ms"],
                   cc["steps"]):
        assert len(values) == n
    assert all(v > 0 for k in ("data", "forward", "backward", "optimizer") for v in cc["phases_ms"][k])
    assert all(v >= 0 for v in cc["phases_ms"]["comm"])
    assert all(isinstance(k, int) and k >= 5 for k in cc["steps"])
    assert c["optimizer"]["ms_per_param"] > 0 and isinstance(c["optimizer"]["params_updated"], int)
    assert set(c["network"]) == {"intra", "inter", "world"}
    assert isinstance(c["notes"], list) and all(isinstance(x, str) for x in c["notes"])


@pytest.fixture(scope="module")
def one_rank(spirals_data, tmp_path_factory):
    """One process's calibration of batches 8, 256, 1000 and 4096, the last more than the 4,000 training
    samples hold: (the CompletedProcess, the file written); two tests check it."""
    out = tmp_path_factory.mktemp("one-rank") / "cal.json"
    r = run_distnet(["calibrate", "spirals-mlp", "--data", spirals_data, "--out", out, "--batches",
                     "8,256,1000,4096", *FAST], timeout=60)
    return r, out


def test_one_rank_writes_a_well_formed_file(one_rank):
    r, out = one_rank
    assert r.returncode == 0, r.stderr
    c = json.loads(out.read_text())
    check_schema(c, ranks=1)
    assert c["compute"]["batches"] == [8, 256, 1000]
    backward = c["compute"]["phases_ms"]["backward"]
    assert max(backward[0], backward[1]) < backward[2], backward  # 8 and 256: both ~0.1 ms
    assert c["compute"]["comm_last_arrival_ms"] == [None] * 3
    assert c["network"] == {"intra": None, "inter": None, "world": None}
    assert c["sync"]["hidden_fraction"] is None and c["sync"]["flat_allreduce_ms"] is None
    assert c["optimizer"]["params_updated"] == c["model"]["params"]
    assert c["machine"]["launcher"] == "one process"
    assert any("one rank: compute only" in note for note in c["notes"])
    assert "one rank: compute only" in r.stdout and str(out) in r.stdout
    assert [p.name for p in out.parent.iterdir()] == ["cal.json"]  # no temporary left beside it


@pytest.mark.mpi
@pytest.mark.parametrize("sync", ["bucketed", "auto"])
def test_two_ranks_measure_the_host_and_the_world(spirals_data, tmp_path, sync):
    out = tmp_path / "cal.json"
    r = run_distnet(["calibrate", "spirals-mlp", "--data", spirals_data, "--out", out, "--batches", "8,64", *FAST,
                     "--set", f'comm.sync="{sync}"'], n=2, timeout=90)
    assert r.returncode == 0, r.stderr
    c = json.loads(out.read_text())
    check_schema(c, ranks=2)
    assert c["machine"]["ranks_per_host"] == [2] and c["machine"]["launcher"].startswith("mpiexec")
    net = c["network"]
    assert net["inter"] is None  # one host
    want = sizes_for(c["model"]["grad_bytes"])
    intra, world = net["intra"], net["world"]
    assert intra["ranks"] == 2 and world["ranks"] == 2
    for level in (intra, world):
        assert [n for n, _ in level["points"]] == want
        assert all(t > 0 for _, t in level["points"])
    assert intra["alpha_s"] >= 0 and intra["beta_Bps"] > 0 and intra["rms_rel"] >= 0
    assert len(intra["algorithms"]) == len(want)
    assert "alpha" in r.stdout and "MB/s" in r.stdout and "Gbit/s" in r.stdout
    assert all(v is not None and v >= 0 for v in c["compute"]["comm_last_arrival_ms"])
    s = c["sync"]
    assert s["flat_allreduce_ms"] > 0
    if sync == "bucketed":
        assert s["strategy"] == "bucketed" and 0 <= s["hidden_fraction"] <= 1
        assert 0 <= s["hidden_share_of_allreduce"] <= 1 and len(s["hidden_ms"]) == 2
        assert c["optimizer"]["params_updated"] == c["model"]["params"]
    else:  # auto on one host: shm, which sends no gradient; its sums and fences are its own cost
        assert s["strategy"] == "shm" and s["hidden_fraction"] is None and s["extra_ms"] > 0
        assert any("comm.sync shm" in note for note in c["notes"])
        assert c["optimizer"]["params_updated"] == -(-c["model"]["params"] // 2)


@pytest.mark.mpi
def test_world_split_gives_each_group_its_own_sum():
    script = """
import numpy as np
from distnet.comm import world
w = world()
alone = w.split(w.rank, 0)  # two groups of one
a = np.array([w.rank + 1.0])
alone.allreduce(a)
both = w.split(0, -w.rank)  # one group of two, ranked in reverse
b = np.array([w.rank + 1.0])
both.allreduce(b)
both.barrier()
leader = w.split(None if w.rank else 0)  # rank 1 in no group
row = [w.rank, alone.size, alone.rank, float(a[0]), both.size, both.rank, float(b[0]), both.allgather(w.rank),
       None if leader is None else leader.size]
for sub in (alone, both, leader):
    if sub is not None:
        sub.free()
rows = w.allgather(row)
if w.rank == 0:
    print(rows, flush=True)
"""
    r = run_python_mpi(script, n=2, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str([[0, 1, 0, 1.0, 2, 1, 3.0, [1, 0], 1],
                                         [1, 1, 0, 2.0, 2, 0, 3.0, [1, 0], None]])


def test_a_world_of_one_is_its_own_split():
    from distnet.comm.world import SerialWorld

    w = SerialWorld()
    sub = w.split(0, 0)
    assert sub.size == 1 and sub.rank == 0 and w.split(None) is None
    assert sub.allreduce(np.array([2.0]))[0] == 2.0


@pytest.mark.parametrize("args, words", [
    (["--batches", "8,x"], ["--batches"]),
    (["--batches", "0,8"], ["--batches"]),
    (["--batches=-8"], ["--batches"]),
    (["--batches", "4096"], ["--batches", "4,000"]),  # no batch fits the 4,000 training samples twice
    (["--budget", "0"], ["--budget"]),
    (["--out", "{tmp}/missing/cal.json"], ["--out", "missing"]),
    (["--out", "{tmp}/a-file/cal.json"], ["--out", "a-file"]),
    (["--out", "{tmp}/notes.txt"], ["--out", "notes.txt"]),  # a file distnet did not write
    (["--set", "train.bogus=1"], ["bogus"]),
])
def test_bad_inputs_are_one_line_and_leave_no_file(spirals_data, tmp_path, args, words):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    cmd = ["calibrate", "spirals-mlp", "--data", spirals_data, "--out", tmp_path / "cal.json", *FAST, *args]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = run_distnet(cmd, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distnet: error:"), r.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.mpi
@pytest.mark.parametrize("args, words", [
    (["--batches", "4096"], ["--batches"]),
    (["--data", "{tmp}/nope"], ["distnet data prepare spirals"]),
    (["--out", "{tmp}/missing/cal.json"], ["--out"]),
])
def test_bad_inputs_on_two_ranks_stop_both_with_one_line(spirals_data, tmp_path, args, words):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_distnet(["calibrate", "spirals-mlp", "--data", spirals_data, "--out", tmp_path / "cal.json", *FAST, *args],
                    n=2, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_batch_the_data_cannot_hold_is_left_out_with_a_note(one_rank):
    r, out = one_rank
    assert r.returncode == 0, r.stderr
    c = json.loads(out.read_text())
    assert c["compute"]["batches"] == [8, 256, 1000]  # 4096 left out, the others measured
    assert any("4096" in note for note in c["notes"])


@pytest.mark.parametrize("library", ["mpich", "openmpi", "other"])
@pytest.mark.parametrize("p", [2, 3, 4, 8])
def test_fit_recovers_alpha_and_beta(library, p):
    alpha, beta = 7e-6, 3.2e9
    n, points = 8, []
    while n <= 64 << 20:
        points.append((n, collectives.allreduce(library, p, n, alpha, beta)))
        n *= 4
    a, b, rms = collectives.fit(points, library, p)
    assert a == pytest.approx(alpha, rel=0.01) and b == pytest.approx(beta, rel=0.01)
    assert rms < 1e-6


def test_a_failed_write_is_a_user_error_and_leaves_nothing(tmp_path):
    from distnet.errors import UserError
    from distnet.scale.calibrate import write

    with pytest.raises(UserError, match="cannot write"):
        write({"format": "distnet-calibration"}, tmp_path / "gone" / "cal.json")
    write({"format": "distnet-calibration"}, tmp_path / "cal.json")
    assert [p.name for p in tmp_path.iterdir()] == ["cal.json"]


SYNC = ["--set", 'comm.sync="bucketed"']


def predicted(data, cal):
    """Calibrate fashion-mlp on 2 ranks into CAL and predict global batch 256 on 1 node x 2 ranks from it:
    samples/s."""
    r = run_distnet(["calibrate", "fashion-mlp", "--data", data, "--out", cal, "--batches", "32,128,512",
                     "--budget", "0.5", *SYNC], n=2, timeout=180)
    assert r.returncode == 0, r.stderr
    r = run_distnet(["plan", "fashion-mlp", "--calibration", cal, "--nodes", "1", "--ranks-per-node", "2",
                     "--batch-sizes", "256", "--sync", "bucketed", "--json"], timeout=60)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)["rows"][0]
    assert (row["nodes"], row["ranks"], row["per_rank"]) == (1, 2, 128)
    return row["samples_per_s"]


def measured(data):
    """Global batch 256 on 2 ranks, measured with bench train: samples/s."""
    r = run_distnet(["bench", "train", "fashion-mlp", "--data", data, "--batch-size", 256, "--steps", 60,
                     "--no-baseline", "--json", *SYNC], n=2, timeout=180)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])["samples_per_s"]


@pytest.mark.mpi
def test_plan_predicts_a_two_rank_run_from_a_calibration_made_here(fashion_data, tmp_path):
    """Calibrate fashion-mlp on 2 ranks, predict global batch 256 on 1 node x 2 ranks, measure it with
    bench train. Six repeats on a quiet 2-core VM: predicted / measured 0.93-1.06; with other jobs on the
    machine it reached 1.32. The bound, a factor 1.5 either way, takes that noise; a wrong model (the compute
    of the global batch instead of the per-rank one, the gradient's bytes counted once per rank, no
    optimizer) misses by 2x or more.

    Load that comes and goes (other jobs on the same 2 cores) slows the calibration or the measurement, not
    both alike: the exposed comm wait of a 2-rank step goes from 0.1 to 1.5-10 ms while a rank is descheduled;
    1.8-2.9 was seen at a load average of 3-7, three times in a row. Load only ever slows a run, so the
    fastest of several runs of each is the quiet machine's figure, and only the side that came out slow is
    measured again: a bench run when the ratio is too high, a calibration when it is too low, at most 5 more
    runs (none on a quiet machine). A wrong model misses every time on a quiet machine: the fastest runs are
    the quiet ones, and no run is faster than that."""
    predictions, measures = [predicted(fashion_data, tmp_path / "cal-0.json")], [measured(fashion_data)]
    for again in range(1, 6):
        ratio = max(predictions) / max(measures)
        if 1 / 1.5 < ratio < 1.5:
            break
        if ratio >= 1.5:
            measures.append(measured(fashion_data))
        else:
            predictions.append(predicted(fashion_data, tmp_path / f"cal-{again}.json"))
    assert 1 / 1.5 < max(predictions) / max(measures) < 1.5, (predictions, measures)
