"""Sequence-to-sequence learning, its decoding, and two cheap remedies for exposure bias
(chapter "Exposure bias in seq2seq").

A seq2seq model factorises the probability of an output sequence into locally normalised steps::

    p(y | x) = p(y_1 | x) p(y_2 | x, y_1) ... p(y_n | x, y_1, ..., y_{n-1})

and *teacher forcing* trains every factor on the gold prefix ``y_<t``, all positions in one parallel
pass. At decoding time the prefix is the model's own output, a distribution it never saw in training:
that mismatch is *exposure bias*. Su Jianlin's article (https://kexue.fm/archives/7259, 2020-03-09)
reads it as a consequence of local normalisation (the same one as MEMM's) and proposes two remedies
that keep training parallel: random replacement of decoder input tokens, and adversarial training
(a gradient-based perturbation) of the decoder input embeddings.

This module has:

* :class:`Seq2Seq`: a GRU encoder-decoder with dot-product ("general") attention, trained by teacher
  forcing through ``model.fit``, with both remedies as constructor options;
* :func:`greedy_search` and :func:`beam_search`: batched decoding of any step function (the model's,
  or a hand-built table such as the article's toy example, :func:`prefix_table_model`), with end-token
  stopping and a length penalty;
* :func:`random_replacement`, the first remedy, as a standalone function;
* the experiment's data (:func:`grapheme_phoneme_pairs`: English spelling -> pronunciation on the
  CMU Pronouncing Dictionary) and measurements (:func:`phoneme_error_rate`, :func:`position_errors`,
  :func:`conditional_error_rates`, :func:`two_state_error_rates`).
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Callable

import keras
import numpy as np
from keras import ops

from lib import checks
from lib.adversarial import fgm_perturbation

PAD_ID = 0
"""Padding id (``lib.data.Vocabulary`` reserves 0 for padding); never a real output token."""

REPLACEMENT_POOLS = ("target", "vocabulary")
"""Where :func:`random_replacement` draws its tokens from: the same target sequence (the article's
prose) or uniformly from the target vocabulary."""


# ------------------------------------------------------------------------------------------------
# Argument checks (Keras-style messages: the argument, what was expected, what was received).
# ------------------------------------------------------------------------------------------------


def _check_int(name, value, minimum):
    return checks.check_int(name, value, minimum=minimum)


def _check_rate(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1]. Received: {name}={value!r}")
    return float(value)


def _check_non_negative(name, value):
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value)
            or value < 0):
        raise ValueError(f"`{name}` must be a finite number >= 0. Received: {name}={value!r}")
    return float(value)


def _check_special_ids(start_id, end_id, vocabulary_size):
    for name, value in (("start_id", start_id), ("end_id", end_id)):
        if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 < value < vocabulary_size):
            raise ValueError(f"`{name}` must be an integer in [1, {vocabulary_size - 1}] (0 is padding). "
                             f"Received: {name}={value!r}")
    if start_id == end_id:
        raise ValueError(f"`start_id` and `end_id` must differ. Received: start_id={start_id}, end_id={end_id}")
    return int(start_id), int(end_id)


def _check_id_matrix(name, value, vocabulary_size):
    array = np.asarray(value)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`{name}` must be an integer array of shape (batch, length). "
                         f"Received: {name} with shape {array.shape} and dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= vocabulary_size):
        raise ValueError(f"`{name}` must hold ids in [0, {vocabulary_size - 1}]. "
                         f"Received: {name} with ids from {array.min()} to {array.max()}")
    return array.astype("int32")


# ------------------------------------------------------------------------------------------------
# Teacher forcing inputs and the first remedy: random replacement of decoder inputs.
# ------------------------------------------------------------------------------------------------


def shift_right(targets, start_id):
    """Decoder inputs for teacher forcing: the targets shifted one step right behind ``start_id``.

    ``targets`` hold ``y_1 ... y_n, end, pad ...``; the decoder reads ``start, y_1 ... y_n`` and must
    predict ``y_1 ... y_n, end`` at the same positions (the end token itself is never an input).

    Args:
        targets: int tensor ``(batch, length)``, right-padded with 0.
        start_id: the start token's id.

    Returns:
        An int32 tensor of the same shape.

    Example:

    >>> ops.convert_to_numpy(shift_right([[5, 6, 3, 0]], start_id=2)).tolist()
    [[2, 5, 6, 0]]
    """
    start_id = _check_int("start_id", start_id, 0)
    targets = checks.check_tensor("targets", targets, dtype="int32")
    if len(targets.shape) != 2:
        raise ValueError(f"`targets` must have shape (batch, length). Received: targets.shape={tuple(targets.shape)}")
    start = ops.full((ops.shape(targets)[0], 1), start_id, dtype="int32")
    shifted = ops.concatenate([start, targets[:, :-1]], axis=1)
    # an input is read only where there is a target to predict: the end token is never an input
    return ops.where(targets != PAD_ID, shifted, ops.zeros_like(shifted))


def random_replacement(decoder_inputs, rate, *, sample_probability=1.0, pool="target", vocabulary_size=None,
                       protected_ids=(), seed=None):
    """Replace a random fraction of the decoder's input tokens (the article's first remedy).

    The article's prose: leave a sample unchanged with probability 1/2; otherwise replace 30% of its
    decoder input words by words drawn from the same target sequence, so the decoder learns to
    predict the gold next token from a prefix that holds mistakes of the kind it makes itself (right
    words, wrong places). The position 0 token (the start token) and padding are never replaced.

    Each selected position is replaced independently with probability ``rate`` (so about
    ``rate`` of the tokens of a noised sample change, or stay equal by chance when the drawn token is
    the same). The article's code (``random_replacement.py``) differs slightly from its prose: every
    sample is noised (``sample_probability=1``), and tokens come from the whole input sequence.

    Args:
        decoder_inputs: int tensor ``(batch, length)``: the start token, then the gold prefix, 0-padded.
        rate: probability that a token of a noised sample is replaced.
        sample_probability: probability that a sample is noised at all (the article's prose: 0.5).
        pool: ``"target"`` draws each replacement uniformly from the sample's own input tokens
            (positions 1 onward: its target words, with their frequencies); ``"vocabulary"`` draws
            uniformly from ids ``[1, vocabulary_size)`` except ``protected_ids``.
        vocabulary_size: the target vocabulary's size; required for ``pool="vocabulary"``.
        protected_ids: ids that are never replaced nor drawn (for example the start and end tokens).
        seed: a ``keras.random.SeedGenerator`` (required inside a traced function) or an int or ``None``.

    Returns:
        An int32 tensor of the same shape.

    Raises:
        ValueError: for a rate outside ``[0, 1]``, an unknown ``pool``, or a missing ``vocabulary_size``.

    Example:

    >>> x = [[2, 7, 8, 9, 0]]
    >>> ops.convert_to_numpy(random_replacement(x, rate=0.0)).tolist() == x
    True
    >>> y = ops.convert_to_numpy(random_replacement(x, rate=1.0, seed=0))
    >>> int(y[0, 0]), set(y[0, 1:4].tolist()) <= {7, 8, 9}, int(y[0, 4])
    (2, True, 0)

    Reference:
        Su Jianlin, "Seq2Seq中Exposure Bias现象的浅析与对策", https://kexue.fm/archives/7259 (2020).
    """
    rate = _check_rate("rate", rate)
    sample_probability = _check_rate("sample_probability", sample_probability)
    if pool not in REPLACEMENT_POOLS:
        raise ValueError(f"`pool` must be one of {REPLACEMENT_POOLS}. Received: pool={pool!r}")
    if pool == "vocabulary":
        if vocabulary_size is None:
            raise ValueError("`vocabulary_size` is required when pool='vocabulary'. Received: vocabulary_size=None")
        _check_int("vocabulary_size", vocabulary_size, 2)
    decoder_inputs = ops.convert_to_tensor(decoder_inputs, dtype="int32")
    if rate == 0.0 or sample_probability == 0.0:
        return decoder_inputs
    if not isinstance(seed, keras.random.SeedGenerator):  # one generator, so the draws below differ
        seed = keras.random.SeedGenerator(seed)
    batch, length = ops.shape(decoder_inputs)[0], ops.shape(decoder_inputs)[1]
    replaceable = ops.logical_and(decoder_inputs != PAD_ID, (ops.arange(length) > 0)[None, :])
    for token in protected_ids:
        replaceable = ops.logical_and(replaceable, decoder_inputs != int(token))
    noised_sample = keras.random.uniform((batch, 1), seed=seed) < sample_probability
    chosen = ops.logical_and(replaceable,
                             ops.logical_and(noised_sample, keras.random.uniform((batch, length), seed=seed) < rate))
    if pool == "target":
        # a uniformly random position among the sample's own replaceable tokens
        counts = ops.sum(ops.cast(replaceable, "int32"), axis=1, keepdims=True)  # (batch, 1)
        rank = ops.cumsum(ops.cast(replaceable, "int32"), axis=1) - 1  # rank of each replaceable position
        draw = ops.floor(keras.random.uniform((batch, length), seed=seed) * ops.cast(ops.maximum(counts, 1), "float32"))
        draw = ops.minimum(ops.cast(draw, "int32"), ops.maximum(counts, 1) - 1)  # (batch, length), in [0, count)
        # the position whose rank equals the draw: one-hot over positions, then gather the token
        match = ops.logical_and(replaceable[:, None, :], rank[:, None, :] == draw[:, :, None])  # (b, len, len)
        drawn = ops.sum(ops.where(match, decoder_inputs[:, None, :], ops.zeros_like(decoder_inputs[:, None, :])),
                        axis=2)
    else:
        allowed = np.array([i for i in range(1, int(vocabulary_size)) if i not in {int(t) for t in protected_ids}],
                           dtype="int32")
        if allowed.size == 0:
            raise ValueError("`protected_ids` leave no token to draw from. "
                             f"Received: protected_ids={tuple(protected_ids)}, vocabulary_size={vocabulary_size}")
        index = ops.floor(keras.random.uniform((batch, length), seed=seed) * allowed.size)
        index = ops.minimum(ops.cast(index, "int32"), allowed.size - 1)
        drawn = ops.take(ops.convert_to_tensor(allowed), index, axis=0)
    return ops.where(chosen, drawn, decoder_inputs)


# ------------------------------------------------------------------------------------------------
# Decoding: greedy and beam search over any step function.
# ------------------------------------------------------------------------------------------------

StepFunction = Callable[[object, object], tuple]
"""``step_fn(tokens, state) -> (logits, new_state)``: ``tokens`` int32 ``(n,)`` are the previous
outputs (the start token at the first step), ``state`` any nested structure of tensors whose first
axis is ``n``; ``logits`` are float ``(n, vocabulary_size)`` scores of the next token."""


def output_log_probs(logits, start_id, pad_id=PAD_ID):
    """Log-probabilities of the next token, with padding and the start token ruled out.

    Neither id is ever a real output, so both decoders and :meth:`Seq2Seq.teacher_forced` give them
    probability 0 and renormalise over the rest: the scores of a search and of teacher forcing agree.

    Args:
        logits: float tensor ``(..., vocabulary_size)``.
        start_id, pad_id: the ids to rule out.

    Returns:
        float32 log-probabilities of the same shape (``-inf`` at the two ids).
    """
    logits = ops.cast(checks.check_tensor("logits", logits), "float32")
    if not logits.shape:
        raise ValueError(f"`logits` must have a vocabulary axis (..., vocabulary_size). Received: logits.shape=()")
    size = logits.shape[-1]
    for name, value in (("start_id", start_id), ("pad_id", pad_id)):
        checks.check_int(name, value, 0, None if size is None else size - 1)
    vocabulary = ops.arange(ops.shape(logits)[-1])
    banned = ops.logical_or(vocabulary == pad_id, vocabulary == start_id)
    logits = ops.where(banned, -np.inf, logits)
    return ops.log_softmax(logits, axis=-1)


def _gather_rows(structure, rows):
    return keras.tree.map_structure(lambda t: ops.take(t, rows, axis=0), structure)


def _tile_rows(structure, times):
    return keras.tree.map_structure(lambda t: ops.repeat(t, times, axis=0), structure)


def _lengths(sequences, end_id):
    """Length of each sequence up to and including its first end token (the full width if none)."""
    width = ops.shape(sequences)[-1]
    is_end = sequences == end_id
    first_end = ops.argmax(ops.cast(is_end, "int32"), axis=-1)
    return ops.where(ops.any(is_end, axis=-1), first_end + 1, width)


def _check_search_args(start_id, end_id, max_length, pad_id):
    for name, value in (("start_id", start_id), ("end_id", end_id)):
        _check_int(name, value, 0)
    _check_int("max_length", max_length, 1)
    if len({int(start_id), int(end_id), int(pad_id)}) != 3:
        raise ValueError("`start_id`, `end_id` and `pad_id` must be three different ids. "
                         f"Received: start_id={start_id}, end_id={end_id}, pad_id={pad_id}")


def greedy_search(step_fn: StepFunction, initial_state, *, start_id, end_id, max_length, pad_id=PAD_ID):
    """Greedy (best-first, beam size 1) decoding of a batch, stopping at the end token.

    At every step each unfinished sequence appends its most probable next token; a sequence is
    finished once it emits ``end_id`` and is padded after it. The loop stops when every sequence is
    finished or after ``max_length`` tokens (a sequence that never ends is cut there).

    Args:
        step_fn: see :data:`StepFunction`.
        initial_state: nested tensors with the batch as first axis.
        start_id, end_id, pad_id: special ids (pad and start are never produced).
        max_length: most tokens to produce, the end token included.

    Returns:
        ``(sequences, log_probs)``: int32 ``(batch, max_length)`` holding each output with its end
        token and padding after it, and float32 ``(batch,)`` log-probabilities of those outputs.

    Raises:
        ValueError: for a non-positive ``max_length`` or special ids that coincide.

    Example (the article's toy model: greedy picks ``a`` (0.6), then ``b`` (0.55)):

    >>> step, state = prefix_table_model(
    ...     {(): {4: 0.6, 6: 0.4}, (4,): {5: 0.55, 7: 0.45}, (6,): {5: 0.1, 7: 0.9}}, vocabulary_size=8, end_id=3)
    >>> tokens, log_probs = greedy_search(step, state(1), start_id=2, end_id=3, max_length=4)
    >>> ops.convert_to_numpy(tokens).tolist(), round(float(np.exp(log_probs[0])), 2)
    ([[4, 5, 3, 0]], 0.33)
    """
    _check_search_args(start_id, end_id, max_length, pad_id)
    batch = ops.shape(keras.tree.flatten(initial_state)[0])[0]
    positions = ops.arange(max_length)

    def cond(t, tokens, state, sequences, log_probs, finished):
        return ops.logical_and(t < max_length, ops.logical_not(ops.all(finished)))

    def body(t, tokens, state, sequences, log_probs, finished):
        logits, state = step_fn(tokens, state)
        step_log_probs = output_log_probs(logits, start_id, pad_id)
        best = ops.cast(ops.argmax(step_log_probs, axis=-1), "int32")
        best_log_prob = ops.max(step_log_probs, axis=-1)
        best = ops.where(finished, pad_id, best)
        log_probs = log_probs + ops.where(finished, 0.0, best_log_prob)
        sequences = ops.where(positions[None, :] == t, best[:, None], sequences)
        finished = ops.logical_or(finished, best == end_id)
        return t + 1, best, state, sequences, log_probs, finished

    loop_vars = (ops.convert_to_tensor(0, dtype="int32"), ops.full((batch,), start_id, dtype="int32"), initial_state,
                 ops.full((batch, max_length), pad_id, dtype="int32"), ops.zeros((batch,), dtype="float32"),
                 ops.zeros((batch,), dtype="bool"))
    _, _, _, sequences, log_probs, _ = ops.while_loop(cond, body, loop_vars)
    return sequences, log_probs


def length_penalty_factor(lengths, alpha):
    """The GNMT length penalty ``((5 + length) / 6) ** alpha`` (Wu et al. 2016): beam search ranks the
    finished hypotheses by ``log p / factor``; ``alpha = 0`` ranks by ``log p`` itself."""
    alpha = _check_non_negative("alpha", alpha)
    return ops.power((5.0 + ops.cast(lengths, "float32")) / 6.0, alpha)


def beam_search(step_fn: StepFunction, initial_state, *, start_id, end_id, max_length, beam_size,
                length_penalty=0.0, pad_id=PAD_ID):
    """Batched beam search: keep the ``beam_size`` most probable prefixes of every input.

    Each step extends every live hypothesis by every token, scores the extensions by their total
    log-probability, and keeps the best ``beam_size`` per input. A hypothesis that emits ``end_id``
    is finished: it keeps its score and stays in the beam (extended only by padding, at no cost)
    until the search stops, when all hypotheses are finished or after ``max_length`` tokens. The
    hypotheses are then ranked by ``log p / ((5 + length) / 6) ** length_penalty``.

    Comparing **joint** probabilities is what makes a larger beam able to prefer a sequence whose
    first step greedy decoding would never take: the article's toy example (below) is such a case.

    Args:
        step_fn: see :data:`StepFunction`.
        initial_state: nested tensors with the batch as first axis; each row is copied to its beams.
        start_id, end_id, pad_id: special ids (pad and start are never produced).
        max_length: most tokens per hypothesis, the end token included.
        beam_size: hypotheses kept per input; 1 gives the same output as :func:`greedy_search`.
        length_penalty: ``alpha >= 0`` of the final ranking (0: raw log-probabilities).

    Returns:
        ``(sequences, scores)``: int32 ``(batch, beam_size, max_length)`` hypotheses, best first,
        and their float32 ``(batch, beam_size)`` ranking scores (log-probabilities when
        ``length_penalty == 0``; ``-inf`` for slots the search could not fill).

    Raises:
        ValueError: for a non-positive ``beam_size`` or ``max_length``, a negative
            ``length_penalty``, or special ids that coincide.

    Example (the article's toy model: beam 2 compares p(a,b) = 0.33 with p(c,d) = 0.36):

    >>> step, state = prefix_table_model(
    ...     {(): {4: 0.6, 6: 0.4}, (4,): {5: 0.55, 7: 0.45}, (6,): {5: 0.1, 7: 0.9}}, vocabulary_size=8, end_id=3)
    >>> tokens, scores = beam_search(step, state(1), start_id=2, end_id=3, max_length=4, beam_size=2)
    >>> ops.convert_to_numpy(tokens[0, 0]).tolist(), [round(float(p), 2) for p in np.exp(scores[0])]
    ([6, 7, 3, 0], [0.36, 0.33])

    Reference:
        Su Jianlin, "Seq2Seq中Exposure Bias现象的浅析与对策", https://kexue.fm/archives/7259 (2020).
    """
    _check_search_args(start_id, end_id, max_length, pad_id)
    beam_size = _check_int("beam_size", beam_size, 1)
    length_penalty = _check_non_negative("length_penalty", length_penalty)
    batch = ops.shape(keras.tree.flatten(initial_state)[0])[0]
    state = _tile_rows(initial_state, beam_size)  # row b * beam_size + k is beam k of input b
    positions = ops.arange(max_length)
    # only beam 0 is live at the start, so the first step picks beam_size *different* tokens
    scores = ops.tile(ops.convert_to_tensor([[0.0] + [-np.inf] * (beam_size - 1)], dtype="float32"), (batch, 1))

    def cond(t, tokens, state, sequences, scores, finished):
        return ops.logical_and(t < max_length, ops.logical_not(ops.all(finished)))

    def body(t, tokens, state, sequences, scores, finished):
        logits, state = step_fn(tokens, state)
        step_log_probs = output_log_probs(logits, start_id, pad_id)  # (batch * beam, vocab)
        vocabulary_size = ops.shape(step_log_probs)[-1]
        step_log_probs = ops.reshape(step_log_probs, (batch, beam_size, vocabulary_size))
        # a finished hypothesis continues with padding only, at no cost
        pad_only = ops.where(ops.arange(vocabulary_size) == pad_id, 0.0, -np.inf)
        step_log_probs = ops.where(finished[:, :, None], pad_only[None, None, :], step_log_probs)
        candidates = ops.reshape(scores[:, :, None] + step_log_probs, (batch, beam_size * vocabulary_size))
        scores, flat_index = ops.top_k(candidates, k=beam_size)
        flat_index = ops.cast(flat_index, "int32")
        parent, token = flat_index // vocabulary_size, flat_index % vocabulary_size  # (batch, beam)
        rows = ops.reshape(ops.arange(batch, dtype="int32")[:, None] * beam_size + parent, (-1,))
        state = _gather_rows(state, rows)
        sequences = ops.take_along_axis(sequences, parent[:, :, None], axis=1)
        finished = ops.take_along_axis(finished, parent, axis=1)
        sequences = ops.where(positions[None, None, :] == t, token[:, :, None], sequences)
        finished = ops.logical_or(finished, token == end_id)
        return t + 1, ops.reshape(token, (-1,)), state, sequences, scores, finished

    loop_vars = (ops.convert_to_tensor(0, dtype="int32"), ops.full((batch * beam_size,), start_id, dtype="int32"),
                 state, ops.full((batch, beam_size, max_length), pad_id, dtype="int32"), scores,
                 ops.zeros((batch, beam_size), dtype="bool"))
    _, _, _, sequences, scores, _ = ops.while_loop(cond, body, loop_vars)
    if length_penalty:
        scores = scores / length_penalty_factor(_lengths(sequences, end_id), length_penalty)
    order = ops.flip(ops.argsort(scores, axis=-1), axis=-1)  # best first
    return (ops.take_along_axis(sequences, order[:, :, None], axis=1), ops.take_along_axis(scores, order, axis=1))


def prefix_table_model(distributions, vocabulary_size, end_id, start_id=None):
    """A decoder defined by a table of next-token distributions, one per prefix.

    For toy examples (the article's two-step model) and for tests that check a search against brute
    force. A prefix that is not in the table (in particular every prefix after the end token) ends
    the sequence: its next token is ``end_id`` with probability 1.

    Args:
        distributions: mapping from a prefix (tuple of token ids; ``()`` for the first step) to a
            mapping ``{token: probability}`` (probabilities of one prefix must sum to 1).
        vocabulary_size: number of ids.
        end_id: the end token's id.
        start_id: the start token's id (reading it does not change the prefix); defaults to
            ``end_id - 1``.

    Returns:
        ``(step_fn, initial_state)``: a :data:`StepFunction` and a function ``batch -> state``.

    Raises:
        ValueError: if a distribution does not sum to 1 or names an id outside the vocabulary.
    """
    vocabulary_size = _check_int("vocabulary_size", vocabulary_size, 2)
    checks.check_int("end_id", end_id, 0, vocabulary_size - 1)
    start_id = end_id - 1 if start_id is None else start_id
    checks.check_int("start_id", start_id, 0, vocabulary_size - 1)
    prefixes = sorted({tuple(p) for p in distributions} | {()}, key=lambda p: (len(p), p))
    index = {prefix: i for i, prefix in enumerate(prefixes)}
    sink = len(prefixes)  # "ended": end with probability 1
    log_table = np.full((sink + 1, vocabulary_size), -np.inf, dtype="float32")
    log_table[:, end_id] = 0.0
    children = np.full((sink + 1, vocabulary_size), sink, dtype="int32")
    for prefix in prefixes:
        i = index[prefix]
        children[i, start_id] = i
        distribution = distributions.get(prefix)
        if distribution is None:
            continue
        total = sum(distribution.values())
        if abs(total - 1.0) > 1e-6 or min(distribution) < 0 or max(distribution) >= vocabulary_size:
            raise ValueError("Each distribution must sum to 1 over ids in [0, vocabulary_size). "
                             f"Received: distributions[{prefix}]={distribution}")
        log_table[i] = -np.inf
        for token, probability in distribution.items():
            log_table[i, token] = np.log(probability) if probability > 0 else -np.inf
            if prefix + (token,) in index:
                children[i, token] = index[prefix + (token,)]
    log_table = ops.convert_to_tensor(log_table)
    children = ops.convert_to_tensor(children)

    def step_fn(tokens, state):
        flat = state * vocabulary_size + ops.cast(tokens, "int32")
        state = ops.take(ops.reshape(children, (-1,)), flat, axis=0)
        return ops.take(log_table, state, axis=0), state

    def initial_state(batch):
        return ops.full((batch,), index[()], dtype="int32")

    return step_fn, initial_state


# ------------------------------------------------------------------------------------------------
# The model.
# ------------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="lib")
class Seq2Seq(keras.Model):
    """A GRU encoder-decoder with attention, trained by teacher forcing, with the article's remedies.

    Encoder: embedding, then a bidirectional GRU (``hidden_dim / 2`` units each way) whose final
    states, concatenated, start the decoder. Decoder: embedding of the previous token, a GRU, and
    "general" dot-product attention over the encoder outputs (Luong et al. 2015): the GRU state
    ``s_t`` queries ``a_t = softmax(h_j^T W s_t)``, and ``tanh(W_c [s_t; Σ_j a_tj h_j])`` gives the
    logits. Without input feeding, every position of a teacher-forced target is computed in one
    pass: ``p(y_t | x, y_<t)`` for all ``t`` at once, each a softmax normalised on its own, so

        -log p(y | x) = -log p(y_1 | x) - log p(y_2 | x, y_1) - ... - log p(y_n | x, y_<n)

    is the training loss (token-averaged cross-entropy; padding ignored).

    The two remedies of the article are training options; both leave the model and decoding as they
    are and only change ``train_step``:

    * ``replacement_rate > 0``: :func:`random_replacement` of decoder input tokens (pool
      ``replacement_pool``), in a fraction ``replacement_probability`` of the samples;
    * ``adversarial_epsilon > 0``: FGM on the decoder input embeddings. The gradient ``g`` of the
      loss with respect to the embedded decoder inputs gives the perturbation
      ``r = ε g / ||g||`` (:func:`lib.adversarial.fgm_perturbation`, one norm per sequence), held
      constant, and the step minimises ``L(e + r)``, as the article's FGM does (chapter
      "Adversarial training"). It costs a second forward and backward pass; ``fit`` still logs
      the clean loss ``L(e)``, so the curves of all options compare.
    * ``gradient_penalty_epsilon > 0``: the article's own form of adversarial training, the gradient
      penalty ``L + ½ε‖∇_E L‖²`` where ``E`` is the decoder's token-embedding **matrix** and ``L``
      the batch's token-averaged loss (the article's seq2seq code: ε = 1, the gradient of the whole
      batch's loss with respect to the embedding matrix, so a token's rows gather its gradients from
      every position it occupies). To first order it is training on ``L(E + ε∇_E L)``, the
      unnormalised ascent step (chapter "Adversarial training"). It needs second derivatives
      through the decoder's recurrence, so both GRUs then run without cuDNN (which has none), and a
      step costs about two to three times a plain one. ``fit`` logs ``L`` without the penalty.

    Args:
        source_vocabulary_size, target_vocabulary_size: numbers of ids (0 is padding in both).
        embedding_dim: size of the token embeddings.
        hidden_dim: size of the decoder state (even: the encoder has half of it in each direction).
        start_id, end_id: the target vocabulary's start and end tokens
            (``lib.data.Vocabulary.from_sequences(..., extra=("<s>", "</s>"))`` gives 2 and 3).
        replacement_rate: probability of replacing each decoder input token of a noised sample.
        replacement_probability: probability that a sample is noised (the article's prose: 0.5).
        replacement_pool: ``"target"`` or ``"vocabulary"`` (see :func:`random_replacement`).
        adversarial_epsilon: ``ε`` of the FGM perturbation; 0 turns it off.
        gradient_penalty_epsilon: ``ε`` of the gradient penalty; 0 turns it off. At most one of
            the two adversarial options may be on.
        attention: with ``False`` the decoder sees the source only through its initial state (the
            encoder-decoder of Sutskever et al. 2014 and Cho et al. 2014): it must then lean on its
            own previous outputs much more.
        seed: seed of the replacement noise.
        **kwargs: standard model arguments (``name``, ``dtype``).

    Call arguments:
        inputs: a dict with ``"source"`` int ``(batch, source_length)`` and ``"decoder_inputs"``
            int ``(batch, target_length)`` (:func:`shift_right` of the targets).
        training: whether in training mode.

    Returns:
        float32 logits ``(batch, target_length, target_vocabulary_size)``.

    Raises:
        ValueError: for sizes that are not positive integers, an odd ``hidden_dim``, special ids out
            of range or equal, rates outside ``[0, 1]``, a negative ``adversarial_epsilon`` or
            ``gradient_penalty_epsilon`` (or both positive), an
            unknown ``replacement_pool``, or an ``attention`` that is not a bool.

    Example:

    >>> model = Seq2Seq(10, 12, embedding_dim=4, hidden_dim=6, seed=0)
    >>> logits = model({"source": np.array([[4, 5, 0]]), "decoder_inputs": np.array([[2, 7]])})
    >>> tuple(logits.shape)
    (1, 2, 12)
    >>> model.generate(np.array([[4, 5, 0]]), max_length=5).shape
    (1, 5)

    Reference:
        Su Jianlin, "Seq2Seq中Exposure Bias现象的浅析与对策", https://kexue.fm/archives/7259 (2020);
        Luong, Pham & Manning, "Effective Approaches to Attention-based Neural Machine Translation",
        arXiv:1508.04025.
    """

    def __init__(self, source_vocabulary_size, target_vocabulary_size, embedding_dim=64, hidden_dim=128,
                 start_id=2, end_id=3, replacement_rate=0.0, replacement_probability=1.0,
                 replacement_pool="target", adversarial_epsilon=0.0, gradient_penalty_epsilon=0.0, attention=True,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        self.source_vocabulary_size = _check_int("source_vocabulary_size", source_vocabulary_size, 2)
        self.target_vocabulary_size = _check_int("target_vocabulary_size", target_vocabulary_size, 3)
        self.embedding_dim = _check_int("embedding_dim", embedding_dim, 1)
        self.hidden_dim = _check_int("hidden_dim", hidden_dim, 2)
        if self.hidden_dim % 2:
            raise ValueError("`hidden_dim` must be even (the encoder has hidden_dim / 2 units in each direction). "
                             f"Received: hidden_dim={hidden_dim!r}")
        self.start_id, self.end_id = _check_special_ids(start_id, end_id, self.target_vocabulary_size)
        self.replacement_rate = _check_rate("replacement_rate", replacement_rate)
        self.replacement_probability = _check_rate("replacement_probability", replacement_probability)
        if replacement_pool not in REPLACEMENT_POOLS:
            raise ValueError(f"`replacement_pool` must be one of {REPLACEMENT_POOLS}. "
                             f"Received: replacement_pool={replacement_pool!r}")
        self.replacement_pool = replacement_pool
        self.adversarial_epsilon = _check_non_negative("adversarial_epsilon", adversarial_epsilon)
        self.gradient_penalty_epsilon = _check_non_negative("gradient_penalty_epsilon", gradient_penalty_epsilon)
        if self.adversarial_epsilon > 0 and self.gradient_penalty_epsilon > 0:
            raise ValueError("Use one adversarial option at a time: `adversarial_epsilon` (FGM) or "
                             "`gradient_penalty_epsilon`. Received: adversarial_epsilon="
                             f"{adversarial_epsilon!r}, gradient_penalty_epsilon={gradient_penalty_epsilon!r}")
        # cuDNN's recurrences have no second derivative, which the gradient penalty needs
        use_cudnn = False if self.gradient_penalty_epsilon > 0 else "auto"
        if not isinstance(attention, bool):
            raise ValueError(f"`attention` must be True or False. Received: attention={attention!r}")
        self.attention = attention
        self.seed = seed
        self._noise_seed = keras.random.SeedGenerator(seed)

        self.source_embedding = keras.layers.Embedding(self.source_vocabulary_size, self.embedding_dim,
                                                       name="source_embedding", dtype=self.dtype_policy)
        self.encoder = keras.layers.Bidirectional(
            keras.layers.GRU(self.hidden_dim // 2, return_sequences=True, return_state=True, use_cudnn=use_cudnn,
                             dtype=self.dtype_policy),
            name="encoder", dtype=self.dtype_policy)
        self.target_embedding = keras.layers.Embedding(self.target_vocabulary_size, self.embedding_dim,
                                                       name="target_embedding", dtype=self.dtype_policy)
        self.decoder = keras.layers.GRU(self.hidden_dim, return_sequences=True, name="decoder", use_cudnn=use_cudnn,
                                        dtype=self.dtype_policy)
        if self.attention:
            self.attention_query = keras.layers.Dense(self.hidden_dim, use_bias=False, name="attention_query",
                                                      dtype=self.dtype_policy)
        self.combine = keras.layers.Dense(self.hidden_dim, activation="tanh", name="combine", dtype=self.dtype_policy)
        self.output_projection = keras.layers.Dense(self.target_vocabulary_size, name="output_projection",
                                                    dtype=self.dtype_policy)
        # Every shape is known from the arguments: build now, so a loaded model needs no sample input.
        self.source_embedding.build((None, None))
        self.encoder.build((None, None, self.embedding_dim))
        self.target_embedding.build((None, None))
        self.decoder.build((None, None, self.embedding_dim))
        if self.attention:
            self.attention_query.build((None, None, self.hidden_dim))
        self.combine.build((None, None, (2 if self.attention else 1) * self.hidden_dim))
        self.output_projection.build((None, None, self.hidden_dim))
        self.built = True
        self._search_functions = {}

    # --- the network ----------------------------------------------------------------------------

    def encode(self, source, training=False):
        """Encode a batch of sources: ``(memory, memory_mask, initial_decoder_state)``."""
        source = ops.convert_to_tensor(source, dtype="int32")
        mask = source != PAD_ID
        outputs, forward_state, backward_state = self.encoder(self.source_embedding(source), mask=mask,
                                                              training=training)
        return outputs, mask, ops.concatenate([forward_state, backward_state], axis=-1)

    def _attend(self, states, memory, memory_mask):
        """Logits from decoder states ``(b, t, h)`` and the encoder's memory ``(b, s, h)``."""
        if not self.attention:  # the decoder sees the source only through its initial state
            return ops.cast(self.output_projection(self.combine(states)), "float32")
        scores = ops.einsum("bth,bsh->bts", self.attention_query(states), memory)
        scores = ops.where(memory_mask[:, None, :], ops.cast(scores, "float32"), -1e9)
        weights = ops.cast(ops.softmax(scores, axis=-1), memory.dtype)
        context = ops.einsum("bts,bsh->bth", weights, memory)
        combined = self.combine(ops.concatenate([states, context], axis=-1))
        return ops.cast(self.output_projection(combined), "float32")

    def decode_embedded(self, embedded, memory, memory_mask, initial_state, training=False):
        """Teacher-forced logits from already embedded decoder inputs (the adversarial step perturbs them)."""
        states = self.decoder(embedded, initial_state=[initial_state], training=training)
        return self._attend(states, memory, memory_mask)

    def decode_step(self, tokens, state):
        """One decoding step, a :data:`StepFunction`: ``state = (h, memory, memory_mask)``."""
        hidden, memory, memory_mask = state
        embedded = self.target_embedding(ops.convert_to_tensor(tokens, dtype="int32"))
        hidden, _ = self.decoder.cell(embedded, [hidden], training=False)
        logits = self._attend(hidden[:, None, :], memory, memory_mask)[:, 0, :]
        return logits, (hidden, memory, memory_mask)

    def call(self, inputs, training=False):
        source, decoder_inputs = self._unpack(inputs)
        memory, memory_mask, state = self.encode(source, training=training)
        embedded = self.target_embedding(decoder_inputs)
        return self.decode_embedded(embedded, memory, memory_mask, state, training=training)

    @staticmethod
    def _unpack(inputs):
        if not isinstance(inputs, dict) or set(inputs) != {"source", "decoder_inputs"}:
            raise ValueError("`inputs` must be a dict with keys 'source' and 'decoder_inputs'. "
                             f"Received: inputs={type(inputs).__name__} with keys "
                             f"{sorted(inputs) if isinstance(inputs, dict) else None}")
        return (ops.convert_to_tensor(inputs["source"], dtype="int32"),
                ops.convert_to_tensor(inputs["decoder_inputs"], dtype="int32"))

    # --- training -------------------------------------------------------------------------------

    def compile(self, optimizer="adam", loss="auto", **kwargs):
        """Like ``keras.Model.compile``; ``loss="auto"`` is the token-averaged cross-entropy of the
        target tokens (padding ignored): ``SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)``."""
        if isinstance(loss, str) and loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID)
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        # the optimizer's state right after compile, for :meth:`reinitialize`
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        self._initial_optimizer_state = [ops.convert_to_numpy(v) for v in self.optimizer.variables]

    def get_compile_config(self):
        return super().get_compile_config()

    def compile_from_config(self, config):
        """Compile a loaded model as it was compiled when saved (``compile`` is overridden, so Keras asks)."""
        self.compile(**keras.saving.deserialize_keras_object(config))

    def train_step(self, data):
        # TensorFlow's own training step, with the two remedies added (tf is the point here).
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        source, decoder_inputs = self._unpack(x)
        if self.replacement_rate > 0 and self.replacement_probability > 0:
            decoder_inputs = random_replacement(
                decoder_inputs, self.replacement_rate, sample_probability=self.replacement_probability,
                pool=self.replacement_pool, vocabulary_size=self.target_vocabulary_size,
                protected_ids=(self.start_id, self.end_id), seed=self._noise_seed)
        x = {"source": source, "decoder_inputs": decoder_inputs}
        perturbation = None
        if self.adversarial_epsilon > 0:
            # 1. clean pass: g, the gradient of the loss with respect to the embedded decoder inputs
            with tf.GradientTape() as inner:
                embedded = self.target_embedding(decoder_inputs)
                inner.watch(embedded)
                memory, memory_mask, state = self.encode(source, training=True)
                clean_logits = self.decode_embedded(embedded, memory, memory_mask, state, training=True)
                clean_loss = self._compute_loss(x=x, y=y, y_pred=clean_logits, sample_weight=sample_weight,
                                                training=True)
                scaled = self.optimizer.scale_loss(clean_loss)  # mixed precision: keep float16 gradients alive
            # r = ε g / ||g||, one norm per sequence; a loss-scaled g has the same direction
            perturbation = tf.stop_gradient(fgm_perturbation(inner.gradient(scaled, embedded),
                                                             self.adversarial_epsilon))
        # 2. the step: on L(e) (teacher forcing), on L(e + r) (FGM, as in lib.adversarial.FGMModel),
        #    or on L + ½ε‖∇_E L‖² (the gradient penalty on the embedding matrix E)
        penalised = self.gradient_penalty_epsilon > 0
        with tf.GradientTape() as tape:
            with tf.GradientTape(watch_accessed_variables=False) if penalised else contextlib.nullcontext() as inner:
                embedded = self.target_embedding(decoder_inputs)
                if penalised:
                    inner.watch(embedded)
                if perturbation is not None:
                    embedded = embedded + ops.cast(perturbation, embedded.dtype)
                memory, memory_mask, state = self.encode(source, training=True)
                logits = self.decode_embedded(embedded, memory, memory_mask, state, training=True)
                loss = self._compute_loss(x=x, y=y, y_pred=logits, sample_weight=sample_weight, training=True)
                # a scaled loss keeps float16 gradients alive (the scale is 1 without mixed precision)
                loss_scale = self.optimizer.scale_loss(tf.constant(1.0))
                scaled_loss = loss * loss_scale
            objective = loss
            if penalised:
                # ∇_E L, a dense (V, d) matrix: the lookup's gradient, each row the sum of ∇_e L over the
                # positions holding that token (computed from the scaled loss, then the scale divided out)
                position_gradient = tf.cast(inner.gradient(scaled_loss, embedded), "float32") / loss_scale
                embedding_gradient = tf.math.unsorted_segment_sum(
                    tf.reshape(position_gradient, (-1, self.embedding_dim)), tf.reshape(decoder_inputs, (-1,)),
                    self.target_vocabulary_size)
                objective = loss + 0.5 * self.gradient_penalty_epsilon * tf.reduce_sum(
                    tf.square(embedding_gradient))
            scaled = self.optimizer.scale_loss(objective)
        gradients = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        if perturbation is not None:  # report the clean loss and metrics, comparable across remedies
            loss, logits = clean_loss, clean_logits
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss * replicas, sample_weight=tf.shape(source)[0])
        return self.compute_metrics(x, y, logits, sample_weight=sample_weight)

    def reinitialize(self, seed):
        """Start training afresh from seed ``seed`` without building a new model.

        The weights become those of ``Seq2Seq.from_config(self.get_config())`` built right after
        ``keras.utils.set_random_seed(seed)`` (the global seed is set as a side effect), the noise
        generator restarts, and the optimizer returns to the state it had after ``compile``. The
        compiled training and decoding functions are kept: traced graphs are the largest cost of a
        small model on a CPU, so several seeds of one configuration are cheap this way.

        Raises:
            ValueError: if the model has not been compiled, or ``seed`` is not an integer >= 0.
        """
        seed = _check_int("seed", seed, 0)
        if getattr(self, "_initial_optimizer_state", None) is None:
            raise ValueError("`reinitialize` needs a compiled model: call `compile()` first.")
        keras.utils.set_random_seed(seed)
        fresh = self.__class__.from_config(self.get_config())
        for mine, theirs in zip(self.variables, fresh.variables):
            mine.assign(theirs)
        for variable, value in zip(self.optimizer.variables, self._initial_optimizer_state):
            variable.assign(value)
        self.reset_metrics()

    # --- inference ------------------------------------------------------------------------------

    def _search_function(self, beam_size, max_length, length_penalty):
        key = (beam_size, max_length, length_penalty, self.run_eagerly)
        if key not in self._search_functions:
            import tensorflow as tf

            def search(source):
                memory, memory_mask, hidden = self.encode(source)
                state = (hidden, memory, memory_mask)
                if beam_size == 1:
                    return greedy_search(self.decode_step, state, start_id=self.start_id, end_id=self.end_id,
                                         max_length=max_length)
                sequences, scores = beam_search(self.decode_step, state, start_id=self.start_id,
                                                end_id=self.end_id, max_length=max_length, beam_size=beam_size,
                                                length_penalty=length_penalty)
                return sequences[:, 0], scores[:, 0]

            # compiled once per setting, like Keras's predict function (eager with compile(run_eagerly=True))
            self._search_functions[key] = search if self.run_eagerly else tf.function(
                search, input_signature=[tf.TensorSpec((None, None), tf.int32)], reduce_retracing=True)
        return self._search_functions[key]

    def generate(self, source, *, beam_size=1, max_length=64, length_penalty=0.0, batch_size=256,
                 return_scores=False):
        """Free-running decoding: each output token is fed back as the next input.

        Args:
            source: int array ``(n, source_length)``, 0-padded.
            beam_size: 1 for :func:`greedy_search`, more for :func:`beam_search`.
            max_length: most output tokens, the end token included.
            length_penalty: ``alpha`` of the beam's final ranking (see :func:`beam_search`).
            batch_size: inputs decoded together.
            return_scores: also return the best hypothesis's score per input.

        Returns:
            int32 NumPy array ``(n, max_length)``: each output up to its end token, then padding;
            with ``return_scores``, also float32 ``(n,)`` scores (log-probabilities when
            ``length_penalty == 0``).

        Raises:
            ValueError: for a malformed ``source`` or bad search settings.
        """
        source = _check_id_matrix("source", source, self.source_vocabulary_size)
        beam_size = _check_int("beam_size", beam_size, 1)
        max_length = _check_int("max_length", max_length, 1)
        length_penalty = _check_non_negative("length_penalty", length_penalty)
        batch_size = _check_int("batch_size", batch_size, 1)
        search = self._search_function(beam_size, max_length, length_penalty)
        sequences, scores = [], []
        for begin in range(0, len(source), batch_size):
            tokens, score = search(source[begin:begin + batch_size])
            sequences.append(ops.convert_to_numpy(tokens))
            scores.append(ops.convert_to_numpy(score))
        sequences = np.concatenate(sequences) if sequences else np.zeros((0, max_length), "int32")
        scores = np.concatenate(scores) if scores else np.zeros((0,), "float32")
        return (sequences, scores) if return_scores else sequences

    def teacher_forced(self, source, targets, *, batch_size=256):
        """The model on gold prefixes: its prediction and the log-probability of the gold token at each position.

        Args:
            source: int array ``(n, source_length)``.
            targets: int array ``(n, target_length)``: ``y_1 ... y_n, end``, 0-padded.
            batch_size: inputs processed together.

        Returns:
            ``(predictions, token_log_probs)``: int32 ``(n, target_length)`` argmax of
            ``p(· | x, y_<t)`` and float32 ``(n, target_length)`` ``log p(y_t | x, y_<t)`` (0 at
            padding), with pad and start ruled out as in decoding (:func:`output_log_probs`); the row
            sums are ``log p(y | x)``.
        """
        source = _check_id_matrix("source", source, self.source_vocabulary_size)
        targets = _check_id_matrix("targets", targets, self.target_vocabulary_size)
        if len(source) != len(targets):
            raise ValueError("`source` and `targets` must have the same number of rows. "
                             f"Received: {len(source)} and {len(targets)}")
        batch_size = _check_int("batch_size", batch_size, 1)
        key = ("teacher_forced", self.run_eagerly)
        if key not in self._search_functions:
            import tensorflow as tf

            def run(source, targets):
                logits = self({"source": source, "decoder_inputs": shift_right(targets, self.start_id)})
                log_probs = output_log_probs(logits, self.start_id)
                gold = ops.take_along_axis(log_probs, targets[:, :, None], axis=2)[:, :, 0]
                gold = ops.where(targets != PAD_ID, gold, 0.0)
                return ops.cast(ops.argmax(log_probs, axis=-1), "int32"), gold

            spec = tf.TensorSpec((None, None), tf.int32)
            self._search_functions[key] = run if self.run_eagerly else tf.function(
                run, input_signature=[spec, spec], reduce_retracing=True)
        run = self._search_functions[key]
        predictions, log_probs = [], []
        for begin in range(0, len(source), batch_size):
            p, lp = run(source[begin:begin + batch_size], targets[begin:begin + batch_size])
            predictions.append(ops.convert_to_numpy(p))
            log_probs.append(ops.convert_to_numpy(lp))
        return np.concatenate(predictions), np.concatenate(log_probs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "source_vocabulary_size": self.source_vocabulary_size,
            "target_vocabulary_size": self.target_vocabulary_size,
            "embedding_dim": self.embedding_dim,
            "hidden_dim": self.hidden_dim,
            "start_id": self.start_id,
            "end_id": self.end_id,
            "replacement_rate": self.replacement_rate,
            "replacement_probability": self.replacement_probability,
            "replacement_pool": self.replacement_pool,
            "adversarial_epsilon": self.adversarial_epsilon,
            "gradient_penalty_epsilon": self.gradient_penalty_epsilon,
            "attention": self.attention,
            "seed": self.seed,
        }




# ------------------------------------------------------------------------------------------------
# The experiment: English grapheme -> phoneme conversion on the CMU Pronouncing Dictionary.
# ------------------------------------------------------------------------------------------------


def grapheme_phoneme_pairs(*, min_phonemes=8, max_phonemes=12, max_letters=12, stress=False):
    """Words of the CMU Pronouncing Dictionary and their first pronunciation, for grapheme-to-phoneme.

    Words of plain letters only (no apostrophes, dots or digits), with ``min_phonemes`` to
    ``max_phonemes`` phonemes and at most ``max_letters`` letters, in dictionary order. Long outputs
    are the point: errors need room to compound.

    Args:
        min_phonemes, max_phonemes: the output lengths kept.
        max_letters: the longest input kept.
        stress: keep the ARPAbet stress digits (``AH0``, ``AH1``); by default they are dropped (``AH``),
            leaving 39 phonemes.

    Returns:
        A list of ``(word, phonemes)`` pairs: a lower-case string and a list of ARPAbet strings.

    Raises:
        ValueError: for lengths that are not positive integers with ``min_phonemes <= max_phonemes``.
    """
    from lib.data import load_cmudict

    min_phonemes = _check_int("min_phonemes", min_phonemes, 1)
    max_phonemes = _check_int("max_phonemes", max_phonemes, 1)
    max_letters = _check_int("max_letters", max_letters, 1)
    if min_phonemes > max_phonemes:
        raise ValueError("`min_phonemes` must not exceed `max_phonemes`. "
                         f"Received: min_phonemes={min_phonemes}, max_phonemes={max_phonemes}")
    pairs = []
    for word, phonemes in load_cmudict():
        if (word.isascii() and word.isalpha() and len(word) <= max_letters
                and min_phonemes <= len(phonemes) <= max_phonemes):
            pairs.append((word.lower(), phonemes if stress else [re.sub(r"\d", "", p) for p in phonemes]))
    return pairs


def strip_end(sequence, end_id):
    """The tokens of one output before its first end token (all of them if it has none), as a list."""
    if isinstance(end_id, bool) or not isinstance(end_id, (int, np.integer)):
        raise ValueError(f"`end_id` must be an integer (the end token). Received: end_id={end_id!r}")
    tokens = []
    for token in np.asarray(sequence).tolist():
        if token == end_id:
            break
        tokens.append(token)
    return tokens


def edit_alignment(prediction, target):
    """Levenshtein distance between two token lists, and which target positions the edits touch.

    Returns:
        ``(distance, touched)``: the number of substitutions, insertions and deletions, and a boolean
        list, one per target position, true where the target token is substituted or deleted or
        where extra tokens are inserted just before it (insertions after the last target token
        touch the last one). Ties between alignments are broken towards matches.
    """
    prediction, target = [int(t) for t in prediction], [int(t) for t in target]
    n, m = len(prediction), len(target)
    cost = [list(range(m + 1))]  # plain lists: far faster than NumPy element access in this loop
    for i in range(1, n + 1):
        row = [i] + [0] * m
        above = cost[i - 1]
        for j in range(1, m + 1):
            row[j] = min(above[j - 1] + (prediction[i - 1] != target[j - 1]), above[j] + 1, row[j - 1] + 1)
        cost.append(row)
    touched = [False] * m
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i][j] == cost[i - 1][j - 1] + (prediction[i - 1] != target[j - 1]):
            if prediction[i - 1] != target[j - 1]:
                touched[j - 1] = True
            i, j = i - 1, j - 1
        elif j > 0 and cost[i][j] == cost[i][j - 1] + 1:  # target token deleted
            touched[j - 1] = True
            j -= 1
        else:  # predicted token inserted before target position j
            if m:
                touched[min(j, m - 1)] = True
            i -= 1
    return cost[n][m], touched


