"""Tests of lib.crf: CRF, MEMM and Bi-MEMM against brute force over all paths, one Viterbi, the parallel
forward algorithm, the Keras heads and tagger, and the span metrics of chapter 7."""

import itertools
import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from lib import crf, data
from lib.testing import check_keras_layer

# --- references written from first principles in NumPy (float64) ------------------------------------


def logsumexp(values):
    values = np.asarray(values, dtype=np.float64)
    top = values.max()
    return top + np.log(np.exp(values - top).sum())


def valid_steps(mask, row, time):
    return np.arange(time) if mask is None else np.flatnonzero(mask[row])


def reference_score(e, g, path, steps, start=None, end=None, row=0):
    """f(y) = sum_k f_k(y_k) + sum_k g(y_{k-1}, y_k) (+ start, end), over the valid steps only."""
    score = sum(e[row, t, y] for t, y in zip(steps, path))
    for k in range(1, len(path)):
        score += g[row, steps[k], path[k - 1], path[k]] if g.ndim == 4 else g[path[k - 1], path[k]]
    if len(path) and start is not None:
        score += start[path[0]]
    if len(path) and end is not None:
        score += end[path[-1]]
    return score


def brute_force(e, g, mask=None, start=None, end=None):
    """log Z, best path and best score of every row, by enumerating all K**n paths."""
    batch, time, k = e.shape
    results = []
    for row in range(batch):
        steps = valid_steps(mask, row, time)
        paths = list(itertools.product(range(k), repeat=len(steps)))
        scores = [reference_score(e, g, p, steps, start, end, row) for p in paths]
        best = int(np.argmax(scores))
        results.append((logsumexp(scores) if steps.size else 0.0, paths[best], scores[best] if steps.size else 0.0))
    return results


def reference_forward(e, g, start=None, end=None):
    """The forward algorithm as pytorch-crf writes it, loop by loop, in NumPy: log Z of each full row."""
    batch, time, k = e.shape
    out = []
    for row in range(batch):
        alpha = e[row, 0] + (0 if start is None else start)
        for t in range(1, time):
            alpha = np.array([logsumexp(alpha + g[:, j]) + e[row, t, j] for j in range(k)])
        out.append(logsumexp(alpha + (0 if end is None else end)))
    return np.array(out)


def memm_reference(e, g, tags, mask=None, start=None, end=None, direction="forward"):
    """log P(y|x) of an MEMM as the product of local softmaxes written out step by step."""
    batch, time, k = e.shape
    out = []
    for row in range(batch):
        steps = valid_steps(mask, row, time)
        y = [tags[row, t] for t in steps]
        f = [e[row, t] for t in steps]
        forward = backward = 0.0
        for i in range(len(steps)):  # left to right: P(y_i | y_{i-1})
            logits = f[i] + (g[y[i - 1]] if i else (0 if start is None else start))
            forward += logits[y[i]] - logsumexp(logits)
        for i in reversed(range(len(steps))):  # right to left: P(y_i | y_{i+1}) ∝ exp(g(y_i, y_{i+1}) + f_i(y_i))
            logits = f[i] + (g[:, y[i + 1]] if i < len(steps) - 1 else (0 if end is None else end))
            backward += logits[y[i]] - logsumexp(logits)
        out.append({"forward": forward, "backward": backward, "both": (forward + backward) / 2}[direction])
    return np.array(out)


MASKS = {
    "none": None,
    "right padding": np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool),
    "left padding (masked first token)": np.array([[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]], bool),
    "holes and an empty row": np.array([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 1]], bool),
}


def random_case(seed, batch=3, time=4, k=3, boundary=True, scale=1.5):
    rng = np.random.default_rng(seed)
    e = rng.normal(scale=scale, size=(batch, time, k)).astype("float32")
    g = rng.normal(scale=scale, size=(k, k)).astype("float32")
    start = rng.normal(size=k).astype("float32") if boundary else None
    end = rng.normal(size=k).astype("float32") if boundary else None
    tags = rng.integers(0, k, size=(batch, time)).astype("int32")
    return e, g, start, end, tags


@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("boundary", [False, True])
@pytest.mark.parametrize("parallel", [False, True])
def test_log_partition_equals_enumeration(mask_name, boundary, parallel):
    e, g, start, end, _ = random_case(1, boundary=boundary)
    mask = MASKS[mask_name]
    ours = np.asarray(crf.log_partition(e, g, mask, start, end, parallel=parallel))
    expected = [z for z, _, _ in brute_force(e, g, mask, start, end)]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_name", MASKS)
def test_viterbi_equals_brute_force_argmax(mask_name):
    e, g, start, end, _ = random_case(2)
    mask = MASKS[mask_name]
    tags, score = crf.viterbi_decode(e, g, mask, start, end, return_score=True)
    for row, (_, path, best) in enumerate(brute_force(e, g, mask, start, end)):
        steps = valid_steps(mask, row, e.shape[1])
        assert np.asarray(tags)[row, steps].tolist() == list(path)
        assert (np.asarray(tags)[row, np.setdiff1d(np.arange(e.shape[1]), steps)] == -1).all()
        assert np.asarray(score)[row] == pytest.approx(best, abs=1e-4)


