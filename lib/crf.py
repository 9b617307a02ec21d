"""Linear-chain CRF, MEMM and Bi-MEMM (chapter "You have used CRF; now meet the faster MEMM").

Tag a sequence ``x`` of length ``n`` with tags ``y_1..y_n`` out of ``K``. An encoder gives emission scores
``f(y_k; x)`` (a ``(batch, time, K)`` tensor) and a trainable ``K x K`` matrix gives transition scores
``g(y_{k-1}, y_k)``. The score of a whole path is (Su 2020, https://kexue.fm/archives/7213)::

    f(y_1..y_n; x) = f(y_1; x) + sum_{k=2..n} [ g(y_{k-1}, y_k) + f(y_k; x) ]

* a **CRF** normalizes it once, over all ``K**n`` paths (global normalization)::

      P(y|x) = exp f(y_1..y_n; x) / Z(x),      Z(x) = sum over all paths of exp f

  and ``log Z`` comes from the forward algorithm, a recursion over time;
* an **MEMM** normalizes at every step (local normalization)::

      P(y|x) = prod_k  exp(g(y_{k-1}, y_k) + f(y_k; x)) / sum_{y'} exp(g(y_{k-1}, y') + f(y'; x))

  so its likelihood is a sum of independent softmax cross-entropies, with no recursion;
* a **Bi-MEMM** averages the cross-entropies of a left-to-right and a right-to-left MEMM that share ``g``.

This module holds the functions (``keras.ops``, vectorised, traceable with XLA), one Viterbi decoder that
serves all three models, a parallel forward algorithm (an O(log T)-depth reduction over log-semiring
matrices), the Keras heads :class:`CRF` and :class:`MEMM`, the model :class:`SequenceTagger` that puts a
head on any encoder, and span F1 for the experiments.

Conventions: ``transitions[i, j]`` scores tag ``i`` followed by tag ``j`` (as in pytorch-crf); optional
``start_transitions[j]`` / ``end_transitions[i]`` score the first / last tag. A ``mask`` marks the valid
steps (``True``/1); the valid steps of a row need not be a prefix: left padding, a masked first token or
holes are all handled by reading a row's valid steps in order, as if the masked ones were not there.
Arithmetic is done in ``float32`` whatever the input dtype (mixed-precision safe).

Bad input: shapes are checked while tracing; tags out of ``[0, num_tags)`` and NaN scores at valid steps are
checked on the host in eager mode and by ``tf.debugging`` assertions in a ``tf.function``. **Under XLA**
(``jit_compile=True``, and Keras's default ``jit_compile="auto"`` on a GPU) no value check can run: an
out-of-range tag silently gives a wrong loss. Check the data once beforehand with
``lib.checks.validate_ids(dataset, num_tags, name="tags", component=1)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
from keras import ops

from lib import checks

DIRECTIONS = ("forward", "backward", "both")
"""MEMM directions: left-to-right, right-to-left, and their average (the article's Bi-MEMM)."""

DECODINGS = ("exact", "score")
"""How an MEMM decodes: ``"exact"`` maximises its own (locally normalized) log-likelihood; ``"score"``
maximises the unnormalized path score ``f`` with the CRF's Viterbi, as bert4keras does."""

REDUCTIONS = ("none", "sum", "mean", "token_mean")
"""How a loss over a batch is reduced (as in pytorch-crf): one value per row, their sum, their mean, or their
sum divided by the number of valid tokens."""

LOG_ZERO = -1e30
"""Stands for log 0 in the log semiring: finite, so no ``inf - inf`` can make a NaN."""


# ---------------------------------------------------------------------------------------------------
# Input checks. Errors name the argument, say what was expected and echo what was received.
# ---------------------------------------------------------------------------------------------------


def _shape(x):
    return tuple(x.shape)


_is_concrete = checks.is_concrete  # True when a tensor holds values now, False while a function is traced


def _check_num_tags(num_tags):
    return checks.check_positive_int("num_tags", num_tags)


def _no_nan(name, x, mask=None):
    """``x`` after checking that it holds no NaN at the valid steps of ``mask`` (all steps without one).

    On the host where the values are at hand; a ``tf.debugging`` assertion in a traced TensorFlow function
    (dropped under XLA: see :mod:`lib.checks`). A NaN would otherwise become a NaN loss or an arbitrary
    decoded path. Infinities are allowed (``-inf`` forbids a tag or a transition).
    """
    message = f"`{name}` must not hold NaN at a valid (unmasked) step"
    if _is_concrete(x) and (mask is None or _is_concrete(mask)):
        values = np.asarray(ops.convert_to_numpy(x))
        bad = np.isnan(values)
        if mask is not None and values.ndim >= 2:
            keep = np.asarray(ops.convert_to_numpy(mask), bool)
            bad &= keep.reshape(keep.shape + (1,) * (values.ndim - 2))
        if bad.any():
            raise ValueError(f"{message}. Received: {name} with NaN at {np.argwhere(bad)[:3].tolist()}")
        return x
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        bad = tf.math.is_nan(x)
        if mask is not None and len(x.shape) >= 2:
            keep = mask
            for _ in range(len(x.shape) - 2):
                keep = tf.expand_dims(keep, -1)
            bad = tf.logical_and(bad, keep)
        with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message])]):
            return tf.identity(x)
    return x


def _emissions(emissions, name="emissions"):
    emissions = checks.check_tensor(name, emissions)
    if not hasattr(emissions, "ndim"):  # a tf.Variable (say, emissions watched in an exercise): read it
        emissions = ops.copy(emissions)
    if len(emissions.shape) != 3:
        raise ValueError(
            f"`{name}` must have shape (batch, time, num_tags). Received: {name}.shape={_shape(emissions)}")
    if emissions.shape[1] == 0:
        raise ValueError(
            f"`{name}` must hold at least one time step: an empty sequence has no tags to score or decode. "
            f"Received: {name}.shape={_shape(emissions)}")
    if emissions.shape[2] == 0:
        raise ValueError(f"`{name}` must score at least one tag. Received: {name}.shape={_shape(emissions)}")
    return ops.cast(emissions, "float32")


def _matches(shape, expected) -> bool:
    return len(shape) == len(expected) and all(
        a is None or b is None or a == b for a, b in zip(shape, expected))


def _mask(mask, emissions):
    """``None`` (every step valid) or a boolean ``(batch, time)`` tensor of the emissions' shape."""
    if mask is None:
        return None
    mask = ops.convert_to_tensor(mask)
    expected = _shape(emissions)[:2]
    if not _matches(_shape(mask), expected):
        raise ValueError(
            f"`mask` must have shape (batch, time) = {expected}, the first two axes of `emissions`; a mask "
            f"of another length belongs to other sequences. Received: mask.shape={_shape(mask)}")
    if _is_concrete(mask) and not keras.backend.standardize_dtype(mask.dtype) == "bool":
        values = np.asarray(ops.convert_to_numpy(mask))
        if not np.isin(values, (0, 1)).all():
            raise ValueError("`mask` must be boolean or hold only 0 and 1. "
                             f"Received: mask holding {np.unique(values[~np.isin(values, (0, 1))])[:5].tolist()}")
    if _is_concrete(mask) and _is_concrete(emissions) and tuple(ops.shape(mask)) != tuple(ops.shape(emissions))[:2]:
        raise ValueError(
            f"`mask` must have shape (batch, time) = {tuple(ops.shape(emissions))[:2]}. "
            f"Received: mask.shape={tuple(ops.shape(mask))}")
    return ops.cast(mask, "bool")


def _checked(emissions, transitions, start_transitions, end_transitions, mask):
    """Check and convert the arguments every public function takes; returns
    ``(emissions, transitions, start, end, mask)``."""
    emissions = _emissions(emissions)
    num_tags = emissions.shape[-1]
    transitions = _transitions(transitions, num_tags)
    start = _boundary(start_transitions, num_tags, "start_transitions")
    end = _boundary(end_transitions, num_tags, "end_transitions")
    mask = _mask(mask, emissions)
    emissions = _no_nan("emissions", emissions, mask)
    transitions = _no_nan("transitions", transitions, mask if len(transitions.shape) == 4 else None)
    if start is not None:
        start = _no_nan("start_transitions", start)
    if end is not None:
        end = _no_nan("end_transitions", end)
    return emissions, transitions, start, end, mask


def _transitions(transitions, num_tags, name="transitions"):
    transitions = ops.cast(checks.check_tensor(name, transitions), "float32")
    if _shape(transitions) != (num_tags, num_tags) and not (
            len(transitions.shape) == 4 and transitions.shape[2:] == (num_tags, num_tags)):
        raise ValueError(
            f"`{name}` must have shape (num_tags, num_tags) = ({num_tags}, {num_tags}), or "
            f"(batch, time, {num_tags}, {num_tags}) for scores that change with the step. "
            f"Received: {name}.shape={_shape(transitions)}")
    return transitions