def _pair_of_outputs(predictions, targets):
    """Check that predictions and targets hold the same (non-zero) number of outputs; as NumPy arrays."""
    for name, value in (("predictions", predictions), ("targets", targets)):
        if value is None or isinstance(value, (str, bytes)):
            raise TypeError(f"`{name}` must be an array of token ids (n, length). Received: {name}={value!r}")
    n = checks.check_same_length(predictions=predictions, targets=targets)
    if n == 0:
        raise ValueError("`predictions` and `targets` must hold at least one output each: a rate over no "
                         "outputs is undefined. Received: len(targets)=0")


def phoneme_error_rate(predictions, targets, end_id):
    """Token error rate: total edit distance over total target length (end tokens excluded).

    Args:
        predictions, targets: int arrays ``(n, length)`` of outputs, each ending at its first ``end_id``.
        end_id: the end token.

    Returns:
        A float: 0 when every output is right; it can exceed 1 for very long wrong outputs.
    """
    _pair_of_outputs(predictions, targets)
    distance = total = 0
    for prediction, target in zip(predictions, targets):
        target = strip_end(target, end_id)
        distance += edit_alignment(strip_end(prediction, end_id), target)[0]
        total += len(target)
    return distance / max(total, 1)


def sequence_error_rate(predictions, targets, end_id):
    """Fraction of outputs that differ from their target anywhere before the end token (word error rate)."""
    _pair_of_outputs(predictions, targets)
    return float(np.mean([strip_end(p, end_id) != strip_end(t, end_id) for p, t in zip(predictions, targets)]))