@pytest.mark.parametrize("mask_name", MASKS)
def test_crf_negative_log_likelihood_matches_references(mask_name):
    e, g, start, end, tags = random_case(3)
    mask = MASKS[mask_name]
    nll = np.asarray(crf.crf_negative_log_likelihood(e, tags, g, mask, start, end))
    for row, (logz, _, _) in enumerate(brute_force(e, g, mask, start, end)):
        steps = valid_steps(mask, row, e.shape[1])
        path = [tags[row, t] for t in steps]
        assert np.asarray(crf.path_score(e, tags, g, mask, start, end))[row] == pytest.approx(
            reference_score(e, g, path, steps, start, end, row), abs=1e-4)
        assert nll[row] == pytest.approx(logz - reference_score(e, g, path, steps, start, end, row), abs=1e-4)
    assert (nll >= 0).all()


def test_forward_algorithm_matches_a_loop_by_loop_reference_on_longer_sequences():
    e, g, start, end, tags = random_case(4, batch=4, time=23, k=5)
    ours = np.asarray(crf.log_partition(e, g, None, start, end))
    np.testing.assert_allclose(ours, reference_forward(e.astype("float64"), g, start, end), rtol=1e-5)


@pytest.mark.parametrize("mask_name", MASKS)
def test_per_step_transitions_equal_enumeration(mask_name):
    rng = np.random.default_rng(5)
    e, _, _, _, tags = random_case(5)
    g = rng.normal(size=(3, 4, 3, 3)).astype("float32")  # [b, t] scores the step into t
    mask = MASKS[mask_name]
    expected = brute_force(e, g, mask)
    np.testing.assert_allclose(np.asarray(crf.log_partition(e, g, mask)), [z for z, _, _ in expected], atol=1e-5)
    np.testing.assert_allclose(np.asarray(crf.log_partition(e, g, mask, parallel=True)), [z for z, _, _ in expected],
                               atol=1e-5)
    decoded = np.asarray(crf.viterbi_decode(e, g, mask))
    for row, (_, path, _) in enumerate(expected):
        assert decoded[row, valid_steps(mask, row, 4)].tolist() == list(path)


@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("direction", crf.DIRECTIONS)
def test_memm_likelihood_equals_the_product_of_local_softmaxes(mask_name, direction):
    e, g, start, end, tags = random_case(6)
    mask = MASKS[mask_name]
    ours = np.asarray(crf.memm_log_likelihood(e, tags, g, mask, start, end, direction=direction))
    np.testing.assert_allclose(ours, memm_reference(e, g, tags, mask, start, end, direction), atol=1e-5)
    nll = np.asarray(crf.memm_negative_log_likelihood(e, tags, g, mask, start, end, direction=direction))
    np.testing.assert_allclose(nll, -ours, atol=1e-6)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_memm_is_normalized_over_all_paths(direction):
    e, g, start, end, _ = random_case(7, batch=1, time=4, k=3)
    paths = np.array(list(itertools.product(range(3), repeat=4)), dtype="int32")
    many = np.repeat(e, len(paths), axis=0)
    probabilities = np.exp(np.asarray(crf.memm_log_likelihood(many, paths, g, None, start, end, direction=direction)))
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    # ... and, written as chain potentials, the CRF's forward algorithm finds Z = 1 with no data at all
    unary, pairwise = crf.memm_potentials(e, g, None, start, end, direction=direction)
    assert np.asarray(crf.log_partition(unary, pairwise))[0] == pytest.approx(0.0, abs=1e-5)


def test_bi_memm_is_an_unnormalized_geometric_mean():
    # exp of the Bi-MEMM score is sqrt(P_fw P_bw): it sums to the Bhattacharyya coefficient, <= 1
    e, g, start, end, _ = random_case(8, batch=1, time=4, k=3)
    unary, pairwise = crf.memm_potentials(e, g, None, start, end, direction="both")
    paths = np.array(list(itertools.product(range(3), repeat=4)), dtype="int32")
    many = np.repeat(e, len(paths), axis=0)
    forward = np.asarray(crf.memm_log_likelihood(many, paths, g, None, start, end, "forward"))
    backward = np.asarray(crf.memm_log_likelihood(many, paths, g, None, start, end, "backward"))
    coefficient = np.sqrt(np.exp(forward) * np.exp(backward)).sum()
    assert np.asarray(crf.log_partition(unary, pairwise))[0] == pytest.approx(np.log(coefficient), abs=1e-5)
    assert coefficient < 1.0


@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("direction", crf.DIRECTIONS)
def test_memm_exact_decoding_is_the_most_likely_path(mask_name, direction):
    e, g, start, end, _ = random_case(9)
    mask = MASKS[mask_name]
    decoded = np.asarray(crf.memm_decode(e, g, mask, start, end, direction=direction))
    for row in range(3):
        steps = valid_steps(mask, row, 4)
        if not steps.size:
            assert (decoded[row] == -1).all()
            continue
        best, best_path = -np.inf, None
        for path in itertools.product(range(3), repeat=len(steps)):
            tags = np.zeros((3, 4), "int32")
            tags[row, steps] = path
            value = memm_reference(e, g, tags, mask, start, end, direction)[row]
            if value > best:
                best, best_path = value, path
        assert decoded[row, steps].tolist() == list(best_path)


