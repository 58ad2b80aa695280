"""Checks the transformer towers and the caption decoder share."""

from __future__ import annotations

from typing import Any

from jaxvlm.config_base import check_choice
from jaxvlm.errors import InputError
from jaxvlm.models.layers import ACTIVATIONS


def check_encoder(where: str, tower: Any) -> None:
    """A transformer stack's activation and head split."""
    check_choice(f"{where}.act", tower.act, tuple(ACTIVATIONS))
    if tower.width % tower.heads:
        raise InputError(f"{where}.width {tower.width} is not divisible by heads {tower.heads}")


def check_projection(where: str, tower: Any, embed_dim: int) -> None:
    if not tower.proj and tower.width != embed_dim:
        raise InputError(f"{where}.proj is off but {where}.width {tower.width} != embed_dim {embed_dim}")
