"""Time the GELU variants of lib.activations against keras.activations.gelu, side by side.

    python benchmarks/bench_gelu.py [--size 4000000] [--repeats 20] [--xla]

Every implementation runs on the same input, interleaved over several rounds, in one process; the
table gives medians and ratios to Keras's form of the same approximation (the design target:
lib is no slower than Keras for the same form, ratio <= 1.0). Forward and forward+backward.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from lib import activations, benchmarking  # noqa: E402

KERAS_FLAG = {"none": False, "tanh": True}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4_000_000, help="number of input values")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--xla", action="store_true", help="compile with XLA (jit_compile=True)")
    args = parser.parse_args()

    x = tf.random.stateless_normal((args.size,), seed=(0, 0))
    implementations = {f"lib {form}": (lambda v, f=form: activations.gelu(v, approximate=f))
                       for form in activations.APPROXIMATIONS}
    implementations |= {f"keras {form}": (lambda v, flag=flag: keras.activations.gelu(v, approximate=flag))
                        for form, flag in KERAS_FLAG.items()}
    tables = {}
    for mode, wrap in (("forward", lambda fn: fn), ("forward+backward", benchmarking.forward_and_backward)):
        runners = {name: benchmarking.tf_runner(wrap(fn), x, jit_compile=args.xla)
                   for name, fn in implementations.items()}
        table = benchmarking.compare(runners, reference="keras none", repeats=args.repeats, rounds=args.rounds)
        # the target compares like with like: lib's form against Keras's form of the same approximation
        table["vs keras, same form"] = [
            table.loc[name, "ms"] / table.loc[f"keras {name.split()[1]}", "ms"] if name.startswith("lib ")
            and f"keras {name.split()[1]}" in table.index else float("nan") for name in table.index]
        tables[mode] = table
    print(f"GELU benchmark: {args.size:,} float32 values, XLA={args.xla}, {args.rounds} rounds x {args.repeats} "
          f"repeats, median ms")
    print(benchmarking.environment_line())
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 120):
        print(pd.concat(tables, axis=1))
    for mode, table in tables.items():
        for form in KERAS_FLAG:
            ratio = table.loc[f"lib {form}", "vs keras, same form"]
            verdict = "met" if ratio <= 1.0 else "MISSED"
            print(f"target lib {form} <= 1.0x keras {form} ({mode}): {ratio:.2f}x -> {verdict}")


if __name__ == "__main__":
    main()
