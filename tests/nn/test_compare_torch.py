"""launch/compare_torch.py: the clear exit without PyTorch (CI has no torch), distnet's metric windows, and a
tiny real run: the whole comparison when torch is importable, else its distnet half (never skipped)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from ..helpers import ROOT

SCRIPT = ROOT / "launch" / "compare_torch.py"


def load_script():
    spec = importlib.util.spec_from_file_location("compare_torch", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # the module imports no torch at the top
    return mod


def torch_importable():
    return importlib.util.find_spec("torch") is not None


def test_exits_2_with_one_line_when_torch_is_missing():
    block = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['compare_torch.py', '--models', 'mlp']; "
             f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "PyTorch is not installed" in lines[0]
    assert "pip install -e '.[torch]'" in lines[0]


def test_bad_arguments_exit_2():
    r = subprocess.run([sys.executable, str(SCRIPT), "--ranks", "3", "--batch", "128"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "divisible" in r.stderr


def test_distnet_windows_leave_out_start_up_and_the_epoch_end():
    mod = load_script()
    # log_every 10, warm-up 10, 2 segments of 20 steps, batch 100; the epoch ends at step 25.
    lines = [(10, 0, 1.0), (20, 0, 1000.0), (25, 0, 500.0), (30, 1, 1.0), (40, 1, 2000.0), (50, 1, 4000.0)]
    records = [{"event": "train", "step": s, "epoch": e, "samples_per_s": sps} for s, e, sps in lines]
    records.append({"event": "summary", "step": 50})
    rates = mod.segment_rates(records, batch=100, warmup=10, steps=20)
    # segment 1: (10,20] 1 s + (20,25] 1 s; (25,30] holds the evaluation. Segment 2: 0.5 s + 0.25 s.
    assert rates == pytest.approx([1500 / 2.0, 2000 / 0.75])


@pytest.mark.mpi
def test_tiny_comparison(fashion_data, tmp_path, capsys):
    mod = load_script()
    if not torch_importable():  # CI: run the distnet half, which must keep up with distnet's metrics
        rates = mod.distnet_rates("fashion-mlp", fashion_data, 2, 128, 2, 3, 2, tmp_path)
        assert len(rates) == 2 and all(r > 0 for r in rates)
        return
    cmd = [sys.executable, str(SCRIPT), "--data", str(fashion_data), "--models", "mlp", "--ranks", "2",
           "--mlp-warmup", "2", "--mlp-steps", "3", "--repeats", "1", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["settings"]["ranks"] == 2 and out["settings"]["global_batch"] == 128
    rows = out["rows"]
    assert [(x["procs"], x["batch"], x["torch_mode"]) for x in rows] == [
        (1, 64, "eager"), (1, 128, "eager"), (2, 128, "DDP gloo")]
    for x in rows:
        assert x["distnet"]["median"] > 0 and x["torch"]["median"] > 0
        assert x["ratio"] == pytest.approx(x["distnet"]["median"] / x["torch"]["median"])
    mod.print_table(rows, mod.parse_args(["--repeats", "1"]))
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["model", "setting", "distnet", "samples/s", "torch", "mode", "torch", "samples/s",
                                "distnet/torch"]
    assert len(table) == 2 + len(rows) + 1 and all(t.startswith("mlp") for t in table[2:5])


def test_torch_replicas_of_the_fashion_presets_have_distnets_parameter_count():
    """The PyTorch side builds every layer type the Fashion presets use (dropout and batch norm: fashion-cnn)."""
    from distnet import build
    from distnet import config as C

    mod = load_script()
    for preset in ("fashion-mlp", "fashion-cnn"):
        layers = C.load(preset)["model"]["layers"]
        n = build.model(C.load(preset), (1, 28, 28)).num_params
        if not torch_importable():  # CI has no torch: the layer list must at least be one it knows
            known = {"dense", "conv2d", "maxpool2d", "batchnorm", "relu", "flatten", "dropout"}
            assert {spec["type"] for spec in layers} <= known
            continue
        assert sum(p.numel() for p in mod.torch_model(layers, (1, 28, 28)).parameters()) == n
