"""A sweep of plausible bad inputs over lib's public functions and classes, the way a user would give them.

Every case must raise a ``ValueError`` or ``TypeError`` whose message names the argument (in backquotes or as
``name=``) and echoes what was received (``Received``). Cases are grouped by module; ``TRACED`` repeats the
array cases inside a ``tf.function`` with known shapes, where a value check is a ``tf.debugging`` assertion
(``InvalidArgumentError``, same message) and a shape check raises while tracing.

``python tests/test_bad_inputs.py`` prints the tally (clear / unclear error / silent result) for the report.
"""

from __future__ import annotations

import math
import re

import keras
import numpy as np
import pytest

from lib import activations, adversarial, albert, attention, checks, crf, data, losses, minimax, optimizers, \
    seq2seq, statistics, transformer

BACKEND = keras.backend.backend()
needs_tf = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow-only: tf.function and tf.data")

rng = np.random.default_rng(0)
E = rng.normal(size=(2, 3, 4)).astype("float32")  # emissions: batch 2, time 3, 4 tags
G = np.zeros((4, 4), "float32")
TAGS = np.array([[0, 1, 2], [3, 2, 1]])


def _mha(**kwargs):
    return attention.MultiHeadAttention(2, 4, **kwargs)


def _x(batch=2, length=3, width=8):
    return rng.normal(size=(batch, length, width)).astype("float32")


def _x4(batch=2, other=2, length=3, width=8):
    return rng.normal(size=(batch, other, length, width)).astype("float32")


def _encoder(**kwargs):
    config = dict(vocabulary_size=20, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
                  max_length=8, dropout=0.0)
    config.update(kwargs)
    return transformer.TransformerEncoder(**config)


def _tiny_model():
    inputs = keras.Input((3,), dtype="int32")
    hidden = keras.layers.Embedding(10, 4, name="embedding")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(hidden))
    return keras.Model(inputs, outputs)


def _tokenizer():
    return albert.CharTokenizer.from_texts(["好评好评", "差评"], max_size=8)


def _vocab():
    return data.Vocabulary.from_sequences(["abca", "abd"])


def _metric_twice():
    metric = losses.MultilabelF1Score()
    metric.update_state(np.array([[1, 0, 1]]), np.array([[1.0, -1.0, 1.0]]))
    metric.update_state(np.array([[1, 0]]), np.array([[1.0, -1.0]]))


def _sequence_tagger(**kwargs):
    encoder = keras.Sequential([keras.layers.Embedding(10, 4), keras.layers.Dense(3)])
    return crf.SequenceTagger(encoder, crf.CRF(3), **kwargs)


def _seq2seq(**kwargs):
    config = dict(source_vocabulary_size=10, target_vocabulary_size=12, embedding_dim=4, hidden_dim=4)
    config.update(kwargs)
    return seq2seq.Seq2Seq(**config)


def _adafactor_step(gradient):
    variable = keras.Variable(np.ones((2, 2), "float32"))
    optimizer = optimizers.AdaFactor(learning_rate=0.1)
    optimizer.apply_gradients([(gradient, variable)])


