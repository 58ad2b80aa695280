"""How a model runs, as opposed to what it is: compute dtype, rematerialisation and the attention
implementation. Handed to every tower; never stored in a model directory's config.json."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from jaxvlm.config_base import Config, check_choice
from jaxvlm.ops import IMPLEMENTATIONS as ATTENTIONS

DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class Runtime(Config):
    name: ClassVar[str] = "runtime options"

    dtype: str = "float32"  # compute dtype; parameters stay float32
    remat: str = "none"  # what the backward pass recomputes: none, full, dots (matmul outputs kept), dots_no_batch
    attention: str = "auto"  # every attention layer's implementation: auto, xla or pallas (`jaxvlm.ops.attention`)

    def __post_init__(self) -> None:
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("remat", self.remat, REMAT_POLICIES)
        check_choice("attention", self.attention, ATTENTIONS)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)
