"""What every source yields for one index (`Record`), and what a transform yields for a bad one."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Record:
    """One raw image-text record, before decoding.

    `texts` holds the record's captions as stored: `str`, or `bytes` still to be checked as UTF-8
    (tar shards and caption files hold bytes). `label` is -1 for sources without labels. `key` and
    `shard` name the record in logs and errors.
    """

    key: str
    shard: str
    image: bytes
    texts: tuple[str | bytes, ...] = ()
    label: int = -1


@dataclasses.dataclass(frozen=True)
class BadRecord:
    """A record that a transform rejected: it is skipped (and counted), or fails in strict mode."""

    key: str
    shard: str
    reason: str  # a short, fixed phrase ("corrupt image"): the skip counts are kept per reason
    detail: str = ""  # what the decoder said, sizes, ...

    def describe(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"bad record {self.key!r} in {self.shard}: {self.reason}{detail}"
