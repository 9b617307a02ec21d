"""AdaFactor: Adam's adaptive step with a second moment that costs n + m numbers per n×m matrix.

Chapter "A look at the AdaFactor optimizer" explains every line of this module. Su Jianlin's article
(https://kexue.fm/archives/7302, 2020-03-23) reads the AdaFactor paper (Shazeer & Stern, 2018,
arXiv:1804.04235) as four changes to Adam::

    1. drop the first moment m (Adam's momentum);
    2. keep the second moment of an n×m gradient as a row vector and a column vector: the rank-1,
       non-negative fit of the squared gradients that minimises the generalised KL divergence is
           v̂_ij = (Σ_j c_ij)(Σ_i c_ij) / Σ_ij c_ij         (row sums × column sums / total);
    3. let the decay rate grow, β̂_2,t = 1 − t^(−c) with c = 0.8, instead of Adam's fixed β_2;
    4. clip the update by its RMS and scale it by the RMS of the parameter:
           û_t = u_t / max(1, RMS(u_t)/d) × max(ε_2, RMS(θ_{t−1})).

:class:`AdaFactor` is a ``keras.optimizers.Optimizer`` with those options; the functions beside it
(:func:`rank_one_factors`, :func:`generalized_kl`, :func:`beta_2_schedule`,
:func:`adam_effective_beta_2`, :func:`relative_step_size`) are the pieces the chapter derives, and
:func:`state_bytes` measures what an optimizer really allocates.
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
from keras import ops

from lib import checks

PAPER_DEFAULTS = {
    "epsilon_1": 1e-30,
    "epsilon_2": 1e-3,
    "clip_threshold": 1.0,
    "decay_exponent": 0.8,
    "relative_step_cap": 1e-2,
}
"""The defaults of the paper, as the article lists them (ARTICLES.md §7): ε₁, ε₂, d, c and the cap of
ρ_t = min(10⁻², 1/√t)."""


# ---------------------------------------------------------------------------------------------
# The pieces of the derivation (NumPy / keras.ops; the chapter calls them, the optimizer uses them)
# ---------------------------------------------------------------------------------------------


def generalized_kl(p, q):
    """The generalised Kullback–Leibler (I-)divergence ``Σ p log(p/q) − p + q`` of non-negative arrays.

    It is ≥ 0, and 0 only when ``p == q`` (from x log x ≥ x − 1); unlike the KL divergence it does not
    need ``p`` and ``q`` to sum to 1. Terms with ``p == 0`` contribute ``q`` (0 log 0 = 0).

    Args:
        p: non-negative array (the matrix to approximate).
        q: positive array of the same shape (the approximation).

    Returns:
        A float.

    Raises:
        ValueError: if the shapes differ, ``p`` has a negative entry, or ``q`` a non-positive one.

    Example:

    >>> round(generalized_kl(np.array([1.0, 2.0]), np.array([1.0, 1.0])), 6)
    0.386294
    """
    p = checks.check_array("p", p, dtype=np.float64)
    q = checks.check_array("q", q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"`p` and `q` must have the same shape. Received: p.shape={p.shape}, q.shape={q.shape}")
    if np.any(p < 0):
        raise ValueError(f"`p` must be non-negative. Received: p.min()={p.min()!r}")
    if np.any(q <= 0):
        raise ValueError(f"`q` must be positive. Received: q.min()={q.min()!r}")
    safe_p = np.where(p > 0, p, 1.0)
    return float(np.sum(np.where(p > 0, p * np.log(safe_p / q), 0.0) - p + q))


def rank_one_factors(c):
    """The rank-1 fit ``a bᵀ`` of a non-negative matrix ``c`` that minimises the generalised KL divergence.

    The closed form of the article: ``a_i = Σ_j c_ij`` (row sums) and ``b_j = Σ_i c_ij / Σ_ij c_ij``
    (column sums over the total), normalised so that ``Σ_j b_j = 1``. So ``a bᵀ`` is
    (row sums)(column sums)ᵀ / total: the product of the two marginals of ``c / Σ c``, times the total.

    Args:
        c: a non-negative matrix of shape ``(n, m)`` with a positive total.

    Returns:
        ``(a, b)``: float64 arrays of shapes ``(n,)`` and ``(m,)``.

    Raises:
        ValueError: if ``c`` is not a 2-D non-negative array with a positive sum.

    Example:

    >>> a, b = rank_one_factors(np.array([[1.0, 3.0], [2.0, 6.0]]))
    >>> a.tolist(), b.tolist()
    ([4.0, 8.0], [0.25, 0.75])
    >>> np.outer(a, b).tolist()   # this c has rank 1, so the fit is exact
    [[1.0, 3.0], [2.0, 6.0]]

    Reference:
        Su Jianlin, "AdaFactor优化器浅析（附开源实现）", https://kexue.fm/archives/7302 (2020);
        Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", arXiv:1804.04235.
    """
    c = checks.check_array("c", c, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"`c` must be a matrix (2-D). Received: c.shape={c.shape}")
    if np.any(c < 0) or not c.sum() > 0:
        raise ValueError(f"`c` must be non-negative with a positive sum. Received: c.min()={c.min()!r}, "
                         f"c.sum()={c.sum()!r}")
    total = c.sum()
    return c.sum(axis=1), c.sum(axis=0) / total


def _steps(step):
    """Step numbers ``t >= 1`` as a tensor: at ``t = 0`` the schedules divide by zero (``0^-c``, ``1/√0``)
    and return inf or NaN. Checked where the values are at hand; a traced step (the optimizer's own
    counter, always ``iterations + 1``) is used as it is."""
    step = checks.check_tensor("step", step)
    if checks.is_concrete(step):
        values = np.asarray(ops.convert_to_numpy(step), dtype=np.float64)
        if values.size and not (np.all(values >= 1) and np.all(np.isfinite(values))):
            bad = values[~((values >= 1) & np.isfinite(values))]
            raise ValueError("`step` must count from 1 (t = 1, 2, ...): the schedules are undefined at t <= 0. "
                             f"Received: step holding {bad[:5].tolist()}")
    return step


def beta_2_schedule(step, decay_exponent=PAPER_DEFAULTS["decay_exponent"]):
    """AdaFactor's decay rate of the second moment, ``β̂_2,t = 1 − t^(−c)`` (``t`` counts from 1).

    ``β̂_2,1 = 0`` (the first step uses its own gradient only), and ``β̂_2,t → 1`` as ``t → ∞``; ``c = 1``
    gives the running mean of all squared gradients so far, ``c < 1`` forgets old ones faster.

    Example:

    >>> [round(float(v), 4) for v in beta_2_schedule(np.array([1.0, 2.0, 1000.0]))]
    [0.0, 0.4257, 0.996]
    """
    step = _steps(step)
    decay_exponent = checks.check_number("decay_exponent", decay_exponent, 0.0, low_open=True)
    return 1.0 - ops.power(step, -decay_exponent)


def adam_effective_beta_2(step, beta_2=0.999):
    """Adam's bias-corrected second moment written as a plain moving average: its decay rate at step ``t``.

    ``v̂_t = β̂ v̂_{t−1} + (1 − β̂) g_t²`` with ``β̂ = β_2 (1 − β_2^{t−1}) / (1 − β_2^t)``: 0 at ``t = 1``,
    rising to ``β_2 < 1``, never to 1 (the article's step 3).

    Example:

    >>> [round(float(v), 4) for v in adam_effective_beta_2(np.array([1.0, 2.0, 1e5]))]
    [0.0, 0.4997, 0.999]
    """
    step = _steps(step)
    beta_2 = checks.check_number("beta_2", beta_2, 0.0, 1.0, low_open=True, high_open=True)
    return beta_2 * (1.0 - ops.power(beta_2, step - 1.0)) / (1.0 - ops.power(beta_2, step))


def relative_step_size(step, cap=PAPER_DEFAULTS["relative_step_cap"]):
    """The paper's default step size ``ρ_t = min(cap, 1/√t)`` (cap 10⁻²): constant, then decaying as 1/√t.

    Example:

    >>> [round(float(v), 5) for v in relative_step_size(np.array([1.0, 10_000.0, 40_000.0]))]
    [0.01, 0.01, 0.005]
    """
    step = _steps(step)
    cap = checks.check_number("cap", cap, 0.0, low_open=True)
    return ops.minimum(ops.rsqrt(step), cap)


def _mean(x, axis=None, keepdims=False):
    """``ops.mean`` in the dtype of ``x``. Keras's JAX ``mean`` accumulates float64 in float32 (it computes in
    ``result_type(x.dtype, "float32")``, which Keras promotes to float32), which would cost float64 users eight
    digits; under JAX (static shapes) the mean is the sum over the count. Other backends keep ``ops.mean``."""
    if keras.backend.backend() != "jax" or keras.backend.standardize_dtype(x.dtype) != "float64":
        return ops.mean(x, axis=axis, keepdims=keepdims)
    axes = range(len(x.shape)) if axis is None else (axis,) if isinstance(axis, int) else axis
    count = 1
    for a in axes:
        count *= x.shape[a]
    return ops.sum(x, axis=axis, keepdims=keepdims) / count


def rms(x, axis=None, keepdims=False):
    """Root mean square, ``√(mean(x²))``: the article's RMS."""
    x = checks.check_tensor("x", x)
    return ops.sqrt(_mean(ops.square(x), axis=axis, keepdims=keepdims))


