"""An image folder with a captions file: JSON lines, or CSV (comma) / TSV (tab) with a header.

Each line names an image by its path relative to the folder and gives its caption (in JSON
lines a string or a list of strings) and optionally an integer label:

    {"image": "cats/001.jpg", "caption": "a cat on a mat", "label": 3}
    image,caption                      (CSV: one caption per row)

The column names are options of the spec: `folder:DIR?captions=FILE&image_column=filepath&
caption_column=title&label_column=label`. The captions file is read and checked at start-up;
images are read when their record is.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from jaxvlm.data.records import BadRecord, Record
from jaxvlm.errors import InputError


def _rows(path: Path):
    """(line number, row dict) of a captions file; undecodable bytes are kept as surrogates."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        if path.suffix == ".jsonl":
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path} line {number} is not JSON ({e.msg})") from None
                    if not isinstance(row, dict):
                        raise InputError(f"{path} line {number} is not a JSON object")
                    yield number, row
        elif path.suffix in (".csv", ".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            for row in reader:
                yield reader.line_num, row
        else:
            raise InputError(f"captions file {path} must end in .jsonl, .csv or .tsv")


class FolderSource:
    """The images of `directory` listed in a captions file, in the file's order."""

    def __init__(
        self,
        directory: str,
        *,
        captions: str | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
        label_column: str = "label",
    ):
        self._directory = Path(directory)
        if not self._directory.is_dir():
            raise InputError(f"image folder {directory} is not a directory")
        if not captions:
            raise InputError(f"folder:{directory} needs its captions file: folder:{directory}?captions=FILE")
        self.shard = str(captions)
        path = Path(captions)
        try:
            rows = list(_rows(path))
        except OSError as e:
            raise InputError(f"cannot read captions file {path}: {e.strerror}") from None
        if not rows:
            raise InputError(f"captions file {path} lists no images")
        self._images, self._texts, self._labels = [], [], []
        self.has_labels = all(label_column in row for _, row in rows)
        for number, row in rows:
            image, texts = row.get(image_column), row.get(caption_column, ())
            if not isinstance(image, str) or not image:
                raise InputError(f"{path} line {number} has no {image_column!r} image path")
            texts = (texts,) if isinstance(texts, str) else texts
            if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
                raise InputError(f"{path} line {number}: {caption_column!r} must be a string or a list of strings")
            label = row.get(label_column, -1) if self.has_labels else -1
            try:
                label = int(label)
            except (TypeError, ValueError):
                raise InputError(f"{path} line {number}: {label_column!r} must be an integer, got {label!r}") from None
            self._images.append(image)
            self._texts.append(tuple(texts))
            self._labels.append(label)
        self.has_texts = any(self._texts)
        self.class_names = None

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> Record | BadRecord:
        name = self._images[index]
        try:
            image = (self._directory / name).read_bytes()
        except OSError as e:
            return BadRecord(name, self.shard, "unreadable image", e.strerror or str(e))
        return Record(key=name, shard=self.shard, image=image, texts=self._texts[index], label=self._labels[index])
