"""Multi-head attention with a free key size and Talking-Heads mixing (chapter "Breaking the bottleneck").

Scaled dot-product attention of one head (Vaswani et al., 2017)::

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V,     Q ∈ R^{n×d_k}, K ∈ R^{m×d_k}, V ∈ R^{m×d_v}

Multi-head attention runs h such heads on projections Q W_Q⁽ⁱ⁾, K W_K⁽ⁱ⁾, V W_V⁽ⁱ⁾ and concatenates
the outputs. Su Jianlin's article (https://kexue.fm/archives/7325, 2020-04-13) discusses two results
about the step P = softmax(Q Kᵀ / √d_k):

* the **low-rank bottleneck** (Bhojanapalli et al., 2020): the logits Q Kᵀ of a head have rank at most
  its key size d_k, and the usual d_k = d/h is small; the fix is to choose ``key_size`` independently
  of ``hidden_size / num_heads``;
* **Talking-Heads attention** (Shazeer et al., 2020): mix the h logit maps with a learned h×h matrix λ
  before the softmax, J⁽ⁱ⁾ = Σⱼ λᵢⱼ Ĵ⁽ʲ⁾ with Ĵ⁽ʲ⁾ = Q⁽ʲ⁾K⁽ʲ⁾ᵀ (and, optionally, the h weight maps with a
  second matrix after it), so that each head sees a combination of h low-rank maps.

:class:`MultiHeadAttention` does both, and with both switched off and ``key_size = value_size = d/h``
it computes exactly what ``keras.layers.MultiHeadAttention`` computes (a unit test copies the weights
across and compares). The module also has the counting formulas of the chapter
(:func:`parameter_count`, :func:`flop_count`) and its fitting experiment (:func:`fit_attention_maps`).
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from lib import checks
from lib.checks import check_positive_int

LARGE_NEGATIVE = -1e9
"""Logit given to masked positions. Masking happens in float32 or wider (see
:meth:`MultiHeadAttention.attention_logits`)."""


_check_bool = checks.check_bool


def _output_shape(output_shape):
    """``None``, or a tuple of positive integers from an integer or a sequence of them (as in Keras)."""
    if output_shape is None:
        return None
    if isinstance(output_shape, (int, np.integer)) and not isinstance(output_shape, bool):
        return (check_positive_int("output_shape", output_shape),)
    if isinstance(output_shape, (list, tuple)) and output_shape and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in output_shape):
        return tuple(int(d) for d in output_shape)
    raise ValueError("`output_shape` must be a positive integer, a non-empty tuple of them, or None. "
                     f"Received: output_shape={output_shape!r}")


def _attention_axes(attention_axes):
    """``None``, or a tuple of distinct integers from an integer or a sequence of them (as in Keras)."""
    if attention_axes is None:
        return None
    axes = (attention_axes,) if isinstance(attention_axes, (int, np.integer)) else attention_axes
    if (not isinstance(axes, (list, tuple)) or not axes or any(
            isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in axes)
            or len(set(int(a) for a in axes)) != len(axes)):
        raise ValueError("`attention_axes` must be an integer, a non-empty tuple of distinct integers, or None. "
                         f"Received: attention_axes={attention_axes!r}")
    return tuple(int(a) for a in axes)


def _product(sizes):
    """The product of static (int) and dynamic (scalar tensor) sizes: an int when all are ints."""
    total = 1
    for size in sizes:
        total = total * size
    return total


def _clone_initializer(initializer):
    """A fresh copy of an initializer, so that no two weights share one (as Keras's own layer does)."""
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())


