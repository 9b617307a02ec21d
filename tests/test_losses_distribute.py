"""The distribute path of lib.losses: two logical CPUs under MirroredStrategy, in mixed precision.

The loss, the weighted baseline and the F1 metric go through ``model.compile``/``fit``/``evaluate``
with the batch split over two replicas; the evaluated loss must still be the mean over the whole
batch (Keras scales each replica's sum by the global batch size), and the metric's counts must be
summed over replicas.
"""

from lib.testing import run_under_mirrored_strategy


def test_losses_and_metric_under_mirrored_strategy_in_mixed_precision():
    run_under_mirrored_strategy("""
        from lib.losses import (MultilabelCategoricalCrossentropy, MultilabelF1Score, WeightedBinaryCrossentropy,
                                f1_scores, multilabel_categorical_crossentropy)
        keras.config.set_dtype_policy("mixed_float16")
        rng = np.random.default_rng(0)
        x = rng.normal(size=(96, 8)).astype("float32")
        y = (x @ rng.normal(size=(8, 5)) > 0.7).astype("float32")
        y[::7, -1] = -1.0  # a few padding labels
        with strategy.scope():
            inputs = keras.Input((8,))
            hidden = keras.layers.Dense(16, activation="relu")(inputs)
            outputs = {"zlpr": keras.layers.Dense(5, name="zlpr")(hidden),
                       "bce": keras.layers.Dense(5, name="bce")(hidden)}
            model = keras.Model(inputs, outputs)
            assert model.outputs[0].dtype == "float16"
            model.compile(optimizer=keras.optimizers.Adam(1e-2),
                          loss={"zlpr": MultilabelCategoricalCrossentropy(),
                                "bce": WeightedBinaryCrossentropy(pos_weight=[1.0, 2.0, 1.0, 3.0, 1.0])},
                          metrics={"zlpr": [MultilabelF1Score(average="micro", name="f1")]})
        history = model.fit(x, {"zlpr": y, "bce": y}, batch_size=32, epochs=4, verbose=0).history
        assert all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0], history["loss"]

        scores = model.predict(x, verbose=0)
        result = model.evaluate(x, {"zlpr": y, "bce": y}, batch_size=32, verbose=0, return_dict=True)
        expected_loss = float(np.mean(multilabel_categorical_crossentropy(y, scores["zlpr"].astype("float32"))))
        assert abs(result["zlpr_loss"] - expected_loss) <= 1e-3 * abs(expected_loss), (result, expected_loss)
        expected_f1 = f1_scores(y, (scores["zlpr"] > 0).astype(int))["micro"]
        assert abs(result["zlpr_f1"] - expected_f1) <= 1e-6, (result, expected_f1)
        print("ok")
    """)