def test_memm_score_decoding_is_the_crf_viterbi():
    e, g, start, end, _ = random_case(10)
    mask = MASKS["left padding (masked first token)"]
    np.testing.assert_array_equal(np.asarray(crf.memm_decode(e, g, mask, start, end, decoding="score")),
                                  np.asarray(crf.viterbi_decode(e, g, mask, start, end)))


DYNAMIC = [tf.TensorSpec([None, None, 3], "float32"), tf.TensorSpec([None, None], "bool")]


@pytest.mark.parametrize("mask_name", [name for name in MASKS if name != "none"])
@pytest.mark.parametrize("decoder", ["crf", "crf per-step", "memm forward", "memm both", "memm score"])
def test_decoding_traces_with_an_unknown_time_axis(mask_name, decoder):
    # (batch, time) unknown while tracing, as in predict on a padded_batch dataset: same tags as eagerly
    e, g, start, end, _ = random_case(15)
    g4 = ops.convert_to_tensor(np.random.default_rng(15).normal(size=(3, 4, 3, 3)).astype("float32"))
    decode = {"crf": lambda e_, m_: crf.viterbi_decode(e_, g, m_, start, end, return_score=True),
              "crf per-step": lambda e_, m_: crf.viterbi_decode(e_, g4[:tf.shape(e_)[0], :tf.shape(e_)[1]], m_),
              "memm forward": lambda e_, m_: crf.memm_decode(e_, g, m_, start, end),
              "memm both": lambda e_, m_: crf.memm_decode(e_, g, m_, start, end, direction="both"),
              "memm score": lambda e_, m_: crf.memm_decode(e_, g, m_, start, end, decoding="score")}[decoder]
    mask = MASKS[mask_name]
    eager = tf.nest.flatten(decode(ops.convert_to_tensor(e), ops.convert_to_tensor(mask)))
    traced = tf.nest.flatten(tf.function(decode, input_signature=DYNAMIC)(e, mask))
    for a, b in zip(eager, traced):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    # a shorter batch through the same graph
    short = tf.nest.flatten(tf.function(decode, input_signature=DYNAMIC)(e[:2, :3], mask[:2, :3]))
    np.testing.assert_array_equal(np.asarray(short[0]), np.asarray(tf.nest.flatten(decode(e[:2, :3], mask[:2, :3]))[0]))


def test_memm_decoding_traces_with_an_unknown_time_axis_and_no_mask():
    e, g, start, end, _ = random_case(16)
    decode = tf.function(lambda e_: crf.memm_decode(e_, g, None, start, end, direction="both"),
                         input_signature=DYNAMIC[:1])
    np.testing.assert_array_equal(np.asarray(decode(e)), crf.memm_decode(e, g, None, start, end, direction="both"))


@pytest.mark.parametrize("time", [1, 2, 37, 64])
@pytest.mark.parametrize("k", [2, 5])
def test_parallel_forward_equals_sequential(time, k):
    rng = np.random.default_rng(time * k)
    e = rng.normal(scale=3.0, size=(5, time, k)).astype("float32")
    g = rng.normal(scale=3.0, size=(k, k)).astype("float32")
    lengths = rng.integers(0, time + 1, size=5)
    mask = np.arange(time)[None] < lengths[:, None]
    for m in (None, mask, mask[:, ::-1]):
        np.testing.assert_allclose(np.asarray(crf.log_partition(e, g, m, parallel=True)),
                                   np.asarray(crf.log_partition(e, g, m)), rtol=2e-6, atol=1e-4)


def test_parallel_forward_with_a_dynamic_length_and_its_gradient():
    rng = np.random.default_rng(11)
    e = ops.convert_to_tensor(rng.normal(size=(2, 19, 3)).astype("float32"))
    g = ops.convert_to_tensor(rng.normal(size=(3, 3)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], "float32")])
    def both(emissions):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(emissions)
            sequential = tf.reduce_sum(crf.log_partition(emissions, g))
            parallel = tf.reduce_sum(crf.log_partition(emissions, g, parallel=True))
        return sequential, parallel, tape.gradient(sequential, emissions), tape.gradient(parallel, emissions)

    sequential, parallel, grad_sequential, grad_parallel = both(e)
    assert float(parallel) == pytest.approx(float(sequential), rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad_parallel), np.asarray(grad_sequential), atol=1e-5)


