"""Model directories of named tiny architectures with random parameters (no torch)."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from jaxvlm import model_dir
from jaxvlm.models import abstract_params
from jaxvlm.models.config import ModelConfig
from jaxvlm.models.registry import get_architecture
from jaxvlm.preprocess import PreprocessConfig
from jaxvlm.tokenizers import CLIP_BPE_FILE, TokenizerConfig


def random_model_dir(
    path,
    architecture: str,
    seed: int = 0,
    *,
    config: ModelConfig | None = None,
    preprocess: PreprocessConfig | None = None,
    tokenizer: TokenizerConfig | None = None,
    tokenizer_source=CLIP_BPE_FILE,
):
    """A model directory for a named architecture with random parameters, saved as after training:
    N(0, 0.1) weights, LayerNorm scales near 1, so no tensor sits at a constant that could hide a swapped
    one (shapes from `jax.eval_shape`: running `init` would compile the model). ``config``, ``preprocess``
    and ``tokenizer`` replace the architecture's own; ``tokenizer_source`` is the tokenizer's file."""
    arch = get_architecture(architecture)
    cfg = arch.model if config is None else config
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda key, leaf: (
            float(jax.tree_util.keystr(key).endswith("'scale']")) + 0.1 * rng.standard_normal(leaf.shape)
        ).astype(np.float32),
        nn.unbox(abstract_params(cfg)),
    )
    provenance = {"source": "random init"} | ({"model": architecture} if config is None else {})
    model = model_dir.ModelDir(cfg, preprocess or arch.preprocess, tokenizer or arch.tokenizer, provenance, params)
    model_dir.save(path, model, tokenizer_source)
    return path
