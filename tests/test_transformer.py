"""Tests of lib.transformer: the BERT/ALBERT encoder, untying, parameter counts, heads, save/load, precision."""

import keras
import numpy as np
import pytest
import sympy as sp
import tensorflow as tf
from keras import ops

from lib import transformer
from lib.testing import check_keras_layer
from lib.transformer import (MaskedLanguageModel, SequenceClassifier, TransformerBlock, TransformerEncoder,
                             parameter_count)


def tiny_encoder(share_layers=True, embedding_size=8, dropout=0.0, **overrides):
    config = dict(vocabulary_size=40, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=24,
                  embedding_size=embedding_size, max_length=10, num_segments=2, share_layers=share_layers,
                  dropout=dropout)
    config.update(overrides)
    return TransformerEncoder(**config)


def token_batch(seed=0, batch=3, length=7, vocabulary_size=40):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocabulary_size, size=(batch, length)).astype("int32")
    ids[:, 0] = 2
    ids[1, 4:] = 0  # padding
    ids[2, 2:] = 0
    return ids


def randomize(weights, seed=0):
    """Give every weight (norm scales and biases included) distinct random values, so a wrong copy shows."""
    rng = np.random.default_rng(seed)
    for weight in weights:
        scale = 1.0 if weight.path.endswith("gamma") else 0.0
        weight.assign(scale + 0.2 * rng.normal(size=weight.shape).astype("float32"))


# --- untying --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("embedding_size", [8, None])
def test_unshared_encoder_computes_exactly_the_shared_function(embedding_size):
    keras.utils.set_random_seed(0)
    encoder = tiny_encoder(embedding_size=embedding_size)
    ids = token_batch()
    segments = (ids % 2).astype("int32")
    encoder(ids)
    randomize(encoder.weights)
    untied = encoder.unshare()
    assert not untied.share_layers and len(untied.blocks) == encoder.num_layers
    np.testing.assert_array_equal(encoder(ids, segment_ids=segments), untied(ids, segment_ids=segments))


def test_unshared_classifier_outputs_equal_before_training_and_differ_after():
    keras.utils.set_random_seed(1)
    model = SequenceClassifier(tiny_encoder(dropout=0.1), num_classes=3, dropout=0.1)
    ids = token_batch(1)
    model(ids)
    untied = model.unshare()
    np.testing.assert_array_equal(model(ids), untied(ids))  # dropout is off outside training
    shared_before = [w.numpy() for w in model.weights]
    untied.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    untied.train_on_batch(ids, np.array([0, 1, 2]))
    assert not np.array_equal(model(ids), untied(ids))
    # the untied blocks are independent variables: after a step they no longer agree with each other
    first, last = untied.encoder.blocks[0].weights, untied.encoder.blocks[-1].weights
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first, last))
    # ...and the shared model was not touched
    for before, weight in zip(shared_before, model.weights):
        np.testing.assert_array_equal(before, weight.numpy())


def test_untied_copies_are_independent_variables():
    encoder = tiny_encoder()
    encoder(token_batch())
    untied = encoder.unshare()
    variables = [id(w) for block in untied.blocks for w in block.weights]
    assert len(set(variables)) == len(variables)
    assert not set(variables) & {id(w) for w in encoder.weights}
    untied.blocks[1].output_dense.bias.assign(np.ones(16, "float32"))
    assert not np.any(untied.blocks[0].output_dense.bias.numpy() == 1.0)
    assert not np.any(encoder.blocks[0].output_dense.bias.numpy() == 1.0)


def test_shared_gradient_is_the_sum_of_the_untied_layer_gradients():
    keras.utils.set_random_seed(2)
    encoder = tiny_encoder()
    ids = token_batch(2)
    encoder(ids)
    randomize(encoder.weights, seed=2)
    untied = encoder.unshare()

    def grads(model, variables):
        with tf.GradientTape() as tape:
            loss = ops.sum(ops.square(model(ids)))
        return tape.gradient(loss, variables)

    shared = grads(encoder, encoder.blocks[0].trainable_weights)
    per_layer = [grads(untied, block.trainable_weights) for block in untied.blocks]
    for index, gradient in enumerate(shared):
        total = sum(layer[index].numpy() for layer in per_layer)
        np.testing.assert_allclose(gradient.numpy(), total, rtol=1e-4, atol=1e-5)
        assert not np.allclose(per_layer[0][index].numpy(), per_layer[-1][index].numpy())


