"""Adversarial training on embeddings: FGM and the gradient penalty (chapter "Adversarial training").

Adversarial training solves a min-max problem (Madry et al., 2017)::

    min_θ E_(x,y)~D [ max_{‖Δx‖≤ε} L(x + Δx, y; θ) ]

Linearising the inner maximum gives the fast gradient method (FGM; Goodfellow et al., 2014;
Miyato et al., 2016)::

    Δx = ε ∇ₓL / ‖∇ₓL‖          (or the sign form, FGSM: Δx = ε sign(∇ₓL))

and, to first order, training on ``L(x + Δx)`` is training on ``L(x) + ε‖∇ₓL‖``: a penalty on the
norm of the input gradient. In NLP the input is a token id, so the perturbation goes on the output of
the embedding layer. Su Jianlin's article (https://kexue.fm/archives/7234, 2020-03-01) derives this
and gives a one-line Keras 2 helper for each method; this module does the same for Keras 3:

* :func:`fgm_perturbation`, :func:`fgsm_perturbation` and :func:`gradient_penalty`: the formulas, on
  any gradient tensor;
* :class:`FGMModel` and :class:`GradientPenaltyModel`: ``keras.Model`` wrappers whose ``train_step``
  adds the adversarial loss or the penalty at the output of a named layer of any Keras model, so
  ``compile``/``fit``, callbacks, mixed precision, ``tf.distribute`` and ``.keras`` saving keep working;
  :func:`adversarial_training` is the one-line form;
* :func:`layer_output_gradient` and :func:`perturbed_predict`: what a robustness evaluation needs.

How the layer is reached: the wrappers install a small tap on the named layer's ``call`` (once; it is
inert outside the wrappers' own steps), so the layer's output can be watched by a gradient tape or
moved by a perturbation whatever kind of model (functional, ``Sequential``, subclassed) holds it. The tap
state is thread-local, so the replicas of a ``MirroredStrategy`` never see each other's tensors.

This module uses TensorFlow directly where TensorFlow is the point: gradient tapes in a custom
``train_step`` and the replica count of ``tf.distribute``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import numbers
import threading

import keras
import numpy as np
from keras import ops

from lib import checks

PENALTIES = ("norm", "squared")
"""Accepted values of ``penalty``: ε‖g‖ (the first-order equivalent of FGM) or ½ε‖g‖² (the article's code)."""

METHODS = ("fgm", "gradient_penalty")
"""Accepted values of ``method`` in :func:`adversarial_training`."""

DIRECTIONS = ("gradient", "random")
"""Accepted values of ``direction`` in :func:`perturbed_predict`."""

_SQUARED_NORM_FLOOR = 1e-30
"""Floor under ‖g‖² before its square root in :func:`gradient_penalty`: keeps the gradient of ‖g‖ finite at g = 0."""


# --- the formulas ------------------------------------------------------------------------------------


def _gradient(gradient):
    """``gradient`` as a tensor; ``None`` and, where the values are at hand, NaN or inf are refused (a NaN
    gradient would make every perturbation NaN). Inside a training step (traced) it is used as it is."""
    gradient = checks.check_tensor("gradient", gradient)
    if checks.is_concrete(gradient):
        checks.check_finite("gradient", gradient)
    return gradient


def _check_epsilon(epsilon, allow_zero=True):
    valid = isinstance(epsilon, numbers.Real) and not isinstance(epsilon, bool) and np.isfinite(epsilon)
    if not valid or epsilon < 0 or (epsilon == 0 and not allow_zero):
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"`epsilon` must be {expected}. Received: epsilon={epsilon!r}")
    return float(epsilon)


def _working_dtype(tensor):
    """``float64`` for a ``float64`` tensor, else ``float32`` (never less, whatever the tensor's precision)."""
    return "float64" if keras.backend.standardize_dtype(tensor.dtype) == "float64" else "float32"


def _reduction_axes(rank, per_example):
    if per_example:
        if rank < 1:
            raise ValueError(
                "`gradient` must have a batch axis (rank >= 1) when `per_example=True`. "
                f"Received: gradient of rank {rank}"
            )
        return tuple(range(1, rank))
    return tuple(range(rank))


