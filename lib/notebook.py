"""Small helpers that chapters use to put computed values and library code on the page.

* :func:`glue` stores a computed number for the prose (``{glue:text}`` in MyST). In Jupyter Book it
  is myst-nb's ``glue``; on Colab, where myst-nb is usually missing, it falls back to plain display,
  so a chapter runs the same everywhere.
* :func:`show_source` renders the *real* source of a library object, so the text a reader sees and
  the code that runs cannot drift apart.
"""

from __future__ import annotations

import inspect
import textwrap


def glue(name: str, value, display: bool = False) -> None:
    """Record ``value`` under ``name`` for the book's prose.

    Returns ``None`` (like myst-nb's ``glue``), so a ``glue(...)`` on a cell's last line shows nothing.

    Args:
        name: the key used in ``{glue:text}`name``` (letters, digits, ``_`` and ``-``).
        value: a number, string, figure or DataFrame.
        display: also show the value in the cell's output.
    """
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(
            "`name` must be a non-empty string of letters, digits, '_' or '-'. " f"Received: name={name!r}"
        )
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        # NumPy/TensorFlow scalars: NumPy 2 writes ``np.float64(0.1)``, which the prose's
        # ``{glue:text}`key:.3f``` cannot parse; a Python number can be formatted.
        value = value.item() if not hasattr(value, "numpy") else value.numpy().item()
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # Colab and plain Jupyter: show it only when asked.
        if display:
            from IPython.display import display as ipy_display

            ipy_display(value)
    else:
        myst_glue(name, value, display=display)
    _close_if_figure(value)


def _close_if_figure(value) -> None:
    """Close a glued matplotlib figure, so the inline backend does not show it a second time, uncaptioned."""
    import sys

    if "matplotlib.pyplot" not in sys.modules:
        return
    from matplotlib.figure import Figure

    if isinstance(value, Figure):
        import matplotlib.pyplot as plt

        plt.close(value)


def show_source(obj) -> None:
    """Display the source code of a library function, class or method as a highlighted block."""
    try:
        source = inspect.getsource(obj)
    except (TypeError, OSError) as error:
        raise ValueError(f"`obj` must be a Python function, class or method. Received: obj={obj!r}") from error
    from IPython.display import Markdown, display

    display(Markdown(f"```python\n{textwrap.dedent(source)}```"))
