"""The distribute path of lib.attention: two logical CPUs under MirroredStrategy, in mixed precision.

A small classifier with a padding mask, talking heads, a larger key size and dropout trains with
``model.fit`` across two replicas; its weights stay float32 while the attention runs in float16, the
loss falls, and the model saves and loads.
"""

from lib.testing import run_under_mirrored_strategy


def test_attention_classifier_trains_under_mirrored_strategy_in_mixed_precision():
    run_under_mirrored_strategy("""
        import tempfile, os
        from lib.attention import MultiHeadAttention
        keras.config.set_dtype_policy("mixed_float16")
        rng = np.random.default_rng(0)
        ids = rng.integers(1, 12, size=(128, 10))
        ids[:, 7:] = np.where(rng.random((128, 3)) < 0.5, 0, ids[:, 7:])  # right padding
        labels = (ids == 3).any(axis=1).astype("float32")  # "does token 3 occur?": needs attention
        with strategy.scope():
            tokens = keras.Input((10,), dtype="int32")
            x = keras.layers.Embedding(12, 16, mask_zero=True)(tokens)
            layer = MultiHeadAttention(4, 8, value_size=4, talking_heads_pre=True, talking_heads_post=True,
                                       dropout=0.1, seed=0)
            x = layer(x, x)
            x = keras.layers.GlobalAveragePooling1D()(x)
            outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(x)
            model = keras.Model(tokens, outputs)
            model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
        assert layer.compute_dtype == "float16" and all(w.dtype == "float32" for w in layer.weights)
        losses = model.fit(ids, labels, batch_size=32, epochs=4, verbose=0).history["loss"]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "m.keras")
            model.save(path)
            loaded = keras.models.load_model(path)
        np.testing.assert_allclose(loaded.predict(ids, verbose=0), model.predict(ids, verbose=0), atol=1e-3)
        print("ok")
    """)
