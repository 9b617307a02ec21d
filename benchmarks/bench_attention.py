"""Time lib.attention.MultiHeadAttention against keras.layers.MultiHeadAttention, forward + backward.

    python benchmarks/bench_attention.py [--batch 4] [--length 128] [--hidden 768] [--heads 12]
                                         [--repeats 10] [--rounds 3] [--xla]

One process, the same input for every layer, interleaved rounds (lib.benchmarking.compare). The
defaults are one BERT-base attention layer (hidden 768, 12 heads of 64) on 4 sequences of 128 tokens.
Rows: Keras's layer; lib's plain layer (weights copied from Keras's, so the two compute the same
function); lib with talking heads before, after, and on both sides of the softmax; lib with the key
size doubled. The design targets: lib plain <= 1.05x Keras, and talking heads (both) <= 1.15x lib plain.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from lib import attention, benchmarking  # noqa: E402
from lib.attention import MultiHeadAttention  # noqa: E402


def forward_and_backward(layer):
    """Output of self-attention, loss = sum of squares, gradients of every weight and of the input."""

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x, x)))
        return tape.gradient(loss, [x, *layer.trainable_weights])

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--xla", action="store_true", help="compile with XLA (jit_compile=True)")
    args = parser.parse_args()
    if args.hidden % args.heads:
        parser.error(f"--hidden must be divisible by --heads. Received: --hidden={args.hidden}, --heads={args.heads}")
    head = args.hidden // args.heads

    keras.utils.set_random_seed(0)
    x = tf.random.stateless_normal((args.batch, args.length, args.hidden), seed=(0, 0))
    layers = {
        "keras MultiHeadAttention": keras.layers.MultiHeadAttention(args.heads, head),
        "lib plain": MultiHeadAttention(args.heads, head),
        "lib talking heads (pre)": MultiHeadAttention(args.heads, head, talking_heads_pre=True),
        "lib talking heads (post)": MultiHeadAttention(args.heads, head, talking_heads_post=True),
        "lib talking heads (both)": MultiHeadAttention(args.heads, head, talking_heads_pre=True,
                                                       talking_heads_post=True),
        f"lib key_size {2 * head}": MultiHeadAttention(args.heads, 2 * head, value_size=head),
    }
    for layer in layers.values():
        layer(x, x)
    layers["lib plain"].set_weights(layers["keras MultiHeadAttention"].get_weights())
    difference = np.abs(np.asarray(layers["lib plain"](x, x)) - np.asarray(layers["keras MultiHeadAttention"](x, x)))
    runners = {name: benchmarking.tf_runner(forward_and_backward(layer), x, jit_compile=args.xla)
               for name, layer in layers.items()}
    table = benchmarking.compare(runners, reference="keras MultiHeadAttention", repeats=args.repeats,
                                 rounds=args.rounds)
    table["vs lib plain"] = table["ms"] / table.loc["lib plain", "ms"]
    flops = {name: attention.flop_count(args.length, args.hidden, layer.num_heads, layer.key_size, layer.value_size,
                                        talking_heads_pre=getattr(layer, "talking_heads_pre", False),
                                        talking_heads_post=getattr(layer, "talking_heads_post", False))
             for name, layer in layers.items() if isinstance(layer, MultiHeadAttention)}
    flops["keras MultiHeadAttention"] = flops["lib plain"]
    table["forward GFLOP"] = [args.batch * flops[name] / 1e9 for name in table.index]

    print(f"Attention benchmark, forward + backward: batch {args.batch}, length {args.length}, hidden "
          f"{args.hidden}, {args.heads} heads of {head}; XLA={args.xla}; {args.rounds} rounds x {args.repeats} "
          f"repeats, median ms")
    print(benchmarking.environment_line())
    print(f"max |lib plain - keras| on the output: {difference.max():.2e}")
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 120):
        print(table)
    ratio = table.loc["lib plain", "ratio"]
    print(f"target lib plain <= 1.05x keras MultiHeadAttention: {ratio:.2f}x -> "
          + ("met" if ratio <= 1.05 else "MISSED (see the table: ratios on a loaded machine vary between runs)"))
    ratio = table.loc["lib talking heads (both)", "vs lib plain"]
    share = 2 * args.heads / (2 * head)  # talking-heads multiply-adds per attention entry / those of QK^T and PV
    print(f"target lib talking heads (both) <= 1.15x lib plain: {ratio:.2f}x -> "
          + ("met" if ratio <= 1.15 else
             f"MISSED: the two h x h mixings are two extra passes (forward) and four (backward) over the "
             f"(batch, heads, length, length) tensor, memory-bound on a CPU; their arithmetic is only "
             f"{share:.0%} of that of QK^T and PV, and their share of the time grows with length / hidden"))


if __name__ == "__main__":
    main()
