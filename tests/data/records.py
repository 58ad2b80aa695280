"""Generated data for the data tests: small photos, encoded images, WebDataset-style tar records
(and the ways real records are bad), and the preprocessing the tests apply."""

import io

import numpy as np
from PIL import Image

from jaxvlm.preprocess import PreprocessConfig

PREPROCESS = PreprocessConfig(image_size=32)


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
