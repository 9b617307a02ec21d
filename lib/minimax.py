"""Best uniform (minimax, Chebyshev) approximation by the Remez exchange algorithm, in mpmath.

The problem is ``min_θ max_x |e(x, θ)|`` for an error function ``e`` with ``n`` parameters θ. Chebyshev's
theorem characterises the answer: at the best θ the error **equioscillates**, reaching its maximum
magnitude ``E`` at ``n + 1`` points ``x_0 < … < x_n`` with alternating signs,

    e(x_i, θ) = ± (−1)^i E,        i = 0 … n,

and any other θ has a larger maximum somewhere. (The theorem is exact for the linear families of
polynomial approximation and holds for the smooth one-to-three-parameter families of the GELU chapter,
whose extrema it checks.) Remez's algorithm looks for that picture directly:

1. **Level**: given ``n + 1`` trial points, solve the ``n + 1`` equations ``e(x_i, θ) = (−1)^i h`` for
   ``(θ, h)`` (Newton's method; ``mpmath.findroot``).
2. **Exchange**: locate every local extremum of ``e(·, θ)``, keep an alternating run of ``n + 1`` of the
   largest that contains the global maximum, and make them the new trial points.
3. Stop when the largest extremum exceeds ``|h|`` by less than the tolerance: then every trial point sits
   at the maximum, the error equioscillates, and ``θ`` is the minimax fit to working precision.

A minimiser such as Brent's or Powell's method on ``max_x |e|`` struggles here, because that
function has a kink exactly at its minimum; the equations of step 1 are smooth and Newton converges
quadratically. Everything runs in ``mpmath`` at ``dps`` decimal digits, so the constants come out
far beyond double precision.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import mpmath as mp
import numpy as np


@dataclasses.dataclass(frozen=True)
class MinimaxSolution:
    """A minimax fit: the parameters, the equioscillation points and the levelled error.

    Attributes:
        params: the fitted parameters, as Python floats.
        max_error: ``max_x |e(x, params)|``, the levelled error ``E``.
        points: the ``n + 1`` alternation points ``x_0 < … < x_n``.
        errors: ``e(x_i, params)`` at those points (equal magnitudes, alternating signs).
        iterations: Remez iterations used.
        exact_params: the parameters as ``mpmath.mpf`` at the working precision.
    """

    params: tuple
    max_error: float
    points: tuple
    errors: tuple
    iterations: int
    exact_params: tuple = dataclasses.field(repr=False)

    @property
    def argmax(self) -> float:
        """Where the error is largest (the first alternation point of largest magnitude)."""
        return self.points[int(np.argmax(np.abs(self.errors)))]


def local_extrema(error: Callable, x_min: float, x_max: float, *, step: float = 0.01) -> list[tuple]:
    """The candidate extrema of ``error`` on ``[x_min, x_max]``, as ``(x, error(x))`` sorted by ``x``:
    both ends of the interval and every interior point where the derivative changes sign.

    A grid of spacing ``step`` brackets each sign change of the derivative (``mpmath.diff``); each bracket
    is then solved to working precision.
    """
    _check_interval(x_min, x_max, step)

    def slope(x):
        return mp.diff(error, x)

    grid = [mp.mpf(x_min) + i * mp.mpf(step) for i in range(int(round((x_max - x_min) / step)) + 1)]
    slopes = [slope(x) for x in grid]
    found = [grid[0]]
    for left, right, s_left, s_right in zip(grid, grid[1:], slopes, slopes[1:]):
        if s_left == 0 and left != grid[0]:
            found.append(left)
        elif s_left * s_right < 0:
            found.append(mp.findroot(slope, (left, right), solver="anderson"))
    found.append(grid[-1])
    return [(x, error(x)) for x in found]


def alternating_run(extrema: Sequence[tuple], count: int) -> list[tuple]:
    """Remez's exchange rule: ``count`` extrema with alternating signs that include the largest one.

    Neighbours of one sign are merged (the larger survives); then, while the run is too long, the smaller
    of its two ends is dropped, so the global maximum always stays in.
    """
    run = []
    for x, value in extrema:
        if value == 0:
            continue
        if run and mp.sign(run[-1][1]) == mp.sign(value):
            if abs(value) > abs(run[-1][1]):
                run[-1] = (x, value)
        else:
            run.append((x, value))
    if len(run) < count:
        raise ValueError(
            f"The error has only {len(run)} alternating extrema on the interval, fewer than the {count} "
            "an equioscillating fit needs: widen the interval or start from better parameters."
        )
    while len(run) > count:
        run.pop(0 if abs(run[0][1]) < abs(run[-1][1]) else -1)
    return run


def remez(
    error: Callable,
    initial: Sequence[float],
    *,
    x_min: float = 0.0,
    x_max: float = 10.0,
    step: float = 0.01,
    dps: int = 40,
    tolerance: float = 1e-25,
    max_iterations: int = 60,
) -> MinimaxSolution:
    """Fit ``min_θ max_{x ∈ [x_min, x_max]} |error(x, *θ)|`` by Remez's exchange algorithm.

    Args:
        error: ``error(x, *params)`` written with ``mpmath`` functions (``mp.erf``, ``mp.tanh``, ...).
        initial: a starting guess for the parameters (any value whose error has ``n + 1`` alternating
            extrema on the interval; a Taylor fit is usually enough).
        x_min, x_max, step: the interval, and the grid that brackets the extrema (fine enough that no
            two extrema share a cell).
        dps: working precision in decimal digits.
        tolerance: stop when the largest extremum exceeds the levelled error by less than this, relatively.
        max_iterations: give up (``RuntimeError``) after this many exchanges.

    Returns:
        :class:`MinimaxSolution`.
    """
    initial = tuple(initial)
    if not initial or not all(isinstance(v, (int, float, np.floating, mp.mpf)) for v in initial):
        raise ValueError(f"`initial` must be a non-empty sequence of numbers. Received: initial={initial!r}")
    if not callable(error):
        raise ValueError(f"`error` must be callable as error(x, *params). Received: error={error!r}")
    _check_interval(x_min, x_max, step)
    for name, value, low in (("dps", dps, 15), ("max_iterations", max_iterations, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}. Received: {name}={value!r}")
    if not 0 < tolerance < 1:
        raise ValueError(f"`tolerance` must be in (0, 1). Received: tolerance={tolerance!r}")

    count = len(initial) + 1
    with mp.workdps(dps):
        params = [mp.mpf(v) for v in initial]
        run = alternating_run(local_extrema(lambda x: error(x, *params), x_min, x_max, step=step), count)
        for iteration in range(1, max_iterations + 1):
            points = [x for x, _ in run]
            sign = mp.sign(run[0][1])

            def levelled(*unknowns, points=points, sign=sign):
                *theta, h = unknowns
                return [error(x, *theta) - sign * (-1) ** i * h for i, x in enumerate(points)]

            solution = mp.findroot(levelled, params + [abs(run[0][1])])
            *params, level = (solution[i] for i in range(count))
            extrema = local_extrema(lambda x: error(x, *params), x_min, x_max, step=step)
            run = alternating_run(extrema, count)
            largest = max(abs(value) for _, value in extrema)
            if largest - abs(level) <= tolerance * abs(level):
                break
        else:
            raise RuntimeError(f"Remez did not level the error within max_iterations={max_iterations}.")
        return MinimaxSolution(
            params=tuple(float(p) for p in params),
            max_error=float(largest),
            points=tuple(float(x) for x, _ in run),
            errors=tuple(float(value) for _, value in run),
            iterations=iteration,
            exact_params=tuple(params),
        )


def max_abs_error_mp(error: Callable, x_min: float = 0.0, x_max: float = 10.0, *, step: float = 0.01,
                     dps: int = 40) -> float:
    """``max_x |error(x)|`` on ``[x_min, x_max]`` (its extrema and ends), in mpmath at ``dps`` digits.

    Used to compare constants whose maximum errors differ far below double precision (such as the
    article's printed digits against the exact minimax fit).
    """
    with mp.workdps(dps):
        return max(abs(value) for _, value in local_extrema(error, x_min, x_max, step=step))


def _check_interval(x_min, x_max, step):
    if not (isinstance(x_min, (int, float)) and isinstance(x_max, (int, float)) and x_min < x_max):
        raise ValueError(f"`x_min` must be below `x_max`. Received: x_min={x_min!r}, x_max={x_max!r}")
    if not (isinstance(step, (int, float)) and 0 < step < x_max - x_min):
        raise ValueError(f"`step` must be in (0, x_max - x_min). Received: step={step!r}")