def _boundary(vector, num_tags, name):
    if vector is None:
        return None
    vector = ops.cast(checks.check_tensor(name, vector), "float32")
    if _shape(vector) != (num_tags,):
        raise ValueError(f"`{name}` must have shape (num_tags,) = ({num_tags},). Received: {name}.shape={_shape(vector)}")
    return vector


def _tags(tags, emissions, mask):
    """Integer tags of the emissions' shape; valid steps must hold a tag in ``[0, num_tags)``."""
    tags = checks.check_tensor("tags", tags)
    expected = _shape(emissions)[:2]
    if len(tags.shape) == 3 and tags.shape[-1] == 1:  # (batch, time, 1), as Keras sometimes hands targets
        tags = ops.squeeze(tags, -1)
    if not _matches(_shape(tags), expected):
        raise ValueError(
            f"`tags` must have shape (batch, time) = {expected}, the first two axes of `emissions`. "
            f"Received: tags.shape={_shape(tags)}")
    num_tags = emissions.shape[-1]
    if keras.backend.is_float_dtype(tags.dtype):
        if _is_concrete(tags):
            values = np.asarray(ops.convert_to_numpy(tags))
            if not np.array_equal(values, np.round(values)):
                raise ValueError("`tags` must hold whole numbers (tag ids). "
                                 f"Received: tags holding {values[values != np.round(values)][:5].tolist()}")
        tags = ops.round(tags)
    tags = ops.cast(tags, "int32")
    if _is_concrete(tags) and (mask is None or _is_concrete(mask)):
        values = np.asarray(ops.convert_to_numpy(tags))
        valid = np.ones(values.shape, bool) if mask is None else np.asarray(ops.convert_to_numpy(mask), bool)
        bad = valid & ((values < 0) | (values >= num_tags))
        if bad.any():
            raise ValueError(
                f"`tags` must lie in [0, num_tags) = [0, {num_tags}) at every valid (unmasked) step. "
                f"Received: tags={values[bad][:5].tolist()} at (row, step) {np.argwhere(bad)[:5].tolist()}")
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        valid = tf.ones_like(tags, tf.bool) if mask is None else mask
        checked = tf.where(valid, tags, 0)
        message = f"`tags` must lie in [0, num_tags) = [0, {num_tags}) at every valid (unmasked) step."
        with tf.control_dependencies([
                tf.debugging.assert_non_negative(checked, message=message),
                tf.debugging.assert_less(checked, tf.constant(num_tags, tf.int32), message=message)]):
            tags = tf.identity(tags)
    return tags


# ---------------------------------------------------------------------------------------------------
# Masks: read the valid steps of each row in order ("left-align"), and back.
# ---------------------------------------------------------------------------------------------------


def _gather_steps(x, order):
    """``x[b, order[b, t], ...]`` for a (batch, time, ...) tensor ``x``."""
    index = order
    for _ in range(len(x.shape) - 2):
        index = ops.expand_dims(index, -1)
    return ops.take_along_axis(x, index, axis=1)


def left_align(mask, *tensors):
    """Move the valid steps of every row to the front, keeping their order.

    A CRF reads a row as the sequence of its valid steps. After this permutation the valid steps of a row
    are a prefix, so the recursions below need only the row lengths. Masks that are already right-padded
    come back unchanged.

    Args:
        mask: boolean ``(batch, time)``.
        *tensors: tensors with leading axes ``(batch, time)`` to permute the same way.

    Returns:
        ``(order, lengths, aligned)``: the permutation ``order`` (int32 ``(batch, time)``, so that
        ``aligned[b, t] = x[b, order[b, t]]``), the number of valid steps of each row, and the list of
        permuted tensors.

    Example:

    >>> order, lengths, (aligned,) = left_align([[False, True, True]], np.array([[7, 8, 9]]))
    >>> ops.convert_to_numpy(aligned).tolist(), ops.convert_to_numpy(lengths).tolist()
    ([[8, 9, 7]], [2])
    """
    mask = ops.cast(checks.check_tensor("mask", mask), "bool")
    if len(mask.shape) != 2:
        raise ValueError(f"`mask` must have shape (batch, time). Received: mask.shape={_shape(mask)}")
    tensors = [ops.convert_to_tensor(x) for x in tensors]
    time = ops.shape(mask)[1]
    steps = ops.expand_dims(ops.arange(time, dtype="int32"), 0)
    lengths = ops.sum(ops.cast(mask, "int32"), axis=1)

    def permute():
        key = ops.where(mask, steps, steps + time)  # valid steps first, each group in its original order
        order = ops.cast(ops.argsort(key, axis=1), "int32")
        return [order] + [_gather_steps(x, order) for x in tensors]

    def keep():  # right padding, the usual case: nothing to move, so skip the sort and the gathers
        return [ops.broadcast_to(steps, ops.shape(mask))] + tensors

    is_prefix = ops.all(ops.equal(mask, steps < ops.expand_dims(lengths, 1)))
    if _is_concrete(mask):
        order, *aligned = keep() if bool(ops.convert_to_numpy(is_prefix)) else permute()
    else:
        order, *aligned = ops.cond(is_prefix, keep, permute)
    return order, lengths, aligned


def _restore(order, *tensors):
    """Undo :func:`left_align`: put step ``t`` of each row back at ``order[b, t]``."""
    steps = ops.expand_dims(ops.arange(ops.shape(order)[1], dtype="int32"), 0)

    def permute():
        inverse = ops.cast(ops.argsort(order, axis=1), "int32")
        return [_gather_steps(x, inverse) for x in tensors]

    is_identity = ops.all(ops.equal(order, steps))
    if _is_concrete(order):
        return list(tensors) if bool(ops.convert_to_numpy(is_identity)) else permute()
    return ops.cond(is_identity, lambda: list(tensors), permute)


def _prefix_mask(lengths, time):
    return ops.expand_dims(ops.arange(time, dtype="int32"), 0) < ops.expand_dims(lengths, 1)


def _zero_masked(x, mask):
    """``x`` with 0 at the masked steps of its ``(batch, time, ...)`` axes, selected (never multiplied), so an
    inf or NaN there cannot reach a value or a gradient."""
    keep = mask
    for _ in range(len(x.shape) - 2):
        keep = ops.expand_dims(keep, -1)
    return ops.where(keep, x, ops.zeros((), x.dtype))


def _prepare(emissions, mask, *others):
    """Left-align emissions (and step-indexed ``others``) under ``mask``, with 0 at the masked steps.

    Returns ``(emissions, prefix_mask or None, lengths or None, order or None, others)``.
    """
    if mask is None:
        return emissions, None, None, None, list(others)
    order, lengths, aligned = left_align(mask, emissions, *others)
    prefix = _prefix_mask(lengths, ops.shape(emissions)[1])
    aligned = [_zero_masked(x, prefix) for x in aligned]
    return aligned[0], prefix, lengths, order, aligned[1:]


def _prepare_with_transitions(emissions, mask, transitions):
    """:func:`_prepare` for the emissions and, when they are per-step ``(batch, time, K, K)``, the transitions.

    Returns ``(emissions, prefix_mask or None, lengths or None, order or None, transitions)``.
    """
    per_step = len(transitions.shape) == 4
    aligned, prefix, lengths, order, others = _prepare(emissions, mask, *([transitions] if per_step else []))
    return aligned, prefix, lengths, order, others[0] if per_step else transitions


def _time_major(x):
    return ops.moveaxis(x, 1, 0)


# ---------------------------------------------------------------------------------------------------
# The CRF: path score, log partition (sequential and parallel), negative log-likelihood.
# ---------------------------------------------------------------------------------------------------


def _path_score_aligned(emissions, tags, transitions, mask, lengths, start, end):
    batch, time, num_tags = ops.shape(emissions)[0], ops.shape(emissions)[1], emissions.shape[-1]
    valid = ops.ones((batch, time), "bool") if mask is None else mask

    def total(values, keep):  # sum over the valid steps, selected with where: inf * 0 would be NaN
        return ops.sum(ops.where(keep, values, 0.0), axis=1)

    tags = tags if mask is None else ops.where(mask, tags, 0)
    unary = ops.squeeze(ops.take_along_axis(emissions, ops.expand_dims(tags, -1), axis=2), -1)
    score = total(unary, valid)
    pair_index = tags[:, :-1] * num_tags + tags[:, 1:]  # (batch, time - 1)
    if len(transitions.shape) == 2:
        pair = ops.take(ops.reshape(transitions, (-1,)), pair_index)
    else:
        flat = ops.reshape(transitions[:, 1:], (batch, time - 1, num_tags * num_tags))
        pair = ops.squeeze(ops.take_along_axis(flat, ops.expand_dims(pair_index, -1), axis=2), -1)
    score = score + total(pair, valid[:, 1:])  # a -inf (forbidden) g into a padded step must not count
    if start is not None:
        score = score + ops.where(valid[:, 0], ops.take(start, tags[:, 0]), 0.0)
    if end is not None:
        last = (time - 1) * ops.ones((batch,), "int32") if lengths is None else ops.maximum(lengths - 1, 0)
        last_tag = ops.squeeze(ops.take_along_axis(tags, ops.expand_dims(last, -1), axis=1), -1)
        score = score + ops.where(valid[:, 0], ops.take(end, last_tag), 0.0)
    return score


