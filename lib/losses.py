"""Multi-label classification with "softmax + cross-entropy" (chapter "Softmax + cross-entropy for multi-label").

Single-label softmax cross-entropy with target class ``t`` is a smooth version of "the target score
is the largest" (``logsumexp`` is a smooth maximum)::

    -log(e^{s_t} / Σ_i e^{s_i}) = log(1 + Σ_{i≠t} e^{s_i - s_t}) ≈ max(0, s_i - s_t for i ≠ t)

Su Jianlin's article (https://kexue.fm/archives/7359, 2020-04-25; later the ZLPR paper,
arXiv:2208.02955) asks for the same with several target classes: every positive score above every
negative score, and, so that the number of positives need not be known, every positive above a
threshold class ``s_0`` and every negative below it. With ``s_0 = 0`` the loss separates::

    log(1 + Σ_{i∈Ω_neg} e^{s_i}) + log(1 + Σ_{j∈Ω_pos} e^{-s_j})

and the decision rule is "predict the classes whose score is > 0". The scores are raw logits: no
sigmoid or softmax in front.

This module has that loss as a function and as a Keras loss, the threshold-0 decision rule, an F1
metric that thresholds logits, and what the chapter compares it with: binary cross-entropy with
per-label positive weights, and per-label thresholds tuned on held-out data.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from lib import checks

AVERAGES = (None, "micro", "macro", "weighted")
"""Accepted values of ``average`` in :class:`MultilabelF1Score` and :func:`f1_scores`."""


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


_check_bool = checks.check_bool


def _check_mask_value(mask_value):
    if mask_value is None:
        return None
    if isinstance(mask_value, bool) or not isinstance(mask_value, (int, float)) or not math.isfinite(mask_value) \
            or mask_value in (0, 1):
        raise ValueError(
            "`mask_value` must be None or a finite number other than 0 and 1 (labels equal to it are padding). "
            f"Received: mask_value={mask_value!r}"
        )
    return mask_value


def _check_threshold(threshold):
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"`threshold` must be a finite number (a logit). Received: threshold={threshold!r}")
    return float(threshold)


def _concrete(x):
    """The NumPy values of ``x`` when it holds values (eager), ``None`` when it is symbolic or traced."""
    if isinstance(x, np.ndarray):
        return x
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            return None
    try:
        return ops.convert_to_numpy(x)
    except Exception:  # KerasTensor and other symbolic tensors hold no values
        return None


def _check_shapes(y_true, y_pred):
    true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
    compatible = len(true_shape) == len(pred_shape) and all(
        a is None or b is None or a == b for a, b in zip(true_shape, pred_shape))
    if not pred_shape or not compatible:
        raise ValueError(
            "`y_true` and `y_pred` must have the same shape (..., num_labels), with at least one axis. "
            f"Received: y_true.shape={true_shape}, y_pred.shape={pred_shape}"
        )


def _check_mask(mask, y_true):
    if mask is None:
        return None
    mask = checks.check_tensor("mask", mask)
    shape, target = tuple(mask.shape), tuple(y_true.shape)
    fits = len(shape) <= len(target) and all(
        m is None or t is None or m in (1, t) for m, t in zip(shape[::-1], target[::-1]))
    if not fits:
        raise ValueError(f"`mask` must be broadcastable to the shape of `y_true` {target}. Received: mask.shape={shape}")
    return mask


def _label_masks(y_true, mask_value, mask=None):
    """Boolean ``(positive, negative)`` tensors; entries equal to ``mask_value`` (or masked out) are neither.

    Labels other than 0, 1 and ``mask_value`` are an error: a ``ValueError`` in eager mode, a TensorFlow
    ``InvalidArgumentError`` with the same message in a ``tf.function`` (``model.fit``). Under XLA
    (``jit_compile=True``) TensorFlow drops run-time assertions, so there only eager calls are checked.
    """
    allowed = "0, 1" + ("" if mask_value is None else f" or mask_value={mask_value!r}")
    message = f"`y_true` must hold only {allowed}"
    values = _concrete(y_true)
    if values is not None:
        values = np.asarray(values)
        bad = ~(np.isin(values, [0, 1]) | (values == mask_value if mask_value is not None else False))
        if bad.any():
            raise ValueError(f"{message}. Received: y_true containing {np.unique(values[bad])[:5].tolist()}")
    positive = ops.equal(y_true, 1)
    negative = ops.equal(y_true, 0)
    if values is None and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        valid = ops.logical_or(positive, negative)
        if mask_value is not None:
            valid = ops.logical_or(valid, ops.equal(y_true, mask_value))
        tf.debugging.Assert(tf.reduce_all(valid), [message])
    if mask is not None:
        mask = ops.cast(mask, "bool")
        positive = ops.logical_and(positive, mask)
        negative = ops.logical_and(negative, mask)
    return positive, negative


def _logits(y_pred, from_logits):
    """Scores as logits in a dtype of at least float32 (float16/bfloat16 are promoted)."""
    y_pred = checks.check_tensor("y_pred", y_pred)
    dtype = keras.backend.standardize_dtype(y_pred.dtype)
    if dtype not in ("float32", "float64"):
        y_pred = ops.cast(y_pred, "float32")
    values = _concrete(y_pred)
    if values is not None:
        values = np.asarray(values)
        if np.isnan(values).any():
            raise ValueError(f"`y_pred` must not hold NaN. Received: y_pred with NaN at {np.argwhere(np.isnan(values))[:3].tolist()}")
        if not from_logits and values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError("`y_pred` must hold probabilities in [0, 1] when from_logits=False (logits need "
                             f"from_logits=True). Received: y_pred from {values.min()!r} to {values.max()!r}")
    if not from_logits:
        # Probabilities of a sigmoid back to logits: log(p) - log(1 - p), clipped like Keras's BCE.
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1.0 - eps)
        y_pred = ops.log(p) - ops.log1p(-p)
    return y_pred


def _masked_logsumexp_with_zero(values, keep):
    """log(1 + Σ_{keep} e^{values}) along the last axis, stably.

    The "1 +" is a zero logit appended to the kept values (the threshold class s_0 = 0); masked entries
    become -inf, whose exponential is exactly 0 and whose gradient is exactly 0. The maximum of the
    row (at least the appended 0) is subtracted inside ``logsumexp``, so no exponential overflows.
    """
    masked = ops.where(keep, values, float("-inf"))
    zero = ops.zeros_like(values[..., :1])
    return ops.logsumexp(ops.concatenate([masked, zero], axis=-1), axis=-1)


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def multilabel_categorical_crossentropy(y_true, y_pred, from_logits=True, mask=None, mask_value=-1):
    """The multi-label "softmax + cross-entropy" (ZLPR) loss, one value per example.

    With ``Ω_pos`` the labels where ``y_true == 1`` and ``Ω_neg`` those where ``y_true == 0``::

        loss = log(1 + Σ_{i∈Ω_neg} e^{s_i}) + log(1 + Σ_{j∈Ω_pos} e^{-s_j})

    computed as two log-sum-exps, each with a zero logit appended (the threshold class ``s_0 = 0``).
    It is finite and has finite gradients for any finite scores, including ±1e4 in float32 and float16
    inputs; each gradient component is at most 1 in absolute value. With exactly one positive ``t``
    and no threshold it would be ordinary softmax cross-entropy ``log Σ_i e^{s_i - s_t}``.

    Args:
        y_true: targets of shape ``(..., num_labels)``: 1 positive, 0 negative, ``mask_value`` padding.
        y_pred: scores of the same shape. Raw logits (``from_logits=True``, the intended use: the
            decision rule is ``score > 0``), or sigmoid probabilities (``from_logits=False``), which are
            turned back into logits ``log p - log(1 - p)`` after clipping to ``[ε, 1 - ε]``, so their
            range is limited to about ±16 in float32.
        from_logits: whether ``y_pred`` holds logits.
        mask: optional boolean tensor broadcastable to ``y_true``; ``False`` entries are padding.
        mask_value: entries of ``y_true`` equal to it are padding (neither positive nor negative);
            ``None`` disables it.

    Returns:
        A tensor of shape ``y_pred.shape[:-1]``: float32 for float16/bfloat16/float32 scores, float64
        for float64 scores. A row whose labels are all padding has loss 0.

    Raises:
        ValueError: if the shapes differ, ``y_true`` holds other values than 0, 1 and ``mask_value``
            (checked on concrete values; inside a ``tf.function`` a TensorFlow assertion reports the
            same message), or an argument is invalid.

    Example:

    >>> y_true = np.array([[1, 0, 0, 1]])
    >>> scores = np.array([[2.0, -1.0, 0.5, -0.5]])
    >>> round(float(multilabel_categorical_crossentropy(y_true, scores)[0]), 4)
    2.128
    >>> # = log(1 + e^-1 + e^0.5) + log(1 + e^-2 + e^0.5)
    >>> round(float(np.log(1 + np.exp(-1) + np.exp(0.5)) + np.log(1 + np.exp(-2) + np.exp(0.5))), 4)
    2.128

    Reference:
        Su Jianlin, 《将"Softmax+交叉熵"推广到多标签分类问题》, https://kexue.fm/archives/7359 (2020);
        Su et al., "ZLPR: A Novel Loss for Multi-label Classification", arXiv:2208.02955 (2022).
    """
    _check_bool("from_logits", from_logits)
    mask_value = _check_mask_value(mask_value)
    y_true = checks.check_tensor("y_true", y_true)
    y_pred = _logits(y_pred, from_logits)
    _check_shapes(y_true, y_pred)
    mask = _check_mask(mask, y_true)
    y_true = ops.cast(y_true, y_pred.dtype)
    positive, negative = _label_masks(y_true, mask_value, mask)
    # log(1 + Σ_neg e^{s_i}) + log(1 + Σ_pos e^{-s_j})
    return _masked_logsumexp_with_zero(y_pred, negative) + _masked_logsumexp_with_zero(-y_pred, positive)


@keras.saving.register_keras_serializable(package="lib")
class MultilabelCategoricalCrossentropy(keras.losses.Loss):
    """The multi-label "softmax + cross-entropy" (ZLPR) loss as a Keras loss.

    Computes :func:`multilabel_categorical_crossentropy` for each example and reduces it over the
    batch. Predict with :func:`predict_labels` (score > 0), and measure with :class:`MultilabelF1Score`.
    Under ``mixed_float16`` the loss is computed in float32 (Keras casts ``y_pred`` to the loss's dtype),
    so the model's last layer may stay in float16. A Keras mask on ``y_pred`` of shape ``(batch, time)``
    (sequence labelling with several labels per token) masks whole positions, as in any Keras loss.

    Args:
        from_logits: whether ``y_pred`` holds logits (default ``True``, the intended use).
        mask_value: entries of ``y_true`` equal to it are padding labels, counted neither as positive
            nor as negative (default -1; ``None`` disables it).
        reduction: as for any Keras loss (default ``"sum_over_batch_size"``).
        name: the loss's name.
        dtype: the dtype of the computation (default: ``keras.config.floatx()``).

    Example:

    >>> loss = MultilabelCategoricalCrossentropy()
    >>> y_true = np.array([[1, 0, 0, 1], [0, 1, -1, -1]])   # -1: padding labels
    >>> scores = np.array([[2.0, -1.0, 0.5, -0.5], [-3.0, 3.0, 9.0, -9.0]])
    >>> round(float(loss(y_true, scores)), 4)
    1.1126

    Reference:
        Su Jianlin, https://kexue.fm/archives/7359 (2020); Su et al., ZLPR, arXiv:2208.02955 (2022).
    """

    def __init__(self, from_logits=True, mask_value=-1, reduction="sum_over_batch_size",
                 name="multilabel_categorical_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = _check_bool("from_logits", from_logits)
        self.mask_value = _check_mask_value(mask_value)

    def call(self, y_true, y_pred):
        return multilabel_categorical_crossentropy(y_true, y_pred, from_logits=self.from_logits,
                                                   mask_value=self.mask_value)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "mask_value": self.mask_value}


# ---------------------------------------------------------------------------------------------
# What the chapter compares with: binary cross-entropy with positive weights
# ---------------------------------------------------------------------------------------------


def _check_pos_weight(pos_weight):
    try:
        values = np.asarray(pos_weight, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array(np.nan)
    if isinstance(pos_weight, bool) or values.ndim > 1 or values.size == 0 or not np.all(np.isfinite(values)) \
            or np.any(values <= 0):
        raise ValueError(
            "`pos_weight` must be a positive number or a 1-D sequence of positive numbers, one per label. "
            f"Received: pos_weight={pos_weight!r}"
        )
    return float(values) if values.ndim == 0 else [float(v) for v in values]


def weighted_binary_crossentropy(y_true, y_pred, pos_weight=1.0, from_logits=True, mask=None, mask_value=-1):
    """Binary cross-entropy of each label, positives weighted by ``pos_weight``, averaged over labels.

    For a label with score ``s`` and weight ``w``::

        -w·y·log σ(s) - (1 - y)·log(1 - σ(s)) = w·y·softplus(-s) + (1 - y)·softplus(s)

    With ``pos_weight=1`` this is Keras's ``binary_crossentropy(..., from_logits=True)``. Padding labels
    (``mask_value`` or ``mask``) are left out of the average.

    Args:
        y_true, y_pred, from_logits, mask, mask_value: as in :func:`multilabel_categorical_crossentropy`.
        pos_weight: a positive number, or one per label (broadcast along the last axis).

    Returns:
        A tensor of shape ``y_pred.shape[:-1]``.

    Example:

    >>> round(float(weighted_binary_crossentropy(np.array([[1, 0]]), np.array([[0.0, 0.0]]), pos_weight=3.0)[0]), 4)
    1.3863
    """
    _check_bool("from_logits", from_logits)
    mask_value = _check_mask_value(mask_value)
    pos_weight = _check_pos_weight(pos_weight)
    y_true = checks.check_tensor("y_true", y_true)
    y_pred = _logits(y_pred, from_logits)
    _check_shapes(y_true, y_pred)
    mask = _check_mask(mask, y_true)
    if isinstance(pos_weight, list) and y_pred.shape[-1] is not None and len(pos_weight) != y_pred.shape[-1]:
        raise ValueError(
            f"`pos_weight` must have one value per label ({y_pred.shape[-1]}). "
            f"Received: pos_weight with {len(pos_weight)} values"
        )
    y_true = ops.cast(y_true, y_pred.dtype)
    positive, negative = _label_masks(y_true, mask_value, mask)
    weight = ops.convert_to_tensor(pos_weight, dtype=y_pred.dtype)
    positive, negative = ops.cast(positive, y_pred.dtype), ops.cast(negative, y_pred.dtype)
    per_label = weight * positive * ops.softplus(-y_pred) + negative * ops.softplus(y_pred)
    count = ops.sum(positive + negative, axis=-1)
    return ops.sum(per_label, axis=-1) / ops.maximum(count, 1.0)


@keras.saving.register_keras_serializable(package="lib")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with per-label positive weights, as a Keras loss.

    The "binary cross-entropy with class weights" that the article compares its loss with. Pick the
    weights with :func:`balanced_pos_weight`.

    Args:
        pos_weight: a positive number, or one per label.
        from_logits, mask_value, reduction, name, dtype: as in :class:`MultilabelCategoricalCrossentropy`.

    Example:

    >>> loss = WeightedBinaryCrossentropy(pos_weight=[1.0, 4.0])
    >>> loss.get_config()["pos_weight"]
    [1.0, 4.0]
    """

    def __init__(self, pos_weight=1.0, from_logits=True, mask_value=-1, reduction="sum_over_batch_size",
                 name="weighted_binary_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.pos_weight = _check_pos_weight(pos_weight)
        self.from_logits = _check_bool("from_logits", from_logits)
        self.mask_value = _check_mask_value(mask_value)

    def call(self, y_true, y_pred):
        return weighted_binary_crossentropy(y_true, y_pred, pos_weight=self.pos_weight, from_logits=self.from_logits,
                                            mask_value=self.mask_value)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight, "from_logits": self.from_logits,
                "mask_value": self.mask_value}


def balanced_pos_weight(y_true, power=1.0, mask_value=-1):
    """Per-label positive weights ``(n_neg / n_pos) ** power`` from training labels (NumPy).

    ``power=1`` weighs positives and negatives of each label equally in total ("balanced"); ``power=0``
    is plain binary cross-entropy. A label without positives gets weight 1.

    Example:

    >>> balanced_pos_weight(np.array([[1, 0], [0, 0], [0, 1], [0, 1]]), power=1.0)
    [3.0, 1.0]
    """
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power) or power < 0:
        raise ValueError(f"`power` must be a non-negative number. Received: power={power!r}")
    y = _check_numpy_labels(y_true, mask_value)
    if y.shape[0] == 0:
        raise ValueError(f"`y_true` must hold at least one example to count positives in. "
                         f"Received: y_true.shape={np.shape(y_true)}")
    n_pos = (y == 1).sum(axis=0).astype(np.float64)
    n_neg = (y == 0).sum(axis=0).astype(np.float64)
    ratio = np.where(n_pos > 0, n_neg / np.maximum(n_pos, 1.0), 1.0)
    return [float(v) for v in np.maximum(ratio, 1e-12) ** power]


