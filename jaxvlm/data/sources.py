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

import os
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from jaxvlm.errors import InputError

if TYPE_CHECKING:  # the sources are imported when a spec names them (grain, array_record, tfds are heavy)
    from jaxvlm.data.arrayrecord import ArrayRecordSource
    from jaxvlm.data.folder import FolderSource
    from jaxvlm.data.tar import TarSource
    from jaxvlm.data.tfds_source import TfdsSource

KINDS = ("tfds", "arrayrecord", "tar", "folder")


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """ "kind:location?a=1&b=2" -> ("kind", "location", {"a": "1", "b": "2"})."""
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


def open_source(
    spec: str,
    *,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    image_key: str = "image",
    text_key: str = "captions",
    label_key: str = "label",
    text_templates: Sequence[str] = (),
) -> TfdsSource | ArrayRecordSource | TarSource | FolderSource:
    """The source a spec names. The TFDS keyword arguments are defaults its spec options override."""
    kind, location, options = parse_spec(spec)
    known = {
        "tfds": {"split": split, "image_key": image_key, "text_key": text_key, "label_key": label_key},
        "arrayrecord": {},
        "tar": {},
        "folder": {"captions": None, "image_column": "image", "caption_column": "caption", "label_column": "label"},
    }[kind]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(f"dataset spec {spec!r}: unknown options {unknown} (known: {sorted(known)})")
    settings = {**known, **options}
    if text_templates and kind != "tfds":
        raise InputError(f"dataset spec {spec!r}: text_templates apply to TFDS sources only")
    if kind == "tfds":
        from jaxvlm.data.tfds_source import TfdsSource

        return TfdsSource(location, data_dir=data_dir, text_templates=text_templates, **settings)
    if kind == "arrayrecord":
        from jaxvlm.data.arrayrecord import ArrayRecordSource

        return ArrayRecordSource(location)
    if kind == "tar":
        from jaxvlm.data.tar import TarSource

        return TarSource(location)
    from jaxvlm.data.folder import FolderSource

    return FolderSource(location, **settings)