def path_score(emissions, tags, transitions, mask=None, start_transitions=None, end_transitions=None):
    """The unnormalized score ``f(y_1..y_n; x)`` of given tag paths.

    ``f = f(y_1) + sum_k [g(y_{k-1}, y_k) + f(y_k)]``, plus ``start[y_1]`` and ``end[y_n]`` when given, over
    the valid steps of each row.

    Args:
        emissions: ``(batch, time, num_tags)`` scores ``f(y; x)``.
        tags: int ``(batch, time)`` paths; masked steps may hold anything.
        transitions: ``(num_tags, num_tags)`` scores ``g(i, j)`` of tag ``i`` followed by ``j``, or
            ``(batch, time, num_tags, num_tags)`` where ``[b, t]`` scores the step from ``t - 1`` to ``t``.
        mask: optional boolean ``(batch, time)``; ``True`` marks valid steps.
        start_transitions, end_transitions: optional ``(num_tags,)`` scores of the first and last tag.

    Returns:
        float32 ``(batch,)``; rows without a valid step score 0.

    Raises:
        ValueError: for shapes that do not fit together, or tags out of ``[0, num_tags)`` at valid steps.

    Example:

    >>> emissions = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    >>> transitions = np.array([[0.0, 0.5], [0.0, 0.0]])
    >>> float(path_score(emissions, np.array([[0, 1]]), transitions)[0])  # 1 + 0.5 + 2
    3.5
    """
    emissions, transitions, start, end, mask = _checked(emissions, transitions, start_transitions, end_transitions,
                                                        mask)
    tags = _tags(tags, emissions, mask)
    steps = [tags] + ([transitions] if len(transitions.shape) == 4 else [])
    emissions, mask, lengths, _, aligned = _prepare(emissions, mask, *steps)
    if len(transitions.shape) == 4:
        transitions = aligned[1]
    return _path_score_aligned(emissions, aligned[0], transitions, mask, lengths, start, end)


def _forward_sequential(emissions, transitions, mask, start, end):
    """log Z by the forward algorithm over a prefix mask: alpha_t(j) = logsumexp_i(alpha_{t-1}(i) + g(i,j)) + f_t(j)."""
    per_step = len(transitions.shape) == 4
    e = _time_major(emissions)  # (time, batch, tags)
    g = _time_major(transitions) if per_step else transitions
    m = None if mask is None else ops.expand_dims(_time_major(mask), -1)  # (time, batch, 1)
    alpha = e[0] if start is None else e[0] + start

    def step(t, alpha):
        scores = ops.expand_dims(alpha, 2) + (g[t] if per_step else g)  # (batch, from, to)
        new = ops.logsumexp(scores, axis=1) + e[t]
        return new if m is None else ops.where(m[t], new, alpha)

    time = ops.shape(e)[0]
    if keras.backend.backend() == "jax":  # static length: a fori_loop, which JAX lowers to a differentiable scan
        alpha = ops.fori_loop(1, time, step, alpha)
    else:  # a while loop with a maximum trip count: XLA needs it to differentiate through the loop
        _, alpha = ops.while_loop(lambda t, alpha: t < time, lambda t, alpha: (t + 1, step(t, alpha)),
                                  (ops.convert_to_tensor(1, "int32"), alpha),
                                  maximum_iterations=time - 1 if isinstance(time, int) else None)
    if end is not None:
        alpha = alpha + end
    return ops.logsumexp(alpha, axis=1)


def log_semiring_matmul(a, b):
    """The matrix product in the log semiring: ``(a ⊗ b)[i, k] = logsumexp_j (a[i, j] + b[j, k])``.

    It is associative, which is what lets the forward algorithm run as a balanced tree. Exact (a
    log-sum-exp per entry) at the cost of a ``(..., K, K, K)`` intermediate.

    Example:

    >>> a = np.log(np.array([[1.0, 2.0], [3.0, 4.0]]))
    >>> np.round(np.exp(ops.convert_to_numpy(log_semiring_matmul(a, a))), 4).tolist()
    [[7.0, 10.0], [15.0, 22.0]]
    """
    a, b = checks.check_tensor("a", a), checks.check_tensor("b", b)
    if len(a.shape) < 2 or len(b.shape) < 2 or None not in (a.shape[-1], b.shape[-2]) and a.shape[-1] != b.shape[-2]:
        raise ValueError("`a` and `b` must be matrices (..., i, j) and (..., j, k) with a.shape[-1] == b.shape[-2]. "
                         f"Received: a.shape={_shape(a)}, b.shape={_shape(b)}")
    return ops.logsumexp(ops.expand_dims(a, -1) + ops.expand_dims(b, -3), axis=-2)


def _log_identity(num_tags):
    eye = ops.eye(num_tags, dtype="float32")
    return (1.0 - eye) * LOG_ZERO


def _tree_reduce(matrices):
    """⊗-product of ``matrices[:, 0] ⊗ matrices[:, 1] ⊗ ...`` (batch, n, K, K) in ceil(log2 n) levels."""
    num_tags = matrices.shape[-1]
    identity = _log_identity(num_tags)
    n = matrices.shape[1]
    if n is not None:  # static length: unrolled levels, each one batched log-semiring product
        while n > 1:
            if n % 2:
                pad = ops.broadcast_to(identity, (ops.shape(matrices)[0], 1, num_tags, num_tags))
                matrices = ops.concatenate([matrices, pad], axis=1)
                n += 1
            matrices = log_semiring_matmul(matrices[:, 0::2], matrices[:, 1::2])
            n //= 2
        return matrices[:, 0]
    import tensorflow as tf  # a dynamic length needs a loop whose tensor shrinks: TensorFlow's shape invariants

    def body(m):
        odd = tf.shape(m)[1] % 2
        pad = tf.broadcast_to(identity, tf.stack([tf.shape(m)[0], odd, num_tags, num_tags]))
        m = tf.concat([m, pad], axis=1)
        return (log_semiring_matmul(m[:, 0::2], m[:, 1::2]),)

    (matrices,) = tf.while_loop(lambda m: tf.shape(m)[1] > 1, body, (matrices,),
                                shape_invariants=(tf.TensorShape([None, None, num_tags, num_tags]),))
    return matrices[:, 0]


def _forward_parallel(emissions, transitions, mask, start, end):
    """log Z as alpha_1 ⊗ M_2 ⊗ ... ⊗ M_T, with M_t(i, j) = g(i, j) + f_t(j), reduced as a balanced tree."""
    num_tags = emissions.shape[-1]
    alpha = emissions[:, 0] if start is None else emissions[:, 0] + start  # (batch, tags)
    if emissions.shape[1] == 1:
        steps = None
    else:
        g = transitions[:, 1:] if len(transitions.shape) == 4 else transitions
        steps = g + ops.expand_dims(emissions[:, 1:], 2)  # (batch, time - 1, from, to)
        if mask is not None:  # padded steps are the identity of the semiring: they change nothing
            steps = ops.where(ops.reshape(mask[:, 1:], (*ops.shape(mask[:, 1:]), 1, 1)), steps,
                              _log_identity(num_tags))
    if steps is not None:
        product = _tree_reduce(steps)  # (batch, from, to)
        alpha = ops.logsumexp(ops.expand_dims(alpha, 2) + product, axis=1)
    if end is not None:
        alpha = alpha + end
    return ops.logsumexp(alpha, axis=1)


def log_partition(emissions, transitions, mask=None, start_transitions=None, end_transitions=None,
                  parallel=False):
    """``log Z(x)``: the log of the sum of ``exp f`` over all ``K**n`` paths (the forward algorithm).

    Sequential (default): ``alpha_1 = f_1 (+ start)``, ``alpha_t(j) = logsumexp_i(alpha_{t-1}(i) + g(i, j))
    + f_t(j)``, ``log Z = logsumexp_j(alpha_n(j) (+ end_j))``: ``O(n K^2)`` work in ``n - 1`` dependent
    steps. Parallel: the same numbers as a product of ``K x K`` matrices in the log semiring,
    ``alpha_1 ⊗ M_2 ⊗ ... ⊗ M_n`` with ``M_t(i, j) = g(i, j) + f_t(j)``, multiplied pairwise as a balanced
    tree: ``O(n K^3)`` work in ``ceil(log2 n)`` dependent levels.

    Args:
        emissions, transitions, mask, start_transitions, end_transitions: as in :func:`path_score`.
        parallel: use the tree reduction instead of the recursion.

    Returns:
        float32 ``(batch,)``; rows without a valid step have ``log Z = 0`` (one empty path).

    Example:

    >>> emissions = np.zeros((1, 3, 2))  # all 2**3 paths score 0, so Z = 8
    >>> round(float(log_partition(emissions, np.zeros((2, 2)))[0]), 5) == round(math.log(8), 5)
    True
    """
    emissions, transitions, start, end, mask = _checked(emissions, transitions, start_transitions, end_transitions,
                                                        mask)
    checks.check_bool("parallel", parallel)
    steps = [transitions] if len(transitions.shape) == 4 else []
    emissions, mask, lengths, _, aligned = _prepare(emissions, mask, *steps)
    if steps:
        transitions = aligned[0]
    forward = _forward_parallel if parallel else _forward_sequential
    logz = forward(emissions, transitions, mask, start, end)
    return logz if lengths is None else ops.where(lengths > 0, logz, 0.0)


