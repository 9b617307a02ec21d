"""GELU and its two elementary approximations (chapter "GELU's two elementary approximations").

GELU weights its input by the standard normal CDF (Hendrycks & Gimpel, 2016)::

    GELU(x) = x Φ(x),   Φ(x) = ½ [1 + erf(x / √2)]

and the GELU paper offers two elementary approximations of Φ::

    Φ(x) ≈ ½ [1 + tanh(√(2/π) (x + 0.044715 x³))]      ("tanh")
    Φ(x) ≈ σ(1.702 x)                                  ("sigmoid")

Su Jianlin's article (https://kexue.fm/archives/7309, 2020-03-26) shows where the constants come
from: ``a = √(2/π)`` by matching the Taylor series of ``erf(x/√2)`` at 0, then ``b`` (and λ) by
minimising the *maximum* error over the real line. This module has the activations (Keras ops, a
serializable layer) and the fitting functions the chapter calls.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import keras
import mpmath as mp
import numpy as np
from keras import ops

from lib import checks, minimax

APPROXIMATIONS = ("none", "tanh", "sigmoid")
"""Accepted values of ``approximate``: the exact form and the two approximations."""

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC_COEFFICIENT = 0.044715
"""The cubic coefficient ``c`` of the tanh form as published (Hendrycks & Gimpel, 2016)."""
SIGMOID_SCALE = 1.702
"""The λ of the sigmoid form as published (Hendrycks & Gimpel, 2016)."""


_TANH_SATURATED = 20.0
"""Beyond this |x| the tanh form's Φ is exactly 0 or 1 in float32 (√(2/π)(x + 0.044715 x³) > 300)."""


def canonical_approximation(approximate, name="approximate") -> str:
    """Map ``approximate`` to one of :data:`APPROXIMATIONS`.

    Booleans are accepted for compatibility with ``keras.activations.gelu``: ``False`` means
    ``"none"`` (exact) and ``True`` means ``"tanh"``.

    Raises:
        ValueError: for anything else.
    """
    if approximate is False:
        return "none"
    if approximate is True:
        return "tanh"
    if isinstance(approximate, str) and approximate.lower() in APPROXIMATIONS:
        return approximate.lower()
    raise ValueError(
        f"`{name}` must be one of {APPROXIMATIONS} (or a bool: False for 'none', True for 'tanh'). "
        f"Received: {name}={approximate!r}"
    )


def normal_cdf(x, approximate="none"):
    """The standard normal CDF Φ(x), exactly or by one of its elementary approximations.

    Args:
        x: a tensor (any float dtype; the result keeps it).
        approximate: ``"none"`` for ½[1 + erf(x/√2)], ``"tanh"`` for
            ½[1 + tanh(√(2/π)(x + 0.044715 x³))], ``"sigmoid"`` for σ(1.702 x).
    """
    form = canonical_approximation(approximate)
    x = checks.check_tensor("x", x)
    if form == "none":
        # ½ erfc(−x/√2) equals ½[1 + erf(x/√2)] but keeps its digits in the left tail,
        # where 1 + erf(·) would cancel to 0.
        return 0.5 * ops.erfc(-x / math.sqrt(2.0))
    if form == "tanh":
        # ½[1 + tanh(u)] = σ(2u): the same function, without the cancellation of 1 + tanh(u) as u → −∞.
        return ops.sigmoid(2.0 * SQRT_2_OVER_PI * (x + TANH_CUBIC_COEFFICIENT * x * x * x))
    return ops.sigmoid(SIGMOID_SCALE * x)