# ---------------------------------------------------------------------------------------------
# Decisions and metrics
# ---------------------------------------------------------------------------------------------


def predict_labels(scores, threshold=0.0):
    """The decision rule of the article: a label is predicted when its score is above the threshold (0).

    Args:
        scores: logits of shape ``(..., num_labels)``.
        threshold: a logit, or one per label (``tune_thresholds``'s output); 0 is the rule the loss is
            built for, and for a sigmoid output it is probability 0.5.

    Returns:
        An int32 tensor of 0/1 of the same shape.

    Example:

    >>> ops.convert_to_numpy(predict_labels(np.array([[2.0, -0.1, 0.0, 0.3]]))).tolist()
    [[1, 0, 0, 1]]
    """
    if np.ndim(threshold) == 0:
        threshold = _check_threshold(threshold)
    else:
        threshold = np.asarray(threshold, dtype=np.float32)
        if threshold.ndim != 1 or not np.all(np.isfinite(threshold)):
            raise ValueError(f"`threshold` must be a finite number or a 1-D array of them. Received: threshold={threshold!r}")
    scores = checks.check_tensor("scores", scores)
    if np.ndim(threshold) == 1 and (not scores.shape or scores.shape[-1] not in (None, threshold.shape[0])):
        raise ValueError(f"`threshold` must hold one value per label ({scores.shape[-1] if scores.shape else 0}). "
                         f"Received: threshold with {threshold.shape[0]} values, scores.shape={tuple(scores.shape)}")
    return ops.cast(ops.greater(scores, ops.cast(threshold, scores.dtype)), "int32")


