"""Tests of lib.adversarial: the perturbation and penalty formulas, the FGM and gradient-penalty training
steps (checked against finite differences), fit with callbacks, saving, mixed precision and XLA."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from lib import adversarial
from lib.adversarial import (FGMModel, GradientPenaltyModel, fgm_perturbation, fgsm_perturbation, gradient_penalty,
                             layer_output_gradient, perturb_layer_output, perturbed_predict)

BCE = keras.losses.BinaryCrossentropy(from_logits=True)
# in float64 for the finite-difference tests (a Keras loss computes in the dtype it was made with)
BCE64 = keras.losses.BinaryCrossentropy(from_logits=True, dtype="float64")
SPARSE_CE64 = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")


def text_classifier(vocabulary=12, length=5, width=3, classes=1, dtype=None, seed=0):
    """Embedding -> Conv1D(tanh) -> mean -> Dense: small, smooth (finite differences work), no dropout."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((length,), dtype="int32")
    e = keras.layers.Embedding(vocabulary, width, embeddings_initializer=keras.initializers.RandomNormal(0, 0.5),
                               name="embedding", dtype=dtype)(inputs)
    h = keras.layers.Conv1D(4, 2, activation="tanh", name="conv", dtype=dtype)(e)
    h = keras.layers.GlobalAveragePooling1D(dtype=dtype)(h)
    outputs = keras.layers.Dense(classes, name="head", dtype=dtype)(h)
    return keras.Model(inputs, outputs)


def toy_batch(n=8, length=5, vocabulary=12, classes=1, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocabulary, (n, length)).astype("int32")
    if classes == 1:
        return x, (x[:, 0] < vocabulary // 2).astype("float32")[:, None]
    return x, (x[:, 0] % classes).astype("int32")


@pytest.fixture
def float64():
    # Keras caches its global dtype policy at first use, so floatx alone would not reach new layers.
    previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(previous_floatx)
    keras.config.set_dtype_policy(previous_policy)


# --- the formulas -----------------------------------------------------------------------------------


def test_fgm_has_norm_epsilon_and_the_gradient_direction_per_example():
    g = np.random.default_rng(0).normal(size=(6, 4, 3))
    r = np.asarray(fgm_perturbation(g, 0.7))
    norms = np.linalg.norm(r.reshape(6, -1), axis=1)
    np.testing.assert_allclose(norms, 0.7, rtol=1e-6)
    cosine = np.sum(r * g, axis=(1, 2)) / (norms * np.linalg.norm(g.reshape(6, -1), axis=1))
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-6)
    np.testing.assert_allclose(r, 0.7 * g / np.linalg.norm(g.reshape(6, -1), axis=1)[:, None, None], rtol=1e-6)


def test_fgm_with_one_norm_for_the_batch():
    g = np.random.default_rng(1).normal(size=(5, 7))
    r = np.asarray(fgm_perturbation(g, 2.0, per_example=False))
    np.testing.assert_allclose(r, 2.0 * g / np.linalg.norm(g), rtol=1e-6)


def test_fgm_is_zero_for_a_zero_gradient_and_never_nan():
    g = np.zeros((3, 4), dtype="float32")
    g[1] = [1e-30, 0.0, -1e-30, 0.0]  # tiny but non-zero: still a unit direction
    r = np.asarray(fgm_perturbation(g, 1.0))
    assert np.all(np.isfinite(r))
    np.testing.assert_array_equal(r[[0, 2]], 0.0)
    np.testing.assert_allclose(r[1], [2**-0.5, 0.0, -(2**-0.5), 0.0], rtol=1e-6)


