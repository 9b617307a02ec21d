"""Tests of lib.losses: the multi-label "softmax + cross-entropy" (ZLPR) loss, its baselines and metrics."""

import itertools
import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from lib import losses
from lib.losses import (MultilabelCategoricalCrossentropy, MultilabelF1Score, WeightedBinaryCrossentropy,
                        multilabel_categorical_crossentropy)

RNG = np.random.default_rng(7)


def brute_force_loss(y_true, scores, mask_value=-1):
    """The article's threshold-class form, summed pair by pair in float64 (no factorisation, no log-sum-exp):

    log(1 + Σ_{i∈neg, j∈pos} e^{s_i - s_j} + Σ_{i∈neg} e^{s_i - s_0} + Σ_{j∈pos} e^{s_0 - s_j}),  s_0 = 0.
    """
    y = np.asarray(y_true).reshape(-1, np.shape(y_true)[-1])
    s = np.asarray(scores, dtype=np.float64).reshape(y.shape)
    out = []
    for row_y, row_s in zip(y, s):
        pos = [v for v, t in zip(row_s, row_y) if t == 1]
        neg = [v for v, t in zip(row_s, row_y) if t == 0]
        total = 1.0
        for si, sj in itertools.product(neg, pos):
            total += np.exp(si - sj)
        total += sum(np.exp(si - 0.0) for si in neg) + sum(np.exp(0.0 - sj) for sj in pos)
        out.append(np.log(total))
    return np.array(out).reshape(np.shape(y_true)[:-1])


def random_problem(batch=6, labels=5, padding=True, scale=2.0):
    y = RNG.integers(0, 2, size=(batch, labels))
    if padding:
        y[RNG.random(size=y.shape) < 0.2] = -1
    s = RNG.normal(scale=scale, size=(batch, labels))
    return y, s


# --- numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force_pairwise_form_in_float64(seed):
    global RNG
    RNG = np.random.default_rng(seed)
    y, s = random_problem()
    ours = np.asarray(multilabel_categorical_crossentropy(y, ops.convert_to_tensor(s, "float64")))
    np.testing.assert_allclose(ours, brute_force_loss(y, s), rtol=1e-12)


def test_float32_agrees_with_float64_and_keeps_extra_axes():
    y, s = random_problem(batch=12, labels=7)
    y, s = y.reshape(3, 4, 7), s.reshape(3, 4, 7)
    ours = multilabel_categorical_crossentropy(y, ops.convert_to_tensor(s, "float32"))
    assert ours.shape == (3, 4) and ours.dtype == "float32"
    np.testing.assert_allclose(np.asarray(ours), brute_force_loss(y, s), rtol=2e-6)


def test_one_positive_without_threshold_terms_is_softmax_cross_entropy():
    # the loss minus its threshold terms = log Σ_i e^{s_i - s_t} = Keras's categorical cross-entropy
    s = RNG.normal(size=(5, 6))
    t = RNG.integers(0, 6, size=5)
    y = np.eye(6, dtype=int)[t]
    ours = np.asarray(multilabel_categorical_crossentropy(y, ops.convert_to_tensor(s, "float64")))
    s_t = s[np.arange(5), t]
    threshold_terms = np.exp(-s_t) + (np.exp(s).sum(axis=1) - np.exp(s_t))
    softmax_ce = np.asarray(keras.losses.categorical_crossentropy(y.astype("float64"), s, from_logits=True))
    np.testing.assert_allclose(np.log(np.exp(ours) - threshold_terms), softmax_ce, rtol=1e-10)


def test_padding_labels_are_left_out():
    y, s = random_problem(padding=False)
    y[:, -2:] = -1  # the last two labels are padding
    full = np.asarray(multilabel_categorical_crossentropy(y, ops.convert_to_tensor(s, "float64")))
    cut = np.asarray(multilabel_categorical_crossentropy(y[:, :-2], ops.convert_to_tensor(s[:, :-2], "float64")))
    np.testing.assert_allclose(full, cut, rtol=1e-14)
    # the same through the `mask` argument, and a row that is all padding costs nothing
    mask = np.ones_like(y, dtype=bool)
    mask[:, -2:] = False
    via_mask = np.asarray(multilabel_categorical_crossentropy(np.clip(y, 0, 1), ops.convert_to_tensor(s, "float64"), mask=mask))
    np.testing.assert_allclose(via_mask, cut, rtol=1e-14)
    assert float(multilabel_categorical_crossentropy(-np.ones((1, 4)), np.ones((1, 4)))[0]) == 0.0