def fgm_perturbation(gradient, epsilon, *, per_example=True):
    """The fast gradient method's perturbation, r = ε g / ‖g‖.

    The norm is the Euclidean norm over **every axis except the first** (one norm per example, so each
    example of a ``(batch, time, features)`` embedding gradient is moved by exactly ε), or over the whole
    tensor with ``per_example=False`` (one norm for the batch, as the article does for the embedding
    matrix). The result has the gradient's direction and norm ε, except where g = 0, where it is 0.

    The arithmetic runs in ``float32`` (``float64`` for a ``float64`` gradient) whatever the gradient's
    dtype (the squares of a ``float16``
    gradient would overflow above 256 and underflow below about 2.4e-4), and the gradient is first
    divided by its largest absolute value, so tiny or huge gradients (for example loss-scaled ones under
    mixed precision) give the same unit direction. The result is cast back to the gradient's dtype.

    Args:
        gradient: the gradient g of the loss with respect to the input to perturb (any float dtype).
        epsilon: the size ε of the perturbation, a finite number >= 0.
        per_example: one norm per example (the default) or one for the whole tensor.

    Returns:
        A tensor like ``gradient``: ε g / ‖g‖.

    Raises:
        ValueError: if ``epsilon`` is negative, infinite or not a number, or ``gradient`` has no batch
            axis while ``per_example=True``.

    Example:

    >>> import numpy as np
    >>> r = fgm_perturbation(np.array([[3.0, 4.0], [0.0, 0.0]]), epsilon=0.5)
    >>> np.round(np.asarray(r), 6).tolist()
    [[0.3, 0.4], [0.0, 0.0]]

    Reference:
        Su Jianlin, "对抗训练浅谈：意义、方法和思考", https://kexue.fm/archives/7234 (2020);
        Miyato, Dai & Goodfellow, "Adversarial Training Methods for Semi-Supervised Text
        Classification", arXiv:1605.07725.
    """
    epsilon = _check_epsilon(epsilon)
    checks.check_bool("per_example", per_example)
    gradient = _gradient(gradient)
    dtype = gradient.dtype
    axes = _reduction_axes(len(gradient.shape), per_example)
    g = ops.cast(gradient, _working_dtype(gradient))
    if not axes:  # a batch of scalars: the direction of each is its sign
        return ops.cast(epsilon * ops.sign(g), dtype)
    largest = ops.max(ops.abs(g), axis=axes, keepdims=True)
    g = g / ops.where(largest > 0, largest, ops.ones_like(largest))  # now max |g| = 1 (or g = 0)
    norm = ops.sqrt(ops.sum(ops.square(g), axis=axes, keepdims=True))  # >= 1, or 0 when g = 0
    unit = g / ops.where(norm > 0, norm, ops.ones_like(norm))
    return ops.cast(epsilon * unit, dtype)


def fgsm_perturbation(gradient, epsilon):
    """The fast gradient *sign* method's perturbation, r = ε sign(g) (Goodfellow et al., 2014).

    It is the maximiser of the linearised loss ⟨g, r⟩ over the max-norm ball ‖r‖∞ ≤ ε, where
    :func:`fgm_perturbation` is the maximiser over the Euclidean ball.

    Args:
        gradient: the gradient g (any float dtype; the result keeps it).
        epsilon: a finite number >= 0.

    Returns:
        ε sign(g), element-wise (0 where g = 0).

    Raises:
        ValueError: if ``epsilon`` is negative, infinite or not a number.

    Example:

    >>> import numpy as np
    >>> np.round(np.asarray(fgsm_perturbation(np.array([0.3, -2.0, 0.0]), 0.1)), 6).tolist()
    [0.1, -0.1, 0.0]

    Reference:
        Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", arXiv:1412.6572.
    """
    epsilon = _check_epsilon(epsilon)
    gradient = _gradient(gradient)
    return ops.cast(epsilon, gradient.dtype) * ops.sign(gradient)


def gradient_penalty(gradient, epsilon, *, penalty="norm"):
    """The gradient penalty, averaged over the batch: mean_i ε‖g_i‖ or mean_i ½ε‖g_i‖².

    ``gradient`` holds one input gradient per example, g_i = ∇ₓL(x_i, y_i) (the first axis is the
    batch); the norm runs over all other axes. To first order, training on L(x + r) with the FGM
    perturbation r = ε g/‖g‖ is training on L(x) + ε‖g‖ (``penalty="norm"``), and one plain
    gradient-ascent step r = ε g gives L(x) + ε‖g‖²; the article's code uses ½ε‖g‖²
    (``penalty="squared"``), the gradient of whose θ-derivative is the one of the expansion.

    Computed in ``float32`` (``float64`` for a ``float64`` gradient). The square root is taken of max(‖g‖², 1e-30), so the penalty can be
    differentiated (a second derivative of the loss) even where g = 0.

    Args:
        gradient: per-example input gradients, shape ``(batch, ...)``.
        epsilon: the weight ε, a finite number >= 0.
        penalty: ``"norm"`` or ``"squared"``.

    Returns:
        A scalar (``float32``, or ``float64`` for a ``float64`` gradient).

    Raises:
        ValueError: for a bad ``epsilon`` or ``penalty``, or a gradient without a batch axis.

    Example:

    >>> import numpy as np
    >>> g = np.array([[3.0, 4.0], [0.0, 1.0]])
    >>> round(float(gradient_penalty(g, 0.1)), 6)           # 0.1 * (5 + 1) / 2
    0.3
    >>> round(float(gradient_penalty(g, 0.1, penalty="squared")), 6)  # 0.5 * 0.1 * (25 + 1) / 2
    0.65
    """
    epsilon = _check_epsilon(epsilon)
    if penalty not in PENALTIES:
        raise ValueError(f"`penalty` must be one of {PENALTIES}. Received: penalty={penalty!r}")
    gradient = _gradient(gradient)
    if gradient.shape and gradient.shape[0] == 0:
        raise ValueError("`gradient` must hold at least one example: the mean over an empty batch is NaN. "
                         f"Received: gradient.shape={tuple(gradient.shape)}")
    axes = _reduction_axes(len(gradient.shape), True)
    g = ops.cast(gradient, _working_dtype(gradient))
    squared = ops.sum(ops.square(g), axis=axes) if axes else ops.square(g)
    if penalty == "squared":
        return 0.5 * epsilon * ops.mean(squared)
    return epsilon * ops.mean(ops.sqrt(ops.maximum(squared, _SQUARED_NORM_FLOOR)))


