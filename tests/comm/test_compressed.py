"""fp16/bf16 gradients on the wire (comm.sync = "fp16" | "bf16"): the sum within the format's rounding, bf16
rounding to nearest even, non-finite gradients still seen, error feedback keeping what rounding dropped."""

import textwrap

import numpy as np
import pytest

from distnet import comm
from distnet.nn.layers import Dense, ReLU
from distnet.nn.model import Sequential

from ..helpers import TwoRanks


def test_bf16_rounds_to_nearest_even_on_the_float32_bits():
    model = Sequential([Dense(None, 4)], input_shape=(2,), seed=0)
    sync = comm.sync.Compressed(TwoRanks(), model, "bf16", error_feedback=False)
    one = np.float32(1.0).view(np.uint32)
    x = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 3 * 2 ** -9, 1 + 2 ** -9, -2.5, np.inf, np.nan,
                  np.uint32(0xFFFFFFFF).view(np.float32)], np.float32)  # the last: a NaN with every low bit set
    row, f32, u32 = np.zeros(x.size + 2, np.uint16), np.empty(x.size, np.float32), np.empty(x.size, np.uint32)
    sync.compress(x, row, f32, u32)
    back = sync.decompress(row, f32, u32)
    assert row[0] == one >> 16
    # bf16 keeps 7 mantissa bits (1 ulp = 2^-7 at 1): ties go to the even neighbour, the rest to the nearest
    assert back[:6].tolist() == [1.0, 1.0, 1 + 2 ** -6, 1 + 2 ** -7, 1.0, -2.5]
    assert back[6] == np.inf and np.isnan(back[7]) and np.isnan(back[8])


def test_fp16_scales_to_its_range_and_sends_what_would_be_subnormal_as_zero():
    model = Sequential([Dense(None, 4)], input_shape=(2,), seed=0)
    sync = comm.sync.Compressed(TwoRanks(), model, "fp16", error_feedback=False)
    # norm 2^-10 -> scale 2^24: 2^-12 becomes 2^12, 2^-37 becomes 2^-13 (normal), 2^-39 and 2^-45 would be
    # fp16 subnormals (2^-15, 2^-21) and go as 0; signs, infinities and NaNs are kept
    x = np.array([2.0 ** -12, -(2.0 ** -37), 2.0 ** -39, -(2.0 ** -45), 0.0, 3 * 2.0 ** -13], np.float32)
    x[0] = np.sqrt(2.0 ** -20 - float(np.dot(x[1:], x[1:])))  # the norm exactly 2^-10
    row, f32 = np.zeros(x.size + 2, np.uint16), np.empty(x.size, np.float32)
    sync.compress(x, row, f32, None)
    assert row[-2:].view(np.float32)[0] == 2.0 ** 24
    halves = row[:-2].view(np.float16)
    assert not np.any((halves != 0) & (np.abs(halves) < np.float16(2.0 ** -14)))  # no subnormal on the wire
    back = sync.decompress(row, f32, None)
    assert back[1:].tolist() == [-(2.0 ** -37), 0.0, 0.0, 0.0, 3 * 2.0 ** -13]
    assert abs(back[0] - x[0]) <= 2.0 ** -11 * x[0]
    bad = np.array([1.0, np.inf, np.nan, 2.0 ** -30], np.float32)
    row, f32 = np.zeros(bad.size + 2, np.uint16), np.empty(bad.size, np.float32)
    sync.compress(bad, row, f32, None)
    back = sync.decompress(row, f32, None)
    assert back[0] == 1.0 and back[1] == np.inf and np.isnan(back[2])