@pytest.mark.parametrize("scale", [1e-7, 1.0, 1e3])
def test_fgm_in_float16_keeps_dtype_norm_and_direction(scale):
    # 1e-7 is subnormal in float16 and its square underflows; 1e3 squared overflows float16.
    g32 = np.random.default_rng(2).normal(size=(4, 10)).astype("float32")
    g16 = tf.constant(g32 * scale, dtype="float16")
    r = fgm_perturbation(g16, 0.5)
    assert r.dtype == tf.float16
    expected = 0.5 * g16.numpy().astype("float64") / np.linalg.norm(g16.numpy().astype("float64"), axis=1,
                                                                     keepdims=True)
    np.testing.assert_allclose(r.numpy().astype("float64"), expected, atol=2e-3)  # float16 rounding of 0.5-ish values


def test_fgm_batch_of_scalars_is_epsilon_times_sign():
    np.testing.assert_allclose(np.asarray(fgm_perturbation(np.array([-3.0, 0.0, 2.0]), 0.1)), [-0.1, 0.0, 0.1])


def test_fgsm_is_epsilon_times_sign():
    g = np.random.default_rng(3).normal(size=(3, 5))
    np.testing.assert_array_equal(np.asarray(fgsm_perturbation(g, 0.25)), 0.25 * np.sign(g))


def test_gradient_penalty_matches_numpy():
    g = np.random.default_rng(4).normal(size=(5, 3, 2))
    norms = np.linalg.norm(g.reshape(5, -1), axis=1)
    assert float(gradient_penalty(g, 0.3)) == pytest.approx(0.3 * norms.mean(), rel=1e-12)
    assert float(gradient_penalty(g, 0.3, penalty="squared")) == pytest.approx(0.15 * (norms**2).mean(), rel=1e-12)


def test_gradient_penalty_is_differentiable_at_a_zero_gradient():
    g = tf.Variable(tf.zeros((2, 3)))
    with tf.GradientTape() as tape:
        value = gradient_penalty(g, 1.0)
    assert np.all(np.isfinite(tape.gradient(value, g).numpy()))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "0.5", None])
def test_bad_epsilon_raises(bad):
    with pytest.raises(ValueError, match=r"`epsilon` must be a finite number >= 0. Received: epsilon="):
        fgm_perturbation(np.ones((2, 2)), bad)
    with pytest.raises(ValueError, match=r"`epsilon` must be a finite number >= 0"):
        gradient_penalty(np.ones((2, 2)), bad)


@pytest.mark.parametrize("cls", [FGMModel, GradientPenaltyModel])
@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("nan")])
def test_wrappers_need_a_positive_epsilon(cls, bad):
    with pytest.raises(ValueError, match=r"`epsilon` must be a finite number > 0. Received: epsilon="):
        cls(text_classifier(), "embedding", bad)


def test_other_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"`gradient` must have a batch axis \(rank >= 1\)"):
        fgm_perturbation(np.float32(2.0), 1.0)
    with pytest.raises(ValueError, match=r"`penalty` must be one of \('norm', 'squared'\). Received: penalty='l1'"):
        gradient_penalty(np.ones((2, 2)), 1.0, penalty="l1")
    with pytest.raises(ValueError, match=r"`penalty` must be one of .* Received: penalty='l1'"):
        GradientPenaltyModel(text_classifier(), "embedding", penalty="l1")
    with pytest.raises(ValueError, match=r"`method` must be one of \('fgm', 'gradient_penalty'\). Received: method='pgd'"):
        adversarial.adversarial_training(text_classifier(), "embedding", method="pgd")
    with pytest.raises(ValueError, match=r"`model` must be a keras.Model. Received: model="):
        FGMModel(keras.layers.Dense(2), "embedding")


def test_bad_layer_name_lists_the_layers():
    with pytest.raises(ValueError, match=r"`layer_name` must name a layer of the model; the model has \[.*'embedding'"
                                         r".*\]. Received: layer_name='Embedding-Token'"):
        FGMModel(text_classifier(), "Embedding-Token")
    with pytest.raises(ValueError, match=r"`layer_name` must be a non-empty string. Received: layer_name=3"):
        GradientPenaltyModel(text_classifier(), 3)


