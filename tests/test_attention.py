"""Tests of lib.attention: equality with keras.layers.MultiHeadAttention, talking heads against a NumPy
reference, masks, dropout, the rank bound, counts, serialization, mixed precision and XLA, and errors."""

import re

import keras
import numpy as np
import pytest
import sympy as sp
import tensorflow as tf
from keras import ops

from lib import attention
from lib.attention import MultiHeadAttention
from lib.testing import check_keras_layer

RTOL, ATOL = 1e-5, 1e-5  # float32: the two layers order a few sums differently


def inputs(batch=2, length_q=5, length_s=7, dim_q=16, dim_v=12, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, length_q, dim_q)).astype("float32"),
            rng.normal(size=(batch, length_s, dim_v)).astype("float32"))


def twins(num_heads=4, key_size=8, value_size=None, query=None, value=None, key=None, **kwargs):
    """A Keras layer and a lib layer built on the same shapes, with the Keras weights copied into lib's."""
    theirs = keras.layers.MultiHeadAttention(num_heads, key_size, value_dim=value_size, **kwargs)
    ours = MultiHeadAttention(num_heads, key_size, value_size, **kwargs)
    theirs(query, value, key)
    ours(query, value, key)
    ours.set_weights(theirs.get_weights())
    return theirs, ours


def reference(layer, query, value, key=None, mask=None):
    """NumPy float64 re-computation of the layer's forward pass from its weights (talking heads included)."""
    key = value if key is None else key
    w = {v.name: np.asarray(np.asarray(v), dtype=np.float64) for v in layer.weights}
    q = np.einsum("btd,dhk->bhtk", query, w["query_kernel"]) + w["query_bias"][None, :, None]
    k = np.einsum("bsd,dhk->bhsk", key, w["key_kernel"]) + w["key_bias"][None, :, None]
    v = np.einsum("bsd,dhv->bhsv", value, w["value_kernel"]) + w["value_bias"][None, :, None]
    logits = np.einsum("bhtk,bhsk->bhts", q, k) / np.sqrt(layer.key_size)
    if layer.talking_heads_pre:
        logits = np.einsum("bhts,hg->bgts", logits, w["talking_heads_pre"])
    if mask is not None:
        logits = np.where(mask[:, None], logits, -np.inf)
    logits = logits - logits.max(-1, keepdims=True)
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    if layer.talking_heads_post:
        weights = np.einsum("bhts,hg->bgts", weights, w["talking_heads_post"])
    heads = np.einsum("bhts,bhsv->bthv", weights, v)
    return np.einsum("bthv,hvo->bto", heads, w["output_kernel"]) + w["output_bias"], weights


# --- equality with keras.layers.MultiHeadAttention --------------------------------------------------------


@pytest.mark.parametrize("cross, separate_key, value_size", [(False, False, None), (True, False, None),
                                                             (True, True, 6)])
def test_matches_keras_output_and_scores(cross, separate_key, value_size):
    if value_size is not None and keras.backend.backend() == "jax":
        pytest.skip("the peer fails here: keras.layers.MultiHeadAttention under JAX calls jax.nn.dot_product_attention, "
                    "which needs value_dim == key_dim")
    query, value = inputs()
    if not cross:
        value = query
    key = np.random.default_rng(1).normal(size=(2, value.shape[1], 10)).astype("float32") if separate_key else None
    theirs, ours = twins(4, 8, value_size, query, value, key)
    expected, expected_scores = theirs(query, value, key, return_attention_scores=True)
    got, got_scores = ours(query, value, key, return_attention_scores=True)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got_scores, expected_scores, rtol=RTOL, atol=ATOL)
    # Keras takes another code path (its fused dot_product_attention) when no scores are asked for.
    np.testing.assert_allclose(ours(query, value, key), theirs(query, value, key), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("return_scores", [False, True])
def test_matches_keras_with_causal_mask(return_scores):
    query, _ = inputs(length_q=6)
    theirs, ours = twins(2, 8, query=query, value=query)
    expected = theirs(query, query, use_causal_mask=True, return_attention_scores=return_scores)
    got = ours(query, query, use_causal_mask=True, return_attention_scores=return_scores)
    for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    if return_scores:
        scores = np.asarray(got[1])
        assert np.all(np.triu(scores, k=1) == 0.0)  # nothing attends to the future
        np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-6)


def test_matches_keras_with_explicit_mask_and_causal_mask_together():
    query, value = inputs(length_q=6, length_s=6)
    mask = np.random.default_rng(3).random((2, 6, 6)) > 0.4
    mask[:, :, 0] = True  # every row may attend somewhere
    theirs, ours = twins(2, 4, query=query, value=value)
    for causal in (False, True):
        expected, expected_scores = theirs(query, value, attention_mask=mask, use_causal_mask=causal,
                                           return_attention_scores=True)
        got, got_scores = ours(query, value, attention_mask=mask, use_causal_mask=causal,
                               return_attention_scores=True)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got_scores, expected_scores, rtol=RTOL, atol=ATOL)
        allowed = mask & (np.tril(np.ones((6, 6), bool)) if causal else True)
        assert np.all(np.asarray(got_scores)[~np.broadcast_to(allowed[:, None], got_scores.shape)] == 0.0)


