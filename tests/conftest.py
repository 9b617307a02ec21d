"""Shared test settings. TensorFlow's C++ start-up lines are silenced before anything imports it."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """Build the whole book once, as `make book` does: warnings are errors. Shared by the HTML checks of
    ``test_book.py`` and the browser checks of ``test_browser.py``."""
    output = tmp_path_factory.mktemp("book")
    command = [str(pathlib.Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT),
               "--path-output", str(output), "-W", "-n", "--keep-going"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    yield output / "_build" / "html"
    shutil.rmtree(output, ignore_errors=True)


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
