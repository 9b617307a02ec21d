"""The distribute path of lib.activations: two logical CPUs under MirroredStrategy, mixed precision.

(Other modules keep their own MirroredStrategy scenario in their own test file, through
``lib.testing.run_under_mirrored_strategy``.)
"""

from lib.testing import run_under_mirrored_strategy


def test_gelu_layers_train_under_mirrored_strategy_in_mixed_precision():
    run_under_mirrored_strategy("""
        from lib.activations import GELU
        keras.config.set_dtype_policy("mixed_float16")
        x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
        y = x[:, :1] ** 2
        with strategy.scope():
            model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), GELU("tanh"),
                                      keras.layers.Dense(16), GELU("sigmoid"),
                                      keras.layers.Dense(1, dtype="float32")])
            model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        losses = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history["loss"]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
        print("ok")
    """)