def _reduce(values, reduction, mask, emissions):
    """Reduce per-row losses as :data:`REDUCTIONS` says; ``token_mean`` divides by the valid steps."""
    if reduction == "none":
        return values
    if reduction == "sum":
        return ops.sum(values)
    if reduction == "mean":
        return ops.mean(values)
    shape = ops.shape(emissions)
    tokens = ops.cast(shape[0] * shape[1], "float32") if mask is None else ops.sum(ops.cast(mask, "float32"))
    return ops.sum(values) / ops.maximum(tokens, 1.0)


def crf_negative_log_likelihood(emissions, tags, transitions, mask=None, start_transitions=None,
                                end_transitions=None, parallel=False, reduction="none"):
    """``-log P(y|x) = log Z(x) - f(y; x)`` of a linear-chain CRF, one value per row.

    The value is never negative: ``Z`` sums ``exp f`` over every path, the gold one included, so
    ``log Z >= f(y)`` exactly; float rounding can leave ``-1e-7``, which is clipped to 0.

    Args:
        emissions, tags, transitions, mask, start_transitions, end_transitions: as in :func:`path_score`.
        parallel: compute ``log Z`` with the tree reduction (:func:`log_partition`).
        reduction: ``"none"`` (one value per row, the default), ``"sum"``, ``"mean"`` (over rows) or
            ``"token_mean"`` (the sum over the number of valid steps), as in pytorch-crf.

    Returns:
        float32 ``(batch,)``, or a scalar with a reduction.

    Example:

    >>> emissions = np.zeros((1, 3, 2))
    >>> nll = crf_negative_log_likelihood(emissions, np.array([[0, 1, 0]]), np.zeros((2, 2)))
    >>> round(float(nll[0]), 5) == round(math.log(8), 5)  # one path out of 8 equally likely ones
    True

    Reference:
        Su Jianlin, "CRF用过了，不妨再了解下更快的MEMM？", https://kexue.fm/archives/7213 (2020);
        Lafferty, McCallum & Pereira, "Conditional Random Fields", ICML 2001.
    """
    emissions, transitions, start, end, mask = _checked(emissions, transitions, start_transitions, end_transitions,
                                                        mask)
    checks.check_bool("parallel", parallel)
    checks.check_one_of("reduction", reduction, REDUCTIONS)
    tags = _tags(tags, emissions, mask)
    original = (emissions, mask)
    steps = [tags] + ([transitions] if len(transitions.shape) == 4 else [])
    emissions, mask, lengths, _, aligned = _prepare(emissions, mask, *steps)
    tags = aligned[0]
    if len(transitions.shape) == 4:
        transitions = aligned[1]
    forward = _forward_parallel if parallel else _forward_sequential
    logz = forward(emissions, transitions, mask, start, end)
    if lengths is not None:
        logz = ops.where(lengths > 0, logz, 0.0)
    score = _path_score_aligned(emissions, tags, transitions, mask, lengths, start, end)
    return _reduce(ops.maximum(logz - score, 0.0), reduction, original[1], original[0])


def _forward_backward(emissions, transitions, mask, start, end):
    """Forward and backward log-messages over a prefix mask, each (batch, time, K), time-major inside.

    ``alpha_t(j) = logsumexp_i(alpha_{t-1}(i) + g_t(i, j)) + f_t(j)`` (``alpha_1 = f_1 + start``) and
    ``beta_t(i) = logsumexp_j(g_{t+1}(i, j) + f_{t+1}(j) + beta_{t+1}(j))`` (``beta_n = end``), so that
    ``alpha_t(j) + beta_t(j)`` is the log of the total weight of the paths through tag ``j`` at step ``t``.
    """
    per_step = len(transitions.shape) == 4
    num_tags = emissions.shape[-1]
    e = _time_major(emissions)
    g = _time_major(transitions) if per_step else transitions
    m = None if mask is None else ops.expand_dims(_time_major(mask), -1)
    first = e[0] if start is None else e[0] + start
    last = ops.zeros_like(e[0]) if end is None else ops.zeros_like(e[0]) + end
    if emissions.shape[1] == 1:
        return ops.expand_dims(first, 1), ops.expand_dims(last, 1)
    shapes = [(num_tags,)] + ([(num_tags, num_tags)] if per_step else []) + ([(1,)] if m is not None else [])
    later = _pack(e[1:], *([g[1:]] if per_step else []), *([m[1:]] if m is not None else []))

    def forward(alpha, x):
        x = _unpack(x, shapes)
        new = ops.logsumexp(ops.expand_dims(alpha, 2) + (x[1] if per_step else g), axis=1) + x[0]
        new = new if m is None else ops.where(x[-1] > 0.5, new, alpha)
        return new, new

    def backward(beta, x):  # x holds step t + 1; the result is beta_t
        x = _unpack(x, shapes)
        new = ops.logsumexp((x[1] if per_step else g) + ops.expand_dims(x[0] + beta, 1), axis=2)
        new = new if m is None else ops.where(x[-1] > 0.5, new, last)
        return new, new

    _, alphas = ops.scan(forward, first, later)
    _, betas = ops.scan(backward, last, later, reverse=True)
    alphas = ops.concatenate([ops.expand_dims(first, 0), alphas], axis=0)
    betas = ops.concatenate([betas, ops.expand_dims(last, 0)], axis=0)
    return ops.moveaxis(alphas, 0, 1), ops.moveaxis(betas, 0, 1)


def crf_marginals(emissions, transitions, mask=None, start_transitions=None, end_transitions=None):
    """``P(y_t = j | x)`` for every step and tag: the CRF's per-token confidences (forward–backward).

    ``P(y_t = j | x) = exp(alpha_t(j) + beta_t(j) - log Z)``, with the forward messages of
    :func:`log_partition` and the matching backward ones. They are also the gradient of ``log Z`` with
    respect to the emissions, ``∂ log Z / ∂ f_t(j)``, which is how the tests check them.

    Args:
        emissions, transitions, mask, start_transitions, end_transitions: as in :func:`path_score`.

    Returns:
        float32 ``(batch, time, num_tags)``: each valid step sums to 1 over the tags; masked steps are 0.

    Example:

    >>> marginals = crf_marginals(np.zeros((1, 3, 2)), np.zeros((2, 2)))  # every path equally likely
    >>> np.round(ops.convert_to_numpy(marginals), 3).tolist()
    [[[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]]
    """
    emissions, transitions, start, end, mask = _checked(emissions, transitions, start_transitions, end_transitions,
                                                        mask)
    aligned, prefix, _, order, transitions = _prepare_with_transitions(emissions, mask, transitions)
    alpha, beta = _forward_backward(aligned, transitions, prefix, start, end)
    scores = alpha + beta
    marginals = ops.exp(scores - ops.logsumexp(scores, axis=-1, keepdims=True))
    if prefix is None:
        return marginals
    marginals = ops.where(ops.expand_dims(prefix, -1), marginals, 0.0)
    (marginals,) = _restore(order, marginals)
    return marginals


# ---------------------------------------------------------------------------------------------------
# The MEMM: local softmaxes, no recursion.
# ---------------------------------------------------------------------------------------------------


def _memm_direction_log_likelihood(emissions, tags, transitions, mask, lengths, boundary, backward):
    """sum_k log P(y_k | neighbour) over a prefix mask, each step an independent softmax over ``K`` logits.

    Forward: logits_k = f_k + g(y_{k-1}, .), and f_1 + ``boundary`` (start) on the first step.
    Backward: logits_k = f_k + g(., y_{k+1}), and f_n + ``boundary`` (end) on the last valid step.
    The neighbour is the *gold* tag, so no step waits for another: no recursion over time.
    """
    batch, time, num_tags = ops.shape(emissions)[0], ops.shape(emissions)[1], emissions.shape[-1]
    tags = tags if mask is None else ops.where(mask, tags, 0)
    edge = ops.zeros((batch, 1, num_tags), "float32") if boundary is None else ops.broadcast_to(
        ops.reshape(boundary, (1, 1, num_tags)), (batch, 1, num_tags))
    if not backward:
        context = ops.concatenate([edge, ops.take(transitions, tags[:, :-1], axis=0)], axis=1)
    else:
        context = ops.concatenate([ops.take(ops.transpose(transitions), tags[:, 1:], axis=0), edge], axis=1)
        if lengths is not None:  # a row's last valid step may come before the padding
            is_last = ops.expand_dims(ops.arange(time, dtype="int32"), 0) == ops.expand_dims(lengths - 1, 1)
            context = ops.where(ops.expand_dims(is_last, -1), edge, context)
    logits = emissions + context
    log_probs = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
    gold = ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(tags, -1), axis=2), -1)
    return ops.sum(gold if mask is None else ops.where(mask, gold, 0.0), axis=1)  # where: inf * 0 is NaN


