"""jaxvlm's ArrayRecord shards: one record per image, and the `dataset.json` that describes a set.

A record is b"JVR1", a little-endian uint32 header length, a UTF-8 JSON header
{"key", "texts", "label"} and the encoded image bytes, unchanged. `jaxvlm data build` writes the
shards and `dataset.json` (record count per shard, whether records have labels and captions, class
names, what was skipped); `ArrayRecordSource` reads them at random.
"""

from __future__ import annotations

import bisect
import glob
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import grain
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from jaxvlm.data.records import Record
from jaxvlm.errors import InputError

MAGIC = b"JVR1"
METADATA_FILE = "dataset.json"
FORMAT = "jaxvlm-records/1"
_HEADER_LENGTH = struct.Struct("<I")
# group_size:1 makes every record its own chunk, so a random read decompresses one record.
WRITER_OPTIONS = "group_size:1"


def encode_record(record: Record) -> bytes:
    header = json.dumps(
        {"key": record.key, "texts": list(record.texts), "label": record.label}, ensure_ascii=False
    ).encode("utf-8")
    return MAGIC + _HEADER_LENGTH.pack(len(header)) + header + record.image


def decode_record(data: bytes, shard: str) -> Record:
    if data[:4] != MAGIC:
        raise InputError(f"{shard} holds a record that jaxvlm did not write (no {MAGIC!r} mark)")
    (length,) = _HEADER_LENGTH.unpack_from(data, 4)
    header = json.loads(data[8 : 8 + length])
    return Record(
        key=header["key"], shard=shard, image=data[8 + length :], texts=tuple(header["texts"]), label=header["label"]
    )


def write_shard(path: str | os.PathLike[str], records: Iterable[Record]) -> int:
    """Writes `records` (an iterable of Record) as one ArrayRecord file; returns how many."""
    writer = ArrayRecordWriter(os.fspath(path), WRITER_OPTIONS)
    count = 0
    try:
        for record in records:
            writer.write(encode_record(record))
            count += 1
    finally:
        writer.close()
    return count


def _open_reader(path: str) -> ArrayRecordReader:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise InputError(f"cannot read ArrayRecord shard {path}")
    reader = ArrayRecordReader(path)
    if not reader.ok():
        raise InputError(f"{path} is not a readable ArrayRecord file (corrupt or truncated)")
    return reader


class ArrayRecordSource:
    """Every record of the shards matching `pattern` (a path or glob), shards in name order."""

    def __init__(self, pattern: str):
        self._paths = sorted(glob.glob(pattern)) or ([pattern] if os.path.exists(pattern) else [])
        if not self._paths:
            raise InputError(f"no ArrayRecord shards match {pattern}")
        metadata = _metadata(self._paths[0])
        counts = metadata.get("shards", {})
        self._offsets = [0]
        for path in self._paths:
            n = _open_reader(path).num_records()
            expected = counts.get(Path(path).name)
            if expected is not None and n != expected:
                raise InputError(
                    f"ArrayRecord shard {path} holds {n} records, {METADATA_FILE} says {expected}: "
                    "truncated or overwritten"
                )
            self._offsets.append(self._offsets[-1] + n)
        if len(self) == 0:
            raise InputError(f"the ArrayRecord shards matching {pattern} hold no records")
        self._source = grain.sources.ArrayRecordDataSource(self._paths)  # thread-safe, picklable readers
        first = self[0]
        self.has_labels = metadata.get("has_labels", first.label >= 0)
        self.has_texts = metadata.get("has_texts", bool(first.texts))
        self.class_names = metadata.get("class_names")

    def __len__(self) -> int:
        return self._offsets[-1]

    def __getitem__(self, index: int) -> Record:
        return decode_record(self._source[index], self._paths[bisect.bisect_right(self._offsets, index) - 1])


def _metadata(shard_path: str) -> dict:
    path = Path(shard_path).parent / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise InputError(f"{path} is not a jaxvlm {METADATA_FILE} (format {FORMAT!r} expected)")
    return metadata
