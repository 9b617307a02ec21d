"""Remez's exchange algorithm (lib.minimax) against closed-form best approximations, and the GELU fits."""

import mpmath as mp
import pytest

from lib import activations, minimax


def test_best_line_through_exp_matches_the_closed_form():
    # min over a, b of max_{x in [0, 1]} |e^x - a - b x|: the error equioscillates at 0, ln(e - 1), 1
    # with b = e - 1 and a = (e - (e - 1) ln(e - 1)) / 2.
    fit = minimax.remez(lambda x, a, b: mp.exp(x) - a - b * x, (0.9, 1.7), x_min=0.0, x_max=1.0, step=0.05)
    e = mp.e
    a, b = fit.params
    assert b == pytest.approx(float(e - 1), abs=1e-14)
    assert a == pytest.approx(float((e - (e - 1) * mp.log(e - 1)) / 2), abs=1e-14)
    assert fit.points == pytest.approx((0.0, float(mp.log(e - 1)), 1.0), abs=1e-12)
    assert fit.max_error == pytest.approx(abs(float(e - a - b)), rel=1e-12)


def test_chebyshev_polynomial_is_the_best_error_of_a_cubic():
    # x^3 - (3/4) x = T_3(x) / 4 is the smallest cubic of leading coefficient 1 on [-1, 1].
    fit = minimax.remez(lambda x, a, c: x**3 - a * x - c, (0.5, 0.1), x_min=-1.0, x_max=1.0, step=0.05)
    assert fit.params == pytest.approx((0.75, 0.0), abs=1e-14)
    assert fit.max_error == pytest.approx(0.25, abs=1e-14)


def _tanh_family(a, b):
    return lambda v: (1 + mp.tanh(a * v + b * v**3)) / 2


def _sigmoid_family(scale):
    return lambda v: 1 / (1 + mp.exp(-scale * v))


@pytest.mark.parametrize("fit, free, family", [
    (activations.fit_tanh_cubic, [1], _tanh_family),
    (activations.fit_sigmoid_scale, [0], _sigmoid_family),
    (lambda: activations.fit_tanh_cubic(a=None), [0, 1], _tanh_family),
], ids=["tanh", "sigmoid", "tanh-free"])
def test_gelu_fits_equioscillate_and_any_nudge_raises_the_maximum(fit, free, family):
    solution = fit()
    assert len(solution.points) == len(free) + 1
    errors = solution.errors
    assert all(x * y < 0 for x, y in zip(errors, errors[1:]))  # alternating signs
    assert max(map(abs, errors)) - min(map(abs, errors)) < 1e-15 * solution.max_error  # equal magnitudes
    with mp.workdps(40):
        params = list(solution.exact_params)

        def maximum(values):
            return minimax.max_abs_error_mp(lambda x: activations.normal_cdf_error_mp(x, family(*values)))

        best = maximum(params)
        assert abs(best - solution.max_error) < 1e-15 * solution.max_error  # max_error is a float64
        for i in free:
            for nudge in (-1e-12, 1e-12):
                moved = params.copy()
                moved[i] += nudge
                assert maximum(moved) > best


def test_the_articles_printed_constants_have_a_larger_maximum_error_than_the_exact_fit():
    # Su (2020) prints b = 0.035677337314877385 and λ = 1.7017449256323682 from a grid search.
    tanh_fit, sigmoid_fit = activations.fit_tanh_cubic(), activations.fit_sigmoid_scale()
    a = tanh_fit.exact_params[0]
    with mp.workdps(40):
        article_tanh = minimax.max_abs_error_mp(lambda x: activations.normal_cdf_error_mp(
            x, _tanh_family(a, mp.mpf("0.035677337314877385"))))
        article_sigmoid = minimax.max_abs_error_mp(lambda x: activations.normal_cdf_error_mp(
            x, _sigmoid_family(mp.mpf("1.7017449256323682"))))
    assert article_tanh > tanh_fit.max_error
    assert article_sigmoid > sigmoid_fit.max_error
    # and the published four-to-six-digit constants are these fits, rounded
    assert round(tanh_fit.params[1] / tanh_fit.params[0], 6) == activations.TANH_CUBIC_COEFFICIENT
    assert round(sigmoid_fit.params[0], 3) == activations.SIGMOID_SCALE


@pytest.mark.parametrize("kwargs, match", [
    ({"initial": ()}, "`initial` must be a non-empty sequence of numbers"),
    ({"initial": ("a",)}, "`initial` must be a non-empty sequence of numbers"),
    ({"error": 3}, "`error` must be callable"),
    ({"x_min": 1.0, "x_max": 1.0}, "`x_min` must be below `x_max`"),
    ({"step": 0.0}, r"`step` must be in \(0, x_max - x_min\)"),
    ({"dps": 10}, "`dps` must be an integer >= 15"),
    ({"max_iterations": 0}, "`max_iterations` must be an integer >= 1"),
    ({"tolerance": 0.0}, r"`tolerance` must be in \(0, 1\)"),
])
def test_bad_arguments_are_named(kwargs, match):
    arguments = {"error": lambda x, c: x - c, "initial": (0.3,), "x_min": 0.0, "x_max": 1.0, "step": 0.1}
    arguments.update(kwargs)
    error = arguments.pop("error")
    with pytest.raises(ValueError, match=match):
        minimax.remez(error, **arguments)


def test_too_few_extrema_is_a_clear_error():
    # a monotone error has its ends as its only extrema: with two parameters three are needed
    with pytest.raises(ValueError, match="only 1 alternating extrema on the interval, fewer than the 3"):
        minimax.remez(lambda x, a, b: mp.exp(x) - a - b * x, (0.5, 0.0), x_min=0.0, x_max=1.0, step=0.1)
