"""Time lib.seq2seq's training steps and decoders side by side, on the shapes of chapter 8.

    python benchmarks/bench_seq2seq.py [--batch 128] [--hidden 64] [--repeats 10] [--rounds 3]

Training steps (one batch of CMU-dictionary words, spelling -> phonemes): teacher forcing, the article's
two remedies (random replacement, FGM on the decoder embeddings), and two peers written here that
decode **step by step** during training, as scheduled sampling must (each input may be the model's own
previous output, known only after the previous step): one feeding the gold tokens (teacher forcing done
sequentially), one feeding the model's own argmax with probability 0.25 (scheduled sampling).
Decoding: teacher-forced scoring of a batch (one pass) against greedy and beam search (step by step).

DESIGN.md sets no performance target for lib.seq2seq; the adversarial-training article expects an FGM
step to cost about twice a plain step, and the script reports that ratio.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from lib import benchmarking, config, data, seq2seq  # noqa: E402


def stepwise_training_step(model, probability, seed=0):
    """A training step whose decoder runs position by position, feeding the gold token or, with
    ``probability``, the model's own previous argmax (scheduled sampling; 0 gives teacher forcing)."""
    generator = tf.random.Generator.from_seed(seed)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)

    @tf.function
    def step(source, decoder_inputs, targets):
        with tf.GradientTape() as tape:
            memory, mask, hidden = model.encode(source, training=True)
            length = tf.shape(decoder_inputs)[1]
            logits = tf.TensorArray(tf.float32, size=length)
            previous = decoder_inputs[:, 0]
            state = (hidden, memory, mask)
            for t in tf.range(length):
                use_own = generator.uniform(tf.shape(previous)) < probability
                token = tf.where((t > 0) & use_own, previous, decoder_inputs[:, t])
                step_logits, state = model.decode_step(token, state)
                logits = logits.write(t, step_logits)
                previous = tf.stop_gradient(tf.cast(tf.argmax(step_logits, axis=-1), tf.int32))
            logits = tf.transpose(logits.stack(), (1, 0, 2))
            loss = loss_fn(targets, logits)
        gradients = tape.gradient(loss, model.trainable_weights)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_weights))
        return loss

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--embedding", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    config.set_seed()
    pairs = seq2seq.grapheme_phoneme_pairs(min_phonemes=8, max_phonemes=12, max_letters=12)
    letters = data.Vocabulary.from_sequences([word for word, _ in pairs])
    phonemes = data.Vocabulary.from_sequences([p for _, p in pairs], extra=("<s>", "</s>"))
    start, end = phonemes.index["<s>"], phonemes.index["</s>"]
    rows = np.random.default_rng(0).choice(len(pairs), size=args.batch, replace=False)
    source = letters.encode([pairs[i][0] for i in rows], length=12)
    targets = phonemes.encode([pairs[i][1] + ["</s>"] for i in rows], length=13)
    decoder_inputs = np.asarray(seq2seq.shift_right(targets, start))
    x = {"source": source, "decoder_inputs": decoder_inputs}

    def model(**options):
        built = seq2seq.Seq2Seq(len(letters), len(phonemes), embedding_dim=args.embedding, hidden_dim=args.hidden,
                                start_id=start, end_id=end, seed=0, **options)
        built.compile(keras.optimizers.Adam(1e-3))
        return built

    training = {
        "teacher forcing": model(),
        "random replacement": model(replacement_rate=0.3, replacement_probability=0.5),
        "FGM (ε = 0.5)": model(adversarial_epsilon=0.5),
    }
    runners = {name: (lambda m=m: float(m.train_on_batch(x, targets))) for name, m in training.items()}
    for name, probability in (("step by step, gold inputs", 0.0), ("scheduled sampling (p = 0.25)", 0.25)):
        stepwise = model()
        step = stepwise_training_step(stepwise, probability)
        tensors = [tf.constant(a) for a in (source, decoder_inputs, targets)]
        runners[name] = lambda step=step, tensors=tensors: float(step(*tensors))
    train_table = benchmarking.compare(runners, reference="teacher forcing", repeats=args.repeats,
                                       rounds=args.rounds)

    decoder = training["teacher forcing"]
    decoding = {
        "teacher-forced scoring (one pass)": lambda: decoder.teacher_forced(source, targets)[1].sum(),
        "greedy search": lambda: decoder.generate(source, max_length=13).sum(),
        "beam search, beam 3": lambda: decoder.generate(source, beam_size=3, max_length=13).sum(),
    }
    decode_table = benchmarking.compare(decoding, reference="teacher-forced scoring (one pass)",
                                        repeats=args.repeats, rounds=args.rounds)

    print(f"seq2seq benchmark: batch {args.batch} words, source length 12, target length 13, embedding "
          f"{args.embedding}, hidden {args.hidden}; {args.rounds} rounds x {args.repeats} repeats, median ms")
    print(benchmarking.environment_line())
    with pd.option_context("display.float_format", "{:.2f}".format, "display.width", 120):
        print("\ntraining step (ratio to teacher forcing)")
        print(train_table)
        print("\ndecoding a batch (ratio to one teacher-forced pass)")
        print(decode_table)
    print("\nDESIGN.md sets no performance target for lib.seq2seq.")
    fgm = train_table.loc["FGM (ε = 0.5)", "ratio"]
    print(f"article expectation (kexue.fm/archives/7234): an FGM step costs about 2x a plain step -> measured "
          f"{fgm:.2f}x")
    sampled = train_table.loc["scheduled sampling (p = 0.25)", "ratio"]
    print(f"scheduled sampling (step by step) vs teacher forcing (one pass over the sequence): {sampled:.2f}x")


if __name__ == "__main__":
    main()