def test_a_layer_with_integer_output_is_refused_when_training():
    inputs = keras.Input((5,), dtype="int32")
    ids = keras.layers.Identity(name="ids")(inputs)
    e = keras.layers.Embedding(12, 3)(ids)
    model = FGMModel(keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(e))), "ids")
    model.compile(optimizer="sgd", loss=BCE)
    with pytest.raises(ValueError, match=r"must return floating-point values .*not the token ids.*int32"):
        model.fit(*toy_batch(), verbose=0)


def test_a_layer_that_is_not_called_is_reported():
    inputs = keras.Input((5,), dtype="int32")
    unused = keras.layers.Dense(2, name="unused")
    unused.build((None, 3))
    e = keras.layers.Embedding(12, 3)(inputs)
    inner = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(e)))
    inner.unused = unused  # tracked by the model, never called
    model = GradientPenaltyModel(inner, "unused")
    model.compile(optimizer="sgd", loss=BCE)
    with pytest.raises(ValueError, match=r"Layer 'unused' was not called by the model's forward pass"):
        model.fit(*toy_batch(), verbose=0)


# --- gradients at the layer: finite differences -------------------------------------------------------------


def per_example_losses(model, x, y, loss, perturbation=None):
    none = loss.__class__.from_config({**loss.get_config(), "reduction": None})
    if perturbation is None:
        return none(y, model(x)).numpy()
    with perturb_layer_output(adversarial.find_layer(model, "embedding"), [perturbation]):
        return none(y, model(x)).numpy()


@pytest.mark.parametrize("classes, loss", [(1, BCE64), (3, SPARSE_CE64)])
def test_layer_gradient_and_penalty_match_finite_differences(float64, classes, loss):
    model = text_classifier(classes=classes)
    x, y = toy_batch(classes=classes)
    _, (g,) = layer_output_gradient(model, "embedding", x, y, loss)
    g = g.numpy()
    shape, h = g.shape, 1e-6
    numeric = np.zeros_like(g)
    for index in np.ndindex(shape[1:]):  # one coordinate of every example at once: the losses are per example
        step = np.zeros(shape)
        step[(slice(None), *index)] = h
        numeric[(slice(None), *index)] = (per_example_losses(model, x, y, loss, step)
                                          - per_example_losses(model, x, y, loss, -step)) / (2 * h)
    np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-9)
    assert float(gradient_penalty(g, 0.5)) == pytest.approx(float(gradient_penalty(numeric, 0.5)), rel=1e-6)
    # first order: L(e + r) - L(e) = ε‖∇L‖ + O(ε²) for the FGM perturbation r
    epsilon = 1e-5
    rise = per_example_losses(model, x, y, loss, fgm_perturbation(g, epsilon)) - per_example_losses(model, x, y, loss)
    np.testing.assert_allclose(rise, epsilon * np.linalg.norm(g.reshape(len(g), -1), axis=1), rtol=1e-4)


# --- the training steps against finite differences in θ ------------------------------------------------------


def sgd_update(wrapper, x, y, loss):
    """The change of the head's kernel after one step of SGD with learning rate 1 (= minus the gradient)."""
    wrapper.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss)
    kernel = wrapper.model.get_layer("head").kernel
    before = kernel.numpy().copy()
    wrapper.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return before - kernel.numpy(), before


def numeric_gradient(objective, variable, h=1e-6, indices=None):
    """Central differences of ``objective`` in the entries ``indices`` of ``variable`` (all by default)."""
    value = variable.numpy()
    gradient = np.zeros_like(value)
    for index in (np.ndindex(value.shape) if indices is None else indices):
        for sign in (1, -1):
            shifted = value.copy()
            shifted[index] += sign * h
            variable.assign(shifted)
            gradient[index] += sign * objective() / (2 * h)
    variable.assign(value)
    return gradient


