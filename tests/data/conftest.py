"""Data fixtures: the digits dataset built once per session, a small CLIP tokenizer, tar shards.
The helpers are in tests/data/records.py (generated records) and tests/data/digests.py."""

import pytest

from jaxvlm.tokenizers import CLIP_BPE_FILE, ClipBpeTokenizer
from tests.data.records import tar_records


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


@pytest.fixture(scope="session")
def tar_dir(tmp_path_factory):
    """Three tar shards of 20 records each: 00000.tar .. 00002.tar."""
    from jaxvlm.data.tar import write_tar_shard

    directory = tmp_path_factory.mktemp("tars")
    for s in range(3):
        write_tar_shard(directory / f"{s:05d}.tar", tar_records(20, start=20 * s))
    return directory