def test_layer_weights_maps_every_layer_to_its_block():
    shared, untied = tiny_encoder(), tiny_encoder(share_layers=False)
    assert {id(shared.layer_weights(i)) for i in range(3)} == {id(shared.blocks[0])}
    assert [untied.layer_weights(i) for i in range(3)] == untied.blocks
    with pytest.raises(ValueError, match="`index` must be below num_layers=3. Received: index=3"):
        shared.layer_weights(3)


# --- parameter counts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("embedding_size, share_layers, num_segments", [
    (None, False, 2), (8, True, 2), (8, False, 0), (16, True, 1)])
def test_parameter_count_matches_the_built_model(embedding_size, share_layers, num_segments):
    encoder = tiny_encoder(share_layers=share_layers, embedding_size=embedding_size, num_segments=num_segments)
    model = SequenceClassifier(encoder, num_classes=2)
    model(token_batch())
    expected = parameter_count(40, 16, 3, 24, embedding_size=embedding_size, max_length=10,
                               num_segments=num_segments, share_layers=share_layers)
    assert encoder.count_params() + model.pooler.count_params() == expected
    assert encoder.count_params() == parameter_count(40, 16, 3, 24, embedding_size=embedding_size, max_length=10,
                                                     num_segments=num_segments, share_layers=share_layers,
                                                     pooler=False)


def test_parameter_count_with_other_key_and_value_widths():
    encoder = tiny_encoder(key_size=5, value_size=3)
    encoder(token_batch())
    assert encoder.count_params() == parameter_count(40, 16, 3, 24, embedding_size=8, max_length=10,
                                                     share_layers=True, key_width=2 * 5, value_width=2 * 3,
                                                     pooler=False)


def test_parameter_count_formula_is_symbolic_and_matches_keras_hub_presets():
    V, E, H, I, L, P, S = sp.symbols("V E H I L P S", positive=True)
    block = sp.expand(parameter_count(V, H, L, I, max_length=P, num_segments=S, pooler=False)
                      - parameter_count(V, H, 0, I, max_length=P, num_segments=S, pooler=False)) / L
    assert sp.simplify(block - (4 * H**2 + 2 * H * I + 9 * H + I)) == 0
    untied = parameter_count(V, H, L, I, embedding_size=E, max_length=P, num_segments=S)
    shared = parameter_count(V, H, L, I, embedding_size=E, max_length=P, num_segments=S, share_layers=True)
    assert sp.simplify(untied - shared - (L - 1) * block) == 0
    # keras-hub's preset metadata (keras_hub/src/models/albert/albert_presets.py, "params")
    for name, params in {"albert-base": 11_683_584, "albert-large": 17_683_968,
                         "albert-xlarge": 58_724_864, "albert-xxlarge": 222_595_584}.items():
        assert parameter_count(**transformer.ARCHITECTURES[name]) == params, name


# --- layers: shapes, masks, serialization, precision -----------------------------------------------------------------


def test_block_passes_the_standard_layer_checks():
    check_keras_layer(lambda: TransformerBlock(hidden_size=8, num_heads=2, intermediate_size=16), (5, 8))


def test_padding_does_not_change_the_real_tokens():
    keras.utils.set_random_seed(3)
    encoder = tiny_encoder()
    ids = token_batch(3)[:1, :4]
    padded = np.concatenate([ids, np.zeros((1, 3), "int32")], axis=1)
    np.testing.assert_allclose(encoder(ids)[:, :4], encoder(padded)[:, :4], rtol=1e-5, atol=1e-6)
    # an explicit padding mask overrides the default (ids != 0)
    everything = np.ones_like(padded, dtype=bool)
    assert not np.allclose(encoder(padded, padding_mask=everything)[:, :4], encoder(ids)[:, :4], atol=1e-4)


def test_dropout_is_active_only_in_training():
    keras.utils.set_random_seed(4)
    encoder = tiny_encoder(dropout=0.3)
    ids = token_batch(4)
    np.testing.assert_array_equal(encoder(ids), encoder(ids))
    assert not np.allclose(encoder(ids, training=True), encoder(ids), atol=1e-3)


