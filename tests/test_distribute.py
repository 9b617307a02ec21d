"""The distribute path on CPU: two logical devices under MirroredStrategy, plus mixed precision.

Logical devices must be configured before TensorFlow runs any op, so each scenario runs in a fresh
Python process. Every lib module with a Keras object adds its own scenario here.
"""

import os
import subprocess
import sys
import textwrap

import pytest

PREAMBLE = textwrap.dedent(
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

SCENARIOS = {
    "gelu_layer": """
        from lib.activations import GELU
        keras.config.set_dtype_policy("mixed_float16")
        x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
        y = x[:, :1] ** 2
        with strategy.scope():
            model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), GELU("tanh"),
                                      keras.layers.Dense(16), GELU("sigmoid"),
                                      keras.layers.Dense(1, dtype="float32")])
            model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
        losses = history.history["loss"]
        assert all(np.isfinite(losses)), losses
        assert losses[-1] < losses[0], losses
        print("ok", losses)
    """,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_under_mirrored_strategy(name):
    code = PREAMBLE + textwrap.dedent(SCENARIOS[name])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout
