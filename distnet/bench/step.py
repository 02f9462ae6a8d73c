"""``distnet bench step``: time one single-process training step of the reference MLP and CNN.

A step is forward, loss, backward and an Adam update of the flat arena (the presets' optimizer), on one BLAS
thread (the per-rank setting of data-parallel training). BLAS threads are limited in-process through
OpenBLAS's own ``*_set_num_threads`` (numpy is already imported by the time a command runs, so setting
OPENBLAS_NUM_THREADS here would be too late); the count is read back and printed.

GFLOP/s counts the layers' forward flops x 3 (forward + two backward GEMMs), less the first layer's
input gradient, which a training step skips. Convolutions count as direct ones, so a rate above the
machine's GEMM peak is possible: the spectral Conv2D path does fewer operations (an effective rate).

    distnet bench step --model both --batch 128
    distnet bench step --model cnn --batch 64 --json
    distnet bench step --naive          # the issue's naive-NumPy reference points, beside our layers
"""

import json
import statistics
import time

import numpy as np

from ..blas import set_blas_threads
from ..nn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from ..nn.losses import SoftmaxCrossEntropy
from ..nn.model import Sequential
from ..nn.optim import Adam


def add_arguments(parser):
    parser.add_argument("--model", choices=["mlp", "cnn", "both"], default="both")
    parser.add_argument("--batch", type=int, default=128, help="samples per step (default 128)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1, as one rank)")
    parser.add_argument("--naive", action="store_true", help="also time the naive NumPy reference points")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def mlp():
    return [Dense(None, 256), ReLU(), Dense(None, 128), ReLU(), Dense(None, 10)], (784,)


def cnn():
    return [Conv2D(None, 32, 5, padding="same"), ReLU(), MaxPool2D(2), Conv2D(None, 64, 5, padding="same"), ReLU(),
            MaxPool2D(2), Flatten(), Dense(None, 256), ReLU(), Dense(None, 10)], (1, 28, 28)


