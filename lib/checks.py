"""Argument checks shared by the library's modules, so a bad argument gets the same clear message everywhere.

Every check raises a ``ValueError`` (or a ``TypeError`` where the kind of object is wrong) whose message names
the argument, says what was expected and echoes what was received, in the form Keras uses::

    `num_heads` must be a positive integer. Received: num_heads=0

Checks of *shapes* run on the host while a function is traced, so they hold in eager mode, in a
``tf.function`` and under XLA alike. Checks of *values* (ids in range, no NaN) need the values: they run on
the host in eager mode, and become ``tf.debugging`` assertions in a traced TensorFlow function. **A graph
compiled by XLA cannot raise on a value**: TensorFlow drops the assertions when it compiles, and Keras
compiles ``fit``/``predict`` with XLA by default on a GPU (``jit_compile="auto"``). There an out-of-range id
is silently clamped or read as zeros. Check the data once on the host before such a run with
:func:`validate_ids`, which is cheap (one pass of ``min``/``max`` over the arrays).
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "check_array", "check_bool", "check_ids", "check_int", "check_non_negative_int", "check_number",
    "check_finite", "check_one_of", "check_positive_int", "check_rate", "check_same_length", "check_sequences",
    "check_strings", "check_tensor", "is_concrete",
    "validate_ids",
]


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def check_int(name, value, minimum=None, maximum=None, allow_none=False):
    """``int(value)`` for an integer (not a bool) in ``[minimum, maximum]``; ``None`` passes when ``allow_none``.

    >>> check_int("beam_size", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: `beam_size` must be an integer >= 1. Received: beam_size=0
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
            minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            expected = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            expected = f"an integer >= {minimum}"
        elif maximum is not None:
            expected = f"an integer <= {maximum}"
        else:
            expected = "an integer"
        expected += " or None" if allow_none else ""
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={_short(value)}")
    return int(value)


def check_non_negative_int(name, value):
    """``int(value)`` for an integer >= 0.

    >>> check_non_negative_int("num_segments", -1)
    Traceback (most recent call last):
    ...
    ValueError: `num_segments` must be a non-negative integer. Received: num_segments=-1
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer. Received: {name}={_short(value)}")
    return int(value)


def check_bool(name, value, expected="a bool"):
    """``bool(value)`` for a Python or NumPy bool only: a string such as ``'no'`` is not a flag.

    >>> check_bool("share_layers", "no")
    Traceback (most recent call last):
    ...
    ValueError: `share_layers` must be a bool. Received: share_layers='no'
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={_short(value)}")
    return bool(value)


def check_number(name, value, low=-math.inf, high=math.inf, *, low_open=False, high_open=False, allow_none=False,
                 allow_inf=False, hint="", message=None):
    """``float(value)`` for a real number (not a bool, never NaN) between ``low`` and ``high``.

    ``low_open``/``high_open`` exclude the end points; ±inf is refused unless ``allow_inf``.

    >>> check_number("epsilon", -0.5, 0.0)
    Traceback (most recent call last):
    ...
    ValueError: `epsilon` must be a finite number in [0.0, inf). Received: epsilon=-0.5
    """
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if ok:
        v = float(value)
        ok = (not math.isnan(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
              and (allow_inf or math.isfinite(v)))
    if not ok:
        left = "(" if low_open or math.isinf(low) else "["
        right = ")" if high_open or math.isinf(high) else "]"
        expected = ("a number" if allow_inf else "a finite number") + f" in {left}{low}, {high}{right}"
        expected += " or None" if allow_none else ""
        expected = message or expected
        raise ValueError(f"`{name}` must be {expected}{hint}. Received: {name}={_short(value)}")
    return float(value)


def check_rate(name, value, *, include_one=False):
    """A rate in ``[0, 1)`` (``[0, 1]`` with ``include_one``), as a float.

    >>> check_rate("dropout", 1.0)
    Traceback (most recent call last):
    ...
    ValueError: `dropout` must be a float in [0, 1). Received: dropout=1.0
    """
    interval = "[0, 1]" if include_one else "[0, 1)"
    return check_number(name, value, 0.0, 1.0, high_open=not include_one, message=f"a float in {interval}")


def check_one_of(name, value, options):
    """``value`` if it is one of ``options`` (compared with ``==``, and only for hashable values).

    >>> check_one_of("penalty", "l3", ("norm", "squared"))
    Traceback (most recent call last):
    ...
    ValueError: `penalty` must be one of ('norm', 'squared'). Received: penalty='l3'
    """
    try:
        found = any(value == option and type(value) is type(option) or (
            value is option) for option in options)
    except Exception:  # noqa: BLE001 - arrays and other objects that do not compare to a bool
        found = False
    if not found:
        raise ValueError(f"`{name}` must be one of {tuple(options)}. Received: {name}={_short(value)}")
    return value


def check_strings(name, value):
    """A list of strings from a list, tuple or other iterable of strings; a single string is refused, since
    reading it as a sequence would make one item of every character.

    >>> check_strings("texts", "好评")
    Traceback (most recent call last):
    ...
    TypeError: `texts` must be a list of strings, not a single string (wrap it: ['好评']). Received: texts='好评'
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(f"`{name}` must be a list of strings, not a single string (wrap it: [{value!r}]). "
                        f"Received: {name}={_short(value)}")
    if value is None or not isinstance(value, Iterable):
        raise TypeError(f"`{name}` must be a list of strings. Received: {name}={_short(value)}")
    items = list(value)
    bad = [item for item in items if not isinstance(item, str)]
    if bad:
        raise TypeError(f"`{name}` must be a list of strings. Received: {name} holding {_short(bad[0])} "
                        f"of type {type(bad[0]).__name__}")
    return items


def check_sequences(name, value):
    """A list of token sequences (strings or lists of tokens); a bare string is refused (see
    :func:`check_strings`)."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"`{name}` must be a list of sequences, not a single string (wrap it: [{value!r}]). "
                        f"Received: {name}={_short(value)}")
    if value is None or not isinstance(value, Iterable):
        raise TypeError(f"`{name}` must be a list of sequences. Received: {name}={_short(value)}")
    return list(value)


def check_array(name, value, *, ndim=None, min_ndim=None, kind=None, allow_empty=True, dtype=None):
    """``np.asarray(value)`` after checking that it is not ``None``, has the given rank, an element kind out of
    ``kind`` (NumPy kind letters: ``"iu"`` integers, ``"f"`` floats, ``"b"`` bools) and, unless
    ``allow_empty``, at least one element.

    >>> check_array("x", None)
    Traceback (most recent call last):
    ...
    TypeError: `x` must be an array, not None. Received: x=None
    """
    if value is None:
        raise TypeError(f"`{name}` must be an array, not None. Received: {name}=None")
    try:
        array = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as error:
        raise ValueError(f"`{name}` must be an array of numbers (equal-length rows). Received: {name}="
                         f"{_short(value)} ({error})") from None
    if array.dtype == object:
        raise ValueError(f"`{name}` must be an array of numbers (equal-length rows). Received: {name}={_short(value)}")
    if ndim is not None and array.ndim not in np.atleast_1d(ndim):
        raise ValueError(f"`{name}` must have rank {ndim}. Received: {name}.shape={array.shape}")
    if min_ndim is not None and array.ndim < min_ndim:
        raise ValueError(f"`{name}` must have rank >= {min_ndim}. Received: {name}.shape={array.shape}")
    if kind is not None and array.dtype.kind not in kind and array.size:
        names = {"i": "integer", "u": "integer", "f": "float", "b": "bool"}
        wanted = " or ".join(sorted({names.get(k, k) for k in kind}))
        raise ValueError(f"`{name}` must hold {wanted} values. Received: {name} of dtype {array.dtype}")
    if not allow_empty and array.size == 0:
        raise ValueError(f"`{name}` must not be empty. Received: {name}.shape={array.shape}")
    return array


def check_same_length(**named):
    """Check that every named sequence has the same length (the first axis); returns that length.

    >>> check_same_length(predictions=[1, 2], targets=[1, 2, 3])
    Traceback (most recent call last):
    ...
    ValueError: `predictions` and `targets` must have the same length. Received: len(predictions)=2, len(targets)=3
    """
    lengths = {}
    for name, value in named.items():
        if value is None:
            raise TypeError(f"`{name}` must be a sequence or an array, not None. Received: {name}=None")
        lengths[name] = int(np.shape(value)[0]) if hasattr(value, "shape") and len(value.shape) else len(value)
    if len(set(lengths.values())) > 1:
        names = " and ".join(f"`{name}`" for name in lengths)
        received = ", ".join(f"len({name})={length}" for name, length in lengths.items())
        raise ValueError(f"{names} must have the same length. Received: {received}")
    return next(iter(lengths.values())) if lengths else 0


def is_concrete(x) -> bool:
    """True when ``x`` holds values now (NumPy, a Python number or list, an eager tensor), False while a
    function is traced (a symbolic tensor has no values to check)."""
    if isinstance(x, (np.ndarray, np.generic, numbers.Number, list, tuple)):
        return True
    import keras

    if isinstance(x, keras.KerasTensor):
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    return True


def check_ids(name, ids, size, *, low=0):
    """``ids`` (a tensor) after checking that every value lies in ``[low, size)``.

    A negative id would otherwise wrap around in a gather (row ``size - 1`` for ``-1``) and one past the end
    would fail deep inside TensorFlow (or, under XLA, read zeros). In eager mode the check runs on the host
    and raises ``ValueError``; in a traced TensorFlow function it is a ``tf.debugging`` assertion (an
    ``InvalidArgumentError`` with the same message when the step runs); under XLA no value check can run (see
    the module docstring): validate the data beforehand with :func:`validate_ids`.
    """
    import keras
    from keras import ops

    message = f"`{name}` must hold ids in [{low}, {size})"
    if is_concrete(ids):
        values = np.asarray(ops.convert_to_numpy(ids)) if not isinstance(ids, np.ndarray) else ids
        if values.size and values.dtype.kind in "iuf":
            bad = (values < low) | (values >= size)
            if values.dtype.kind == "f":
                bad |= values != np.round(values)
            if bad.any():
                raise ValueError(f"{message}. Received: {name} holding {np.unique(values[bad])[:5].tolist()} "
                                 f"at {np.argwhere(bad)[:3].tolist()}")
        return ids
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        as_int = tf.cast(ids, tf.int64)
        with tf.control_dependencies([
                tf.debugging.assert_greater_equal(as_int, tf.constant(low, tf.int64), message=message),
                tf.debugging.assert_less(as_int, tf.constant(size, tf.int64), message=message)]):
            return tf.identity(ids)
    return ids


def _arrays_of(data, component):
    """Yield NumPy arrays from an array, a list of arrays or a ``tf.data.Dataset`` (one per element)."""
    def pick(element):
        if component is None:
            return element
        try:
            return element[component]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"`component` must select a part of each element. Received: component={component!r} "
                             f"for an element of type {type(element).__name__}") from None

    if hasattr(data, "as_numpy_iterator"):
        for element in data.as_numpy_iterator():
            yield np.asarray(pick(element))
    elif isinstance(data, dict) or (isinstance(data, (tuple, list)) and component is not None):
        yield np.asarray(pick(data))
    else:
        yield np.asarray(data)


