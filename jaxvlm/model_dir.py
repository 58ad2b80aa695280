"""Model directories: config.json (architecture, preprocessing, tokenizer, provenance), weights
in model.safetensors (flat '/'-joined parameter names), and the tokenizer's file. A model with
BatchNorm keeps its statistics (the "batch_stats" collection) in batch_stats.safetensors, named as
the parameters are; a directory without that file has none.

Writing is all-or-nothing: everything goes to a hidden sibling directory that is renamed into
place only once complete, so a failed write leaves no OUT behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import flax
import numpy as np

from jaxvlm.errors import InputError
from jaxvlm.models.config import ModelConfig
from jaxvlm.preprocess import PreprocessConfig
from jaxvlm.tokenizers import TokenizerConfig, build_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BATCH_STATS_FILE = "batch_stats.safetensors"
FORMAT = "jaxvlm-model"
FORMAT_VERSION = 1


@dataclasses.dataclass
class ModelDir:
    config: ModelConfig
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig
    provenance: dict
    params: dict | None  # nested tree of numpy arrays (None: loaded without weights)
    batch_stats: dict = dataclasses.field(default_factory=dict)  # BatchNorm statistics, as params ({}: none)


def check_output_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"output exists and is not an empty directory: {out}")


@contextlib.contextmanager
def written_whole(out: Path) -> Iterator[Path]:
    """A staging folder (a hidden sibling of ``out``) to write into; renamed to ``out`` once the
    block ends without an error, removed otherwise, so ``out`` appears complete or not at all."""
    out = Path(out)
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save(out: Path, model: ModelDir, tokenizer_source: Path) -> None:
    """Writes a complete model directory at ``out`` (which must not exist or be empty)."""
    from safetensors.numpy import save_file

    with written_whole(out) as staging:
        try:
            shutil.copyfile(tokenizer_source, staging / model.tokenizer.file)
        except OSError as e:
            raise InputError(f"cannot read tokenizer file {tokenizer_source}: {e.strerror}") from None
        tokenizer = build_tokenizer(model.tokenizer, staging)
        if tokenizer.vocab_size > model.config.text.vocab_size:
            raise InputError(
                f"tokenizer {tokenizer_source} has {tokenizer.vocab_size} tokens but the model's "
                f"vocabulary has {model.config.text.vocab_size}"
            )
        for tree, name in ((model.params, WEIGHTS_FILE), (model.batch_stats, BATCH_STATS_FILE)):
            flat = flax.traverse_util.flatten_dict(tree, sep="/")
            if flat or name == WEIGHTS_FILE:
                save_file({k: np.array(v, np.float32, order="C") for k, v in flat.items()}, str(staging / name))
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model.config.to_dict(),
            "preprocess": model.preprocess.to_dict(),
            "tokenizer": model.tokenizer.to_dict(),
            "provenance": model.provenance,
        }
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def load(directory: Path, *, weights: bool = True) -> ModelDir:
    """The model directory at ``directory``; with ``weights`` False its params are None (the
    architecture, preprocessing and tokenizer alone: config.json)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise InputError(f"not a jaxvlm model directory (no {CONFIG_FILE}): {directory}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise InputError(f"{config_path} is not a jaxvlm model config (format != '{FORMAT}')")
    if config.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{config_path}: unsupported format_version {config.get('format_version')!r}")
    params, batch_stats = None, {}
    if weights:

        def read(name: str) -> dict:
            try:
                return flax.traverse_util.unflatten_dict(load_file(str(directory / name)), sep="/")
            except FileNotFoundError:
                raise InputError(f"model directory has no {name}: {directory}") from None
            except SafetensorError as e:
                raise InputError(f"damaged weights file {directory / name}: {e}") from None

        params = read(WEIGHTS_FILE)
        batch_stats = read(BATCH_STATS_FILE) if (directory / BATCH_STATS_FILE).exists() else {}
    return ModelDir(
        config=ModelConfig.from_dict(config["model"]),
        preprocess=PreprocessConfig.from_dict(config["preprocess"]),
        tokenizer=TokenizerConfig.from_dict(config["tokenizer"]),
        provenance=config.get("provenance", {}),
        params=params,
        batch_stats=batch_stats,
    )