# --- reaching a layer's output: the tap ----------------------------------------------------------------

_TAP_STATE = threading.local()


def _active_handlers():
    if not hasattr(_TAP_STATE, "handlers"):
        _TAP_STATE.handlers = {}
    return _TAP_STATE.handlers


def _install_tap(layer):
    """Wrap ``layer.call`` once so that its outputs pass through the thread's active handler, if any."""
    if getattr(layer, "_adversarial_tap_installed", False):
        return
    original_call = layer.call

    @functools.wraps(original_call)
    def call(*args, **kwargs):
        outputs = original_call(*args, **kwargs)
        handler = _active_handlers().get(id(layer))
        return outputs if handler is None else handler(outputs)

    layer.call = call
    layer._adversarial_tap_installed = True


@contextlib.contextmanager
def _handle_outputs(layer, handler):
    _install_tap(layer)
    handlers = _active_handlers()
    if id(layer) in handlers:
        raise RuntimeError(f"Layer {layer.name!r} is already being watched or perturbed in this thread.")
    handlers[id(layer)] = handler
    try:
        yield
    finally:
        del handlers[id(layer)]


def _check_output(layer, outputs):
    if isinstance(outputs, (list, tuple, dict)) or not hasattr(outputs, "dtype"):
        raise ValueError(
            f"The layer to perturb must return a single tensor. Received: layer {layer.name!r} "
            f"returned {type(outputs).__name__}"
        )
    if not keras.backend.is_float_dtype(keras.backend.standardize_dtype(outputs.dtype)):
        raise ValueError(
            f"The layer to perturb must return floating-point values (perturb an Embedding layer's "
            f"output, not the token ids). Received: layer {layer.name!r} returns dtype "
            f"{keras.backend.standardize_dtype(outputs.dtype)}"
        )


@contextlib.contextmanager
def watch_layer_output(layer, tapes):
    """Inside this block, every output of ``layer`` is recorded and watched by each gradient tape.

    This is how the wrappers reach the output of an inner layer of any model: after the forward pass,
    ``tape.gradient(loss, outputs)`` is the gradient with respect to that layer's output.

    Args:
        layer: a Keras layer that returns one floating-point tensor (an ``Embedding``, typically).
        tapes: the ``tf.GradientTape`` objects that must watch the outputs (may be empty).

    Yields:
        The list the outputs are appended to, one per call of the layer, in call order (a layer shared
        between two inputs is called twice).

    Raises:
        ValueError: if the layer returns several tensors or integers (token ids cannot be perturbed).

    Example:

    >>> import keras, numpy as np, tensorflow as tf
    >>> inputs = keras.Input((3,), dtype="int32")
    >>> embedding = keras.layers.Embedding(5, 2)
    >>> model = keras.Model(inputs, keras.layers.Flatten()(embedding(inputs)))
    >>> with tf.GradientTape() as tape:
    ...     with watch_layer_output(embedding, [tape]) as outputs:
    ...         total = keras.ops.sum(model(np.array([[1, 2, 3]])))
    >>> tape.gradient(total, outputs)[0].numpy().tolist()
    [[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]]
    """
    captured = []

    def handler(outputs):
        _check_output(layer, outputs)
        for tape in tapes:
            tape.watch(outputs)
        captured.append(outputs)
        return outputs

    with _handle_outputs(layer, handler):
        yield captured


@contextlib.contextmanager
def perturb_layer_output(layer, perturbations):
    """Inside this block, the k-th call of ``layer`` returns its output plus ``perturbations[k]``.

    Each perturbation is cast to the output's dtype (``float16`` under mixed precision). A Keras mask
    computed by the layer (``mask_zero=True``) is kept.

    Args:
        layer: a Keras layer that returns one floating-point tensor.
        perturbations: a sequence of tensors, one per call of the layer in the block, each broadcastable
            to the layer's output.

    Raises:
        ValueError: if the layer is called more often than there are perturbations, or returns several
            tensors or integers.

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((2,), dtype="int32")
    >>> embedding = keras.layers.Embedding(5, 1, embeddings_initializer="zeros")
    >>> model = keras.Model(inputs, embedding(inputs))
    >>> with perturb_layer_output(embedding, [np.full((1, 2, 1), 0.5)]):
    ...     model(np.array([[1, 2]])).numpy().ravel().tolist()
    [0.5, 0.5]
    """
    perturbations = list(perturbations)
    calls = []

    def handler(outputs):
        _check_output(layer, outputs)
        if len(calls) >= len(perturbations):
            raise ValueError(
                f"Layer {layer.name!r} was called more often than there are perturbations. "
                f"Received: {len(perturbations)} perturbation(s)"
            )
        delta = perturbations[len(calls)]
        calls.append(True)
        return outputs + ops.cast(delta, outputs.dtype)

    with _handle_outputs(layer, handler):
        yield