def test_keras_padding_masks_are_honoured_like_keras():
    ids = np.array([[3, 5, 2, 0, 0], [4, 1, 6, 7, 2]])  # the first sequence is padded
    embedding = keras.layers.Embedding(10, 16, mask_zero=True)
    embedding.build((None, 5))
    theirs = keras.layers.MultiHeadAttention(2, 8)
    ours = MultiHeadAttention(2, 8)
    x = embedding(ids)
    theirs(x, x)
    ours(x, x)
    ours.set_weights(theirs.get_weights())
    # (Keras's layer removes the masks from its inputs, so each layer gets a fresh masked tensor.)
    expected, expected_scores = theirs(embedding(ids), embedding(ids), return_attention_scores=True)
    got, got_scores = ours(embedding(ids), embedding(ids), return_attention_scores=True)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got_scores, expected_scores, rtol=RTOL, atol=ATOL)
    assert np.all(np.asarray(got_scores)[0, :, :, 3:] == 0.0)  # no attention to padding
    assert np.all(np.asarray(got_scores)[0, :, 3:, :] == 0.0)  # padded queries attend to nothing
    # Keras's fused path gives padded *queries* a uniform distribution instead of zeros: compare real tokens.
    fused = theirs(embedding(ids), embedding(ids))
    np.testing.assert_allclose(ours(embedding(ids), embedding(ids))[0, :3], fused[0, :3], rtol=RTOL, atol=ATOL)
    # the output carries the query's mask, as Keras's does
    output = ours(embedding(ids), embedding(ids))
    np.testing.assert_array_equal(output._keras_mask, ids != 0)


def test_masks_in_a_functional_model_match_keras():
    ids = np.array([[3, 5, 2, 0], [4, 1, 6, 7]])
    models = []
    for layer in (keras.layers.MultiHeadAttention(2, 4, name="mha"), MultiHeadAttention(2, 4, name="mha")):
        tokens = keras.Input((4,), dtype="int32")
        x = keras.layers.Embedding(10, 8, mask_zero=True, name="embedding")(tokens)
        models.append(keras.Model(tokens, layer(x, x)))
    models[1].set_weights(models[0].get_weights())
    np.testing.assert_allclose(models[1](ids)[:, :3], models[0](ids)[:, :3], rtol=RTOL, atol=ATOL)


# --- dropout -----------------------------------------------------------------------------------------------------


def test_dropout_with_the_same_seed_drops_what_keras_drops():
    query, value = inputs()
    theirs, ours = twins(4, 8, query=query, value=value, dropout=0.5, seed=7)
    for causal in (False, True):  # the two seed generators advance in step, call after call
        expected, expected_scores = theirs(query, value, training=True, use_causal_mask=causal,
                                           return_attention_scores=True)
        got, got_scores = ours(query, value, training=True, use_causal_mask=causal, return_attention_scores=True)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got_scores, expected_scores, rtol=RTOL, atol=ATOL)
    # and the dropout did act: the training output differs from the inference output
    assert not np.allclose(ours(query, value, training=True), ours(query, value), atol=1e-3)
    # inference: no dropout at all
    np.testing.assert_allclose(ours(query, value), theirs(query, value), rtol=RTOL, atol=ATOL)


def test_dropout_statistics():
    rate, length = 0.3, 256
    # zero kernels and unit biases: every weight is 1/length and every value is 1, so each output is the
    # sum of the kept weights of its row, k / (length (1 - rate)) for k kept positions out of length
    layer = MultiHeadAttention(1, 1, dropout=rate, seed=1, kernel_initializer="zeros", bias_initializer="ones")
    query, value = np.zeros((8, 8, 1), "float32"), np.zeros((8, length, 1), "float32")
    layer(query, value)
    layer.output_kernel.assign(np.ones((1, 1, 1), "float32"))
    layer.output_bias.assign(np.zeros((1,), "float32"))
    np.testing.assert_allclose(layer(query, value, training=False), 1.0, rtol=1e-6)
    calls = [np.asarray(layer(query, value, training=True), "float64").ravel() for _ in range(3)]
    assert not np.array_equal(calls[0], calls[1])  # a fresh mask on every call
    kept = np.concatenate(calls) * length * (1 - rate)
    np.testing.assert_allclose(kept, np.round(kept), atol=1e-3)  # kept weights are scaled by 1/(1 - rate)
    # the kept fraction is binomial: 192 rows x 256 positions, standard deviation 0.0021 around 0.7
    assert abs(kept.mean() / length - (1 - rate)) < 0.01, kept.mean() / length
    _, scores = layer(query, value, training=True, return_attention_scores=True)
    np.testing.assert_allclose(np.asarray(scores).sum(-1), 1.0, atol=1e-5)  # scores are returned before dropout


# --- talking heads ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pre, post", [(True, False), (False, True), (True, True)])
def test_talking_heads_match_a_numpy_reference(pre, post):
    query, value = inputs(dim_v=16)
    layer = MultiHeadAttention(3, 4, value_size=5, talking_heads_pre=pre, talking_heads_post=post,
                               talking_heads_initializer="random_normal", bias_initializer="random_normal")
    mask = np.random.default_rng(2).random((2, 5, 7)) > 0.3
    mask[:, :, 0] = True
    got, got_weights = layer(query, value, attention_mask=mask, return_attention_scores=True)
    expected, expected_weights = reference(layer, query.astype(np.float64), value.astype(np.float64), mask=mask)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_weights, expected_weights, rtol=1e-4, atol=1e-6)