def test_mask_value_is_configurable_and_can_be_disabled():
    y = np.array([[1, 0, 9]])
    s = np.array([[1.0, -1.0, 5.0]])
    assert np.isclose(float(multilabel_categorical_crossentropy(y, s, mask_value=9)[0]),
                      float(multilabel_categorical_crossentropy(y[:, :2], s[:, :2])[0]))
    with pytest.raises(ValueError, match=r"`y_true` must hold only 0, 1\. Received: y_true containing \[-1"):
        multilabel_categorical_crossentropy(np.array([[1, -1]]), np.zeros((1, 2)), mask_value=None)


def test_from_probabilities_equals_from_logits():
    y, s = random_problem()
    p = 1.0 / (1.0 + np.exp(-s))
    from_p = np.asarray(multilabel_categorical_crossentropy(y, ops.convert_to_tensor(p, "float64"), from_logits=False))
    np.testing.assert_allclose(from_p, brute_force_loss(y, s), rtol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_extreme_scores_give_finite_values_and_bounded_gradients(dtype):
    y = RNG.integers(0, 2, size=(64, 9))
    s = ops.convert_to_tensor(RNG.choice([-1e4, 1e4], size=(64, 9)) * RNG.uniform(0.5, 1.0, size=(64, 9)), dtype)
    with tf.GradientTape() as tape:
        tape.watch(s)
        value = multilabel_categorical_crossentropy(y, s)
    gradient = np.asarray(tape.gradient(value, s)).astype(np.float64)
    assert value.dtype == "float32"
    assert np.all(np.isfinite(np.asarray(value))) and np.all(np.isfinite(gradient))
    # at these scales log(1 + Σ e^{s}) is max(0, max s) to float32 precision: the hinge of the article
    s64 = np.asarray(s).astype(np.float64)
    hinge = (np.where(y == 0, s64, 0).max(axis=1, initial=0) + np.where(y == 1, -s64, 0).max(axis=1, initial=0))
    np.testing.assert_allclose(np.asarray(value), hinge, rtol=1e-6)
    # each component of the gradient is a softmax weight: in [-1, 1], and zero for padding
    assert np.abs(gradient).max() <= 1.0
    assert np.all(gradient[y == 1] <= 0) and np.all(gradient[y == 0] >= 0)


def test_gradient_mass_on_negatives_is_below_one_for_any_number_of_labels():
    # The article's balancing argument: Σ_neg ∂L/∂s_i = Σ_neg e^{s_i} / (1 + Σ_neg e^{s_i}) < 1, whereas
    # the summed binary cross-entropy puts σ(s_i) on every negative: a mass that grows with their number.
    for n in (10, 100, 1000):
        y = np.zeros((1, n))
        y[0, :2] = 1
        s = tf.zeros((1, n), "float64")
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(s)
            ours = multilabel_categorical_crossentropy(y, s)
            bce = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(y, s))
        negatives = np.asarray(tape.gradient(ours, s))[0, 2:].sum()
        assert negatives == pytest.approx((n - 2) / (n - 1), rel=1e-12)
        assert np.asarray(tape.gradient(bce, s))[0, 2:].sum() == pytest.approx(0.5 * (n - 2), rel=1e-12)