def find_layer(model, layer_name):
    """The layer called ``layer_name`` anywhere inside ``model`` (nested models included).

    Raises:
        ValueError: if no layer has that name, naming the layers that exist.
    """
    if not isinstance(layer_name, str) or not layer_name:
        raise ValueError(f"`layer_name` must be a non-empty string. Received: layer_name={layer_name!r}")
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"`model` must be a keras.Model (or layer) that contains the layer. Received: model={model!r}")
    layers = model._flatten_layers(include_self=False, recursive=True)
    for layer in layers:
        if layer.name == layer_name:
            return layer
    names = [layer.name for layer in layers]
    raise ValueError(
        f"`layer_name` must name a layer of the model; the model has {names}. Received: layer_name={layer_name!r}"
    )


# --- the training wrappers ------------------------------------------------------------------------------


def _tensorflow():
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "lib.adversarial trains with TensorFlow gradient tapes and needs the TensorFlow backend. "
            f"Received: backend={keras.backend.backend()!r}"
        )
    import tensorflow as tf

    return tf


def _num_replicas():
    tf = _tensorflow()
    return tf.distribute.get_strategy().num_replicas_in_sync


def _add_gradients(a, b):
    """a + b for two gradients of one variable, either of which may be None or ``tf.IndexedSlices``."""
    tf = _tensorflow()
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, tf.IndexedSlices) and isinstance(b, tf.IndexedSlices):
        # an embedding matrix: keep the gradient sparse, repeated rows add up when it is applied
        return tf.IndexedSlices(tf.concat([a.values, b.values], 0), tf.concat([a.indices, b.indices], 0),
                                a.dense_shape)
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)


