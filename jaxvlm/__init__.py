"""jaxvlm: CLIP, SigLIP and CoCa image-text models in JAX."""

from jaxvlm.api import Model, load
from jaxvlm.errors import InputError
from jaxvlm.models.registry import list_models
from jaxvlm.pretrained import list_pretrained

__all__ = ["InputError", "Model", "list_models", "list_pretrained", "load"]
__version__ = "0.1.0"
