"""Comparing two methods honestly: paired differences over seeds, and bootstraps over sequences.

The book's verdicts compare methods trained on the same data from the same seeds. Two rules:

* A difference between methods A and B is the **paired** difference ``d_s = A_s - B_s`` over seeds
  ``s``, reported with a confidence interval from Student's t distribution (:func:`paired_difference`),
  never as "inside the spread" of the two columns.
* Positions within one sequence are not independent observations. An error rate pooled over
  positions gets its interval by resampling whole sequences (:func:`bootstrap_ratio_difference`).

A claimed tie needs an equivalence bound fixed before the run: :func:`paired_difference` reports
whether the interval lies inside ``(-bound, bound)``.
"""

from __future__ import annotations

import math

import numpy as np


def _vector(name, values, minimum_length=1):
    try:
        if isinstance(values, (str, bytes)):
            raise TypeError
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a 1-D sequence of numbers. Received: {name}={values!r}") from None
    if array.ndim != 1 or len(array) < minimum_length:
        raise ValueError(f"`{name}` must be a 1-D sequence of at least {minimum_length} numbers. "
                         f"Received: {name} of shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` must hold finite numbers. Received: {name}={array.tolist()}")
    return array


def _check_result(result, keys):
    if not isinstance(result, dict):
        raise TypeError(f"`result` must be the dict of paired_difference or bootstrap_ratio_difference. "
                        f"Received: result={result!r}")
    missing = [key for key in keys if key not in result]
    if missing:
        raise ValueError(f"`result` must hold {list(keys)} (a paired_difference or bootstrap result). "
                         f"Received: result with keys {sorted(result)}")


def _check_number(name, value):
    from lib.checks import check_number

    return check_number(name, value)


def _check_int(name, value, minimum):
    from lib.checks import check_int

    return check_int(name, value, minimum=minimum)


def _check_confidence(confidence):
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be a number in (0, 1). Received: confidence={confidence!r}")
    return float(confidence)


def paired_difference(a, b, *, confidence=0.95, equivalence_bound=None) -> dict:
    """The mean of the paired differences ``a_s - b_s`` with a t confidence interval.

    With ``n`` pairs, mean difference ``d̄`` and standard deviation ``s_d``, the interval is
    ``d̄ ± t_{(1+c)/2, n-1} s_d / √n``; the two-sided p-value tests ``d̄ = 0`` (a paired t-test).

    Args:
        a, b: the two methods' scores, one per seed, in the same seed order (at least two pairs).
        confidence: the interval's coverage, in (0, 1).
        equivalence_bound: optional ``δ > 0`` stated before the run; the result then says whether
            the whole interval lies inside ``(-δ, δ)`` (a tie that the data support).

    Returns:
        A dict of floats: ``mean``, ``low``, ``high``, ``std`` (of the differences), ``p_value``,
        ``n``, ``confidence``, and with a bound also ``equivalence_bound`` and ``equivalent`` (bool).

    Raises:
        ValueError: for lengths that differ or are below 2, non-finite values, a bad ``confidence``
            or a bound that is not a positive number.

    Example:

    >>> r = paired_difference([0.90, 0.92, 0.91], [0.88, 0.90, 0.90])
    >>> round(r["mean"], 4), r["low"] > 0
    (0.0167, True)
    """
    from scipy import stats

    a, b = _vector("a", a, 2), _vector("b", b, 2)
    if len(a) != len(b):
        raise ValueError(f"`a` and `b` must pair up one to one. Received: len(a)={len(a)}, len(b)={len(b)}")
    confidence = _check_confidence(confidence)
    differences = a - b
    n = len(differences)
    mean, std = float(differences.mean()), float(differences.std(ddof=1))
    if std == 0:
        low = high = mean
        p_value = 1.0 if mean == 0 else 0.0
    else:
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
        p_value = float(2 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))
    result = {"mean": mean, "low": low, "high": high, "std": std, "p_value": p_value, "n": n,
              "confidence": confidence}
    if equivalence_bound is not None:
        if isinstance(equivalence_bound, bool) or not isinstance(equivalence_bound, (int, float)) \
                or not equivalence_bound > 0:
            raise ValueError("`equivalence_bound` must be a positive number or None. "
                             f"Received: equivalence_bound={equivalence_bound!r}")
        result["equivalence_bound"] = float(equivalence_bound)
        result["equivalent"] = bool(-equivalence_bound < low and high < equivalence_bound)
    return result