class _LayerAdversary(keras.Model):
    """The shared part of the two wrappers: the inner model, the layer, ε, saving."""

    def __init__(self, model, layer_name, epsilon, **kwargs):
        if not isinstance(model, keras.Model):
            raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
        _tensorflow()
        super().__init__(**kwargs)
        self.model = model
        self.layer_name = layer_name
        self.epsilon = _check_epsilon(epsilon, allow_zero=False)
        _install_tap(find_layer(model, layer_name))

    @property
    def _perturbed_layer(self):
        # looked up, not stored: an attribute would make the layer a direct child of the wrapper as well
        return find_layer(self.model, self.layer_name)

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def _forward(self, x):
        return self(x, training=True)

    def _track_loss(self, loss, x):
        tf = _tensorflow()
        tracker = getattr(self, "_loss_tracker", None)
        if tracker is not None:
            first = next(value for value in tf.nest.flatten(x) if value is not None)
            tracker.update_state(loss * ops.cast(_num_replicas(), loss.dtype), sample_weight=tf.shape(first)[0])

    def _loss_scale(self):
        """The factor the optimizer multiplies the loss by (the dynamic scale under mixed precision)."""
        return ops.cast(self.optimizer.scale_loss(ops.ones((), "float32")), "float32")

    def get_config(self):
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.model),
            "layer_name": self.layer_name,
            "epsilon": self.epsilon,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """The wrapper from ``get_config()``; ``config`` is left unchanged (Keras consumes the nested model's)."""
        config = copy.deepcopy(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"], custom_objects=custom_objects)
        return cls(**config)


@keras.saving.register_keras_serializable(package="lib")
class FGMModel(_LayerAdversary):
    """Adversarial training with the fast gradient method at the output of one layer of a model.

    Each training step (the article's FGM, applied to the embedding *output* instead of the matrix):

    1. a forward and backward pass on the clean batch gives g = ∇ₑL, the gradient of the loss with
       respect to the output e of the layer ``layer_name`` (usually the ``Embedding``);
    2. r = ε g/‖g‖ (:func:`fgm_perturbation`, one norm per example by default), held constant;
    3. a second forward and backward pass with e + r gives ∇_θ L(x + r), and the optimizer takes that
       step, as in min_θ E[L(x + r)]. With ``clean_loss=True`` the step is on L(x) + L(x + r) instead
       (Miyato et al., 2016); the clean gradient then comes from the first backward pass at little cost.

    A step therefore costs about two ordinary steps. ``fit`` logs the loss that was minimised; metrics
    are those of the clean forward pass; ``evaluate`` and ``predict`` run the plain model.

    Args:
        model: any ``keras.Model`` (functional, ``Sequential`` or subclassed) that contains the layer.
        layer_name: name of the layer whose output is perturbed; it must return one float tensor.
        epsilon: the norm ε of the perturbation, > 0.
        per_example: one norm per example (default) or one norm over the (replica's) batch, as the
            article does for the whole embedding matrix.
        clean_loss: also minimise the clean loss L(x).
        **kwargs: standard ``keras.Model`` arguments (``name``...).

    Raises:
        ValueError: for a model that is not a ``keras.Model``, a ``layer_name`` it does not contain,
            an ``epsilon`` that is not > 0, or (when training) a layer that does not return floats.

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((6,), dtype="int32")
    >>> hidden = keras.layers.Embedding(20, 4, name="embedding")(inputs)
    >>> outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(hidden))
    >>> model = FGMModel(keras.Model(inputs, outputs), "embedding", epsilon=0.5)
    >>> model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    >>> x = np.random.default_rng(0).integers(0, 20, (8, 6))
    >>> history = model.fit(x, np.ones((8, 1)), epochs=1, verbose=0)
    >>> sorted(history.history)
    ['loss']

    Reference:
        Su Jianlin, "对抗训练浅谈：意义、方法和思考", https://kexue.fm/archives/7234 (2020);
        Miyato, Dai & Goodfellow, arXiv:1605.07725; Goodfellow, Shlens & Szegedy, arXiv:1412.6572.
    """

    def __init__(self, model, layer_name, epsilon=0.5, *, per_example=True, clean_loss=False, **kwargs):
        super().__init__(model, layer_name, epsilon, **kwargs)
        self.per_example = bool(per_example)
        self.clean_loss = bool(clean_loss)

    def train_step(self, data):
        tf = _tensorflow()
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        layer = self._perturbed_layer

        # 1. clean pass: the gradient with respect to the layer's output (and to θ, if it is used)
        with tf.GradientTape() as tape:
            with watch_layer_output(layer, [tape]) as outputs:
                y_pred = self._forward(x)
            if not outputs:
                raise ValueError(f"Layer {self.layer_name!r} was not called by the model's forward pass.")
            clean = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            scaled = self.optimizer.scale_loss(clean)
        weights = self.trainable_weights  # read after the first forward pass: a subclassed model builds in it
        sources = list(outputs) + (list(weights) if self.clean_loss else [])
        gradients = tape.gradient(scaled, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # the direction of a loss-scaled gradient is the direction of the gradient: no unscaling needed
        perturbations = [tf.stop_gradient(fgm_perturbation(g, self.epsilon, per_example=self.per_example))
                         for g in gradients[: len(outputs)]]

        # 2. adversarial pass: L(x + r)
        with tf.GradientTape() as tape:
            with perturb_layer_output(layer, perturbations):
                y_adversarial = self._forward(x)
            adversarial = self._compute_loss(x=x, y=y, y_pred=y_adversarial, sample_weight=sample_weight,
                                              training=True)
            scaled = self.optimizer.scale_loss(adversarial)
        adversarial_gradients = tape.gradient(scaled, weights)

        if self.clean_loss:
            total = clean + adversarial
            adversarial_gradients = [_add_gradients(g, c)
                                     for g, c in zip(adversarial_gradients, gradients[len(outputs):])]
        else:
            total = adversarial
        self.optimizer.apply_gradients(zip(adversarial_gradients, weights))
        self._track_loss(total, x)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "per_example": self.per_example, "clean_loss": self.clean_loss}


@keras.saving.register_keras_serializable(package="lib")
class GradientPenaltyModel(_LayerAdversary):
    """Training with a penalty on the gradient of the loss with respect to one layer's output.

    The loss minimised is L(x) + ε mean_i ‖∇ₑL_i‖ (``penalty="norm"``, the first-order equivalent of FGM
    with the same ε) or L(x) + ½ε mean_i ‖∇ₑL_i‖² (``penalty="squared"``, the article's code), where e is
    the output of the layer ``layer_name`` and L_i the loss of example i. Its θ-gradient needs second
    derivatives of the loss (double backpropagation), so a step costs about two to three ordinary steps.

    The per-example gradients are read from the gradient of the batch loss, so the examples of a batch
    must not interact (no ``BatchNormalization`` in training mode before the loss), and the compiled loss
    must use Keras's default reduction (a mean over the batch); sample weights multiply each g_i.

    Second derivatives: the article (Keras 2, TensorFlow 1) had to use ``categorical_crossentropy``
    with one-hot labels because the fused sparse softmax cross-entropy had no second derivative;
    TensorFlow 2.21 gives it one, and the tests check the penalty's θ-gradient with
    ``sparse_categorical_crossentropy`` against finite differences.

    Args:
        model: any ``keras.Model`` that contains the layer.
        layer_name: name of the layer whose output gradient is penalised.
        epsilon: the weight ε, > 0.
        penalty: ``"norm"`` (default) or ``"squared"``.
        **kwargs: standard ``keras.Model`` arguments.

    Raises:
        ValueError: as :class:`FGMModel`, and for a ``penalty`` outside :data:`PENALTIES`.

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((6,), dtype="int32")
    >>> hidden = keras.layers.Embedding(20, 4, name="embedding")(inputs)
    >>> outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(hidden))
    >>> model = GradientPenaltyModel(keras.Model(inputs, outputs), "embedding", epsilon=1.0)
    >>> model.get_config()["penalty"]
    'norm'

    Reference:
        Su Jianlin, "对抗训练浅谈：意义、方法和思考", https://kexue.fm/archives/7234 (2020);
        Ross & Doshi-Velez, "Improving the Adversarial Robustness and Interpretability of Deep Neural
        Networks by Regularizing their Input Gradients", arXiv:1711.09404.
    """

    def __init__(self, model, layer_name, epsilon=1.0, *, penalty="norm", **kwargs):
        if penalty not in PENALTIES:
            raise ValueError(f"`penalty` must be one of {PENALTIES}. Received: penalty={penalty!r}")
        super().__init__(model, layer_name, epsilon, **kwargs)
        self.penalty = penalty

    def train_step(self, data):
        tf = _tensorflow()
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                with watch_layer_output(self._perturbed_layer, [inner]) as outputs:
                    y_pred = self._forward(x)
                if not outputs:
                    raise ValueError(f"Layer {self.layer_name!r} was not called by the model's forward pass.")
                loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
                # The compiled loss is mean_i L_i / replicas; scaled (mixed precision) against underflow.
                inner_target = self.optimizer.scale_loss(loss)
            gradients = inner.gradient(inner_target, list(outputs),
                                       unconnected_gradients=tf.UnconnectedGradients.ZERO)
            # back to per-example gradients ∇ₑL_i: undo the loss scale, the replica split and the mean
            work = _working_dtype(loss)
            unscale = ops.cast(_num_replicas(), work) / ops.cast(self._loss_scale(), work)
            penalty = 0.0
            for g in gradients:
                batch = ops.cast(ops.shape(g)[0], work)
                penalty = penalty + gradient_penalty(ops.cast(g, work) * (unscale * batch), self.epsilon,
                                                     penalty=self.penalty)
            # like the compiled loss, the penalty is split over the replicas
            total = loss + ops.cast(penalty / ops.cast(_num_replicas(), work), loss.dtype)
            outer_target = self.optimizer.scale_loss(total)
        weights = self.trainable_weights  # read after the forward pass: a subclassed model builds in it
        parameter_gradients = outer.gradient(outer_target, weights)
        self.optimizer.apply_gradients(zip(parameter_gradients, weights))
        self._track_loss(total, x)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "penalty": self.penalty}


