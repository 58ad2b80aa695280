"""The `data` section of a training config: its defaults and its checks."""

from __future__ import annotations

import numbers
import os

import ml_collections

from jaxvlm.data.transforms import AUGMENTS
from jaxvlm.errors import InputError


def default_config() -> ml_collections.ConfigDict:
    """Defaults for `config.data`; training configs override fields (see docs/data.md)."""
    return ml_collections.ConfigDict(
        {
            # what to read
            "source": "tfds:jaxvlm_digits",  # a dataset spec (docs/data.md), used when `mixture` is empty
            "mixture": (),  # ((spec, weight), ...): sources mixed with these weights
            "split": "train",  # TFDS split
            "data_dir": None,  # TFDS data directory (None: TFDS's default, or $TFDS_DATA_DIR)
            "image_key": "image",  # TFDS feature names ('/' reaches into nested features)
            "text_key": "captions",
            "label_key": "label",
            "text_templates": (),  # e.g. ("a photo of a {}.",): captions from class names, for label-only data
            # how to read it
            "worker_count": -1,  # processes that decode and transform; -1: one per CPU core (at most 16)
            "worker_buffer_size": 2,  # batches each worker prepares ahead
            "read_threads": 4,  # threads per process reading and transforming records
            "shuffle": True,
            "shuffle_seed": None,  # None: the seed given to train_iterator
            # what to do to each record
            "augment": "train",  # "train": random resized crop (+ flip); "eval": the model's own resize / crop
            "crop_scale": (0.9, 1.0),  # fraction of the image area a random crop covers
            "crop_ratio": (3 / 4, 4 / 3),  # range of a random crop's aspect ratio
            "flip": True,  # random horizontal flips (augment "train")
            "jpeg_draft": True,  # decode JPEGs at 1/2, 1/4, 1/8 scale when the crop allows (augment "train")
            "max_image_pixels": 40_000_000,  # larger images are bad records (decompression bombs)
            "strict": False,  # bad records: skip and count them, or fail naming the record and shard
        }
    )


def _fail(field, message):
    raise InputError(f"data.{field} {message}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_range(config, field, low, high):
    value = config[field]
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        _fail(field, f"must be two numbers, got {value!r}")
    if not low < a <= b <= high:
        _fail(field, f"must be two numbers with {low} < first <= second <= {high}, got {value!r}")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises InputError naming the first bad field of a `data` config."""
    known = set(default_config())
    unknown = sorted(set(config) - known)
    if unknown:
        raise InputError(f"unknown data config keys {unknown} (known: {sorted(known)})")
    missing = sorted(known - set(config))
    if missing:
        raise InputError(f"data config is missing {missing}")
    for field in ("source", "split", "image_key", "text_key", "label_key"):
        if not isinstance(config[field], str) or not config[field]:
            _fail(field, f"must be a non-empty string, got {config[field]!r}")
    if config.data_dir is not None and not isinstance(config.data_dir, (str, os.PathLike)):
        _fail("data_dir", f"must be a directory path or None, got {config.data_dir!r}")
    for entry in config.mixture:
        if not (
            isinstance(entry, (tuple, list))
            and len(entry) == 2
            and isinstance(entry[0], str)
            and isinstance(entry[1], numbers.Real)
            and entry[1] > 0
        ):
            _fail("mixture", f"entries must be (spec, positive weight), got {entry!r}")
    if isinstance(config.text_templates, str) or not all(
        isinstance(t, str) and "{}" in t for t in config.text_templates
    ):
        _fail(
            "text_templates",
            f"must be a list of strings with a '{{}}' for the class name, got {config.text_templates!r}",
        )
    if not _is_int(config.worker_count) or config.worker_count < -1:
        _fail("worker_count", f"must be an integer >= 0, or -1 for automatic, got {config.worker_count!r}")
    for field in ("worker_buffer_size", "read_threads", "max_image_pixels"):
        if not _is_int(config[field]) or config[field] < 1:
            _fail(field, f"must be a positive integer, got {config[field]!r}")
    if config.shuffle_seed is not None and not _is_int(config.shuffle_seed):
        _fail("shuffle_seed", f"must be an integer or None, got {config.shuffle_seed!r}")
    if config.augment not in AUGMENTS:
        _fail("augment", f"must be one of {AUGMENTS}, got {config.augment!r}")
    _check_range(config, "crop_scale", 0, 1)
    _check_range(config, "crop_ratio", 0, float("inf"))
    for field in ("shuffle", "flip", "jpeg_draft", "strict"):
        if not isinstance(config[field], bool):
            _fail(field, f"must be true or false, got {config[field]!r}")
