"""Tests of lib.optimizers: AdaFactor against a NumPy reference of the article's equations, against
keras.optimizers.Adafactor, its state, its errors, save/load; and the pieces of the derivation."""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from scipy.optimize import minimize

from lib import optimizers
from lib.optimizers import AdaFactor, state_bytes

# --- a NumPy reference: the article's equations, written with sums as the article writes them -------------


def reference_adafactor(theta, gradients, *, learning_rate, beta_1=None, decay_exponent=0.8, epsilon_1=1e-30,
                        epsilon_2=1e-3, clip_threshold=1.0, relative_step=False, multiply_by_parameter_scale=True,
                        factored=True):
    """Run the article's "full AdaFactor" on one variable; return the final θ and the state."""
    theta = np.array(theta, dtype=np.float64)
    rows = np.zeros(theta.shape[0]) if theta.ndim == 2 else None
    cols = np.zeros(theta.shape[1]) if theta.ndim == 2 else None
    velocity = np.zeros_like(theta)
    momentum = np.zeros_like(theta)

    def rms(x):
        return np.sqrt(np.mean(np.square(x)))

    for t, g in enumerate(gradients, start=1):
        g = np.asarray(g, dtype=np.float64)
        beta = 1.0 - t ** (-decay_exponent)
        if factored and theta.ndim == 2:
            rows = beta * rows + (1 - beta) * np.sum(g**2 + epsilon_1, axis=1)       # v^(r)_i
            cols = beta * cols + (1 - beta) * np.sum(g**2 + epsilon_1, axis=0)       # v^(c)_j
            v_hat = np.outer(rows, cols) / np.sum(cols)                              # v^(r)_i v^(c)_j / Σ_j v^(c)_j
        else:
            velocity = beta * velocity + (1 - beta) * (g**2 + epsilon_1)
            v_hat = velocity
        u = g / np.sqrt(v_hat)
        if clip_threshold is not None:
            u = u / max(1.0, rms(u) / clip_threshold)
        if beta_1:
            momentum = beta_1 * momentum + (1 - beta_1) * u
            u = momentum
        rho = min(learning_rate, 1 / np.sqrt(t)) if relative_step else learning_rate
        alpha = rho * max(epsilon_2, rms(theta)) if multiply_by_parameter_scale else rho
        theta = theta - alpha * u
    return theta, {"rows": rows, "cols": cols, "velocity": velocity, "momentum": momentum}


def random_steps(shape, steps, seed):
    rng = np.random.default_rng(seed)
    theta = rng.normal(scale=0.5, size=shape)
    # gradients whose scale differs by row and grows with the step, so that v̂ has structure to track
    scales = np.exp(rng.normal(size=(shape[0],) + (1,) * (len(shape) - 1)))
    gradients = [scales * rng.normal(size=shape) * (1 + t) for t in range(steps)]
    return theta, gradients


def run_lib(theta, gradients, dtype="float64", **kwargs):
    variable = keras.Variable(np.asarray(theta, dtype=dtype))
    optimizer = AdaFactor(min_dim_size_to_factor=1, **kwargs)
    for g in gradients:
        optimizer.apply([np.asarray(g, dtype=dtype)], [variable])
    return np.asarray(variable), optimizer, variable


