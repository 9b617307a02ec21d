"""The distribute path of lib.adversarial: two logical CPUs under MirroredStrategy, in float32 (against the
single-device step) and in mixed precision, in one fresh process (``lib.testing.run_under_mirrored_strategy``)."""

from lib.testing import run_under_mirrored_strategy

MODEL = """
        from lib import adversarial

        def classifier(seed=0):
            keras.utils.set_random_seed(seed)
            inputs = keras.Input((6,), dtype="int32")
            e = keras.layers.Embedding(16, 8, name="embedding")(inputs)
            h = keras.layers.GlobalAveragePooling1D()(keras.layers.Conv1D(8, 3, activation="tanh")(e))
            return keras.Model(inputs, keras.layers.Dense(1, dtype="float32", name="head")(h))

        rng = np.random.default_rng(0)
        x = rng.integers(0, 16, (32, 6)).astype("int32")
        y = (x[:, 0] < 8).astype("float32")[:, None]
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
"""


def test_mirrored_strategy_step_equals_single_device_and_trains_in_mixed_precision():
    # 1. float32: the replicas each see half the batch; the per-example gradients, the loss split over the
    #    replicas and the summed gradients must give exactly the single-device step.
    # 2. mixed_float16 under the strategy: both methods train (finite, falling loss). One process for both, to
    #    start TensorFlow once; the dtype policy only affects layers made after it is set.
    run_under_mirrored_strategy(MODEL + """
        # (the gradient penalty: the method whose loss arithmetic depends on the replica count)
        for method, options in (("gradient_penalty", {}),):
            weights = {}
            for where in ("single", "mirrored"):
                scope = strategy.scope() if where == "mirrored" else tf.distribute.get_strategy().scope()
                with scope:
                    model = adversarial.adversarial_training(classifier(), "embedding", 0.5, method=method,
                                                             **options)
                    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
                model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
                weights[where] = [w.numpy() for w in model.weights]
            for a, b in zip(weights["single"], weights["mirrored"]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{method} {options}")
            # and the step did move the weights
            assert not np.allclose(weights["single"][-2], classifier().get_layer("head").kernel.numpy())

        keras.config.set_dtype_policy("mixed_float16")
        for method in adversarial.METHODS:
            with strategy.scope():
                model = adversarial.adversarial_training(classifier(), "embedding", 0.5, method=method)
                model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
            assert model.model.get_layer("embedding").compute_dtype == "float16"
            losses = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history["loss"]
            assert all(np.isfinite(losses)) and losses[-1] < losses[0], (method, losses)
        print("ok")
    """)
