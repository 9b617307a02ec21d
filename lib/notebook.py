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


def show_source(obj, *, docstring: bool = True, listing: str | None = None) -> None:
    """Display the source code of a library function, class or method as a highlighted block.

    Args:
        obj: the function, class or method.
        docstring: keep the docstring; ``False`` shows the signature and the code only, for when the
            text around the listing already says what the docstring says.
        listing: show only the lines between the comments ``# [listing NAME]`` and ``# [end listing]``
            in ``obj``'s source (the lines the text explains), under a comment naming where they come from.
    """
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (TypeError, OSError) as error:
        raise ValueError(f"`obj` must be a Python function, class or method. Received: obj={obj!r}") from error
    if not isinstance(docstring, bool):
        raise ValueError(f"`docstring` must be True or False. Received: docstring={docstring!r}")
    if listing is not None:
        source = _listing(source, listing, f"{obj.__module__}.{obj.__qualname__}")
    elif not docstring:
        source = _without_docstring(source)
    from IPython.display import Markdown, display

    display(Markdown(f"```python\n{source}```"))


def _listing(source: str, name, where: str) -> str:
    """The lines of ``source`` between ``# [listing name]`` and the next ``# [end listing]``, dedented."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"`listing` must be a non-empty string. Received: listing={name!r}")
    lines = source.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == f"# [listing {name}]"]
    if not starts:
        found = sorted({line.strip()[len("# [listing "):-1] for line in lines
                        if line.strip().startswith("# [listing ") and line.strip().endswith("]")})
        raise ValueError(f"`listing` must name a marked region of {where} (marked: {found}). "
                         f"Received: listing={name!r}")
    ends = [i for i, line in enumerate(lines) if i > starts[0] and line.strip() == "# [end listing]"]
    if not ends:
        raise ValueError(f"The region {name!r} of {where} has no `# [end listing]` line.")
    body = textwrap.dedent("".join(lines[starts[0] + 1: ends[0]]))
    return f"# from {where} (excerpt)\n{body}"


def _without_docstring(source: str) -> str:
    """``source`` with the docstring of its first function or class removed (found with ``ast``)."""
    import ast

    definition = ast.parse(source).body[0]
    body = getattr(definition, "body", [])
    if not (body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
            and isinstance(body[0].value.value, str)):
        return source
    lines = source.splitlines(keepends=True)
    return "".join(lines[: body[0].lineno - 1] + lines[body[0].end_lineno:])


def show_math(*equations, terms_per_line: int | None = None) -> None:
    r"""Display equations typeset and aligned at their ``=`` signs, one per line.

    Each item is a sympy ``Eq``, or a pair ``(left, right)`` of sympy expressions or LaTeX strings.

    Args:
        *equations: the equations, shown in this order.
        terms_per_line: break a right-hand side that is a sympy sum after every ``terms_per_line``
            terms, each further line indented under the first (``&\quad + ...``), so that a long sum
            fits a narrow column (a phone's). ``None`` keeps every sum on one line.

    >>> import sympy as sp
    >>> print(_aligned_latex([sp.Eq(sp.Symbol("a"), sp.sqrt(2) / sp.sqrt(sp.pi)), ("c", "0.0447")]))
    \begin{aligned} a &= \frac{\sqrt{2}}{\sqrt{\pi}} \\ c &= 0.0447 \end{aligned}
    >>> x, y, z = sp.symbols("x y z")
    >>> print(_aligned_latex([("s", x + y**2 - z)], terms_per_line=2))
    \begin{aligned} s &= x + y^{2} \\ &\quad - z \end{aligned}
    """
    from IPython.display import Math, display

    display(Math(_aligned_latex(equations, terms_per_line=terms_per_line)))


def _aligned_latex(equations, terms_per_line: int | None = None) -> str:
    import sympy as sp

    if not equations:
        raise ValueError("`equations` must hold at least one equation. Received: none")
    if terms_per_line is not None and (
        isinstance(terms_per_line, bool) or not isinstance(terms_per_line, int) or terms_per_line < 1
    ):
        raise ValueError(
            f"`terms_per_line` must be a positive integer or None. Received: terms_per_line={terms_per_line!r}"
        )
    rows = []
    for item in equations:
        if isinstance(item, sp.Eq):
            left, right = item.lhs, item.rhs
        elif isinstance(item, tuple) and len(item) == 2:
            left, right = item
        else:
            raise ValueError(f"each equation must be a sympy Eq or a (left, right) pair. Received: {item!r}")
        left = left if isinstance(left, str) else sp.latex(left)
        if terms_per_line is not None and isinstance(right, sp.Add):
            right = _broken_sum(right, terms_per_line)
        elif not isinstance(right, str):
            right = sp.latex(right)
        rows.append(f"{left} &= {right}")
    return "\\begin{aligned} " + " \\\\ ".join(rows) + " \\end{aligned}"


def _broken_sum(expression, terms_per_line: int) -> str:
    """The LaTeX of a sympy sum, its terms in sympy's printing order, a line break after every
    ``terms_per_line`` terms (inside an ``aligned`` environment, after a ``&=``)."""
    import sympy as sp

    pieces = []
    for index, term in enumerate(expression.as_ordered_terms()):
        negative = term.could_extract_minus_sign()
        text = ("- " if negative else "+ " if index else "") + sp.latex(-term if negative else term)
        if index == 0:
            pieces.append(text)
        elif index % terms_per_line == 0:
            pieces.append(" \\\\ &\\quad " + text)
        else:
            pieces.append(" " + text)
    return "".join(pieces)