def _memm_log_likelihood_aligned(emissions, tags, transitions, mask, lengths, start, end, direction):
    parts = []
    if direction in ("forward", "both"):
        parts.append(_memm_direction_log_likelihood(emissions, tags, transitions, mask, lengths, start, False))
    if direction in ("backward", "both"):
        parts.append(_memm_direction_log_likelihood(emissions, tags, transitions, mask, lengths, end, True))
    return parts[0] if len(parts) == 1 else (parts[0] + parts[1]) / 2.0


def _check_direction(direction):
    return checks.check_one_of("direction", direction, DIRECTIONS)


def memm_log_likelihood(emissions, tags, transitions, mask=None, start_transitions=None, end_transitions=None,
                        direction="forward"):
    """``log P(y|x)`` of an MEMM: a sum of per-step log-softmaxes (local normalization).

    Forward (left to right)::

        log P = log softmax(f_1 (+ start))[y_1] + sum_{k>=2} log softmax_j(g(y_{k-1}, j) + f_k(j))[y_k]

    Backward (right to left, the same ``g``): ``P(y_n) P(y_{n-1}|y_n) ... P(y_1|y_2)`` with
    ``P(y_k|y_{k+1}) = softmax_i(g(i, y_{k+1}) + f_k(i))[y_k]`` and ``end`` on the first factor.
    ``"both"`` is the Bi-MEMM's average of the two. Every step uses the *gold* previous tag, so all
    steps are independent: no recursion over time.

    Args:
        emissions, tags, transitions, mask, start_transitions, end_transitions: as in :func:`path_score`,
            with ``transitions`` of shape ``(num_tags, num_tags)``.
        direction: ``"forward"``, ``"backward"`` or ``"both"``.

    Returns:
        float32 ``(batch,)``, at most 0.

    Example:

    >>> emissions = np.zeros((1, 3, 2))  # every local softmax is uniform
    >>> round(float(memm_log_likelihood(emissions, np.array([[0, 1, 1]]), np.zeros((2, 2)))[0]), 5)
    -2.07944

    Reference:
        Su Jianlin, https://kexue.fm/archives/7213 (2020); McCallum, Freitag & Pereira, "Maximum Entropy
        Markov Models for Information Extraction and Segmentation", ICML 2000.
    """
    _check_direction(direction)
    emissions, transitions, start, end, mask = _checked(emissions, transitions, start_transitions, end_transitions,
                                                        mask)
    if len(transitions.shape) != 2:
        num_tags = emissions.shape[-1]
        raise ValueError(f"`transitions` of an MEMM must have shape ({num_tags}, {num_tags}). "
                         f"Received: transitions.shape={_shape(transitions)}")
    tags = _tags(tags, emissions, mask)
    emissions, mask, lengths, _, (tags,) = _prepare(emissions, mask, tags)
    return _memm_log_likelihood_aligned(emissions, tags, transitions, mask, lengths, start, end, direction)


def memm_negative_log_likelihood(emissions, tags, transitions, mask=None, start_transitions=None,
                                 end_transitions=None, direction="forward", reduction="none"):
    """``-log P(y|x)`` of an MEMM (``direction="both"``: the Bi-MEMM's averaged cross-entropy); see
    :func:`memm_log_likelihood`. Never negative: each factor is a probability. ``reduction`` as in
    :func:`crf_negative_log_likelihood`."""
    checks.check_one_of("reduction", reduction, REDUCTIONS)
    values = ops.maximum(-memm_log_likelihood(emissions, tags, transitions, mask, start_transitions,
                                              end_transitions, direction), 0.0)
    if reduction == "none":
        return values
    emissions = _emissions(emissions)
    return _reduce(values, reduction, _mask(mask, emissions), emissions)


def _memm_potentials_aligned(emissions, transitions, mask, lengths, start, end, direction):
    """Unary ``(batch, time, K)`` and pairwise ``(batch, time, K, K)`` log-potentials whose path score is
    the MEMM's log-likelihood (entry ``[b, t, i, j]`` scores ``y_{t-1} = i, y_t = j``)."""
    batch, time, num_tags = ops.shape(emissions)[0], ops.shape(emissions)[1], emissions.shape[-1]
    unary = ops.zeros_like(emissions)
    pairwise = ops.zeros((batch, time, num_tags, num_tags), "float32")
    count = 0
    if direction in ("forward", "both"):
        first = emissions[:, :1] if start is None else emissions[:, :1] + start
        unary_fw = ops.concatenate([first - ops.logsumexp(first, axis=-1, keepdims=True),
                                    ops.zeros_like(emissions[:, 1:])], axis=1)
        logits = ops.expand_dims(transitions, 0) + ops.expand_dims(emissions, 2)  # (b, t, i, j) = g(i,j) + f_t(j)
        unary = unary + unary_fw
        pairwise = pairwise + logits - ops.logsumexp(logits, axis=-1, keepdims=True)
        count += 1
    if direction in ("backward", "both"):
        last_index = (time - 1) * ops.ones((batch,), "int32") if lengths is None else ops.maximum(lengths - 1, 0)
        is_last = ops.expand_dims(ops.arange(time, dtype="int32"), 0) == ops.expand_dims(last_index, 1)
        last = emissions if end is None else emissions + end
        unary_bw = ops.where(ops.expand_dims(is_last, -1), last - ops.logsumexp(last, axis=-1, keepdims=True), 0.0)
        previous = ops.concatenate([ops.zeros_like(emissions[:, :1]), emissions[:, :-1]], axis=1)  # f_{t-1}
        logits = ops.expand_dims(transitions, 0) + ops.expand_dims(previous, 3)  # (b, t, i, j) = g(i,j) + f_{t-1}(i)
        unary = unary + unary_bw
        pairwise = pairwise + logits - ops.logsumexp(logits, axis=-2, keepdims=True)
        count += 1
    return unary / count, pairwise / count


def memm_potentials(emissions, transitions, mask=None, start_transitions=None, end_transitions=None,
                    direction="forward"):
    """An MEMM written as chain potentials: ``path_score(unary, tags, pairwise, mask)`` is its log-likelihood.

    Forward: ``pairwise[b, t, i, j] = log softmax_j(g(i, j) + f_t(j))``, ``unary[:, 0] = log softmax(f_1)``.
    Backward: ``pairwise[b, t, i, j] = log softmax_i(g(i, j) + f_{t-1}(i))``, a unary on the last valid
    step. ``"both"`` averages them. This is what lets the CRF's Viterbi decode an MEMM exactly, and the
    CRF's forward algorithm prove it normalized (``log Z = 0`` for either direction alone).

    Returns:
        ``(unary, pairwise)``: float32 ``(batch, time, K)`` and ``(batch, time, K, K)``, in the original
        step order of ``mask`` (entry ``t`` of ``pairwise`` links the valid step before ``t`` to ``t``).
    """
    _check_direction(direction)
    emissions, transitions, start, end, mask = _checked(emissions, transitions, start_transitions, end_transitions,
                                                        mask)
    aligned_emissions, prefix, lengths, order, _ = _prepare(emissions, mask)
    unary, pairwise = _memm_potentials_aligned(aligned_emissions, transitions, prefix, lengths, start, end,
                                               direction)
    if order is None:
        return unary, pairwise
    unary, pairwise = _restore(order, unary, pairwise)
    return unary, pairwise


# ---------------------------------------------------------------------------------------------------
# One Viterbi for all: max-product over chain potentials.
# ---------------------------------------------------------------------------------------------------


def _pack(*parts):
    """Time-major ``(n, batch, ...)`` float32 tensors as one ``(n, batch, sum of sizes)`` tensor.

    Keras's TensorFlow ``ops.scan`` fails when it gets several ``xs`` of unknown length (it calls
    ``assert_is_compatible_with`` on ``None``), so every step input travels packed in one tensor.
    Packing only moves values (a bool mask becomes 0.0/1.0), so the numbers are unchanged.
    """
    flat = [ops.reshape(ops.cast(x, "float32"), (ops.shape(x)[0], ops.shape(x)[1], math.prod(x.shape[2:])))
            for x in parts]
    return flat[0] if len(flat) == 1 else ops.concatenate(flat, axis=-1)


def _unpack(x, shapes):
    """Undo :func:`_pack` for one step: ``x`` is ``(batch, sum of sizes)``; ``shapes`` the trailing shapes."""
    parts, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        parts.append(ops.reshape(x[:, offset:offset + size], (-1, *shape)))
        offset += size
    return parts


