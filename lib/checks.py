"""Argument checks shared by the library's modules, so a bad argument gets the same clear message everywhere."""

from __future__ import annotations

import numpy as np


def check_positive_int(name, value, allow_none=False):
    """``int(value)`` if ``value`` is a positive integer (or ``None`` when ``allow_none``); else ``ValueError``
    naming the argument.

    >>> check_positive_int("num_heads", 4)
    4
    >>> check_positive_int("num_heads", 0)
    Traceback (most recent call last):
    ...
    ValueError: `num_heads` must be a positive integer. Received: num_heads=0
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        expected = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return int(value)