@pytest.mark.parametrize("classes, loss, penalty", [(1, BCE64, "norm"), (3, SPARSE_CE64, "squared")])
def test_gradient_penalty_step_is_the_gradient_of_loss_plus_penalty(float64, classes, loss, penalty):
    model = text_classifier(classes=classes)
    x, y = toy_batch(classes=classes)
    epsilon = 0.7

    def objective():
        # per-example gradients from batches of one: independent of the wrapper's batch arithmetic
        gradients = [layer_output_gradient(model, "embedding", x[i:i + 1], y[i:i + 1], loss)[1][0] for i in range(len(x))]
        return float(loss(y, model(x))) + float(gradient_penalty(tf.concat(gradients, 0), epsilon, penalty=penalty))

    corners = [(0, 0), (3, classes - 1)]  # two entries of the head's kernel: each costs 2 x 8 eager gradients
    expected = numeric_gradient(objective, model.get_layer("head").kernel, indices=corners)
    step, _ = sgd_update(GradientPenaltyModel(model, "embedding", epsilon, penalty=penalty), x, y, loss)
    rows, columns = zip(*corners)
    np.testing.assert_allclose(step[rows, columns], expected[rows, columns], rtol=1e-5, atol=1e-9)
    assert np.all(np.abs(expected[rows, columns]) > 1e-4)  # a real signal, not two zeros


@pytest.mark.parametrize("per_example, clean_loss", [(True, False), (False, True)])
def test_fgm_step_is_the_gradient_of_the_perturbed_loss(float64, per_example, clean_loss):
    model = text_classifier()
    x, y = toy_batch()
    epsilon = 0.4
    _, (g,) = layer_output_gradient(model, "embedding", x, y, BCE64)
    r = fgm_perturbation(g, epsilon, per_example=per_example)  # held fixed while θ moves, as in the step

    def objective():
        value = per_example_losses(model, x, y, BCE64, r).mean()
        return value + (per_example_losses(model, x, y, BCE64).mean() if clean_loss else 0.0)

    expected = numeric_gradient(objective, model.get_layer("head").kernel)
    wrapper = FGMModel(model, "embedding", epsilon, per_example=per_example, clean_loss=clean_loss)
    step, _ = sgd_update(wrapper, x, y, BCE64)
    np.testing.assert_allclose(step, expected, rtol=1e-5, atol=1e-9)


def test_fgm_differs_from_plain_training():
    model = text_classifier()
    x, y = toy_batch()
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    plain.compile(optimizer=keras.optimizers.SGD(1.0), loss=BCE)
    plain.fit(x, y, batch_size=len(x), verbose=0, shuffle=False)
    sgd_update(FGMModel(model, "embedding", 1.0), x, y, BCE)
    assert not np.allclose(plain.get_layer("head").kernel.numpy(), model.get_layer("head").kernel.numpy())


# --- any model, fit with callbacks, saving ---------------------------------------------------------------------


class SubclassedClassifier(keras.Model):
    def __init__(self):
        super().__init__()
        self.embedding = keras.layers.Embedding(12, 3, name="embedding")
        self.pool = keras.layers.GlobalAveragePooling1D()
        self.head = keras.layers.Dense(1)

    def call(self, inputs):
        return self.head(self.pool(self.embedding(inputs)))


def shared_embedding_model():
    """The same embedding layer called twice (two inputs): one perturbation per call."""
    left, right = keras.Input((5,), dtype="int32"), keras.Input((5,), dtype="int32")
    embedding = keras.layers.Embedding(12, 3, name="embedding")
    pool = keras.layers.GlobalAveragePooling1D()
    joined = keras.layers.Concatenate()([pool(embedding(left)), pool(embedding(right))])
    return keras.Model([left, right], keras.layers.Dense(1)(joined))


def nested_model():
    inputs = keras.Input((5,), dtype="int32")
    encoder = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(12, 3, name="embedding"),
                                keras.layers.GlobalAveragePooling1D()], name="encoder")
    return keras.Model(inputs, keras.layers.Dense(1)(encoder(inputs)))


@pytest.mark.parametrize("make, method", [
    (SubclassedClassifier, "fgm"),
    (nested_model, "gradient_penalty"),
    (shared_embedding_model, "gradient_penalty"),
    (lambda: keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(12, 3, name="embedding"),
                               keras.layers.Flatten(), keras.layers.Dense(1)]), "fgm"),
], ids=["subclassed-fgm", "nested-penalty", "shared-penalty", "sequential-fgm"])
def test_any_kind_of_model_trains(make, method):
    x, y = toy_batch(n=16)
    inputs = [x, x[:, ::-1]] if make is shared_embedding_model else x
    model = adversarial.adversarial_training(make(), "embedding", 0.5, method=method)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=BCE)
    losses = model.fit(inputs, y, epochs=3, batch_size=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_shared_layer_gets_one_perturbation_per_call():
    model = shared_embedding_model()
    x, y = toy_batch()
    _, gradients = layer_output_gradient(model, "embedding", [x, x[:, ::-1]], y, BCE)
    assert len(gradients) == 2
    with pytest.raises(ValueError, match=r"called more often than there are perturbations. Received: 1"):
        with perturb_layer_output(model.get_layer("embedding"), [gradients[0]]):
            model([x, x[:, ::-1]])


def same_config(a, b):
    # configs hold objects (dtype policies) that compare by identity: compare their serialised form
    return json.dumps(a.get_config(), sort_keys=True, default=str) == json.dumps(b.get_config(), sort_keys=True,
                                                                                  default=str)


def test_fit_with_validation_and_callbacks_then_save_and_load(tmp_path):
    x, y = toy_batch(n=32)
    model = FGMModel(text_classifier(), "embedding", 0.5, clean_loss=True)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=BCE, metrics=["binary_accuracy"])
    seen = []
    path = str(tmp_path / "best.keras")
    callbacks = [keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(dict(logs))),
                 keras.callbacks.ModelCheckpoint(path, monitor="val_loss", save_best_only=True),
                 keras.callbacks.EarlyStopping(monitor="loss", patience=1, restore_best_weights=True)]
    history = model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=16, callbacks=callbacks, verbose=0)
    assert len(seen) == len(history.history["loss"]) == 2
    assert {"loss", "binary_accuracy", "val_loss", "val_binary_accuracy"} <= set(seen[-1])
    # validation runs the plain model: val_loss is the clean loss, smaller than the trained objective L(x) + L(x+r)
    assert seen[-1]["val_loss"] < seen[-1]["loss"]

    loaded = keras.models.load_model(path)
    assert isinstance(loaded, FGMModel) and loaded.get_config()["clean_loss"] is True
    final = str(tmp_path / "final.keras")
    model.save(final)
    again = keras.models.load_model(final)
    assert same_config(again, model)
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_array_equal(again.model.predict(x, verbose=0), model.predict(x, verbose=0))
    assert np.isfinite(again.fit(x, y, epochs=1, verbose=0).history["loss"][0])  # optimizer and tap restored