def position_errors(predictions, targets, end_id):
    """Where free-running outputs go wrong, per target position, and whether the prefix was still right.

    Each target is read with its end token (predicting where to stop is a step too). Target position
    ``t`` of an output is *on track* when the output's first ``t`` tokens equal the target's: the
    decoder then sees exactly the gold prefix, as in teacher forcing. The first position where the
    output differs is an error; after it, the rest of the output is aligned to the rest of the target
    by edit distance (:func:`edit_alignment`), so a single inserted or dropped token does not count as
    an error at every later position, and a target position is an error where the alignment touches it.

    Args:
        predictions, targets: int arrays ``(n, length)``; targets end with ``end_id`` then padding.
        end_id: the end token.

    Returns:
        ``(errors, valid, on_track)``: boolean arrays ``(n, length)``: an error at the position, the
        position exists in the target, and the output was right up to the position.
    """
    _pair_of_outputs(predictions, targets)
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    if targets.ndim != 2:
        raise ValueError(f"`targets` must have shape (n, length). Received: targets.shape={targets.shape}")
    n, width = targets.shape
    errors = np.zeros((n, width), dtype=bool)
    valid = np.zeros((n, width), dtype=bool)
    on_track = np.zeros((n, width), dtype=bool)
    for row in range(n):
        target = strip_end(targets[row], end_id) + [end_id]
        prediction = strip_end(predictions[row], end_id)
        if end_id in np.asarray(predictions[row]).tolist():
            prediction = prediction + [end_id]
        length = min(len(target), width)
        valid[row, :length] = True
        first = 0
        while first < len(target) and first < len(prediction) and prediction[first] == target[first]:
            first += 1
        on_track[row, :min(first + 1, length)] = True
        if first >= len(target):
            continue  # right all the way
        _, touched = edit_alignment(prediction[first:], target[first:])
        touched[0] = True  # the first difference is an error whatever the alignment
        errors[row, first:length] = touched[: length - first]
    return errors, valid, on_track