def test_plain_layer_matches_the_numpy_reference_too():
    query, value = inputs()
    layer = MultiHeadAttention(4, 3, value_size=2, output_dim=5, bias_initializer="random_normal")
    got = layer(query, value)
    expected, _ = reference(layer, query.astype(np.float64), value.astype(np.float64))
    assert got.shape == (2, 5, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_identity_talking_heads_compute_the_plain_layer():
    query, value = inputs()
    plain = MultiHeadAttention(4, 8)
    talking = MultiHeadAttention(4, 8, talking_heads_pre=True, talking_heads_post=True)
    plain(query, value)
    talking(query, value)
    talking.set_weights(plain.get_weights() + [np.eye(4), np.eye(4)])
    np.testing.assert_allclose(talking(query, value), plain(query, value), rtol=RTOL, atol=ATOL)


def test_rank_of_the_logits_is_at_most_key_size_and_talking_heads_lift_it():
    length, heads, key_size = 24, 4, 3
    x = np.random.default_rng(0).normal(size=(1, length, 32))
    plain = MultiHeadAttention(heads, key_size, dtype="float64", bias_initializer="random_normal")
    talking = MultiHeadAttention(heads, key_size, talking_heads_pre=True, dtype="float64",
                                 talking_heads_initializer="random_normal", bias_initializer="random_normal")
    for layer in (plain, talking):
        layer(x, x)
    # float64 layers keep float64 logits: singular values beyond the rank are at the 1e-16 level
    ranks = {name: [np.linalg.matrix_rank(m, tol=1e-10 * np.abs(m).max())
                    for m in np.asarray(layer.attention_logits(x, x))[0]]
             for name, layer in (("plain", plain), ("talking", talking))}
    assert ranks["plain"] == [key_size] * heads
    assert ranks["talking"] == [heads * key_size] * heads


# --- shapes, serialization, fit, precision, XLA ----------------------------------------------------------------


@keras.saving.register_keras_serializable(package="tests")
class SelfAttention(MultiHeadAttention):
    """One-input form for lib.testing.check_keras_layer (which calls a layer on a single tensor)."""

    def build(self, query_shape):
        super().build(query_shape, query_shape)

    def call(self, query):
        return super().call(query, query)

    def compute_output_spec(self, query):
        return super().compute_output_spec(query, query)


@pytest.mark.parametrize("kwargs", [dict(num_heads=2, key_size=3), dict(num_heads=3, key_size=5, value_size=2,
                                    output_dim=4, talking_heads_pre=True, talking_heads_post=True, dropout=0.1)])
def test_layer_config_save_load_and_fit(kwargs):
    expected = (6, kwargs.get("output_dim", 8))
    check_keras_layer(lambda: SelfAttention(**kwargs), (6, 8), expected_output_shape=expected)


def test_two_input_model_with_masks_and_scores_saves_and_loads(tmp_path):
    tokens = keras.Input((6,), dtype="int32")
    memory = keras.Input((4, 5))
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    layer = MultiHeadAttention(2, 6, value_size=3, talking_heads_pre=True, talking_heads_post=True,
                               talking_heads_initializer="random_normal")
    attended, scores = layer(x, x, use_causal_mask=True, return_attention_scores=True)
    crossed = MultiHeadAttention(2, 4)(attended, memory)
    model = keras.Model([tokens, memory], [crossed, scores])
    assert tuple(scores.shape) == (None, 2, 6, 6)
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 20, size=(3, 6)), rng.normal(size=(3, 4, 5)).astype("float32")]
    before = model.predict(batch, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for a, b in zip(before, loaded.predict(batch, verbose=0)):
        np.testing.assert_array_equal(a, b)
    assert loaded.layers[2].get_config() == layer.get_config()


def test_mixed_precision_and_xla():
    keras.utils.set_random_seed(0)  # the weights too: the large-logit check below must not depend on the draw
    query, value = inputs()
    reference_layer = MultiHeadAttention(4, 8, talking_heads_pre=True, talking_heads_initializer="random_normal")
    expected = reference_layer(query, value, use_causal_mask=False)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = MultiHeadAttention(4, 8, talking_heads_pre=True, dropout=0.1)
        layer(query, value)
        layer.set_weights(reference_layer.get_weights())
        output, scores = tf.function(lambda q, v: layer(q, v, return_attention_scores=True),
                                     jit_compile=True)(query, value)
        assert output.dtype == "float16" and scores.dtype == "float16"
        assert all(w.dtype == "float32" for w in layer.weights)
        np.testing.assert_allclose(np.asarray(output, "float32"), expected, rtol=2e-2, atol=2e-2)
        # logits far beyond float16's exp range (e^11 already overflows) stay finite: masking and the softmax
        # run in float32 (the logits themselves must still fit float16's 65504, as in Keras's layer)
        large_query, large_value = 100.0 * query, 100.0 * value
        logits = np.asarray(layer.attention_logits(large_query, large_value))
        assert 100.0 < np.abs(logits).max() < 65504.0
        output = layer(large_query, large_value, use_causal_mask=True)
        assert np.all(np.isfinite(np.asarray(output, "float32")))
    finally:
        keras.config.set_dtype_policy(previous)


def test_xla_matches_eager_with_masks():
    query, value = inputs(length_q=7)
    layer = MultiHeadAttention(2, 4, talking_heads_pre=True, talking_heads_post=True,
                               talking_heads_initializer="random_normal")
    mask = np.random.default_rng(4).random((2, 7, 7)) > 0.5
    eager = layer(query, value, attention_mask=mask, use_causal_mask=True)
    compiled = tf.function(lambda q, v, m: layer(q, v, attention_mask=m, use_causal_mask=True),
                           jit_compile=True)(query, value, mask)
    np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-5)


def test_fully_masked_rows_give_zero_weights_and_no_nan():
    query, value = inputs()
    mask = np.ones((2, 5, 7), bool)
    mask[0, 1] = False
    layer = MultiHeadAttention(2, 4, talking_heads_post=True)
    output, scores = layer(query, value, attention_mask=mask, return_attention_scores=True)
    assert np.all(np.asarray(scores)[0, :, 1] == 0.0)
    assert np.all(np.isfinite(output))


def test_mask_of_rank_two_and_of_ones_and_zeros():
    query, value = inputs()
    layer = MultiHeadAttention(2, 4)
    mask = (np.random.default_rng(5).random((5, 7)) > 0.5).astype("float32")
    mask[:, 0] = 1
    _, from_2d = layer(query, value, attention_mask=mask, return_attention_scores=True)
    _, from_3d = layer(query, value, attention_mask=np.broadcast_to(mask > 0, (2, 5, 7)), return_attention_scores=True)
    np.testing.assert_array_equal(from_2d, from_3d)


# --- counts --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [dict(), dict(value_size=3), dict(output_dim=7), dict(use_bias=False),
                                    dict(talking_heads_pre=True),
                                    dict(talking_heads_pre=True, talking_heads_post=True)])