@keras.saving.register_keras_serializable(package="lib")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention whose key size, value size and head mixing are chosen independently.

    For inputs ``query`` (B, T, d_q), ``value`` (B, S, d_v) and ``key`` (B, S, d_k), head ``i`` computes

        Ĵ⁽ⁱ⁾ = (query W_Q⁽ⁱ⁾ + b_Q⁽ⁱ⁾)(key W_K⁽ⁱ⁾ + b_K⁽ⁱ⁾)ᵀ / √key_size              (T × S, rank ≤ key_size)
        J⁽ⁱ⁾ = Σⱼ λᵢⱼ Ĵ⁽ʲ⁾            (talking heads before the softmax; else J⁽ⁱ⁾ = Ĵ⁽ⁱ⁾)
        P̂⁽ⁱ⁾ = softmax(J⁽ⁱ⁾ masked)   (row-wise over S)
        P⁽ⁱ⁾ = Σⱼ μᵢⱼ P̂⁽ʲ⁾            (talking heads after the softmax; else P⁽ⁱ⁾ = P̂⁽ⁱ⁾)
        O⁽ⁱ⁾ = dropout(P⁽ⁱ⁾) (value W_V⁽ⁱ⁾ + b_V⁽ⁱ⁾)                                  (T × value_size)

    and the output is ``[O⁽¹⁾, ..., O⁽ʰ⁾] W_O + b_O``. The mixing weights are stored as kernels that map head j to
    head i: λᵢⱼ = ``talking_heads_pre_kernel[j, i]`` and μᵢⱼ = ``talking_heads_post_kernel[j, i]``.

    The article's point is the rank bound in the first line: with the customary ``key_size = d / h`` a head cannot express an arbitrary T × S
    attention pattern once ``key_size`` is below the sequence length.

    Args:
        num_heads: number of heads h.
        key_size: width of each head's queries and keys (d_k). Not tied to ``d / h``.
        value_size: width of each head's values; defaults to ``key_size``.
        output_dim: width of the output projection; defaults to the last dimension of ``query``.
        talking_heads_pre: learn an h×h mixing λ of the logits before the softmax.
        talking_heads_post: learn an h×h mixing μ of the attention weights after the softmax.
        dropout: dropout rate on the attention weights (in training mode).
        use_bias: whether the four projections have biases.
        kernel_initializer, bias_initializer: initializers of the projections (as in Keras).
        talking_heads_initializer: initializer of λ and μ; the identity (the default) makes a fresh
            talking-heads layer compute exactly what the plain layer computes.
        seed: seed of the dropout; two layers with the same seed drop the same entries.
        kernel_regularizer, bias_regularizer: regularizers of the four projections' kernels and biases (as in
            Keras; ``activity_regularizer`` is a standard layer argument).
        kernel_constraint, bias_constraint: constraints of the same weights.
        output_shape: as in ``keras.layers.MultiHeadAttention``: the shape of each output position, an integer
            or a tuple (the output is then (B, T, *output_shape)). An integer ``n`` is ``output_dim=n``.
        attention_axes: the axes of the inputs that attention runs over, as in ``keras.layers.MultiHeadAttention``:
            an integer or a tuple of them, counted on the inputs (negative from the end); ``None`` (the default)
            means every axis between the batch and the features. Each position of the other axes (the batch
            included) attends on its own; over several axes the softmax is joint (one distribution over all key
            positions). See "Inputs of rank > 3" below.
        **kwargs: standard layer arguments (``name``, ``dtype``...).

    Inputs of rank > 3 (``attention_axes``): ``query`` (B, *other, *T, d_q) and ``value`` (B, *other, *S, d_v)
    in any order of axes, where *T and *S are the attention axes and *other the rest, equal in query, key and
    value. The layer computes exactly what it computes for rank 3 on the flattened problem: batch B·∏other,
    T = ∏T positions, S = ∏S positions (row-major order). So the weights are the same for every rank (and
    ``set_weights`` from a Keras layer works as for rank 3); the scores come back in Keras's layout (B, *other,
    h, *T, *S); an ``attention_mask`` is broadcastable to (B, *other, *T, *S) (at least the rank of *T *S), or
    to (B, *other, h, *T, *S) per head; Keras masks of the inputs have their shape without the features;
    ``use_causal_mask`` forbids key positions after the query position in that row-major order (for one
    attention axis: causal along it); talking heads mix the h heads' maps at every (query position, key
    position) pair, as for rank 3.

    Call arguments:
        query: (B, T, d_q).
        value: (B, S, d_v).
        key: (B, S, d_k); defaults to ``value``.
        attention_mask: bool or 0/1 tensor broadcastable to (B, T, S) (rank 2 means (T, S)), or a per-head
            mask broadcastable to (B, h, T, S); True/1 marks the pairs that may attend. Keras masks on ``query``, ``value`` and ``key`` (for
            example from ``Embedding(mask_zero=True)``) are combined with it the way
            ``keras.layers.MultiHeadAttention`` combines them. A query row with nothing to attend to
            gets all-zero weights.
        use_causal_mask: also forbid position t to attend to positions s > t.
        return_attention_scores: also return the attention weights P (B, h, T, S), before dropout.
        training: whether dropout is active.

    Returns:
        (B, T, output_dim), or ``(output, scores)`` with ``return_attention_scores=True``.

    Raises:
        ValueError: for sizes that are not positive integers, a dropout rate outside [0, 1), inputs of rank
            below 3 or of different ranks, ``attention_axes`` that are not axes between the batch and the
            features, ``key`` and ``value`` of different lengths, or an ``attention_mask`` that does not
            broadcast to (B, T, S).

    Example:

    >>> import numpy as np
    >>> layer = MultiHeadAttention(num_heads=2, key_size=8, value_size=4, talking_heads_pre=True)
    >>> x = np.random.default_rng(0).normal(size=(3, 5, 16)).astype("float32")
    >>> output, scores = layer(x, x, return_attention_scores=True)
    >>> tuple(output.shape), tuple(scores.shape)
    ((3, 5, 16), (3, 2, 5, 5))
    >>> bool(np.allclose(np.asarray(scores).sum(-1), 1.0, atol=1e-6))
    True

    The weights are created in the order and shapes of ``keras.layers.MultiHeadAttention``
    (query, key, value and output kernels and biases), then λ and μ, so
    ``layer.set_weights(keras_layer.get_weights())`` copies a Keras layer into a plain one.

    Reference:
        Su Jianlin, "突破瓶颈，打造更强大的Transformer", https://kexue.fm/archives/7325 (2020);
        Bhojanapalli et al., "Low-Rank Bottleneck in Multi-head Attention Models", arXiv:2002.07028;
        Shazeer et al., "Talking-Heads Attention", arXiv:2003.02436.
    """

    def __init__(self, num_heads, key_size, value_size=None, output_dim=None, talking_heads_pre=False,
                 talking_heads_post=False, dropout=0.0, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", talking_heads_initializer="identity", seed=None, kernel_regularizer=None,
                 bias_regularizer=None, kernel_constraint=None, bias_constraint=None, output_shape=None,
                 attention_axes=None, **kwargs):
        super().__init__(**kwargs)
        self.attention_axes = _attention_axes(attention_axes)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.key_size = check_positive_int("key_size", key_size)
        value_size = check_positive_int("value_size", value_size, allow_none=True)
        self.value_size = self.key_size if value_size is None else value_size
        self.output_dim = check_positive_int("output_dim", output_dim, allow_none=True)
        self.output_shape_ = _output_shape(output_shape)
        if self.output_shape_ is not None:
            if self.output_dim is not None and self.output_shape_ != (self.output_dim,):
                raise ValueError("`output_dim` and `output_shape` say different things: give one of them. "
                                 f"Received: output_dim={output_dim!r}, output_shape={output_shape!r}")
            if len(self.output_shape_) == 1:
                self.output_dim = self.output_shape_[0]
        self.talking_heads_pre = _check_bool("talking_heads_pre", talking_heads_pre)
        self.talking_heads_post = _check_bool("talking_heads_post", talking_heads_post)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be a number in [0, 1). Received: dropout={dropout!r}")
        self.dropout = float(dropout)
        self.use_bias = _check_bool("use_bias", use_bias)
        get = checks.get_keras_object
        self.kernel_initializer = get("kernel_initializer", keras.initializers.get, kernel_initializer)
        self.bias_initializer = get("bias_initializer", keras.initializers.get, bias_initializer)
        self.talking_heads_initializer = get("talking_heads_initializer", keras.initializers.get,
                                             talking_heads_initializer)
        self.kernel_regularizer = get("kernel_regularizer", keras.regularizers.get, kernel_regularizer)
        self.bias_regularizer = get("bias_regularizer", keras.regularizers.get, bias_regularizer)
        self.kernel_constraint = get("kernel_constraint", keras.constraints.get, kernel_constraint)
        self.bias_constraint = get("bias_constraint", keras.constraints.get, bias_constraint)
        self.seed = checks.check_int("seed", seed, minimum=0, allow_none=True)
        self.supports_masking = True
        self.dropout_layer = (keras.layers.Dropout(self.dropout, seed=seed, dtype=self.dtype_policy, name="dropout")
                              if self.dropout > 0 else None)

    # --- weights ------------------------------------------------------------------------------------

    def build(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        self._check_shapes(query_shape, value_shape, key_shape, where=".shape")
        h, k, v = self.num_heads, self.key_size, self.value_size
        output_dim = self._output_tail(query_shape)

        def kernel(name, shape):
            return self.add_weight(name=name, shape=shape, initializer=_clone_initializer(self.kernel_initializer),
                                   regularizer=self.kernel_regularizer, constraint=self.kernel_constraint)

        def bias(name, shape):
            if not self.use_bias:
                return None
            return self.add_weight(name=name, shape=shape, initializer=_clone_initializer(self.bias_initializer),
                                   regularizer=self.bias_regularizer, constraint=self.bias_constraint)

        # The order and shapes of keras.layers.MultiHeadAttention's weights (query, key, value, output).
        self.query_kernel, self.query_bias = kernel("query_kernel", (query_shape[-1], h, k)), bias("query_bias", (h, k))
        self.key_kernel, self.key_bias = kernel("key_kernel", (key_shape[-1], h, k)), bias("key_bias", (h, k))
        self.value_kernel, self.value_bias = kernel("value_kernel", (value_shape[-1], h, v)), bias("value_bias", (h, v))
        self.output_kernel = kernel("output_kernel", (h, v, *output_dim))
        self.output_bias = bias("output_bias", output_dim)
        self.talking_heads_pre_kernel = self.talking_heads_post_kernel = None
        if self.talking_heads_pre:
            self.talking_heads_pre_kernel = self.add_weight(
                name="talking_heads_pre", shape=(h, h), initializer=_clone_initializer(self.talking_heads_initializer))
        if self.talking_heads_post:
            self.talking_heads_post_kernel = self.add_weight(
                name="talking_heads_post", shape=(h, h), initializer=_clone_initializer(self.talking_heads_initializer))

    def _check_shapes(self, query_shape, value_shape, key_shape, where):
        """Ranks (at least 3, all equal), known features, ``attention_axes`` that fit, and key/value agreement."""
        shapes = (("query", tuple(query_shape)), ("value", tuple(value_shape)), ("key", tuple(key_shape)))
        for name, shape in shapes:
            if len(shape) < 3 or shape[-1] is None:
                raise ValueError(f"`{name}` must have shape (batch, length, features) with known features (or "
                                 f"more axes between batch and features). Received: {name}{where}={shape}")
        rank = len(shapes[0][1])
        for name, shape in shapes[1:]:
            if len(shape) != rank:
                raise ValueError(f"`{name}` must have the rank of `query` ({rank}). "
                                 f"Received: query{where}={shapes[0][1]}, {name}{where}={shape}")
        value_shape, key_shape = shapes[1][1], shapes[2][1]
        if rank == 3:
            if None not in (value_shape[1], key_shape[1]) and value_shape[1] != key_shape[1]:
                raise ValueError("`key` and `value` must have the same length (axis 1). "
                                 f"Received: key{where}={key_shape}, value{where}={value_shape}")
        elif not all(None in (a, b) or a == b for a, b in zip(value_shape[1:-1], key_shape[1:-1])):
            raise ValueError("All dimensions of `value` and `key`, except the last one, must be equal. "
                             f"Received: value{where}={value_shape} and key{where}={key_shape}")
        axes = self._axes(rank)
        for name, shape in shapes[1:]:
            for axis in range(1, rank - 1):
                if axis not in axes and None not in (shape[axis], shapes[0][1][axis]) and (
                        shape[axis] != shapes[0][1][axis]):
                    raise ValueError(f"`{name}` must match `query` on the axes that attention does not run over "
                                     f"(attention_axes={axes}): axis {axis} differs. Received: "
                                     f"query{where}={shapes[0][1]}, {name}{where}={shape}")
        return axes

    def _axes(self, rank):
        """The attention axes for inputs of ``rank``, non-negative, in the order given."""
        if self.attention_axes is None:
            return tuple(range(1, rank - 1))
        axes = tuple(a + rank if a < 0 else a for a in self.attention_axes)
        if any(not 1 <= a <= rank - 2 for a in axes):
            raise ValueError(f"`attention_axes` must name axes between the batch axis and the features axis: for "
                             f"inputs of rank {rank}, integers in [1, {rank - 2}] or [{1 - rank}, -2]. Received: "
                             f"attention_axes={self.attention_axes}")
        if len(set(axes)) != len(axes):
            raise ValueError(f"`attention_axes` must name each axis once. Received: attention_axes="
                             f"{self.attention_axes} for inputs of rank {rank}")
        return axes

    def _output_tail(self, query_shape):
        """The shape of one output position: ``output_shape``, or ``(output_dim or query's width,)``."""
        if self.output_shape_ is not None:
            return self.output_shape_
        return (self.output_dim or query_shape[-1],)

    # --- the computation ------------------------------------------------------------------------------

    def __call__(self, query=None, value=None, *args, **kwargs):
        checked = [("query", query)]
        if type(self).call is MultiHeadAttention.call:  # a subclass may call with the query alone
            checked.append(("value", value))
        for name, tensor in checked:
            if tensor is None:
                raise TypeError(f"`{name}` must be a tensor of shape (batch, length, features), not None. "
                                f"Received: {name}=None")
        if value is None:
            return super().__call__(query, *args, **kwargs)
        return super().__call__(query, value, *args, **kwargs)

    @staticmethod
    def _project(x, kernel, bias):
        """(B, L, d) @ (d, h, w) + (h, w) -> (B, h, L, w): one matrix product for all heads."""
        d, h, w = kernel.shape
        y = ops.matmul(x, ops.reshape(kernel, (d, h * w)))
        if bias is not None:
            y = y + ops.reshape(bias, (h * w,))
        y = ops.reshape(y, (ops.shape(x)[0], ops.shape(x)[1], h, w))
        return ops.transpose(y, (0, 2, 1, 3))

    @staticmethod
    def _mix_heads(maps, kernel):
        """Σⱼ kernel[j, i] maps[:, j] for every head i: (B, h, T, S) -> (B, h, T, S), one batched matmul."""
        shape = ops.shape(maps)
        flat = ops.reshape(maps, (shape[0], shape[1], shape[2] * shape[3]))
        mixed = ops.matmul(ops.cast(ops.transpose(kernel), flat.dtype), flat)
        return ops.reshape(mixed, shape)

    def attention_logits(self, query, key):
        """The logits J = λ·(Q Kᵀ / √key_size) of every head, before masking: (B, h, T, S), float32 or wider.

        Without talking heads each map is one head's Q⁽ⁱ⁾K⁽ⁱ⁾ᵀ, of rank at most ``key_size``; with
        ``talking_heads_pre`` it is a combination of all h of them, of rank at most h·key_size. Called
        on a layer that is not built yet, it builds the layer (with values shaped like the keys).
        """
        if not self.built:
            self.build(tuple(query.shape), tuple(key.shape))
        q = self._project(query, self.query_kernel, self.query_bias)  # (B, h, T, k)
        k = self._project(key, self.key_kernel, self.key_bias)  # (B, h, S, k)
        q = q * ops.cast(1.0 / math.sqrt(self.key_size), q.dtype)
        logits = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # (B, h, T, S)
        # Masking and the softmax run in float32 at least, also under mixed precision (as Keras's kernels do).
        if keras.backend.standardize_dtype(logits.dtype) in ("float16", "bfloat16"):
            logits = ops.cast(logits, "float32")
        if self.talking_heads_pre_kernel is not None:
            logits = self._mix_heads(logits, self.talking_heads_pre_kernel)
        return logits

    def attention_weights(self, logits, mask=None):
        """Masked softmax of the logits over the keys, then the post-softmax head mixing: (B, h, T, S).

        ``mask`` is a bool tensor broadcastable to (B, 1, T, S). Masked positions get weight 0, and a row
        with every position masked gets all zeros (not a uniform distribution over padding).
        """
        if mask is not None:
            logits = ops.where(mask, logits, ops.cast(LARGE_NEGATIVE, logits.dtype))
        weights = ops.softmax(logits, axis=-1)
        if mask is not None:
            weights = ops.where(mask, weights, ops.cast(0.0, weights.dtype))
        if self.talking_heads_post_kernel is not None:
            weights = self._mix_heads(weights, self.talking_heads_post_kernel)
        return weights

    def call(self, query, value, key=None, attention_mask=None, use_causal_mask=False,
             return_attention_scores=False, training=None, query_mask=None, value_mask=None, key_mask=None):
        if key is None:
            key = value
        _check_bool("use_causal_mask", use_causal_mask)
        _check_bool("return_attention_scores", return_attention_scores)
        for name, tensor, kernel in (("query", query, self.query_kernel), ("value", value, self.value_kernel),
                                     ("key", key, self.key_kernel)):
            if len(tensor.shape) < 3 or tensor.shape[-1] != kernel.shape[0]:
                raise ValueError(f"`{name}` must have shape (batch, length, {kernel.shape[0]}), as when the layer "
                                 f"was built. Received: {name}.shape={tuple(tensor.shape)}")
        axes = self._check_shapes(query.shape, value.shape, key.shape, where=".shape")
        if len(query.shape) == 3:
            return self._attend(query, value, key, attention_mask, use_causal_mask, return_attention_scores, training,
                                query_mask, value_mask, key_mask)
        return self._attend_over_axes(axes, query, value, key, attention_mask, use_causal_mask,
                                      return_attention_scores, training, query_mask, value_mask, key_mask)

    def _attend_over_axes(self, axes, query, value, key, attention_mask, use_causal_mask, return_attention_scores,
                          training, query_mask, value_mask, key_mask):
        """Rank > 3: move the attention axes next to the features, flatten to (B·∏other, ∏T, d), attend as for
        rank 3, and put the output (and the scores, in Keras's layout) back."""
        rank = len(query.shape)
        others = [a for a in range(rank - 1) if a not in axes]  # the batch axis and the axes not attended over
        order = others + list(axes)
        nb, n = len(others), len(axes)

        def sizes(x):
            shape = ops.shape(x)
            return [shape[a] for a in order]

        def flatten(x, features=True):
            size = sizes(x)
            x = ops.transpose(x, order + ([rank - 1] if features else []))
            tail = [x.shape[-1]] if features else []
            return ops.reshape(x, [_product(size[:nb]), _product(size[nb:])] + tail)

        q_sizes, s_sizes = sizes(query), sizes(value)
        flat_masks = []
        for name, extra, tensor in (("query_mask", query_mask, query), ("value_mask", value_mask, value),
                                    ("key_mask", key_mask, key)):
            if extra is not None:
                extra = checks.check_tensor(name, extra)
                expected = tuple(tensor.shape[:-1])
                if len(extra.shape) != rank - 1 or not all(
                        None in (m, e) or m == e for m, e in zip(extra.shape, expected)):
                    raise ValueError(f"`{name}` must have the shape of its input without the features, {expected}. "
                                     f"Received: {name}.shape={tuple(extra.shape)}")
                extra = flatten(extra, features=False)
            flat_masks.append(extra)
        if attention_mask is not None:
            attention_mask = self._flat_attention_mask(attention_mask, query, value, order, nb, n, q_sizes, s_sizes)
        result = self._attend(flatten(query), flatten(value), flatten(key), attention_mask, use_causal_mask,
                              return_attention_scores, training, *flat_masks)
        output, scores = result if return_attention_scores else (result, None)
        tail = list(output.shape[2:])
        output = ops.reshape(output, q_sizes + tail)  # (B, *other, *T, *tail) in `order`
        inverse = [order.index(a) for a in range(rank - 1)]
        output = ops.transpose(output, inverse + list(range(rank - 1, rank - 1 + len(tail))))
        if not return_attention_scores:
            return output
        scores = ops.reshape(scores, q_sizes[:nb] + [self.num_heads] + q_sizes[nb:] + s_sizes[nb:])
        return output, scores

    def _flat_attention_mask(self, attention_mask, query, value, order, nb, n, q_sizes, s_sizes):
        """An ``attention_mask`` for (B, *other, [h,] *T, *S), checked, broadcast and flattened to rank 3 or 4."""
        attention_mask = checks.check_tensor("attention_mask", attention_mask)
        batch = tuple(query.shape[a] for a in order[:nb])
        positions = tuple(query.shape[a] for a in order[nb:]) + tuple(value.shape[a] for a in order[nb:])
        rank = len(attention_mask.shape)
        per_head = rank == nb + 1 + 2 * n
        expected = batch + ((self.num_heads,) if per_head else ()) + positions
        # As Keras reads it: a mask of rank 2n + k holds the first k of (batch, *other); the rest broadcast.
        leading = rank - 2 * n if not per_head else nb + 1
        covered = expected[:leading] + expected[len(expected) - 2 * n:]
        if not (per_head or 2 * n <= rank <= nb + 2 * n) or not all(
                m is None or e is None or m in (1, e) for m, e in zip(attention_mask.shape, covered)):
            what = "of rank {} (one mask per head) ".format(rank) if per_head else ""
            layout = "(batch, *other axes, num_heads, *query axes, *key axes)" if per_head else (
                "(batch, *other axes, *query axes, *key axes)")
            raise ValueError(f"`attention_mask` {what}must be broadcastable to {layout}={expected}, or hold the "
                             f"query and key axes and only the first of the others, as in Keras (attention over "
                             f"{n} axis(es); rank {2 * n} to {nb + 2 * n}, or {nb + 1 + 2 * n} per head). "
                             f"Received: attention_mask.shape={tuple(attention_mask.shape)}")
        mask = ops.cast(attention_mask, "bool")
        shape = list(ops.shape(mask))
        mask = ops.reshape(mask, shape[:leading] + [1] * (len(expected) - rank) + shape[leading:])
        full = q_sizes[:nb] + ([self.num_heads] if per_head else []) + q_sizes[nb:] + s_sizes[nb:]
        mask = ops.broadcast_to(mask, full)
        flat = [_product(q_sizes[:nb])] + ([self.num_heads] if per_head else []) + [
            _product(q_sizes[nb:]), _product(s_sizes[nb:])]
        return ops.reshape(mask, flat)

    def _attend(self, query, value, key, attention_mask, use_causal_mask, return_attention_scores, training,
                query_mask, value_mask, key_mask):
        """Attention for rank-3 inputs (B, T, d): the whole computation of the class docstring."""
        mask = self._combined_mask(query, value, attention_mask, use_causal_mask, query_mask, value_mask, key_mask)
        weights = self.attention_weights(self.attention_logits(query, key), mask)  # (B, h, T, S), float32+
        weights = ops.cast(weights, self.compute_dtype)
        dropped = weights if self.dropout_layer is None else self.dropout_layer(weights, training=training)
        v = self._project(value, self.value_kernel, self.value_bias)  # (B, h, S, v)
        heads = ops.transpose(ops.matmul(dropped, v), (0, 2, 1, 3))  # (B, T, h, v)
        h, vs, *tail = self.output_kernel.shape
        output_dim = math.prod(tail)
        heads = ops.reshape(heads, (ops.shape(heads)[0], ops.shape(heads)[1], h * vs))
        output = ops.matmul(heads, ops.reshape(self.output_kernel, (h * vs, output_dim)))
        if self.output_bias is not None:
            output = output + (self.output_bias if len(tail) == 1 else ops.reshape(self.output_bias, (output_dim,)))
        if len(tail) > 1:
            output = ops.reshape(output, (ops.shape(output)[0], ops.shape(output)[1], *tail))
        if return_attention_scores:
            return output, weights
        return output

    def _combined_mask(self, query, value, attention_mask, use_causal_mask, query_mask, value_mask, key_mask):
        """AND of every mask that applies, as bool (B or 1, h or 1, T, S); None when nothing is masked."""
        length_q, length_s = query.shape[1], value.shape[1]
        batch = query.shape[0]
        mask = per_head = None

        def fits(shape, expected):
            return all(m is None or e is None or m in (1, e) for m, e in zip(shape[::-1], expected[::-1]))

        if attention_mask is not None:
            attention_mask = checks.check_tensor("attention_mask", attention_mask)
            expected = (batch, length_q, length_s)
            rank = len(attention_mask.shape)
            if rank == 4:
                expected = (batch, self.num_heads, length_q, length_s)
            if rank == 4 and not fits(attention_mask.shape, expected):
                raise ValueError(
                    "`attention_mask` of rank 4 (one mask per head) must be broadcastable to (batch, num_heads, "
                    f"query_length, value_length)={expected}. Received: attention_mask.shape="
                    f"{tuple(attention_mask.shape)}")
            if rank not in (2, 3, 4) or not fits(attention_mask.shape, expected):
                raise ValueError(
                    "`attention_mask` must be broadcastable to (batch, query_length, value_length)="
                    f"{expected}. Received: attention_mask.shape={tuple(attention_mask.shape)}")
            if rank == 4:
                per_head = ops.cast(attention_mask, "bool")
            else:
                mask = ops.cast(attention_mask, "bool")
                if rank == 2:
                    mask = mask[None]
        for name, extra, length in (("query_mask", query_mask, length_q), ("value_mask", value_mask, length_s),
                                    ("key_mask", key_mask, length_s)):
            if extra is not None and (len(extra.shape) != 2 or not fits(extra.shape, (batch, length))):
                raise ValueError(f"`{name}` must have shape (batch, length)={(batch, length)}. "
                                 f"Received: {name}.shape={tuple(extra.shape)}")
        if query_mask is not None:  # (B, T) -> (B, T, 1)
            mask = self._and(mask, ops.cast(query_mask, "bool")[:, :, None])
        for extra in (value_mask, key_mask):  # (B, S) -> (B, 1, S)
            if extra is not None:
                mask = self._and(mask, ops.cast(extra, "bool")[:, None, :])
        if use_causal_mask:
            rows = ops.arange(ops.shape(query)[1])[:, None]
            cols = ops.arange(ops.shape(value)[1])[None, :]
            mask = self._and(mask, ops.greater_equal(rows, cols)[None])
        mask = None if mask is None else mask[:, None]  # a head axis: (B, 1, T, S)
        return per_head if mask is None else (mask if per_head is None else ops.logical_and(mask, per_head))

    @staticmethod
    def _and(mask, other):
        return other if mask is None else ops.logical_and(mask, other)

    # --- Keras plumbing -----------------------------------------------------------------------------------

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        query_shape, value_shape = tuple(query_shape), tuple(value_shape)
        key_shape = value_shape if key_shape is None else tuple(key_shape)
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            if len(shape) < 3 or len(shape) != len(query_shape):
                raise ValueError(f"`{name}` must have shape (batch, length, features) (or more axes between batch "
                                 f"and features), all of one rank. Received: {name}_shape={shape}")
        self._axes(len(query_shape))
        if value_shape[1:-1] != key_shape[1:-1]:
            raise ValueError("All dimensions of `value` and `key`, except the last one, must be equal. "
                             f"Received: value_shape={value_shape} and key_shape={key_shape}")
        return (*query_shape[:-1], *self._output_tail(query_shape))

    def compute_output_spec(self, query, value, key=None, attention_mask=None, use_causal_mask=False,
                            return_attention_scores=False, training=None, query_mask=None, value_mask=None,
                            key_mask=None):
        key_shape = None if key is None else key.shape
        output = keras.KerasTensor(self.compute_output_shape(query.shape, value.shape, key_shape),
                                   dtype=self.compute_dtype)
        if return_attention_scores:
            rank = len(query.shape)
            axes = self._axes(rank)
            others = [a for a in range(rank - 1) if a not in axes]
            scores_shape = (*(query.shape[a] for a in others), self.num_heads, *(query.shape[a] for a in axes),
                            *(value.shape[a] for a in axes))
            return output, keras.KerasTensor(scores_shape, dtype=self.compute_dtype)
        return output

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_size": self.key_size,
            "value_size": self.value_size,
            "output_dim": self.output_dim,
            "talking_heads_pre": self.talking_heads_pre,
            "talking_heads_post": self.talking_heads_post,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "talking_heads_initializer": keras.initializers.serialize(self.talking_heads_initializer),
            "seed": self.seed,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            "output_shape": None if self.output_shape_ is None else list(self.output_shape_),
            "attention_axes": None if self.attention_axes is None else list(self.attention_axes),
        }


