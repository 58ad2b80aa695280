"""Models: architecture configs, runtime options, tower kinds, the two-tower model and CoCa."""

from __future__ import annotations

import math
from typing import Any

import flax
import jax

from jaxvlm.models.coca import CoCa
from jaxvlm.models.config import DecoderConfig, ModelConfig
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.two_tower import Embeddings, TwoTower


def build_model(config: ModelConfig, runtime: Runtime = Runtime()) -> TwoTower:
    """The flax module for a config: CoCa when it has a caption decoder, else the two towers."""
    return (CoCa if config.decoder is not None else TwoTower)(config, runtime)


def example_inputs(config: ModelConfig, batch: int = 1) -> tuple[jax.Array, jax.Array]:
    """Zero images and token ids of the shapes the model takes."""
    return config.vision.example_input(batch), config.text.example_input(batch)


def abstract_variables(config: ModelConfig, runtime: Runtime = Runtime()) -> dict[str, Any]:
    """Every collection's variables as ShapeDtypeStructs: "params" (in flax ``Partitioned`` boxes, their
    logical axis names) and, for a model with BatchNorm, "batch_stats" (its running means and variances)."""
    module = build_model(config, runtime)
    return dict(jax.eval_shape(lambda: module.init(jax.random.key(0), *example_inputs(config))))


def abstract_params(config: ModelConfig, runtime: Runtime = Runtime()) -> Any:
    """The parameter tree as ShapeDtypeStructs in flax ``Partitioned`` boxes (their logical axis names)."""
    return abstract_variables(config, runtime)["params"]


def param_shapes(config: ModelConfig, collection: str = "params") -> dict[str, tuple[int, ...]]:
    """Every parameter's (or another collection's variable's) shape, by its '/'-joined name."""
    tree = abstract_variables(config).get(collection, {})
    flat = flax.traverse_util.flatten_dict(flax.linen.unbox(tree), sep="/")
    return {name: tuple(leaf.shape) for name, leaf in flat.items()}


def param_count(config: ModelConfig) -> int:
    return sum(math.prod(shape) for shape in param_shapes(config).values())


__all__ = [
    "CoCa",
    "DecoderConfig",
    "Embeddings",
    "ModelConfig",
    "Runtime",
    "TwoTower",
    "abstract_params",
    "abstract_variables",
    "build_model",
    "example_inputs",
    "param_count",
    "param_shapes",
]
