"""Model definitions: configs, layers, towers, and the two-tower model."""

from jaxvlm.models.config import ModelConfig, TextConfig, VisionConfig
from jaxvlm.models.two_tower import TwoTower

__all__ = ["ModelConfig", "TextConfig", "TwoTower", "VisionConfig"]