def test_parameter_count_equals_the_layer_count(kwargs):
    layer = MultiHeadAttention(3, 5, **kwargs)
    layer(np.zeros((1, 2, 10), "float32"), np.zeros((1, 2, 10), "float32"))
    assert attention.parameter_count(10, 3, 5, **kwargs) == layer.count_params()


def test_parameter_count_of_bert_base_and_symbolic_form():
    assert attention.parameter_count(768, 12, 64) == 4 * 768 * 768 + 4 * 768
    d, h, k = sp.symbols("d h k", positive=True)
    difference = attention.parameter_count(d, h, 2 * k, k) - attention.parameter_count(d, h, k, k)
    assert sp.expand(difference - 2 * h * k * (d + 1)) == 0


def test_flop_count_matches_a_count_by_hand():
    t, d, h, k = 10, 12, 3, 4
    by_hand = 2 * (3 * t * d * h * k + 2 * h * t * t * k + t * h * k * d)
    assert attention.flop_count(t, d, h, k) == by_hand
    assert attention.flop_count(t, d, h, k, talking_heads_pre=True) == by_hand + 2 * h * h * t * t
    assert attention.flop_count(t, d, h, k, key_length=5) < by_hand


# --- the experiment's helpers ----------------------------------------------------------------------------------


def test_random_attention_maps_are_stochastic_and_reproducible():
    maps = attention.random_attention_maps(3, 6, temperature=0.5, seed=1)
    assert maps.shape == (3, 6, 6) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(maps, attention.random_attention_maps(3, 6, temperature=0.5, seed=1))


def test_kl_divergence():
    p = np.array([[0.5, 0.5, 0.0]])
    q = np.array([[0.25, 0.25, 0.5]])
    assert attention.kl_divergence(p, q) == pytest.approx(np.log(2.0))
    assert attention.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)


def test_low_rank_logit_error_falls_to_zero_at_full_rank():
    targets = attention.random_attention_maps(2, 8, seed=0)
    errors = [attention.low_rank_logit_error(targets, rank) for rank in range(1, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-10  # row-centred log-maps have rank n - 1


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="fit_attention_maps trains in a TensorFlow loop (see the README)")
def test_fit_attention_maps_reaches_the_target_only_with_enough_key_size():
    targets = attention.random_attention_maps(2, 6, seed=0)
    small, full = attention.fit_attention_maps(targets, [1, 6], steps=300)
    assert (small.key_size, full.key_size) == (1, 6)
    assert full.kl < 0.01 < small.kl, (small.kl, full.kl)
    # the least-squares rank-1 logits are one point a head of key size 1 can reach: the fit does at least as well
    assert small.kl <= attention.low_rank_logit_error(targets, 1) * 1.05
    assert small.history.shape == (300,) and small.history[-1] < small.history[0]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="fit_attention_maps trains in a TensorFlow loop (see the README)")
def test_talking_heads_fit_a_shared_map_like_one_head_of_h_times_the_key_size():
    heads, length = 3, 9
    shared = np.repeat(attention.random_attention_maps(1, length, seed=1), heads, axis=0)
    (plain_1, plain_3), (talking_1,) = (attention.fit_attention_maps(shared, [1, 3], steps=400),
                                        attention.fit_attention_maps(shared, [1], steps=400, talking_heads_pre=True))
    assert talking_1.kl < 0.5 * plain_1.kl, (talking_1.kl, plain_1.kl)
    assert talking_1.kl < 1.5 * plain_3.kl + 0.01, (talking_1.kl, plain_3.kl)


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_heads=0, key_size=4), r"`num_heads` must be a positive integer. Received: num_heads=0"),
    (dict(num_heads=2.0, key_size=4), r"`num_heads` must be a positive integer. Received: num_heads=2.0"),
    (dict(num_heads=2, key_size=-1), r"`key_size` must be a positive integer. Received: key_size=-1"),
    (dict(num_heads=2, key_size=None), r"`key_size` must be a positive integer. Received: key_size=None"),
    (dict(num_heads=2, key_size=4, value_size=0), r"`value_size` must be a positive integer or None. Received"),
    (dict(num_heads=2, key_size=4, output_dim=True), r"`output_dim` must be a positive integer or None. Received"),
    (dict(num_heads=2, key_size=4, dropout=1.0), r"`dropout` must be a number in \[0, 1\). Received: dropout=1.0"),
    (dict(num_heads=2, key_size=4, talking_heads_pre=1), r"`talking_heads_pre` must be a bool. Received"),
    (dict(num_heads=2, key_size=4, talking_heads_post="yes"), r"`talking_heads_post` must be a bool. Received"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(**kwargs)


def test_bad_shapes_raise_value_error():
    layer = MultiHeadAttention(2, 4)
    with pytest.raises(ValueError, match=r"`query` must have shape \(batch, length, features\).*"
                                         r"Received: query.shape=\(2, 5\)"):
        layer(np.zeros((2, 5), "float32"), np.zeros((2, 5, 3), "float32"))
    with pytest.raises(ValueError, match=r"`key` and `value` must have the same length \(axis 1\). "
                                         r"Received: key.shape=\(2, 4, 3\), value.shape=\(2, 5, 3\)"):
        MultiHeadAttention(2, 4)(np.zeros((2, 5, 3), "float32"), np.zeros((2, 5, 3), "float32"),
                                 np.zeros((2, 4, 3), "float32"))
    layer(np.zeros((2, 5, 3), "float32"), np.zeros((2, 5, 3), "float32"))
    with pytest.raises(ValueError, match=r"`value` must have shape \(batch, length, 3\), as when the layer was "
                                         r"built. Received: value.shape=\(2, 5, 4\)"):
        layer(np.zeros((2, 5, 3), "float32"), np.zeros((2, 5, 4), "float32"))


@pytest.mark.parametrize("shape", [(2, 5, 6), (5,), (3, 5, 7), (2, 1, 1, 5, 7)])
def test_bad_mask_shape_raises_value_error(shape):
    query, value = inputs()
    layer = MultiHeadAttention(2, 4)
    with pytest.raises(ValueError, match=r"`attention_mask` must be broadcastable to \(batch, query_length, "
                                         r"value_length\)=\(2, 5, 7\). Received: attention_mask.shape="
                                         + re.escape(str(shape))):
        layer(query, value, attention_mask=np.ones(shape, bool))


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 2, 5, 6)])
def test_bad_per_head_mask_shape_raises_value_error(shape):
    """A rank-4 mask is one mask per head, (batch, num_heads, T, S): (2, 1, 5, 7) broadcasts, 3 heads do not."""
    query, value = inputs()
    layer = MultiHeadAttention(2, 4)
    with pytest.raises(ValueError, match=r"`attention_mask` of rank 4 \(one mask per head\) must be broadcastable to "
                                         r"\(batch, num_heads, query_length, value_length\)=\(2, 2, 5, 7\). "
                                         r"Received: attention_mask.shape=" + re.escape(str(shape))):
        layer(query, value, attention_mask=np.ones(shape, bool))