@keras.saving.register_keras_serializable(package="lib")
class MultilabelF1Score(keras.metrics.Metric):
    """F1 score of multi-label predictions made by thresholding logits (at 0 by default).

    ``keras.metrics.F1Score`` thresholds probabilities in (0, 1]; this metric thresholds raw scores,
    as the decision rule of :class:`MultilabelCategoricalCrossentropy` needs, and skips padding labels.
    It keeps true positives, false positives and false negatives per label.

    Args:
        average: ``"micro"`` (pool the counts of all labels), ``"macro"`` (mean of per-label F1),
            ``"weighted"`` (per-label F1 weighted by the number of positives), or ``None`` (per-label F1).
        threshold: the logit above which a label is predicted (default 0).
        mask_value: entries of ``y_true`` equal to it are skipped (default -1; ``None`` disables it).
        name, dtype: as for any Keras metric.

    A label with no positives and no predictions has F1 = 0 (the convention of Keras and scikit-learn).

    Example:

    >>> metric = MultilabelF1Score(average="micro")
    >>> metric.update_state(np.array([[1, 0, 1], [0, 1, -1]]), np.array([[2.0, 1.0, -1.0], [-1.0, 3.0, 5.0]]))
    >>> round(float(metric.result()), 4)   # tp=2, fp=1, fn=1
    0.6667
    """

    def __init__(self, average="micro", threshold=0.0, mask_value=-1, name="multilabel_f1", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if average not in AVERAGES:
            raise ValueError(f"`average` must be one of {AVERAGES}. Received: average={average!r}")
        self.average = average
        self.threshold = _check_threshold(threshold)
        self.mask_value = _check_mask_value(mask_value)
        self._direction = "up"
        self.num_labels = None

    def _build(self, num_labels):
        if num_labels is None:
            raise ValueError("`y_pred` must have a known last axis (num_labels). Received: y_pred.shape[-1]=None")
        self.num_labels = int(num_labels)
        for name in ("true_positives", "false_positives", "false_negatives"):
            setattr(self, name, self.add_variable(shape=(self.num_labels,), initializer="zeros", name=name,
                                                  dtype=self.dtype))

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = checks.check_tensor("y_pred", y_pred)
        y_true = checks.check_tensor("y_true", y_true)
        _check_shapes(y_true, y_pred)
        if self.num_labels is None:
            self._build(y_pred.shape[-1])
        elif y_pred.shape[-1] not in (None, self.num_labels):
            raise ValueError(f"`y_pred` must have the {self.num_labels} labels this metric has counted so far (a "
                             f"metric counts one label set; make a new one for another). "
                             f"Received: y_pred.shape={tuple(y_pred.shape)}")
        if sample_weight is not None:
            sample_weight = checks.check_tensor("sample_weight", sample_weight)
            expected = tuple(y_pred.shape[:-1])
            shape = tuple(sample_weight.shape)
            if len(shape) > len(expected) or not all(
                    w is None or e is None or w in (1, e) for w, e in zip(shape[::-1], expected[::-1])):
                raise ValueError(f"`sample_weight` must have one weight per example, shape {expected}. "
                                 f"Received: sample_weight.shape={shape}")
        positive, negative = _label_masks(ops.cast(y_true, "float32"), self.mask_value)
        predicted = ops.greater(ops.cast(y_pred, "float32"), self.threshold)
        counts = {
            "true_positives": ops.logical_and(predicted, positive),
            "false_positives": ops.logical_and(predicted, negative),
            "false_negatives": ops.logical_and(ops.logical_not(predicted), positive),
        }
        weight = None
        if sample_weight is not None:
            weight = ops.expand_dims(ops.cast(sample_weight, self.dtype), -1)
        for name, hits in counts.items():
            hits = ops.cast(hits, self.dtype)
            if weight is not None:  # one weight per example (per position for sequences)
                hits = hits * weight
            variable = getattr(self, name)
            variable.assign(variable + ops.sum(ops.reshape(hits, (-1, self.num_labels)), axis=0))

    def result(self):
        if self.num_labels is None:
            return ops.convert_to_tensor(0.0, dtype=self.dtype)
        tp, fp, fn = self.true_positives, self.false_positives, self.false_negatives
        if self.average == "micro":
            tp, fp, fn = ops.sum(tp), ops.sum(fp), ops.sum(fn)
        f1 = ops.divide_no_nan(2.0 * tp, 2.0 * tp + fp + fn)
        if self.average == "macro":
            return ops.mean(f1)
        if self.average == "weighted":
            support = tp + fn
            return ops.divide_no_nan(ops.sum(f1 * support), ops.sum(support))
        return f1

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, dtype=variable.dtype))

    def get_config(self):
        return {**super().get_config(), "average": self.average, "threshold": self.threshold,
                "mask_value": self.mask_value}