# ---------------------------------------------------------------------------------------------------
# Counting: parameters and FLOPs, as formulas (they accept sympy symbols as well as integers).
# ---------------------------------------------------------------------------------------------------


def _sizes(**sizes):
    """Numbers among the sizes must be positive integers; sympy symbols (anything else) pass as formulas."""
    for name, value in sizes.items():
        if value is not None and (isinstance(value, (bool, str, float)) or isinstance(value, (int, np.integer))):
            check_positive_int(name, value)


def parameter_count(hidden_size, num_heads, key_size, value_size=None, output_dim=None, *,
                    talking_heads_pre=False, talking_heads_post=False, use_bias=True):
    """Number of weights of :class:`MultiHeadAttention` for self-attention on width ``hidden_size``.

    With d = hidden_size, h heads, key size k, value size v and output width o (default d):
    ``2(d h k + h k) + (d h v + h v) + (h v o + o)`` with biases, plus h² for each talking-heads matrix.
    Integers give an integer; sympy symbols give the formula.

    Example:

    >>> parameter_count(768, 12, 64)  # one BERT-base attention layer
    2362368
    """
    _sizes(hidden_size=hidden_size, num_heads=num_heads, key_size=key_size, value_size=value_size,
           output_dim=output_dim)
    value_size = key_size if value_size is None else value_size
    output_dim = hidden_size if output_dim is None else output_dim
    h, k, v = num_heads, key_size, value_size
    bias = 1 if use_bias else 0
    count = 2 * (hidden_size * h * k + bias * h * k)  # queries and keys
    count += hidden_size * h * v + bias * h * v  # values
    count += h * v * output_dim + bias * output_dim  # output projection
    count += (int(bool(talking_heads_pre)) + int(bool(talking_heads_post))) * h * h
    return count


