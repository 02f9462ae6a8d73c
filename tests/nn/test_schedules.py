"""Schedules at chosen steps against values worked out by hand; the factory's errors."""

import math

import pytest

from distnet.errors import ConfigError
from distnet.nn.schedules import (
    Constant,
    Cosine,
    Exponential,
    OneCycle,
    Piecewise,
    Power,
    Warmup,
    make_schedule,
    scale_lr,
)

approx = pytest.approx


def test_constant():
    s = Constant(0.1)
    assert s(0) == s(10**6) == 0.1


def test_piecewise_boundary_belongs_to_the_next_interval():
    s = Piecewise([1000, 2000], [0.1, 0.01, 0.001])
    assert [s(0), s(999), s(1000), s(1999), s(2000), s(10**6)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_power():
    s = Power(0.1, decay_steps=100)
    assert s(0) == 0.1
    assert s(100) == approx(0.05)         # 0.1 / (1 + 1)
    assert s(300) == approx(0.025)        # 0.1 / (1 + 3)
    assert Power(0.1, 100, power=2)(100) == approx(0.025)   # 0.1 / 2^2
    assert Power(0.1, 100, power=0.5)(300) == approx(0.05)  # 0.1 / sqrt(4)


def test_exponential():
    s = Exponential(0.1, decay_steps=100)
    assert s(0) == 0.1
    assert s(100) == approx(0.01)
    assert s(200) == approx(0.001)
    assert s(50) == approx(0.1 * 10 ** -0.5)
    assert Exponential(1.0, 10, decay_rate=0.5)(30) == approx(0.125)


def test_cosine():
    s = Cosine(0.1, total_steps=1000, min_lr=0.02)
    assert s(0) == approx(0.1)
    assert s(500) == approx(0.06)                                    # (0.1 + 0.02) / 2
    assert s(250) == approx(0.02 + 0.08 * (1 + math.sqrt(0.5)) / 2)  # cos(pi/4) = sqrt(1/2)
    assert s(1000) == approx(0.02)
    assert s(1500) == approx(0.02)            # stays at the floor (the cosine would be back at 0.06)


def test_onecycle_cos():
    s = OneCycle(1.0, total_steps=101, pct_start=0.3, div_factor=25, final_div_factor=1e4)
    # peak at 0.3 * 101 - 1 = 29.3, last step 100
    assert s(0) == approx(0.04)                    # 1 / 25
    assert s(29.3) == approx(1.0)
    assert max(s(t) for t in range(101)) == approx(1.0, abs=1e-3)
    assert s(100) == approx(0.04 / 1e4)
    assert s(500) == approx(0.04 / 1e4)
    # halfway up: the cosine mean of 0.04 and 1
    assert s(29.3 / 2) == approx(0.52)


def test_onecycle_linear():
    s = OneCycle(1.0, total_steps=11, pct_start=0.5, div_factor=10, final_div_factor=100, anneal="linear")
    # peak 4.5, last 10: up from 0.1 to 1, down from 1 to 0.001
    assert s(0) == approx(0.1)
    assert s(4.5) == approx(1.0)
    assert s(3) == approx(0.1 + 0.9 * 3 / 4.5)
    assert s(7) == approx(1.0 + (0.001 - 1.0) * 2.5 / 5.5)
    assert s(10) == approx(0.001)


def test_warmup_is_linear_then_the_unshifted_inner():
    s = Warmup(Constant(0.4), warmup_steps=100)
    assert [s(0), s(50), s(100), s(1000)] == [0.0, 0.2, 0.4, 0.4]
    s = Warmup(Constant(0.4), warmup_steps=100, start_factor=0.25)
    assert [s(0), s(50)] == [approx(0.1), approx(0.25)]
    inner = Exponential(0.1, 100)
    s = Warmup(inner, warmup_steps=100)
    assert s(50) == approx(0.005)  # half of inner(100) = 0.01
    assert s(200) == inner(200)    # not shifted


def test_scale_lr():
    assert scale_lr(0.1, 256, 1024, "linear") == approx(0.4)
    assert scale_lr(0.1, 256, 1024, "sqrt") == approx(0.2)
    assert scale_lr(0.1, 256, 1024, "none") == 0.1
    assert scale_lr(0.1, 256, 64, "linear") == approx(0.025)
    with pytest.raises(ConfigError, match="'cubic'"):
        scale_lr(0.1, 256, 1024, "cubic")
    with pytest.raises(ConfigError, match="batch"):
        scale_lr(0.1, 0, 1024, "linear")


def test_make_schedule():
    s = make_schedule({"name": "cosine", "warmup_steps": 100, "min_lr": 0.0}, 0.1, 1000)
    assert s(50) == approx(0.05 * (1 + math.cos(math.pi * 0.1)) / 2)
    assert s(500) == approx(0.05)
    s = make_schedule({"name": "piecewise", "boundaries": [1000, 2000], "factors": [1, 0.1, 0.01]}, 0.5, 3000)
    assert [s(999), s(1000), s(2000)] == [approx(0.5), approx(0.05), approx(0.005)]
    s = make_schedule({"name": "piecewise", "boundaries": [10], "values": [0.3, 0.03]}, 0.5, 3000)
    assert [s(9), s(10)] == [0.3, 0.03]
    assert make_schedule({"name": "exponential", "decay_steps": 100}, 0.1, 1000)(200) == approx(0.001)
    assert make_schedule({"name": "power", "decay_steps": 100, "power": 2}, 0.1, 1000)(100) == approx(0.025)
    s = make_schedule({"name": "onecycle", "pct_start": 0.5}, 1.0, 11)
    assert s(0) == approx(0.04) and s(4.5) == approx(1.0)
    assert make_schedule({"name": "constant"}, 0.1, 10)(5) == 0.1
    assert "Warmup(inner=Cosine(lr=0.1" in repr(make_schedule({"name": "cosine", "warmup_steps": 5}, 0.1, 100))


@pytest.mark.parametrize("spec,named", [
    ({"name": "cosinus"}, "'cosinus'"),
    ({}, "None"),
    ({"name": "cosine", "decay_steps": 10}, "'decay_steps'.*valid: name, min_lr"),
    ({"name": "exponential"}, "'decay_steps'"),
    ({"name": "exponential", "decay_steps": 0}, "decay_steps=0"),
    ({"name": "piecewise", "boundaries": [10]}, "'factors'"),
    ({"name": "piecewise", "boundaries": [10], "values": [1, 2, 3]}, "2 boundaries|1 boundaries"),
    ({"name": "piecewise", "boundaries": [20, 10], "values": [1, 2, 3]}, "increasing"),
    ({"name": "power", "decay_steps": "100"}, "decay_steps='100'"),
    ({"name": "cosine", "warmup_steps": "5"}, "warmup_steps='5'"),
    ({"name": "onecycle", "anneal": "exp"}, "anneal='exp'"),
    ({"name": "onecycle", "pct_start": 1.0}, "pct_start=1.0"),
])
def test_make_schedule_errors_name_the_key(spec, named):
    with pytest.raises(ConfigError, match=named):
        make_schedule(spec, 0.1, 1000)
