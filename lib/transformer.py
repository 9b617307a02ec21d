"""A compact BERT/ALBERT encoder, and ALBERT used as BERT (chapter "ALBERT used as BERT").

BERT (Devlin et al., 2019) embeds each token in ``H`` dimensions and stacks ``L`` Transformer layers, each
with its own weights. ALBERT (Lan et al., 2019) saves parameters twice:

* **factorised embeddings**: tokens are embedded in ``E << H`` dimensions and projected up by an ``E x H``
  matrix, so the embedding costs ``V E + E H`` parameters instead of ``V H``;
* **cross-layer sharing**: the ``L`` layers are one layer applied ``L`` times,
  ``h_l = f(h_{l-1}; θ)`` for ``l = 1..L``, instead of ``h_l = f(h_{l-1}; θ_l)``.

Su Jianlin's article (https://kexue.fm/archives/7187, 2020-01-29) drops the second constraint at fine-tuning
time: load the shared ``θ`` into every ``θ_l`` and fine-tune the ``L`` copies independently. At that moment the
function is unchanged (``θ_l = θ`` for all ``l`` gives the same composition); only the training dynamics and
the capacity differ. :meth:`TransformerEncoder.unshare` does exactly this.

This module holds the encoder (:class:`Embeddings`, :class:`TransformerBlock`, :class:`TransformerEncoder`),
the two heads (:class:`MaskedLanguageModel` for pre-training, :class:`SequenceClassifier` for fine-tuning)
and the parameter count as a formula (:func:`parameter_count`, :data:`ARCHITECTURES`). The chapter's
pre-training, fine-tuning and the loaders of real ALBERT checkpoints are in :mod:`lib.albert`.
"""

from __future__ import annotations

from typing import Mapping

import keras
import numpy as np
from keras import ops

from lib.activations import GELU, canonical_approximation
from lib import checks
from lib.checks import check_positive_int
from lib.attention import MultiHeadAttention

ARTICLE_URL = "https://kexue.fm/archives/7187"


# --- argument checks -----------------------------------------------------------------------------------------