# (case id, thunk, the argument the message must name)
CASES = [
    # --- lib.checks ---------------------------------------------------------------------------------------
    ("validate_ids/negative", lambda: checks.validate_ids(np.array([[1, -1]]), 5, name="token_ids"), "token_ids"),
    ("validate_ids/too_large", lambda: checks.validate_ids(np.array([[1, 5]]), 5, name="tags"), "tags"),
    ("validate_ids/vocabulary_size", lambda: checks.validate_ids(np.array([[1]]), 0), "vocabulary_size"),
    ("validate_ids/strings", lambda: checks.validate_ids(np.array([["a"]]), 3, name="ids"), "ids"),

    # --- lib.activations ----------------------------------------------------------------------------------
    ("gelu/approximate_bool", lambda: activations.gelu(np.ones(2), approximate="yes"), "approximate"),
    ("gelu/x_none", lambda: activations.gelu(None), "x"),
    ("GELU/approximate_unknown", lambda: activations.GELU("erf2"), "approximate"),
    ("normal_cdf/approximate", lambda: activations.normal_cdf(np.ones(2), approximate="fast"), "approximate"),
    ("fit_tanh_cubic/dps_small", lambda: activations.fit_tanh_cubic(dps=5), "dps"),
    ("fit_tanh_cubic/a_string", lambda: activations.fit_tanh_cubic(a="0.8"), "a"),
    ("max_abs_error/step_nan", lambda: activations.max_abs_error(np.tanh, step=float("nan")), "step"),
    ("fit_sigmoid_scale/dps_string", lambda: activations.fit_sigmoid_scale(dps="40"), "dps"),

    # --- lib.minimax --------------------------------------------------------------------------------------
    ("remez/initial_empty", lambda: minimax.remez(lambda x, c: x - c, ()), "initial"),
    ("remez/x_max_nan", lambda: minimax.remez(lambda x, c: x - c, (0.1,), x_max=float("nan")), "x_min"),
    ("remez/tolerance_one", lambda: minimax.remez(lambda x, c: x - c, (0.1,), tolerance=1.0), "tolerance"),
    ("max_abs_error_mp/step_negative", lambda: minimax.max_abs_error_mp(lambda x: x, step=-0.1), "step"),

    # --- lib.attention ------------------------------------------------------------------------------------
    ("MHA/num_heads_zero", lambda: attention.MultiHeadAttention(0, 4), "num_heads"),
    ("MHA/key_size_float", lambda: attention.MultiHeadAttention(2, 4.0), "key_size"),
    ("MHA/dropout_one", lambda: _mha(dropout=1.0), "dropout"),
    ("MHA/talking_heads_string", lambda: _mha(talking_heads_pre="no"), "talking_heads_pre"),
    ("MHA/use_bias_int", lambda: _mha(use_bias=1), "use_bias"),
    ("MHA/seed_string", lambda: _mha(seed="0"), "seed"),
    ("MHA/kernel_initializer_unknown", lambda: _mha(kernel_initializer="glorot_unknown"), "kernel_initializer"),
    ("MHA/query_rank_2", lambda: _mha()(np.ones((2, 8), "float32"), _x()), "query"),
    ("MHA/query_none", lambda: _mha()(None, _x()), "query"),
    ("MHA/key_value_length", lambda: _mha()(_x(), _x(length=3), key=_x(length=4)), "key"),
    ("MHA/mask_shape", lambda: _mha()(_x(), _x(), attention_mask=np.ones((2, 4, 3), bool)), "attention_mask"),
    ("MHA/mask_batch", lambda: _mha()(_x(), _x(), attention_mask=np.ones((3, 3, 3), bool)), "attention_mask"),
    ("MHA/mask_rank_5", lambda: _mha()(_x(), _x(), attention_mask=np.ones((2, 1, 1, 3, 3), bool)),
     "attention_mask"),
    ("MHA/mask_heads", lambda: _mha()(_x(), _x(), attention_mask=np.ones((2, 3, 3, 3), bool)), "attention_mask"),
    ("MHA/query_mask_shape", lambda: _mha()(_x(), _x(), query_mask=np.ones((2, 5), bool)), "query_mask"),
    ("MHA/value_mask_shape", lambda: _mha()(_x(), _x(), value_mask=np.ones((2, 5), bool)), "value_mask"),
    ("MHA/use_causal_mask_string", lambda: _mha()(_x(), _x(), use_causal_mask="yes"), "use_causal_mask"),
    ("MHA/return_scores_string", lambda: _mha()(_x(), _x(), return_attention_scores="no"),
     "return_attention_scores"),
    ("MHA/compute_output_shape_rank", lambda: _mha().compute_output_shape((2, 8), (2, 3, 8)), "query"),
    ("MHA/attention_axes_string", lambda: _mha(attention_axes="2"), "attention_axes"),
    ("MHA/attention_axes_repeated", lambda: _mha(attention_axes=(1, 1)), "attention_axes"),
    ("MHA/attention_axes_batch", lambda: _mha(attention_axes=0)(_x4(), _x4()), "attention_axes"),
    ("MHA/attention_axes_features", lambda: _mha(attention_axes=-1)(_x4(), _x4()), "attention_axes"),
    ("MHA/attention_axes_rank_3", lambda: _mha(attention_axes=2)(_x(), _x()), "attention_axes"),
    ("MHA/value_rank_differs", lambda: _mha(attention_axes=2)(_x4(), _x()), "value"),
    ("MHA/value_other_axis_differs", lambda: _mha(attention_axes=2)(_x4(), _x4(other=3)), "value"),
    ("MHA/high_dim_mask_shape", lambda: _mha(attention_axes=2)(_x4(), _x4(), attention_mask=np.ones((2, 4, 3), bool)),
     "attention_mask"),
    ("MHA/high_dim_mask_heads", lambda: _mha(attention_axes=2)(
        _x4(), _x4(), attention_mask=np.ones((2, 2, 3, 3, 3), bool)), "attention_mask"),
    ("MHA/high_dim_query_mask", lambda: _mha(attention_axes=2)(_x4(), _x4(), query_mask=np.ones((2, 3), bool)),
     "query_mask"),
    ("MHA/compute_output_shape_key", lambda: _mha().compute_output_shape((2, 3, 8), (2, 3, 8), (2, 4, 8)), "key"),
    ("parameter_count/num_heads", lambda: attention.parameter_count(8, 0, 4), "num_heads"),
    ("flop_count/query_length", lambda: attention.flop_count(-1, 8, 2, 4), "query_length"),
    ("random_attention_maps/num_maps", lambda: attention.random_attention_maps(0, 4), "num_maps"),
    ("random_attention_maps/temperature", lambda: attention.random_attention_maps(2, 4, temperature=0.0),
     "temperature"),
    ("kl_divergence/shapes", lambda: attention.kl_divergence(np.ones((2, 3)) / 3, np.ones((2, 4)) / 4), "predicted"),
    ("low_rank_logit_error/rank", lambda: attention.low_rank_logit_error(np.ones((1, 3, 3)) / 3, 0), "rank"),
    ("fit_attention_maps/key_sizes", lambda: attention.fit_attention_maps(np.ones((2, 3, 3)) / 3, [0]),
     "key_sizes"),
    ("fit_attention_maps/steps", lambda: attention.fit_attention_maps(np.ones((2, 3, 3)) / 3, [1], steps=0),
     "steps"),

    # --- lib.crf ------------------------------------------------------------------------------------------
    ("crf_nll/emissions_none", lambda: crf.crf_negative_log_likelihood(None, TAGS, G), "emissions"),
    ("crf_nll/tags_none", lambda: crf.crf_negative_log_likelihood(E, None, G), "tags"),
    ("crf_nll/transitions_none", lambda: crf.crf_negative_log_likelihood(E, TAGS, None), "transitions"),
    ("crf_nll/tags_negative", lambda: crf.crf_negative_log_likelihood(E, -TAGS - 1, G), "tags"),
    ("crf_nll/tags_too_large", lambda: crf.crf_negative_log_likelihood(E, TAGS + 4, G), "tags"),
    ("crf_nll/tags_shape", lambda: crf.crf_negative_log_likelihood(E, TAGS[:, :2], G), "tags"),
    ("crf_nll/transitions_shape", lambda: crf.crf_negative_log_likelihood(E, TAGS, np.zeros((3, 3))),
     "transitions"),
    ("crf_nll/mask_shape", lambda: crf.crf_negative_log_likelihood(E, TAGS, G, mask=np.ones((2, 4), bool)), "mask"),
    ("crf_nll/emissions_nan", lambda: crf.crf_negative_log_likelihood(np.full_like(E, np.nan), TAGS, G),
     "emissions"),
    ("crf_nll/parallel_string", lambda: crf.crf_negative_log_likelihood(E, TAGS, G, parallel="no"), "parallel"),
    ("crf_nll/start_shape", lambda: crf.crf_negative_log_likelihood(E, TAGS, G, start_transitions=np.zeros(3)),
     "start_transitions"),
    ("log_partition/emissions_rank_2", lambda: crf.log_partition(E[0], G), "emissions"),
    ("log_partition/transitions_nan", lambda: crf.log_partition(E, np.full((4, 4), np.nan)), "transitions"),
    ("path_score/tags_float_fraction", lambda: crf.path_score(E, TAGS + 0.5, G), "tags"),
    ("viterbi/emissions_nan", lambda: crf.viterbi_decode(np.full_like(E, np.nan), G), "emissions"),
    ("viterbi/transitions_nan", lambda: crf.viterbi_decode(E, np.full((4, 4), np.nan)), "transitions"),
    ("viterbi/pad_tag_float", lambda: crf.viterbi_decode(E, G, pad_tag=0.5), "pad_tag"),
    ("viterbi/return_score_string", lambda: crf.viterbi_decode(E, G, return_score="no"), "return_score"),
    ("viterbi/mask_float_values", lambda: crf.viterbi_decode(E, G, mask=np.full((2, 3), 0.5)), "mask"),
    ("memm_ll/direction", lambda: crf.memm_log_likelihood(E, TAGS, G, direction="left"), "direction"),
    ("memm_ll/tags_negative", lambda: crf.memm_log_likelihood(E, -TAGS - 1, G), "tags"),
    ("memm_decode/decoding", lambda: crf.memm_decode(E, G, decoding="greedy"), "decoding"),
    ("memm_potentials/direction", lambda: crf.memm_potentials(E, G, direction=None), "direction"),
    ("log_semiring_matmul/shapes", lambda: crf.log_semiring_matmul(np.zeros((2, 3)), np.zeros((4, 2))), "b"),
    ("left_align/mask_rank", lambda: crf.left_align(np.ones(3, bool)), "mask"),
    ("CRF/num_tags_zero", lambda: crf.CRF(0), "num_tags"),
    ("CRF/num_tags_float", lambda: crf.CRF(3.0), "num_tags"),
    ("CRF/boundary_string", lambda: crf.CRF(3, use_boundary_transitions="yes"), "use_boundary_transitions"),
    ("CRF/initializer_unknown", lambda: crf.CRF(3, transitions_initializer="nope"), "transitions_initializer"),
    ("CRF/wrong_num_tags", lambda: crf.CRF(3)(np.zeros((1, 2, 4), "float32")), "num_tags"),
    ("CRF/decode_pad_tag", lambda: crf.CRF(4).decode(E, pad_tag="x"), "pad_tag"),
    ("CRF/reduction", lambda: crf.CRF(4, reduction="average"), "reduction"),
    ("MEMM/direction", lambda: crf.MEMM(3, direction="both_ways"), "direction"),
    ("MEMM/decoding", lambda: crf.MEMM(3, decoding="beam"), "decoding"),
    ("SequenceTagger/head", lambda: crf.SequenceTagger(keras.layers.Dense(3), keras.layers.Dense(3)), "head"),
    ("SequenceTagger/encoder", lambda: crf.SequenceTagger("bilstm", crf.CRF(3)), "encoder"),
    ("SequenceTagger/pad_id", lambda: _sequence_tagger(pad_id="0"), "pad_id"),
    ("enumerate_paths/length", lambda: crf.enumerate_paths(0, 2), "length"),
    ("enumerate_paths/length_float", lambda: crf.enumerate_paths(2.5, 2), "length"),
    ("segment_spans/string_list", lambda: crf.segment_spans(None), "tags"),
    ("span_f1/lengths", lambda: crf.span_f1([set()], [set(), set()]), "predicted"),
    ("span_f1/gold_string", lambda: crf.span_f1("ab", "ab"), "gold"),
    ("split_sentences/max_length", lambda: crf.split_sentences([("a。", "ss")], max_length=0), "max_length"),
    ("split_sentences/pairs_string", lambda: crf.split_sentences("你好。"), "pairs"),
    ("split_sentences/tag_count", lambda: crf.split_sentences([("你好", "b")]), "pairs"),
    ("encode_tagging/tag_count", lambda: crf.encode_tagging([("ab", "sss")], _vocab(), "s", 4), "pairs"),
    ("encode_tagging/unknown_tag", lambda: crf.encode_tagging([("ab", "sx")], _vocab(), ["s"], 4), "tag_names"),
    ("encode_tagging/length", lambda: crf.encode_tagging([("ab", "ss")], _vocab(), ["s"], 0), "length"),
    ("encode_tagging/tag_names_repeat", lambda: crf.encode_tagging([("ab", "ss")], _vocab(), ["s", "s"], 4),
     "tag_names"),
    ("encode_tagging/vocabulary", lambda: crf.encode_tagging([("ab", "ss")], {"a": 1}, ["s"], 4), "vocabulary"),

    # --- lib.losses ---------------------------------------------------------------------------------------
    ("mcce/from_logits_string", lambda: losses.multilabel_categorical_crossentropy(
        np.ones((1, 2)), np.ones((1, 2)), from_logits="no"), "from_logits"),
    ("mcce/shapes", lambda: losses.multilabel_categorical_crossentropy(np.ones((2, 3)), np.ones((2, 4))), "y_true"),
    ("mcce/labels", lambda: losses.multilabel_categorical_crossentropy(np.full((1, 2), 2.0), np.ones((1, 2))),
     "y_true"),
    ("mcce/y_pred_none", lambda: losses.multilabel_categorical_crossentropy(np.ones((1, 2)), None), "y_pred"),
    ("mcce/y_true_none", lambda: losses.multilabel_categorical_crossentropy(None, np.ones((1, 2))), "y_true"),
    ("mcce/mask_value", lambda: losses.multilabel_categorical_crossentropy(
        np.ones((1, 2)), np.ones((1, 2)), mask_value=1), "mask_value"),
    ("mcce/mask_shape", lambda: losses.multilabel_categorical_crossentropy(
        np.ones((2, 2)), np.ones((2, 2)), mask=np.ones((3, 2), bool)), "mask"),
    ("mcce/probabilities_out_of_range", lambda: losses.multilabel_categorical_crossentropy(
        np.ones((1, 2)), np.array([[3.0, -2.0]]), from_logits=False), "y_pred"),
    ("mcce/y_pred_nan", lambda: losses.multilabel_categorical_crossentropy(
        np.ones((1, 2)), np.array([[np.nan, 1.0]])), "y_pred"),
    ("MCCE/from_logits_int", lambda: losses.MultilabelCategoricalCrossentropy(from_logits=0), "from_logits"),
    ("wbce/pos_weight_negative", lambda: losses.weighted_binary_crossentropy(
        np.ones((1, 2)), np.ones((1, 2)), pos_weight=-1.0), "pos_weight"),
    ("wbce/pos_weight_length", lambda: losses.weighted_binary_crossentropy(
        np.ones((1, 2)), np.ones((1, 2)), pos_weight=[1.0, 2.0, 3.0]), "pos_weight"),
    ("wbce/pos_weight_zero", lambda: losses.weighted_binary_crossentropy(
        np.ones((1, 2)), np.ones((1, 2)), pos_weight=0.0), "pos_weight"),
    ("wbce/probabilities_out_of_range", lambda: losses.weighted_binary_crossentropy(
        np.ones((1, 2)), np.array([[3.0, -2.0]]), from_logits=False), "y_pred"),
    ("WBCE/pos_weight_string", lambda: losses.WeightedBinaryCrossentropy(pos_weight="balanced"), "pos_weight"),
    ("balanced_pos_weight/power", lambda: losses.balanced_pos_weight(np.ones((2, 2)), power=-1), "power"),
    ("balanced_pos_weight/labels", lambda: losses.balanced_pos_weight(np.full((2, 2), 3)), "y_true"),
    ("balanced_pos_weight/empty", lambda: losses.balanced_pos_weight(np.zeros((0, 2))), "y_true"),
    ("predict_labels/threshold_nan", lambda: losses.predict_labels(np.ones((1, 2)), float("nan")), "threshold"),
    ("predict_labels/threshold_length", lambda: losses.predict_labels(np.ones((1, 2)), [0.0, 0.0, 0.0]),
     "threshold"),
    ("predict_labels/scores_none", lambda: losses.predict_labels(None), "scores"),
    ("F1/average", lambda: losses.MultilabelF1Score(average="samples"), "average"),
    ("F1/threshold", lambda: losses.MultilabelF1Score(threshold=float("inf")), "threshold"),
    ("F1/label_count_changes", _metric_twice, "y_pred"),
    ("F1/sample_weight_shape", lambda: losses.MultilabelF1Score().update_state(
        np.ones((2, 3)), np.ones((2, 3)), sample_weight=np.ones(5)), "sample_weight"),
    ("f1_scores/shapes", lambda: losses.f1_scores(np.ones((2, 3)), np.ones((2, 2))), "y_pred"),
    ("f1_scores/scores_not_decisions", lambda: losses.f1_scores(np.ones((1, 2)), np.array([[0.3, 2.0]])), "y_pred"),
    ("tune_thresholds/shapes", lambda: losses.tune_thresholds(np.ones((2, 3)), np.ones((2, 2))), "scores"),
    ("tune_thresholds/scores_nan", lambda: losses.tune_thresholds(np.ones((2, 1)), np.full((2, 1), np.nan)),
     "scores"),

    # --- lib.optimizers -----------------------------------------------------------------------------------
    ("AdaFactor/learning_rate", lambda: optimizers.AdaFactor(learning_rate=-1.0), "learning_rate"),
    ("AdaFactor/beta_1", lambda: optimizers.AdaFactor(beta_1=1.0), "beta_1"),
    ("AdaFactor/relative_step_string", lambda: optimizers.AdaFactor(relative_step="no"), "relative_step"),
    ("AdaFactor/factored_int", lambda: optimizers.AdaFactor(factored=1), "factored"),
    ("AdaFactor/epsilon_1", lambda: optimizers.AdaFactor(epsilon_1=0.0), "epsilon_1"),
    ("AdaFactor/clip_threshold_nan", lambda: optimizers.AdaFactor(clip_threshold=float("nan")), "clip_threshold"),
    ("AdaFactor/min_dim", lambda: optimizers.AdaFactor(min_dim_size_to_factor=-1), "min_dim_size_to_factor"),
    ("AdaFactor/gradient_shape", lambda: _adafactor_step(np.ones((3, 2), "float32")), "gradient"),
    ("beta_2_schedule/step_zero", lambda: optimizers.beta_2_schedule(0.0), "step"),
    ("beta_2_schedule/step_negative", lambda: optimizers.beta_2_schedule(np.array([-1.0, 2.0])), "step"),
    ("relative_step_size/step_zero", lambda: optimizers.relative_step_size(0.0), "step"),
    ("adam_effective_beta_2/step_zero", lambda: optimizers.adam_effective_beta_2(0.0), "step"),
    ("adam_effective_beta_2/beta_2_one", lambda: optimizers.adam_effective_beta_2(2.0, beta_2=1.0), "beta_2"),
    ("generalized_kl/negative", lambda: optimizers.generalized_kl(np.array([-1.0, 1.0]), np.ones(2)), "p"),
    ("generalized_kl/shapes", lambda: optimizers.generalized_kl(np.ones(2), np.ones(3)), "q"),
    ("rank_one_factors/rank", lambda: optimizers.rank_one_factors(np.ones(3)), "c"),
    ("factored_axes/shape_none", lambda: optimizers.factored_axes(None), "shape"),
    ("factored_axes/min_dim", lambda: optimizers.factored_axes((4, 4), min_dim_size_to_factor=-2),
     "min_dim_size_to_factor"),
    ("state_bytes/optimizer", lambda: optimizers.state_bytes("adam"), "optimizer"),
    ("rms/x_none", lambda: optimizers.rms(None), "x"),

    # --- lib.adversarial ----------------------------------------------------------------------------------
    ("fgm/epsilon_negative", lambda: adversarial.fgm_perturbation(np.ones((2, 2)), -0.1), "epsilon"),
    ("fgm/per_example_string", lambda: adversarial.fgm_perturbation(np.ones((2, 2)), 0.1, per_example="no"),
     "per_example"),
    ("fgm/gradient_none", lambda: adversarial.fgm_perturbation(None, 0.1), "gradient"),
    ("fgm/gradient_nan", lambda: adversarial.fgm_perturbation(np.full((2, 2), np.nan), 0.1), "gradient"),
    ("fgsm/gradient_none", lambda: adversarial.fgsm_perturbation(None, 0.1), "gradient"),
    ("gradient_penalty/penalty", lambda: adversarial.gradient_penalty(np.ones((2, 2)), 0.1, penalty="l1"),
     "penalty"),
    ("gradient_penalty/empty_batch", lambda: adversarial.gradient_penalty(np.ones((0, 2)), 0.1), "gradient"),
    ("find_layer/unknown", lambda: adversarial.find_layer(_tiny_model(), "nope"), "layer_name"),
    ("find_layer/model", lambda: adversarial.find_layer("model", "embedding"), "model"),
    ("adversarial_training/method", lambda: adversarial.adversarial_training(_tiny_model(), "embedding",
                                                                              method="pgd"), "method"),
    ("FGMModel/epsilon_zero", lambda: adversarial.FGMModel(_tiny_model(), "embedding", 0.0), "epsilon"),
    ("FGMModel/layer", lambda: adversarial.FGMModel(_tiny_model(), "nope", 0.5), "layer_name"),
    ("FGMModel/model", lambda: adversarial.FGMModel(None, "embedding", 0.5), "model"),
    ("GradientPenaltyModel/penalty", lambda: adversarial.GradientPenaltyModel(
        _tiny_model(), "embedding", 0.5, penalty="l1"), "penalty"),
    ("perturbed_predict/lengths", lambda: adversarial.perturbed_predict(
        _tiny_model(), "embedding", np.zeros((4, 3), "int32"), np.zeros(3, "int32"),
        "sparse_categorical_crossentropy", [0.1]), "y"),
    ("perturbed_predict/empty", lambda: adversarial.perturbed_predict(
        _tiny_model(), "embedding", np.zeros((0, 3), "int32"), np.zeros(0, "int32"),
        "sparse_categorical_crossentropy", [0.1]), "x"),
    ("perturbed_predict/batch_size", lambda: adversarial.perturbed_predict(
        _tiny_model(), "embedding", np.zeros((4, 3), "int32"), np.zeros(4, "int32"),
        "sparse_categorical_crossentropy", [0.1], batch_size=0), "batch_size"),
    ("perturbed_predict/epsilons_empty", lambda: adversarial.perturbed_predict(
        _tiny_model(), "embedding", np.zeros((4, 3), "int32"), np.zeros(4, "int32"),
        "sparse_categorical_crossentropy", []), "epsilons"),
    ("perturbed_predict/direction", lambda: adversarial.perturbed_predict(
        _tiny_model(), "embedding", np.zeros((4, 3), "int32"), np.zeros(4, "int32"),
        "sparse_categorical_crossentropy", [0.1], direction="worst"), "direction"),
    ("layer_output_gradient/loss", lambda: adversarial.layer_output_gradient(
        _tiny_model(), "embedding", np.zeros((4, 3), "int32"), np.zeros(4, "int32"), "not_a_loss"), "loss"),

    # --- lib.transformer ----------------------------------------------------------------------------------
    ("Embeddings/negative_id", lambda: transformer.Embeddings(20, 4)(np.array([[-1]])), "token_ids"),
    ("Embeddings/id_too_large", lambda: transformer.Embeddings(20, 4)(np.array([[1, 20]])), "token_ids"),
    ("Embeddings/segment_too_large", lambda: transformer.Embeddings(20, 4)(np.array([[1, 2]]), np.array([[0, 2]])),
     "segment_ids"),
    ("Embeddings/segment_shape", lambda: transformer.Embeddings(20, 4)(np.array([[1, 2]]), np.array([[0, 1, 1]])),
     "segment_ids"),
    ("Embeddings/too_long", lambda: transformer.Embeddings(20, 4, max_length=2)(np.array([[1, 2, 3]])),
     "token_ids"),
    ("Embeddings/token_ids_rank", lambda: transformer.Embeddings(20, 4)(np.array([1, 2])), "token_ids"),
    ("Embeddings/token_ids_float", lambda: transformer.Embeddings(20, 4)(np.array([[1.5, 2.0]])), "token_ids"),
    ("Embeddings/dropout", lambda: transformer.Embeddings(20, 4, dropout=1.5), "dropout"),
    ("Embeddings/epsilon", lambda: transformer.Embeddings(20, 4, layer_norm_epsilon=-1.0), "layer_norm_epsilon"),
    ("Embeddings/initializer_range", lambda: transformer.Embeddings(20, 4, initializer_range="0.02"),
     "initializer_range"),
    ("TransformerBlock/divisible", lambda: transformer.TransformerBlock(10, 3, 16), "hidden_size"),
    ("TransformerBlock/activation_relu", lambda: transformer.TransformerBlock(8, 2, 16, activation="relu"),
     "activation"),
    ("TransformerBlock/talking_heads_string", lambda: transformer.TransformerBlock(8, 2, 16, talking_heads_pre="no"),
     "talking_heads_pre"),
    ("TransformerBlock/input_width", lambda: transformer.TransformerBlock(8, 2, 16)(_x(width=6)), "inputs"),
    ("Encoder/share_layers_string", lambda: _encoder(share_layers="no"), "share_layers"),
    ("Encoder/vocabulary_string", lambda: _encoder(vocabulary="abc"), "vocabulary"),
    ("Encoder/num_layers", lambda: _encoder(num_layers=0), "num_layers"),
    ("Encoder/negative_id", lambda: _encoder()(np.array([[-1, 2]])), "token_ids"),
    ("Encoder/padding_mask_shape", lambda: _encoder()(np.array([[1, 2]]), padding_mask=np.ones((1, 3), bool)),
     "padding_mask"),
    ("Encoder/layer_weights", lambda: _encoder().layer_weights(1), "index"),
    ("Encoder/unshare_unshared", lambda: _encoder().unshare(), "share_layers"),
    ("MLM/encoder", lambda: transformer.MaskedLanguageModel("encoder"), "encoder"),
    ("MLM/metadata", lambda: transformer.MaskedLanguageModel(_encoder(), metadata="recipe"), "metadata"),
    ("MLM/mask_positions_negative", lambda: transformer.MaskedLanguageModel(_encoder())(
        {"token_ids": np.array([[1, 2, 3]]), "mask_positions": np.array([[-1]])}), "mask_positions"),
    ("MLM/mask_positions_too_large", lambda: transformer.MaskedLanguageModel(_encoder())(
        {"token_ids": np.array([[1, 2, 3]]), "mask_positions": np.array([[3]])}), "mask_positions"),
    ("MLM/inputs_keys", lambda: transformer.MaskedLanguageModel(_encoder())({"ids": np.array([[1]])}), "inputs"),
    ("Classifier/num_classes", lambda: transformer.SequenceClassifier(_encoder(), num_classes=0), "num_classes"),
    ("Classifier/encoder", lambda: transformer.SequenceClassifier(None, 2), "encoder"),
    ("parameter_count/hidden", lambda: transformer.parameter_count(10, 0, 1, 8), "hidden_size"),

    # --- lib.albert ---------------------------------------------------------------------------------------
    ("CharTokenizer/tokens", lambda: albert.CharTokenizer(["a", "b"]), "tokens"),
    ("CharTokenizer/tokens_string", lambda: albert.CharTokenizer("[PAD]"), "tokens"),
    ("CharTokenizer/lowercase_string", lambda: albert.CharTokenizer(albert.SPECIAL_TOKENS, lowercase="no"),
     "lowercase"),
    ("tokenizer.encode/string", lambda: _tokenizer().encode("好评", 6), "texts"),
    ("tokenizer.encode/length", lambda: _tokenizer().encode(["好评"], 2), "length"),
    ("tokenizer.encode/none_text", lambda: _tokenizer().encode([None], 6), "texts"),
    ("tokenizer.encode_chunks/string", lambda: _tokenizer().encode_chunks("好评好评", 6), "texts"),
    ("tokenizer.encode_chunks/length", lambda: _tokenizer().encode_chunks(["好评"], 2), "length"),
    ("tokenizer.encode_chunks/min_tokens", lambda: _tokenizer().encode_chunks(["好评"], 6, min_tokens=0),
     "min_tokens"),
    ("tokenizer.decode/negative", lambda: _tokenizer().decode([2, -1]), "ids"),
    ("tokenizer.decode/too_large", lambda: _tokenizer().decode([2, 99]), "ids"),
    ("tokenizer.ids/not_string", lambda: _tokenizer().ids(["好"]), "text"),
    ("from_texts/string", lambda: albert.CharTokenizer.from_texts("好评", max_size=8), "texts"),
    ("from_texts/min_count", lambda: albert.CharTokenizer.from_texts(["好评"], max_size=8, min_count=0),
     "min_count"),
    ("mask_tokens/rate", lambda: albert.mask_tokens(np.ones((1, 4), int), vocabulary_size=8, mask_id=4,
                                                    special_ids=[0], rate=1.5), "rate"),
    ("mask_tokens/rate_string", lambda: albert.mask_tokens(np.ones((1, 4), int), vocabulary_size=8, mask_id=4,
                                                           special_ids=[0], rate="0.15"), "rate"),
    ("mask_tokens/mask_id", lambda: albert.mask_tokens(np.ones((1, 4), int), vocabulary_size=8, mask_id=8,
                                                       special_ids=[0]), "mask_id"),
    ("mask_tokens/token_ids_range", lambda: albert.mask_tokens(np.full((1, 4), 9), vocabulary_size=8, mask_id=4,
                                                               special_ids=[0]), "token_ids"),
    ("mask_tokens/vocabulary_all_special", lambda: albert.mask_tokens(np.ones((1, 4), int), vocabulary_size=2,
                                                                      mask_id=1, special_ids=[0, 1]),
     "special_ids"),
    ("mask_tokens/max_predictions", lambda: albert.mask_tokens(np.ones((1, 4), int), vocabulary_size=8, mask_id=4,
                                                               special_ids=[0], max_predictions=-1),
     "max_predictions"),
    ("PretrainingRecipe/reduced", lambda: albert.PretrainingRecipe().reduced(no_such_field=1), "no_such_field"),
    ("predict_logits/batch_size", lambda: albert.predict_logits(_tiny_model(), np.zeros((2, 3), "int32"),
                                                                batch_size=0), "batch_size"),


    # --- lib.data -----------------------------------------------------------------------------------------
    ("Vocabulary/tokens_string", lambda: data.Vocabulary("<pad>"), "tokens"),
    ("Vocabulary/repeat", lambda: data.Vocabulary(["<pad>", "<unk>", "a", "a"]), "tokens"),
    ("Vocabulary.encode/string", lambda: _vocab().encode("abc", 4), "sequences"),
    ("Vocabulary.encode/length", lambda: _vocab().encode(["abc"], 0), "length"),
    ("Vocabulary.decode/negative", lambda: _vocab().decode([2, -1]), "ids"),
    ("Vocabulary.decode/too_large", lambda: _vocab().decode([2, 99]), "ids"),
    ("from_sequences/string", lambda: data.Vocabulary.from_sequences("abc"), "sequences"),
    ("from_sequences/max_size", lambda: data.Vocabulary.from_sequences(["abc"], max_size=1), "max_size"),
    ("from_sequences/max_size_float", lambda: data.Vocabulary.from_sequences(["abc"], max_size=3.5), "max_size"),
    ("split_indices/sum", lambda: data.split_indices(10, [0.5, 0.2]), "fractions"),
    ("split_indices/negative", lambda: data.split_indices(10, [1.5, -0.5]), "fractions"),
    ("split_indices/n", lambda: data.split_indices(-1, [1.0]), "n"),
    ("load_segmentation/limit", lambda: data.load_segmentation(limit=0), "limit"),
    ("pos_to_ner/sentence_string", lambda: data.pos_to_ner("我/r"), "sentence"),
    ("fetch/sha256", lambda: data.fetch("https://example.invalid/x", "abc"), "sha256"),

    # --- lib.seq2seq --------------------------------------------------------------------------------------
    ("shift_right/start_id_negative", lambda: seq2seq.shift_right([[5, 6, 3, 0]], start_id=-1), "start_id"),
    ("shift_right/targets_rank", lambda: seq2seq.shift_right([5, 6, 3], start_id=2), "targets"),
    ("shift_right/targets_none", lambda: seq2seq.shift_right(None, start_id=2), "targets"),
    ("random_replacement/rate", lambda: seq2seq.random_replacement(np.ones((1, 3), "int32"), 1.5), "rate"),
    ("random_replacement/pool", lambda: seq2seq.random_replacement(np.ones((1, 3), "int32"), 0.1, pool="other"),
     "pool"),
    ("random_replacement/vocabulary_needed", lambda: seq2seq.random_replacement(
        np.ones((1, 3), "int32"), 0.1, pool="vocabulary"), "vocabulary_size"),
    ("output_log_probs/start_id", lambda: seq2seq.output_log_probs(np.zeros((2, 3)), start_id=5), "start_id"),
    ("greedy_search/max_length", lambda: seq2seq.greedy_search(lambda t, s: (None, s), None, start_id=1, end_id=2,
                                                               max_length=0), "max_length"),
    ("greedy_search/same_ids", lambda: seq2seq.greedy_search(lambda t, s: (None, s), None, start_id=1, end_id=1,
                                                             max_length=3), "end_id"),
    ("beam_search/beam_size", lambda: seq2seq.beam_search(lambda t, s: (None, s), None, start_id=1, end_id=2,
                                                          max_length=3, beam_size=0), "beam_size"),
    ("length_penalty_factor/alpha", lambda: seq2seq.length_penalty_factor(np.array([3]), -1.0), "alpha"),
    ("prefix_table_model/end_id", lambda: seq2seq.prefix_table_model({(): {1: 1.0}}, 4, end_id=7), "end_id"),
    ("Seq2Seq/hidden_dim", lambda: _seq2seq(hidden_dim=0), "hidden_dim"),
    ("Seq2Seq/rate", lambda: _seq2seq(replacement_rate=2.0), "replacement_rate"),
    ("Seq2Seq/attention_string", lambda: _seq2seq(attention="no"), "attention"),
    ("Seq2Seq/generate_beam_size", lambda: _seq2seq().generate(np.ones((1, 3), "int32"), beam_size=0), "beam_size"),
    ("Seq2Seq/generate_source_range", lambda: _seq2seq().generate(np.full((1, 3), 10, "int32")), "source"),
    ("Seq2Seq/generate_source_negative", lambda: _seq2seq().generate(np.full((1, 3), -1, "int32")), "source"),
    ("Seq2Seq/teacher_forced_lengths", lambda: _seq2seq().teacher_forced(
        np.ones((2, 3), "int32"), np.ones((3, 4), "int32")), "targets"),
    ("Seq2Seq/reinitialize_seed", lambda: _seq2seq().reinitialize(-1), "seed"),
    ("grapheme_phoneme_pairs/min_max", lambda: seq2seq.grapheme_phoneme_pairs(min_phonemes=5, max_phonemes=3),
     "max_phonemes"),
    ("phoneme_error_rate/lengths", lambda: seq2seq.phoneme_error_rate([[1, 2]], [[1, 2], [3, 4]], end_id=3),
     "targets"),
    ("phoneme_error_rate/empty", lambda: seq2seq.phoneme_error_rate([], [], end_id=3), "targets"),
    ("phoneme_error_rate/none", lambda: seq2seq.phoneme_error_rate(None, [[1]], end_id=3), "predictions"),
    ("sequence_error_rate/lengths", lambda: seq2seq.sequence_error_rate([[1, 2]], [[1, 2], [3, 4]], end_id=3),
     "targets"),
    ("sequence_error_rate/empty", lambda: seq2seq.sequence_error_rate([], [], end_id=3), "targets"),
    ("position_errors/lengths", lambda: seq2seq.position_errors([[1, 2]], [[1, 2], [3, 4]], end_id=3),
     "predictions"),
    ("position_errors/rank", lambda: seq2seq.position_errors([1, 2], [1, 2], end_id=3), "targets"),
    ("conditional_error_rates/shapes", lambda: seq2seq.conditional_error_rates(
        np.zeros((2, 3), bool), np.zeros((2, 4), bool), np.zeros((2, 3), bool)), "valid"),
    ("two_state_error_rates/range", lambda: seq2seq.two_state_error_rates([0.1, 1.5], 0.2), "on_track_error"),
    ("two_state_error_rates/shapes", lambda: seq2seq.two_state_error_rates([0.1, 0.2], [0.2, 0.3, 0.4]),
     "off_track_error"),
    ("strip_end/end_id", lambda: seq2seq.strip_end([1, 2], end_id=None), "end_id"),

    # --- lib.statistics -----------------------------------------------------------------------------------
    ("paired_difference/lengths", lambda: statistics.paired_difference([1.0, 2.0], [1.0, 2.0, 3.0]), "b"),
    ("paired_difference/one_seed", lambda: statistics.paired_difference([1.0], [2.0]), "a"),
    ("paired_difference/nan", lambda: statistics.paired_difference([1.0, np.nan], [1.0, 2.0]), "a"),
    ("paired_difference/confidence", lambda: statistics.paired_difference([1.0, 2.0], [1.0, 3.0], confidence=95),
     "confidence"),
    ("paired_difference/bound", lambda: statistics.paired_difference([1.0, 2.0], [1.0, 3.0], equivalence_bound=-1),
     "equivalence_bound"),
    ("bootstrap/lengths", lambda: statistics.bootstrap_ratio_difference([1, 2], [1, 2], [1, 2, 3]),
     "denominator"),
    ("bootstrap/zero_denominator", lambda: statistics.bootstrap_ratio_difference([1, 2], [1, 2], [0, 0]),
     "denominator"),
    ("bootstrap/resamples", lambda: statistics.bootstrap_ratio_difference([1, 2], [1, 2], [1, 1], resamples=0),
     "resamples"),
    ("interval_text/result", lambda: statistics.interval_text({"mean": 1.0}), "result"),
    ("interval_text/digits", lambda: statistics.interval_text(statistics.paired_difference([1.0, 2.0], [1.5, 2.0]),
                                                              digits=-1), "digits"),
    ("sign_of_interval/result", lambda: statistics.sign_of_interval(None), "result"),
]


