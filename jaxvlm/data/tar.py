"""WebDataset-style .tar shards (what img2dataset writes), indexed once for random access.

Members are grouped into records by key, the member name up to the first "." of its file name
("00012/abc.jpg" and "00012/abc.txt" are record "00012/abc"): an image (.jpg .jpeg .png .webp),
a caption (.txt) and optionally a class label (.cls, an integer). At start-up every shard's
headers are read once (no image data); records are then read with `os.pread` at their offsets.
"""

from __future__ import annotations

import glob
import io
import os
import re
import tarfile
import threading
from collections.abc import Iterable, Mapping

import numpy as np

from jaxvlm.data.records import BadRecord, Record
from jaxvlm.errors import InputError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSION = "txt"
LABEL_EXTENSION = "cls"
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_pattern(pattern: str) -> list[str]:
    """Shard paths of a pattern: "{000..009}" ranges expand (keeping zero padding), then globs."""
    match = _RANGE.search(pattern)
    if match:
        first, last = match.group(1), match.group(2)
        width = len(first) if first.startswith("0") else 0
        head, tail = pattern[: match.start()], pattern[match.end() :]
        return [path for i in range(int(first), int(last) + 1) for path in expand_pattern(f"{head}{i:0{width}d}{tail}")]
    return sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]


def _split_name(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def _index_shard(path: str) -> list[dict]:
    """The records of one shard: {"key", extension: (offset, size), ...}, in member order."""
    try:
        size = os.path.getsize(path)
        records = {}
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > size:
                    raise InputError(f"tar shard {path} is truncated (member {member.name})")
                key, extension = _split_name(member.name)
                records.setdefault(key, {"key": key}).setdefault(extension, (member.offset_data, member.size))
    except (OSError, tarfile.TarError) as e:
        raise InputError(f"cannot read tar shard {path}: {e}") from None
    return list(records.values())


class TarSource:
    """Every record of the tar shards a pattern names (see `expand_pattern`), shards in order."""

    def __init__(self, pattern: str):
        self._paths = expand_pattern(pattern)
        if not self._paths:
            raise InputError(f"no tar shards match {pattern}")
        shard, image, text, label = [], [], [], []
        self._keys = []
        for i, path in enumerate(self._paths):
            for record in _index_shard(path):
                shard.append(i)
                self._keys.append(record["key"])
                image.append(next((record[e] for e in IMAGE_EXTENSIONS if e in record), (-1, 0)))
                text.append(record.get(TEXT_EXTENSION, (-1, 0)))
                label.append(record.get(LABEL_EXTENSION, (-1, 0)))
        if not self._keys:
            raise InputError(f"the tar shards matching {pattern} hold no records")
        # (offset, size) of each record's members; offset -1: the record has no such member.
        self._shard = np.asarray(shard, np.int32)
        self._image, self._text, self._label = (np.asarray(a, np.int64) for a in (image, text, label))
        self.has_texts = bool((self._text[:, 0] >= 0).any())
        self.has_labels = bool((self._label[:, 0] >= 0).all())
        self.class_names = None
        self._files = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def _read(self, index: int, member: np.ndarray) -> bytes | None:
        offset, size = member[index]
        if offset < 0:
            return None
        path = self._paths[self._shard[index]]
        fd = self._files.get(path)
        if fd is None:  # opened once per process (descriptors are not pickled to workers)
            with self._lock:
                if path not in self._files:
                    self._files[path] = os.open(path, os.O_RDONLY)
                fd = self._files[path]
        return os.pread(fd, int(size), int(offset))

    def __getitem__(self, index: int) -> Record | BadRecord:
        key, shard = self._keys[index], self._paths[self._shard[index]]
        image = self._read(index, self._image)
        if image is None:
            return BadRecord(key, shard, "no image", f"none of .{', .'.join(IMAGE_EXTENSIONS)}")
        text = self._read(index, self._text)
        label = -1
        if self.has_labels:
            try:
                label = int(self._read(index, self._label))
            except ValueError:
                return BadRecord(key, shard, "bad label", f".{LABEL_EXTENSION} is not an integer")
        return Record(key=key, shard=shard, image=image, texts=() if text is None else (text,), label=label)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


def write_tar_shard(path: str | os.PathLike[str], records: Iterable[Mapping[str, str | bytes]]) -> None:
    """Writes `records` ({"key", extension: bytes, ...}) as a WebDataset-style tar shard."""
    with tarfile.open(path, "w") as tar:
        for record in records:
            for extension, data in record.items():
                if extension == "key":
                    continue
                info = tarfile.TarInfo(f"{record['key']}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