def adversarial_training(model, layer_name, epsilon=0.5, method="fgm", **kwargs):
    """The one-line form: wrap ``model`` for FGM or gradient-penalty training at ``layer_name``.

    ``adversarial_training(model, "embedding", 0.5)`` plays the role of the article's
    ``adversarial_training(model, 'Embedding-Token', 0.5)``, but returns a new model to ``compile`` and
    ``fit`` (the weights are shared with ``model``).

    Args:
        model: a ``keras.Model``.
        layer_name: the layer whose output is perturbed or penalised.
        epsilon: ε of :class:`FGMModel` or :class:`GradientPenaltyModel`.
        method: ``"fgm"`` or ``"gradient_penalty"``.
        **kwargs: further arguments of the chosen class.

    Returns:
        An :class:`FGMModel` or a :class:`GradientPenaltyModel`.

    Raises:
        ValueError: for a ``method`` outside :data:`METHODS`, and as the classes do.
    """
    if method == "fgm":
        return FGMModel(model, layer_name, epsilon, **kwargs)
    if method == "gradient_penalty":
        return GradientPenaltyModel(model, layer_name, epsilon, **kwargs)
    raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")


# --- evaluation: gradients at a layer and perturbed predictions ----------------------------------------------


def _loss_function(loss):
    loss = checks.get_keras_object("loss", keras.losses.get, loss) if isinstance(loss, str) else loss
    if not callable(loss):
        raise ValueError(f"`loss` must be a Keras loss, a loss name or a callable. Received: loss={loss!r}")
    return loss