def _viterbi_aligned(unary, transitions, mask, start, end):
    per_step = len(transitions.shape) == 4
    num_tags = unary.shape[-1]
    e = _time_major(unary)
    g = _time_major(transitions) if per_step else transitions
    m = None if mask is None else ops.expand_dims(_time_major(mask), -1)  # (time, batch, 1)
    delta = e[0] if start is None else e[0] + start
    # step inputs: (scores, g_t if per step, mask_t if masked), packed into one tensor for ops.scan
    shapes = [(num_tags,)] + ([(num_tags, num_tags)] if per_step else []) + ([(1,)] if m is not None else [])

    def inputs(first):
        return _pack(first, *([g[1:]] if per_step else []), *([m[1:]] if m is not None else []))

    def step(delta, x):  # delta_t(j) = max_i(delta_{t-1}(i) + g(i, j)) + f_t(j)
        x = _unpack(x, shapes)
        scores = ops.expand_dims(delta, 2) + (x[1] if per_step else g)  # (batch, from, to)
        new = ops.max(scores, axis=1) + x[0]
        new = new if m is None else ops.where(x[-1] > 0.5, new, delta)
        return new, new

    if unary.shape[1] == 1:
        deltas = None
    else:
        delta, later = ops.scan(step, delta, inputs(e[1:]))
        deltas = ops.concatenate([ops.expand_dims(e[0] if start is None else e[0] + start, 0), later[:-1]], 0)
    if end is not None:
        delta = delta + end
    best_score = ops.max(delta, axis=1)
    last = ops.cast(ops.argmax(delta, axis=1), "int32")
    if deltas is None:
        return ops.expand_dims(last, 1), best_score

    def back(tag, x):  # y_{t-1} = argmax_i(delta_{t-1}(i) + g(i, y_t)): the back-pointer, recomputed
        x = _unpack(x, shapes)
        if per_step:
            column = ops.squeeze(ops.take_along_axis(x[1], ops.reshape(tag, (-1, 1, 1)), axis=2), 2)
        else:
            column = ops.take(ops.transpose(g), tag, axis=0)  # g(., y_t): (batch, from)
        previous = ops.cast(ops.argmax(x[0] + column, axis=1), "int32")
        if m is not None:
            previous = ops.where(ops.squeeze(x[-1], -1) > 0.5, previous, tag)  # a padded step keeps the tag
        return previous, previous

    _, earlier = ops.scan(back, last, inputs(deltas), reverse=True)  # earlier[t] = tag at step t
    tags = ops.concatenate([earlier, ops.expand_dims(last, 0)], axis=0)
    return ops.moveaxis(tags, 0, 1), best_score


def viterbi_decode(emissions, transitions, mask=None, start_transitions=None, end_transitions=None,
                   pad_tag=-1, return_score=False):
    """The highest-scoring path, ``argmax_y f(y; x)``, by dynamic programming (max-product).

    ``delta_t(j) = max_i(delta_{t-1}(i) + g(i, j)) + f_t(j)`` with back-pointers, then a backward pass.
    One decoder for every model here: the CRF passes its emissions and ``(K, K)`` transitions; an MEMM
    passes the per-step potentials of :func:`memm_potentials`, so its exact MAP path comes out of the
    same code.

    Args:
        emissions: ``(batch, time, num_tags)`` unary scores.
        transitions: ``(num_tags, num_tags)`` or ``(batch, time, num_tags, num_tags)`` pairwise scores.
        mask, start_transitions, end_transitions: as in :func:`path_score`.
        pad_tag: the value written at masked steps.
        return_score: also return the best path's score.

    Returns:
        int32 ``(batch, time)`` tags (``pad_tag`` at masked steps), and with ``return_score`` the float32
        ``(batch,)`` best scores (0 for rows without a valid step).

    Example:

    >>> emissions = np.array([[[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    >>> sticky = np.array([[3.0, 0.0], [0.0, 0.0]])  # staying in tag 0 pays
    >>> ops.convert_to_numpy(viterbi_decode(emissions, sticky)).tolist()
    [[0, 0, 0]]
    >>> ops.convert_to_numpy(viterbi_decode(emissions, np.zeros((2, 2)), mask=[[True, False, True]])).tolist()
    [[0, -1, 1]]
    """
    checks.check_int("pad_tag", pad_tag)
    checks.check_bool("return_score", return_score)
    emissions, transitions, start, end, mask = _checked(emissions, transitions, start_transitions, end_transitions,
                                                        mask)
    aligned, prefix, lengths, order, transitions = _prepare_with_transitions(emissions, mask, transitions)
    tags, score = _viterbi_aligned(aligned, transitions, prefix, start, end)
    if order is None:
        return (tags, score) if return_score else tags
    (tags,) = _restore(order, tags)
    tags = ops.where(mask, tags, pad_tag)
    score = ops.where(lengths > 0, score, 0.0)
    return (tags, score) if return_score else tags


def memm_decode(emissions, transitions, mask=None, start_transitions=None, end_transitions=None,
                direction="forward", decoding="exact", pad_tag=-1):
    """Decode an MEMM (or Bi-MEMM) with the shared :func:`viterbi_decode`.

    ``decoding="exact"`` finds ``argmax_y log P(y|x)`` of the model itself (for ``"both"``, the average of
    the two directions' log-likelihoods: still a chain, so Viterbi is exact). ``decoding="score"`` ignores
    the local normalizers and maximises ``f(y; x)`` like a CRF, as bert4keras decodes its MEMM.

    Returns:
        int32 ``(batch, time)``, ``pad_tag`` at masked steps.
    """
    if decoding not in DECODINGS:
        raise ValueError(f"`decoding` must be one of {DECODINGS}. Received: decoding={decoding!r}")
    if decoding == "score":
        return viterbi_decode(emissions, transitions, mask, start_transitions, end_transitions, pad_tag)
    unary, pairwise = memm_potentials(emissions, transitions, mask, start_transitions, end_transitions, direction)
    return viterbi_decode(unary, pairwise, mask, pad_tag=pad_tag)


# ---------------------------------------------------------------------------------------------------
# Keras heads and a model that puts a head on any encoder.
# ---------------------------------------------------------------------------------------------------


class _ChainHead(keras.layers.Layer):
    """Shared parts of the CRF and MEMM heads: the transition matrix and the optional boundary scores."""

    def __init__(self, num_tags, use_boundary_transitions=False, transitions_initializer="zeros",
                 transitions_regularizer=None, **kwargs):
        if "dtype" not in kwargs:
            kwargs["dtype"] = "float32"  # normalizers in float32, like a softmax output under mixed precision
        super().__init__(**kwargs)
        self.num_tags = _check_num_tags(num_tags)
        self.use_boundary_transitions = checks.check_bool("use_boundary_transitions", use_boundary_transitions)
        self.transitions_initializer = checks.get_keras_object("transitions_initializer", keras.initializers.get,
                                                               transitions_initializer)
        self.transitions_regularizer = checks.get_keras_object("transitions_regularizer", keras.regularizers.get,
                                                               transitions_regularizer)
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) != 3 or (input_shape[-1] is not None and input_shape[-1] != self.num_tags):
            raise ValueError(
                f"`{type(self).__name__}` expects emission scores of shape (batch, time, num_tags) with "
                f"num_tags={self.num_tags}: put a Dense({self.num_tags}) on the encoder. "
                f"Received: input_shape={tuple(input_shape)}")
        self.transitions = self.add_weight(
            name="transitions", shape=(self.num_tags, self.num_tags), dtype="float32",
            initializer=self.transitions_initializer, regularizer=self.transitions_regularizer,
            trainable=True, autocast=False)
        if self.use_boundary_transitions:
            self.start_transitions = self.add_weight(name="start_transitions", shape=(self.num_tags,),
                                                     dtype="float32", initializer="zeros", autocast=False)
            self.end_transitions = self.add_weight(name="end_transitions", shape=(self.num_tags,),
                                                   dtype="float32", initializer="zeros", autocast=False)
        else:
            self.start_transitions = self.end_transitions = None

    def call(self, inputs, mask=None):
        return ops.cast(inputs, "float32")

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def _boundaries(self):
        return self.start_transitions, self.end_transitions

    def _reduction(self, reduction):
        return self.reduction if reduction is None else checks.check_one_of("reduction", reduction, REDUCTIONS)

    def _ensure_built(self, emissions):
        if not self.built:
            self.build(tuple(ops.shape(emissions)))

    def get_config(self):
        return {**super().get_config(), "num_tags": self.num_tags,
                "use_boundary_transitions": self.use_boundary_transitions,
                "transitions_initializer": keras.initializers.serialize(self.transitions_initializer),
                "transitions_regularizer": keras.regularizers.serialize(self.transitions_regularizer)}