def validate_ids(data, vocabulary_size, *, name="ids", component=None, ignore=None):
    """Check on the host that every id in ``data`` lies in ``[0, vocabulary_size)``: the check a compiled (XLA)
    step cannot make. Returns the number of ids checked.

    Args:
        data: an integer array (or nested list), or a ``tf.data.Dataset``.
        vocabulary_size: the number of ids (embedding rows, tags, classes).
        name: the name used in the error message (``"token_ids"``, ``"tags"``...).
        component: for datasets (or tuples/dicts) whose elements are tuples or dicts, the index or key of the
            part to check (``0`` for the inputs of ``(x, y)``, ``1`` for the targets).
        ignore: an id that marks padding and is allowed anyway (for example ``-1`` for masked tags).

    Raises:
        ValueError: naming ``name``, with the offending values and the first positions.

    Example:

    >>> validate_ids(np.array([[3, 4, 0]]), vocabulary_size=5, name="token_ids")
    3
    >>> validate_ids(np.array([[3, -1, 7]]), vocabulary_size=5, name="token_ids")
    Traceback (most recent call last):
    ...
    ValueError: `token_ids` must hold ids in [0, 5). Received: token_ids holding [-1, 7] at [[0, 1], [0, 2]] (element 0)
    """
    vocabulary_size = check_positive_int("vocabulary_size", vocabulary_size)
    checked = 0
    for element, values in enumerate(_arrays_of(data, component)):
        if values.dtype == object:
            raise ValueError(f"`{name}` must be an array of integer ids. Received: {_short(values)}")
        if values.size == 0:
            continue
        if values.dtype.kind not in "iuf":
            raise ValueError(f"`{name}` must hold integer ids. Received: {name} of dtype {values.dtype}")
        bad = (values < 0) | (values >= vocabulary_size)
        if values.dtype.kind == "f":
            bad |= values != np.round(values)
        if ignore is not None:
            bad &= values != ignore
        if bad.any():
            raise ValueError(f"`{name}` must hold ids in [0, {vocabulary_size}). Received: {name} holding "
                             f"{np.unique(values[bad])[:5].tolist()} at {np.argwhere(bad)[:3].tolist()} "
                             f"(element {element})")
        checked += values.size
    return checked


