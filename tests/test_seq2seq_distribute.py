"""The distribute path of lib.seq2seq: two logical CPUs under MirroredStrategy, mixed precision, both remedies."""

from lib.testing import run_under_mirrored_strategy


def test_seq2seq_trains_with_both_remedies_under_mirrored_strategy_in_mixed_precision():
    run_under_mirrored_strategy("""
        from lib import seq2seq
        keras.config.set_dtype_policy("mixed_float16")
        rng = np.random.default_rng(0)
        x = rng.integers(4, 10, size=(256, 5)).astype("int32")
        y = np.concatenate([x, np.full((256, 1), 3, dtype="int32")], axis=1)  # copy, then the end token
        inputs = {"source": x, "decoder_inputs": np.asarray(seq2seq.shift_right(y, 2))}
        with strategy.scope():
            model = seq2seq.Seq2Seq(10, 10, embedding_dim=8, hidden_dim=16, replacement_rate=0.3,
                                    replacement_probability=0.5, adversarial_epsilon=0.5, seed=0)
            model.compile(optimizer=keras.optimizers.Adam(0.05))
        assert model.target_embedding.compute_dtype == "float16"
        losses = model.fit(inputs, y, batch_size=64, epochs=3, verbose=0).history["loss"]
        assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
        greedy = model.generate(x[:16], max_length=7)
        assert greedy.shape == (16, 7) and ((greedy == 3).sum(axis=1) <= 1).all()
        print("ok")
    """)
