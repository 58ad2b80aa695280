"""Model directories of named tiny architectures with random parameters (no torch)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import model_dir
from jaxvlm.models import build_model
from jaxvlm.models.registry import get_architecture
from jaxvlm.tokenizers import CLIP_BPE_FILE


def random_model_dir(path, architecture: str, seed: int = 0):
    """A model directory for a named architecture with random parameters: N(0, 0.1) weights,
    LayerNorm scales near 1 (shapes from `jax.eval_shape`: running `init` would compile the model)."""
    arch = get_architecture(architecture)
    cfg = arch.model
    images = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3))
    ids = jnp.zeros((1, cfg.text.context_length), jnp.int32)
    shapes = nn.unbox(jax.eval_shape(build_model(cfg).init, jax.random.key(seed), images, ids)["params"])
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda key, leaf: (
            float(jax.tree_util.keystr(key).endswith("'scale']")) + 0.1 * rng.standard_normal(leaf.shape)
        ).astype(np.float32),
        shapes,
    )
    model_dir.save(
        path,
        model_dir.ModelDir(
            cfg, arch.preprocess, arch.tokenizer, {"source": "random init", "model": architecture}, params
        ),
        CLIP_BPE_FILE,
    )
    return path
