"""Tests of lib.seq2seq: teacher-forcing inputs, the two remedies, greedy and beam search (against brute
force and the article's toy example), the model, and the measurements of chapter 8."""

import itertools
import math
import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from lib import seq2seq
from lib.seq2seq import Seq2Seq, beam_search, greedy_search, prefix_table_model

START, END = 2, 3
# The article's toy model (ARTICLES.md §4): a=4, b=5, c=6, d=7.
TOY = {(): {4: 0.6, 6: 0.4}, (4,): {5: 0.55, 7: 0.45}, (6,): {5: 0.1, 7: 0.9}}


def numpy(x):
    return ops.convert_to_numpy(x)


# --- teacher-forcing inputs and random replacement --------------------------------------------------


def test_shift_right_drops_the_end_token_and_keeps_padding():
    targets = np.array([[5, 6, 3, 0, 0], [7, 3, 0, 0, 0], [4, 5, 6, 7, 3]])
    expected = np.array([[2, 5, 6, 0, 0], [2, 7, 0, 0, 0], [2, 4, 5, 6, 7]])
    np.testing.assert_array_equal(numpy(seq2seq.shift_right(targets, START)), expected)


def test_random_replacement_rate_zero_is_the_identity():
    x = np.array([[2, 7, 8, 9, 0]])
    np.testing.assert_array_equal(numpy(seq2seq.random_replacement(x, 0.0)), x)
    np.testing.assert_array_equal(numpy(seq2seq.random_replacement(x, 0.7, sample_probability=0.0)), x)


def test_random_replacement_draws_from_the_same_target_and_spares_start_and_padding():
    rng = np.random.default_rng(0)
    x = np.zeros((200, 12), dtype="int32")
    x[:, 0] = START
    lengths = rng.integers(2, 11, size=200)
    for row, length in enumerate(lengths):
        x[row, 1:length + 1] = rng.choice(np.arange(10, 60), size=length, replace=False)
    y = numpy(seq2seq.random_replacement(x, 1.0, seed=keras.random.SeedGenerator(1)))
    np.testing.assert_array_equal(y[:, 0], START)
    np.testing.assert_array_equal(y == 0, x == 0)
    for row in range(200):
        assert set(y[row, 1:][y[row, 1:] > 0]) <= set(x[row, 1:][x[row, 1:] > 0])
    # every token was redrawn, uniformly from the row: about 1/length of them keep their value
    changed = (y != x)[x > START].mean()
    expected = np.mean(np.repeat(1 - 1 / lengths, lengths))
    assert abs(changed - expected) < 0.03, (changed, expected)


def test_random_replacement_rates_match_the_article_prose():
    # 50% of the samples are noised; in those, each token is replaced with probability 0.3.
    n, length = 4000, 11
    x = np.tile(np.arange(9, 9 + length, dtype="int32"), (n, 1))
    x[:, 0] = START
    y = numpy(seq2seq.random_replacement(x, 0.3, sample_probability=0.5, seed=keras.random.SeedGenerator(0)))
    changed = y != x
    tokens = length - 1
    # a replaced token keeps its value when it draws itself: probability 1/tokens
    per_token = 0.3 * (1 - 1 / tokens)
    noised = changed.any(axis=1)
    p_noised_and_visible = 0.5 * (1 - (1 - per_token) ** tokens)
    sd = math.sqrt(p_noised_and_visible * (1 - p_noised_and_visible) / n)
    assert abs(noised.mean() - p_noised_and_visible) < 4 * sd
    assert abs(changed.sum() / (n * tokens) - 0.5 * per_token) < 0.01


def test_random_replacement_from_the_vocabulary_never_draws_protected_ids():
    x = np.full((500, 8), 9, dtype="int32")
    x[:, 0] = START
    y = numpy(seq2seq.random_replacement(x, 1.0, pool="vocabulary", vocabulary_size=12, protected_ids=(START, END),
                                         seed=keras.random.SeedGenerator(0)))
    drawn = y[:, 1:]
    assert drawn.min() >= 1 and drawn.max() <= 11
    assert not np.isin(drawn, [START, END]).any()
    assert len(np.unique(drawn)) == 9  # ids 1, 4, 5, ..., 11


