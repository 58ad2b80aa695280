"""Model definitions: configs, layers, towers, the two-tower model and CoCa."""

from jaxvlm.models.coca import CoCa
from jaxvlm.models.config import DecoderConfig, ModelConfig, TextConfig, VisionConfig
from jaxvlm.models.two_tower import TwoTower


def build_model(cfg: ModelConfig) -> TwoTower:
    """The flax module for a config: CoCa when it has a caption decoder, else the two towers."""
    return CoCa(cfg) if cfg.decoder is not None else TwoTower(cfg)


__all__ = ["CoCa", "DecoderConfig", "ModelConfig", "TextConfig", "TwoTower", "VisionConfig", "build_model"]
