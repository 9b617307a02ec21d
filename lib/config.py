"""One place for the book's run-time settings: scale, seeds and the data cache.

Every chapter runs at one of three scales, chosen by the environment variable ``BOOK_SCALE``:

* ``quick`` (the default): small but real data, CPU-friendly, about 90 seconds a chapter.
  Tests, CI and the HTML build use it; it demonstrates the code, it does not give the verdicts.
* ``reference``: trained to convergence over several seeds, the article's methods, at most about
  45 minutes a chapter on a 2-core CPU. Its results are committed (``lib/results``) and give the
  chapters' verdicts; ``python -m lib.experiments CHAPTER --scale reference`` runs it.
* ``full``: article-scale data and training, meant for a GPU (for example Colab).

Chapters never read ``os.environ`` themselves; they ask this module, so the switch is read
in exactly one place.
"""

from __future__ import annotations

import os
import pathlib
import platform
import shutil
import sys
import time

SCALES = ("quick", "reference", "full")
"""The scales a chapter can run at."""

SCALE_ENV = "BOOK_SCALE"
CACHE_ENV = "BOOK_CACHE_DIR"
DEFAULT_SEED = 2020
"""The seed every chapter starts from (the year of the articles)."""


def scale() -> str:
    """Return the current scale, ``"quick"``, ``"reference"`` or ``"full"``, read from ``BOOK_SCALE``.

    Raises:
        ValueError: if ``BOOK_SCALE`` is set to anything else.

    Example:

    >>> scale() in SCALES
    True
    """
    value = os.environ.get(SCALE_ENV, "quick").strip().lower() or "quick"
    if value not in SCALES:
        raise ValueError(
            f"The environment variable {SCALE_ENV} must be one of {SCALES}. "
            f"Received: {SCALE_ENV}={os.environ[SCALE_ENV]!r}"
        )
    return value


def is_full() -> bool:
    """``True`` when the book runs at full (article) scale."""
    return scale() == "full"


def pick(quick, full, reference=None):
    """Return ``quick``, ``reference`` or ``full`` according to the current scale.

    This is how a chapter states its sizes side by side, so a reader sees what the larger runs do
    differently. Where ``reference`` is not given, the reference scale uses ``quick``'s value (a
    chapter whose experiment has no reference settings of its own runs its quick demonstration).

    >>> n_train = pick(quick=1_000, full=1_000_000)
    >>> n_train == (1_000_000 if is_full() else 1_000)
    True
    """
    current = scale()
    if current == "full":
        return full
    if current == "reference" and reference is not None:
        return reference
    return quick


def cache_dir(*parts: str) -> pathlib.Path:
    """Return (and create) the cache directory, or a sub-directory of it.

    The location is ``$BOOK_CACHE_DIR`` when set, else ``~/.cache/kexue2020``. Data sets and
    pre-trained models that a chapter can rebuild are stored here, never in the repository.
    """
    for part in parts:
        if not isinstance(part, str) or not part or os.sep in part or part in (".", ".."):
            raise ValueError(
                "`parts` must be plain, non-empty folder names. " f"Received: parts={parts!r}"
            )
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "kexue2020")
    path = pathlib.Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


STALE_TEMPORARY_SECONDS = 3600.0
"""A temporary file untouched for this long belongs to a run that died, not to one still writing."""


def remove_stale_temporaries(folder, pattern: str, max_age: float = STALE_TEMPORARY_SECONDS) -> list[pathlib.Path]:
    """Remove the files and folders matching ``pattern`` in ``folder`` that nobody has touched for ``max_age``
    seconds: the temporaries of atomic writes and downloads that a killed run left behind. Returns them."""
    removed, now = [], time.time()
    for path in pathlib.Path(folder).glob(pattern):
        try:
            if now - path.stat().st_mtime < max_age:
                continue
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path)
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
    return removed


def set_seed(seed: int = DEFAULT_SEED) -> int:
    """Seed Python, NumPy and the Keras backend in one call (``keras.utils.set_random_seed``).

    Returns the seed, so a chapter can print or glue it.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer. Received: seed={seed!r}")
    import keras

    keras.utils.set_random_seed(seed)
    return seed


def on_colab() -> bool:
    """``True`` inside Google Colab."""
    return "google.colab" in sys.modules


def accelerators() -> list[str]:
    """Names of the GPUs TensorFlow sees (empty on a CPU-only machine)."""
    import tensorflow as tf

    return [device.name for device in tf.config.list_physical_devices("GPU")]


def environment_report() -> dict[str, str]:
    """The versions and the device that produced a chapter's numbers.

    Each chapter prints this in its first code cell, so every figure it shows is traceable.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    gpus = accelerators()
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "numpy": np.__version__,
        "device": ", ".join(gpus) if gpus else f"CPU ({os.cpu_count()} cores)",
        "scale": scale(),
    }