def test_xla_matches_eager():
    y, s = random_problem(batch=16, labels=11)
    s = ops.convert_to_tensor(s, "float32")

    def value_and_gradient(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = tf.reduce_sum(multilabel_categorical_crossentropy(ops.convert_to_tensor(y), v))
        return out, tape.gradient(out, v)

    eager = value_and_gradient(s)
    compiled = tf.function(value_and_gradient, jit_compile=True)(s)
    np.testing.assert_allclose(np.asarray(compiled[0]), np.asarray(eager[0]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(compiled[1]), np.asarray(eager[1]), rtol=1e-5, atol=1e-7)


# --- validation -----------------------------------------------------------------------------------


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"`y_true` and `y_pred` must have the same shape \(\.\.\., num_labels\)"):
        multilabel_categorical_crossentropy(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"Received: y_true.shape=\(2, 3\), y_pred.shape=\(2, 3, 1\)"):
        multilabel_categorical_crossentropy(np.zeros((2, 3)), np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="with at least one axis"):
        multilabel_categorical_crossentropy(np.float32(1), np.float32(0))


def test_bad_label_values_are_rejected_eagerly_and_in_graphs():
    with pytest.raises(ValueError, match=r"`y_true` must hold only 0, 1 or mask_value=-1\. Received: y_true "
                                         r"containing \[0\.5, 2\.0\]"):
        multilabel_categorical_crossentropy(np.array([[0.5, 2.0, 1.0]]), np.zeros((1, 3)))
    graph_loss = tf.function(lambda a, b: multilabel_categorical_crossentropy(a, b))
    with pytest.raises(tf.errors.InvalidArgumentError, match="`y_true` must hold only 0, 1 or mask_value=-1"):
        graph_loss(ops.convert_to_tensor([[2.0, 0.0]]), tf.zeros((1, 2)))
    assert np.isfinite(np.asarray(graph_loss(ops.convert_to_tensor([[1.0, 0.0]]), tf.zeros((1, 2))))).all()


@pytest.mark.parametrize("bad", [0, 1, 1.0, float("nan"), "pad", True])
def test_bad_mask_value(bad):
    with pytest.raises(ValueError, match=r"`mask_value` must be None or a finite number other than 0 and 1.*"
                                         r"Received: mask_value="):
        MultilabelCategoricalCrossentropy(mask_value=bad)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="`from_logits` must be a bool. Received: from_logits='yes'"):
        MultilabelCategoricalCrossentropy(from_logits="yes")
    with pytest.raises(ValueError, match="`pos_weight` must be a positive number or a 1-D sequence"):
        WeightedBinaryCrossentropy(pos_weight=[1.0, -2.0])
    with pytest.raises(ValueError, match="Received: pos_weight=.heavy."):
        WeightedBinaryCrossentropy(pos_weight="heavy")
    with pytest.raises(ValueError, match=r"`pos_weight` must have one value per label \(3\)\. Received: pos_weight "
                                         r"with 2 values"):
        losses.weighted_binary_crossentropy(np.zeros((1, 3)), np.zeros((1, 3)), pos_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="`threshold` must be a finite number"):
        MultilabelF1Score(threshold=float("inf"))
    with pytest.raises(ValueError, match="`threshold` must be a finite number or a 1-D array"):
        losses.predict_labels(np.zeros((2, 2)), threshold=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"`average` must be one of \(None, 'micro', 'macro', 'weighted'\)\. "
                                         r"Received: average='samples'"):
        MultilabelF1Score(average="samples")
    with pytest.raises(ValueError, match="`power` must be a non-negative number. Received: power=-1"):
        losses.balanced_pos_weight(np.zeros((2, 2)), power=-1)
    with pytest.raises(ValueError, match=r"`y_pred` must hold 0/1 decisions \(use predict_labels on scores\)"):
        losses.f1_scores(np.zeros((2, 2)), np.full((2, 2), 0.7))
    with pytest.raises(ValueError, match=r"`y_true` and `scores` must have the same shape"):
        losses.tune_thresholds(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"`y_true` must hold only 0, 1 or mask_value=-1\. Received: y_true "
                                         r"containing \[3\]"):
        losses.f1_scores(np.array([[3, 0]]), np.array([[1, 0]]))


# --- the baseline and the metrics ------------------------------------------------------------------