@pytest.mark.parametrize("kwargs, match", [
    ({"rate": 1.5}, r"`rate` must be a number in \[0, 1\]. Received: rate=1.5"),
    ({"rate": 0.3, "sample_probability": -0.1}, r"`sample_probability` must be a number in \[0, 1\]"),
    ({"rate": 0.3, "pool": "source"}, r"`pool` must be one of \('target', 'vocabulary'\). Received: pool='source'"),
    ({"rate": 0.3, "pool": "vocabulary"}, r"`vocabulary_size` is required when pool='vocabulary'"),
])
def test_random_replacement_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        seq2seq.random_replacement(np.array([[2, 5, 6]]), **kwargs)


# --- search: the article's toy example, brute force, length handling ------------------------------------


def test_toy_example_greedy_is_right_and_beam_two_is_wrong():
    step, state = prefix_table_model(TOY, vocabulary_size=8, end_id=END, start_id=START)
    tokens, log_probs = greedy_search(step, state(1), start_id=START, end_id=END, max_length=3)
    assert numpy(tokens).tolist() == [[4, 5, END]]
    assert float(np.exp(numpy(log_probs)[0])) == pytest.approx(0.6 * 0.55)
    tokens, scores = beam_search(step, state(1), start_id=START, end_id=END, max_length=3, beam_size=2)
    assert numpy(tokens)[0].tolist() == [[6, 7, END], [4, 5, END]]
    np.testing.assert_allclose(np.exp(numpy(scores)[0]), [0.4 * 0.9, 0.6 * 0.55], rtol=1e-6)


def random_table(rng, tokens, depth):
    """Random next-token distributions over ``tokens`` + end, for every prefix up to ``depth``."""
    table = {}
    for length in range(depth):
        for prefix in itertools.product(tokens, repeat=length):
            p = rng.dirichlet(np.full(len(tokens) + 1, 0.5))
            table[prefix] = dict(zip(list(tokens) + [END], p))
    return table


def brute_force(table, tokens, max_length):
    """Every output of at most ``max_length`` tokens (end included, or cut there) and its log-probability."""
    outputs = {}

    def log_p(prefix, token):
        return math.log(table.get(prefix, {END: 1.0}).get(token, 0.0) or 1e-300)

    def grow(prefix, score):
        if len(prefix) == max_length:
            outputs[prefix] = score
            return
        for token in list(tokens) + [END]:
            new = score + log_p(prefix, token)
            if token == END:
                outputs[prefix + (END,)] = new
            else:
                grow(prefix + (token,), new)

    grow((), 0.0)
    return outputs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_wide_beam_finds_the_most_probable_sequence(seed):
    rng = np.random.default_rng(seed)
    tokens, max_length = (4, 5, 6), 4
    table = random_table(rng, tokens, max_length)
    outputs = brute_force(table, tokens, max_length)
    best = max(outputs, key=outputs.get)
    step, state = prefix_table_model(table, vocabulary_size=7, end_id=END, start_id=START)
    # 3**3 = 27 live prefixes at most before the last step: a beam of 27 is exhaustive
    sequences, scores = beam_search(step, state(1), start_id=START, end_id=END, max_length=max_length, beam_size=27)
    found = tuple(t for t in numpy(sequences)[0, 0].tolist() if t != 0)
    assert found == best
    assert numpy(scores)[0, 0] == pytest.approx(outputs[best], rel=1e-5)
    # every hypothesis's score is its true log-probability, and they come best first
    for hypothesis, score in zip(numpy(sequences)[0], numpy(scores)[0]):
        if np.isfinite(score):
            assert score == pytest.approx(outputs[tuple(t for t in hypothesis.tolist() if t != 0)], rel=1e-5)
    assert np.all(np.diff(numpy(scores)[0]) <= 1e-6)


