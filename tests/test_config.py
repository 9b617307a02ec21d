"""Tests of lib.config: the scale switch, the cache folder and seeding."""

import numpy as np
import pytest

from lib import config


def test_default_scale_is_quick(monkeypatch):
    monkeypatch.delenv("BOOK_SCALE", raising=False)
    assert config.scale() == "quick"
    assert config.pick(quick=1, full=2) == 1


@pytest.mark.parametrize("value", ["full", "FULL", " full "])
def test_full_scale(monkeypatch, value):
    monkeypatch.setenv("BOOK_SCALE", value)
    assert config.is_full()
    assert config.pick(quick=1, full=2) == 2


def test_bad_scale_names_the_variable(monkeypatch):
    monkeypatch.setenv("BOOK_SCALE", "huge")
    with pytest.raises(ValueError, match=r"BOOK_SCALE must be one of \('quick', 'reference', 'full'\). Received: BOOK_SCALE='huge'"):
        config.scale()


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path / "cache"))
    path = config.cache_dir("models", "albert")
    assert path == tmp_path / "cache" / "models" / "albert"
    assert path.is_dir()


@pytest.mark.parametrize("bad", ["", "..", "a/b"])
def test_cache_dir_rejects_paths(monkeypatch, tmp_path, bad):
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="`parts` must be plain, non-empty folder names"):
        config.cache_dir(bad)


def test_set_seed_makes_runs_repeatable():
    import keras

    config.set_seed(7)
    first = keras.random.normal((3,)).numpy(), np.random.rand()
    config.set_seed(7)
    second = keras.random.normal((3,)).numpy(), np.random.rand()
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_set_seed_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="`seed` must be a non-negative integer"):
        config.set_seed(bad)


def test_environment_report_names_the_device():
    report = config.environment_report()
    assert {"python", "tensorflow", "keras", "backend", "device", "scale"} <= set(report)
    assert report["backend"] == "tensorflow"


@pytest.mark.parametrize("value, expected", [("quick", 1), ("reference", 2), ("full", 3)])
def test_pick_has_a_reference_value(monkeypatch, value, expected):
    monkeypatch.setenv("BOOK_SCALE", value)
    assert config.pick(quick=1, full=3, reference=2) == expected


def test_pick_at_reference_scale_falls_back_to_quick(monkeypatch):
    monkeypatch.setenv("BOOK_SCALE", "reference")
    assert config.pick(quick=1, full=3) == 1
