"""Data fixtures: the digits dataset built once per session, a small CLIP tokenizer, helpers."""

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

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
    return [
        hashlib.sha256(batch["image"][i].tobytes() + batch["label"][i].tobytes()).hexdigest()
        for i in range(len(batch["image"]))
    ]


def photo(seed: int, size=(48, 40)) -> Image.Image:
    """A small RGB image that differs with `seed`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: size[1], : size[0]]
    base = rng.integers(0, 256, 3)
    rgb = (base + np.stack([x * 3, y * 5, x + y], -1) * rng.integers(1, 4)) % 256
    return Image.fromarray(rgb.astype(np.uint8))


def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def tar_records(count: int, start: int = 0) -> list[dict]:
    """WebDataset-style records ({"key", extension: bytes}) of JPEG, PNG and WebP images."""
    records = []
    for i in range(start, start + count):
        extension = list(FORMATS)[i % 3]
        records.append(
            {
                "key": f"{i:05d}",
                extension: encoded(photo(i), FORMATS[extension]),
                "txt": f"picture number {i}".encode(),
                "cls": str(i % 4).encode(),
            }
        )
    return records


@pytest.fixture(scope="session")
def tar_dir(tmp_path_factory):
    """Three tar shards of 20 records each: 00000.tar .. 00002.tar."""
    from jaxvlm.data.tar import write_tar_shard

    directory = tmp_path_factory.mktemp("tars")
    for s in range(3):
        write_tar_shard(directory / f"{s:05d}.tar", tar_records(20, start=20 * s))
    return directory


def spoil(record: dict, how: str) -> dict:
    """A tar record made bad in one of the ways real data is bad."""
    image_extension = next(e for e in FORMATS if e in record)
    spoiled = dict(record)
    if how == "truncated":
        spoiled[image_extension] = record[image_extension][: len(record[image_extension]) // 2]
    elif how == "junk":
        spoiled[image_extension] = b"\x00garbage" * 20
    elif how == "not utf-8":
        spoiled["txt"] = b"caf\xe9 \xff"
    elif how == "empty caption":
        spoiled["txt"] = b" \n"
    else:
        raise ValueError(how)
    return spoiled


SPOILS = ("truncated", "junk", "not utf-8", "empty caption")
SPOIL_REASONS = {
    "truncated": "corrupt image",
    "junk": "corrupt image",
    "not utf-8": "caption is not UTF-8",
    "empty caption": "empty caption",
}
