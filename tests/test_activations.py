"""Tests of lib.activations: the GELU forms, the layer, and the constant fits of chapter 1."""

import math

import keras
import numpy as np
import pytest
import sympy as sp
import tensorflow as tf
from keras import ops
from scipy.special import ndtr

from lib import activations
from lib.activations import GELU, gelu, normal_cdf
from lib.testing import check_keras_layer

X = np.linspace(-8.0, 8.0, 20_001)


@pytest.mark.parametrize("approximate, keras_flag", [("none", False), ("tanh", True), (False, False), (True, True)])
def test_matches_keras_gelu_in_float32(approximate, keras_flag):
    x = ops.convert_to_tensor(X, dtype="float32")
    ours = np.asarray(gelu(x, approximate=approximate))
    theirs = np.asarray(keras.activations.gelu(x, approximate=keras_flag))
    # lib calls the same fused op for these two forms: equal to the last bit.
    np.testing.assert_array_equal(ours, theirs)


def test_gelu_equals_x_times_normal_cdf():
    x = ops.convert_to_tensor(X, dtype="float64")
    for approximate in activations.APPROXIMATIONS:
        np.testing.assert_allclose(np.asarray(gelu(x, approximate)), X * np.asarray(normal_cdf(x, approximate)),
                                   rtol=1e-12, atol=1e-12)


def test_float64_keeps_double_precision():
    # (TensorFlow's fused float64 GELU kernel is only accurate to ~1e-7; lib avoids it in float64.)
    ours = np.asarray(gelu(ops.convert_to_tensor(X, dtype="float64"), approximate="none"))
    np.testing.assert_allclose(ours, X * ndtr(X), rtol=1e-14, atol=1e-15)