SETTINGS = {
    "paper defaults": dict(learning_rate=1e-2, relative_step=True),
    "article's advice": dict(learning_rate=1e-3),
    "momentum": dict(learning_rate=1e-2, beta_1=0.9),
    "no clipping, no scale": dict(learning_rate=1e-3, clip_threshold=None, multiply_by_parameter_scale=False),
    "c = 1, tight clipping": dict(learning_rate=0.05, decay_exponent=1.0, clip_threshold=0.5, relative_step=True),
    "unfactored": dict(learning_rate=1e-2, factored=False),
}


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("shape", [(7, 5), (9,)])
def test_matches_numpy_reference_step_by_step(setting, shape):
    theta, gradients = random_steps(shape, steps=6, seed=1)
    kwargs = SETTINGS[setting]
    # Keras keeps the learning rate in a float32 variable: give the float64 reference that same number.
    reference_kwargs = {**kwargs, "learning_rate": float(np.float32(kwargs["learning_rate"]))}
    for steps in range(1, 7):  # after every step, not only the last
        expected, state = reference_adafactor(theta, gradients[:steps], **reference_kwargs)
        ours, optimizer, variable = run_lib(theta, gradients[:steps], **kwargs)
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-14)
    roles = optimizer.state_of(variable)
    if len(shape) == 2 and kwargs.get("factored", True):
        # lib stores row and column means, the article sums: R_i = m r_i and C_j = n s_j.
        np.testing.assert_allclose(np.asarray(roles["row"]) * shape[1], state["rows"], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(roles["col"]) * shape[0], state["cols"], rtol=1e-12)
    else:
        np.testing.assert_allclose(np.asarray(roles["velocity"]), state["velocity"], rtol=1e-12)
    if kwargs.get("beta_1"):
        np.testing.assert_allclose(np.asarray(roles["momentum"]), state["momentum"], rtol=1e-12)


def test_reference_detects_a_wrong_formula():
    # The reference test can fail: drop the (1 − β̂) factor (a plausible slip) and the results differ.
    theta, gradients = random_steps((7, 5), steps=4, seed=2)
    expected, _ = reference_adafactor(theta, gradients, learning_rate=1e-2, decay_exponent=0.5)
    ours, _, _ = run_lib(theta, gradients, learning_rate=1e-2, decay_exponent=0.8)
    assert not np.allclose(ours, expected, rtol=1e-6)


def test_first_step_is_sign_like_and_scaled_by_parameter_rms():
    # Step 1: β̂ = 0 so v̂ = g² + ε₁ (rank 1 here), |u| = 1, RMS(u) = 1 (no clipping), θ moves by ρ·RMS(θ).
    g = np.outer([1.0, 2.0, 3.0], [1.0, 0.5]).astype("float32")
    theta = np.full((3, 2), 0.2, "float32")
    ours, _, _ = run_lib(theta, [g], dtype="float32", learning_rate=1e-2)
    np.testing.assert_allclose(ours, theta - 1e-2 * 0.2 * np.sign(g), rtol=1e-6)


# --- state: what is allocated ----------------------------------------------------------------------------


def build(shapes, **kwargs):
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in shapes]
    optimizer = AdaFactor(**kwargs)
    optimizer.build(variables)
    return optimizer, variables


def test_factored_state_shapes_n_and_m():
    optimizer, (kernel, bias) = build([(384, 160), (160,)])
    assert {k: tuple(v.shape) for k, v in optimizer.state_of(kernel).items()} == {"row": (384,), "col": (160,)}
    assert {k: tuple(v.shape) for k, v in optimizer.state_of(bias).items()} == {"velocity": (160,)}
    assert state_bytes(optimizer, per_parameter_only=True) == 4 * (384 + 160 + 160)


def test_higher_rank_factors_the_two_largest_axes():
    # A conv kernel (3, 3, 128, 256): one row and one column vector per (kh, kw) position.
    # An attention kernel (8, 512, 64) with min_dim 1: axes 1 and 2 (the largest), per head.
    optimizer, (conv, heads) = build([(3, 3, 128, 256), (8, 512, 64)], min_dim_size_to_factor=1)
    assert {k: tuple(v.shape) for k, v in optimizer.state_of(conv).items()} == {"row": (3, 3, 128),
                                                                               "col": (3, 3, 256)}
    assert {k: tuple(v.shape) for k, v in optimizer.state_of(heads).items()} == {"row": (8, 512), "col": (8, 64)}