def _check_numpy_labels(y_true, mask_value=-1, name="y_true"):
    mask_value = _check_mask_value(mask_value)
    y = np.asarray(y_true)
    if y.ndim < 1:
        raise ValueError(f"`{name}` must have at least one axis (labels). Received: {name}.shape={y.shape}")
    allowed = np.isin(y, [0, 1]) | ((y == mask_value) if mask_value is not None else False)
    if not np.all(allowed):
        raise ValueError(f"`{name}` must hold only 0, 1 or mask_value={mask_value!r}. "
                         f"Received: {name} containing {np.unique(y[~allowed])[:5].tolist()}")
    y = y.reshape(-1, y.shape[-1]) if y.ndim > 1 else y.reshape(-1, 1)
    return np.where(y == mask_value, -1, y).astype(np.int64) if mask_value is not None else y.astype(np.int64)


def f1_scores(y_true, y_pred, mask_value=-1):
    """Micro, macro and per-label F1 of 0/1 predictions (NumPy; the same numbers as :class:`MultilabelF1Score`).

    Args:
        y_true: 0/1 targets ``(..., num_labels)``; entries equal to ``mask_value`` are skipped.
        y_pred: 0/1 predictions of the same shape (for example :func:`predict_labels` of the scores).

    Returns:
        A dict with ``"micro"`` and ``"macro"`` (floats), ``"per_label"`` (array of F1 per label, 0 for a label
        with no positives and no predictions) and ``"support"`` (positives per label).

    Example:

    >>> scores = f1_scores(np.array([[1, 0, 1], [0, 1, 1]]), np.array([[1, 1, 0], [0, 1, 1]]))
    >>> round(scores["micro"], 4), scores["per_label"].round(4).tolist()
    (0.75, [1.0, 0.6667, 0.6667])
    """
    y = _check_numpy_labels(y_true, mask_value)
    p = np.asarray(y_pred)
    if p.shape != np.shape(y_true):
        raise ValueError("`y_true` and `y_pred` must have the same shape. "
                         f"Received: y_true.shape={np.shape(y_true)}, y_pred.shape={p.shape}")
    if not np.all(np.isin(p, [0, 1])):
        raise ValueError("`y_pred` must hold 0/1 decisions (use predict_labels on scores). "
                         f"Received: y_pred containing {np.unique(p[~np.isin(p, [0, 1])])[:5].tolist()}")
    p = p.reshape(y.shape).astype(bool)
    tp = ((y == 1) & p).sum(axis=0)
    fp = ((y == 0) & p).sum(axis=0)
    fn = ((y == 1) & ~p).sum(axis=0)
    denominator = 2 * tp + fp + fn
    per_label = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    total = 2 * tp.sum() + fp.sum() + fn.sum()
    return {"micro": float(2 * tp.sum() / total) if total else 0.0, "macro": float(per_label.mean()),
            "per_label": per_label, "support": tp + fn}


