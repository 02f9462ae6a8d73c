"""``distnet bench compute``: where a model's compute time goes, layer by layer, against the machine's peak.

Each layer's forward and backward are timed inside a real forward/backward pass of the model (so caches
and scratch buffers behave as in training), on one BLAS thread (the per-rank setting; set in-process with
``distnet.blas.set_blas_threads``). Achieved GFLOP/s use the layers' ``flops``: forward = ``flops x batch``,
backward = twice that (weight and input gradients), less the first layer's input gradient, which training
skips (as in ``bench step``). ``flops`` counts a direct convolution, so a Conv2D that runs spectral (fewer
multiplies) shows an effective rate that can pass the peak. The yardstick is the MEASURED matrix-multiply
rate of this machine: a 1024x1024 float32 ``np.matmul`` (best of several), and, per GEMM layer, the bare
``np.matmul`` calls of the layer's own shapes ("GEMM ms": what the layer would cost if im2col, bias, layout
and Python were free; none for a spectral Conv2D, whose row names its method).

Under mpiexec every rank measures at the same time (as ranks compute in data-parallel training); rank 0
prints its own table and one line per rank with its peak and total.

    distnet bench compute --model cnn --batch 64
    distnet bench compute --model fashion-mlp --dtype float64 --json
"""

import json
import statistics
import time

import numpy as np

from .. import comm
from ..blas import set_blas_threads
from ..nn.layers import Conv2D, Dense
from ..nn.losses import SoftmaxCrossEntropy
from ..nn.model import Sequential
from .peak import matmul_seconds, sgemm_peak
from .step import cnn, mlp

PEAK_SIZE = 1024


def add_arguments(p):
    p.add_argument("--model", default="cnn", metavar="mlp|cnn|PRESET",
                   help="bench step's reference mlp or cnn, or a preset / TOML config (default cnn)")
    p.add_argument("--batch", type=int, default=128, help="samples per pass (default 128)")
    p.add_argument("--repeats", type=int, default=20, help="timed forward/backward passes (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed passes first (default 3)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--no-gemm", action="store_true", help="skip timing the bare GEMMs of each layer's shapes")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def build(name, dtype):
    """(model, loss, per-sample input shape) for ``mlp``/``cnn`` or a preset/config."""
    if name in ("mlp", "cnn"):
        layers, shape = {"mlp": mlp, "cnn": cnn}[name]()
        return Sequential(layers, input_shape=shape, dtype=dtype, seed=0), SoftmaxCrossEntropy(), shape
    from .. import build as B
    from .. import config as C
    from ..data import catalog
    from ..errors import ConfigError

    cfg = C.load(name, sets=[f'model.dtype="{np.dtype(dtype).name}"'])
    if not cfg["data"]["dataset"]:
        raise ConfigError(f"{name}: data.dataset is not set, so the input shape is unknown: name a catalog "
                          "dataset in the config")
    shape = tuple(catalog.get(cfg["data"]["dataset"])["input_shape"])
    return B.model(cfg, shape), B.loss(cfg), shape


def conv_method(layer, in_shape):
    """How Conv2D computes for this input: "spectral", "im2col per sample" or "im2col" (as the layer decides)."""
    return layer.path(tuple(in_shape[1:]))


def gemm_shapes(layer, in_shape, batch):
    """The layer's matrix products as (phase, m, k, n, trans_a, trans_b, count), oriented as the layer calls
    them (``count`` products of that shape); [] where the layer has none to compare with (spectral Conv2D)."""
    if isinstance(layer, Dense):
        i, o = layer.in_features, layer.out_features
        out = [("forward", batch, i, o, False, False, 1), ("backward", i, batch, o, True, False, 1)]
        if layer.needs_dx:
            out.append(("backward", batch, o, i, False, True, 1))
        return out
    if isinstance(layer, Conv2D):
        method = conv_method(layer, in_shape)
        if method == "spectral":
            return []
        c, h, w = in_shape
        ho, wo = layer.spatial_output((h, w))
        o, k, m = layer.out_channels, c * layer.kernel_size[0] * layer.kernel_size[1], ho * wo
        count = batch if method == "im2col per sample" else 1
        m = m if count > 1 else batch * m
        out = [("forward", o, k, m, False, False, count), ("backward", o, m, k, False, True, count)]
        if layer.needs_dx:
            out.append(("backward", k, o, m, True, False, count))
        return out
    return []


