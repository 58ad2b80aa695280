"""Launcher test fixtures: the jaxvlm_digits dataset, built once."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from jaxvlm.data.builders import build_digits

    directory = tmp_path_factory.mktemp("tfds")
    build_digits(directory)
    return directory