def tune_thresholds(y_true, scores, mask_value=-1):
    """Per-label thresholds that maximise each label's F1 on the given (held-out) data (NumPy).

    For each label the candidates are "predict the top k scores" for every k; the F1 of the top k is
    2·tp_k / (k + n_pos), computed for all k at once from a cumulative sum. The threshold returned sits
    halfway between the k-th and (k+1)-th score, so it generalises to new scores; ties of equal scores
    are never split. A label with no positives gets a threshold above all its scores.

    Args:
        y_true: 0/1 targets ``(n, num_labels)``; ``mask_value`` entries are skipped.
        scores: logits of the same shape.

    Returns:
        A float64 array of ``num_labels`` thresholds, for :func:`predict_labels`.

    Example:

    >>> tune_thresholds(np.array([[1], [1], [0], [0]]), np.array([[3.0], [1.0], [2.0], [-1.0]])).tolist()
    [0.0]
    """
    y = _check_numpy_labels(y_true, mask_value)
    s = checks.check_array("scores", scores, dtype=np.float64)
    if s.shape != np.shape(y_true):
        raise ValueError("`y_true` and `scores` must have the same shape. "
                         f"Received: y_true.shape={np.shape(y_true)}, scores.shape={s.shape}")
    if np.isnan(s).any():
        raise ValueError(f"`scores` must not hold NaN. Received: scores with NaN at {np.argwhere(np.isnan(s))[:3].tolist()}")
    s = s.reshape(y.shape)
    thresholds = np.empty(y.shape[1])
    for label in range(y.shape[1]):  # a handful of labels, each a vectorised sort: fine in NumPy
        keep = y[:, label] >= 0
        values, targets = s[keep, label], y[keep, label]
        order = np.argsort(-values, kind="stable")
        values, targets = values[order], targets[order]
        if targets.sum() == 0 or values.size == 0:
            thresholds[label] = (values.max() if values.size else 0.0) + 1.0
            continue
        tp = np.concatenate([[0], np.cumsum(targets)])
        k = np.arange(values.size + 1)
        f1 = 2.0 * tp / (k + targets.sum())
        # a cut after position k is possible only where the next score is strictly lower
        allowed = np.concatenate([[True], values[:-1] > values[1:], [True]])
        best = int(np.argmax(np.where(allowed, f1, -1.0)))
        if best == 0:
            thresholds[label] = values[0] + 1.0
        elif best == values.size:
            thresholds[label] = values[-1] - 1.0
        else:
            thresholds[label] = 0.5 * (values[best - 1] + values[best])
    return thresholds


__all__ = [
    "AVERAGES", "MultilabelCategoricalCrossentropy", "MultilabelF1Score", "WeightedBinaryCrossentropy",
    "balanced_pos_weight", "f1_scores", "multilabel_categorical_crossentropy", "predict_labels",
    "tune_thresholds", "weighted_binary_crossentropy",
]
