"""Side-by-side timing: the same input, several implementations, one run, ratios to a reference.

Used by the chapters (speed cells, whose output nbval ignores) and by the scripts in
``benchmarks/``. Absolute seconds depend on the machine; the *ratios* measured in one run are
what the book reports and compares with the targets in the design notes.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping


def time_call(fn: Callable[[], object], *, repeats: int = 20, warmup: int = 2) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` calls.

    ``fn`` must finish its work before returning (for TensorFlow, return a small value computed
    from the result, or call ``.numpy()``), or the time measures only the dispatch.
    """
    for name, value, minimum in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def compare(candidates: Mapping[str, Callable[[], object]], reference: str, *, repeats: int = 20,
            warmup: int = 2, rounds: int = 3):
    """Time every candidate in interleaved rounds and return a table of medians and ratios.

    Interleaving (A B C, A B C, ...) spreads slow drifts of the machine (thermal, other load) over
    all candidates instead of penalising whichever runs last.

    Args:
        candidates: name -> zero-argument callable.
        reference: the name whose time is the denominator of the ``ratio`` column.
        repeats, warmup: passed to :func:`time_call` in each round.
        rounds: how many interleaved rounds; the table reports the median over rounds.

    Returns:
        A ``pandas.DataFrame`` indexed by name with columns ``ms`` and ``ratio``.
    """
    import pandas as pd

    if reference not in candidates:
        raise ValueError(
            f"`reference` must be one of the candidates {list(candidates)}. Received: reference={reference!r}"
        )
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"`rounds` must be a positive integer. Received: rounds={rounds!r}")
    per_round = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            per_round[name].append(time_call(fn, repeats=repeats, warmup=warmup))
    seconds = {name: statistics.median(values) for name, values in per_round.items()}
    table = pd.DataFrame({"ms": {name: 1e3 * s for name, s in seconds.items()}})
    table["ratio"] = table["ms"] / table.loc[reference, "ms"]
    table.index.name = "implementation"
    return table


def tf_runner(fn: Callable, *args, jit_compile: bool = False) -> Callable[[], object]:
    """Wrap ``fn(*args)`` in a ``tf.function`` and return a zero-argument callable for :func:`compare`.

    The callable reads one element of the result back to the host, which waits for the device to
    finish (GPUs run asynchronously) at the cost of a single-number copy.
    """
    import tensorflow as tf

    compiled = tf.function(fn, jit_compile=jit_compile)

    def run():
        result = compiled(*args)
        first = tf.nest.flatten(result)[0]
        return tf.reshape(first, [-1])[0].numpy()

    return run


def forward_and_backward(fn: Callable) -> Callable:
    """``x -> ∂/∂x Σ fn(x)``: one forward and one backward pass of an element-wise ``fn``, for timing."""
    import tensorflow as tf

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(fn(x))
        return tape.gradient(total, x)

    return step


def environment_line(**extra: object) -> str:
    """One line naming the versions and the device a benchmark ran on, for the top of its table.

    ``extra`` adds ``name value`` pairs (other libraries' versions, thread counts).
    """
    import platform

    from lib import config

    report = config.environment_report()
    parts = [f"python {platform.python_version()}", f"tensorflow {report['tensorflow']}", f"keras {report['keras']}",
             *(f"{name.replace('_', '-')} {value}" for name, value in extra.items()), f"device: {report['device']}"]
    return ", ".join(parts)
