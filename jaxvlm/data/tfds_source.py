"""TFDS datasets as record sources, read with `tfds.data_source` (ArrayRecord files, no TensorFlow)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from jaxvlm.data.records import Record
from jaxvlm.errors import InputError


def _feature(features, path: str):
    """The TFDS feature at a '/'-separated path, or None."""
    for part in path.split("/"):
        try:
            features = features[part]
        except (KeyError, TypeError):
            return None
    return features


def _value(example, path: str):
    for part in path.split("/"):
        example = example[part]
    return example


def _nested(path: str, value) -> dict:
    for part in reversed(path.split("/")):
        value = {part: value}
    return value


def _text_list(value) -> tuple:
    """A TFDS Text or Sequence(Text) value (bytes, str, list or numpy array of them) as a tuple."""
    if isinstance(value, (bytes, str)):
        return (value,)
    return tuple(v.item() if hasattr(v, "item") else v for v in value)


class TfdsSource:
    """A built TFDS dataset split read with `tfds.data_source`; images stay encoded for our decoder.

    Texts come from the `text_key` feature (a Text or a sequence of them), or, when
    `text_templates` are given, from the templates filled with the record's class name.
    """

    def __init__(
        self,
        name: str,
        *,
        split: str,
        data_dir: str | os.PathLike[str] | None = None,
        image_key: str = "image",
        text_key: str = "captions",
        label_key: str = "label",
        text_templates: Sequence[str] = (),
    ):
        import tensorflow_datasets as tfds

        import jaxvlm.data.builders  # noqa: F401 - registers jaxvlm's own builders with TFDS

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:  # DatasetNotFoundError, bad version strings, ...
            raise InputError(f"unknown TFDS dataset {name!r} ({str(e).splitlines()[0]})") from None
        if not builder.is_prepared():
            hint = " (jaxvlm.data.builders.build_digits(data_dir) builds it)" if name == "jaxvlm_digits" else ""
            raise InputError(f"TFDS dataset {name!r} is not built in {builder.data_dir}{hint}")
        features = builder.info.features
        if _feature(features, image_key) is None:
            raise InputError(f"TFDS dataset {name!r} has no feature {image_key!r} (features: {list(features)})")
        label = _feature(features, label_key)
        self.class_names = list(label.names) if isinstance(label, tfds.features.ClassLabel) else None
        self.has_labels = self.class_names is not None
        self._templates = tuple(text_templates)
        if self._templates and not self.has_labels:
            raise InputError(
                f"text_templates need class names, and TFDS dataset {name!r} has no ClassLabel feature {label_key!r}"
            )
        self._text_key = None if self._templates or _feature(features, text_key) is None else text_key
        self.has_texts = bool(self._templates) or self._text_key is not None
        self._image_key, self._label_key = image_key, label_key
        self.shard = f"tfds:{name}/{split}"
        try:
            self._source = tfds.data_source(
                name, split=split, data_dir=data_dir, decoders=_nested(image_key, tfds.decode.SkipDecoding())
            )
        except Exception as e:  # unknown split names, missing files
            raise InputError(f"cannot read TFDS dataset {name!r} split {split!r}: {str(e).splitlines()[0]}") from None

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Record:
        example = self._source[index]
        label = int(_value(example, self._label_key)) if self.has_labels else -1
        if self._templates:
            texts = tuple(t.format(self.class_names[label]) for t in self._templates)
        elif self._text_key is not None:
            texts = _text_list(_value(example, self._text_key))
        else:
            texts = ()
        return Record(
            key=str(index), shard=self.shard, image=_value(example, self._image_key), texts=texts, label=label
        )