@keras.saving.register_keras_serializable(package="lib")
class CRF(_ChainHead):
    """A linear-chain CRF head: trainable transitions, the forward-algorithm loss and Viterbi decoding.

    The layer passes its input (the emission scores) through unchanged, in float32, keeping the Keras mask;
    it owns the transition scores that :meth:`negative_log_likelihood` and :meth:`decode` combine with
    them. :class:`SequenceTagger` wires it into ``compile``/``fit``/``predict``.

    Args:
        num_tags: number of tags ``K``; the input's last axis must be ``K``.
        use_boundary_transitions: also learn ``start_transitions`` and ``end_transitions`` (``(K,)``).
        transitions_initializer: initializer of the ``(K, K)`` transitions. The default ``"zeros"`` starts
            the CRF as a per-token softmax classifier (with ``g = 0``, ``Z`` factorizes over steps).
        transitions_regularizer: optional regularizer of the transitions.
        parallel: compute ``log Z`` with the O(log T)-depth tree reduction (:func:`log_partition`).
        reduction: how :meth:`negative_log_likelihood` reduces the batch, one of :data:`REDUCTIONS`
            (``"none"``, one value per row, by default). :class:`SequenceTagger` always takes one per row.
        **kwargs: standard layer arguments. The layer computes in float32 unless ``dtype`` is given.

    Call arguments:
        inputs: emission scores ``(batch, time, num_tags)``.
        mask: optional ``(batch, time)`` Keras mask (passed on unchanged).

    Returns:
        The emission scores as float32 ``(batch, time, num_tags)``.

    Example:

    >>> crf = CRF(num_tags=3)
    >>> emissions = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    >>> emissions = crf(emissions)
    >>> tuple(crf.decode(emissions).shape), tuple(crf.negative_log_likelihood(np.zeros((2, 5)), emissions).shape)
    ((2, 5), (2,))

    Reference:
        Su Jianlin, "CRF用过了，不妨再了解下更快的MEMM？", https://kexue.fm/archives/7213 (2020);
        Lafferty, McCallum & Pereira, "Conditional Random Fields", ICML 2001.
    """

    def __init__(self, num_tags, use_boundary_transitions=False, transitions_initializer="zeros",
                 transitions_regularizer=None, parallel=False, reduction="none", **kwargs):
        super().__init__(num_tags, use_boundary_transitions, transitions_initializer, transitions_regularizer,
                         **kwargs)
        if not isinstance(parallel, bool):
            raise ValueError(f"`parallel` must be a bool. Received: parallel={parallel!r}")
        self.parallel = parallel
        self.reduction = checks.check_one_of("reduction", reduction, REDUCTIONS)

    def negative_log_likelihood(self, tags, emissions, mask=None, reduction=None):
        """``log Z(x) - f(y; x)`` per row, float32 ``(batch,)``, or reduced by ``reduction`` (the layer's
        ``reduction`` when ``None``); see :func:`crf_negative_log_likelihood`."""
        self._ensure_built(emissions)
        return crf_negative_log_likelihood(emissions, tags, self.transitions, mask, *self._boundaries(),
                                           parallel=self.parallel, reduction=self._reduction(reduction))

    def marginals(self, emissions, mask=None):
        """``P(y_t = j | x)``, float32 ``(batch, time, num_tags)``; see :func:`crf_marginals`."""
        self._ensure_built(emissions)
        return crf_marginals(emissions, self.transitions, mask, *self._boundaries())

    def log_partition(self, emissions, mask=None):
        """``log Z(x)`` per row; see :func:`log_partition`."""
        self._ensure_built(emissions)
        return log_partition(emissions, self.transitions, mask, *self._boundaries(), parallel=self.parallel)

    def decode(self, emissions, mask=None, pad_tag=-1):
        """The Viterbi path, int32 ``(batch, time)``, ``pad_tag`` at masked steps."""
        self._ensure_built(emissions)
        return viterbi_decode(emissions, self.transitions, mask, *self._boundaries(), pad_tag=pad_tag)

    def get_config(self):
        return {**super().get_config(), "parallel": self.parallel, "reduction": self.reduction}


@keras.saving.register_keras_serializable(package="lib")
class MEMM(_ChainHead):
    """An MEMM head (``direction="forward"``), its mirror image (``"backward"``) or the Bi-MEMM (``"both"``).

    Same parameters as :class:`CRF` (emissions plus a ``K x K`` transition matrix), trained with per-step
    softmax cross-entropies instead of the forward algorithm (:func:`memm_log_likelihood`).

    Args:
        num_tags, use_boundary_transitions, transitions_initializer, transitions_regularizer: as in
            :class:`CRF`; a forward MEMM uses ``start_transitions`` on its first step and a backward one
            uses ``end_transitions`` on its first (the last position).
        direction: ``"forward"`` (left to right, the classic MEMM), ``"backward"`` or ``"both"`` (the
            article's Bi-MEMM: the average of the two cross-entropies; no extra parameters).
        decoding: ``"exact"`` (Viterbi on the model's own log-likelihood) or ``"score"`` (Viterbi on the
            unnormalized ``f``, as a CRF decodes); see :func:`memm_decode`.
        reduction: as in :class:`CRF`.
        **kwargs: standard layer arguments.

    Example:

    >>> bi_memm = MEMM(num_tags=3, direction="both")
    >>> emissions = bi_memm(np.zeros((1, 4, 3), "float32"))
    >>> round(float(bi_memm.negative_log_likelihood(np.array([[0, 1, 2, 0]]), emissions)[0]), 4)  # 4 log 3
    4.3944

    Reference:
        Su Jianlin, https://kexue.fm/archives/7213 (2020); McCallum, Freitag & Pereira, ICML 2000.
    """

    def __init__(self, num_tags, use_boundary_transitions=False, transitions_initializer="zeros",
                 transitions_regularizer=None, direction="forward", decoding="exact", reduction="none", **kwargs):
        super().__init__(num_tags, use_boundary_transitions, transitions_initializer, transitions_regularizer,
                         **kwargs)
        self.direction = _check_direction(direction)
        if decoding not in DECODINGS:
            raise ValueError(f"`decoding` must be one of {DECODINGS}. Received: decoding={decoding!r}")
        self.decoding = decoding
        self.reduction = checks.check_one_of("reduction", reduction, REDUCTIONS)

    def negative_log_likelihood(self, tags, emissions, mask=None, reduction=None):
        """``-log P(y|x)`` per row (for ``"both"``, the mean of the two directions), float32 ``(batch,)``, or
        reduced by ``reduction`` (the layer's ``reduction`` when ``None``)."""
        self._ensure_built(emissions)
        return memm_negative_log_likelihood(emissions, tags, self.transitions, mask, *self._boundaries(),
                                            direction=self.direction, reduction=self._reduction(reduction))

    def decode(self, emissions, mask=None, pad_tag=-1):
        """The decoded path, int32 ``(batch, time)``, ``pad_tag`` at masked steps."""
        self._ensure_built(emissions)
        return memm_decode(emissions, self.transitions, mask, *self._boundaries(), direction=self.direction,
                           decoding=self.decoding, pad_tag=pad_tag)

    def get_config(self):
        return {**super().get_config(), "direction": self.direction, "decoding": self.decoding,
                "reduction": self.reduction}


def _keras_mask(x):
    try:
        from keras.src.backend import get_keras_mask
    except ImportError:  # pragma: no cover - older Keras
        return getattr(x, "_keras_mask", None)
    return get_keras_mask(x)


@keras.saving.register_keras_serializable(package="lib")
class SequenceTagger(keras.Model):
    """Any encoder plus a :class:`CRF` or :class:`MEMM` head, trainable with ``compile``/``fit``.

    The encoder maps inputs to emission scores ``(batch, time, num_tags)`` and may produce a Keras mask
    (``Embedding(mask_zero=True)``, padding on either side). ``fit`` minimises the head's negative
    log-likelihood, averaged over the sequences of a batch (so CRF and MEMM losses are on one scale);
    ``predict`` returns decoded tags (int32, ``-1`` at masked steps). ``compile`` needs no ``loss``.

    Args:
        encoder: a Keras layer or model returning emission scores (end it with ``Dense(num_tags)``).
        head: a :class:`CRF` or :class:`MEMM`.
        pad_id: for encoders that drop the Keras mask (``Conv1D`` does): when the encoder's output carries
            no mask, the valid steps are ``inputs != pad_id``. ``None`` (default): every step is valid then.

    Example:

    >>> encoder = keras.Sequential([keras.layers.Embedding(10, 8, mask_zero=True), keras.layers.Dense(3)])
    >>> tagger = SequenceTagger(encoder, CRF(3))
    >>> tagger.compile(optimizer="adam")
    >>> tagger.predict(np.array([[4, 5, 6, 0]]), verbose=0).shape
    (1, 4)
    """

    def __init__(self, encoder, head, pad_id=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(head, _ChainHead):
            raise ValueError(f"`head` must be a lib.crf.CRF or lib.crf.MEMM layer. Received: head={head!r}")
        if not isinstance(encoder, keras.layers.Layer):
            raise ValueError("`encoder` must be a Keras layer or model that maps inputs to emission scores. "
                             f"Received: encoder={encoder!r}")
        if pad_id is not None and (isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer))):
            raise ValueError(f"`pad_id` must be an integer or None. Received: pad_id={pad_id!r}")
        self.encoder = encoder
        self.head = head
        self.pad_id = None if pad_id is None else int(pad_id)

    def call(self, inputs, training=None):
        features = self.encoder(inputs, training=training)
        mask = _keras_mask(features)
        if mask is None and self.pad_id is not None:
            mask = ops.not_equal(inputs, self.pad_id)
        return self.head(features, mask=mask)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        per_sequence = self.head.negative_log_likelihood(y, y_pred, _keras_mask(y_pred), reduction="none")
        if sample_weight is not None:
            per_sequence = per_sequence * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        loss = ops.mean(per_sequence)
        if self.losses:
            loss = loss + ops.sum([ops.cast(value, "float32") for value in self.losses])
        if keras.backend.backend() == "tensorflow":  # tf.distribute sums replica gradients: scale like Keras
            import tensorflow as tf

            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            if replicas > 1:
                loss = loss / replicas
        return loss

    def predict_step(self, *args):
        if len(args) == 2:  # the JAX trainer's form: (state, data) -> (outputs, non-trainable variables)
            (trainable, non_trainable, *_), data = args
            mapping = list(zip(self.trainable_variables, trainable)) + list(
                zip(self.non_trainable_variables, non_trainable))
            with keras.StatelessScope(state_mapping=mapping):
                return self.predict_step(data), non_trainable
        x, _, _ = keras.utils.unpack_x_y_sample_weight(args[0])
        emissions = self(x, training=False)
        return self.head.decode(emissions, _keras_mask(emissions))

    def decode(self, x):
        """Decoded tags for a batch ``x``: int32 ``(batch, time)``, ``-1`` at masked steps."""
        emissions = self(x, training=False)
        return self.head.decode(emissions, _keras_mask(emissions))

    def get_config(self):
        return {**super().get_config(), "encoder": keras.saving.serialize_keras_object(self.encoder),
                "head": keras.saving.serialize_keras_object(self.head), "pad_id": self.pad_id}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        head = keras.saving.deserialize_keras_object(config.pop("head"))
        return cls(encoder, head, **config)