def flop_count(query_length, hidden_size, num_heads, key_size, value_size=None, output_dim=None, *,
               key_length=None, talking_heads_pre=False, talking_heads_post=False):
    """Floating-point operations of one forward pass for one sequence (2 per multiply-add).

    Counts the matrix products, which dominate: the three input projections, the logits (h·T·S·k
    multiply-adds), the weighted sum of values (h·T·S·v), each talking-heads mixing (h²·T·S) and the
    output projection. Softmax, biases and masking are O(h·T·S) and left out. Integers or sympy symbols.

    Example:

    >>> flop_count(128, 768, 12, 64) / 1e9  # one BERT-base attention layer, 128 tokens
    0.654311424
    """
    _sizes(query_length=query_length, hidden_size=hidden_size, num_heads=num_heads, key_size=key_size,
           value_size=value_size, output_dim=output_dim, key_length=key_length)
    value_size = key_size if value_size is None else value_size
    output_dim = hidden_size if output_dim is None else output_dim
    t = query_length
    s = query_length if key_length is None else key_length
    h, k, v, d = num_heads, key_size, value_size, hidden_size
    multiply_adds = t * d * h * k + s * d * h * k + s * d * h * v  # projections of queries, keys, values
    multiply_adds += h * t * s * k + h * t * s * v  # Q Kᵀ and P V
    multiply_adds += (int(bool(talking_heads_pre)) + int(bool(talking_heads_post))) * h * h * t * s
    multiply_adds += t * h * v * output_dim  # output projection
    return 2 * multiply_adds


