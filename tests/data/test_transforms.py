import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxvlm.data.records import BadRecord, Record
from jaxvlm.data.transforms import ExampleTransform, random_resized_crop_box
from jaxvlm.errors import InputError
from jaxvlm.preprocess import PreprocessConfig, preprocess
from tests.data.records import PREPROCESS, encoded, photo


def _photo(size=(96, 64)) -> Image.Image:
    return photo(0, size)


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels, as a decompression bomb's does."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_crop_box_draws_like_random_resized_crop():
    rng = np.random.default_rng(0)
    for _ in range(500):
        left, top, w, h = random_resized_crop_box(200, 120, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= left and left + w <= 200 and 0 <= top and top + h <= 120
        assert 0.08 * 0.9 <= w * h / (200 * 120) <= 1.0 + 1e-9
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    # no crop with a ratio in range fits a 400x10 strip: the widest centred one that does
    assert random_resized_crop_box(400, 10, (0.9, 1.0), (3 / 4, 4 / 3), rng) == (193, 0, 13, 10)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_eval_transform_is_the_models_preprocess(fmt):
    data = encoded(_photo(), fmt)
    cfg = PreprocessConfig(image_size=48, interpolation="bilinear")
    out = ExampleTransform(cfg, augment="eval")(Record("k", "s", data))
    expected = preprocess([Image.open(io.BytesIO(data))], cfg)[0]
    print("max abs error", np.abs(out["image"] - expected).max())
    np.testing.assert_array_equal(out["image"], expected)


def test_train_crop_of_whole_image_is_a_resize():
    img = _photo((64, 64))
    transform = ExampleTransform(
        PreprocessConfig(image_size=32), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False
    )
    out = transform(Record("k", "s", encoded(img, "PNG")), np.random.default_rng(0))
    expected = preprocess([img.resize((32, 32), Image.Resampling.BICUBIC)], PreprocessConfig(image_size=32))[0]
    np.testing.assert_array_equal(out["image"], expected)


def test_flip_and_randomness_follow_the_generator():
    data = encoded(_photo(), "PNG")
    transform = ExampleTransform(PREPROCESS, crop_scale=(1.0, 1.0), crop_ratio=(1.5, 1.5))
    images = [transform(Record("k", "s", data), np.random.default_rng(seed))["image"] for seed in range(8)]
    flipped = {bool(np.array_equal(images[0], im[:, ::-1])) for im in images[1:]}
    same = {bool(np.array_equal(images[0], im)) for im in images[1:]}
    assert flipped == {True, False} and same == {True, False}  # a full-width crop: only the flip varies
    again = transform(Record("k", "s", data), np.random.default_rng(3))["image"]
    np.testing.assert_array_equal(again, images[3])


def test_jpeg_draft_decodes_large_photos_at_reduced_scale():
    data = encoded(_photo((1024, 768)), "JPEG", quality=95)
    kwargs = dict(crop_scale=(0.9, 1.0), flip=False)
    fast = ExampleTransform(PREPROCESS, jpeg_draft=True, **kwargs)(Record("k", "s", data), np.random.default_rng(1))
    full = ExampleTransform(PREPROCESS, jpeg_draft=False, **kwargs)(Record("k", "s", data), np.random.default_rng(1))
    error = np.abs(fast["image"] - full["image"]).mean()
    print("mean abs difference (normalised units)", error)
    assert 0 < error < 0.05


def test_captions_are_sampled_and_tokenised(tokenizer):
    captions = ("a photo of a one", "the digit 1", "a handwritten one")
    transform = ExampleTransform(PREPROCESS, tokenizer, with_texts=True, with_label=True)
    record = Record("k", "s", encoded(_photo(), "PNG"), texts=tuple(c.encode() for c in captions), label=1)
    picked = set()
    for seed in range(20):
        out = transform(record, np.random.default_rng(seed))
        assert out["texts"] == list(captions) and out["label"] == 1 and out["text"].dtype == np.int32
        picked.add(tuple(out["text"]))
    assert picked == {tuple(tokenizer([c])[0]) for c in captions}


BAD = {
    "corrupt image": lambda: b"this is not an image",
    "corrupt image ": lambda: encoded(_photo(), "JPEG")[:300],  # truncated
    "image too large": lambda: _png_bomb(20000, 20000),
    "no image bytes": lambda: b"",
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_bad_images_become_bad_records(reason):
    out = ExampleTransform(PREPROCESS)(Record("rec-7", "shard-3.tar", BAD[reason]()), np.random.default_rng(0))
    assert isinstance(out, BadRecord) and (out.key, out.shard, out.reason) == ("rec-7", "shard-3.tar", reason.strip())


def test_image_pixel_limit():
    record = Record("big", "s", encoded(_photo((100, 100)), "PNG"))
    out = ExampleTransform(PREPROCESS, max_image_pixels=9999)(record, np.random.default_rng(0))
    assert out.reason == "image too large" and "100x100" in out.detail


@pytest.mark.parametrize(
    "texts, reason",
    [((), "no caption"), ((b"  ",), "empty caption"), ((b"ok", b"\xff\xfe caf\xe9"), "caption is not UTF-8")],
)
def test_bad_captions_become_bad_records(tokenizer, texts, reason):
    record = Record("k", "s", encoded(_photo(), "PNG"), texts=texts)
    assert ExampleTransform(PREPROCESS, tokenizer)(record, np.random.default_rng(0)).reason == reason


def test_strict_names_the_record_and_its_shard():
    with pytest.raises(InputError, match=r"bad record 'rec-7' in shard-3.tar: corrupt image"):
        ExampleTransform(PREPROCESS, strict=True)(Record("rec-7", "shard-3.tar", b"junk"), np.random.default_rng(0))