def bootstrap_ratio_difference(numerator_a, numerator_b, denominator, *, confidence=0.95, resamples=2000,
                               seed=0) -> dict:
    """``(Σ a_i - Σ b_i) / Σ n_i`` with a percentile interval from resampling the units ``i``.

    Use it for rates pooled over the positions of many sequences: unit ``i`` is one sequence with
    ``n_i`` positions, of which ``a_i`` are errors under one condition and ``b_i`` under the other
    (the same positions). Resampling whole sequences keeps positions of one sequence together.

    Args:
        numerator_a, numerator_b, denominator: one number per unit, equal lengths; the denominators
            are non-negative and not all zero.
        confidence: the interval's coverage, in (0, 1).
        resamples: bootstrap resamples (at least 100).
        seed: seed of the resampling.

    Returns:
        A dict: ``difference``, ``low``, ``high``, ``rate_a``, ``rate_b``, ``units``, ``confidence``.

    Example:

    >>> r = bootstrap_ratio_difference([1, 2, 1, 2], [0, 1, 1, 1], [3, 3, 3, 3], resamples=500)
    >>> round(r["difference"], 4), r["low"] <= r["difference"] <= r["high"]
    (0.25, True)
    """
    a = _vector("numerator_a", numerator_a)
    b = _vector("numerator_b", numerator_b)
    n = _vector("denominator", denominator)
    if not len(a) == len(b) == len(n):
        raise ValueError("`numerator_a`, `numerator_b` and `denominator` must have one value per unit. "
                         f"Received: lengths {len(a)}, {len(b)} and {len(n)}")
    if (n < 0).any() or n.sum() <= 0:
        raise ValueError("`denominator` must be non-negative with a positive total. "
                         f"Received: total {n.sum()}, minimum {n.min()}")
    confidence = _check_confidence(confidence)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"`resamples` must be an integer >= 100. Received: resamples={resamples!r}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(n), size=(resamples, len(n)))
    totals = n[draws].sum(axis=1)
    differences = (a[draws].sum(axis=1) - b[draws].sum(axis=1)) / np.maximum(totals, 1e-300)
    tail = (1 - confidence) / 2
    return {"difference": float((a.sum() - b.sum()) / n.sum()),
            "low": float(np.quantile(differences, tail)), "high": float(np.quantile(differences, 1 - tail)),
            "rate_a": float(a.sum() / n.sum()), "rate_b": float(b.sum() / n.sum()), "units": int(len(n)),
            "confidence": confidence}


def interval_text(result: dict, *, scale: float = 1.0, digits: int = 2) -> str:
    """``"+0.52 [+0.14, +0.90]"``: a :func:`paired_difference` (or bootstrap) result, scaled, for tables.

    >>> interval_text({"mean": 0.0052, "low": 0.0014, "high": 0.009}, scale=100)
    '+0.52 [+0.14, +0.90]'
    """
    _check_result(result, ("low", "high"))
    if "mean" not in result and "difference" not in result:
        raise ValueError("`result` must hold 'mean' or 'difference' (a paired_difference or bootstrap result). "
                         f"Received: result with keys {sorted(result)}")
    scale = _check_number("scale", scale)
    digits = _check_int("digits", digits, 0)
    centre = result["mean"] if "mean" in result else result["difference"]
    return (f"{scale * centre:+.{digits}f} [{scale * result['low']:+.{digits}f}, "
            f"{scale * result['high']:+.{digits}f}]")


def sign_of_interval(result: dict) -> str:
    """``"above zero"``, ``"below zero"`` or ``"includes zero"``: what an interval says about a difference.

    >>> sign_of_interval({"low": -0.1, "high": 0.3})
    'includes zero'
    """
    _check_result(result, ("low", "high"))
    if result["low"] > 0:
        return "above zero"
    if result["high"] < 0:
        return "below zero"
    return "includes zero"
