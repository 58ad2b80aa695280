"""Published checkpoints, as (architecture, tag) pairs.

Two tables: open_clip's (`jaxvlm/assets/open_clip_pretrained.json`, written from the installed
open_clip by ``make pretrained-table`` with `table_from_open_clip`, and checked against it by the
tests, so an open_clip release that adds checkpoints shows), and the names jaxvlm adds
(`jaxvlm/assets/more_pretrained.json`, written by hand): transformers repos on the Hugging Face Hub,
tagged with their repo name, and big_vision's `.npz` files on Google Cloud Storage, tagged with
their gs:// address. Each pair resolves to a hub repo (and, for a few, one weights file in it) or
to a weights and a tokenizer file on GCS; the open_clip rows also say what preprocessing open_clip
applies and whether the weights were trained with quick GELU. A pair loads when jaxvlm builds its
architecture (`Pretrained.architecture` in `jaxvlm.models.registry`).
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path
from typing import Any

from jaxvlm.errors import InputError

TABLE = Path(__file__).parent / "assets" / "open_clip_pretrained.json"
MORE = Path(__file__).parent / "assets" / "more_pretrained.json"


@dataclasses.dataclass(frozen=True)
class Pretrained:
    arch: str  # open_clip's architecture name
    tag: str
    hub_repo: str | None  # ORG/NAME on the Hugging Face Hub
    hub_file: str | None  # the weights file, for repos that do not follow open_clip's file names
    quick_gelu: bool
    preprocess: dict[str, Any]  # open_clip's mean, std, interpolation, resize_mode
    weights_url: str | None = None  # gs://BUCKET/PATH of a big_vision checkpoint (no hub repo)
    tokenizer_url: str | None = None  # gs://BUCKET/PATH of its SentencePiece model

    @property
    def source(self) -> str:
        return f"hf-hub:{self.hub_repo}" if self.hub_repo else str(self.weights_url)

    @property
    def architecture(self) -> str:
        """The architecture the weights are built as: open_clip's name, with quick GELU where trained so."""
        quick = self.quick_gelu and not self.arch.endswith("-quickgelu")
        return f"{self.arch}-quickgelu" if quick else self.arch

    @property
    def loads(self) -> bool:
        """Whether jaxvlm builds the architecture today (and, for a big_vision file, converts its towers)."""
        from jaxvlm.models.registry import ARCHITECTURES

        built = ARCHITECTURES.get(self.architecture)
        if built is None or self.weights_url is None:
            return built is not None
        from jaxvlm.convert.big_vision import converts

        return converts(built.model)

    @property
    def from_open_clip(self) -> bool:
        """A pair of open_clip's table: open_clip builds it as its architecture, whatever the repo's config."""
        return (self.arch, self.tag) in _open_clip_pairs()


@cache
def _open_clip_pairs() -> set[tuple[str, str]]:
    return {(row["arch"], row["tag"]) for row in json.loads(TABLE.read_text())}


@cache
def _table() -> dict[tuple[str, str], Pretrained]:
    rows = [*json.loads(TABLE.read_text()), *json.loads(MORE.read_text())]
    return {(row["arch"], row["tag"]): Pretrained(**row) for row in rows}


def list_pretrained() -> list[tuple[str, str]]:
    """Every (architecture, tag) pair: open_clip's table in its order, then the names jaxvlm adds."""
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


README = Path(__file__).parent.parent / "README.md"
README_MARKERS = ("<!-- pretrained-table: written by `make pretrained-table` -->", "<!-- /pretrained-table -->")


def loading_table() -> str:
    """The README's table of how many pretrained pairs load today, per source, from the tables and
    the registry (`make pretrained-table` writes it into README.md; a test checks it is current)."""
    open_clip = [(row["arch"], row["tag"]) for row in json.loads(TABLE.read_text())]
    more = [get_pretrained(row["arch"], row["tag"]) for row in json.loads(MORE.read_text())]
    hub_names = (
        r"openai/clip-\*, laion/CLIP-\*, facebook/metaclip-\*, google/siglip\*, google/siglip2\*, "
        r"OFA-Sys/chinese-clip-\*, kakaobrain/align-base"
    )
    groups = {
        "open_clip's pretrained table": [get_pretrained(*pair) for pair in open_clip],
        f"transformers repos ({hub_names})": [e for e in more if e.hub_repo],
        "big_vision SigLIP / SigLIP 2 `.npz` files (gs://big_vision/...)": [e for e in more if e.weights_url],
    }
    lines = ["| Published checkpoints | pairs | load today | their architectures |", "|---|---:|---:|---|"]
    for what, entries in groups.items():
        loading = [e for e in entries if e.loads]
        names = ", ".join(sorted({e.architecture for e in loading})) or "-"
        lines.append(f"| {what} | {len(entries)} | {len(loading)} | {names} |")
    return "\n".join(lines)


def readme_with_table(readme: str) -> str:
    start, end = README_MARKERS
    before, _, rest = readme.partition(start)
    _, _, after = rest.partition(end)
    return f"{before}{start}\n{loading_table()}\n{end}{after}"


if __name__ == "__main__":  # make pretrained-table
    TABLE.write_text("[\n" + ",\n".join(json.dumps(row) for row in table_from_open_clip()) + "\n]\n")  # a row a line
    _table.cache_clear()
    README.write_text(readme_with_table(README.read_text()))
    print(f"wrote {TABLE} ({len(json.loads(TABLE.read_text()))} open_clip pairs) and the table in {README}")
