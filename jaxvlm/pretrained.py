"""open_clip's table of published checkpoints, as (architecture, tag) pairs.

The table is `jaxvlm/assets/open_clip_pretrained.json`, written from the installed open_clip by
``make pretrained-table`` (`table_from_open_clip`), and checked against it by the tests, so an
open_clip release that adds checkpoints shows. Each pair resolves to a Hugging Face Hub repo (and,
for a few, one weights file in it), the preprocessing open_clip applies, and whether the weights
were trained with quick GELU.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path
from typing import Any

from jaxvlm.errors import InputError

TABLE = Path(__file__).parent / "assets" / "open_clip_pretrained.json"


@dataclasses.dataclass(frozen=True)
class Pretrained:
    arch: str  # open_clip's architecture name
    tag: str
    hub_repo: str  # ORG/NAME on the Hugging Face Hub
    hub_file: str | None  # the weights file, for repos that do not follow open_clip's file names
    quick_gelu: bool
    preprocess: dict[str, Any]  # open_clip's mean, std, interpolation, resize_mode

    @property
    def hub_name(self) -> str:
        return f"hf-hub:{self.hub_repo}"


@cache
def _table() -> dict[tuple[str, str], Pretrained]:
    rows = json.loads(TABLE.read_text())
    return {(row["arch"], row["tag"]): Pretrained(**row) for row in rows}


def list_pretrained() -> list[tuple[str, str]]:
    """Every (architecture, tag) pair of open_clip's table, in its order."""
    return list(_table())


def get_pretrained(arch: str, tag: str) -> Pretrained:
    try:
        return _table()[(arch, tag)]
    except KeyError:
        tags = [t for a, t in _table() if a == arch]
        known = f"its tags: {', '.join(tags)}" if tags else "`jaxvlm.list_pretrained()` lists the pairs"
        raise InputError(f"no pretrained weights {arch!r} / {tag!r}; {known}") from None


def table_from_open_clip() -> list[dict[str, Any]]:
    """The table's rows, read from the installed open_clip (needs torch and open_clip)."""
    import open_clip
    from open_clip import pretrained

    rows = []
    for arch, tag in open_clip.list_pretrained():
        cfg = pretrained.get_pretrained_cfg(arch, tag)
        org, name, *file = cfg["hf_hub"].strip("/").split("/")  # ORG/NAME/, or ORG/NAME/FILE
        rows.append(
            {
                "arch": arch,
                "tag": tag,
                "hub_repo": f"{org}/{name}",
                "hub_file": "/".join(file) or None,
                "quick_gelu": bool(cfg.get("quick_gelu", False)),
                "preprocess": {k: _plain(cfg[k]) for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg},
            }
        )
    return rows


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


if __name__ == "__main__":  # make pretrained-table
    TABLE.write_text("[\n" + ",\n".join(json.dumps(row) for row in table_from_open_clip()) + "\n]\n")  # a row a line
    print(f"wrote {TABLE}: {len(list_pretrained())} pairs")