def gelu(x, approximate="none"):
    """Gaussian error linear unit, GELU(x) = x Φ(x).

    Args:
        x: input tensor.
        approximate: ``"none"`` (exact, via erf), ``"tanh"`` or ``"sigmoid"``; see
            :func:`normal_cdf`. ``False``/``True`` mean ``"none"``/``"tanh"`` as in Keras.

    Returns:
        A tensor of the same shape and dtype as ``x``.

    Raises:
        ValueError: if ``approximate`` is not one of the accepted values.

    Example:

    >>> import numpy as np
    >>> [round(float(v), 4) for v in gelu(np.array([-1.0, 0.0, 1.0]), approximate="none")]
    [-0.1587, 0.0, 0.8413]

    Reference:
        Su Jianlin, "GELU的两个初等函数近似是怎么来的", https://kexue.fm/archives/7309 (2020);
        Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)", arXiv:1606.08415.
    """
    form = canonical_approximation(approximate)
    x = checks.check_tensor("x", x)
    if form == "sigmoid" or keras.backend.standardize_dtype(x.dtype) == "float64":
        # float64: tf.nn.gelu agrees with the formula only to ~1e-7 relative (found by the float64 test);
        # the composite formula keeps double precision (the fits of chapter 1 rely on it).
        return x * normal_cdf(x, form)
    # float16/bfloat16/float32: the exact and tanh forms go through Keras's own op (tf.nn.gelu, built
    # from TensorFlow's element-wise ops): the same function as x * normal_cdf(x), and measured faster
    # forward and backward on CPU (benchmarks/bench_gelu.py).
    if form == "tanh" and keras.backend.standardize_dtype(x.dtype) in ("float16", "bfloat16"):
        # x³ overflows float16 for |x| >= 41 (bfloat16 beyond ~1e12) and the gradient becomes inf·0 = NaN from
        # |x| = 256 on. Beyond |x| = 20, Φ is 0 or 1 to float32 precision (tanh(±301)), so GELU is x or 0
        # there: take it so, and feed the op only clipped values.
        outside = ops.abs(x) > _TANH_SATURATED
        inside = ops.gelu(ops.clip(x, -_TANH_SATURATED, _TANH_SATURATED), approximate=True)
        return ops.where(outside, x * ops.cast(x > 0, x.dtype), inside)
    return ops.gelu(x, approximate=form == "tanh")


@keras.saving.register_keras_serializable(package="lib")
class GELU(keras.layers.Layer):
    """GELU as a layer, with the exact form or either approximation.

    Args:
        approximate: ``"none"``, ``"tanh"`` or ``"sigmoid"`` (see :func:`gelu`).
        **kwargs: standard layer arguments (``name``, ``dtype``...).

    Call arguments:
        inputs: a tensor of any shape.

    Returns:
        ``inputs * Φ(inputs)``, same shape.

    Example:

    >>> layer = GELU(approximate="tanh")
    >>> layer.get_config()["approximate"]
    'tanh'
    """

    def __init__(self, approximate="none", **kwargs):
        super().__init__(**kwargs)
        self.approximate = canonical_approximation(approximate)
        self.supports_masking = True

    def call(self, inputs):
        return gelu(inputs, self.approximate)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "approximate": self.approximate}


# ---------------------------------------------------------------------------------------------
# Fitting the constants: NumPy/SciPy in float64 (the fits are offline analysis, not model code).
# ---------------------------------------------------------------------------------------------


def normal_cdf_numpy(x):
    """Φ(x) in float64 with SciPy (``scipy.special.ndtr``)."""
    from scipy.special import ndtr

    return ndtr(np.asarray(x, dtype=np.float64))