def _names(message, argument):
    return f"`{argument}`" in message or f"{argument}=" in message or f"{argument}." in message or \
        f"'{argument}'" in message


def outcome(thunk, argument):
    """``"clear"``, ``"unclear: <error>"`` or ``"silent"``."""
    try:
        thunk()
    except (ValueError, TypeError) as error:
        message = str(error)
        if _names(message, argument) and "Received" in message:
            return "clear"
        return f"unclear: {type(error).__name__}: {message[:200]}"
    except Exception as error:  # noqa: BLE001 - a deep error is an outcome to count
        return f"unclear: {type(error).__name__}: {str(error)[:200]}"
    return "silent"


TENSORFLOW_ONLY = ("adversarial.", "seq2seq.", "transformer.", "albert.", "_tiny_model", "_seq2seq", "_encoder",
                   "_tokenizer")
"""Cases that exercise the modules which need TensorFlow (see the README): skipped under another backend."""


@pytest.mark.parametrize("thunk, argument", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_raises_a_clear_error(thunk, argument):
    if BACKEND != "tensorflow":
        import inspect

        if any(name in inspect.getsource(thunk) for name in TENSORFLOW_ONLY):
            pytest.skip("a module that needs TensorFlow")
    assert outcome(thunk, argument) == "clear"


# --- the same array checks in a traced function with known shapes ------------------------------------------------

def _traced_cases():
    import tensorflow as tf

    spec = tf.TensorSpec

    def embeddings(ids):
        layer = transformer.Embeddings(20, 4)
        layer.build()
        return tf.function(layer.call, input_signature=[spec(ids.shape, tf.int32)]), (ids,)

    return [
        ("Embeddings/negative_id", *embeddings(np.array([[-1, 3]], "int32")), "token_ids"),
        ("Embeddings/id_too_large", *embeddings(np.array([[1, 20]], "int32")), "token_ids"),
        ("crf_nll/tags_too_large", tf.function(lambda e, t: crf.crf_negative_log_likelihood(e, t, G)),
         (E, TAGS + 4), "tags"),
        ("crf_nll/tags_shape", tf.function(lambda e, t: crf.crf_negative_log_likelihood(e, t, G)),
         (E, TAGS[:, :2]), "tags"),
        ("viterbi/emissions_nan", tf.function(lambda e: crf.viterbi_decode(e, G)), (np.full_like(E, np.nan),),
         "emissions"),
        ("mcce/labels", tf.function(lambda t, p: losses.multilabel_categorical_crossentropy(t, p)),
         (np.full((1, 2), 2.0, "float32"), np.ones((1, 2), "float32")), "y_true"),
        ("MHA/mask_shape", tf.function(lambda q, m: _mha()(q, q, attention_mask=m)),
         (_x(), np.ones((2, 4, 3), bool)), "attention_mask"),
        ("MHA/high_dim_mask_shape", tf.function(lambda q, m: _mha(attention_axes=2)(q, q, attention_mask=m)),
         (_x4(), np.ones((2, 4, 3), bool)), "attention_mask"),
        ("MHA/attention_axes_out_of_range", tf.function(lambda q: _mha(attention_axes=3)(q, q)), (_x4(),),
         "attention_axes"),
        ("shift_right/targets_rank", tf.function(lambda t: seq2seq.shift_right(t, 2)),
         (np.array([5, 6, 3], "int32"),), "targets"),
    ]


@needs_tf
def test_bad_array_inputs_raise_clearly_in_a_traced_function():
    import tensorflow as tf

    failures = []
    for case_id, function, args, argument in _traced_cases():
        try:
            function(*args)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as error:
            if not _names(str(error), argument):
                failures.append(f"{case_id}: {type(error).__name__}: {str(error)[:200]}")
        except Exception as error:  # noqa: BLE001
            failures.append(f"{case_id}: {type(error).__name__}: {str(error)[:200]}")
        else:
            failures.append(f"{case_id}: silent")
    assert not failures, "\n".join(failures)


@needs_tf
def test_validate_ids_checks_a_dataset_component():
    import tensorflow as tf

    x = np.array([[1, 2, 0], [3, 4, 0]])
    y = np.array([[0, 1, 0], [1, 2, 0]])
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(1)
    assert checks.validate_ids(dataset, 5, name="token_ids", component=0) == 6
    with pytest.raises(ValueError, match=re.escape("`tags` must hold ids in [0, 2)")):
        checks.validate_ids(dataset, 2, name="tags", component=1)
    assert checks.validate_ids(np.array([[1, -1]]), 2, name="tags", ignore=-1) == 2


def tally(cases=CASES):
    counts = {"clear": 0, "unclear": 0, "silent": 0}
    details = []
    for case_id, thunk, argument in cases:
        result = outcome(thunk, argument)
        counts[result.split(":")[0]] += 1
        if result != "clear":
            details.append(f"{case_id}: {result}")
    return counts, details


if __name__ == "__main__":  # pragma: no cover - the report's tally
    import sys

    counts, details = tally()
    print("\n".join(details))
    print(f"{sum(counts.values())} bad inputs: {counts}", file=sys.stderr)
    math  # noqa: B018 - imported for cases that compute with it
