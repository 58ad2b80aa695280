"""Converters from other checkpoint formats, one module per source, and the entry point."""

from __future__ import annotations

import importlib
from pathlib import Path

from jaxvlm import model_dir

SOURCES = ("open_clip", "hf", "big_vision")


def convert(source: str, src: Path, out: Path, model_name: str | None = None, tokenizer: Path | None = None) -> None:
    """Converts ``src`` (a weights file, or a directory: hf's, or an open_clip hub repo) into the model
    directory ``out``.

    Everything is converted and checked in memory first; ``out`` appears only when complete.
    """
    from jaxvlm.errors import InputError

    if source not in SOURCES:
        raise InputError(f"unknown source '{source}'; expected one of {', '.join(SOURCES)}")
    out = Path(out)
    model_dir.check_output_dir(out)
    module = importlib.import_module(f"jaxvlm.convert.{source}")
    try:
        converted = module.convert(Path(src), model_name, Path(tokenizer) if tokenizer else None)
    except InputError:
        raise
    except ValueError as e:  # a reshape or split that the tensors do not fit
        detail = " ".join(str(e).split())[:200]
        raise InputError(
            f"{src}: the weights do not fit the architecture {model_name or '(inferred)'} ({detail})"
        ) from None
    model_dir.save(
        out,
        model_dir.ModelDir(
            converted.config,
            converted.preprocess,
            converted.tokenizer,
            converted.provenance,
            converted.params,
            converted.batch_stats,
        ),
        converted.tokenizer_source,
    )