def test_experiment_helpers_reject_bad_input():
    with pytest.raises(ValueError, match=r"`temperature` must be positive. Received: temperature=0"):
        attention.random_attention_maps(2, 4, temperature=0)
    with pytest.raises(ValueError, match=r"`targets` must have shape \(num_heads, length, length\)"):
        attention.fit_attention_maps(np.ones((2, 3, 4)) / 4, [2])
    with pytest.raises(ValueError, match=r"`targets` must be row-stochastic"):
        attention.fit_attention_maps(np.ones((2, 3, 3)), [2])
    with pytest.raises(ValueError, match=r"`key_sizes` must be a positive integer. Received: key_sizes=0"):
        attention.fit_attention_maps(np.ones((2, 3, 3)) / 3, [2, 0])
    with pytest.raises(ValueError, match=r"`rank` must be a positive integer. Received: rank=0"):
        attention.low_rank_logit_error(np.ones((1, 3, 3)) / 3, 0)
    with pytest.raises(ValueError, match=r"`target` and `predicted` must have the same shape"):
        attention.kl_divergence(np.ones((2, 3)), np.ones((3, 2)))


# --- features of keras.layers.MultiHeadAttention that its users expect (cases written after Keras's own tests) ----


def test_per_head_mask_masks_each_head_separately():
    """A (B, h, T, S) mask: head i sees only what mask[:, i] allows; (B, 1, T, S) is the shared mask."""
    query, value = inputs()
    layer = MultiHeadAttention(2, 4)
    rng = np.random.default_rng(1)
    mask = rng.random((2, 2, 5, 7)) > 0.4
    mask[..., 0] = True  # every row attends somewhere
    _, scores = layer(query, value, attention_mask=mask, return_attention_scores=True)
    scores = np.asarray(scores)
    assert np.all(scores[~mask] == 0.0)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-6)
    for head in range(2):  # each head equals the layer run with that head's mask for every head
        _, alone = layer(query, value, attention_mask=mask[:, head], return_attention_scores=True)
        np.testing.assert_allclose(scores[:, head], np.asarray(alone)[:, head], atol=1e-6)
    shared = layer(query, value, attention_mask=mask[:, :1])
    np.testing.assert_allclose(np.asarray(shared), np.asarray(layer(query, value, attention_mask=mask[:, 0])),
                               atol=1e-6)


@pytest.mark.parametrize("output_shape, expected", [(None, (2, 5, 16)), (6, (2, 5, 6)), ((6,), (2, 5, 6)),
                                                    ((3, 4), (2, 5, 3, 4))])
def test_output_shape_as_in_keras(output_shape, expected):
    query, value = inputs()
    layer = MultiHeadAttention(2, 4, output_shape=output_shape)
    output = layer(query, value)
    assert tuple(output.shape) == expected
    assert layer.compute_output_shape(query.shape, value.shape) == expected
    assert tuple(layer.output_kernel.shape) == (2, 4, *expected[2:])
    clone = MultiHeadAttention.from_config(layer.get_config())
    clone(query, value)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(clone(query, value)), np.asarray(output), atol=1e-6)
    if output_shape == (3, 4):  # the same numbers as a flat output of 12, reshaped
        flat = MultiHeadAttention(2, 4, output_dim=12)
        flat(query, value)
        flat.set_weights([w.reshape(f.shape) for w, f in zip(layer.get_weights(), flat.get_weights())])
        np.testing.assert_allclose(np.asarray(flat(query, value)).reshape(expected), np.asarray(output), atol=1e-6)


@pytest.mark.parametrize("output_shape", [0, (), (2, 0), "8", 2.5])
def test_bad_output_shape(output_shape):
    with pytest.raises(ValueError, match="`output_shape` must be a positive integer"):
        MultiHeadAttention(2, 4, output_shape=output_shape)


def test_output_dim_and_output_shape_must_agree():
    with pytest.raises(ValueError, match="`output_dim` and `output_shape` say different things"):
        MultiHeadAttention(2, 4, output_dim=8, output_shape=(6,))


def test_compute_output_shape_validates_like_keras():
    layer = MultiHeadAttention(2, 2)
    with pytest.raises(ValueError, match=r"All dimensions of `value` and `key`, except the last one, must be equal"):
        layer.compute_output_shape((2, 4, 8), (2, 2, 7), (2, 1, 7))
    keras_layer = keras.layers.MultiHeadAttention(2, 2)
    with pytest.raises(ValueError, match=r"All dimensions of `value` and `key`, except the last one, must be equal"):
        keras_layer.compute_output_shape((2, 4, 8), (2, 2, 7), (2, 1, 7))
    assert layer.compute_output_shape((2, 4, 8), (2, 2, 7)) == keras_layer.compute_output_shape((2, 4, 8), (2, 2, 7))