def test_gradient_of_log_partition_is_the_tag_marginals():
    e, g, start, end, _ = random_case(12, batch=1, time=4, k=3, boundary=False)
    mask = np.array([[1, 1, 0, 1]], bool)
    emissions = ops.convert_to_tensor(e)
    with tf.GradientTape() as tape:
        tape.watch(emissions)
        logz = crf.log_partition(emissions, g, mask)
    marginals = np.asarray(tape.gradient(logz, emissions))[0]
    paths = list(itertools.product(range(3), repeat=3))
    weights = np.exp([reference_score(e, g, p, [0, 1, 3]) for p in paths])
    weights /= weights.sum()
    for t, step in enumerate([0, 1, 3]):
        expected = [sum(w for w, p in zip(weights, paths) if p[t] == j) for j in range(3)]
        np.testing.assert_allclose(marginals[step], expected, atol=1e-5)
    np.testing.assert_array_equal(marginals[2], 0.0)  # a masked step takes no part


def test_large_scores_give_finite_non_negative_losses():
    e, g, start, end, tags = random_case(13, batch=4, time=30, k=4, scale=300.0)
    mask = np.arange(30)[None] < np.array([[30], [7], [1], [0]])
    for nll in (crf.crf_negative_log_likelihood(e, tags, g, mask, start, end),
                crf.crf_negative_log_likelihood(e, tags, g, mask, start, end, parallel=True),
                crf.memm_negative_log_likelihood(e, tags, g, mask, start, end, direction="both")):
        values = np.asarray(nll)
        assert np.isfinite(values).all() and (values >= 0).all(), values
    best_tags, _ = crf.viterbi_decode(e, g, mask, start, end, return_score=True)
    assert np.asarray(crf.crf_negative_log_likelihood(e, np.asarray(best_tags).clip(0), g, mask, start, end)).min() >= 0


def chain_losses(e, g, tags, mask, start=None, end=None):
    """Every loss and score of the module, by name, for one case."""
    return {"path_score": crf.path_score(e, tags, g, mask, start, end),
            "log_partition": crf.log_partition(e, g, mask, start, end),
            "log_partition parallel": crf.log_partition(e, g, mask, start, end, parallel=True),
            "crf nll": crf.crf_negative_log_likelihood(e, tags, g, mask, start, end),
            "crf nll parallel": crf.crf_negative_log_likelihood(e, tags, g, mask, start, end, parallel=True),
            **{f"memm nll {d}": crf.memm_negative_log_likelihood(e, tags, g, mask, start, end, direction=d)
               for d in crf.DIRECTIONS}}


