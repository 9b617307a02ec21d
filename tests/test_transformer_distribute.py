"""The distribute path of lib.transformer: two logical CPUs under MirroredStrategy, mixed precision."""

from lib.testing import run_under_mirrored_strategy


def test_albert_and_its_untied_copy_train_under_mirrored_strategy_in_mixed_precision():
    run_under_mirrored_strategy("""
        from lib.transformer import SequenceClassifier, TransformerEncoder
        keras.config.set_dtype_policy("mixed_float16")
        rng = np.random.default_rng(0)
        y = rng.integers(0, 2, size=64).astype("int32")
        x = rng.integers(5, 40, size=(64, 8)).astype("int32")
        x[:, 0] = 3 + y
        sizes = dict(vocabulary_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                     embedding_size=8, max_length=8, share_layers=True)
        # (the masked-LM model's fit with sample weights runs in the single-device tests)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        with strategy.scope():
            shared = SequenceClassifier(TransformerEncoder(**sizes, dropout=0.1), 2)
            shared.build(None)
            untied = shared.unshare()
            for model in (shared, untied):
                model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
        np.testing.assert_array_equal(shared(x), untied(x))
        assert untied.encoder.blocks[1].attention.query_kernel.dtype == "float32"
        for model in (shared, untied):
            losses = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history["loss"]
            assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
        print("ok")
    """)
