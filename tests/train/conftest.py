"""Training test fixtures: a jaxvlm_digits TFDS dataset built once. The helpers (small configs,
generated batches, a Grain stand-in for the data pipeline, the CLI in subprocesses) are in
tests/train/runs.py and tests/train/cli_runs.py."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """The jaxvlm_digits TFDS dataset (scikit-learn's digits), built once for the session."""
    from jaxvlm.data.builders import build_digits

    directory = tmp_path_factory.mktemp("tfds")
    build_digits(directory)
    return directory