@pytest.mark.parametrize("mask_name", [name for name in MASKS if name != "none"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_emissions_at_masked_steps_change_nothing(mask_name, bad):
    # what an encoder leaves at padding is no part of the sequence: not even an inf or a NaN
    e, g, start, end, tags = random_case(17)
    mask = MASKS[mask_name]
    poisoned = e.copy()
    poisoned[~mask] = bad
    results = []
    for emissions in (ops.convert_to_tensor(e), ops.convert_to_tensor(poisoned)):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(emissions)
            values = chain_losses(emissions, g, tags, mask, start, end)
        results.append({name: (np.asarray(value), np.asarray(tape.gradient(value, emissions))) for name, value in values.items()})
        results[-1]["viterbi"] = tuple(np.asarray(x) for x in crf.viterbi_decode(emissions, g, mask, start, end,
                                                                            return_score=True))
    for name, (value, gradient) in results[1].items():
        assert np.isfinite(value).all() and np.isfinite(gradient).all(), name
        np.testing.assert_array_equal(value, results[0][name][0], err_msg=name)
        np.testing.assert_array_equal(gradient, results[0][name][1], err_msg=name)


def test_a_forbidden_transition_before_padding_gives_finite_losses():
    # g(1, 0) = g(2, 0) = -inf: tag 0 may follow only itself. Padded steps read as tag 0, so a row whose last
    # valid tag is 1 or 2 "moves" into padding by a forbidden transition, and an empty row "ends" in tag 0 with
    # end(0) = -inf: that score must not enter (-inf * 0 was NaN). Same for start(1) = -inf.
    e, g, start, end, _ = random_case(18)
    g[1:, 0] = -np.inf
    start[1] = -np.inf
    end[0] = -np.inf
    tags = np.array([[2, 2, 1, 1], [2, 2, 2, 1], [2, 2, 1, 2]], "int32")  # allowed under every mask
    for mask_name, mask in MASKS.items():
        variable = tf.Variable(g)
        emissions = ops.convert_to_tensor(e)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(emissions)
            values = chain_losses(emissions, variable, tags, mask, start, end)
        for name, value in values.items():
            assert np.isfinite(np.asarray(value)).all(), (mask_name, name, np.asarray(value))
            if "parallel" in name:  # (its K x K products hold entries whose every term is -inf: log 0, see notes)
                continue
            for gradient in tape.gradient(value, [emissions, variable]):
                gradient = np.asarray(tf.convert_to_tensor(gradient))  # (IndexedSlices from a gather)
                assert np.isfinite(gradient).all(), (mask_name, name, gradient)
        for row, (logz, _, _) in enumerate(brute_force(e, g, mask, start, end)):
            steps = valid_steps(mask, row, 4)
            path = [tags[row, t] for t in steps]
            expected = reference_score(e, g, path, steps, start, end, row)
            assert np.asarray(values["path_score"])[row] == pytest.approx(expected, abs=1e-4)
            assert np.asarray(values["crf nll"])[row] == pytest.approx(logz - expected, abs=1e-4)
            assert np.asarray(values["crf nll parallel"])[row] == pytest.approx(logz - expected, abs=1e-4)


def test_everything_compiles_with_xla_and_matches_eager():
    e, g, start, end, tags = random_case(14, batch=3, time=4)
    mask = MASKS["left padding (masked first token)"]
    variables = tf.Variable(g)

    def losses(e_, tags_, mask_):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(crf.crf_negative_log_likelihood(e_, tags_, variables, mask_, start, end))
            value += tf.reduce_sum(crf.memm_negative_log_likelihood(e_, tags_, variables, mask_, direction="both"))
        return value, tape.gradient(value, variables), crf.viterbi_decode(e_, variables, mask_, start, end)

    eager = losses(ops.convert_to_tensor(e), ops.convert_to_tensor(tags), ops.convert_to_tensor(mask))
    compiled = tf.function(losses, jit_compile=True)(ops.convert_to_tensor(e), ops.convert_to_tensor(tags), ops.convert_to_tensor(mask))
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


# --- errors -------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    e, g, _, _, tags = random_case(15)
    with pytest.raises(ValueError, match=r"`tags` must lie in \[0, num_tags\) = \[0, 3\).*Received: tags=\[3, 3, 3\] at \(row, step\)"):
        crf.crf_negative_log_likelihood(e, np.where(np.arange(4) == 2, 3, tags), g)
    with pytest.raises(ValueError, match=r"`tags` must lie in \[0, num_tags\).*Received: tags=\[-1, -1, -1, -1, -1\]"):
        crf.memm_log_likelihood(e, np.full((3, 4), -1), g)
    # ... but padding may hold anything: only valid steps are checked
    padded = np.where(MASKS["right padding"], tags, -100)
    assert np.isfinite(np.asarray(crf.crf_negative_log_likelihood(e, padded, g, MASKS["right padding"]))).all()
    with pytest.raises(ValueError, match=r"`mask` must have shape \(batch, time\) = \(3, 4\).*Received: mask.shape=\(3, 5\)"):
        crf.log_partition(e, g, np.ones((3, 5), bool))
    with pytest.raises(ValueError, match=r"`tags` must have shape \(batch, time\) = \(3, 4\).*Received: tags.shape=\(3, 3\)"):
        crf.path_score(e, tags[:, :3], g)
    with pytest.raises(ValueError, match=r"`emissions` must hold at least one time step.*Received: emissions.shape=\(3, 0, 3\)"):
        crf.log_partition(np.zeros((3, 0, 3)), g)
    with pytest.raises(ValueError, match=r"`emissions` must have shape \(batch, time, num_tags\).*Received: emissions.shape=\(4, 3\)"):
        crf.viterbi_decode(e[0], g)
    with pytest.raises(ValueError, match=r"`transitions` must have shape \(num_tags, num_tags\) = \(3, 3\).*Received: transitions.shape=\(2, 2\)"):
        crf.log_partition(e, g[:2, :2])
    with pytest.raises(ValueError, match=r"`start_transitions` must have shape \(num_tags,\) = \(3,\).*Received"):
        crf.log_partition(e, g, None, np.zeros(4))
    with pytest.raises(ValueError, match=r"`direction` must be one of \('forward', 'backward', 'both'\).*Received: direction='left'"):
        crf.memm_log_likelihood(e, tags, g, direction="left")
    with pytest.raises(ValueError, match=r"`decoding` must be one of \('exact', 'score'\).*Received: decoding='greedy'"):
        crf.memm_decode(e, g, decoding="greedy")


def test_tags_out_of_range_fail_inside_a_graph_too():
    e, g, _, _, tags = random_case(16)
    bad = tags.copy()
    bad[1, 2] = 7
    nll = tf.function(lambda e_, t_: crf.crf_negative_log_likelihood(e_, t_, g))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`tags` must lie in \[0, num_tags\)"):
        nll(ops.convert_to_tensor(e), ops.convert_to_tensor(bad))


def test_layer_arguments_are_validated():
    with pytest.raises(ValueError, match=r"`num_tags` must be a positive integer. Received: num_tags=0"):
        crf.CRF(0)
    with pytest.raises(ValueError, match=r"`direction` must be one of .*Received: direction='both ways'"):
        crf.MEMM(3, direction="both ways")
    with pytest.raises(ValueError, match=r"`parallel` must be a bool. Received: parallel='yes'"):
        crf.CRF(3, parallel="yes")
    with pytest.raises(ValueError, match=r"`CRF` expects emission scores of shape \(batch, time, num_tags\) with num_tags=3.*Received: input_shape=\(2, 5, 4\)"):
        crf.CRF(3)(np.zeros((2, 5, 4), "float32"))
    with pytest.raises(ValueError, match=r"`head` must be a lib.crf.CRF or lib.crf.MEMM layer"):
        crf.SequenceTagger(keras.layers.Dense(3), keras.layers.Dense(3))
    with pytest.raises(ValueError, match=r"`pad_id` must be an integer or None. Received: pad_id='0'"):
        crf.SequenceTagger(keras.layers.Dense(3), crf.CRF(3), pad_id="0")


# --- Keras ----------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # the mse test model leaves the transitions unused
@pytest.mark.parametrize("make", [lambda: crf.CRF(3, use_boundary_transitions=True, parallel=True),
                                  lambda: crf.MEMM(3, direction="both", decoding="score")])
def test_heads_config_save_load_and_fit(make):
    check_keras_layer(make, (5, 3))


def toy_task(n=256, time=8, seed=0):
    """Tag = token id mod 3 except that tag 2 forces the next tag to be 0: needs transitions and emissions."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 10, size=(n, time))
    tags = (ids % 3).astype("int32")
    for t in range(1, time):
        tags[:, t] = np.where(tags[:, t - 1] == 2, 0, tags[:, t])
    lengths = rng.integers(2, time + 1, size=n)
    ids[np.arange(time)[None] >= lengths[:, None]] = 0
    return ids.astype("int32"), tags


def make_tagger(head):
    # a per-token encoder: the rule "tag 2 is followed by tag 0" must be learnt by the transitions
    encoder = keras.Sequential([keras.layers.Embedding(10, 16, mask_zero=True), keras.layers.Dense(3)])
    return crf.SequenceTagger(encoder, head)


@pytest.mark.parametrize("head, save", [(lambda: crf.CRF(3, use_boundary_transitions=True), True),
                                        (lambda: crf.MEMM(3, direction="both"), False)], ids=["crf", "bi-memm"])
def test_tagger_trains_decodes_and_survives_save_load(head, save):
    keras.utils.set_random_seed(0)
    ids, tags = toy_task()
    tagger = make_tagger(head())
    tagger.compile(optimizer=keras.optimizers.Adam(0.05))
    tagger(ids[:1])  # build
    before = np.asarray(tagger.head.transitions).copy()
    losses = tagger.fit(ids, tags, batch_size=64, epochs=6, verbose=0).history["loss"]
    assert all(np.isfinite(losses)) and min(losses) >= 0 and losses[-1] < 0.5 * losses[0], losses
    assert not np.allclose(np.asarray(tagger.head.transitions), before)  # the transitions are trained
    predicted = tagger.predict(ids, batch_size=64, verbose=0)
    valid = ids != 0
    assert (predicted[~valid] == -1).all()
    assert (predicted[valid] == tags[valid]).mean() > 0.9  # (a per-token encoder: the transitions do the rest)
    if not save:  # (the heads' own save/load: test_heads_config_save_load_and_fit)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "tagger.keras")
        tagger.save(path)
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(ids, batch_size=64, verbose=0), predicted)
    np.testing.assert_array_equal(np.asarray(loaded.head.transitions), np.asarray(tagger.head.transitions))
    assert loaded.head.get_config() == tagger.head.get_config()


@pytest.mark.parametrize("head", [lambda: crf.CRF(3), lambda: crf.MEMM(3, direction="both")], ids=["crf", "bi-memm"])
def test_tagger_predicts_on_a_padded_batch_dataset(head):
    # padded_batch leaves the time axis unknown while predict traces: decoding must not need it
    ids, tags = toy_task(n=24)
    tagger = make_tagger(head())
    tagger.compile(optimizer="adam")
    ids[8:16, 5:] = 0  # batches of different lengths (8, 5, 3): the traced step relaxes time to None
    ids[16:, 3:] = 0
    tagger(ids[:1])
    tagger.head.transitions.assign(np.random.default_rng(2).normal(scale=2.0, size=(3, 3)))
    rows = [row[row != 0] for row in ids]
    dataset = tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=tf.TensorSpec([None], "int32"))
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(rows))).padded_batch(8)
    assert [batch.shape[1] for batch in dataset] == [8, 5, 3]
    predicted = tagger.predict(dataset, verbose=0).to_list()  # (Keras joins batches of unequal length as ragged)
    expected = tagger.predict(ids, batch_size=8, verbose=0)
    for row, n in enumerate((ids != 0).sum(1)):
        assert predicted[row][:n] == expected[row, :n].tolist()
        assert set(predicted[row][n:]) <= {-1}


def test_left_padding_gives_the_same_loss_and_tags_as_right_padding():
    # A Keras mask with a masked first token (pad_sequences pads on the left by default).
    keras.utils.set_random_seed(1)
    ids, tags = toy_task(n=32)
    lengths = (ids != 0).sum(1)
    left_ids, left_tags = np.zeros_like(ids), np.full_like(tags, 0)
    for row, n in enumerate(lengths):
        left_ids[row, -n:], left_tags[row, -n:] = ids[row, :n], tags[row, :n]
    tagger = make_tagger(crf.CRF(3))  # per-token features: both paddings give the valid steps the same scores
    tagger(ids[:1])
    tagger.head.transitions.assign(np.random.default_rng(1).normal(size=(3, 3)))
    tagger.compile(optimizer="adam")
    right = tagger.evaluate(ids, tags, verbose=0)
    left = tagger.evaluate(left_ids, left_tags, verbose=0)
    assert left == pytest.approx(right, rel=1e-5)
    right_pred, left_pred = tagger.predict(ids, verbose=0), tagger.predict(left_ids, verbose=0)
    for row, n in enumerate(lengths):
        assert left_pred[row, -n:].tolist() == right_pred[row, :n].tolist()
        assert (left_pred[row, :-n] == -1).all()


def test_pad_id_supplies_the_mask_when_the_encoder_drops_it():
    ids, tags = toy_task(n=16)
    conv = keras.Sequential([keras.layers.Embedding(10, 8), keras.layers.Conv1D(3, 3, padding="same")])
    with_pad = crf.SequenceTagger(conv, crf.CRF(3), pad_id=0)
    emissions = with_pad(ids)
    expected = crf.crf_negative_log_likelihood(emissions, tags, with_pad.head.transitions, ids != 0)
    with_pad.compile(optimizer="sgd")
    assert with_pad.evaluate(ids, tags, verbose=0, batch_size=16) == pytest.approx(float(np.mean(expected)), rel=1e-5)
    assert (with_pad.predict(ids, verbose=0)[ids == 0] == -1).all()


def test_tagger_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(2)
        ids, tags = toy_task(n=128)
        tagger = make_tagger(crf.CRF(3))
        tagger.compile(optimizer=keras.optimizers.Adam(0.05))  # (XLA: test_everything_compiles_with_xla...)
        losses = tagger.fit(ids, tags, batch_size=64, epochs=3, verbose=0).history["loss"]
        assert tagger.encoder.layers[-1].compute_dtype == "float16"
        assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
        assert tagger.head.transitions.dtype == "float32"
        assert tagger(ids[:2]).dtype == "float32"  # the head computes in float32
    finally:
        keras.config.set_dtype_policy(previous)


# --- data helpers and metrics ------------------------------------------------------------------


def test_segment_and_entity_spans_and_f1():
    assert crf.segment_spans("bmesbe") == {(0, 3), (3, 4), (4, 6)}
    assert crf.segment_spans("bb") == {(0, 1), (1, 2)}  # an ill-formed tagging is read leniently
    assert crf.entity_spans(["O", "B-ORG", "I-ORG", "B-PER", "I-LOC"]) == {(1, 3, "ORG"), (3, 4, "PER"),
                                                                           (4, 5, "LOC")}
    assert crf.span_f1([{(0, 1)}], [set()]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="`gold` and `predicted` must hold one span set per sentence"):
        crf.span_f1([set()], [])


def test_split_and_encode_people_daily():
    corpus = data.load_segmentation(limit=50)
    sentences = crf.split_sentences(corpus, max_length=64)
    assert all(len(c) == len(t) <= 64 for c, t in sentences)
    assert all(t[-1] in "es" for c, t in sentences)  # every cut falls on a word boundary
    vocabulary = data.Vocabulary.from_sequences([c for c, _ in sentences])
    ids, tags = crf.encode_tagging(sentences, vocabulary, data.SEGMENTATION_TAGS, 64)
    assert ids.shape == tags.shape == (len(sentences), 64)
    assert (ids[:, 0] != 0).all() and tags.max() == 3
    with pytest.raises(ValueError, match=r"`tag_names` must contain every tag"):
        crf.encode_tagging(sentences, vocabulary, ("b", "e"), 64)
    with pytest.raises(ValueError, match=r"`max_length` must be a positive integer or None"):
        crf.split_sentences(corpus, max_length=0)


def test_enumerate_paths():
    assert crf.enumerate_paths(3, 2).shape == (8, 3)
    with pytest.raises(ValueError, match="`length` must be >= 1"):
        crf.enumerate_paths(30, 4)


def test_matches_pytorch_crf_when_installed():
    torch = pytest.importorskip("torch")
    torchcrf = pytest.importorskip("torchcrf")
    e, g, start, end, tags = random_case(17, batch=4, time=6, k=5)
    mask = np.arange(6)[None] < np.array([[6], [3], [1], [5]])
    reference = torchcrf.CRF(5, batch_first=True)
    with torch.no_grad():
        reference.transitions.copy_(torch.tensor(g))
        reference.start_transitions.copy_(torch.tensor(start))
        reference.end_transitions.copy_(torch.tensor(end))
        theirs = -np.asarray(reference(torch.tensor(e), torch.tensor(tags, dtype=torch.long), torch.tensor(mask),
                            reduction="none"))
        their_paths = reference.decode(torch.tensor(e), torch.tensor(mask))
    np.testing.assert_allclose(np.asarray(crf.crf_negative_log_likelihood(e, tags, g, mask, start, end)), theirs,
                               rtol=1e-5, atol=1e-5)
    ours = np.asarray(crf.viterbi_decode(e, g, mask, start, end))
    assert [row[row >= 0].tolist() for row in ours] == their_paths


# --- features peers' users expect: marginals (forward-backward) and a reduction, as in pytorch-crf ------------


def brute_force_marginals(e, g, mask=None, start=None, end=None):
    """P(y_t = j | x) by enumerating every path of every row (float64)."""
    batch, time, num_tags = e.shape
    out = np.zeros((batch, time, num_tags))
    for row in range(batch):
        steps = valid_steps(mask, row, time)
        if not len(steps):
            continue
        paths = list(itertools.product(range(num_tags), repeat=len(steps)))
        scores = np.array([reference_score(e, g, path, steps, start, end, row) for path in paths])
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
        for path, weight in zip(paths, weights):
            for t, y in zip(steps, path):
                out[row, t, y] += weight
    return out


@pytest.mark.parametrize("case", ["plain", "masked", "boundaries", "per_step", "left_padded", "one_step"])
def test_marginals_match_brute_force_and_sum_to_one(case):
    rng = np.random.default_rng(7)
    time = 1 if case == "one_step" else 4
    e = rng.normal(size=(3, time, 3))
    g = rng.normal(size=(3, time, 3, 3)) if case == "per_step" else rng.normal(size=(3, 3))
    mask = start = end = None
    if case in ("masked", "left_padded"):
        mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)
        if case == "left_padded":
            mask = mask[:, ::-1].copy()
            mask[0, 2] = False  # a hole as well
        e[~mask] = np.nan  # whatever a masked step holds never reaches the result
    if case == "boundaries":
        start, end = rng.normal(size=3), rng.normal(size=3)
    got = np.asarray(crf.crf_marginals(e.astype("float32"), g.astype("float32"), mask, start, end))
    expected = brute_force_marginals(np.nan_to_num(e), g, mask, start, end)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    valid = np.ones(e.shape[:2], bool) if mask is None else mask
    np.testing.assert_allclose(got.sum(-1)[valid], 1.0, atol=1e-6)
    assert np.all(got[~valid] == 0.0)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the gradient is taken with a TensorFlow tape")
def test_marginals_are_the_gradient_of_log_partition():
    rng = np.random.default_rng(3)
    e = tf.Variable(rng.normal(size=(2, 5, 4)).astype("float32"))
    g = rng.normal(size=(4, 4)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], bool)
    with tf.GradientTape() as tape:
        logz = tf.reduce_sum(crf.log_partition(e, g, mask))
    np.testing.assert_allclose(np.asarray(tape.gradient(logz, e)), np.asarray(crf.crf_marginals(e, g, mask)), atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function with an unknown time axis")
def test_marginals_trace_with_unknown_length():
    spec = [tf.TensorSpec([None, None, 3]), tf.TensorSpec([None, None], "bool")]
    marginals = tf.function(lambda e, m: crf.crf_marginals(e, np.zeros((3, 3), "float32"), m), input_signature=spec)
    out = np.asarray(marginals(np.zeros((2, 4, 3), "float32"), np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)))
    np.testing.assert_allclose(out.sum(-1), [[1, 1, 0, 0], [1, 1, 1, 1]], atol=1e-6)


def test_crf_head_marginals_and_reduction_follow_the_functions():
    rng = np.random.default_rng(5)
    e = rng.normal(size=(3, 4, 3)).astype("float32")
    tags = rng.integers(0, 3, size=(3, 4))
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    head = crf.CRF(3, reduction="token_mean", transitions_initializer="random_normal")
    head(e)
    per_row = np.asarray(head.negative_log_likelihood(tags, e, mask, reduction="none"))
    np.testing.assert_allclose(float(head.negative_log_likelihood(tags, e, mask)), per_row.sum() / mask.sum(),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(head.marginals(e, mask)),
                               np.asarray(crf.crf_marginals(e, head.transitions, mask)), atol=1e-7)
    assert crf.CRF.from_config(head.get_config()).reduction == "token_mean"


@pytest.mark.parametrize("function", ["crf", "memm"])
def test_reductions_as_in_pytorch_crf(function):
    """pytorch-crf's reductions: 'none' per row, 'sum', 'mean' over rows, 'token_mean' over valid tokens."""
    rng = np.random.default_rng(11)
    e = rng.normal(size=(4, 5, 3)).astype("float32")
    tags = rng.integers(0, 3, size=(4, 5))
    g = rng.normal(size=(3, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], bool)
    nll = crf.crf_negative_log_likelihood if function == "crf" else crf.memm_negative_log_likelihood
    per_row = np.asarray(nll(e, tags, g, mask))
    assert per_row.shape == (4,)
    np.testing.assert_allclose(float(nll(e, tags, g, mask, reduction="sum")), per_row.sum(), rtol=1e-6)
    np.testing.assert_allclose(float(nll(e, tags, g, mask, reduction="mean")), per_row.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(nll(e, tags, g, mask, reduction="token_mean")), per_row.sum() / 13, rtol=1e-6)
    np.testing.assert_allclose(float(nll(e, tags, g, reduction="token_mean")),
                               np.asarray(nll(e, tags, g)).sum() / 20, rtol=1e-6)
    with pytest.raises(ValueError, match=r"`reduction` must be one of .*Received: reduction='batch'"):
        nll(e, tags, g, mask, reduction="batch")