def test_higher_rank_matches_per_slice_reference():
    # Factoring the two largest axes of (3, 6, 5) equals running the matrix algorithm on each of the 3
    # slices, except that clipping and parameter scale use the RMS of the whole variable: switch them off.
    theta, gradients = random_steps((3, 6, 5), steps=4, seed=3)
    kwargs = dict(learning_rate=2.0**-7, clip_threshold=None, multiply_by_parameter_scale=False)
    ours, _, _ = run_lib(theta, gradients, **kwargs)
    for k in range(3):
        expected, _ = reference_adafactor(theta[k], [g[k] for g in gradients], **kwargs)
        np.testing.assert_allclose(ours[k], expected, rtol=1e-12)


def test_min_dim_size_to_factor_and_factored_switch():
    optimizer, (thin, wide) = build([(256, 64), (256, 128)])  # default: both axes must be >= 128
    assert set(optimizer.state_of(thin)) == {"velocity"}
    assert set(optimizer.state_of(wide)) == {"row", "col"}
    optimizer, (wide,) = build([(256, 128)], factored=False)
    assert {k: tuple(v.shape) for k, v in optimizer.state_of(wide).items()} == {"velocity": (256, 128)}


def test_state_of_an_unknown_variable_raises():
    optimizer, _ = build([(4, 3)])
    with pytest.raises(ValueError, match="`variable` must be one of the variables the optimizer was built with"):
        optimizer.state_of(keras.Variable(np.zeros((4, 3), "float32"), name="stranger"))


def test_momentum_costs_a_full_matrix():
    optimizer, (kernel,) = build([(256, 128)], beta_1=0.9)
    assert {k: tuple(v.shape) for k, v in optimizer.state_of(kernel).items()} == {
        "row": (256,), "col": (128,), "momentum": (256, 128)}


def test_state_bytes_reads_the_variables():
    variables = [keras.Variable(np.zeros((300, 200), "float32")), keras.Variable(np.zeros((200,), "float32"))]
    adam = keras.optimizers.Adam()
    adam.build(variables)
    assert state_bytes(adam, per_parameter_only=True) == 2 * 4 * (300 * 200 + 200)
    # the step counter (int64 on TensorFlow, int32 on JAX) and the float32 learning rate
    step_bytes = {"tensorflow": 8, "jax": 4}.get(keras.backend.backend(), np.dtype(adam.iterations.dtype).itemsize)
    assert np.dtype(adam.iterations.dtype).itemsize == step_bytes
    assert state_bytes(adam) == state_bytes(adam, per_parameter_only=True) + step_bytes + 4
    theirs = keras.optimizers.Adafactor()
    theirs.build(variables)
    # keras keeps r and c, *and* a full-size velocity for every variable: n·m + n + m for the matrix.
    assert state_bytes(theirs, per_parameter_only=True) == 4 * (300 * 200 + 300 + 200 + 200)
    with pytest.raises(ValueError, match="`optimizer` must be built"):
        state_bytes(keras.optimizers.Adam())


# --- against keras.optimizers.Adafactor --------------------------------------------------------------------


@pytest.mark.parametrize("shapes", [[(12, 7), (7,)], [(2, 5, 6)]])
def test_tracks_keras_adafactor_with_matching_settings(shapes):
    # Matching settings: keras always caps the step at 1/√t and always scales by RMS(θ) (its relative_step
    # flag changes nothing), and factors every matrix, and the last two axes (here also the largest).
    rng = np.random.default_rng(4)
    initial = [rng.normal(size=shape).astype("float32") for shape in shapes]
    ours = [keras.Variable(x) for x in initial]
    theirs = [keras.Variable(x) for x in initial]
    lib_optimizer = AdaFactor(learning_rate=0.05, relative_step=True, min_dim_size_to_factor=1)
    keras_optimizer = keras.optimizers.Adafactor(learning_rate=0.05)
    for step in range(10):
        grads = [rng.normal(size=shape).astype("float32") * (1 + step) for shape in shapes]
        lib_optimizer.apply(grads, ours)
        keras_optimizer.apply(grads, theirs)
    for a, b, x in zip(ours, theirs, initial):
        assert not np.allclose(np.asarray(a), x)
        # the same equations in a different order of float32 operations: a few ulps
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_keras_relative_step_flag_has_no_effect_but_ours_does():
    def final(optimizer):
        variable = keras.Variable(np.full((4, 3), 0.5, "float32"))
        for _ in range(3):
            optimizer.apply([np.ones((4, 3), "float32")], [variable])
        return np.asarray(variable)

    np.testing.assert_array_equal(final(keras.optimizers.Adafactor(0.8, relative_step=True)),
                                  final(keras.optimizers.Adafactor(0.8, relative_step=False)))
    assert not np.allclose(final(AdaFactor(0.8, relative_step=True, min_dim_size_to_factor=1)),
                           final(AdaFactor(0.8, relative_step=False, min_dim_size_to_factor=1)))


