"""The tower kinds: each is one module file with its config and flax module, and one entry here.

`build_tower` builds the module for any tower config; a model reaches its towers only through
what `jaxvlm.models.towers.base` describes (pooled features, token sequence, parameter tree).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax

from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.base import ImageTowerConfig, TextTowerConfig, TowerConfig
from jaxvlm.models.towers.convnext import ConvNeXt, ConvNeXtConfig
from jaxvlm.models.towers.efficientnet import EfficientNet, EfficientNetConfig
from jaxvlm.models.towers.eva_vit import EvaViT, EvaViTConfig
from jaxvlm.models.towers.fastvit import FastViT, FastViTConfig
from jaxvlm.models.towers.hf_text import HFText, HFTextConfig
from jaxvlm.models.towers.modified_resnet import ModifiedResNet, ModifiedResNetConfig
from jaxvlm.models.towers.naflex_vit import NaFlexViT, NaFlexViTConfig
from jaxvlm.models.towers.text_transformer import TextTransformer, TransformerTextConfig
from jaxvlm.models.towers.vit import ViT, ViTConfig
from jaxvlm.models.towers.vitamin import ViTamin, ViTaminConfig


class TowerKind(NamedTuple):
    config: type[TowerConfig]
    module: type[nn.Module]


IMAGE_TOWERS: dict[str, TowerKind] = {
    "vit": TowerKind(ViTConfig, ViT),
    "naflex_vit": TowerKind(NaFlexViTConfig, NaFlexViT),
    "eva_vit": TowerKind(EvaViTConfig, EvaViT),
    "modified_resnet": TowerKind(ModifiedResNetConfig, ModifiedResNet),
    "convnext": TowerKind(ConvNeXtConfig, ConvNeXt),
    "vitamin": TowerKind(ViTaminConfig, ViTamin),
    "fastvit": TowerKind(FastViTConfig, FastViT),
    "efficientnet": TowerKind(EfficientNetConfig, EfficientNet),
}
TEXT_TOWERS: dict[str, TowerKind] = {
    "transformer": TowerKind(TransformerTextConfig, TextTransformer),
    "hf_encoder": TowerKind(HFTextConfig, HFText),
}


def registry_for(config_class: type[TowerConfig]) -> dict[str, TowerKind]:
    return IMAGE_TOWERS if issubclass(config_class, ImageTowerConfig) else TEXT_TOWERS


def build_tower(config: TowerConfig, embed_dim: int, runtime: Runtime = Runtime()) -> nn.Module:
    """The flax module of ``config``'s kind, pooling to ``embed_dim`` features."""
    return registry_for(type(config))[config.kind].module(cfg=config, embed_dim=embed_dim, runtime=runtime)


def flops_per_example(config: TowerConfig, embed_dim: int, runtime: Runtime = Runtime()) -> float:
    """Matrix-multiply FLOPs of one example's forward pass through the tower (`jaxvlm.flops`)."""
    from jaxvlm.flops import per_device_flops

    module = build_tower(config, embed_dim, runtime)
    example = config.example_input(1)
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), example))
    return per_device_flops(jax.make_jaxpr(module.apply)(params, example), devices=1)


__all__ = [
    "ConvNeXt",
    "ConvNeXtConfig",
    "EfficientNet",
    "EfficientNetConfig",
    "IMAGE_TOWERS",
    "HFText",
    "HFTextConfig",
    "TEXT_TOWERS",
    "ImageTowerConfig",
    "ModifiedResNet",
    "ModifiedResNetConfig",
    "EvaViT",
    "EvaViTConfig",
    "FastViT",
    "FastViTConfig",
    "NaFlexViT",
    "NaFlexViTConfig",
    "TextTowerConfig",
    "TextTransformer",
    "TowerKind",
    "TransformerTextConfig",
    "ViT",
    "ViTConfig",
    "ViTamin",
    "ViTaminConfig",
    "build_tower",
    "flops_per_example",
]
