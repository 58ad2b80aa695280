"""Data fixtures: the digits dataset built once per session, a small CLIP tokenizer, helpers."""

import hashlib

import numpy as np
import pytest

from jaxvlm.preprocess import PreprocessConfig
from jaxvlm.tokenizers import CLIP_BPE_FILE, ClipBpeTokenizer

PREPROCESS = PreprocessConfig(image_size=32)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    from jaxvlm.data.builders import build_digits

    directory = tmp_path_factory.mktemp("tfds")
    build_digits(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer():
    return ClipBpeTokenizer(CLIP_BPE_FILE, context_length=16)


@pytest.fixture
def digits_config(digits_dir):
    import jaxvlm.data

    config = jaxvlm.data.default_config()
    config.data_dir = str(digits_dir)
    config.worker_count = 0
    return config


def batch_digest(batch: dict) -> str:
    """One hash of every array in a batch (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(batch):
        value = np.ascontiguousarray(batch[name])
        h.update(f"{name}{value.dtype}{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def example_digests(batch: dict) -> list[str]:
    """One hash per example (its image and label), to tell records apart."""
    return [hashlib.sha256(batch["image"][i].tobytes() + batch["label"][i].tobytes()).hexdigest()
            for i in range(len(batch["image"]))]