def test_zero_row_and_zero_column_give_no_nan():
    # A gradient with a whole zero row and zero column (an unused embedding row and a dead unit):
    # v̂ = ε₁·ε₁/mean(r) underflows to 0 in float32. keras then divides 0 by 0 and RMS(u) turns the whole
    # matrix to NaN; lib takes the two square roots separately and stays finite.
    g = np.zeros((3, 4), "float32")
    g[0, 0] = 1.0
    ours, _, _ = run_lib(np.ones((3, 4)), [g], dtype="float32", learning_rate=1e-2)
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours[0, 0], 1 - 1e-2, rtol=1e-6)
    np.testing.assert_array_equal(ours.ravel()[1:], 1.0)
    variable = keras.Variable(np.ones((3, 4), "float32"))
    keras.optimizers.Adafactor(1e-2).apply([g], [variable])
    assert np.all(np.isnan(np.asarray(variable)))  # documents the peer's behaviour; see the chapter


@pytest.mark.parametrize("zero_row", [False, True])
def test_a_huge_finite_gradient_matches_the_float64_reference(zero_row):
    # 1.9e19² overflows float32 (max 3.4e38) though the row and column means of g² do not: g² must be formed
    # scaled, or the whole factored matrix turns NaN
    rng = np.random.default_rng(21)
    theta = rng.normal(size=(3, 4))
    g = rng.normal(size=(3, 4))
    if zero_row:
        g[1], g[:, 2] = 0.0, 0.0
    g[0, 0] = 1.9e19
    gradients = [g, rng.normal(size=(3, 4))]
    expected, _ = reference_adafactor(theta, gradients, learning_rate=1e-2)
    ours, _, _ = run_lib(theta, [x.astype("float32") for x in gradients], dtype="float32", learning_rate=1e-2)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("big", [1e20, 3e38, float(np.finfo("float32").max)])
@pytest.mark.parametrize("setting", ["paper defaults", "momentum", "unfactored", "no clipping, no scale"])
def test_no_finite_gradient_gives_a_nan(big, setting):
    # beyond 1.8e19 the statistics saturate at float32's largest value (documented), but nothing becomes NaN
    rng = np.random.default_rng(22)
    for g in (np.where(np.arange(12).reshape(3, 4) == 0, big, rng.normal(size=(3, 4))),
              np.full((3, 4), big), np.where(np.eye(3, 4) > 0, big, 0.0)):
        ours, optimizer, variable = run_lib(np.ones((3, 4)), [g.astype("float32")] * 3, dtype="float32",
                                            **SETTINGS[setting])
        assert np.isfinite(ours).all(), (big, setting, ours)
        assert all(np.isfinite(np.asarray(v)).all() for v in optimizer.state_of(variable).values())