def time_layers(model, loss, x, y, repeats, warmup):
    """Per-layer forward and backward seconds of each timed pass, and the loss's."""
    n = len(model.layers)
    fwd, bwd, lss = [[] for _ in range(n)], [[] for _ in range(n)], []
    clock = time.perf_counter
    for r in range(warmup + repeats):
        keep = r >= warmup
        h = x
        for i, layer in enumerate(model.layers):
            t = clock()
            h = layer.forward(h, True)
            if keep:
                fwd[i].append(clock() - t)
        t = clock()
        loss.forward(h, y)
        dy = loss.backward()
        if keep:
            lss.append(clock() - t)
        for i in range(n - 1, -1, -1):
            t = clock()
            dy = model.layers[i].backward(dy)
            if keep:
                bwd[i].append(clock() - t)
    return fwd, bwd, lss


def _gflops(flops, ms):
    return flops / ms / 1e6 if flops and ms > 0 else None


def _pct(gflops, peak):
    return 100 * gflops / peak if gflops is not None and peak else None


def measure(name, batch, dtype, repeats, warmup, gemm=True):
    """Everything one rank reports (a dict; see ``run`` for the table)."""
    dtype = np.dtype(dtype)
    peak = sgemm_peak(PEAK_SIZE)
    peak_dtype = peak if dtype == np.float32 else sgemm_peak(PEAK_SIZE, dtype=dtype)
    model, loss, shape = build(name, dtype)
    model.skip_input_grad()  # as in training: nothing consumes the first layer's input gradient
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(dtype)
    y = rng.integers(0, model.output_shape[0], batch)
    fwd, bwd, lss = time_layers(model, loss, x, y, repeats, warmup)
    rows = []
    for i, layer in enumerate(model.layers):
        f = layer.flops(model.shapes[i]) * batch
        b = f if layer.params and not layer.needs_dx else 2 * f
        fm, bm = 1e3 * statistics.median(fwd[i]), 1e3 * statistics.median(bwd[i])
        row = {"index": i, "layer": repr(layer), "output_shape": list(model.shapes[i + 1]),
               "forward_flops": f, "backward_flops": b, "forward_ms": fm, "backward_ms": bm,
               "forward_best_ms": 1e3 * min(fwd[i]), "backward_best_ms": 1e3 * min(bwd[i]),
               "forward_gflops": _gflops(f, fm), "backward_gflops": _gflops(b, bm)}
        row["forward_pct_peak"] = _pct(row["forward_gflops"], peak_dtype)
        row["backward_pct_peak"] = _pct(row["backward_gflops"], peak_dtype)
        if gemm:
            shapes = gemm_shapes(layer, model.shapes[i], batch)
            if shapes:
                secs = [(ph, count * matmul_seconds(m, k, n, dtype, trans_a=ta, trans_b=tb))
                        for ph, m, k, n, ta, tb, count in shapes]
                row["gemms"] = [{"phase": ph, "m": m, "k": k, "n": n, "trans_a": ta, "trans_b": tb, "count": count}
                                for ph, m, k, n, ta, tb, count in shapes]
                row["gemm_forward_ms"] = 1e3 * sum(s for ph, s in secs if ph == "forward")
                row["gemm_backward_ms"] = 1e3 * sum(s for ph, s in secs if ph == "backward")
        if isinstance(layer, Conv2D):
            row["method"] = conv_method(layer, model.shapes[i])
        rows.append(row)
    total = {"forward_ms": sum(r["forward_ms"] for r in rows), "backward_ms": sum(r["backward_ms"] for r in rows),
             "loss_ms": 1e3 * statistics.median(lss), "forward_flops": sum(r["forward_flops"] for r in rows),
             "backward_flops": sum(r["backward_flops"] for r in rows)}
    total["ms"] = total["forward_ms"] + total["backward_ms"] + total["loss_ms"]
    total["flops"] = total["forward_flops"] + total["backward_flops"]
    for key in ("forward", "backward", ""):
        pre = f"{key}_" if key else ""
        g = _gflops(total[f"{pre}flops"], total[f"{pre}ms"])
        total[f"{pre}gflops"], total[f"{pre}pct_peak"] = g, _pct(g, peak_dtype)
    if gemm:
        for ph in ("forward", "backward"):
            total[f"gemm_{ph}_ms"] = sum(r.get(f"gemm_{ph}_ms", 0) for r in rows)
        total["gemm_ms"] = total["gemm_forward_ms"] + total["gemm_backward_ms"]
        if any(r.get("method") == "spectral" for r in rows):  # no GEMM floor for it: no floor for the total
            total.update(gemm_forward_ms=None, gemm_backward_ms=None, gemm_ms=None)
    return {"model": name, "batch": batch, "dtype": dtype.name, "params": model.num_params,
            "repeats": repeats, "warmup": warmup, "peak_size": PEAK_SIZE, "peak_gflops": peak,
            "peak_gflops_dtype": peak_dtype, "layers": rows, "total": total}


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def print_table(r, ranks):
    dt = r["dtype"]
    peak_text = f"{r['peak_gflops']:.1f} GFLOP/s float32"
    if dt != "float32":
        peak_text += f", {r['peak_gflops_dtype']:.1f} GFLOP/s {dt} (the % columns use the {dt} peak)"
    print(f"{r['model']}, batch {r['batch']}, {dt}, {r['params']:,} params, 1 BLAS thread; median of "
          f"{r['repeats']} passes after {r['warmup']} warm-up")
    print(f"measured matmul peak ({r['peak_size']}x{r['peak_size']}, best of 7): {peak_text}")
    label = {row["index"]: row["layer"] + (f" [{row['method']}]" if "method" in row else "") for row in r["layers"]}
    w = max(24, max(len(v) for v in label.values()))
    gemm = "gemm_ms" in r["total"]

    def cols(ms, gemm_ms, gflops, pct):
        g = f" {_f(gemm_ms, '.3f'):>8}" if gemm else ""
        return f" {_f(ms, '.3f'):>8}{g} {_f(gflops, '.1f'):>8} {_f(pct, '.0f'):>6}"

    g = f" {'GEMM ms':>8}" if gemm else ""
    print(f"{'#':>2} {'layer':<{w}} {'fwd ms':>8}{g} {'GFLOP/s':>8} {'%peak':>6} {'bwd ms':>8}{g} {'GFLOP/s':>8} "
          f"{'%peak':>6}")
    for row in r["layers"]:
        print(f"{row['index']:>2} {label[row['index']]:<{w}}"
              + cols(row["forward_ms"], row.get("gemm_forward_ms"), row["forward_gflops"], row["forward_pct_peak"])
              + cols(row["backward_ms"], row.get("gemm_backward_ms"), row["backward_gflops"],
                     row["backward_pct_peak"]))
    t = r["total"]
    print(f"{'':>2} {'loss (softmax CE, fwd+bwd)':<{w}} {t['loss_ms']:>8.3f}")
    print(f"{'':>2} {'total':<{w}}"
          + cols(t["forward_ms"], t.get("gemm_forward_ms"), t["forward_gflops"], t["forward_pct_peak"])
          + cols(t["backward_ms"], t.get("gemm_backward_ms"), t["backward_gflops"], t["backward_pct_peak"]))
    print(f"forward + loss + backward: {t['ms']:.2f} ms, {_f(t['gflops'], '.1f')} GFLOP/s = "
          f"{_f(t['pct_peak'], '.0f')}% of the measured peak")
    print("(flops are the layers' own count: direct convolution, so a spectral Conv2D can pass 100%; backward =\n"
          " 2 x forward, less the first layer's skipped input gradient; pooling 'flops' are comparisons;\n"
          " GEMM ms = the np.matmul calls of the layer's own shapes timed bare, best of 5: its im2col/dense floor)")
    if len(ranks) > 1:
        print(f"table from rank 0; all {len(ranks)} ranks measured at once:")
        for i, q in enumerate(ranks):
            print(f"  rank {i}: peak {q['peak_gflops']:.1f} GFLOP/s, forward+loss+backward {q['ms']:.2f} ms, "
                  f"{_f(q['gflops'], '.1f')} GFLOP/s")


def run(args):
    w = comm.world()
    threads = set_blas_threads(1)
    out = {}

    def body():
        with comm.agreed(w):  # no rank is left waiting when one fails
            if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
                from ..errors import UserError
                raise UserError("--batch and --repeats must be >= 1 and --warmup >= 0")
            out["r"] = measure(args.model, args.batch, args.dtype, args.repeats, args.warmup, gemm=not args.no_gemm)

    code = comm.run_on_every_rank(w, body)
    if code:
        return code
    r = out["r"]
    ranks = w.allgather({"peak_gflops": r["peak_gflops"], "ms": r["total"]["ms"], "gflops": r["total"]["gflops"]})
    if w.rank != 0:
        return 0
    r.update(blas_threads=threads, ranks=w.size, printed_rank=0, per_rank=ranks)
    if args.json:
        print(json.dumps(r))
    else:
        print_table(r, ranks)
    return 0