def test_regularizers_and_constraints_reach_the_projections():
    query, value = inputs()
    layer = MultiHeadAttention(2, 4, kernel_regularizer="l2", bias_regularizer="l1", kernel_constraint="non_neg",
                               bias_constraint="non_neg", activity_regularizer="l2")
    layer(query, value)
    assert len(layer.losses) == 4 + 4 + 1  # four kernels, four biases, the activity
    kernels = [layer.query_kernel, layer.key_kernel, layer.value_kernel, layer.output_kernel]
    biases = [layer.query_bias, layer.key_bias, layer.value_bias, layer.output_bias]
    assert all(isinstance(w.constraint, keras.constraints.NonNeg) for w in kernels + biases)
    clone = MultiHeadAttention.from_config(layer.get_config())
    clone(query, value)
    assert len(clone.losses) == 9
    assert isinstance(clone.output_kernel.constraint, keras.constraints.NonNeg)
    # the constraint is applied by the optimizer after each step
    optimizer = keras.optimizers.SGD(1.0)
    optimizer.apply([np.full(w.shape, 10.0, "float32") for w in kernels], kernels)
    assert all(float(np.min(np.asarray(w))) >= 0.0 for w in kernels)


# --- attention_axes: inputs of rank > 3 (cases ported from Keras's multi_head_attention_test.py) --------------


def high_dim_inputs(q_dims, v_dims, batch=3, hidden=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, *q_dims, hidden)).astype("float32"),
            rng.normal(size=(batch, *v_dims, hidden)).astype("float32"))


def axes_twins(query, value, attention_axes, num_heads=2, key_size=2, **kwargs):
    theirs = keras.layers.MultiHeadAttention(num_heads, key_size, attention_axes=attention_axes, **kwargs)
    ours = MultiHeadAttention(num_heads, key_size, attention_axes=attention_axes, **kwargs)
    theirs(query, value)
    ours(query, value)
    ours.set_weights(theirs.get_weights())
    return theirs, ours


# Keras's test_high_dim_attention cases (q_dims, v_dims, mask_dims, attention_axes). Keras's own test never
# applies the masks; here they are applied, in the shapes Keras accepts: a mask of rank 2n + k holds the first
# k of (batch, *other axes) and the query and key axes ("4d ... mask4" and "5d ... fullmask" are given their
# batch axis of 3 in front, the shapes Keras's softmax accepts).
HIGH_DIM_CASES = {
    "4d_inputs_1freebatch_mask2": ((3, 4), (3, 2), (4, 2), (2,)),
    "4d_inputs_1freebatch_mask3": ((3, 4), (3, 2), (3, 4, 2), (2,)),
    "4d_inputs_1freebatch_mask4": ((3, 4), (3, 2), (3, 3, 4, 2), (2,)),
    "4d_inputs_2d_attention": ((3, 4), (3, 2), (3, 4, 3, 2), (1, 2)),
    "5d_inputs_2d_attention": ((5, 3, 4), (5, 3, 2), (3, 4, 3, 2), (2, 3)),
    "5d_inputs_2d_attention_batchmask": ((5, 3, 4), (5, 3, 2), (3, 3, 4, 3, 2), (2, 3)),
    "5d_inputs_2d_attention_fullmask": ((5, 3, 4), (5, 3, 2), (3, 5, 3, 4, 3, 2), (2, 3)),
    "4d_inputs_default_axes": ((3, 4), (2, 5), None, None),
    "5d_inputs_noncontiguous_axes": ((2, 3, 4), (5, 3, 2), None, (1, 3)),
}


@pytest.mark.parametrize("case", HIGH_DIM_CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_high_dim_attention_matches_keras(case, masked):
    q_dims, v_dims, mask_dims, attention_axes = HIGH_DIM_CASES[case]
    if masked and mask_dims is None:
        pytest.skip("no mask in this case")
    query, value = high_dim_inputs(q_dims, v_dims)
    theirs, ours = axes_twins(query, value, attention_axes)
    assert len(ours.weights) == len(theirs.weights) == 8
    mask = None
    if masked:
        mask = np.random.default_rng(1).random(mask_dims) > 0.3
    expected, expected_scores = theirs(query, value, attention_mask=mask, return_attention_scores=True)
    output, scores = ours(query, value, attention_mask=mask, return_attention_scores=True)
    assert tuple(output.shape) == query.shape
    assert tuple(scores.shape) == tuple(expected_scores.shape)
    np.testing.assert_allclose(output, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scores, expected_scores, rtol=RTOL, atol=ATOL)
    # the joint softmax: the weights of each (batch, other, head, query position) sum to 1 over every key axis
    n = len(q_dims) if attention_axes is None else len(attention_axes)
    sums = np.asarray(scores).sum(axis=tuple(range(-n, 0)))
    if masked:  # a query position with no key left has all-zero weights
        sums = sums[sums > 0]
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)


def test_attention_axes_negative_indexing():
    query, _ = high_dim_inputs((3, 8), (3, 8))
    positive = MultiHeadAttention(2, 4, attention_axes=2)
    negative = MultiHeadAttention(2, 4, attention_axes=-2)
    positive(query, query)
    negative(query, query)
    negative.set_weights(positive.get_weights())
    z_pos, a_pos = positive(query, query, return_attention_scores=True)
    z_neg, a_neg = negative(query, query, return_attention_scores=True)
    assert z_pos.shape == z_neg.shape and a_pos.shape == a_neg.shape == (3, 3, 2, 8, 8)
    np.testing.assert_array_equal(z_pos, z_neg)
    np.testing.assert_array_equal(a_pos, a_neg)


