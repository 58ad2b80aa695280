"""Model directories with random parameters, standing in for converted or fine-tuned ones."""

from __future__ import annotations

import flax
import numpy as np

from jaxvlm import model_dir
from jaxvlm.models.registry import get_architecture
from jaxvlm.tokenizers import CLIP_BPE_FILE


def write_model(
    path, seed: int, name: str = "tiny-clip", *, provenance: dict | None = None, **changes
) -> dict[str, np.ndarray]:
    """A model directory of architecture ``name`` with random parameters (returned flat), its model
    config fields replaced by ``changes``; provenance {"seed": seed} unless given."""
    import jax

    from jaxvlm.models import abstract_params

    arch = get_architecture(name)
    config = arch.model.replace(**changes)
    rng = np.random.default_rng(seed)
    shapes = flax.linen.unbox(abstract_params(config))
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    model_dir.save(
        path,
        model_dir.ModelDir(
            config, arch.preprocess, arch.tokenizer, {"seed": seed} if provenance is None else provenance, params
        ),
        CLIP_BPE_FILE,
    )
    return flax.traverse_util.flatten_dict(params, sep="/")
