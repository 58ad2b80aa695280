"""Evaluation fixtures: randomly initialised tiny model directories (no torch; made by
tests/eval/model_dirs.py)."""

import pytest

from tests.eval.model_dirs import random_model_dir


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    return random_model_dir(tmp_path_factory.mktemp("eval-models") / "tiny-clip", "tiny-clip")


@pytest.fixture(scope="session")
def tiny_coca_dir(tmp_path_factory):
    return random_model_dir(tmp_path_factory.mktemp("eval-models") / "tiny-coca", "tiny-coca")
