"""TFDS dataset builders shipped with jaxvlm (importing this package registers them with TFDS)."""

from __future__ import annotations

from jaxvlm.data.builders.digits import JaxvlmDigits, build_digits

__all__ = ["JaxvlmDigits", "build_digits"]