def test_causal_mask_on_non_4d_inputs_masks_the_future():
    # Keras's test_causal_only_masks_non_4d_inputs: attention over axis 1 of a (1, 5, 3, 8) input
    t = 5
    future = np.triu(np.ones((t, t)), k=1).astype(bool)
    x = np.random.RandomState(0).randn(1, t, 3, 8).astype("float32")
    theirs, ours = axes_twins(x, x, 1, key_size=4)
    _, scores = ours(x, x, use_causal_mask=True, return_attention_scores=True)
    assert np.asarray(scores)[..., future].sum() < 1e-6
    expected = theirs(x, x, use_causal_mask=True, return_attention_scores=True)[0]
    np.testing.assert_allclose(ours(x, x, use_causal_mask=True), expected, rtol=RTOL, atol=ATOL)


def test_causal_mask_over_two_axes_is_row_major():
    # documented: over several axes "the future" is the row-major order of the attention positions
    x, _ = high_dim_inputs((2, 3), (2, 3), batch=2)
    layer = MultiHeadAttention(2, 4, attention_axes=(1, 2))
    _, scores = layer(x, x, use_causal_mask=True, return_attention_scores=True)
    flat = np.asarray(scores).reshape(2, 2, 6, 6)
    np.testing.assert_array_equal(flat[..., np.triu(np.ones((6, 6)), k=1) > 0], 0.0)
    manual = np.tril(np.ones((6, 6), bool)).reshape(2, 3, 2, 3)
    np.testing.assert_array_equal(layer(x, x, use_causal_mask=True), layer(x, x, attention_mask=manual))


@pytest.mark.parametrize("query_dims, value_dims, key_dims, output_shape", [
    ((4, 8), (2, 8), None, None),
    ((4, 8), (2, 8), (2, 3), (3, 4)),
    ((4, 2, 3, 8), (1, 1, 5, 8), (1, 1, 5, 2), None),
    ((4, 2, 3, 8), (1, 1, 5, 8), (1, 1, 5, 2), (3, 2)),
    ((4, 2, 3, 8), (4, 2, 3, 7), (4, 2, 3, 8), None),
])
def test_compute_output_shape_equals_the_output_shape(query_dims, value_dims, key_dims, output_shape):
    # Keras's test_compute_output_shape
    layer = MultiHeadAttention(2, 2, value_size=2, output_shape=output_shape)
    query, value = np.ones((7, *query_dims), "float32"), np.ones((7, *value_dims), "float32")
    key = None if key_dims is None else np.ones((7, *key_dims), "float32")
    output = layer(query=query, value=value, key=key)
    key_shape = None if key is None else key.shape
    assert tuple(output.shape) == layer.compute_output_shape(query.shape, value.shape, key_shape)
    assert tuple(output.shape) == layer.compute_output_shape(list(query.shape), list(value.shape),
                                                             None if key is None else list(key_shape))


def test_high_dim_key_value_mismatch_raises_like_keras():
    # Keras's test_shape_mismatch_error, "key_value_dim_mismatch_high_dim"
    shapes = (2, 4, 2, 3, 8), (2, 1, 1, 5, 8), (2, 1, 15, 5, 2)
    layer = MultiHeadAttention(4, 2, value_size=2)
    with pytest.raises(ValueError, match="must be equal"):
        layer.compute_output_shape(*shapes)
    with pytest.raises(ValueError, match="must be equal"):
        layer(*(np.ones(shape, "float32") for shape in shapes))


def test_rank_three_is_unchanged_by_attention_axes():
    # attention_axes=1, -2 and None are the same layer on rank-3 inputs: same weights, bit-identical outputs
    query, value = inputs()
    plain = MultiHeadAttention(2, 4, talking_heads_pre=True, talking_heads_initializer="random_normal")
    reference_output, reference_scores = plain(query, value, return_attention_scores=True)
    for axes in (1, (1,), -2, [-2]):
        layer = MultiHeadAttention(2, 4, talking_heads_pre=True, attention_axes=axes)
        layer(query, value)
        assert [tuple(w.shape) for w in layer.weights] == [tuple(w.shape) for w in plain.weights]
        layer.set_weights(plain.get_weights())
        output, scores = layer(query, value, return_attention_scores=True)
        np.testing.assert_array_equal(output, reference_output)
        np.testing.assert_array_equal(scores, reference_scores)


def flatten_for_axes(x, attention_axes):
    """The rank-3 problem that attention over ``attention_axes`` of ``x`` is, by hand in NumPy."""
    rank = x.ndim
    others = [a for a in range(rank - 1) if a not in attention_axes]
    moved = np.transpose(x, others + list(attention_axes) + [rank - 1])
    nb = len(others)
    return moved.reshape(int(np.prod(moved.shape[:nb])), int(np.prod(moved.shape[nb:-1])), x.shape[-1])


@pytest.mark.parametrize("pre, post", [(True, False), (False, True), (True, True)])
def test_talking_heads_over_several_axes_mix_heads_at_each_position_pair(pre, post):
    # defined (class docstring): the rank-3 computation of the flattened problem, talking heads included
    query, value = high_dim_inputs((2, 3, 4), (2, 3, 2))
    axes = (1, 3)
    layer = MultiHeadAttention(3, 4, talking_heads_pre=pre, talking_heads_post=post, attention_axes=axes,
                               talking_heads_initializer="random_normal")
    output, scores = layer(query, value, return_attention_scores=True)
    flat_query, flat_value = flatten_for_axes(query, axes), flatten_for_axes(value, axes)
    expected, expected_weights = reference(layer, flat_query.astype(np.float64), flat_value.astype(np.float64))
    np.testing.assert_allclose(flatten_for_axes(np.asarray(output), axes), expected, rtol=1e-4, atol=1e-5)
    # scores (B, other, h, T1, T3, S1, S3) against the reference's (B·other, h, T, S)
    b, other, h = scores.shape[:3]
    np.testing.assert_allclose(np.asarray(scores).reshape(b * other, h, 2 * 4, 2 * 2), expected_weights,
                               rtol=1e-4, atol=1e-6)