def test_weighted_bce_with_unit_weight_is_keras_bce_and_weights_positives():
    y, s = random_problem(padding=False)
    ours = np.asarray(losses.weighted_binary_crossentropy(y, ops.convert_to_tensor(s, "float64")))
    keras_bce = np.asarray(keras.losses.binary_crossentropy(y.astype("float64"), s, from_logits=True))
    np.testing.assert_allclose(ours, keras_bce, rtol=1e-6)
    w = RNG.uniform(0.5, 4.0, size=s.shape[1])
    weighted = np.asarray(losses.weighted_binary_crossentropy(y, ops.convert_to_tensor(s, "float64"), pos_weight=list(w)))
    log_sigmoid = -np.logaddexp(0, -s)
    reference = -(w * y * log_sigmoid + (1 - y) * (log_sigmoid - s)).mean(axis=1)
    np.testing.assert_allclose(weighted, reference, rtol=1e-12)


def test_weighted_bce_skips_padding():
    y, s = random_problem(padding=False)
    y[:, 0] = -1
    full = np.asarray(losses.weighted_binary_crossentropy(y, ops.convert_to_tensor(s, "float64"), pos_weight=2.0))
    cut = np.asarray(losses.weighted_binary_crossentropy(y[:, 1:], ops.convert_to_tensor(s[:, 1:], "float64"), pos_weight=2.0))
    np.testing.assert_allclose(full, cut, rtol=1e-14)


def test_balanced_pos_weight():
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, -1]])
    assert losses.balanced_pos_weight(y) == pytest.approx([3.0, 1 / 3, 1.0])  # the last label has no positives
    assert losses.balanced_pos_weight(y, power=0.5)[0] == pytest.approx(3 ** 0.5)
    assert losses.balanced_pos_weight(y, power=0) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("average", [None, "micro", "macro", "weighted"])
def test_f1_metric_agrees_with_keras_f1_on_probabilities_and_with_numpy(average):
    y = RNG.integers(0, 2, size=(40, 6))
    s = RNG.normal(size=(40, 6)).astype("float32")
    ours = MultilabelF1Score(average=average)
    ours.update_state(y[:20], s[:20])
    ours.update_state(y[20:], s[20:])  # state accumulates over batches
    theirs = keras.metrics.F1Score(average=average, threshold=0.5)
    theirs.update_state(y.astype("float32"), 1.0 / (1.0 + np.exp(-s)))
    np.testing.assert_allclose(np.asarray(ours.result()), np.asarray(theirs.result()), rtol=1e-5)
    reference = losses.f1_scores(y, (s > 0).astype(int))
    if average in ("micro", "macro"):
        assert float(ours.result()) == pytest.approx(reference[average], rel=1e-6)
    if average is None:
        np.testing.assert_allclose(np.asarray(ours.result()), reference["per_label"], rtol=1e-6)
    ours.reset_state()
    assert float(np.sum(np.asarray(ours.result()))) == 0.0


def test_f1_metric_masks_and_weights():
    y = np.array([[1, 0, -1], [1, 1, 0], [0, -1, 1]])
    s = np.array([[1.0, 2.0, 3.0], [-1.0, 1.0, -2.0], [1.0, 1.0, 1.0]], "float32")
    metric = MultilabelF1Score(average=None)
    metric.update_state(y, s, sample_weight=np.array([1.0, 2.0, 0.0]))
    # label 0: tp 1 (w 1), fn 1 (w 2) -> 2/(2+2); label 1: fp 1 (w 1), tp 1 (w 2) -> 4/5; label 2: nothing weighted
    np.testing.assert_allclose(np.asarray(metric.result()), [0.5, 0.8, 0.0], rtol=1e-6)
    assert losses.f1_scores(y, np.array([[1, 1, 1], [0, 1, 0], [1, 1, 1]]))["support"].tolist() == [2, 1, 1]


def test_predict_labels_scalar_and_per_label_thresholds():
    s = np.array([[0.5, -0.5, 0.0], [2.0, 1.0, -3.0]], "float32")
    assert keras.ops.convert_to_numpy(losses.predict_labels(s)).tolist() == [[1, 0, 0], [1, 1, 0]]
    per_label = losses.predict_labels(s, threshold=[1.0, -1.0, -4.0])
    assert keras.ops.convert_to_numpy(per_label).tolist() == [[0, 1, 1], [1, 1, 1]]


