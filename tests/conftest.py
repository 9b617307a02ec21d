"""Shared test settings. TensorFlow's C++ start-up lines are silenced before anything imports it."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_collection_modifyitems(config, items):
    """Under another Keras backend (``make test-jax``), skip the tests that use TensorFlow itself (a
    ``tf.function``, a gradient tape, ``tf.data``, ``tf.distribute``, a custom ``train_step``...), saying which
    TensorFlow feature each needs; every other test of the portable modules runs unchanged."""
    import inspect
    import re

    import keras
    import pytest

    if keras.backend.backend() == "tensorflow":
        return
    for item in items:
        function = getattr(item, "function", None)
        if function is None:
            continue
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):
            continue
        uses = sorted(set(re.findall(r"\btf\.(?:[A-Za-z_]+)(?:\.[A-Za-z_]+)?", source)))
        if uses:
            item.add_marker(pytest.mark.skip(reason=f"TensorFlow-only: uses {', '.join(uses[:3])}"))