def test_gradient_penalty_model_save_load_round_trip(tmp_path):
    x, y = toy_batch(n=16)
    model = GradientPenaltyModel(text_classifier(), "embedding", 2.0, penalty="squared")
    model.compile(optimizer="adam", loss=BCE)
    model.fit(x, y, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "gp.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert same_config(loaded, model)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("cls", [FGMModel, GradientPenaltyModel])
def test_from_config_leaves_the_given_config_unchanged(cls):
    config = cls(text_classifier(), "embedding", 0.5).get_config()
    before = json.dumps(config, sort_keys=True, default=str)
    rebuilt = cls.from_config(config)
    assert json.dumps(config, sort_keys=True, default=str) == before
    again = cls.from_config(config)  # the same dict serves twice
    assert same_config(again, rebuilt)


def test_the_tap_is_inert_outside_training():
    inner = text_classifier()
    x, _ = toy_batch()
    before = inner.predict(x, verbose=0)
    wrapper = FGMModel(inner, "embedding", 1.0)
    np.testing.assert_array_equal(inner.predict(x, verbose=0), before)
    np.testing.assert_array_equal(wrapper.predict(x, verbose=0), before)
    # the wrapper holds the inner model and nothing else: same variables, once each
    assert [layer.name for layer in wrapper._flatten_layers(include_self=False, recursive=False)] == [inner.name]
    assert [v.path for v in wrapper.trainable_weights] == [v.path for v in inner.trainable_weights]


# --- compilation (mixed precision: see test_adversarial_distribute.py) -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", adversarial.METHODS)
def test_xla_compiled_training_step(method):
    x, y = toy_batch(n=16)
    # a small dense network: XLA compiles the double backward pass of the penalty quickly
    inputs = keras.Input((5,), dtype="int32")
    e = keras.layers.Embedding(12, 3, name="embedding")(inputs)
    hidden = keras.layers.Dense(4, activation="tanh")(keras.layers.Flatten()(e))
    inner = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model = adversarial.adversarial_training(inner, "embedding", 0.5, method=method)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=BCE, jit_compile=True)
    losses = model.fit(x, y, epochs=2, batch_size=16, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


# --- perturbed predictions --------------------------------------------------------------------------------------


def linear_model():
    inputs = keras.Input((5,), dtype="int32")
    e = keras.layers.Embedding(12, 3, name="embedding")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(keras.layers.Flatten()(e)))