def test_tune_thresholds_reaches_the_best_f1_of_any_cut():
    y = RNG.integers(0, 2, size=(60, 4))
    y[:, 3] = 0  # a label without positives
    s = np.round(RNG.normal(size=(60, 4)) + y, 1)  # rounded: ties must not be split
    thresholds = losses.tune_thresholds(y, s)
    tuned = losses.f1_scores(y, keras.ops.convert_to_numpy(losses.predict_labels(s, thresholds)))["per_label"]
    for label in range(3):
        candidates = np.concatenate([[s[:, label].max() + 1], np.unique(s[:, label]) - 1e-9])
        best = max(losses.f1_scores(y[:, label:label + 1], (s[:, label:label + 1] > c).astype(int))["micro"]
                   for c in candidates)
        assert tuned[label] == pytest.approx(best, abs=1e-12)
    assert np.all(s[:, 3] <= thresholds[3])  # no positives: predict none


# --- Keras integration ------------------------------------------------------------------------------


def small_multilabel_problem(n=256, d=8, labels=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x @ rng.normal(size=(d, labels)) > 0.8).astype("float32")
    return x, y


def test_config_round_trip():
    for obj in (MultilabelCategoricalCrossentropy(mask_value=-2.0, reduction="sum", name="ml"),
                WeightedBinaryCrossentropy(pos_weight=[1.0, 2.5], mask_value=None),
                MultilabelF1Score(average="macro", threshold=0.25)):
        clone = obj.__class__.from_config(obj.get_config())
        assert clone.get_config() == obj.get_config()
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert type(restored) is type(obj) and restored.get_config() == obj.get_config()


def test_compile_fit_save_and_load():
    x, y = small_multilabel_problem()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(6)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=MultilabelCategoricalCrossentropy(),
                  metrics=[MultilabelF1Score(average="micro", name="f1")])
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert 0.0 < history["f1"][-1] <= 1.0
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, MultilabelCategoricalCrossentropy)
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert after["loss"] == pytest.approx(before["loss"], rel=1e-6)
    assert after["f1"] == pytest.approx(before["f1"], rel=1e-6)
    # the evaluated loss is the mean of the per-example loss of the predictions
    expected = brute_force_loss(y.astype(int), model.predict(x, verbose=0)).mean()
    assert before["loss"] == pytest.approx(expected, rel=1e-5)


def test_keras_time_mask_averages_over_real_positions_only():
    tokens = np.array([[3, 5, 2, 0, 0], [4, 1, 0, 0, 0]])  # 0 is padding
    y = RNG.integers(0, 2, size=(2, 5, 4)).astype("float32")
    keras.utils.set_random_seed(1)
    inputs = keras.Input((5,), dtype="int32")
    hidden = keras.layers.Embedding(6, 8, mask_zero=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4)(hidden))
    model.compile(loss=MultilabelCategoricalCrossentropy())
    scores = model.predict(tokens, verbose=0)
    per_position = brute_force_loss(y.astype(int), scores)
    expected = per_position[tokens > 0].mean()
    assert model.evaluate(tokens, y, verbose=0) == pytest.approx(expected, rel=1e-5)


def test_mixed_float16_training_with_float16_logits():
    x, y = small_multilabel_problem()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8,))
        model = keras.Model(inputs, keras.layers.Dense(6)(keras.layers.Dense(16, activation="relu")(inputs)))
        assert model.output.dtype == "float16"  # the loss itself must cope with float16 logits
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=MultilabelCategoricalCrossentropy(),
                      metrics=[MultilabelF1Score()])
        history = model.fit(x, y, batch_size=32, epochs=3, verbose=0).history
        assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
        # huge float16 logits: still finite, value and gradient
        s = ops.convert_to_tensor(np.where(y[:8] > 0, -6e4, 6e4), "float16")
        with tf.GradientTape() as tape:
            tape.watch(s)
            value = tf.reduce_mean(MultilabelCategoricalCrossentropy()(y[:8], s))
        assert np.isfinite(np.asarray(value)) and np.all(np.isfinite(np.asarray(tape.gradient(value, s))))
    finally:
        keras.config.set_dtype_policy(previous)