def conditional_error_rates(errors, valid, on_track):
    """Per position: error rate on track (gold prefix), error rate off track, and the share on track.

    Args:
        errors, valid, on_track: the arrays of :func:`position_errors`.

    Returns:
        A dict of float arrays, one value per position (NaN where no sequence qualifies):
        ``"on_track"`` P(error | output right so far), ``"off_track"`` P(error | an earlier error),
        ``"share_on_track"`` the fraction of sequences still right before the position, and
        ``"overall"`` the error rate at the position.
    """
    errors, valid, on_track = (checks.check_array(name, a, ndim=2).astype(bool) for name, a in
                               (("errors", errors), ("valid", valid), ("on_track", on_track)))
    for name, array in (("valid", valid), ("on_track", on_track)):
        if array.shape != errors.shape:
            raise ValueError(f"`{name}` must have the shape of `errors` {errors.shape}. "
                             f"Received: {name}.shape={array.shape}")

    def rate(numerator, denominator):
        count = denominator.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, (numerator & denominator).sum(axis=0) / np.maximum(count, 1), np.nan)

    off_track = valid & ~on_track
    return {"on_track": rate(errors, valid & on_track), "off_track": rate(errors, off_track),
            "share_on_track": rate(on_track, valid), "overall": rate(errors, valid)}