def test_sigmoid_form_is_x_sigmoid_1702x():
    ours = np.asarray(gelu(ops.convert_to_tensor(X, dtype="float64"), approximate="sigmoid"))
    np.testing.assert_allclose(ours, X / (1.0 + np.exp(-1.702 * X)), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("dtype, eps", [("float16", 2.0**-10), ("bfloat16", 2.0**-7)])
@pytest.mark.parametrize("approximate", ["none", "tanh", "sigmoid"])
def test_low_precision_inputs_keep_dtype_and_accuracy(dtype, eps, approximate):
    x64 = np.linspace(-6.0, 6.0, 2_001)
    x = ops.cast(ops.convert_to_tensor(x64), dtype)
    y = gelu(x, approximate=approximate)
    assert y.dtype == keras.backend.standardize_dtype(dtype)
    reference = np.asarray(gelu(ops.cast(x, "float64"), approximate=approximate))
    # a handful of roundings, each at most eps/2 relative, of values whose size is about |x|
    np.testing.assert_allclose(np.asarray(ops.cast(y, "float64")), reference, rtol=4 * eps, atol=4 * eps)
    assert np.all(np.isfinite(np.asarray(ops.cast(y, "float32"))))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_large_inputs_do_not_overflow(dtype):
    # x**3 overflows float16 beyond |x| ~ 40: the tanh form must still give x and 0.
    x = ops.convert_to_tensor([-60.0, -45.0, 45.0, 60.0], dtype=dtype)
    for approximate in activations.APPROXIMATIONS:
        y = np.asarray(ops.cast(gelu(x, approximate=approximate), "float32"))
        np.testing.assert_allclose(y, [0.0, 0.0, 45.0, 60.0], atol=1e-6, rtol=1e-3)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("approximate", activations.APPROXIMATIONS)
def test_large_inputs_have_finite_gradients_in_low_precision(dtype, approximate):
    # the tanh form's x³ overflowed float16 and its gradient was NaN from |x| = 256 on: a loss-scaled optimizer
    # would then skip every step
    x = ops.convert_to_tensor([-60000.0, -1000.0, -256.0, 256.0, 1000.0, 60000.0], dtype=dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = gelu(x, approximate=approximate)
    gradient = tape.gradient(y, x)
    assert y.dtype == gradient.dtype == keras.backend.standardize_dtype(dtype)
    expected = np.where(np.asarray(x).astype("float32") > 0, np.asarray(x).astype("float32"), 0.0)
    np.testing.assert_array_equal(np.asarray(ops.cast(y, "float32")), expected)
    np.testing.assert_array_equal(np.asarray(ops.cast(gradient, "float32")), [0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize("dtype, eps", [("float16", 2.0**-10), ("bfloat16", 2.0**-7)])
def test_tanh_form_stays_accurate_around_its_saturation_in_low_precision(dtype, eps):
    x = ops.cast(ops.convert_to_tensor(np.linspace(-45.0, 45.0, 1_801)), dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = gelu(x, approximate="tanh")
    x64 = ops.cast(x, "float64")
    with tf.GradientTape() as tape64:
        tape64.watch(x64)
        y64 = gelu(x64, approximate="tanh")
    np.testing.assert_allclose(np.asarray(ops.cast(y, "float64")), np.asarray(y64), rtol=4 * eps, atol=4 * eps)
    np.testing.assert_allclose(np.asarray(ops.cast(tape.gradient(y, x), "float64")), np.asarray(tape64.gradient(y64, x64)),
                               rtol=8 * eps, atol=8 * eps)


@pytest.mark.parametrize("bad", ["erf", "TANH ", 1, None, 0.5])
def test_bad_approximate_raises_value_error(bad):
    with pytest.raises(ValueError, match=r"`approximate` must be one of \('none', 'tanh', 'sigmoid'\)"):
        gelu(np.ones(3), approximate=bad)
    with pytest.raises(ValueError, match="Received: approximate="):
        GELU(approximate=bad)


def test_case_is_normalised():
    assert GELU(approximate="Tanh").approximate == "tanh"


@pytest.mark.parametrize("approximate", ["none", "tanh", "sigmoid"])
def test_layer_config_save_load_and_fit(approximate):
    check_keras_layer(lambda: GELU(approximate=approximate), (5,))


def test_layer_under_mixed_precision_and_xla():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = GELU(approximate="tanh")
        y = tf.function(layer, jit_compile=True)(ops.convert_to_tensor([[-1.0, 0.0, 2.0]]))
        assert y.dtype == "float16"
        np.testing.assert_allclose(np.asarray(y).astype("float64"), [[-0.1588, 0.0, 1.9546]], atol=2e-3)
    finally:
        keras.config.set_dtype_policy(previous)


def test_normal_cdf_symmetry():
    x = ops.convert_to_tensor(X, dtype="float64")
    for approximate in activations.APPROXIMATIONS:
        phi = np.asarray(normal_cdf(x, approximate))
        np.testing.assert_allclose(phi + phi[::-1], 1.0, atol=1e-12)


# --- the fits of chapter 1 ---------------------------------------------------------------------


def test_taylor_coefficients_are_exact():
    a, b = activations.tanh_taylor_coefficients()
    assert sp.simplify(a - sp.sqrt(2 / sp.pi)) == 0
    assert sp.simplify(b - (4 - sp.pi) / (3 * sp.sqrt(2) * sp.pi ** sp.Rational(3, 2))) == 0
    # and they do cancel the x and x^3 terms
    x = sp.symbols("x")
    residual = sp.series(sp.erf(x / sp.sqrt(2)) - sp.tanh(a * x + b * x**3), x, 0, 5).removeO()
    assert sp.simplify(residual) == 0


def test_max_abs_error_refines_beyond_the_grid():
    # |sin(x)| peaks at pi/2; a coarse grid misses it, the refinement finds it.
    value, where = activations.max_abs_error(np.sin, x_max=3.0, step=0.25)
    assert value == pytest.approx(1.0, abs=1e-12)
    assert where == pytest.approx(math.pi / 2, abs=1e-5)


def test_tanh_fit_error_is_the_minimum():
    fit = activations.fit_tanh_cubic()
    a, b = fit.params
    assert a == activations.SQRT_2_OVER_PI
    for nudge in (-1e-5, 1e-5):
        other, _ = activations.max_abs_error(lambda x: ndtr(x) - activations.tanh_cdf_numpy(x, a, b + nudge))
        assert other > fit.max_error


def test_sigmoid_fit_error_is_the_minimum():
    fit = activations.fit_sigmoid_scale()
    (scale,) = fit.params
    for nudge in (-1e-4, 1e-4):
        other, _ = activations.max_abs_error(lambda x: ndtr(x) - activations.sigmoid_cdf_numpy(x, scale + nudge))
        assert other > fit.max_error


@pytest.mark.parametrize("kwargs, match", [
    ({"x_max": 0.0}, "`x_max` must be positive"),
    ({"step": 0.0}, r"`step` must be in \(0, x_max\)"),
])
def test_max_abs_error_rejects_bad_grid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        activations.max_abs_error(np.sin, **kwargs)


def test_fit_arguments_are_validated():
    for bad in (-1.0, 0, "0.8", True):
        with pytest.raises(ValueError, match="`a` must be a positive number or None"):
            activations.fit_tanh_cubic(a=bad)