def check_tensor(name, value, dtype=None):
    """``keras.ops.convert_to_tensor(value)``, with a message naming the argument when ``value`` is ``None`` or
    cannot be converted (a ragged list, strings, an object).

    >>> check_tensor("gradient", None)
    Traceback (most recent call last):
    ...
    TypeError: `gradient` must be an array or a tensor, not None. Received: gradient=None
    """
    from keras import ops

    if value is None:
        raise TypeError(f"`{name}` must be an array or a tensor, not None. Received: {name}=None")
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, np.ndarray):
        return value if dtype is None else ops.cast(value, dtype)  # a tensor or a variable: already one
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"`{name}` must be an array of numbers with equal-length rows. Received: {name}="
                         f"{_short(value)} ({error})") from None
    if array.dtype == object or array.dtype.kind in "USV":
        raise ValueError(f"`{name}` must be an array of numbers. Received: {name}={_short(value)}")
    return ops.convert_to_tensor(value, dtype=dtype)


def check_finite(name, value):
    """``value`` after checking, where its values are at hand (eager or NumPy), that it holds no NaN or inf;
    in a traced TensorFlow function the check is a ``tf.debugging.assert_all_finite`` (dropped by XLA)."""
    from keras import ops

    if is_concrete(value):
        array = np.asarray(value if isinstance(value, np.ndarray) else ops.convert_to_numpy(value))
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            bad = ~np.isfinite(array)
            raise ValueError(f"`{name}` must be finite (no NaN or inf). Received: {name} holding "
                             f"{np.unique(array[bad])[:3].tolist()} at {np.argwhere(bad)[:3].tolist()}")
        return value
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if value.dtype.is_floating:
            return tf.debugging.assert_all_finite(value, f"`{name}` must be finite (no NaN or inf)")
    return value


def get_keras_object(name, getter, value):
    """``getter(value)`` (``keras.initializers.get``, ``keras.regularizers.get``...), with an error that names the
    argument when Keras cannot interpret ``value``.

    >>> import keras
    >>> get_keras_object("kernel_initializer", keras.initializers.get, "glorot_unknown")
    Traceback (most recent call last):
    ...
    ValueError: `kernel_initializer` is not a known Keras identifier or object (could not interpret it). Received: kernel_initializer='glorot_unknown'
    """
    try:
        return getter(value)
    except (ValueError, TypeError):
        raise ValueError(f"`{name}` is not a known Keras identifier or object (could not interpret it). "
                         f"Received: {name}={_short(value)}") from None
