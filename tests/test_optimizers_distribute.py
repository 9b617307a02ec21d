"""The distribute path of lib.optimizers: AdaFactor under a two-CPU MirroredStrategy, in float32 (equal to one
device) and in mixed_float16 (wrapped in a LossScaleOptimizer, statistics kept in float32)."""

from lib.testing import run_under_mirrored_strategy


def test_adafactor_under_mirrored_strategy_equals_one_device_and_trains_in_mixed_precision():
    run_under_mirrored_strategy("""
        from lib.optimizers import AdaFactor, state_bytes

        rng = np.random.default_rng(0)
        x = rng.integers(0, 200, (64, 4)).astype("int32")
        y = rng.integers(0, 200, (64,)).astype("int32")

        def model():
            return keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(200, 128),
                                     keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
                                     keras.layers.Dense(200, dtype="float32")])

        def train(scope):
            with scope:
                keras.utils.set_random_seed(1)
                m = model()
                m.compile(AdaFactor(1e-2, relative_step=True, beta_1=0.5),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            history = m.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
            return m, history.history["loss"]

        # float32: two replicas of 8 examples each give the same steps as one device with 16
        single, single_loss = train(tf.distribute.get_strategy().scope())
        mirrored, mirrored_loss = train(strategy.scope())
        assert mirrored_loss[-1] < mirrored_loss[0], mirrored_loss
        np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-4)
        for a, b in zip(single.get_weights(), mirrored.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
        kernel = mirrored.layers[-1].kernel
        state = mirrored.optimizer.state_of(kernel)
        assert {k: tuple(v.shape) for k, v in state.items()} == {"row": (128,), "col": (200,), "momentum": (128, 200)}
        assert "Mirrored" in type(state["row"].value).__name__

        # mixed_float16: compile wraps the optimizer in a LossScaleOptimizer; the statistics stay float32
        keras.config.set_dtype_policy("mixed_float16")
        mixed, mixed_loss = train(strategy.scope())
        assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
        inner = mixed.optimizer.inner_optimizer
        assert isinstance(inner, AdaFactor)
        assert all(np.isfinite(mixed_loss)) and mixed_loss[-1] < mixed_loss[0], mixed_loss
        kernel = mixed.layers[-1].kernel
        assert {v.dtype for v in inner.state_of(kernel).values()} == {"float32"}
        assert state_bytes(mixed.optimizer) > state_bytes(inner)  # the loss scale's own variables
        print("ok")
    """)
