"""Exporters: a jaxvlm model directory written as another ecosystem's checkpoint, one module per
target, each with ``write(model, source, out)``: ``model`` the loaded `jaxvlm.model_dir.ModelDir`,
``source`` its directory (for the tokenizer file), ``out`` an empty folder to fill. A model a
target cannot express is refused with one line naming what."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from jaxvlm import model_dir
from jaxvlm.errors import InputError

TARGETS = ("hf", "open_clip")


def export(model: str | os.PathLike, out: str | os.PathLike, to: str, push: str | None = None) -> Path:
    """Writes ``model`` (a model directory, or any name `jaxvlm.load` takes) as a ``to`` checkpoint
    folder at ``out`` (complete or not at all); with ``push`` (ORG/NAME), uploads it to the hub."""
    from jaxvlm import hub

    if to not in TARGETS:
        raise InputError(f"unknown export target {to!r}; expected one of {', '.join(TARGETS)}")
    if push is not None:
        hub.check_repo_id(push)
    source = hub.model_directory(model)
    loaded = model_dir.load(source)
    writer = importlib.import_module(f"jaxvlm.export.{to}")
    # an open_clip repo names the hub repo its tokenizer files are fetched from (open_clip's hf-hub: loads)
    options = {"repo_id": push} if to == "open_clip" else {}
    with model_dir.written_whole(Path(out)) as staging:
        writer.write(loaded, source, staging, **options)
    if push is not None:
        hub.upload(Path(out), push)
    return Path(out)