def test_perturbed_predict_moves_a_linear_logit_by_exactly_epsilon_times_norm_w():
    # logit = <w, e> + b: the FGM move of norm ε changes it by ε‖w‖ towards the wrong class.
    model = linear_model()
    x, y = toy_batch(n=20)
    w_norm = np.linalg.norm(model.get_layer("head").kernel.numpy())
    epsilons = [0.0, 0.1, 1.0]
    moved = perturbed_predict(model, "embedding", x, y, BCE, epsilons, batch_size=10)
    assert moved.shape == (3, 20, 1)
    np.testing.assert_allclose(moved[0], model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    towards_wrong = np.where(y > 0.5, -1.0, 1.0)
    for k, epsilon in enumerate(epsilons):
        np.testing.assert_allclose(moved[k] - moved[0], epsilon * w_norm * towards_wrong, rtol=1e-4, atol=1e-6)
    random = perturbed_predict(model, "embedding", x, y, BCE, epsilons, direction="random", batch_size=10)
    shift = np.abs(random[2] - random[0])
    assert np.all(shift <= 1.0 * w_norm * (1 + 1e-5)) and shift.mean() < 0.8 * w_norm
    again = perturbed_predict(model, "embedding", x, y, BCE, epsilons, direction="random", batch_size=10)
    np.testing.assert_array_equal(random, again)  # the seed fixes the directions


def test_perturbed_predict_rejects_bad_arguments():
    model = linear_model()
    x, y = toy_batch()
    with pytest.raises(ValueError, match=r"`direction` must be one of \('gradient', 'random'\). Received: direction='up'"):
        perturbed_predict(model, "embedding", x, y, BCE, [0.1], direction="up")
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive integer. Received: batch_size=0"):
        perturbed_predict(model, "embedding", x, y, BCE, [0.1], batch_size=0)
    with pytest.raises(ValueError, match=r"`epsilon` must be a finite number >= 0. Received: epsilon=-1"):
        perturbed_predict(model, "embedding", x, y, BCE, [0.1, -1])
    with pytest.raises(ValueError, match=r"`loss` must be a Keras loss, a loss name or a callable. Received: loss=3"):
        perturbed_predict(model, "embedding", x, y, 3, [0.1])


# --- the article's matrix FGM, and PGD --------------------------------------------------------------------------


def test_matrix_fgm_step_is_the_gradient_at_the_perturbed_matrix_and_restores_it():
    # one SGD step must be θ - lr ∇_θ L(E + r) with r = ε g_E/‖g_E‖ (one norm for the whole matrix), E kept
    x, y = toy_batch()
    reference, model = text_classifier(seed=3), text_classifier(seed=3)
    wrapper = adversarial.EmbeddingMatrixFGMModel(model, "embedding", epsilon=0.3)
    wrapper.compile(optimizer=keras.optimizers.SGD(0.1), loss=BCE)
    matrix = reference.get_layer("embedding").embeddings
    with tf.GradientTape() as tape:
        value = BCE(y, reference(x, training=True))
    g = tf.convert_to_tensor(tape.gradient(value, matrix)).numpy()
    r = 0.3 * g / np.linalg.norm(g)
    matrix.assign_add(r)
    with tf.GradientTape() as tape:
        value = BCE(y, reference(x, training=True))
    expected = [w.numpy() - 0.1 * d.numpy() for w, d in
                zip(reference.trainable_weights, map(tf.convert_to_tensor,
                                                     tape.gradient(value, reference.trainable_weights)))]
    expected[0] = expected[0] - r  # the step is taken from E, not from E + r
    wrapper.train_on_batch(x, y)
    for got, want in zip(model.trainable_weights, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)


def test_matrix_fgm_needs_an_embedding_layer():
    with pytest.raises(ValueError, match="`layer_name` must name a layer with an `embeddings` matrix"):
        adversarial.EmbeddingMatrixFGMModel(text_classifier(), "conv", epsilon=0.5)


def test_pgd_on_a_linear_model_is_the_fgm_step_and_stays_in_the_ball():
    # for logit = <w, e> + b every ascent step points the same way, so PGD ends on the ball along -/+ w
    model = linear_model()
    x, y = toy_batch(n=20)
    w_norm = np.linalg.norm(model.get_layer("head").kernel.numpy())
    epsilons = [0.0, 0.1, 1.0]
    moved = adversarial.pgd_predict(model, "embedding", x, y, BCE, epsilons, steps=4, batch_size=7)
    one_step = perturbed_predict(model, "embedding", x, y, BCE, epsilons, batch_size=7)
    assert moved.shape == (3, 20, 1)
    np.testing.assert_allclose(moved, one_step, rtol=1e-4, atol=1e-5)
    towards_wrong = np.where(y > 0.5, -1.0, 1.0)
    np.testing.assert_allclose(moved[2] - moved[0], w_norm * towards_wrong, rtol=1e-4, atol=1e-5)


def test_pgd_is_at_least_as_strong_as_one_step_on_a_curved_model():
    model = text_classifier(seed=2)
    x, y = toy_batch(n=32, seed=4)
    per_example = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)
    one_step = perturbed_predict(model, "embedding", x, y, BCE, [1.5])[0]
    pgd = adversarial.pgd_predict(model, "embedding", x, y, BCE, [1.5], steps=10)[0]
    assert per_example(y, pgd).numpy().mean() >= per_example(y, one_step).numpy().mean() - 1e-6


def test_pgd_rejects_bad_arguments():
    model = linear_model()
    x, y = toy_batch()
    with pytest.raises(ValueError, match=r"`steps` must be a positive integer. Received: steps=0"):
        adversarial.pgd_predict(model, "embedding", x, y, BCE, [0.1], steps=0)
    with pytest.raises(ValueError, match=r"`step_size` must be a finite number > 0 or None. Received: step_size=-1"):
        adversarial.pgd_predict(model, "embedding", x, y, BCE, [0.1], step_size=-1)
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive integer"):
        adversarial.pgd_predict(model, "embedding", x, y, BCE, [0.1], batch_size=0)