def test_keras_masks_of_high_dim_inputs_equal_the_explicit_mask():
    ids_q = np.array([[[1, 2, 3, 0], [3, 1, 0, 0], [2, 0, 0, 0]], [[1, 1, 1, 1], [2, 3, 0, 0], [1, 2, 3, 0]]])
    ids_v = np.array([[[5, 4, 0], [3, 0, 0], [2, 1, 1]], [[1, 0, 0], [2, 2, 0], [4, 4, 4]]])
    query = keras.layers.Embedding(4, 8, mask_zero=True)(ids_q)  # (2, 3, 4, 8), Keras mask (2, 3, 4)
    value = keras.layers.Embedding(6, 8, mask_zero=True)(ids_v)  # (2, 3, 3, 8), Keras mask (2, 3, 3)
    layer = MultiHeadAttention(2, 4, attention_axes=2)
    automatic = layer(query, value)
    mask = (ids_q > 0)[..., :, None] & (ids_v > 0)[..., None, :]  # (2, 3, 4, 3)
    plain_query, plain_value = ops.convert_to_tensor(np.asarray(query)), ops.convert_to_tensor(np.asarray(value))
    explicit = layer(plain_query, plain_value, attention_mask=mask)
    np.testing.assert_allclose(automatic, explicit, rtol=1e-6, atol=1e-6)


def test_high_dim_layer_config_save_load_and_fit():
    check_keras_layer(lambda: SelfAttention(num_heads=2, key_size=3, attention_axes=(2,), talking_heads_pre=True,
                                            dropout=0.1), (3, 5, 8))
    layer = MultiHeadAttention(2, 3, attention_axes=(1, 2))
    config = layer.get_config()
    assert config["attention_axes"] == [1, 2]
    assert MultiHeadAttention.from_config(config).get_config() == config
    old = dict(config)
    del old["attention_axes"]  # a config saved before attention_axes existed
    assert MultiHeadAttention.from_config(old).attention_axes is None


def test_high_dim_scores_in_a_functional_model():
    x = keras.Input((3, 5, 8))
    output, scores = MultiHeadAttention(2, 4, attention_axes=2)(x, x, return_attention_scores=True)
    assert tuple(output.shape) == (None, 3, 5, 8)
    assert tuple(scores.shape) == (None, 3, 2, 5, 5)
    output, scores = MultiHeadAttention(2, 4)(x, x, return_attention_scores=True)
    assert tuple(scores.shape) == (None, 2, 3, 5, 3, 5)


def test_high_dim_traced_with_unknown_batch_and_lengths():
    query, value = high_dim_inputs((3, 4), (3, 2))
    mask = np.random.default_rng(2).random((3, 3, 4, 2)) > 0.3
    layer = MultiHeadAttention(2, 4, attention_axes=2, talking_heads_post=True)
    eager = layer(query, value, attention_mask=mask, use_causal_mask=True)
    traced = tf.function(lambda q, v, m: layer(q, v, attention_mask=m, use_causal_mask=True), input_signature=[
        tf.TensorSpec([None, None, None, 8]), tf.TensorSpec([None, None, None, 8]),
        tf.TensorSpec([None, None, None, None], tf.bool)])
    np.testing.assert_allclose(traced(query, value, mask), eager, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"`attention_mask` of rank 5 \(one mask per head\) must be broadcastable"):
        tf.function(lambda q, v: layer(q, v, attention_mask=np.ones((3, 3, 5, 4, 2), bool)))(query, value)


@pytest.mark.parametrize("attention_axes", ["2", 1.0, (), (1, 1), True, [1, "2"]])
def test_bad_attention_axes_raise_value_error(attention_axes):
    with pytest.raises(ValueError, match=r"`attention_axes` must be an integer, a non-empty tuple of distinct "
                                         r"integers, or None. Received: attention_axes="):
        MultiHeadAttention(2, 4, attention_axes=attention_axes)


def test_bad_high_dim_inputs_raise_errors_naming_the_argument():
    query, value = high_dim_inputs((3, 4), (3, 2))
    for axes in (0, 3, -4, (1, -3)):
        with pytest.raises(ValueError, match=r"`attention_axes` must name (axes between the batch axis and the "
                                             r"features axis: for inputs of rank 4, integers in \[1, 2\] or "
                                             r"\[-3, -2\]|each axis once)"):
            MultiHeadAttention(2, 4, attention_axes=axes)(query, value)
    layer = MultiHeadAttention(2, 4, attention_axes=2)
    with pytest.raises(ValueError, match=r"`value` must have the rank of `query` \(4\). Received: "
                                         r"query.shape=\(3, 3, 4, 8\), value.shape=\(3, 6, 8\)"):
        layer(query, value.reshape(3, 6, 8))
    with pytest.raises(ValueError, match=r"`value` must match `query` on the axes that attention does not run over "
                                         r"\(attention_axes=\(2,\)\): axis 1 differs"):
        layer(query, np.concatenate([value, value], axis=1))
    with pytest.raises(ValueError, match=r"`attention_mask` must be broadcastable to \(batch, \*other axes, \*query "
                                         r"axes, \*key axes\)=\(3, 3, 4, 2\).*Received: attention_mask.shape=\(4, 3\)"):
        layer(query, value, attention_mask=np.ones((4, 3), bool))
    with pytest.raises(ValueError, match=r"`attention_mask` must be broadcastable.*Received: "
                                         r"attention_mask.shape=\(2,\)"):
        layer(query, value, attention_mask=np.ones((2,), bool))
    with pytest.raises(ValueError, match=r"`query_mask` must have the shape of its input without the features, "
                                         r"\(3, 3, 4\). Received: query_mask.shape=\(3, 4\)"):
        layer(query, value, query_mask=np.ones((3, 4), bool))
    with pytest.raises(ValueError, match=r"`attention_axes` must name axes between"):
        layer.compute_output_shape((3, 4, 8), (3, 2, 8))