def factored_axes(shape, min_dim_size_to_factor=1):
    """Which two axes AdaFactor factors for a variable of ``shape``, or ``None`` to keep the full moment.

    A matrix factors its rows and columns. A tensor of rank > 2 factors its two **largest** axes (ties go to
    the later axis), as the article's reference code and mesh_tensorflow do, and keeps one row vector and
    one column vector per index of the other axes. A variable is not factored when it has rank < 2 or when
    one of the two axes is shorter than ``min_dim_size_to_factor``.

    Returns:
        ``(row_axis, col_axis)`` with ``row_axis < col_axis``, or ``None``.

    Example:

    >>> factored_axes((512, 64)), factored_axes((3, 3, 64, 128)), factored_axes((8, 4096, 64))
    ((0, 1), (2, 3), (1, 2))
    >>> factored_axes((512,)), factored_axes((512, 64), min_dim_size_to_factor=128)
    (None, None)
    """
    if shape is None or isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"`shape` must be a tuple of integers (a variable's shape). Received: shape={shape!r}")
    shape = tuple(int(d) for d in shape)
    min_dim_size_to_factor = checks.check_positive_int("min_dim_size_to_factor", min_dim_size_to_factor)
    if len(shape) < 2:
        return None
    largest = sorted(range(len(shape)), key=lambda axis: (shape[axis], axis))[-2:]
    row_axis, col_axis = sorted(largest)
    if min(shape[row_axis], shape[col_axis]) < min_dim_size_to_factor:
        return None
    return row_axis, col_axis