def tanh_cdf_numpy(x, a, b):
    """The tanh family ½[1 + tanh(a x + b x³)] in float64."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(a * x + b * x**3))


def sigmoid_cdf_numpy(x, scale):
    """The sigmoid family σ(λ x) in float64."""
    from scipy.special import expit

    return expit(scale * np.asarray(x, dtype=np.float64))


def tanh_taylor_coefficients():
    """Solve for ``a``, ``b`` so that tanh(a x + b x³) matches erf(x/√2) to order x³ at 0 (sympy).

    Returns:
        ``(a, b)`` as exact sympy expressions: a = √(2/π), b = (4 − π) / (3√2 π^{3/2}).
    """
    import sympy as sp

    x, a, b = sp.symbols("x a b", real=True)
    residual = sp.series(sp.erf(x / sp.sqrt(2)) - sp.tanh(a * x + b * x**3), x, 0, 5).removeO()
    poly = sp.Poly(sp.expand(residual), x)
    first, third = poly.coeff_monomial(x), poly.coeff_monomial(x**3)
    a_value = sp.solve(sp.Eq(first, 0), a)[0]
    b_value = sp.solve(sp.Eq(third.subs(a, a_value), 0), b)[0]
    return sp.simplify(a_value), sp.simplify(b_value)


def max_abs_error(error: Callable[[np.ndarray], np.ndarray], x_max: float = 10.0, step: float = 1e-3):
    """The maximum of ``|error(x)|`` over ``[0, x_max]`` and where it is reached.

    A grid of spacing ``step`` locates every local maximum; each is then refined by a bounded
    scalar search inside its grid cell, so the result does not depend on the grid's luck.
    (An error of Φ, ΔΦ = Φ − approximation, is odd about the origin, and GELU's error x·ΔΦ is even: either
    way ``|error|`` is symmetric, so ``[0, x_max]`` covers the real line.)

    Returns:
        ``(max_error, argmax)``.
    """
    from scipy.optimize import minimize_scalar

    if isinstance(x_max, bool) or not isinstance(x_max, (int, float, np.floating)) or not 0 < x_max < math.inf:
        raise ValueError(f"`x_max` must be positive. Received: x_max={x_max!r}")
    if isinstance(step, bool) or not isinstance(step, (int, float, np.floating)) or not 0 < step < x_max:
        raise ValueError(f"`step` must be in (0, x_max). Received: step={step!r}, x_max={x_max!r}")
    grid = np.arange(0.0, x_max + step / 2, step)
    values = np.abs(error(grid))
    is_peak = (values >= np.r_[-np.inf, values[:-1]]) & (values >= np.r_[values[1:], -np.inf])
    # Refinement moves a peak by O(step² |error''|), far less than half the maximum: peaks below
    # half the grid maximum cannot win, and skipping them skips the round-off ripples of the tails.
    peaks = np.flatnonzero(is_peak & (values >= 0.5 * values.max()))
    best_value, best_x = -np.inf, 0.0
    for i in peaks:
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        found = minimize_scalar(
            lambda t: -abs(float(error(np.array([t]))[0])),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-12},
        )
        value, where = -found.fun, found.x
        if values[i] > value:  # the grid point itself beat the refinement (plateau / edge)
            value, where = values[i], grid[i]
        if value > best_value:
            best_value, best_x = value, where
    return float(best_value), float(best_x)


def normal_cdf_error_mp(x, approximation):
    """Φ(x) − approximation(x) in mpmath, the error every fit of this chapter levels (Φ units)."""
    return mp.ncdf(x) - approximation(x)


def fit_tanh_cubic(a: float | None = SQRT_2_OVER_PI, *, dps: int = 40) -> minimax.MinimaxSolution:
    """Fit Φ(x) ≈ ½[1 + tanh(a x + b x³)] by the minimax criterion (Remez, :func:`lib.minimax.remez`).

    The article's "hybrid" fit keeps ``a = √(2/π)`` from the Taylor match (local accuracy at 0) and lets
    only ``b`` minimise ``max_x |Φ(x) − ½[1 + tanh(a x + b x³)]|``; then ``b / a`` is the familiar 0.044715.
    Pass ``a=None`` to fit ``a`` and ``b`` jointly instead (three alternation points instead of two).

    Returns:
        :class:`lib.minimax.MinimaxSolution` with ``params == (a, b)``; errors in Φ units (half of erf's).
    """
    if a is None:
        return minimax.remez(lambda x, a_, b_: normal_cdf_error_mp(x, lambda v: _tanh_cdf_mp(v, a_, b_)),
                             (SQRT_2_OVER_PI, 0.0357), dps=dps)
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not a > 0:
        raise ValueError(f"`a` must be a positive number or None. Received: a={a!r}")
    with mp.workdps(dps):
        fixed_a = mp.sqrt(2 / mp.pi) if a == SQRT_2_OVER_PI else mp.mpf(a)
    fit = minimax.remez(lambda x, b_: normal_cdf_error_mp(x, lambda v: _tanh_cdf_mp(v, fixed_a, b_)),
                        (0.0357,), dps=dps)
    return dataclasses.replace(fit, params=(float(a), *fit.params), exact_params=(fixed_a, *fit.exact_params))


def fit_sigmoid_scale(*, dps: int = 40) -> minimax.MinimaxSolution:
    """Fit Φ(x) ≈ σ(λ x) by the minimax criterion (Remez); ``params == (λ,)`` (the article: λ ≈ 1.702)."""
    return minimax.remez(lambda x, scale: normal_cdf_error_mp(x, lambda v: 1 / (1 + mp.exp(-scale * v))),
                         (1.7,), dps=dps)


def _tanh_cdf_mp(x, a, b):
    return (1 + mp.tanh(a * x + b * x**3)) / 2
