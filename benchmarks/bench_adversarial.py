"""Time one training step of lib.adversarial's FGM and gradient penalty against plain training, side by side.

    python benchmarks/bench_adversarial.py [--batch 64] [--length 48] [--vocabulary 3000] [--width 64] [--xla]

The model is the chapter's character CNN (embedding, convolution, max-pooling, dropout, logistic output). Every
candidate trains the same model on the same batch, interleaved over several rounds, in one process:

* plain Keras training (the reference),
* ``FGMModel`` (the perturbation on the embedding output, one norm per example),
* ``FGMModel(clean_loss=True)`` (L(x) + L(x + r)),
* ``GradientPenaltyModel`` (double backpropagation),
* the article's own scheme, written here as a peer: the perturbation is added to the embedding *matrix*
  (densified gradient, one global norm), a normal training step runs, and the perturbation is removed.

The article says an FGM step costs "roughly twice" a plain one; that is the target printed at the end. The
design notes set no speed target for this module. Two clocks: wall time (``lib.benchmarking.compare``) and the
process's CPU time over all threads, interleaved the same way; on a machine shared with other jobs the second
is the one to read.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from lib import adversarial, benchmarking  # noqa: E402


def char_cnn(vocabulary, length, width, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((length,), dtype="int32")
    hidden = keras.layers.Embedding(vocabulary, width, name="embedding")(inputs)
    hidden = keras.layers.Conv1D(width, 3, activation="relu")(hidden)
    hidden = keras.layers.GlobalMaxPooling1D()(hidden)
    hidden = keras.layers.Dropout(0.3)(hidden)
    return keras.Model(inputs, keras.layers.Dense(1)(hidden))


class ArticleMatrixFGM(keras.Model):
    """The article's Keras 2 scheme in a Keras 3 train_step: perturb the embedding matrix, step, restore."""

    def __init__(self, model, epsilon, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.epsilon = epsilon
        self.matrix = model.get_layer("embedding").embeddings

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            loss = self._compute_loss(x=x, y=y, y_pred=self(x, training=True), sample_weight=sample_weight)
        gradient = tf.convert_to_tensor(tape.gradient(loss, self.matrix))  # dense, as K.zeros_like(E) + g
        delta = self.epsilon * gradient / (tf.norm(gradient) + 1e-8)
        self.matrix.assign_add(delta)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        self.optimizer.apply_gradients(zip(tape.gradient(loss, self.trainable_weights), self.trainable_weights))
        self.matrix.assign_sub(delta)
        self._loss_tracker.update_state(loss)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--vocabulary", type=int, default=3000)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--xla", action="store_true", help="compile the steps with XLA (jit_compile=True)")
    args = parser.parse_args()
    # five models each trace their step once before being timed: TensorFlow's retracing notice is expected here
    tf.get_logger().setLevel("ERROR")

    rng = np.random.default_rng(0)
    x = rng.integers(0, args.vocabulary, (args.batch, args.length)).astype("int32")
    y = rng.integers(0, 2, (args.batch, 1)).astype("float32")
    loss = keras.losses.BinaryCrossentropy(from_logits=True)

    def make(kind):
        inner = char_cnn(args.vocabulary, args.length, args.width)
        model = {
            "plain keras": lambda: inner,
            "lib FGM": lambda: adversarial.FGMModel(inner, "embedding", args.epsilon),
            "lib FGM + clean loss": lambda: adversarial.FGMModel(inner, "embedding", args.epsilon, clean_loss=True),
            "lib gradient penalty": lambda: adversarial.GradientPenaltyModel(inner, "embedding", args.epsilon),
            "article matrix FGM": lambda: ArticleMatrixFGM(inner, args.epsilon),
        }[kind]()
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, jit_compile=args.xla)
        model.train_on_batch(x, y)  # build and trace outside the timing
        return lambda: model.train_on_batch(x, y)

    kinds = ["plain keras", "lib FGM", "lib FGM + clean loss", "lib gradient penalty", "article matrix FGM"]
    runners = {kind: make(kind) for kind in kinds}
    table = benchmarking.compare(runners, reference="plain keras", repeats=args.repeats, rounds=args.rounds)
    # Wall time is what a user waits for, but on a shared machine it mostly measures the queue for the cores.
    # CPU time of the process (all threads), interleaved the same way, is the steadier measure there.
    cpu = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind, run in runners.items():
            start = time.process_time()
            for _ in range(args.repeats):
                run()
            cpu[kind].append((time.process_time() - start) / args.repeats)
    table["cpu ms"] = [1e3 * statistics.median(cpu[kind]) for kind in table.index]
    table["cpu ratio"] = table["cpu ms"] / table.loc["plain keras", "cpu ms"]
    print(f"Adversarial training step: batch {args.batch}, length {args.length}, vocabulary {args.vocabulary}, "
          f"width {args.width}, XLA={args.xla}; {args.rounds} rounds x {args.repeats} repeats, median ms")
    print(benchmarking.environment_line())
    with pd.option_context("display.float_format", "{:.2f}".format, "display.width", 120):
        print(table)
    for column in ("ratio", "cpu ratio"):
        ratio = table.loc["lib FGM", column]
        verdict = "met" if ratio <= 2.0 else "MISSED (the step does two forward and two backward passes)"
        print(f"target lib FGM step <= 2.0x plain step (the article: 'roughly twice'), {column}: {ratio:.2f}x "
              f"-> {verdict}")
    print(f"for reference (cpu ratio): the article's matrix scheme {table.loc['article matrix FGM', 'cpu ratio']:.2f}x, "
          f"lib gradient penalty {table.loc['lib gradient penalty', 'cpu ratio']:.2f}x (no target in the design notes)")


if __name__ == "__main__":
    main()