# ---------------------------------------------------------------------------------------------
# The optimizer
# ---------------------------------------------------------------------------------------------


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_range(name, value, low, high, *, low_open, high_open, allow_none=False, hint=""):
    if value is None and allow_none:
        return None
    low_ok = value > low if low_open else value >= low
    high_ok = value < high if high_open else value <= high
    if not _is_number(value) or not np.isfinite(value) or not (low_ok and high_ok):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        none = " or None" if allow_none else ""
        raise ValueError(f"`{name}` must be a number in {interval}{none}.{hint} Received: {name}={value!r}")
    return float(value)


def _dense_gradient(gradient, variable):
    """The gradient as a dense tensor.

    An embedding's gradient comes from TensorFlow as ``tf.IndexedSlices``: one row per *occurrence* of an id,
    repeats included. AdaFactor needs the true squared gradient, (Σ_k g_k)² for a row seen k times, and the
    RMS of the whole update, so the rows are summed into the dense matrix first. (Keras's element-wise ops
    would square each occurrence separately and give Σ_k g_k² instead.)
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return tf.math.unsorted_segment_sum(gradient.values, gradient.indices, variable.shape[0])
    return ops.convert_to_tensor(gradient)


def _power_of_two_scale(x, axis=None):
    """A power of two near ``max|x|`` over ``axis`` (kept as a size-1 axis; 1 where ``x`` is all zero): dividing
    by it is exact, and it keeps the squares of ``x / scale`` (below 16) far from float overflow.

    The exponent stops at ``maxexp − 2`` (2^126 in float32), so that ``1 / scale`` is a normal number: XLA on CPU
    (JAX, ``jit_compile``) divides by multiplying with the reciprocal and flushes subnormals to zero, and
    ``x / 2^127`` would then be 0."""
    finfo = np.finfo(keras.backend.standardize_dtype(x.dtype))
    top = ops.max(ops.abs(x), axis=axis, keepdims=axis is not None)
    exponent = ops.minimum(ops.floor(ops.log2(ops.where(top > 0, top, 1.0))), finfo.maxexp - 2)
    return ops.where(top > 0, ops.power(ops.cast(2.0, x.dtype), exponent), ops.ones((), x.dtype))


def _mean_square(x, axis=None):
    """``mean(x², axis)`` (``axis=None``: ``x²`` itself) without overflow in the square: computed on ``x / s``,
    ``s`` a power of two near the largest ``|x|`` of each mean, and multiplied back by ``s`` twice (exact);
    saturates at the dtype's largest value instead of becoming inf."""
    if axis is None:
        scale = _power_of_two_scale(ops.expand_dims(x, -1), axis=-1)[..., 0]  # element-wise
        square = ops.square(x / scale)
    else:
        scale = _power_of_two_scale(x, axis=axis)
        square = _mean(ops.square(x / scale), axis=axis)
        scale = ops.squeeze(scale, axis)
    return ops.minimum(square * scale * scale, np.finfo(keras.backend.standardize_dtype(x.dtype)).max)


