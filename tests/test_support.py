"""Tests of the small support modules: plotting, notebook helpers and benchmarking."""

import matplotlib

matplotlib.use("Agg")

import pytest

from lib import benchmarking, notebook, plotting


def test_figure_uses_book_style():
    fig, axes = plotting.figure(ncols=2)
    assert len(axes) == 2
    assert matplotlib.rcParams["axes.spines.top"] is False
    assert plotting.color("exact") == plotting.ROLE_COLORS["exact"]
    assert plotting.color("something new") is None


@pytest.mark.parametrize("kwargs", [{"ncols": 0}, {"nrows": 1.5}])
def test_figure_rejects_bad_grids(kwargs):
    with pytest.raises(ValueError, match="must be a positive integer"):
        plotting.figure(**kwargs)


def test_seed_curves_draws_each_seed_and_the_mean_at_the_logged_positions():
    import matplotlib.pyplot as plt

    fig, ax = plotting.figure()
    by_epoch = [[{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}], [{"epoch": 1, "loss": 4.0}]]
    plotting.seed_curves(ax, by_epoch, "loss", label="mean")
    assert ax.lines[-1].get_xdata().tolist() == [1, 2] and ax.lines[-1].get_ydata().tolist() == [3.0, 1.0]
    by_step = [[{"step": 100, "loss": 2.0}, {"step": 200, "loss": 1.0}], [{"step": 100, "loss": 4.0},
                                                                         {"step": 200, "loss": 3.0}]]
    plotting.seed_curves(ax, by_step, "loss", x="step")
    assert ax.lines[-1].get_xdata().tolist() == [100, 200] and ax.lines[-1].get_ydata().tolist() == [3.0, 2.0]
    assert len(ax.lines) == 3 + 3
    plt.close(fig)


def test_glue_returns_nothing_and_validates_names():
    assert notebook.glue("gelu_c", 0.5) is None
    with pytest.raises(ValueError, match="`name` must be a non-empty string"):
        notebook.glue("has space", 1)


def test_glue_stores_numpy_scalars_as_python_numbers(monkeypatch):
    import numpy as np

    stored = {}
    import myst_nb

    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=False: stored.update({name: value}))
    notebook.glue("x", np.float64(0.25))
    assert type(stored["x"]) is float and stored["x"] == 0.25


def test_glue_closes_a_glued_figure_so_it_is_not_shown_twice(monkeypatch):
    import matplotlib.pyplot as plt
    import myst_nb

    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=False: None)
    fig, _ = plotting.figure()
    assert plt.fignum_exists(fig.number)
    notebook.glue("a_figure", fig)
    assert not plt.fignum_exists(fig.number)


def test_show_source_rejects_non_code():
    with pytest.raises(ValueError, match="`obj` must be a Python function"):
        notebook.show_source(3)


def test_compare_reports_ratios_to_the_reference():
    table = benchmarking.compare({"a": lambda: sum(range(10)), "b": lambda: sum(range(10_000))},
                                 reference="a", repeats=3, warmup=0, rounds=2)
    assert table.loc["a", "ratio"] == 1.0
    assert table.loc["b", "ratio"] > 1.0


def test_compare_validates_arguments():
    with pytest.raises(ValueError, match="`reference` must be one of the candidates"):
        benchmarking.compare({"a": lambda: None}, reference="b")
    with pytest.raises(ValueError, match="`repeats` must be an integer >= 1"):
        benchmarking.time_call(lambda: None, repeats=0)


def test_show_source_can_leave_out_the_docstring(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda value: shown.append(value.data))
    notebook.show_source(plotting.color, docstring=False)
    notebook.show_source(plotting.color)
    without, with_docstring = shown
    assert "def color(role: str)" in without and "The colour of a role" not in without
    assert "The colour of a role" in with_docstring
    assert "ROLE_COLORS.get(role)" in without
    with pytest.raises(ValueError, match="`docstring` must be True or False"):
        notebook.show_source(plotting.color, docstring="no")


def test_show_math_rejects_what_it_cannot_typeset():
    with pytest.raises(ValueError, match="at least one equation"):
        notebook.show_math()
    with pytest.raises(ValueError, match="a sympy Eq or a"):
        notebook.show_math("a = b")


def test_show_source_shows_a_marked_listing_and_names_the_marks_it_has(monkeypatch):
    import IPython.display

    from lib import attention

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda value: shown.append(value.data))
    notebook.show_source(attention.fit_attention_maps, listing="training")
    (excerpt,) = shown
    assert excerpt.startswith("```python\n# from lib.attention.fit_attention_maps (excerpt)\n")
    assert "def losses():" in excerpt and "optimizer.apply(" in excerpt
    assert "_DropMessages" not in excerpt and "Args:" not in excerpt  # the plumbing and docstring stay out
    assert "# [listing" not in excerpt and "# [end listing]" not in excerpt
    with pytest.raises(ValueError, match=r"`listing` must name a marked region .*\['training'\]"):
        notebook.show_source(attention.fit_attention_maps, listing="nothing")
    with pytest.raises(ValueError, match="`listing` must be a non-empty string"):
        notebook.show_source(attention.fit_attention_maps, listing="")


def test_show_math_breaks_a_long_sum_over_lines():
    import sympy as sp

    x, y, z = sp.symbols("x y z")
    long_sum = x**3 + 2 * x * y - y**2 + z
    broken = notebook._aligned_latex([("s", long_sum), ("t", x)], terms_per_line=2)
    one_line = notebook._aligned_latex([("s", long_sum), ("t", x)])
    assert broken == (r"\begin{aligned} s &= x^{3} + 2 x y \\ &\quad - y^{2} + z \\ t &= x \end{aligned}")
    # The same terms in the same order as sympy prints the sum on one line.
    assert one_line == rf"\begin{{aligned}} s &= {sp.latex(long_sum)} \\ t &= x \end{{aligned}}"
    assert broken.replace(r" \\ &\quad", "") == one_line
    # A right side that is not a sum, or a sum short enough, stays on its line.
    assert notebook._aligned_latex([("p", x * (y + z)), ("q", x + y)], terms_per_line=2) == (
        r"\begin{aligned} p &= x \left(y + z\right) \\ q &= x + y \end{aligned}")
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"`terms_per_line` must be a positive integer or None"):
            notebook.show_math(("s", long_sum), terms_per_line=bad)
