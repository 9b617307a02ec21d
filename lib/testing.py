"""Checks that every Keras object in ``lib`` must pass; the unit tests of each module call them.

One helper, one list of promises (Keras's own test suite does the same with ``run_layer_test``):
the layer builds, keeps the expected output shape, survives ``get_config``/``from_config`` and a
``.keras`` save/load round trip with identical outputs, and trains for one ``fit`` step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import keras
import numpy as np


def check_keras_layer(make_layer, input_shape, *, expected_output_shape=None, seed: int = 0, dtype="float32"):
    """Run the standard checks on a layer and return the model it was wrapped in.

    Args:
        make_layer: zero-argument callable returning a fresh layer.
        input_shape: shape of one example, without the batch axis.
        expected_output_shape: shape of one output example; defaults to ``input_shape``.
        seed: seed of the random inputs.
        dtype: dtype of the inputs.

    Raises:
        AssertionError: naming the check that failed.
    """
    expected_output_shape = tuple(input_shape if expected_output_shape is None else expected_output_shape)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, *input_shape)).astype(dtype)

    layer = make_layer()
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config(), "get_config/from_config round trip changed the config"

    inputs = keras.Input(shape=input_shape, dtype=dtype)
    outputs = layer(inputs)
    assert tuple(outputs.shape[1:]) == expected_output_shape, (
        f"symbolic output shape {tuple(outputs.shape[1:])} != expected {expected_output_shape}"
    )
    flat = keras.layers.Flatten()(outputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(flat))
    before = model.predict(x, verbose=0)

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    after = loaded.predict(x, verbose=0)
    np.testing.assert_array_equal(before, after, err_msg="outputs changed after a .keras save/load round trip")

    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, rng.normal(size=(4, 1)).astype("float32"), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]), "one fit step gave a non-finite loss"
    return model


MIRRORED_PREAMBLE = textwrap.dedent(
    """
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    keras.utils.set_random_seed(0)
    """
)


def run_under_mirrored_strategy(code: str, timeout: float = 600) -> str:
    """Run ``code`` in a fresh Python process with two logical CPUs under ``MirroredStrategy``.

    Logical devices can only be configured before TensorFlow runs its first op, hence the fresh
    process. The code sees ``np``, ``tf``, ``keras`` and ``strategy``; it must print ``ok`` when
    its own checks pass. Returns the process's standard output.

    Raises:
        AssertionError: with the end of the child's standard error, if it fails.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", MIRRORED_PREAMBLE + textwrap.dedent(code)],
                            capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ok" in result.stdout.split(), result.stdout[-2000:]
    return result.stdout