@pytest.mark.parametrize("share_layers", [True, False])
def test_classifier_save_load_round_trip(tmp_path, share_layers):
    keras.utils.set_random_seed(5)
    model = SequenceClassifier(tiny_encoder(share_layers=share_layers, vocabulary=[f"t{i}" for i in range(40)]),
                               num_classes=2)
    ids = token_batch(5)
    before = model(ids)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(before, loaded(ids))
    assert loaded.encoder.share_layers == share_layers
    assert loaded.encoder.vocabulary == [f"t{i}" for i in range(40)]
    assert loaded.encoder.get_config() == model.encoder.get_config()


def test_masked_language_model_ties_the_output_to_the_input_table_and_saves_metadata(tmp_path):
    keras.utils.set_random_seed(6)
    model = MaskedLanguageModel(tiny_encoder(), metadata={"recipe": {"seed": 1}, "loss": [2.0, 1.5]})
    ids = token_batch(6)
    positions = np.array([[1, 2], [1, 3], [1, 1]])
    logits = model({"token_ids": ids, "mask_positions": positions})
    assert logits.shape == (3, 2, 40) and logits.dtype == "float32"
    everywhere = model({"token_ids": ids})
    np.testing.assert_allclose(logits[:, 0], everywhere[:, 1], rtol=1e-5, atol=1e-5)
    # the output layer is the token table: no (E, V) matrix of its own
    assert model.count_params() == model.encoder.count_params() + (16 * 8 + 8) + 2 * 8 + 40
    model.save(tmp_path / "mlm.keras")
    loaded = keras.models.load_model(tmp_path / "mlm.keras")
    assert loaded.metadata == {"recipe": {"seed": 1}, "loss": [2.0, 1.5]}
    np.testing.assert_array_equal(loaded({"token_ids": ids, "mask_positions": positions}), logits)


def test_mixed_precision_and_xla():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(7)
        model = SequenceClassifier(tiny_encoder(), num_classes=2)
        ids = token_batch(7)
        logits = model(ids)
        assert logits.dtype == "float32" and model.encoder(ids).dtype == "float16"
        np.testing.assert_array_equal(logits, model.unshare()(ids))
        compiled = tf.function(lambda x: model(x), jit_compile=True)
        np.testing.assert_allclose(compiled(tf.constant(ids)), logits, atol=2e-2)
    finally:
        keras.config.set_dtype_policy(previous)


# --- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"num_heads": 3}, r"`hidden_size` must be divisible by `num_heads` when `key_size` is not given. "
                       r"Received: hidden_size=16, num_heads=3"),
    ({"num_layers": 0}, r"`num_layers` must be a positive integer. Received: num_layers=0"),
    ({"embedding_size": 0}, r"`embedding_size` must be a positive integer or None. Received: embedding_size=0"),
    ({"dropout": 1.0}, r"`dropout` must be a float in \[0, 1\). Received: dropout=1.0"),
    ({"vocabulary": ["a", "b"]}, r"`vocabulary` must hold vocabulary_size=40 tokens. Received: vocabulary of "
                                 r"length 2"),
    ({"num_segments": -1}, r"`num_segments` must be a non-negative integer. Received: num_segments=-1"),
])
def test_bad_encoder_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_encoder(**kwargs)


def test_other_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"`unshare\(\)` needs an encoder with shared layers. "
                                         r"Received: an encoder with share_layers=False"):
        tiny_encoder(share_layers=False).unshare()
    with pytest.raises(ValueError, match=r"`token_ids` must be at most max_length=10 long. "
                                         r"Received: token_ids with shape \(1, 11\)"):
        tiny_encoder()(np.ones((1, 11), "int32"))
    with pytest.raises(ValueError, match="`encoder` must be a TransformerEncoder. Received: encoder="):
        SequenceClassifier(keras.layers.Dense(2), num_classes=2)
    with pytest.raises(ValueError, match="`num_classes` must be a positive integer. Received: num_classes=0"):
        SequenceClassifier(tiny_encoder(), num_classes=0)
    with pytest.raises(ValueError, match="`inputs` must be a tensor of token ids or a dict with the key "
                                         r"'token_ids'. Received: inputs with keys \['ids'\]"):
        SequenceClassifier(tiny_encoder(), num_classes=2)({"ids": token_batch()})
