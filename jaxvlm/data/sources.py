"""Random-access record sources, named by dataset specs such as "tfds:jaxvlm_digits".

A spec is `kind:location`, optionally followed by `?name=value&...` options of that kind:

    tfds:NAME            a built TFDS dataset, read with `tfds.data_source` (no TensorFlow);
                         options image_key, text_key, label_key, split override the config's
    arrayrecord:GLOB     ArrayRecord shards written by `jaxvlm data build`
    tar:PATTERN          WebDataset-style .tar shards (key.jpg + key.txt); `{000..009}` ranges expand
    folder:DIR           an image folder; option captions=FILE (.csv or .jsonl) lists image and caption

Every source has `len()`, `source[i] -> Record`, `has_texts`, `has_labels` and `class_names`
(None when the source has no class names), and is opened (shards found, checked, indexed) when
it is built, so a missing or unreadable shard fails at start-up.
"""

from __future__ import annotations

import urllib.parse

from jaxvlm.data.records import Record
from jaxvlm.errors import InputError

KINDS = ("tfds", "arrayrecord", "tar", "folder")


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """"kind:location?a=1&b=2" -> ("kind", "location", {"a": "1", "b": "2"})."""
    if not isinstance(spec, str):
        raise InputError(f"a dataset spec must be a string, got {spec!r}")
    kind, colon, rest = spec.partition(":")
    if not colon or kind not in KINDS:
        raise InputError(f"dataset spec {spec!r} must start with one of {', '.join(k + ':' for k in KINDS)}")
    location, _, query = rest.partition("?")
    if not location:
        raise InputError(f"dataset spec {spec!r} names no {kind} location")
    try:
        options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise InputError(f"dataset spec {spec!r}: options must be ?name=value&name=value") from None
    return kind, location, options


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

    def __init__(self, name: str, *, split: str, data_dir=None, image_key: str = "image",
                 text_key: str = "captions", label_key: str = "label", text_templates=()):
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
            raise InputError(f"text_templates need class names, and TFDS dataset {name!r} has no "
                             f"ClassLabel feature {label_key!r}")
        self._text_key = None if self._templates or _feature(features, text_key) is None else text_key
        self.has_texts = bool(self._templates) or self._text_key is not None
        self._image_key, self._label_key = image_key, label_key
        self.shard = f"tfds:{name}/{split}"
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir,
                                            decoders=_nested(image_key, tfds.decode.SkipDecoding()))
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
        return Record(key=str(index), shard=self.shard, image=_value(example, self._image_key), texts=texts,
                      label=label)


def open_source(spec: str, *, split: str = "train", data_dir=None, image_key: str = "image",
                text_key: str = "captions", label_key: str = "label", text_templates=()):
    """The source a spec names; TFDS options in the spec override the keyword arguments."""
    kind, location, options = parse_spec(spec)
    if kind == "tfds":
        settings = {"split": split, "image_key": image_key, "text_key": text_key, "label_key": label_key}
        unknown = sorted(set(options) - set(settings))
        if unknown:
            raise InputError(f"dataset spec {spec!r}: unknown options {unknown} (known: {sorted(settings)})")
        settings.update(options)
        return TfdsSource(location, data_dir=data_dir, text_templates=text_templates, **settings)
    raise InputError(f"dataset spec {spec!r}: {kind} sources are not available yet")