def layer_output_gradient(model, layer_name, x, y, loss):
    """Predictions and per-example gradients ∇ₑL(x_i, y_i) at the output e of layer ``layer_name``.

    Runs the model in inference mode (``training=False``) on one batch.

    Args:
        model: a ``keras.Model`` containing the layer (or a wrapper from this module).
        layer_name: the layer's name.
        x, y: one batch of inputs and targets.
        loss: a Keras loss (object, name or callable ``loss(y_true, y_pred)``) with a mean reduction.

    Returns:
        ``(y_pred, gradients)``: the model's outputs and a list with one gradient tensor per call of the
        layer, each shaped like the layer's output.

    Raises:
        ValueError: for an unknown layer or a bad loss.
    """
    tf = _tensorflow()
    layer = find_layer(model, layer_name)
    loss = _loss_function(loss)
    with tf.GradientTape() as tape:
        with watch_layer_output(layer, [tape]) as outputs:
            y_pred = model(x, training=False)
        value = loss(y, y_pred)
        value = value * ops.cast(ops.shape(outputs[0])[0], value.dtype)
    gradients = tape.gradient(value, list(outputs), unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return y_pred, gradients


def perturbed_predict(model, layer_name, x, y, loss, epsilons, *, direction="gradient", batch_size=256, seed=0):
    """Predictions of ``model`` when the output of layer ``layer_name`` is moved by ε, for each ε.

    ``direction="gradient"`` moves each example along its own loss gradient (the FGM attack, the
    linearised worst case at that norm: r_i = ε g_i/‖g_i‖ with the true target); ``"random"`` moves
    it along a random Gaussian direction of the same norm, drawn once per example from ``seed``. The
    norm is per example, over all the layer's output axes but the batch.

    Args:
        model: a ``keras.Model`` containing the layer.
        layer_name: the layer's name.
        x, y: inputs and targets (NumPy arrays with the examples along the first axis).
        loss: the loss that defines the gradient direction (see :func:`layer_output_gradient`).
        epsilons: the sizes ε >= 0 to evaluate.
        direction: ``"gradient"`` or ``"random"``.
        batch_size: examples per forward pass.
        seed: seed of the random directions.

    Returns:
        A NumPy array ``(len(epsilons), n, ...)`` of predictions.

    Raises:
        ValueError: for a bad ``direction``, ``epsilons``, ``batch_size``, layer or loss.
    """
    tf = _tensorflow()
    if direction not in DIRECTIONS:
        raise ValueError(f"`direction` must be one of {DIRECTIONS}. Received: direction={direction!r}")
    epsilons = [_check_epsilon(e) for e in np.atleast_1d(np.asarray(epsilons, dtype=object)).tolist()]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    layer = find_layer(model, layer_name)
    loss = _loss_function(loss)
    if not epsilons:
        raise ValueError(f"`epsilons` must hold at least one size. Received: epsilons={epsilons!r}")
    if isinstance(x, dict):  # named inputs: every one holds the examples along its first axis
        n = checks.check_same_length(**{f"x[{key!r}]": value for key, value in x.items()}, y=y)
    else:
        n = checks.check_same_length(x=x, y=y)
    if n == 0:
        raise ValueError(f"`x` must hold at least one example. Received: len(x)={n}")

    results = [[] for _ in epsilons]
    for batch, start in enumerate(range(0, n, batch_size)):
        # eager on purpose: a tf.function made per call would be retraced at every call of this function
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        _, gradients = layer_output_gradient(model, layer_name, xb, yb, loss)
        if direction == "random":
            gradients = [tf.random.stateless_normal(tf.shape(g), seed=[seed, batch], dtype=g.dtype) for g in gradients]
        units = [fgm_perturbation(g, 1.0) for g in gradients]
        for k, epsilon in enumerate(epsilons):
            with perturb_layer_output(layer, [u * ops.cast(epsilon, u.dtype) for u in units]):
                results[k].append(keras.ops.convert_to_numpy(model(xb, training=False)))
    return np.stack([np.concatenate(parts, axis=0) for parts in results])


# --- the article's own FGM scheme, and a multi-step attack (added for the chapter's reference run) ------------


@keras.saving.register_keras_serializable(package="lib")
class EmbeddingMatrixFGMModel(_LayerAdversary):
    """FGM as the article's code does it: the perturbation goes on the embedding **matrix** E.

    Each training step computes g_E = ∇_E L, the gradient of the batch loss with respect to the whole
    matrix (the gradients of all occurrences of a token summed into its row), adds
    r = ε g_E/‖g_E‖ to E with **one norm for the whole matrix**, takes the ordinary training step on the
    perturbed model, and removes r again. Every occurrence of a token in the batch therefore gets the
    same perturbation, and ε is shared by all the tokens of the batch; :class:`FGMModel` perturbs the
    layer's output instead, one norm per example. A step costs about two ordinary steps.

    Args:
        model: a ``keras.Model`` that contains the layer.
        layer_name: name of a layer with an ``embeddings`` matrix (a ``keras.layers.Embedding``).
        epsilon: the norm ε of the matrix perturbation, > 0 (the article's one-line call uses 0.5).
        **kwargs: standard ``keras.Model`` arguments.

    Raises:
        ValueError: as :class:`FGMModel`, and for a layer without an ``embeddings`` matrix.

    Reference:
        Su Jianlin, "对抗训练浅谈：意义、方法和思考", https://kexue.fm/archives/7234 (2020), and its
        ``adversarial_training(model, 'Embedding-Token', 0.5)``.
    """

    def __init__(self, model, layer_name, epsilon=0.5, **kwargs):
        super().__init__(model, layer_name, epsilon, **kwargs)
        if getattr(find_layer(model, layer_name), "embeddings", None) is None:
            raise ValueError(f"`layer_name` must name a layer with an `embeddings` matrix (an Embedding). "
                             f"Received: layer_name={layer_name!r}")

    def train_step(self, data):
        tf = _tensorflow()
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        matrix = self._perturbed_layer.embeddings
        with tf.GradientTape() as tape:  # 1. the gradient with respect to the matrix
            y_pred = self._forward(x)
            clean = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            scaled = self.optimizer.scale_loss(clean)
        matrix_gradient = tf.convert_to_tensor(tape.gradient(scaled, matrix))  # rows summed per token
        delta = tf.stop_gradient(ops.cast(fgm_perturbation(matrix_gradient, self.epsilon, per_example=False),
                                          matrix.dtype))
        matrix.assign_add(delta)  # 2. E + r
        with tf.GradientTape() as tape:
            y_adversarial = self._forward(x)
            adversarial = self._compute_loss(x=x, y=y, y_pred=y_adversarial, sample_weight=sample_weight,
                                              training=True)
            scaled = self.optimizer.scale_loss(adversarial)
        weights = self.trainable_weights
        gradients = tape.gradient(scaled, weights)
        matrix.assign_sub(delta)  # 3. back to E, then the step with the gradient taken at E + r
        self.optimizer.apply_gradients(zip(gradients, weights))
        self._track_loss(adversarial, x)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _l2_project(r, epsilon):
    """r scaled back onto the Euclidean ball of radius ε, one norm per example (first axis)."""
    axes = tuple(range(1, len(r.shape)))
    norm = ops.sqrt(ops.sum(ops.square(r), axis=axes, keepdims=True))
    return r * ops.minimum(1.0, epsilon / ops.maximum(norm, 1e-12))


def pgd_perturbation(model, layer_name, x, y, loss, epsilon, *, steps=10, step_size=None):
    """The PGD perturbation of the output of layer ``layer_name`` for one batch: r with ‖r_i‖ ≤ ε per example.

    Projected gradient ascent (Madry et al., 2017) within the Euclidean ball ‖r_i‖ ≤ ε of each example:
    starting from r = 0, ``steps`` times r ← Π_ε(r + α ∇_r L / ‖∇_r L‖), where Π_ε scales r back onto the
    ball and the norms are per example. The first step is the FGM direction; the later ones follow the
    loss where it curves, so the attack finds what one linear step misses (one-step robustness that
    PGD breaks is gradient masking). The model runs in inference mode.

    Args:
        model: a ``keras.Model`` containing the layer.
        layer_name: the layer's name.
        x, y: one batch of inputs and targets.
        loss: the loss to increase (see :func:`layer_output_gradient`).
        epsilon: the radius ε >= 0.
        steps: number of ascent steps, a positive integer.
        step_size: α; default 2.5 ε / steps (Madry et al.).

    Returns:
        A tensor shaped like the layer's output.

    Raises:
        ValueError: for bad ``epsilon``, ``steps``, ``step_size``, layer or loss.
    """
    tf = _tensorflow()
    epsilon = _check_epsilon(epsilon)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer. Received: steps={steps!r}")
    if step_size is not None and (isinstance(step_size, bool) or not isinstance(step_size, numbers.Real)
                                  or not np.isfinite(step_size) or step_size <= 0):
        raise ValueError(f"`step_size` must be a finite number > 0 or None. Received: step_size={step_size!r}")
    layer = find_layer(model, layer_name)
    loss = _loss_function(loss)
    alpha = step_size if step_size is not None else 2.5 * epsilon / steps
    _, (g,) = layer_output_gradient(model, layer_name, x, y, loss)
    r = tf.zeros_like(g)
    for _ in range(steps if epsilon > 0 else 0):
        with tf.GradientTape() as tape:
            tape.watch(r)
            with perturb_layer_output(layer, [r]):
                value = loss(y, model(x, training=False))
        r = _l2_project(r + fgm_perturbation(tape.gradient(value, r), alpha), epsilon)
    return r


def pgd_predict(model, layer_name, x, y, loss, epsilons, *, steps=10, step_size=None, batch_size=256):
    """Predictions under the multi-step attack of :func:`pgd_perturbation`, for each radius ε.

    Args:
        model, layer_name, x, y, loss, batch_size: as :func:`perturbed_predict`.
        epsilons: the radii ε >= 0.
        steps, step_size: as :func:`pgd_perturbation`.

    Returns:
        A NumPy array ``(len(epsilons), n, ...)`` of predictions.

    Raises:
        ValueError: for bad ``steps``, ``step_size``, ``epsilons``, ``batch_size``, layer or loss.
    """
    epsilons = [_check_epsilon(e) for e in np.atleast_1d(np.asarray(epsilons, dtype=object)).tolist()]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    layer = find_layer(model, layer_name)
    results = [[] for _ in epsilons]
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        for k, epsilon in enumerate(epsilons):
            r = pgd_perturbation(model, layer_name, xb, yb, loss, epsilon, steps=steps, step_size=step_size)
            with perturb_layer_output(layer, [r]):
                results[k].append(keras.ops.convert_to_numpy(model(xb, training=False)))
    return np.stack([np.concatenate(parts, axis=0) for parts in results])