def _stable_rms(x, axis=None):
    """:func:`rms` (over ``axis``, kept as a size-1 axis) with ``x`` scaled by a power of two first, so that a
    huge ``x`` does not overflow to inf."""
    scale = _power_of_two_scale(x, axis=axis)
    return rms(x / scale, axis=axis, keepdims=axis is not None) * scale


def _check_bool(name, value):
    return checks.check_bool(name, value, expected="True or False")


def _unique_name(prefix):
    """``prefix``, then ``prefix_1``, ``prefix_2``...: Keras's own counter, shared with its objects."""
    try:
        from keras.src.utils.naming import uniquify
    except ImportError:  # pragma: no cover - a Keras without it: the plain name
        return prefix
    return uniquify(prefix)


@keras.saving.register_keras_serializable(package="lib")
class AdaFactor(keras.optimizers.Optimizer):
    """AdaFactor (Shazeer & Stern, 2018) as the article writes it, with every option of the paper.

    For each variable θ with gradient g at step t (counting from 1)::

        β̂_t   = 1 − t^(−c)                                          (decay_exponent c)
        matrix (factored):  r = β̂ r + (1 − β̂) mean_j(g² + ε₁)        shape (n,)
                            s = β̂ s + (1 − β̂) mean_i(g² + ε₁)        shape (m,)
                            v̂_ij = r_i s_j / mean_i(r_i)
        otherwise:          v̂ = β̂ v̂ + (1 − β̂)(g² + ε₁)              shape of θ
        u     = g / √v̂
        u     = u / max(1, RMS(u) / d)                                (clip_threshold d; None: no clipping)
        u     = m = β₁ m + (1 − β₁) u                                 (only if beta_1)
        ρ     = learning_rate, or min(learning_rate, 1/√t)            (relative_step)
        θ     = θ − ρ · max(ε₂, RMS(θ)) · u                           (multiply_by_parameter_scale)

    Huge and non-finite gradients: g² is formed as s²·(g/s)² with s a power of two near max|g| (exact, so a
    finite gradient up to the dtype's largest value never overflows to inf or NaN), and the second-moment
    statistics saturate at the dtype's largest finite value. A gradient with an inf or NaN entry **skips**
    that variable's update: θ and its state stay as they were (eagerly and in graphs alike; under mixed
    precision the ``LossScaleOptimizer`` skips such a step before AdaFactor sees it).

    The article writes the factored moment with row and column **sums**, v̂_ij = R_i C_j / Σ_j C_j; this
    class stores the row and column **means** (R_i/m and C_j/n), as the article's code and Keras do: v̂ is
    the same, and the stored numbers do not grow with the matrix. It never forms v̂: u = g · (r_i / mean r)^(−½)
    · s_j^(−½), two broadcasts of vectors, so the state really is n + m numbers and no n×m buffer is written.

    Args:
        learning_rate: a positive float, a ``keras.optimizers.schedules.LearningRateSchedule`` or a callable.
            With ``multiply_by_parameter_scale`` it is a *relative* step (the paper's ρ). Defaults to
            ``1e-3``, the article's advice.
        beta_1: momentum on the clipped update, in ``[0, 1)``; ``0`` or ``None`` (default) keeps no first
            moment, which is the article's step 1 (and saves n·m numbers).
        decay_exponent: ``c`` in β̂_2,t = 1 − t^(−c), in ``(0, 1]``. Defaults to ``0.8``.
        epsilon_1: added to g² (the article's ε₁), positive. Defaults to ``1e-30``.
        epsilon_2: the floor of RMS(θ) in the parameter scale (ε₂), positive. Defaults to ``1e-3``.
        clip_threshold: ``d`` of the update clipping, positive, or ``None`` for no clipping. Defaults to ``1.0``.
        relative_step: if ``True``, the step is ``min(learning_rate, 1/√t)``; with ``learning_rate=1e-2`` this
            is the paper's ρ_t = min(10⁻², 1/√t). Defaults to ``False`` (the article: a fixed rate is usual).
        multiply_by_parameter_scale: scale the step by max(ε₂, RMS(θ)) of each variable. Defaults to ``True``.
        factored: factor the second moment of variables of rank ≥ 2. Defaults to ``True``; ``False`` gives the
            full moment (an RMSProp with AdaFactor's schedule and clipping).
        min_dim_size_to_factor: factor only when both factored axes have at least this length (the article's
            code and mesh_tensorflow use 128: a thin matrix saves little). ``1`` factors every matrix, as the
            paper's algorithm and ``keras.optimizers.Adafactor`` do. Defaults to ``128``.
        name: the optimizer's name. Defaults to ``"adafactor"``, numbered (``"adafactor_1"``, ...) from the second
            optimizer on, as Keras numbers its own optimizers.
        **kwargs: the arguments every Keras optimizer takes (``weight_decay``, ``clipnorm``, ``use_ema``...).

    Raises:
        ValueError: naming the argument, for a value outside the ranges above.

    Example:

    >>> optimizer = AdaFactor(learning_rate=1e-2, relative_step=True)
    >>> kernel = keras.Variable(np.full((256, 128), 0.5, "float32"))
    >>> optimizer.build([kernel])
    >>> {name: tuple(v.shape) for name, v in optimizer.state_of(kernel).items()}
    {'row': (256,), 'col': (128,)}
    >>> optimizer.apply([np.full((256, 128), 0.1, "float32")], [kernel])
    >>> round(float(kernel[0, 0]), 6)    # 0.5 − min(1e-2, 1/√1) · RMS(θ) · 1
    0.495

    Reference:
        Su Jianlin, "AdaFactor优化器浅析（附开源实现）", https://kexue.fm/archives/7302 (2020);
        Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018,
        arXiv:1804.04235.
    """

    def __init__(
        self,
        learning_rate=1e-3,
        beta_1=None,
        decay_exponent=PAPER_DEFAULTS["decay_exponent"],
        epsilon_1=PAPER_DEFAULTS["epsilon_1"],
        epsilon_2=PAPER_DEFAULTS["epsilon_2"],
        clip_threshold=PAPER_DEFAULTS["clip_threshold"],
        relative_step=False,
        multiply_by_parameter_scale=True,
        factored=True,
        min_dim_size_to_factor=128,
        name=None,
        **kwargs,
    ):
        if _is_number(learning_rate):
            if not (np.isfinite(learning_rate) and learning_rate > 0):
                raise ValueError("`learning_rate` must be a positive number, a LearningRateSchedule or a callable. "
                                 f"Received: learning_rate={learning_rate!r}")
            learning_rate = float(learning_rate)
        elif not callable(learning_rate):
            raise ValueError("`learning_rate` must be a positive number, a LearningRateSchedule or a callable. "
                             f"Received: learning_rate={learning_rate!r}")
        beta_1 = _check_range("beta_1", beta_1, 0.0, 1.0, low_open=False, high_open=True, allow_none=True)
        decay_exponent = _check_range(
            "decay_exponent", decay_exponent, 0.0, 1.0, low_open=True, high_open=False,
            hint=" (β̂_2,t = 1 − t^(−c); keras.optimizers.Adafactor's beta_2_decay=-0.8 is decay_exponent=0.8.)")
        epsilon_1 = _check_range("epsilon_1", epsilon_1, 0.0, np.inf, low_open=True, high_open=True)
        epsilon_2 = _check_range("epsilon_2", epsilon_2, 0.0, np.inf, low_open=True, high_open=True)
        clip_threshold = _check_range("clip_threshold", clip_threshold, 0.0, np.inf, low_open=True,
                                      high_open=True, allow_none=True)
        if (isinstance(min_dim_size_to_factor, bool) or not isinstance(min_dim_size_to_factor, numbers.Integral)
                or min_dim_size_to_factor < 1):
            raise ValueError("`min_dim_size_to_factor` must be a positive integer. "
                             f"Received: min_dim_size_to_factor={min_dim_size_to_factor!r}")
        if name is None:  # "adafactor", then "adafactor_1", ...: numbered as Keras numbers its own optimizers
            name = _unique_name("adafactor")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1 or None
        self.decay_exponent = decay_exponent
        self.epsilon_1 = epsilon_1
        self.epsilon_2 = epsilon_2
        self.clip_threshold = clip_threshold
        self.relative_step = _check_bool("relative_step", relative_step)
        self.multiply_by_parameter_scale = _check_bool("multiply_by_parameter_scale", multiply_by_parameter_scale)
        self.factored = _check_bool("factored", factored)
        self.min_dim_size_to_factor = int(min_dim_size_to_factor)

    # --- state -----------------------------------------------------------------------------------

    @staticmethod
    def _state_dtype(variable):
        # float16/bfloat16 variables keep their statistics in float32: ε₁ = 1e-30 and g² of a large gradient
        # do not fit a 16-bit float.
        dtype = keras.backend.standardize_dtype(variable.dtype)
        return "float32" if dtype in ("float16", "bfloat16") else dtype

    def _add_state(self, variable, shape, suffix):
        name = f"{getattr(variable, 'path', variable.name).replace('/', '_')}_{suffix}"
        strategy = getattr(self, "_distribution_strategy", None)
        if strategy is None:  # not the TensorFlow backend
            return self.add_variable(shape=shape, dtype=self._state_dtype(variable), name=name)
        reference = variable.value if isinstance(variable, keras.Variable) else variable
        with strategy.extended.colocate_vars_with(reference):
            return self.add_variable(shape=shape, dtype=self._state_dtype(variable), name=name)

    def _axes(self, variable):
        if not self.factored:
            return None
        return factored_axes(variable.shape, self.min_dim_size_to_factor)

    def build(self, var_list):
        """Create the state: a row and a column vector per factored variable, else a full second moment;
        plus a first moment of full size only when ``beta_1`` is set."""
        if self.built:
            return
        super().build(var_list)
        self._rows, self._cols, self._velocities, self._momenta, self._factor_axes = [], [], [], [], []
        for variable in var_list:
            if self._overwrite_variable_with_gradient(variable):
                for store in (self._rows, self._cols, self._velocities, self._momenta, self._factor_axes):
                    store.append(None)
                continue
            shape = tuple(variable.shape)
            axes = self._axes(variable)
            self._factor_axes.append(axes)
            if axes is None:
                self._rows.append(None)
                self._cols.append(None)
                self._velocities.append(self._add_state(variable, shape, "velocity"))
            else:
                row_axis, col_axis = axes
                self._rows.append(self._add_state(variable, shape[:col_axis] + shape[col_axis + 1:], "row"))
                self._cols.append(self._add_state(variable, shape[:row_axis] + shape[row_axis + 1:], "col"))
                self._velocities.append(None)
            self._momenta.append(self._add_state(variable, shape, "momentum") if self.beta_1 else None)

    def state_of(self, variable):
        """The optimizer variables that hold ``variable``'s state, by role.

        Returns:
            A dict with ``"row"`` and ``"col"`` (factored) or ``"velocity"`` (full second moment), and
            ``"momentum"`` when ``beta_1`` is set.

        Raises:
            ValueError: if the optimizer was not built with ``variable``.
        """
        try:
            index = self._get_variable_index(variable)
        except (KeyError, AttributeError):
            raise ValueError("`variable` must be one of the variables the optimizer was built with (call `build` or "
                             f"apply it first). Received: variable={getattr(variable, 'path', variable)!r}") from None
        state = {"row": self._rows[index], "col": self._cols[index], "velocity": self._velocities[index],
                 "momentum": self._momenta[index]}
        return {role: value for role, value in state.items() if value is not None}

    # --- the update ------------------------------------------------------------------------------

    def update_step(self, gradient, variable, learning_rate):
        """One AdaFactor step for one variable (the equations of the class docstring); a gradient with an inf
        or NaN entry leaves the variable and its state unchanged."""
        index = self._get_variable_index(variable)
        dtype = self._state_dtype(variable)
        gradient = ops.cast(_dense_gradient(gradient, variable), dtype)
        if not all(g is None or v is None or g == v for g, v in zip(gradient.shape, variable.shape)) or len(
                gradient.shape) != len(variable.shape):
            raise ValueError(f"`gradient` must have the shape of its variable {tuple(variable.shape)} "
                             f"({getattr(variable, 'path', variable.name)}). Received: gradient.shape="
                             f"{tuple(gradient.shape)}")
        finite = ops.all(ops.isfinite(gradient))  # else: skip this variable (see the class docstring)
        gradient = ops.where(finite, gradient, 0.0)

        def assign(state, value):
            self.assign(state, ops.where(finite, value, ops.convert_to_tensor(state)))

        theta = ops.cast(ops.convert_to_tensor(variable), dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_2 = beta_2_schedule(step, self.decay_exponent)
        epsilon_1 = ops.cast(self.epsilon_1, dtype)

        axes = self._factor_axes[index]
        if axes is not None:
            row_axis, col_axis = axes
            row, col = self._rows[index], self._cols[index]
            # mean(g² + ε₁) = mean(g²) + ε₁, with g² formed without overflow
            new_row = beta_2 * row + (1.0 - beta_2) * (_mean_square(gradient, col_axis) + epsilon_1)
            new_col = beta_2 * col + (1.0 - beta_2) * (_mean_square(gradient, row_axis) + epsilon_1)
            assign(row, new_row)
            assign(col, new_col)
            # v̂_ij = r_i s_j / mean_i r, applied as two vector broadcasts. Taking the square roots separately
            # keeps v̂ from underflowing to 0 where a whole row and a whole column had zero gradient (ε₁² = 1e-60
            # is 0 in float32, and 0/0 would poison RMS(u) for the whole matrix), and r / mean r from
            # underflowing next to a huge row. √(mean r) = RMS(√r) where the mean overflows (saturated r).
            mean_row = _mean(new_row, axis=row_axis, keepdims=True)
            root_mean_row = ops.where(ops.isfinite(mean_row), ops.sqrt(mean_row),
                                      _stable_rms(ops.sqrt(new_row), axis=row_axis))
            row_factor = ops.rsqrt(new_row) * root_mean_row
            col_factor = ops.rsqrt(new_col)
            update = gradient * ops.expand_dims(row_factor, col_axis) * ops.expand_dims(col_factor, row_axis)
        else:
            velocity = self._velocities[index]
            new_velocity = beta_2 * velocity + (1.0 - beta_2) * (_mean_square(gradient) + epsilon_1)
            assign(velocity, new_velocity)
            update = gradient * ops.rsqrt(new_velocity)

        finfo = np.finfo(dtype)
        update = ops.clip(update, -finfo.max, finfo.max)  # (saturated statistics can leave an inf)
        if self.clip_threshold is not None:
            update = update / ops.maximum(1.0, _stable_rms(update) / self.clip_threshold)
        if self.beta_1:
            momentum = self._momenta[index]
            update = self.beta_1 * momentum + (1.0 - self.beta_1) * update
            assign(momentum, update)

        step_size = ops.cast(learning_rate, dtype)
        if self.relative_step:
            step_size = ops.minimum(step_size, ops.rsqrt(step))
        if self.multiply_by_parameter_scale:
            step_size = step_size * ops.maximum(ops.cast(self.epsilon_2, dtype), _stable_rms(theta))
        self.assign_sub(variable, ops.cast(ops.where(finite, step_size * update, 0.0), variable.dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "decay_exponent": self.decay_exponent,
            "epsilon_1": self.epsilon_1,
            "epsilon_2": self.epsilon_2,
            "clip_threshold": self.clip_threshold,
            "relative_step": self.relative_step,
            "multiply_by_parameter_scale": self.multiply_by_parameter_scale,
            "factored": self.factored,
            "min_dim_size_to_factor": self.min_dim_size_to_factor,
        }


# ---------------------------------------------------------------------------------------------
# Measuring memory
# ---------------------------------------------------------------------------------------------


def state_bytes(optimizer, *, per_parameter_only=False):
    """Bytes held by an optimizer's variables, read from the variables themselves.

    Every variable the optimizer owns is copied to the host and its buffer's ``nbytes`` summed, so the number
    is what was allocated, whatever the optimizer's formula says. A ``LossScaleOptimizer`` reports its inner
    optimizer's variables and its own.

    Args:
        optimizer: a built Keras optimizer.
        per_parameter_only: leave out scalar bookkeeping (the step counter, the learning rate, a loss scale):
            variables of rank 0.

    Returns:
        An int.

    Raises:
        ValueError: if the optimizer has not been built (it has no state yet).

    Example:

    >>> optimizer = keras.optimizers.Adam()
    >>> optimizer.build([keras.Variable(np.zeros((300, 200), "float32"))])
    >>> state_bytes(optimizer, per_parameter_only=True)    # m and v: 2 × 300 × 200 × 4 bytes
    480000
    """
    if not getattr(optimizer, "built", False):
        raise ValueError(f"`optimizer` must be built (apply it once, or call build). Received: optimizer={optimizer!r}")
    total = 0
    for variable in optimizer.variables:
        if per_parameter_only and len(variable.shape) == 0:
            continue
        total += np.asarray(keras.ops.convert_to_numpy(variable)).nbytes
    return int(total)