@pytest.mark.parametrize("seed", [3, 4])
def test_beam_of_one_is_greedy_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    table = random_table(rng, (4, 5, 6), 5)
    step, state = prefix_table_model(table, vocabulary_size=7, end_id=END, start_id=START)
    greedy, greedy_log_p = greedy_search(step, state(2), start_id=START, end_id=END, max_length=5)
    beam, beam_score = beam_search(step, state(2), start_id=START, end_id=END, max_length=5, beam_size=1)
    np.testing.assert_array_equal(numpy(greedy), numpy(beam)[:, 0])
    np.testing.assert_allclose(numpy(greedy_log_p), numpy(beam_score)[:, 0], rtol=1e-6)


def test_length_penalty_favours_longer_outputs():
    # "end now" has probability 0.5; the best 3-token output has 0.45 * 0.9 * 0.9 = 0.3645
    table = {(): {END: 0.5, 4: 0.45, 5: 0.05}, (4,): {4: 0.9, END: 0.1}, (4, 4): {END: 0.9, 4: 0.1}}
    step, state = prefix_table_model(table, vocabulary_size=6, end_id=END, start_id=START)
    plain, plain_scores = beam_search(step, state(1), start_id=START, end_id=END, max_length=4, beam_size=3)
    assert numpy(plain)[0, 0].tolist() == [END, 0, 0, 0]
    assert numpy(plain_scores)[0, 0] == pytest.approx(math.log(0.5))
    long, long_scores = beam_search(step, state(1), start_id=START, end_id=END, max_length=4, beam_size=3,
                                    length_penalty=2.0)
    assert numpy(long)[0, 0].tolist() == [4, 4, END, 0]
    assert numpy(long_scores)[0, 0] == pytest.approx(math.log(0.3645) / ((5 + 3) / 6) ** 2.0, rel=1e-5)