def traced(function):
    """``function`` as a TensorFlow graph (``tf.function``); under another backend the test is skipped."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow-only: uses tf.function")
    return tf.function(function)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("graph", [False, True])
def test_a_non_finite_gradient_skips_that_variable(bad, graph):
    # documented: θ and its state stay as they were; the other variables take their step
    rng = np.random.default_rng(23)
    matrix = keras.Variable(rng.normal(size=(3, 4)).astype("float32"))
    vector = keras.Variable(rng.normal(size=(4,)).astype("float32"))
    optimizer = AdaFactor(1e-2, beta_1=0.9, min_dim_size_to_factor=1)
    optimizer.build([matrix, vector])
    step = lambda gradients: optimizer.apply(gradients, [matrix, vector])  # noqa: E731
    apply = traced(step) if graph else step
    apply([rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32")])
    before = np.asarray(matrix), {k: np.asarray(v) for k, v in optimizer.state_of(matrix).items()}, np.asarray(vector)
    poisoned = rng.normal(size=(3, 4)).astype("float32")
    poisoned[1, 2] = bad
    apply([poisoned, rng.normal(size=(4,)).astype("float32")])
    np.testing.assert_array_equal(np.asarray(matrix), before[0])
    for role, value in optimizer.state_of(matrix).items():
        np.testing.assert_array_equal(np.asarray(value), before[1][role], err_msg=role)
    assert not np.array_equal(np.asarray(vector), before[2])  # the finite gradient was applied
    assert int(np.asarray(optimizer.iterations)) == 2


# --- Keras integration: sparse gradients, XLA, config, save/load -------------------------------------------


def lm(vocabulary=160, width=128):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((4,), dtype="int32"),
        keras.layers.Embedding(vocabulary, width),
        keras.layers.Flatten(),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(vocabulary),
    ])


def lm_data(n=64, vocabulary=160):
    rng = np.random.default_rng(0)
    return rng.integers(0, vocabulary, (n, 4)).astype("int32"), rng.integers(0, vocabulary, (n,)).astype("int32")


def test_embedding_sparse_gradient_equals_dense():
    table = np.random.default_rng(0).normal(size=(200, 130)).astype("float32")
    ids = ops.convert_to_tensor([3, 3, 17])
    weights = [keras.Variable(table), keras.Variable(table)]
    optimizers_ = [AdaFactor(1e-2), AdaFactor(1e-2)]
    for variable, optimizer, sparse in zip(weights, optimizers_, (True, False)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(variable.value, ids) ** 2)
        gradient = tape.gradient(loss, variable.value)
        assert isinstance(gradient, tf.IndexedSlices)
        optimizer.apply([gradient if sparse else tf.convert_to_tensor(gradient)], [variable])
    np.testing.assert_array_equal(np.asarray(weights[0]), np.asarray(weights[1]))
    assert not np.allclose(np.asarray(weights[0]), table)


def test_fit_with_xla_matches_fit_without():
    x, y = lm_data()
    results = []
    for jit in (False, True):
        model = lm()
        model.compile(AdaFactor(1e-2, relative_step=True, beta_1=0.5),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        results.append((history.history["loss"], model.get_weights()))
    assert results[0][0][-1] < results[0][0][0]
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_config_round_trip_and_serialization():
    optimizer = AdaFactor(learning_rate=2e-3, beta_1=0.9, decay_exponent=0.6, epsilon_1=1e-29, epsilon_2=1e-4,
                          clip_threshold=None, relative_step=True, multiply_by_parameter_scale=False,
                          factored=False, min_dim_size_to_factor=32, clipnorm=1.0, name="mine")
    config = optimizer.get_config()
    assert AdaFactor.from_config(config).get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, AdaFactor) and restored.get_config() == config
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=10, decay_rate=0.5)
    restored = AdaFactor.from_config(AdaFactor(learning_rate=schedule).get_config())
    assert isinstance(restored._learning_rate, keras.optimizers.schedules.ExponentialDecay)
    assert restored._learning_rate.get_config() == schedule.get_config()


def test_save_and_load_a_compiled_model_resumes_identically():
    x, y = lm_data()
    model = lm()
    model.compile(AdaFactor(1e-2, relative_step=True, beta_1=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "lm.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, AdaFactor)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(np.asarray(loaded.optimizer.iterations)) == int(np.asarray(model.optimizer.iterations)) == 4
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_float16_variables_keep_float32_statistics():
    variable = keras.Variable(np.full((4, 3), 0.5, "float16"), dtype="float16")
    optimizer = AdaFactor(1e-2, min_dim_size_to_factor=1)
    optimizer.apply([np.full((4, 3), 300.0, "float16")], [variable])  # 300² overflows float16
    assert {v.dtype for v in optimizer.state_of(variable).values()} == {"float32"}
    assert variable.dtype == "float16" and np.all(np.isfinite(np.asarray(variable)))
    np.testing.assert_allclose(np.asarray(variable).astype("float32"), 0.5 - 1e-2 * 0.5, rtol=1e-3)


# --- bad hyper-parameters -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"learning_rate": 0.0}, r"`learning_rate` must be a positive number.*Received: learning_rate=0.0"),
    ({"learning_rate": "fast"}, r"`learning_rate` must be a positive number.*Received: learning_rate='fast'"),
    ({"beta_1": 1.0}, r"`beta_1` must be a number in \[0.0, 1.0\) or None. Received: beta_1=1.0"),
    ({"beta_1": -0.1}, r"`beta_1` must be a number in \[0.0, 1.0\) or None"),
    ({"decay_exponent": -0.8}, r"`decay_exponent` must be a number in \(0.0, 1.0\].*beta_2_decay=-0.8 is "
                               r"decay_exponent=0.8.*Received: decay_exponent=-0.8"),
    ({"decay_exponent": 1.5}, r"`decay_exponent` must be a number in \(0.0, 1.0\]"),
    ({"epsilon_1": 0.0}, r"`epsilon_1` must be a number in \(0.0, inf\). Received: epsilon_1=0.0"),
    ({"epsilon_2": -1e-3}, r"`epsilon_2` must be a number in \(0.0, inf\). Received: epsilon_2=-0.001"),
    ({"clip_threshold": 0}, r"`clip_threshold` must be a number in \(0.0, inf\) or None. Received: clip_threshold=0"),
    ({"clip_threshold": float("nan")}, r"`clip_threshold` must be a number"),
    ({"min_dim_size_to_factor": 0}, r"`min_dim_size_to_factor` must be a positive integer. "
                                    r"Received: min_dim_size_to_factor=0"),
    ({"min_dim_size_to_factor": 2.5}, r"`min_dim_size_to_factor` must be a positive integer"),
    ({"relative_step": "yes"}, r"`relative_step` must be True or False. Received: relative_step='yes'"),
    ({"factored": 1}, r"`factored` must be True or False. Received: factored=1"),
    ({"multiply_by_parameter_scale": None}, r"`multiply_by_parameter_scale` must be True or False"),
])
def test_bad_hyper_parameters_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaFactor(**kwargs)


def test_integer_learning_rate_is_accepted_as_float():
    assert AdaFactor(learning_rate=1).get_config()["learning_rate"] == 1.0


# --- the pieces of the derivation ---------------------------------------------------------------------------


def test_rank_one_factors_minimise_the_generalized_kl():
    c = np.random.default_rng(5).gamma(0.5, size=(5, 4))
    a, b = optimizers.rank_one_factors(c)
    assert b.sum() == pytest.approx(1.0)
    best = optimizers.generalized_kl(c, np.outer(a, b))

    def objective(log_ab):  # log-parametrised, so the factors stay positive
        return optimizers.generalized_kl(c, np.outer(np.exp(log_ab[:5]), np.exp(log_ab[5:])))

    for seed in range(3):
        start = np.random.default_rng(seed).normal(size=9)
        found = minimize(objective, start, method="BFGS", options={"gtol": 1e-10})
        assert found.fun >= best - 1e-9
        assert found.fun == pytest.approx(best, rel=1e-6)
    # and moving off the closed form costs divergence
    assert optimizers.generalized_kl(c, np.outer(a * 1.1, b)) > best
    assert optimizers.generalized_kl(c, np.outer(a, np.roll(b, 1))) > best


def test_rank_one_factors_are_exact_for_a_rank_one_matrix():
    c = np.outer([1.0, 2.0, 0.5], [3.0, 1.0])
    a, b = optimizers.rank_one_factors(c)
    np.testing.assert_allclose(np.outer(a, b), c)
    assert optimizers.generalized_kl(c, np.outer(a, b)) == pytest.approx(0.0, abs=1e-12)


def test_generalized_kl_basics_and_errors():
    p = np.array([[0.0, 2.0], [1.0, 3.0]])
    assert optimizers.generalized_kl(p, p + (p == 0)) == pytest.approx(1.0)  # the 0 entry contributes q = 1
    with pytest.raises(ValueError, match="`p` and `q` must have the same shape"):
        optimizers.generalized_kl(p, np.ones(4))
    with pytest.raises(ValueError, match="`p` must be non-negative"):
        optimizers.generalized_kl(-p, np.ones((2, 2)))
    with pytest.raises(ValueError, match="`q` must be positive"):
        optimizers.generalized_kl(p, np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"`c` must be a matrix \(2-D\)"):
        optimizers.rank_one_factors(np.ones(3))
    with pytest.raises(ValueError, match="`c` must be non-negative with a positive sum"):
        optimizers.rank_one_factors(np.zeros((2, 2)))


def test_adam_effective_beta_2_is_the_bias_corrected_average():
    beta_2, g2 = 0.9, np.random.default_rng(6).random(30)
    v, v_hat = 0.0, 0.0
    for t, x in enumerate(g2, start=1):
        v = beta_2 * v + (1 - beta_2) * x
        rate = float(optimizers.adam_effective_beta_2(np.float64(t), beta_2))
        v_hat = rate * v_hat + (1 - rate) * x
        assert v_hat == pytest.approx(v / (1 - beta_2**t), rel=1e-12)


def test_beta_2_schedule_with_c_one_is_the_running_mean():
    g2 = np.random.default_rng(7).random(20)
    v = 0.0
    for t, x in enumerate(g2, start=1):
        rate = float(optimizers.beta_2_schedule(np.float64(t), 1.0))
        v = rate * v + (1 - rate) * x
        assert v == pytest.approx(g2[:t].mean(), rel=1e-12)


def test_relative_step_size_and_factored_axes():
    steps = np.array([1.0, 100.0, 10_000.0, 1e6])
    np.testing.assert_allclose(optimizers.relative_step_size(steps), [1e-2, 1e-2, 1e-2, 1e-3])
    assert optimizers.factored_axes((5, 5, 5)) == (1, 2)  # ties: the later axes
    assert optimizers.factored_axes(()) is None


def test_keras_adafactor_squares_each_repeated_embedding_row_separately():
    # Documents the peer (see the chapter): for tf.IndexedSlices with a repeated id, keras's update differs
    # from the update of the same gradient made dense; lib's does not (test_embedding_sparse_gradient_...).
    table = np.random.default_rng(0).normal(size=(20, 6)).astype("float32")
    results = []
    for sparse in (True, False):
        variable = keras.Variable(table)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(variable.value, ops.convert_to_tensor([3, 3, 17])) ** 2)
        gradient = tape.gradient(loss, variable.value)
        keras.optimizers.Adafactor(1e-2).apply([gradient if sparse else tf.convert_to_tensor(gradient)], [variable])
        results.append(np.asarray(variable))
    assert not np.allclose(results[0], results[1], rtol=1e-4)


def test_default_names_are_numbered_as_keras_numbers_its_optimizers():
    first, second = AdaFactor(), AdaFactor()
    assert first.name.startswith("adafactor") and second.name.startswith("adafactor")
    assert first.name != second.name
    keras_first, keras_second = keras.optimizers.Adam(), keras.optimizers.Adam()
    assert keras_first.name != keras_second.name  # what Keras does for its own
    assert AdaFactor(name="mine").name == "mine"
    assert AdaFactor.from_config(first.get_config()).name == first.name