def median_ms(step, steps, warmup, best=None):
    """Median wall time of ``step()`` in milliseconds (``best``, a list, also gets the minimum)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if best is not None:
        best.append(1e3 * min(times))
    return 1e3 * statistics.median(times)


def time_model(name, batch, dtype, steps, warmup, lr=1e-3):
    """ms/step, samples/s and GFLOP/s of one training step of a reference model."""
    layers, shape = {"mlp": mlp, "cnn": cnn}[name]()
    model = Sequential(layers, input_shape=shape, dtype=dtype, seed=0)
    model.skip_input_grad()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(dtype)
    y = rng.integers(0, 10, batch)
    loss = SoftmaxCrossEntropy()
    optimizer = Adam(model.params_flat, model.grads_flat, lr=lr)

    def step():
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        optimizer.step()

    best = []
    ms = median_ms(step, steps, warmup, best)
    flops = (3 * model.flops() - model.layers[0].flops(model.shapes[0])) * batch
    return {"model": name, "batch": batch, "dtype": np.dtype(dtype).name, "params": model.num_params,
            "ms_per_step": ms, "best_ms_per_step": best[0], "samples_per_s": batch / ms * 1e3,
            "gflops": flops / ms / 1e6, "best_gflops": flops / best[0] / 1e6}


def naive_mlp_ms(batch, dtype, steps, warmup):
    """A textbook NumPy MLP 784-512-256-10 (ReLU, softmax CE) step, the issue's reference point."""
    rng = np.random.default_rng(0)
    sizes = [784, 512, 256, 10]
    ws = [(rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(dtype) for a, b in zip(sizes, sizes[1:])]
    bs = [np.zeros(b, dtype) for b in sizes[1:]]
    x = rng.standard_normal((batch, 784)).astype(dtype)
    y = rng.integers(0, 10, batch)

    def step():
        acts = [x]
        for i, (w, b) in enumerate(zip(ws, bs)):
            z = acts[-1] @ w + b
            acts.append(np.maximum(z, 0) if i < len(ws) - 1 else z)
        p = np.exp(acts[-1] - acts[-1].max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(batch), y] -= 1
        d = p / batch
        for i in range(len(ws) - 1, -1, -1):
            gw, gb = acts[i].T @ d, d.sum(0)
            if i:
                d = (d @ ws[i].T) * (acts[i] > 0)
            ws[i] -= 0.01 * gw
            bs[i] -= 0.01 * gb

    return median_ms(step, steps, warmup)


def naive_conv_ms(dtype, steps, warmup, batch=64, cin=32, cout=64, size=14):
    """A textbook im2col 3x3 convolution (np.pad, as_strided copy, GEMM, np.add.at col2im) forward+backward."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cin, size, size)).astype(dtype)
    w = rng.standard_normal((cout, cin, 3, 3)).astype(dtype)
    dy = rng.standard_normal((batch, cout, size, size)).astype(dtype)
    win = np.lib.stride_tricks.sliding_window_view

    def step():
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        cols = win(xp, (3, 3), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5).reshape(batch * size * size, -1)
        y = (cols @ w.reshape(cout, -1).T).reshape(batch, size, size, cout).transpose(0, 3, 1, 2)
        d2 = dy.transpose(0, 2, 3, 1).reshape(-1, cout)
        gw = d2.T @ cols
        dcols = (d2 @ w.reshape(cout, -1)).reshape(batch, size, size, cin, 3, 3)
        dxp = np.zeros_like(xp)
        for i in range(3):
            for j in range(3):
                dxp[:, :, i:i + size, j:j + size] += dcols[..., i, j].transpose(0, 3, 1, 2)
        return y, gw, dxp[:, :, 1:-1, 1:-1]

    return median_ms(step, steps, warmup)


def our_conv_ms(dtype, steps, warmup, batch=64, cin=32, cout=64, size=14):
    """Our Conv2D on the same problem as ``naive_conv_ms`` (forward + backward with the input gradient)."""
    rng = np.random.default_rng(0)
    layer = Conv2D(cin, cout, 3, padding=1, dtype=dtype)
    x = rng.standard_normal((batch, cin, size, size)).astype(dtype)
    dy = rng.standard_normal((batch, cout, size, size)).astype(dtype)
    return median_ms(lambda: (layer.forward(x), layer.backward(dy)), steps, warmup)


def run(args):
    threads = set_blas_threads(args.threads)
    dtype = np.dtype(args.dtype)
    names = ["mlp", "cnn"] if args.model == "both" else [args.model]
    results = [time_model(n, args.batch, dtype, args.steps, args.warmup) for n in names]
    naive = None
    if args.naive:
        naive = {"naive_mlp_784_512_256_10_b128_ms": naive_mlp_ms(128, dtype, args.steps, args.warmup),
                 "naive_im2col_conv3x3_32to64_14x14_b64_ms": naive_conv_ms(dtype, args.steps, args.warmup),
                 "distnet_conv3x3_32to64_14x14_b64_ms": our_conv_ms(dtype, args.steps, args.warmup)}
    if args.json:
        print(json.dumps({"blas_threads": threads, "results": results, "naive": naive}))
        return 0
    print(f"BLAS threads: {threads if threads is not None else 'unknown (set OPENBLAS_NUM_THREADS=1)'}, "
          f"dtype {dtype.name}, median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'model':<6} {'batch':>6} {'params':>10} {'ms/step':>9} {'samples/s':>10} {'GFLOP/s':>8} "
          f"{'best ms':>8} {'best GFLOP/s':>12}")
    for r in results:
        print(f"{r['model']:<6} {r['batch']:>6} {r['params']:>10,} {r['ms_per_step']:>9.2f} "
              f"{r['samples_per_s']:>10.0f} {r['gflops']:>8.1f} {r['best_ms_per_step']:>8.2f} "
              f"{r['best_gflops']:>12.1f}")
    print("(best = fastest single step: the figure least disturbed by other processes on the machine)")
    if naive:
        print("reference points (issue: naive MLP 4.2 ms vs PyTorch 5.0 ms; naive conv 40 ms vs PyTorch 20 ms):")
        for k, v in naive.items():
            print(f"  {k:<42} {v:8.2f} ms")
    return 0