SCRIPT = textwrap.dedent("""
    import math, numpy as np
    from distnet import comm
    from distnet.nn.layers import Dense, ReLU
    from distnet.nn.model import Sequential
    w = comm.world()
    model = Sequential([Dense(None, 64), ReLU(), Dense(None, 32), ReLU(), Dense(None, 10)], input_shape=(20,), seed=3)
    sync = comm.sync.make(w, model, dict(sync="{fmt}", overlap=True, bucket_mb=1 / 1024, split_mb=1 / 1024,
                                         error_feedback={ef}))
    assert len(sync.buckets) > 3
    def local(rank, step, bad=False):
        x = np.random.default_rng([rank, step]).standard_normal((8, 20)).astype(np.float32)
        model.forward(x)
        dy = np.random.default_rng([rank, step, 1]).standard_normal((8, 10)).astype(np.float32) * {size}
        if bad and rank == 1:
            dy[0, 0] = np.nan if step % 2 else np.inf
        return dy
    def step(s, bad=False):
        mine = []
        for r in range(w.size):  # every rank's local gradient, computed here too
            model.backward(local(r, s, bad))
            mine.append(model.grads_flat.copy())
        sync.begin(None, stats=np.zeros(1))
        model.backward(local(w.rank, s, bad), sync=sync)
        sync.finish()
        return model.grads_flat.copy(), np.sum(mine, axis=0), np.sum(np.abs(mine), axis=0)
    rel = {{"fp16": 2.0 ** -11, "bf16": 2.0 ** -8}}["{fmt}"]
    got, want, mag = step(0)
    assert not np.array_equal(got, want)  # it did round
    err = np.abs(got - want)
    # fp16 sends what its scaling leaves under its smallest normal (2^-28 of a bucket's norm) as 0
    floor = 2.0 ** -27 * float(np.linalg.norm(mag)) if "{fmt}" == "fp16" else 1e-6 * rel * mag.max()
    assert np.all(err <= rel * mag + floor + 2 * 2.0 ** -149), err.max()
    assert np.all(w.allgather(got.tobytes())[0] == got.tobytes())  # every rank holds the same sum
    if {ef}:  # over steps, error feedback sends what rounding dropped: the sums track the true sums, even
        # for one gradient sent again and again, which rounding without feedback would get wrong the same way
        total_got, total_want, top = got.astype(np.float64), want.astype(np.float64), mag.max()
        for s in range(1, 20):
            got, want, mag = step(0)
            total_got += got
            total_want += want
            top = max(top, mag.max())
        lag = np.abs(total_got - total_want).max()  # the residuals left: one step's rounding, not twenty
        assert lag <= 2 * rel * top, (lag, top)
    for s in (1, 2):
        got, _, _ = step(s, bad=True)
        assert not math.isfinite(sync.global_sq())
    if w.rank == 0:
        print("OK", w.size)
""")


FORMATS = [("fp16", False, 1e-6), ("fp16", True, 1e3), ("bf16", False, 1.0), ("bf16", True, 1e-30)]


@pytest.fixture(scope="module")
def formats(launch_cases):
    """Every case of FORMATS in one 2-rank launch: {(fmt, ef, size): Case}."""
    cases = launch_cases({f"{fmt}-{ef}-{size}": SCRIPT.format(fmt=fmt, ef=ef, size=size) for fmt, ef, size in FORMATS},
                         n=2, timeout=120)
    return {(fmt, ef, size): cases[f"{fmt}-{ef}-{size}"] for fmt, ef, size in FORMATS}


@pytest.mark.mpi
@pytest.mark.parametrize("fmt,ef,size", FORMATS)
def test_compressed_sum_is_the_float32_sum_within_the_formats_rounding(formats, fmt, ef, size):
    formats[fmt, ef, size].check("OK 2")


def test_one_rank_is_not_compressed():
    model = Sequential([Dense(None, 64), ReLU(), Dense(None, 10)], input_shape=(20,), seed=3)
    sync = comm.sync.make(comm.SerialWorld(), model, dict(sync="fp16", overlap=True, bucket_mb=1, split_mb=0,
                                                          error_feedback=True))
    assert type(sync) is comm.sync.Bucketed
