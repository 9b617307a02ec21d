"""Shared test settings. TensorFlow's C++ start-up lines are silenced before anything imports it."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