# ---------------------------------------------------------------------------------------------------
# Brute force (for tests and the chapter's small cases) and evaluation.
# ---------------------------------------------------------------------------------------------------


def enumerate_paths(length: int, num_tags: int) -> np.ndarray:
    """All ``num_tags ** length`` tag paths, int ``(num_tags ** length, length)``, in lexicographic order.

    Example:

    >>> enumerate_paths(2, 2).tolist()
    [[0, 0], [0, 1], [1, 0], [1, 1]]
    """
    length, num_tags = checks.check_positive_int("length", length), _check_num_tags(num_tags)
    if num_tags ** length > 10_000_000:
        raise ValueError(f"`length` must be >= 1 with num_tags ** length <= 1e7 paths. Received: length={length}")
    return np.stack(np.unravel_index(np.arange(num_tags ** length), (num_tags,) * length), axis=1)


def segment_spans(tags: Sequence[str]) -> set[tuple[int, int]]:
    """Word spans ``(start, end)`` (end exclusive) of a B/M/E/S character tagging.

    A word ends at an ``e`` or ``s``, or where the next tag begins a new word (``b``/``s``): ill-formed
    sequences from a model are read leniently rather than dropped.

    Example:

    >>> sorted(segment_spans("bessbme"))
    [(0, 2), (2, 3), (3, 4), (4, 7)]
    """
    spans, start = set(), 0
    if tags is None or not hasattr(tags, "__iter__"):
        raise TypeError(f"`tags` must be a sequence of B/M/E/S tags (a string or a list). Received: tags={tags!r}")
    tags = [str(tag).lower() for tag in tags]
    for i, tag in enumerate(tags):
        if tag in ("b", "s") and i > start:  # a new word begins: close the open one
            spans.add((start, i))
            start = i
        if tag in ("e", "s") or i == len(tags) - 1:
            spans.add((start, i + 1))
            start = i + 1
    return spans


def entity_spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """Entity spans ``(start, end, type)`` of a BIO tagging (``B-PER``, ``I-PER``, ``O``); a stray
    ``I-X`` opens an entity, as conlleval does.

    Example:

    >>> sorted(entity_spans(["B-PER", "I-PER", "O", "I-LOC"]))
    [(0, 2, 'PER'), (3, 4, 'LOC')]
    """
    spans, start, kind = set(), None, None
    for i, tag in enumerate(checks.check_sequences("tags", tags) + ["O"]):
        prefix, _, label = str(tag).partition("-")
        if start is not None and (prefix != "I" or label != kind):
            spans.add((start, i, kind))
            start = kind = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, label
    return spans


def span_f1(gold: Sequence[set], predicted: Sequence[set]) -> dict[str, float]:
    """Micro precision, recall and F1 of predicted spans against gold spans, summed over sentences.

    Example:

    >>> span_f1([{(0, 2), (2, 3)}], [{(0, 2), (2, 4)}])
    {'precision': 0.5, 'recall': 0.5, 'f1': 0.5}
    """
    gold, predicted = checks.check_sequences("gold", gold), checks.check_sequences("predicted", predicted)
    for name, sets in (("gold", gold), ("predicted", predicted)):
        bad = [spans for spans in sets if not isinstance(spans, (set, frozenset))]
        if bad:
            raise TypeError(f"`{name}` must hold one set of spans per sentence. Received: {name} holding "
                            f"{bad[0]!r} of type {type(bad[0]).__name__}")
    if len(gold) != len(predicted):
        raise ValueError(f"`gold` and `predicted` must hold one span set per sentence. "
                         f"Received: len(gold)={len(gold)}, len(predicted)={len(predicted)}")
    hits = sum(len(g & p) for g, p in zip(gold, predicted))
    n_gold, n_pred = sum(map(len, gold)), sum(map(len, predicted))
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _pairs(pairs):
    """``(tokens, tags)`` pairs as a list, each with one tag per token."""
    pairs = checks.check_sequences("pairs", pairs)
    for number, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise ValueError(f"`pairs` must hold (tokens, tags) pairs. Received: pairs[{number}]={pair!r}")
        tokens, tags = pair
        if len(tokens) != len(tags):
            raise ValueError(f"`pairs` must hold one tag per token. Received: pairs[{number}] with {len(tokens)} "
                             f"tokens and {len(tags)} tags ({str(tokens)[:20]!r}...)")
    return pairs


def split_sentences(pairs, delimiters: str = "。！？；", max_length: int | None = None):
    """Cut ``(characters, tags)`` pairs after every delimiter character (a sentence ends there).

    In People's Daily a delimiter is always a one-character word (tag ``s``), so a cut never splits a
    word. Sentences longer than ``max_length`` are dropped (not truncated, which would cut words).

    Example:

    >>> split_sentences([("你好。再见！", "bessbes"[:6])])
    [('你好。', 'bes'), ('再见！', 'sbe')]
    """
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                   or max_length < 1):
        raise ValueError(f"`max_length` must be a positive integer or None. Received: max_length={max_length!r}")
    sentences = []
    for chars, tags in _pairs(pairs):
        start = 0
        for i, char in enumerate(chars):
            if char in delimiters or i == len(chars) - 1:
                if max_length is None or i + 1 - start <= max_length:
                    sentences.append((chars[start:i + 1], tags[start:i + 1]))
                start = i + 1
    return sentences


def encode_tagging(pairs, vocabulary, tag_names: Sequence[str], length: int):
    """Token ids and tag ids of ``(tokens, tags)`` pairs, right-padded to ``length``.

    Args:
        pairs: ``(tokens, tags)`` with one tag per token (strings or lists).
        vocabulary: a :class:`lib.data.Vocabulary` (id 0 is padding).
        tag_names: the tag set; a tag's id is its position.
        length: the padded length; longer sequences are truncated.

    Returns:
        ``(ids, tags)``: int32 ``(n, length)`` each; padded steps hold id 0 and tag 0.
    """
    tag_names = checks.check_sequences("tag_names", tag_names) if not isinstance(tag_names, str) else list(tag_names)
    if len(set(tag_names)) != len(tag_names):
        raise ValueError(f"`tag_names` must not repeat a tag (a tag's id is its position). "
                         f"Received: tag_names={tag_names!r}")
    if not hasattr(vocabulary, "encode"):
        raise TypeError(f"`vocabulary` must be a lib.data.Vocabulary. Received: vocabulary={vocabulary!r}")
    length = checks.check_positive_int("length", length)
    index = {name: i for i, name in enumerate(tag_names)}
    pairs = _pairs(pairs)
    ids = vocabulary.encode([tokens for tokens, _ in pairs], length=length)
    tags = np.zeros(ids.shape, dtype=np.int32)
    for row, (_, labels) in enumerate(pairs):
        labels = list(labels)[:length]
        unknown = set(labels) - set(index)
        if unknown:
            raise ValueError(f"`tag_names` must contain every tag. Received: tag_names={list(tag_names)!r}, "
                             f"missing {sorted(unknown)!r}")
        tags[row, :len(labels)] = [index[label] for label in labels]
    return ids, tags