def two_state_error_rates(on_track_error, off_track_error):
    """Expected error rate at each position when errors send the decoder off track for good.

    A decoder on the gold prefix errs at position ``t`` with probability ``ε_t``; after its first
    error it errs with probability ``q_t``. It is still on track at ``t`` with probability
    ``Π_{s<t} (1 - ε_s)``, so the expected error rate at ``t`` is::

        e_t = Π_{s<t}(1 - ε_s) ε_t + [1 - Π_{s<t}(1 - ε_s)] q_t

    With ``q = ε`` errors do not compound (``e_t = ε_t``); with ``q > ε`` the error rate climbs
    towards ``q`` as the sequence grows.

    Args:
        on_track_error: ``ε_t``, array of per-position error rates on the gold prefix.
        off_track_error: ``q_t``, array of the same length (or a scalar).

    Returns:
        A float array of the ``e_t``.

    Example:

    >>> two_state_error_rates([0.1, 0.1, 0.1], 1.0).round(3).tolist()
    [0.1, 0.19, 0.271]
    """
    epsilon = checks.check_array("on_track_error", on_track_error, ndim=1, dtype=float)
    q = checks.check_array("off_track_error", off_track_error, dtype=float)
    for name, values in (("on_track_error", epsilon), ("off_track_error", q)):
        if not np.all((values >= 0) & (values <= 1) | np.isnan(values)):  # NaN: no sequence qualified there
            raise ValueError(f"`{name}` must hold probabilities in [0, 1]. Received: {name}={values.tolist()}")
    if q.ndim > 1 or (q.ndim == 1 and q.shape != epsilon.shape):
        raise ValueError(f"`off_track_error` must be a number or one per position ({epsilon.shape[0]}). "
                         f"Received: off_track_error.shape={q.shape}")
    q = np.broadcast_to(q, epsilon.shape)
    still_on = np.concatenate([[1.0], np.cumprod(1.0 - epsilon)[:-1]])
    return still_on * epsilon + (1.0 - still_on) * q