_check_non_negative_int = checks.check_non_negative_int
def _check_rate(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a float in [0, 1). Received: {name}={value!r}")
    return float(value)


def _check_positive_float(name, value):
    return checks.check_number(name, value, 0.0, low_open=True)


def _token_ids(name, token_ids):
    """A (batch, length) tensor of ids; ``None``, another rank or fractional ids are refused."""
    token_ids = checks.check_tensor(name, token_ids)
    if len(token_ids.shape) != 2:
        raise ValueError(f"`{name}` must have shape (batch, length). Received: {name}.shape={tuple(token_ids.shape)}")
    return token_ids


def _truncated_normal(stddev):
    # A new initializer object per weight (each draws its own values).
    return keras.initializers.TruncatedNormal(stddev=stddev)


def _token_ids_shape(input_shape):
    if isinstance(input_shape, Mapping):
        if "token_ids" not in input_shape:
            raise ValueError("`inputs` must be a tensor of token ids or a dict with the key 'token_ids'. "
                             f"Received: inputs with keys {sorted(input_shape)}")
        input_shape = input_shape["token_ids"]
    return tuple(input_shape)


class _QuietRetracing:
    """Drop TensorFlow's "triggered tf.function retracing" warning while active.

    Each model that is trained or evaluated traces its own step function once; TensorFlow counts traces per
    Python function across models, so a loop over fresh models (seeds, shared vs untied) looks like
    retracing to it although nothing is traced twice.
    """

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()

    def __enter__(self):
        import logging

        self._logger = logging.getLogger("tensorflow")
        self._logger.addFilter(self)
        return self

    def __exit__(self, *exc):
        self._logger.removeFilter(self)
        return False


def _unpack_inputs(inputs):
    """``inputs`` is a tensor of token ids or a dict with ``token_ids`` and optional ``segment_ids``,
    ``padding_mask`` and ``mask_positions``."""
    if isinstance(inputs, Mapping):
        if "token_ids" not in inputs:
            raise ValueError("`inputs` must be a tensor of token ids or a dict with the key 'token_ids'. "
                             f"Received: inputs with keys {sorted(inputs)}")
        return (inputs["token_ids"], inputs.get("segment_ids"), inputs.get("padding_mask"),
                inputs.get("mask_positions"))
    return inputs, None, None, None


# --- the layers ---------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="lib")
class Embeddings(keras.layers.Layer):
    """Token, position and segment embeddings, layer-normalised, and for ALBERT projected from E to H.

    BERT: ``x = LayerNorm(W_tok[t] + W_pos[i] + W_seg[s])`` with ``H``-wide tables. ALBERT: the tables are
    ``E``-wide and ``x`` is then mapped to ``H`` by a dense layer (``x W_proj + b``, ``W_proj`` of shape
    ``E x H``): the factorised embedding of the ALBERT paper.

    Args:
        vocabulary_size: number of token ids ``V``.
        embedding_size: width ``E`` of the tables.
        hidden_size: width ``H`` of the projection, or ``None`` for no projection (BERT, ``E = H``).
        max_length: number of learned positions ``P`` (the longest sequence accepted).
        num_segments: number of segment ids ``S`` (0 for no segment table).
        dropout: dropout rate after the layer normalisation.
        layer_norm_epsilon: epsilon of the layer normalisation.
        initializer_range: standard deviation of the truncated-normal initialisation.
        **kwargs: standard layer arguments.

    Call arguments:
        token_ids: int tensor ``(batch, length)``, ``length <= max_length``.
        segment_ids: optional int tensor ``(batch, length)``; zeros when omitted.
        training: whether dropout is active.

    Returns:
        ``(batch, length, H)`` (or ``E`` without a projection).

    Raises:
        ValueError: for sizes that are not positive integers, a sequence longer than ``max_length``, or ids out
            of range (a negative id would otherwise read the last row). The id check runs on the host in eager
            mode and as a ``tf.debugging`` assertion in a ``tf.function``; under XLA (Keras's
            ``jit_compile="auto"`` on a GPU) it cannot run: check the data beforehand with
            ``lib.checks.validate_ids(token_ids, vocabulary_size, name="token_ids")``.
    """

    def __init__(self, vocabulary_size, embedding_size, hidden_size=None, max_length=512, num_segments=2,
                 dropout=0.0, layer_norm_epsilon=1e-12, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = check_positive_int("vocabulary_size", vocabulary_size)
        self.embedding_size = check_positive_int("embedding_size", embedding_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size, allow_none=True)
        self.max_length = check_positive_int("max_length", max_length)
        self.num_segments = _check_non_negative_int("num_segments", num_segments)
        self.dropout = _check_rate("dropout", dropout)
        self.layer_norm_epsilon = _check_positive_float("layer_norm_epsilon", layer_norm_epsilon)
        self.initializer_range = _check_positive_float("initializer_range", initializer_range)
        self.norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy,
                                                    name="norm")
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy, name="dropout")
        self.projection = None
        if self.hidden_size is not None:
            self.projection = keras.layers.Dense(self.hidden_size,
                                                 kernel_initializer=_truncated_normal(self.initializer_range),
                                                 dtype=self.dtype_policy, name="projection")

    def build(self, input_shape=None):
        e = self.embedding_size
        self.token_embeddings = self.add_weight(shape=(self.vocabulary_size, e), name="token_embeddings",
                                                initializer=_truncated_normal(self.initializer_range))
        self.position_embeddings = self.add_weight(shape=(self.max_length, e), name="position_embeddings",
                                                   initializer=_truncated_normal(self.initializer_range))
        self.segment_embeddings = None
        if self.num_segments:
            self.segment_embeddings = self.add_weight(shape=(self.num_segments, e), name="segment_embeddings",
                                                      initializer=_truncated_normal(self.initializer_range))
        self.norm.build((None, None, e))
        if self.projection is not None:
            self.projection.build((None, None, e))

    def call(self, token_ids, segment_ids=None, training=None):
        token_ids = _token_ids("token_ids", token_ids)
        length = token_ids.shape[1]
        if isinstance(length, int) and length > self.max_length:
            raise ValueError(f"`token_ids` must be at most max_length={self.max_length} long. "
                             f"Received: token_ids with shape {tuple(token_ids.shape)}")
        # ids out of range would wrap around (-1 reads the last row) or fail deep in the gather; under XLA no
        # value check can run (lib.checks.validate_ids checks a dataset on the host beforehand)
        token_ids = ops.cast(checks.check_ids("token_ids", token_ids, self.vocabulary_size), "int32")
        if segment_ids is not None:
            segment_ids = _token_ids("segment_ids", segment_ids)
            if not all(a is None or b is None or a == b for a, b in zip(segment_ids.shape, token_ids.shape)):
                raise ValueError("`segment_ids` must have the shape of `token_ids`. Received: segment_ids.shape="
                                 f"{tuple(segment_ids.shape)}, token_ids.shape={tuple(token_ids.shape)}")
            segment_ids = checks.check_ids("segment_ids", segment_ids, max(self.num_segments, 1))
        dtype = self.compute_dtype
        x = ops.take(ops.cast(self.token_embeddings, dtype), token_ids, axis=0)
        positions = ops.arange(ops.shape(token_ids)[1], dtype="int32")
        x = x + ops.expand_dims(ops.take(ops.cast(self.position_embeddings, dtype), positions, axis=0), 0)
        if self.segment_embeddings is not None:
            if segment_ids is None:
                segment_ids = ops.zeros_like(token_ids)
            x = x + ops.take(ops.cast(self.segment_embeddings, dtype), ops.cast(segment_ids, "int32"), axis=0)
        x = self.dropout_layer(self.norm(x), training=training)
        if self.projection is not None:
            x = self.projection(x)
        return x

    def compute_output_shape(self, input_shape):
        return (*_token_ids_shape(input_shape), self.hidden_size or self.embedding_size)

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "embedding_size": self.embedding_size, "hidden_size": self.hidden_size,
                "max_length": self.max_length, "num_segments": self.num_segments, "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon, "initializer_range": self.initializer_range}


