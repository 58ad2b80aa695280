"""Long-CLIP position stretching: a text tower's learned position table made longer, so that a model
fine-tuned from it reads captions past its original context (Zhang et al. 2024, "Long-CLIP: Unlocking
the Long-Text Capability of CLIP", arXiv:2403.15378; github.com/beichenzbc/Long-CLIP).

`stretch_positions` is the table transform; `stretch` applies it to a model directory and writes a new
one, to fine-tune with ``jaxvlm train --config.model.init_from=OUT``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxvlm import model_dir
from jaxvlm.errors import InputError

LONG_CLIP_CONTEXT = 248  # 4 * 77 - 3 * 20: CLIP's 77 positions, the first 20 kept, the other 57 stretched 4x
LONG_CLIP_KEEP = 20


def stretch_positions(pos: np.ndarray, context: int = LONG_CLIP_CONTEXT, keep: int = LONG_CLIP_KEEP) -> np.ndarray:
    """A position table [L, W] made [context, W]: the first ``keep`` rows as they are, the others
    interpolated linearly by the factor s = (context - keep) / (L - keep).

    New row j >= keep reads the old table at x = keep + (j - keep) / s, between rows floor(x) and
    floor(x) + 1; past the last row (x > L - 1) the line through the last two rows goes on. With
    Long-CLIP's numbers (L = 77, keep = 20, context = 248, so s = 4) this is exactly Long-CLIP's
    ``load_from_clip``: rows 20 + 4i + k = (1 - k/4) pos[20 + i] + k/4 pos[21 + i] for i < 56, and
    rows 244 + k = pos[76] + k/4 (pos[76] - pos[75]), k = 0..3. The result is float32.
    """
    pos = np.asarray(pos)
    if pos.ndim != 2:
        raise InputError(f"a position table is [positions, width], got shape {pos.shape}")
    length = pos.shape[0]
    if not isinstance(keep, int) or not 0 <= keep <= length - 2:
        raise InputError(f"keep must be an integer in [0, {length - 2}] for {length} positions, got {keep!r}")
    if not isinstance(context, int) or context <= length:
        raise InputError(f"context must be an integer above the current {length} positions, got {context!r}")
    table = pos.astype(np.float64)
    scale = (context - keep) / (length - keep)
    x = keep + np.arange(context - keep) / scale  # where each stretched row reads the old table
    low = np.minimum(np.floor(x).astype(int), length - 2)
    t = (x - low)[:, None]  # above 1 past the last row: the line through the last two rows goes on
    stretched = (1 - t) * table[low] + t * table[low + 1]
    return np.concatenate([table[:keep], stretched]).astype(np.float32)


def stretch(
    model_dir_in: str | Path, model_dir_out: str | Path, context: int = LONG_CLIP_CONTEXT, keep: int = LONG_CLIP_KEEP
) -> None:
    """Writes at ``model_dir_out`` the model of ``model_dir_in`` with its text tower's position table
    stretched to ``context`` positions (`stretch_positions`) and its text and tokenizer context lengths
    set to ``context``; every other parameter is copied as it is.

    Only a "transformer" text tower (learned absolute positions) without CoCa's appended token or
    decoder is stretched; anything else is refused with an `InputError`. For a causal tower pooled at
    the end token (CLIP's), a text of at most ``keep`` tokens embeds as before: every position it
    reaches is unchanged. Long-CLIP also holds those first ``keep`` rows fixed during fine-tuning (as a
    second, frozen copy of the table) and adds a loss on the image features' principal components;
    here the whole table trains like any other parameter.
    """
    loaded = model_dir.load(Path(model_dir_in))
    cfg, text = loaded.config, loaded.config.text
    if text.kind != "transformer":
        raise InputError(
            f"cannot stretch text tower kind {text.kind!r}: only 'transformer' has a learned position table"
        )
    if cfg.decoder is not None or text.append_cls:
        raise InputError(
            "cannot stretch a CoCa model: its caption decoder and appended text token have their own positions"
        )
    pos = loaded.params["txt"]["pos_embed"]
    if pos.shape[:2] != (1, text.context_length):
        raise InputError(f"{model_dir_in}: txt/pos_embed has shape {pos.shape}, not [1, {text.context_length}, width]")
    params = {
        **loaded.params,
        "txt": {**loaded.params["txt"], "pos_embed": stretch_positions(pos[0], context, keep)[None]},
    }
    config = dataclasses.replace(cfg, text=dataclasses.replace(text, context_length=context))
    tokenizer = dataclasses.replace(loaded.tokenizer, context_length=context)
    provenance = {
        "source": "jaxvlm long-context stretch (Long-CLIP)",
        "stretched_from": str(model_dir_in),
        "context_length": {"from": text.context_length, "to": context},
        "kept_positions": keep,
        "stretched_from_provenance": loaded.provenance,
    }
    result = model_dir.ModelDir(config, loaded.preprocess, tokenizer, provenance, params)
    model_dir.save(Path(model_dir_out), result, Path(model_dir_in) / loaded.tokenizer.file)