def test_search_stops_at_end_and_cuts_at_max_length():
    # one row ends at once, the other never does
    table = {(): {4: 0.8, END: 0.2}}
    table.update({(4,) * k: {4: 1.0} for k in range(1, 7)})
    step, state = prefix_table_model(table, vocabulary_size=6, end_id=END, start_id=START)
    tokens, log_probs = greedy_search(step, state(1), start_id=START, end_id=END, max_length=5)
    assert numpy(tokens).tolist() == [[4, 4, 4, 4, 4]]  # cut: no end token
    table[()] = {4: 0.2, END: 0.8}
    step, state = prefix_table_model(table, vocabulary_size=6, end_id=END, start_id=START)
    tokens, log_probs = greedy_search(step, state(3), start_id=START, end_id=END, max_length=5)
    assert numpy(tokens).tolist() == [[END, 0, 0, 0, 0]] * 3
    assert numpy(log_probs) == pytest.approx([math.log(0.8)] * 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"beam_size": 0}, r"`beam_size` must be an integer >= 1. Received: beam_size=0"),
    ({"beam_size": 2, "max_length": 0}, r"`max_length` must be an integer >= 1. Received: max_length=0"),
    ({"beam_size": 2, "length_penalty": -1.0}, r"`length_penalty` must be a finite number >= 0"),
    ({"beam_size": 2, "end_id": START}, r"`start_id`, `end_id` and `pad_id` must be three different ids"),
])
def test_search_rejects_bad_settings(kwargs, match):
    step, state = prefix_table_model(TOY, vocabulary_size=8, end_id=END, start_id=START)
    arguments = {"start_id": START, "end_id": END, "max_length": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        beam_search(step, state(1), **arguments)


def test_prefix_table_rejects_distributions_that_do_not_sum_to_one():
    with pytest.raises(ValueError, match="Each distribution must sum to 1"):
        prefix_table_model({(): {4: 0.5, 5: 0.4}}, vocabulary_size=6, end_id=END)


# --- the model ----------------------------------------------------------------------------------------


def tiny_model(eager=True, optimizer=None, **kwargs):
    """A small model, compiled; eager by default: for a few steps, tracing would cost more than running."""
    keras.utils.set_random_seed(0)
    model = Seq2Seq(12, 10, embedding_dim=6, hidden_dim=8, seed=0, **kwargs)
    model.compile(optimizer or keras.optimizers.Adam(0.01), run_eagerly=eager)
    return model


def sources(n=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(4, 12, size=(n, 6)).astype("int32")
    x[1, 4:] = 0  # a padded row
    return x


def test_model_shapes_and_masking():
    model = tiny_model()
    x = sources()
    logits = model({"source": x, "decoder_inputs": np.full((5, 7), START)})
    assert tuple(logits.shape) == (5, 7, 10) and logits.dtype == "float32"
    # padding in the source changes nothing: the padded row equals the same row cut short
    short = model({"source": x[1:2, :4], "decoder_inputs": np.full((1, 7), START)})
    np.testing.assert_allclose(numpy(logits)[1], numpy(short)[0], rtol=1e-5, atol=1e-6)


def test_generate_shapes_stopping_and_padding():
    model = tiny_model()
    out = model.generate(sources(), max_length=7)
    assert out.shape == (5, 7) and out.dtype == np.int32
    assert not np.isin(out, [0, START]).all(axis=1).any()  # never pad or start while running
    for row in out:  # after the first end token, only padding
        ends = np.flatnonzero(row == END)
        if ends.size:
            assert (row[ends[0] + 1:] == 0).all()
    # a model whose logits favour the end token stops at once; one that never ends is cut at max_length
    bias = model.output_projection.bias
    bias.assign(np.where(np.arange(10) == END, 50.0, 0.0))
    assert model.generate(sources(), max_length=7, beam_size=3).tolist() == [[END] + [0] * 6] * 5
    bias.assign(np.where(np.arange(10) == 6, 50.0, 0.0))
    assert model.generate(sources(), max_length=4).tolist() == [[6, 6, 6, 6]] * 5


def test_beam_of_one_is_greedy_and_scores_are_teacher_forced_log_probabilities():
    model = tiny_model()
    x = sources(8, seed=1)
    greedy, greedy_scores = model.generate(x, max_length=6, return_scores=True)
    beam1, beam1_scores = model.generate(x, max_length=6, beam_size=1, return_scores=True)
    np.testing.assert_array_equal(greedy, beam1)
    memory, mask, hidden = model.encode(x)  # the beam-search code with a beam of one
    beam_of_one, _ = beam_search(model.decode_step, (hidden, memory, mask), start_id=START, end_id=END,
                                 max_length=6, beam_size=1)
    np.testing.assert_array_equal(numpy(beam_of_one)[:, 0], greedy)
    beam, scores = model.generate(x, max_length=6, beam_size=3, return_scores=True)
    _, token_log_probs = model.teacher_forced(x, beam)
    np.testing.assert_allclose(token_log_probs.sum(axis=1), scores, rtol=1e-4)
    _, token_log_probs = model.teacher_forced(x, greedy)
    np.testing.assert_allclose(token_log_probs.sum(axis=1), greedy_scores, rtol=1e-4)


def test_beam_search_of_the_model_compiles_with_xla():
    model = tiny_model()
    x = sources()

    def decode(source):
        memory, mask, hidden = model.encode(source)
        return beam_search(model.decode_step, (hidden, memory, mask), start_id=START, end_id=END, max_length=6,
                           beam_size=2)[0][:, 0]

    np.testing.assert_array_equal(numpy(tf.function(decode, jit_compile=True)(x)),
                                  model.generate(x, max_length=6, beam_size=2))


def copy_task(n=256, seed=0):
    """Targets are the sources (ids 4..9) followed by the end token."""
    rng = np.random.default_rng(seed)
    x = rng.integers(4, 10, size=(n, 5)).astype("int32")
    y = np.concatenate([x, np.full((n, 1), END, dtype="int32")], axis=1)
    return {"source": x, "decoder_inputs": numpy(seq2seq.shift_right(y, START))}, y


def weights_after_one_step(**kwargs):
    model = tiny_model(optimizer=keras.optimizers.SGD(0.5), **kwargs)
    x, y = copy_task(32)
    history = model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    return [numpy(w) for w in model.trainable_weights], history.history["loss"][0]


def test_training_options_change_the_step_as_they_should():
    plain, plain_loss = weights_after_one_step()
    tiny_fgm, tiny_fgm_loss = weights_after_one_step(adversarial_epsilon=1e-6)
    fgm, fgm_loss = weights_after_one_step(adversarial_epsilon=2.0)
    noised, _ = weights_after_one_step(replacement_rate=1.0)
    # FGM logs the clean loss; with a vanishing ε its step is the plain step
    assert tiny_fgm_loss == pytest.approx(plain_loss, rel=1e-6) and fgm_loss == pytest.approx(plain_loss, rel=1e-6)
    for a, b in zip(plain, tiny_fgm):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(plain, fgm)) > 1e-3
    assert max(np.abs(a - b).max() for a, b in zip(plain, noised)) > 1e-3


def test_gradient_penalty_step_is_the_gradient_of_the_penalised_loss():
    # L + ½ε‖∇_E L‖², E the decoder's embedding matrix: computed here independently, through the embedding
    # variable's own (sparse) gradient, and compared with the step the model takes (SGD, learning rate 0.5)
    epsilon = 3.0
    reference = tiny_model(optimizer=keras.optimizers.SGD(0.5))
    x, y = copy_task(32)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = loss_fn(y, reference(x, training=True))
        embedding_gradient = tf.convert_to_tensor(inner.gradient(loss, reference.target_embedding.embeddings))
        objective = loss + 0.5 * epsilon * tf.reduce_sum(tf.square(embedding_gradient))
    expected = [numpy(w) - 0.5 * numpy(g) for w, g in
                zip(reference.trainable_weights, outer.gradient(objective, reference.trainable_weights))]
    penalised, logged_loss = weights_after_one_step(gradient_penalty_epsilon=epsilon)
    assert logged_loss == pytest.approx(float(loss), rel=1e-5)  # fit logs L, without the penalty
    for a, b in zip(penalised, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    plain, _ = weights_after_one_step()
    assert max(np.abs(a - b).max() for a, b in zip(plain, penalised)) > 1e-5  # the penalty moved the step


def test_fit_learns_a_copy_task_and_the_model_round_trips_through_keras_files():
    # the traced path of fit and generate (FGM's traced step runs in tests/test_seq2seq_distribute.py)
    model = tiny_model(eager=False, optimizer=keras.optimizers.Adam(0.05), replacement_rate=0.3,
                       replacement_probability=0.5)
    x, y = copy_task()
    losses = model.fit(x, y, batch_size=32, epochs=6, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "seq2seq.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    assert loaded.get_config() == model.get_config()
    assert loaded.get_config()["replacement_rate"] == 0.3
    np.testing.assert_array_equal(numpy(loaded(x)), numpy(model(x)))
    loaded.run_eagerly = True  # (the traced decoding of the same weights is `model`'s)
    np.testing.assert_array_equal(loaded.generate(x["source"], max_length=7), model.generate(x["source"], max_length=7))
    # and it keeps its optimizer state and can go on training
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) > 0
    assert np.isfinite(loaded.train_on_batch({key: value[:32] for key, value in x.items()}, y[:32]))


def test_reinitialize_equals_a_fresh_model():
    x, y = copy_task(32)

    def trained(model):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        return [numpy(w) for w in model.weights]

    keras.utils.set_random_seed(7)
    fresh = Seq2Seq(12, 10, embedding_dim=6, hidden_dim=8, seed=0, replacement_rate=0.3)
    fresh.compile(keras.optimizers.Adam(0.01), run_eagerly=True)
    expected = trained(fresh)
    reused = tiny_model(replacement_rate=0.3)
    trained(reused)  # some training first: reinitialize must undo it, optimizer state included
    reused.reinitialize(7)
    for a, b in zip(trained(reused), expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_model_without_attention():
    model = tiny_model(attention=False)
    assert not any("attention" in w.path for w in model.weights)
    assert model.generate(sources(), max_length=5).shape == (5, 5)


def test_mixed_precision_keeps_float32_logits():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = tiny_model(replacement_rate=0.3)  # (FGM in mixed precision: tests/test_seq2seq_distribute.py)
        assert model.target_embedding.compute_dtype == "float16"
        x, y = copy_task(32)
        assert model(x).dtype == "float32"
        loss = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history["loss"][0]
        assert np.isfinite(loss)
        assert model.generate(x["source"], max_length=4, beam_size=2).shape == (32, 4)
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("kwargs, match", [
    ({"source_vocabulary_size": 0}, r"`source_vocabulary_size` must be an integer >= 2. Received: "),
    ({"hidden_dim": 7}, r"`hidden_dim` must be even .* Received: hidden_dim=7"),
    ({"start_id": 0}, r"`start_id` must be an integer in \[1, 9\] \(0 is padding\). Received: start_id=0"),
    ({"end_id": 10}, r"`end_id` must be an integer in \[1, 9\]"),
    ({"end_id": 2}, r"`start_id` and `end_id` must differ"),
    ({"replacement_rate": 2}, r"`replacement_rate` must be a number in \[0, 1\]. Received: replacement_rate=2"),
    ({"replacement_probability": -1}, r"`replacement_probability` must be a number in \[0, 1\]"),
    ({"replacement_pool": "source"}, r"`replacement_pool` must be one of \('target', 'vocabulary'\)"),
    ({"adversarial_epsilon": -0.5}, r"`adversarial_epsilon` must be a finite number >= 0. Received: "),
    ({"attention": "yes"}, r"`attention` must be True or False. Received: attention='yes'"),
    ({"gradient_penalty_epsilon": -1}, r"`gradient_penalty_epsilon` must be a finite number >= 0"),
    ({"gradient_penalty_epsilon": 1.0, "adversarial_epsilon": 0.5}, r"one adversarial option at a time"),
])
def test_model_rejects_bad_settings(kwargs, match):
    arguments = {"source_vocabulary_size": 12, "target_vocabulary_size": 10, "embedding_dim": 4, "hidden_dim": 6,
                 **kwargs}
    with pytest.raises(ValueError, match=match):
        Seq2Seq(**arguments)


def test_model_methods_reject_bad_inputs():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"`source` must be an integer array of shape \(batch, length\)"):
        model.generate(np.array([4, 5, 6]))
    with pytest.raises(ValueError, match=r"`source` must hold ids in \[0, 11\]. Received: source with ids from 4 to 12"):
        model.generate(np.array([[4, 12]]))
    with pytest.raises(ValueError, match=r"`beam_size` must be an integer >= 1. Received: beam_size=0"):
        model.generate(sources(), beam_size=0)
    with pytest.raises(ValueError, match=r"`max_length` must be an integer >= 1"):
        model.generate(sources(), max_length=0)
    with pytest.raises(ValueError, match=r"`source` and `targets` must have the same number of rows"):
        model.teacher_forced(sources(5), np.full((4, 3), 5))
    with pytest.raises(ValueError, match=r"`inputs` must be a dict with keys 'source' and 'decoder_inputs'"):
        model((sources(), sources()))
    with pytest.raises(ValueError, match=r"`reinitialize` needs a compiled model"):
        Seq2Seq(12, 10, embedding_dim=4, hidden_dim=6).reinitialize(0)


# --- measurements -------------------------------------------------------------------------------------


def test_edit_alignment():
    assert seq2seq.edit_alignment([1, 2, 3], [1, 2, 3]) == (0, [False, False, False])
    assert seq2seq.edit_alignment([1, 9, 3], [1, 2, 3]) == (1, [False, True, False])  # substitution
    assert seq2seq.edit_alignment([1, 3], [1, 2, 3]) == (1, [False, True, False])  # deletion
    assert seq2seq.edit_alignment([1, 9, 2, 3], [1, 2, 3]) == (1, [False, True, False])  # insertion before 2
    assert seq2seq.edit_alignment([1, 2, 3, 9], [1, 2, 3]) == (1, [False, False, True])  # insertion at the end
    assert seq2seq.edit_alignment([], [1, 2]) == (2, [True, True])
    assert seq2seq.edit_alignment([5], []) == (1, [])


def test_error_rates_of_outputs():
    targets = np.array([[4, 5, 6, END, 0], [4, 4, END, 0, 0]])
    predictions = np.array([[4, 5, 6, END, 0], [4, 7, 4, END, 0]])
    assert seq2seq.sequence_error_rate(predictions, targets, END) == 0.5
    assert seq2seq.phoneme_error_rate(predictions, targets, END) == pytest.approx(1 / 5)


def test_position_errors_separate_the_first_error_from_later_ones():
    targets = np.array([[4, 5, 6, 7, END, 0], [4, 5, 6, 7, END, 0], [4, 5, END, 0, 0, 0]])
    predictions = np.array([[4, 5, 6, 7, END, 0],  # right
                            [4, 9, 5, 6, 7, END],  # one insertion: only position 1 is wrong
                            [8, 8, 8, 8, 8, 8]])  # wrong everywhere, never ends
    errors, valid, on_track = seq2seq.position_errors(predictions, targets, END)
    np.testing.assert_array_equal(valid.sum(axis=1), [5, 5, 3])
    np.testing.assert_array_equal(errors[0], [0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(errors[1], [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(errors[2], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(on_track[1], [1, 1, 0, 0, 0, 0])
    rates = seq2seq.conditional_error_rates(errors, valid, on_track)
    np.testing.assert_allclose(rates["on_track"][:2], [1 / 3, 1 / 2])
    np.testing.assert_allclose(rates["off_track"][1:3], [1.0, 1 / 2])
    assert np.isnan(rates["off_track"][0])
    np.testing.assert_allclose(rates["overall"][:3], [1 / 3, 2 / 3, 1 / 3])


def test_two_state_error_rates_against_simulation():
    rng = np.random.default_rng(0)
    epsilon, q = np.array([0.05, 0.1, 0.2, 0.1, 0.3]), np.array([0.5, 0.4, 0.6, 0.7, 0.5])
    n = 200_000
    off = np.zeros(n, dtype=bool)
    simulated = []
    for t in range(5):
        error = rng.random(n) < np.where(off, q[t], epsilon[t])
        simulated.append(error.mean())
        off |= error
    np.testing.assert_allclose(seq2seq.two_state_error_rates(epsilon, q), simulated, atol=4e-3)
    np.testing.assert_allclose(seq2seq.two_state_error_rates(epsilon, epsilon), epsilon)


def test_grapheme_phoneme_pairs(monkeypatch):
    import lib.data

    entries = lib.data.load_cmudict()
    monkeypatch.setattr(lib.data, "load_cmudict", lambda: entries)  # read the file once
    pairs = seq2seq.grapheme_phoneme_pairs(min_phonemes=9, max_phonemes=10, max_letters=11)
    assert len(pairs) > 1000
    assert all(word.isalpha() and word.islower() and len(word) <= 11 and 9 <= len(p) <= 10 for word, p in pairs)
    assert not any(char.isdigit() for _, p in pairs for phoneme in p for char in phoneme)
    stressed = seq2seq.grapheme_phoneme_pairs(min_phonemes=9, max_phonemes=10, max_letters=11, stress=True)
    assert [w for w, _ in stressed] == [w for w, _ in pairs]
    assert any(char.isdigit() for _, p in stressed[:20] for phoneme in p for char in phoneme)
    with pytest.raises(ValueError, match="`min_phonemes` must not exceed `max_phonemes`"):
        seq2seq.grapheme_phoneme_pairs(min_phonemes=5, max_phonemes=4)
