"""Time lib's multi-label loss against the article's recipe and binary cross-entropy, side by side.

    python benchmarks/bench_losses.py [--batch 256] [--labels 14 200 2000] [--repeats 20] [--xla]

Every implementation runs on the same logits and labels, interleaved over several rounds, in one process;
the table gives medians (forward, and forward + backward) and ratios to Keras's binary cross-entropy on
logits, the loss that the multi-label loss replaces. The peers:

* ``lib``: ``lib.losses.multilabel_categorical_crossentropy`` (masked entries set to -inf, float32 at least);
* ``article recipe``: the article's Keras code (sign flip, masks of ±1e12, a zero logit, two logsumexps);
* ``keras BCE``: ``keras.losses.binary_crossentropy(..., from_logits=True)``.

DESIGN.md sets no speed target for this module; the script reports the ratios so a regression shows.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from lib import benchmarking, losses  # noqa: E402


def article_recipe(y_true, y_pred):
    y_pred = (1 - 2 * y_true) * y_pred
    y_neg = y_pred - y_true * 1e12
    y_pos = y_pred - (1 - y_true) * 1e12
    zeros = keras.ops.zeros_like(y_pred[..., :1])
    return (keras.ops.logsumexp(keras.ops.concatenate([y_neg, zeros], axis=-1), axis=-1)
            + keras.ops.logsumexp(keras.ops.concatenate([y_pos, zeros], axis=-1), axis=-1))


IMPLEMENTATIONS = {
    "lib": losses.multilabel_categorical_crossentropy,
    "article recipe": article_recipe,
    "keras BCE": lambda y, s: keras.losses.binary_crossentropy(y, s, from_logits=True),
}


def forward(fn, y):
    return lambda s: tf.reduce_mean(fn(y, s))


def forward_and_backward(fn, y):
    def step(s):
        with tf.GradientTape() as tape:
            tape.watch(s)
            value = tf.reduce_mean(fn(y, s))
        return tape.gradient(value, s)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--labels", type=int, nargs="+", default=[14, 200, 2000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--xla", action="store_true", help="compile with XLA (jit_compile=True)")
    args = parser.parse_args()

    tables = {}
    for n in args.labels:
        rng = np.random.default_rng(n)
        y = tf.constant((rng.random((args.batch, n)) < min(0.3, 4.0 / n)).astype("float32"))
        s = tf.constant(rng.normal(size=(args.batch, n)).astype("float32"))
        for mode, wrap in (("forward", forward), ("forward+backward", forward_and_backward)):
            runners = {name: benchmarking.tf_runner(wrap(fn, y), s, jit_compile=args.xla)
                       for name, fn in IMPLEMENTATIONS.items()}
            tables[(n, mode)] = benchmarking.compare(runners, reference="keras BCE", repeats=args.repeats,
                                                     rounds=args.rounds)
    print(f"Multi-label loss benchmark: batch {args.batch}, labels {args.labels}, XLA={args.xla}, "
          f"{args.rounds} rounds x {args.repeats} repeats, median ms; ratio = time / keras BCE")
    print(benchmarking.environment_line())
    table = pd.concat(tables, names=["labels", "mode"]).unstack("implementation")
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 200,
                           "display.max_columns", None):
        print(table)
    worst = max(tables[key].loc["lib", "ms"] / tables[key].loc["article recipe", "ms"] for key in tables)
    print(f"lib vs the article's recipe: at most {worst:.2f}x its time over all shapes")
    print("target: none in DESIGN.md for lib.losses (reported for regressions only)")


if __name__ == "__main__":
    main()
