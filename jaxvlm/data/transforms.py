"""Per-record transforms: decode, check, augment or resize, normalise, pick a caption, tokenise.

They run in Grain's worker processes, so they are plain picklable callables that import no JAX.
A record that cannot be used becomes a `BadRecord` (skipped and counted downstream), or an
`InputError` naming the record and its shard in strict mode.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from jaxvlm.data.records import BadRecord, Record
from jaxvlm.errors import InputError
from jaxvlm.preprocess import (
    _FILTERS,
    IMAGE_FORMATS,
    NaFlexImages,
    PreprocessConfig,
    naflex_example,
    naflex_size,
    normalize_images,
    pixels,
)
from jaxvlm.tokenizers import Tokenizer

AUGMENTS = ("train", "eval")
_CROP_ATTEMPTS = 10  # tries at a random crop before falling back to a centre crop


class _Rejected(Exception):
    """Raised inside the transforms with why a record is unusable: (reason, detail)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Reads an image's header (JPEG, PNG, WebP, ...), refusing images of more than `max_pixels`."""
    if not data:
        raise _Rejected("no image bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise _Rejected("image too large", "decompression bomb") from None
    except Exception as e:  # whatever the header parser of the format raises
        raise _Rejected("corrupt image", str(e)) from None
    width, height = img.size
    if width * height > max_pixels:
        raise _Rejected("image too large", f"{width}x{height} > {max_pixels} pixels")
    if width == 0 or height == 0:
        raise _Rejected("empty image", f"{width}x{height}")
    return img


def load_image(img: Image.Image) -> Image.Image:
    """Decodes an opened image fully, so that truncated or corrupt data is caught here."""
    try:
        img.load()
    except Exception as e:  # truncated data, bad Huffman tables, ...
        raise _Rejected("corrupt image", str(e)) from None
    return img


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height) of a random crop, as torchvision's RandomResizedCrop draws it.

    A crop covers a uniform fraction of the area in `scale` with a log-uniform aspect ratio in
    `ratio`; after `_CROP_ATTEMPTS` misses, the largest centred crop whose ratio is within `ratio`.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_CROP_ATTEMPTS):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def captions(texts: Sequence[str | bytes]) -> list[str]:
    """The record's captions as text; a missing, empty or non-UTF-8 caption rejects the record."""
    if not texts:
        raise _Rejected("no caption")
    out = []
    for text in texts:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise _Rejected("caption is not UTF-8") from None
        elif not text.isascii():
            try:  # text files are read with surrogateescape: undecodable bytes end up here
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise _Rejected("caption is not UTF-8") from None
        if not text.strip():
            raise _Rejected("empty caption")
        out.append(text)
    return out


def checked_record(record: Record | BadRecord, max_pixels: int, need_texts: bool) -> Record | BadRecord:
    """`record` with its captions as text once its image decodes fully, or why it is bad."""
    if isinstance(record, BadRecord):
        return record
    try:
        load_image(open_image(record.image, max_pixels))
        texts = captions(record.texts) if need_texts or record.texts else []
    except _Rejected as e:
        return BadRecord(record.key, record.shard, e.reason, e.detail)
    return dataclasses.replace(record, texts=tuple(texts))


@dataclasses.dataclass(frozen=True)
class ExampleTransform:
    """A Grain random map: `Record` -> {"image", "text"?, "texts"?, "label"?}, or a `BadRecord`.

    augment "train": random-resized-crop to the model's size (`crop_scale`, `crop_ratio`, with the
    model's interpolation) and a horizontal flip with probability 1/2 when `flip`; "eval": the
    model's own resize / crop. Both end with the model's normalisation (float32), or, with
    `normalize` False, keep the uint8 pixels (a quarter of the bytes: the train step normalises
    them on the accelerator). A NaFlex model's "image" is one image's `NaFlexImages` (patches
    [max_num_patches, p * p * 3], mask, grid; no batch dimension): "eval" is `naflex_patches` of the
    image, "train" that of the random crop, at the crop's own aspect ratio. With a tokenizer, "text"
    holds the ids of one caption drawn at random (the first when no generator is given);
    `with_texts` adds "texts", all the record's captions as strings.
    """

    preprocess: PreprocessConfig
    tokenizer: Tokenizer | None = None
    augment: str = "train"
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    jpeg_draft: bool = True
    max_image_pixels: int = 40_000_000
    with_label: bool = False
    with_texts: bool = False
    strict: bool = False
    normalize: bool = True

    def __call__(self, record: Record | BadRecord, rng: np.random.Generator | None = None) -> dict | BadRecord:
        if isinstance(record, BadRecord):  # the source could not read it
            return self._reject(record)
        try:
            image = self._image(record.image, rng)
            example = {"image": normalize_images(image, self.preprocess) if self.normalize else image}
            if self.tokenizer is not None or self.with_texts:
                texts = captions(record.texts)
                if self.tokenizer is not None:
                    pick = 0 if rng is None else rng.integers(len(texts))
                    example["text"] = self.tokenizer([texts[pick]])[0]
                if self.with_texts:
                    example["texts"] = texts
        except _Rejected as e:
            return self._reject(BadRecord(record.key, record.shard, e.reason, e.detail))
        if self.with_label:
            example["label"] = np.int32(record.label)
        return example

    def _reject(self, bad: BadRecord) -> BadRecord:
        if self.strict:
            raise InputError(bad.describe())
        return bad

    def _image(self, data: bytes, rng: np.random.Generator) -> np.ndarray | NaFlexImages:
        img = open_image(data, self.max_image_pixels)
        if self.augment == "eval":
            return _first(pixels([load_image(img)], self.preprocess))
        width, height = img.size
        left, top, w, h = random_resized_crop_box(width, height, self.crop_scale, self.crop_ratio, rng)
        out_w, out_h = self._output_size(w, h)
        if self.jpeg_draft:
            # A JPEG is decoded at the smallest of 1, 1/2, 1/4, 1/8 scale that keeps the output's
            # pixels across the crop (DCT-domain scaling); other formats ignore the request.
            img.draft(img.mode, (math.ceil(width * out_w / w), math.ceil(height * out_h / h)))
        img = load_image(img)
        sx, sy = img.width / width, img.height / height
        box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
        img = img.resize((out_w, out_h), _FILTERS[self.preprocess.interpolation], box=box)
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        cfg = self.preprocess
        if cfg.resize_mode == "naflex":
            return naflex_example(np.asarray(img.convert("RGB")), cfg.patch_size, cfg.max_num_patches)
        return pixels([img], cfg.replace(resize_size=None))[0]  # at `image_size` already: only the conversion to RGB

    def _output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) a crop of ``width`` x ``height`` is resized to: the model's square, or for
        NaFlex the crop's aspect ratio in whole patches within the patch budget."""
        cfg = self.preprocess
        if cfg.resize_mode != "naflex":
            return cfg.image_size, cfg.image_size
        out_h, out_w = naflex_size(height, width, cfg.patch_size, cfg.max_num_patches)
        return out_w, out_h


def _first(images: np.ndarray | NaFlexImages) -> np.ndarray | NaFlexImages:
    """The first image of a batch (of pixels, or of NaFlex patches)."""
    if isinstance(images, NaFlexImages):
        return NaFlexImages(*(x[0] for x in images))
    return images[0]
