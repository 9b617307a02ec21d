"""One figure style for the whole book.

Every chapter calls :func:`use_book_style` once and draws with :func:`figure`, so plots share
fonts, sizes, colours and grid. Colours are assigned by *role* (the exact function, the
article's method, the baseline...) rather than by position, so "exact" has the same colour in
every chapter.
"""

from __future__ import annotations

import matplotlib as mpl

ROLE_COLORS = {
    "exact": "#222222",
    "reference": "#222222",
    "baseline": "#7f7f7f",
    "article": "#1f77b4",
    "tanh": "#1f77b4",
    "sigmoid": "#d62728",
    "taylor": "#ff7f0e",
    "alternative": "#2ca02c",
    "ours": "#9467bd",
}
"""Colour of each role; unknown roles fall back to matplotlib's cycle."""

BOOK_STYLE = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
}


def use_book_style() -> None:
    """Apply the book's matplotlib style (idempotent)."""
    mpl.rcParams.update(BOOK_STYLE)


def color(role: str) -> str | None:
    """The colour of a role such as ``"exact"`` or ``"tanh"`` (``None`` lets matplotlib choose)."""
    if not isinstance(role, str):
        raise ValueError(f"`role` must be a string. Received: role={role!r}")
    return ROLE_COLORS.get(role)


def figure(ncols: int = 1, nrows: int = 1, *, width: float | None = None, height: float | None = None):
    """Create a figure in the book style and return ``(fig, axes)``.

    Args:
        ncols, nrows: the grid of panels. ``axes`` is a single Axes for one panel, else an array.
        width, height: size in inches; by default 6.4 wide and 3.6 tall per row of panels.
    """
    for name, value in (("ncols", ncols), ("nrows", nrows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    import matplotlib.pyplot as plt

    use_book_style()
    base_width, base_height = BOOK_STYLE["figure.figsize"]
    size = (width or (base_width if ncols == 1 else 3.6 * ncols), height or base_height * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, layout="constrained")
    return fig, axes


def seed_curves(ax, curves, key: str, *, color: str | None = None, label: str | None = None, linestyle: str = "-",
                x: str = "epoch"):
    """Plot a learning curve over seeds: each seed thin, the mean over the seeds still running bold.

    Args:
        ax: the matplotlib Axes.
        curves: one curve per seed, each a list of dicts with ``"epoch"`` and ``key`` (as
            ``lib.training.train_with_early_stopping`` returns them); seeds may stop at different epochs.
        key: the quantity to plot.
        color, label, linestyle: passed to matplotlib (the label goes on the mean line).
        x: the key of the horizontal position in each row (``"step"`` for curves logged by step); the mean
            is drawn at the positions of the longest curve.
    """
    import numpy as np

    if not curves or any(not curve for curve in curves):
        raise ValueError(f"`curves` must hold one non-empty curve per seed. Received: {len(curves)} curves")
    for curve in curves:
        ax.plot([row[x] for row in curve], [row[key] for row in curve], color=color, alpha=0.25,
                linewidth=0.8, linestyle=linestyle)
    longest = max(curves, key=len)
    mean = [np.mean([curve[i][key] for curve in curves if len(curve) > i]) for i in range(len(longest))]
    ax.plot([row[x] for row in longest], mean, color=color, label=label, linestyle=linestyle)
