import math

import numpy as np
import pytest

from finegrain_tf.utils import checks


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_positive_int_accepts(value):
    assert checks.positive_int(value, "n") == int(value)
    assert type(checks.positive_int(value, "n")) is int


@pytest.mark.parametrize("value", [0, -2, 1.0, True, "3", None, np.float32(2)])
def test_positive_int_refuses_naming_argument_and_value(value):
    with pytest.raises(ValueError, match=r"^batch_size must be a positive int, got " + repr(value).replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        checks.positive_int(value, "batch_size")


def test_non_negative_int():
    assert checks.non_negative_int(0, "k") == 0
    with pytest.raises(ValueError, match=r"k must be a non-negative int, got -1"):
        checks.non_negative_int(-1, "k")
    with pytest.raises(ValueError, match=r"got False"):
        checks.non_negative_int(False, "k")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -math.inf, "1.0", None, True])
def test_finite_float_refuses(value):
    with pytest.raises(ValueError, match=r"gamma must be a finite number, got " + (repr(value) if not isinstance(value, str) else "'1.0'").replace(".", r"\.")):
        checks.finite_float(value, "gamma")


def test_finite_float_accepts_ints_and_numpy():
    assert checks.finite_float(2, "x") == 2.0
    assert checks.finite_float(np.float32(0.5), "x") == 0.5


def test_in_range_bounds_and_message():
    assert checks.in_range(0.0, "beta", 0.0, 1.0, high_inclusive=False) == 0.0
    with pytest.raises(ValueError, match=r"^beta must be in \[0\.0, 1\.0\), got 1\.0$"):
        checks.in_range(1.0, "beta", 0.0, 1.0, high_inclusive=False)
    with pytest.raises(ValueError, match=r"^p must be in \(0, 1\], got 0$"):
        checks.in_range(0, "p", 0, 1, low_inclusive=False)
    with pytest.raises(ValueError, match=r"^lr must be in \(0, inf\), got -0\.1$"):
        checks.in_range(-0.1, "lr", 0, None, low_inclusive=False)
    with pytest.raises(ValueError, match=r"finite number, got nan"):
        checks.in_range(float("nan"), "lr", 0, 1)


def test_one_of():
    assert checks.one_of("mean", "mode", ("sum", "mean")) == "mean"
    with pytest.raises(ValueError, match=r"^mode must be one of \['sum', 'mean'\], got 'max'$"):
        checks.one_of("max", "mode", ("sum", "mean"))
    with pytest.raises(ValueError, match=r"got \[1, 2\]"):
        checks.one_of([1, 2], "mode", ("sum",))
    with pytest.raises(ValueError, match=r"must be one of"):
        checks.one_of(np.array([1, 2]), "mode", (1, 2))