@keras.saving.register_keras_serializable(package="lib")
class TransformerBlock(keras.layers.Layer):
    """One Transformer layer of BERT and ALBERT (post-layer-norm).

    ``a = LayerNorm(x + Dropout(MultiHeadAttention(x, x)))`` then
    ``y = LayerNorm(a + Dropout(GELU(a W_1 + b_1) W_2 + b_2))``; the attention is
    :class:`lib.attention.MultiHeadAttention` and the activation :class:`lib.activations.GELU`.

    Args:
        hidden_size: width ``H`` of the input and output.
        num_heads: number of attention heads ``h``.
        intermediate_size: width ``I`` of the feed-forward layer.
        key_size: per-head width of queries and keys; ``H / h`` when ``None`` (BERT's choice).
        value_size: per-head width of values; ``key_size`` when ``None``.
        talking_heads_pre, talking_heads_post: talking-heads mixing before / after the softmax.
        dropout: dropout rate on the two residual branches.
        attention_dropout: dropout rate on the attention weights.
        activation: GELU form, ``"none"`` (exact) or ``"tanh"`` (BERT's and ALBERT's) or ``"sigmoid"``.
        layer_norm_epsilon: epsilon of both layer normalisations.
        initializer_range: standard deviation of the truncated-normal kernel initialisation.
        **kwargs: standard layer arguments.

    Call arguments:
        inputs: ``(batch, length, H)``.
        attention_mask: optional boolean mask broadcastable to ``(batch, length, length)``, true where a
            query may attend to a key.
        training: whether dropout is active.

    Returns:
        ``(batch, length, H)``.

    Raises:
        ValueError: if ``hidden_size`` is not divisible by ``num_heads`` and no ``key_size`` is given, or a
            size is not a positive integer.
    """

    def __init__(self, hidden_size, num_heads, intermediate_size, key_size=None, value_size=None,
                 talking_heads_pre=False, talking_heads_post=False, dropout=0.0, attention_dropout=0.0,
                 activation="tanh", layer_norm_epsilon=1e-12, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.intermediate_size = check_positive_int("intermediate_size", intermediate_size)
        if key_size is None and self.hidden_size % self.num_heads:
            raise ValueError("`hidden_size` must be divisible by `num_heads` when `key_size` is not given. "
                             f"Received: hidden_size={hidden_size}, num_heads={num_heads}")
        self.key_size = check_positive_int("key_size", key_size, allow_none=True)
        self.value_size = check_positive_int("value_size", value_size, allow_none=True)
        self.talking_heads_pre = checks.check_bool("talking_heads_pre", talking_heads_pre)
        self.talking_heads_post = checks.check_bool("talking_heads_post", talking_heads_post)
        self.dropout = _check_rate("dropout", dropout)
        self.attention_dropout = _check_rate("attention_dropout", attention_dropout)
        self.activation = canonical_approximation(activation, name="activation")
        self.layer_norm_epsilon = _check_positive_float("layer_norm_epsilon", layer_norm_epsilon)
        self.initializer_range = _check_positive_float("initializer_range", initializer_range)

        key = self.key_size or self.hidden_size // self.num_heads
        common = {"dtype": self.dtype_policy}
        self.attention = MultiHeadAttention(
            self.num_heads, key, self.value_size, output_dim=self.hidden_size,
            talking_heads_pre=self.talking_heads_pre, talking_heads_post=self.talking_heads_post,
            dropout=self.attention_dropout, kernel_initializer=_truncated_normal(self.initializer_range),
            name="attention", **common)
        self.attention_dropout_layer = keras.layers.Dropout(self.dropout, name="attention_dropout", **common)
        self.attention_norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon,
                                                              name="attention_norm", **common)
        self.intermediate = keras.layers.Dense(self.intermediate_size, name="intermediate",
                                               kernel_initializer=_truncated_normal(self.initializer_range),
                                               **common)
        self.activation_layer = GELU(self.activation, name="gelu", **common)
        self.output_dense = keras.layers.Dense(self.hidden_size, name="output",
                                               kernel_initializer=_truncated_normal(self.initializer_range),
                                               **common)
        self.output_dropout = keras.layers.Dropout(self.dropout, name="output_dropout", **common)
        self.output_norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="output_norm",
                                                           **common)

    def build(self, input_shape):
        shape = (None, None, self.hidden_size)
        self.attention.build(shape, shape)
        self.attention_norm.build(shape)
        self.intermediate.build(shape)
        self.output_dense.build((None, None, self.intermediate_size))
        self.output_norm.build(shape)

    def call(self, inputs, attention_mask=None, training=None):
        if len(inputs.shape) != 3 or inputs.shape[-1] not in (None, self.hidden_size):
            raise ValueError(f"`inputs` must have shape (batch, length, hidden_size={self.hidden_size}). "
                             f"Received: inputs.shape={tuple(inputs.shape)}")
        h = self.attention(inputs, inputs, attention_mask=attention_mask, training=training)
        x = self.attention_norm(inputs + self.attention_dropout_layer(h, training=training))
        h = self.output_dense(self.activation_layer(self.intermediate(x)))
        return self.output_norm(x + self.output_dropout(h, training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "num_heads": self.num_heads,
                "intermediate_size": self.intermediate_size, "key_size": self.key_size,
                "value_size": self.value_size, "talking_heads_pre": self.talking_heads_pre,
                "talking_heads_post": self.talking_heads_post, "dropout": self.dropout,
                "attention_dropout": self.attention_dropout, "activation": self.activation,
                "layer_norm_epsilon": self.layer_norm_epsilon, "initializer_range": self.initializer_range}


@keras.saving.register_keras_serializable(package="lib")
class TransformerEncoder(keras.layers.Layer):
    """A BERT or ALBERT encoder: embeddings, then ``L`` Transformer layers, shared or not.

    With ``embedding_size=None`` and ``share_layers=False`` this is BERT. ALBERT sets ``embedding_size`` (the
    factorised embedding, ``E x H``) and ``share_layers=True``: a single :class:`TransformerBlock` is applied
    ``num_layers`` times. :meth:`unshare` turns an ALBERT into the "ALBERT used as BERT" of the article.

    Args:
        vocabulary_size: number of token ids ``V`` (id 0 is padding).
        hidden_size: width ``H`` of the Transformer layers.
        num_layers: number of layers ``L`` (applications of the block when shared).
        num_heads: number of attention heads.
        intermediate_size: width ``I`` of the feed-forward layers.
        embedding_size: ``E`` of a factorised embedding, or ``None`` for BERT's ``H``-wide embedding.
        max_length: number of learned positions.
        num_segments: number of segment ids (0 for none).
        share_layers: ALBERT's cross-layer sharing.
        dropout: dropout rate of the embeddings and of the residual branches.
        attention_dropout: dropout rate on the attention weights; ``dropout`` when ``None``.
        key_size, value_size, talking_heads_pre, talking_heads_post: passed to every
            :class:`lib.attention.MultiHeadAttention`.
        activation: GELU form (``"tanh"`` as in BERT and ALBERT, or ``"none"`` for the exact erf form).
        layer_norm_epsilon: epsilon of every layer normalisation.
        initializer_range: standard deviation of the truncated-normal initialisation.
        vocabulary: optional list of the ``V`` tokens the ids stand for, kept with the weights so that a
            saved model is self-contained (see :class:`CharTokenizer`).
        **kwargs: standard layer arguments.

    Call arguments:
        token_ids: int tensor ``(batch, length)``.
        segment_ids: optional int tensor ``(batch, length)``.
        padding_mask: optional boolean ``(batch, length)``, true for real tokens; by default
            ``token_ids != 0``.
        training: whether dropout is active.

    Returns:
        The last layer's output, ``(batch, length, H)``.

    Raises:
        ValueError: for sizes that are not positive integers, rates outside [0, 1), or a vocabulary whose
            length is not ``vocabulary_size``.

    Example:

    >>> encoder = TransformerEncoder(vocabulary_size=50, hidden_size=16, num_layers=3, num_heads=2,
    ...                              intermediate_size=32, embedding_size=8, max_length=8, share_layers=True,
    ...                              dropout=0.0)
    >>> token_ids = np.array([[2, 7, 9, 0]])
    >>> untied = encoder.unshare()
    >>> bool(np.array_equal(encoder(token_ids), untied(token_ids)))
    True
    >>> encoder.count_params(), untied.count_params()  # two more blocks of 2,224 parameters
    (2864, 7312)

    Reference:
        Su Jianlin, "抛开约束，增强模型：一行代码提升albert表现", https://kexue.fm/archives/7187 (2020);
        Lan et al., "ALBERT: A Lite BERT for Self-supervised Learning of Language Representations",
        arXiv:1909.11942; Devlin et al., "BERT", arXiv:1810.04805.
    """

    def __init__(self, vocabulary_size, hidden_size, num_layers, num_heads, intermediate_size,
                 embedding_size=None, max_length=512, num_segments=2, share_layers=False, dropout=0.1,
                 attention_dropout=None, key_size=None, value_size=None, talking_heads_pre=False,
                 talking_heads_post=False, activation="tanh", layer_norm_epsilon=1e-12, initializer_range=0.02,
                 vocabulary=None, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = check_positive_int("vocabulary_size", vocabulary_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.embedding_size = check_positive_int("embedding_size", embedding_size, allow_none=True)
        self.share_layers = checks.check_bool("share_layers", share_layers)
        self.dropout = _check_rate("dropout", dropout)
        self.attention_dropout = self.dropout if attention_dropout is None else _check_rate(
            "attention_dropout", attention_dropout)
        if vocabulary is not None:
            vocabulary = checks.check_strings("vocabulary", vocabulary)
            if len(vocabulary) != self.vocabulary_size:
                raise ValueError(f"`vocabulary` must hold vocabulary_size={self.vocabulary_size} tokens. "
                                 f"Received: vocabulary of length {len(vocabulary)}")
        self.vocabulary = vocabulary
        self.embeddings = Embeddings(
            self.vocabulary_size, self.embedding_size or self.hidden_size,
            hidden_size=self.hidden_size if self.embedding_size is not None else None,
            max_length=max_length, num_segments=num_segments, dropout=self.dropout,
            layer_norm_epsilon=layer_norm_epsilon, initializer_range=initializer_range,
            dtype=self.dtype_policy, name="embeddings")
        block = dict(hidden_size=self.hidden_size, num_heads=num_heads, intermediate_size=intermediate_size,
                     key_size=key_size, value_size=value_size, talking_heads_pre=talking_heads_pre,
                     talking_heads_post=talking_heads_post, dropout=self.dropout,
                     attention_dropout=self.attention_dropout, activation=activation,
                     layer_norm_epsilon=layer_norm_epsilon, initializer_range=initializer_range,
                     dtype=self.dtype_policy)
        if self.share_layers:
            self.blocks = [TransformerBlock(name="shared_block", **block)]
        else:
            self.blocks = [TransformerBlock(name=f"block_{i}", **block) for i in range(self.num_layers)]

    @property
    def max_length(self):
        return self.embeddings.max_length

    @property
    def num_segments(self):
        return self.embeddings.num_segments

    def build(self, input_shape=None):
        self.embeddings.build(None)
        for block in self.blocks:
            block.build((None, None, self.hidden_size))

    def layer_weights(self, index):
        """The block that computes layer ``index`` (0-based): the same object for every index when shared."""
        _check_non_negative_int("index", index)
        if index >= self.num_layers:
            raise ValueError(f"`index` must be below num_layers={self.num_layers}. Received: index={index}")
        return self.blocks[0 if self.share_layers else index]

    def call(self, token_ids, segment_ids=None, padding_mask=None, training=None):
        token_ids = _token_ids("token_ids", token_ids)
        if padding_mask is None:
            padding_mask = ops.not_equal(ops.cast(token_ids, "int32"), 0)
        else:
            padding_mask = checks.check_tensor("padding_mask", padding_mask)
            if len(padding_mask.shape) != 2 or not all(
                    a is None or b is None or a == b for a, b in zip(padding_mask.shape, token_ids.shape)):
                raise ValueError("`padding_mask` must have the shape of `token_ids`, (batch, length). Received: "
                                 f"padding_mask.shape={tuple(padding_mask.shape)}, "
                                 f"token_ids.shape={tuple(token_ids.shape)}")
        attention_mask = ops.expand_dims(ops.cast(padding_mask, "bool"), 1)  # (batch, 1, length)
        x = self.embeddings(token_ids, segment_ids, training=training)
        for index in range(self.num_layers):
            x = self.layer_weights(index)(x, attention_mask=attention_mask, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return (*_token_ids_shape(input_shape), self.hidden_size)

    def unshare(self, name=None):
        """Return a copy whose ``L`` layers are independent copies of this encoder's shared layer.

        The copy computes exactly the same function (each of its layers holds the shared weights), has
        ``L - 1`` more blocks of parameters, and its layers move apart once it is trained: the "ALBERT used
        as BERT" of Su Jianlin's article (bert4keras's ``model='albert_unshared'``).

        Args:
            name: name of the new encoder; ``"<name>_unshared"`` by default.

        Returns:
            A built :class:`TransformerEncoder` with ``share_layers=False``.

        Raises:
            ValueError: if this encoder does not share its layers.
        """
        if not self.share_layers:
            raise ValueError("`unshare()` needs an encoder with shared layers. "
                             f"Received: an encoder with share_layers={self.share_layers}")
        if not self.built:
            self.build(None)
        config = self.get_config()
        config.update(share_layers=False, name=name or f"{self.name}_unshared")
        clone = self.__class__.from_config(config)
        clone.build(None)
        for target, source in zip(clone.embeddings.weights, self.embeddings.weights, strict=True):
            target.assign(source)
        for block in clone.blocks:
            for target, source in zip(block.weights, self.blocks[0].weights, strict=True):
                if tuple(target.shape) != tuple(source.shape):  # pragma: no cover - same class, same config
                    raise RuntimeError(f"weight shapes differ: {target.path} {source.path}")
                target.assign(source)
        return clone

    def get_config(self):
        block = self.blocks[0]
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "num_heads": block.num_heads,
                "intermediate_size": block.intermediate_size, "embedding_size": self.embedding_size,
                "max_length": self.max_length, "num_segments": self.num_segments,
                "share_layers": self.share_layers, "dropout": self.dropout,
                "attention_dropout": self.attention_dropout, "key_size": block.key_size,
                "value_size": block.value_size, "talking_heads_pre": block.talking_heads_pre,
                "talking_heads_post": block.talking_heads_post, "activation": block.activation,
                "layer_norm_epsilon": block.layer_norm_epsilon, "initializer_range": block.initializer_range,
                "vocabulary": self.vocabulary}


# --- the two heads --------------------------------------------------------------------------------------------


def _build_encoder_inputs(model, input_shape):
    shape = _token_ids_shape(input_shape) if input_shape is not None else (None, None)
    if not model.encoder.built:
        model.encoder.build(shape)
    return shape


@keras.saving.register_keras_serializable(package="lib")
class MaskedLanguageModel(keras.Model):
    """An encoder with BERT's masked-language-model head, for pre-training.

    The head maps the hidden states at the masked positions back to the vocabulary through the *input*
    embedding table (weights tied as in BERT and ALBERT):
    ``logits = LayerNorm(GELU(h W + b)) W_tok^T + b_out``, with ``W`` of shape ``H x E``.

    Args:
        encoder: a :class:`TransformerEncoder`.
        metadata: an optional JSON-serialisable dict saved with the model (the pre-training recipe and its
            scores, for instance).
        **kwargs: standard model arguments.

    Call arguments:
        inputs: a dict with ``token_ids`` ``(batch, length)``, optional ``segment_ids``, ``padding_mask``,
            and optional ``mask_positions`` ``(batch, M)`` (int): the positions to predict. Without them
            every position is predicted.
        training: whether dropout is active.

    Returns:
        float32 logits ``(batch, M, V)`` (or ``(batch, length, V)``).
    """

    def __init__(self, encoder, metadata=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(encoder, TransformerEncoder):
            raise ValueError(f"`encoder` must be a TransformerEncoder. Received: encoder={encoder!r}")
        self.encoder = encoder
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"`metadata` must be a dict or None. Received: metadata={metadata!r}")
        self.metadata = dict(metadata or {})
        width = encoder.embedding_size or encoder.hidden_size
        block = encoder.blocks[0]
        self.transform = keras.layers.Dense(width, kernel_initializer=_truncated_normal(block.initializer_range),
                                            dtype=self.dtype_policy, name="transform")
        self.transform_activation = GELU(block.activation, dtype=self.dtype_policy, name="transform_gelu")
        self.transform_norm = keras.layers.LayerNormalization(epsilon=block.layer_norm_epsilon,
                                                              dtype=self.dtype_policy, name="transform_norm")

    def build(self, input_shape=None):
        _build_encoder_inputs(self, input_shape)
        width = self.encoder.embedding_size or self.encoder.hidden_size
        self.transform.build((None, None, self.encoder.hidden_size))
        self.transform_norm.build((None, None, width))
        self.output_bias = self.add_weight(shape=(self.encoder.vocabulary_size,), initializer="zeros",
                                           name="output_bias")
        self.built = True

    def call(self, inputs, training=None):
        token_ids, segment_ids, padding_mask, positions = _unpack_inputs(inputs)
        h = self.encoder(token_ids, segment_ids=segment_ids, padding_mask=padding_mask, training=training)
        if positions is not None:
            positions = _token_ids("mask_positions", positions)
            length = token_ids.shape[1] if token_ids.shape[1] is not None else ops.shape(token_ids)[1]
            positions = checks.check_ids("mask_positions", positions, length) if isinstance(length, int) else positions
            h = ops.take_along_axis(h, ops.expand_dims(ops.cast(positions, "int32"), -1), axis=1)
        h = self.transform_norm(self.transform_activation(self.transform(h)))
        table = ops.cast(self.encoder.embeddings.token_embeddings, h.dtype)
        logits = ops.matmul(h, ops.transpose(table)) + ops.cast(self.output_bias, h.dtype)
        return ops.cast(logits, "float32")

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "metadata": self.metadata,
                "encoder": keras.saving.serialize_keras_object(self.encoder)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        return cls(encoder, **config)


class _EncoderWithHead(keras.Model):
    """What the two fine-tuning models share: untying, and a config that holds the encoder.

    Subclasses take ``(encoder, num_classes, dropout=..., **kwargs)`` and name their head's layers in
    ``HEAD_LAYERS``.
    """

    HEAD_LAYERS: tuple = ()

    def unshare(self, name=None):
        """The same model with its encoder untied (:meth:`TransformerEncoder.unshare`), head copied.

        Before any training the two models compute exactly the same outputs.
        """
        if not self.built:
            self.build(None)
        clone = type(self)(self.encoder.unshare(), self.num_classes, dropout=self.dropout,
                           name=name or f"{self.name}_unshared")
        clone.build(None)
        for layer in self.HEAD_LAYERS:
            for target, source in zip(getattr(clone, layer).weights, getattr(self, layer).weights, strict=True):
                target.assign(source)
        return clone

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "num_classes": self.num_classes,
                "dropout": self.dropout, "encoder": keras.saving.serialize_keras_object(self.encoder)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        return cls(encoder, **config)


@keras.saving.register_keras_serializable(package="lib")
class SequenceClassifier(_EncoderWithHead):
    """An encoder with BERT's classification head: ``softmax(Dropout(tanh(h_[CLS] W_p + b_p)) W_c + b_c)``.

    Args:
        encoder: a :class:`TransformerEncoder`.
        num_classes: number of classes.
        dropout: dropout rate before the output layer.
        **kwargs: standard model arguments.

    Call arguments:
        inputs: token ids ``(batch, length)`` (position 0 holds ``[CLS]``), or a dict with ``token_ids`` and
            optional ``segment_ids`` and ``padding_mask``.
        training: whether dropout is active.

    Returns:
        float32 logits ``(batch, num_classes)``.

    Example:

    >>> encoder = TransformerEncoder(vocabulary_size=50, hidden_size=16, num_layers=2, num_heads=2,
    ...                              intermediate_size=32, embedding_size=8, max_length=8, share_layers=True,
    ...                              dropout=0.0)
    >>> model = SequenceClassifier(encoder, num_classes=2)
    >>> untied = model.unshare()
    >>> x = np.array([[2, 7, 9, 0], [2, 5, 0, 0]])
    >>> bool(np.array_equal(model(x), untied(x)))
    True
    """

    HEAD_LAYERS = ("pooler", "logits")

    def __init__(self, encoder, num_classes, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(encoder, TransformerEncoder):
            raise ValueError(f"`encoder` must be a TransformerEncoder. Received: encoder={encoder!r}")
        self.encoder = encoder
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.dropout = _check_rate("dropout", dropout)
        init = encoder.blocks[0].initializer_range
        self.pooler = keras.layers.Dense(encoder.hidden_size, activation="tanh", dtype=self.dtype_policy,
                                         kernel_initializer=_truncated_normal(init), name="pooler")
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy, name="dropout")
        self.logits = keras.layers.Dense(self.num_classes, dtype=self.dtype_policy,
                                         kernel_initializer=_truncated_normal(init), name="logits")

    def build(self, input_shape=None):
        _build_encoder_inputs(self, input_shape)
        self.pooler.build((None, self.encoder.hidden_size))
        self.logits.build((None, self.encoder.hidden_size))
        self.built = True

    def call(self, inputs, training=None):
        token_ids, segment_ids, padding_mask, _ = _unpack_inputs(inputs)
        h = self.encoder(token_ids, segment_ids=segment_ids, padding_mask=padding_mask, training=training)
        pooled = self.pooler(h[:, 0])
        return ops.cast(self.logits(self.dropout_layer(pooled, training=training)), "float32")



@keras.saving.register_keras_serializable(package="lib")
class TokenClassifier(_EncoderWithHead):
    """An encoder with a token-level head, as BERT tags tokens: ``softmax(Dropout(h_t) W + b)`` at every position.

    Args:
        encoder: a :class:`TransformerEncoder`.
        num_classes: number of tags.
        dropout: dropout rate before the output layer.
        **kwargs: standard model arguments.

    Call arguments:
        inputs: token ids ``(batch, length)``, or a dict with ``token_ids`` and optional ``segment_ids`` and
            ``padding_mask``.
        training: whether dropout is active.

    Returns:
        float32 logits ``(batch, length, num_classes)``.

    Example:

    >>> encoder = TransformerEncoder(vocabulary_size=50, hidden_size=16, num_layers=2, num_heads=2,
    ...                              intermediate_size=32, embedding_size=8, max_length=8, share_layers=True,
    ...                              dropout=0.0)
    >>> model = TokenClassifier(encoder, num_classes=5)
    >>> x = np.array([[2, 7, 9, 0], [2, 5, 0, 0]])
    >>> tuple(model(x).shape), bool(np.array_equal(model(x), model.unshare()(x)))
    ((2, 4, 5), True)
    """

    HEAD_LAYERS = ("logits",)

    def __init__(self, encoder, num_classes, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(encoder, TransformerEncoder):
            raise ValueError(f"`encoder` must be a TransformerEncoder. Received: encoder={encoder!r}")
        self.encoder = encoder
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.dropout = _check_rate("dropout", dropout)
        init = encoder.blocks[0].initializer_range
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy, name="dropout")
        self.logits = keras.layers.Dense(self.num_classes, dtype=self.dtype_policy,
                                         kernel_initializer=_truncated_normal(init), name="logits")

    def build(self, input_shape=None):
        _build_encoder_inputs(self, input_shape)
        self.logits.build((None, None, self.encoder.hidden_size))
        self.built = True

    def call(self, inputs, training=None):
        token_ids, segment_ids, padding_mask, _ = _unpack_inputs(inputs)
        h = self.encoder(token_ids, segment_ids=segment_ids, padding_mask=padding_mask, training=training)
        return ops.cast(self.logits(self.dropout_layer(h, training=training)), "float32")



# --- parameter counts -----------------------------------------------------------------------------------------


def parameter_count(vocabulary_size, hidden_size, num_layers, intermediate_size, *, embedding_size=None,
                    max_length=512, num_segments=2, share_layers=False, key_width=None, value_width=None,
                    pooler=True):
    """Number of parameters of a BERT/ALBERT encoder (with its pooler), as a formula.

    With ``E`` the embedding width (``H`` for BERT), ``h k`` and ``h v`` the total query/key and value widths
    (``H`` each in BERT and ALBERT):

    * embeddings: ``(V + P + S) E + 2E``, plus ``E H + H`` for ALBERT's projection;
    * one layer: ``2(H hk + hk) + (H hv + hv) + (hv H + H)`` (attention) ``+ (H I + I) + (I H + H)``
      (feed-forward) ``+ 4H`` (two layer norms); ``4H^2 + 2HI + 9H + I`` in the usual case;
    * layers: one such block when shared, ``L`` otherwise; the pooler adds ``H^2 + H``.

    The arithmetic uses only ``+`` and ``*``, so sympy symbols give the formula itself.

    Args:
        vocabulary_size, hidden_size, num_layers, intermediate_size: ``V``, ``H``, ``L``, ``I``.
        embedding_size: ``E`` for a factorised (ALBERT) embedding; ``None`` for BERT.
        max_length, num_segments: ``P`` and ``S``.
        share_layers: ALBERT's cross-layer sharing.
        key_width, value_width: ``h k`` and ``h v``; ``H`` when ``None``.
        pooler: include the ``H x H`` pooler that BERT and ALBERT checkpoints carry.

    Returns:
        An ``int`` for numbers (a sympy expression for symbols).

    Example:

    >>> parameter_count(30000, 768, 12, 3072, embedding_size=128, share_layers=True)  # albert-base
    11683584
    """
    for name, value in (("vocabulary_size", vocabulary_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers), ("intermediate_size", intermediate_size),
                        ("embedding_size", embedding_size), ("max_length", max_length)):
        if isinstance(value, (bool, str, float, int, np.integer)):  # numbers; sympy symbols give the formula
            (_check_non_negative_int if name == "num_layers" else check_positive_int)(name, value)
    V, H, L, I, P, S = vocabulary_size, hidden_size, num_layers, intermediate_size, max_length, num_segments
    E = H if embedding_size is None else embedding_size
    qk = H if key_width is None else key_width
    vw = H if value_width is None else value_width
    embeddings = (V + P + S) * E + 2 * E + (0 if embedding_size is None else E * H + H)
    attention = 2 * (H * qk + qk) + (H * vw + vw) + (vw * H + H)
    feed_forward = (H * I + I) + (I * H + H)
    block = attention + feed_forward + 2 * (2 * H)
    total = embeddings + (1 if share_layers else L) * block + ((H * H + H) if pooler else 0)
    return int(total) if isinstance(total, (int, np.integer)) else total


ARCHITECTURES = {
    # English checkpoints (ALBERT paper, Table 1; vocabulary 30,000 as in the ALBERT paper's count).
    "bert-base": dict(vocabulary_size=30000, hidden_size=768, num_layers=12, intermediate_size=3072),
    "bert-large": dict(vocabulary_size=30000, hidden_size=1024, num_layers=24, intermediate_size=4096),
    "albert-base": dict(vocabulary_size=30000, hidden_size=768, num_layers=12, intermediate_size=3072,
                        embedding_size=128, share_layers=True),
    "albert-large": dict(vocabulary_size=30000, hidden_size=1024, num_layers=24, intermediate_size=4096,
                         embedding_size=128, share_layers=True),
    "albert-xlarge": dict(vocabulary_size=30000, hidden_size=2048, num_layers=24, intermediate_size=8192,
                          embedding_size=128, share_layers=True),
    "albert-xxlarge": dict(vocabulary_size=30000, hidden_size=4096, num_layers=12, intermediate_size=16384,
                           embedding_size=128, share_layers=True),
    # The Chinese models of the article (brightmart/albert_zh shapes; vocabulary 21,128 of Chinese BERT).
    "bert-base-zh": dict(vocabulary_size=21128, hidden_size=768, num_layers=12, intermediate_size=3072),
    "albert-tiny-zh": dict(vocabulary_size=21128, hidden_size=312, num_layers=4, intermediate_size=1248,
                           embedding_size=128, share_layers=True),
    "albert-small-zh": dict(vocabulary_size=21128, hidden_size=384, num_layers=6, intermediate_size=1536,
                            embedding_size=128, share_layers=True),
}
"""Shapes of the public checkpoints the chapter counts (``max_length`` 512 and 2 segments throughout)."""