# ---------------------------------------------------------------------------------------------------
# The chapter's experiment: can h heads of a given key size reproduce given attention maps?
# ---------------------------------------------------------------------------------------------------


def random_attention_maps(num_maps, length, *, temperature=1.0, seed=0):
    """Row-stochastic target maps softmax(G / temperature), G with i.i.d. standard normal entries.

    Their log-maps are full rank (up to the row shift that the softmax ignores): the kind of pattern
    that a head of small key size cannot express. Returns float32 (num_maps, length, length).
    """
    num_maps = check_positive_int("num_maps", num_maps)
    length = check_positive_int("length", length)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) or not (
            0 < temperature < math.inf):
        raise ValueError(f"`temperature` must be positive. Received: temperature={temperature!r}")
    logits = np.random.default_rng(seed).normal(size=(num_maps, length, length)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    maps = np.exp(logits)
    return (maps / maps.sum(axis=-1, keepdims=True)).astype(np.float32)


def kl_divergence(target, predicted, eps=1e-12):
    """Mean over rows (and maps) of KL(target row ‖ predicted row), in nats, computed in float64."""
    target = np.asarray(target, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if target.shape != predicted.shape:
        raise ValueError(f"`target` and `predicted` must have the same shape. Received: "
                         f"target.shape={target.shape}, predicted.shape={predicted.shape}")
    terms = np.where(target > 0, target * (np.log(target + eps) - np.log(predicted + eps)), 0.0)
    return max(float(terms.sum(axis=-1).mean()), 0.0)  # KL >= 0; only rounding could make it negative


def low_rank_logit_error(targets, rank):
    """KL error of the best rank-``rank`` approximation of the log-targets in the least-squares sense.

    Each map's row-centred log-probabilities are truncated to their top ``rank`` singular values
    (Eckart–Young) and pushed through a softmax. A head of key size ``rank`` can represent exactly these
    logits, so the optimum of :func:`fit_attention_maps` is at most this value: a reference curve that
    needs no training.
    """
    rank = check_positive_int("rank", rank)
    targets = np.asarray(targets, dtype=np.float64)
    log_targets = np.log(targets)
    centred = log_targets - log_targets.mean(axis=-1, keepdims=True)
    u, s, vt = np.linalg.svd(centred)
    approx = (u[..., :rank] * s[..., None, :rank]) @ vt[..., :rank, :]
    approx -= approx.max(axis=-1, keepdims=True)
    predicted = np.exp(approx)
    predicted /= predicted.sum(axis=-1, keepdims=True)
    return kl_divergence(targets, predicted)


@dataclasses.dataclass
class AttentionFit:
    """One result of :func:`fit_attention_maps`: the key size, final KL (nats per row), loss curve and layer."""

    key_size: int
    kl: float
    history: np.ndarray
    layer: MultiHeadAttention


def fit_attention_maps(targets, key_sizes, *, talking_heads_pre=False, steps=600, learning_rate=0.05, seed=0):
    """Train the queries and keys of :class:`MultiHeadAttention` layers so that their weight maps match ``targets``.

    One layer per key size, all trained side by side in one compiled loop (their losses are independent,
    so each layer follows its own gradient; Adam's step does not depend on the other layers). The inputs
    are one-hot positions (the identity, d = length), so the projections can produce *any*
    length × key_size query and key matrices: what limits the fit is the key size and the head mixing,
    not the inputs. The loss is the mean row KL(target ‖ head), minimised with Adam on the whole "batch"
    (one sequence) for ``steps`` steps.

    Only the mixing *before* the softmax is offered: mixing after it (``talking_heads_post``) gives rows
    that need not be probability distributions, so a KL fit would be meaningless.

    Args:
        targets: (h, n, n) row-stochastic maps, one per head.
        key_sizes: the key sizes to fit (one layer each).
        talking_heads_pre: as in :class:`MultiHeadAttention`.
        steps, learning_rate, seed: the optimisation.

    Returns:
        A list of :class:`AttentionFit`, in the order of ``key_sizes``.
    """
    import tensorflow as tf  # a compiled training loop is TensorFlow's business

    targets = np.asarray(targets, dtype=np.float32)
    if targets.ndim != 3 or targets.shape[1] != targets.shape[2]:
        raise ValueError("`targets` must have shape (num_heads, length, length). "
                         f"Received: targets.shape={targets.shape}")
    if not np.allclose(targets.sum(-1), 1.0, atol=1e-4) or targets.min() < 0:
        raise ValueError("`targets` must be row-stochastic (non-negative rows that sum to 1).")
    key_sizes = [check_positive_int("key_sizes", k) for k in np.atleast_1d(key_sizes).tolist()]
    steps = check_positive_int("steps", steps)
    num_heads, length, _ = targets.shape
    keras.utils.set_random_seed(seed)
    inputs = tf.eye(length, batch_shape=[1])
    layers = [MultiHeadAttention(num_heads, k, value_size=1, output_dim=1, talking_heads_pre=talking_heads_pre)
              for k in key_sizes]
    for layer in layers:
        layer(inputs, inputs)
    # the values and the output projection play no part in the weights
    trained = [w for layer in layers for w in layer.trainable_weights if not w.name.startswith(("value_", "output_"))]
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(trained)
    target = tf.constant(targets[None])
    log_target = tf.math.log(tf.maximum(target, 1e-30))

    # [listing training]
    def losses():
        values = []
        for layer in layers:
            weights = layer.attention_weights(layer.attention_logits(inputs, inputs))
            terms = target * (log_target - tf.math.log(tf.maximum(weights, 1e-30)))
            values.append(tf.reduce_mean(tf.reduce_sum(terms, axis=-1)))
        return tf.stack(values)

    @tf.function
    def train(n):
        history = tf.TensorArray(tf.float32, size=n)
        for i in tf.range(n):
            with tf.GradientTape() as tape:
                loss = losses()
                total = tf.reduce_sum(loss)
            optimizer.apply(tape.gradient(total, trained), trained)
            history = history.write(i, loss)
        return history.stack()
    # [end listing]

    # Every call builds new layers, so this loop is traced again on purpose: TensorFlow's warning about
    # frequent retracing does not apply here and is filtered out for the duration of the call.
    logger = tf.get_logger()
    retracing = _DropMessages("triggered tf.function retracing")
    logger.addFilter(retracing)
    try:
        history = train(tf.constant(steps)).numpy()
    finally:
        logger.removeFilter(retracing)
    fits = []
    for i, (k, layer) in enumerate(zip(key_sizes, layers)):
        final = layer.attention_weights(layer.attention_logits(inputs, inputs)).numpy()[0]
        fits.append(AttentionFit(key_size=k, kl=kl_divergence(targets, final), history=history[:, i], layer=layer))
    return fits


class _DropMessages:
    """A ``logging`` filter that drops the records containing a given text."""

    def __init__(self, text):
        self.text = text

    def filter(self, record):
        return self.text not in record.getMessage()
