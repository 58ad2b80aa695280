"""An adapter so CLIP_benchmark (and other open_clip-style evaluation code) can run a jaxvlm model.

CLIP_benchmark loads a model with a function ``(model_name, pretrained, cache_dir, device) ->
(model, transform, tokenizer)``; `load_clip_benchmark` is one, with ``pretrained`` the model
directory. Register it and run CLIP_benchmark as usual::

    from clip_benchmark.models import TYPE2FUNC, MODEL_TYPES
    TYPE2FUNC["jaxvlm"] = jaxvlm.eval.clip_benchmark.load_clip_benchmark
    MODEL_TYPES.append("jaxvlm")
    # clip_benchmark eval --model_type jaxvlm --model any --pretrained models/vit-b-32 ...

The transform turns a PIL image into a float32 [3, H, W] array (the layout torchvision gives;
PyTorch's DataLoader stacks it into a tensor). ``encode_image`` / ``encode_text`` take torch
tensors or numpy arrays and answer in kind. Torch is imported only when a tensor is made:
importing this module never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

import jaxvlm

if TYPE_CHECKING:
    import torch

    Array = np.ndarray | torch.Tensor  # what CLIP_benchmark hands in and gets back


def _is_torch(x: object) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)


def _like(array: np.ndarray, reference: Array) -> Array:
    """``array`` as a torch tensor on ``reference``'s device when ``reference`` is one."""
    if not _is_torch(reference):
        return array
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).to(reference.device)


class ClipBenchmarkModel:
    """open_clip's evaluation interface over a `jaxvlm.Model`."""

    def __init__(self, model: jaxvlm.Model):
        self.model = model

    def encode_image(self, images: Array, normalize: bool = True) -> Array:
        """[N, 3, H, W] pixels from `transform` -> [N, D] (always L2-normalised)."""
        pixels = np.transpose(_numpy(images).astype(np.float32), (0, 2, 3, 1))
        return _like(self.model.encode_image(pixels), images)

    def encode_text(self, ids: Array, normalize: bool = True) -> Array:
        return _like(self.model.encode_text(_numpy(ids)), ids)

    def generate(self, images: Array, **options: Any) -> Array:
        """CoCa captions as token ids (CLIP_benchmark decodes them with open_clip's tokenizer)."""
        pixels = np.transpose(_numpy(images).astype(np.float32), (0, 2, 3, 1))
        return _like(self.model.tokenize(self.model.generate(pixels, **options)), images)

    def eval(self) -> ClipBenchmarkModel:  # the torch calls CLIP_benchmark makes on a model; nothing to do here
        return self

    def to(self, device: object) -> ClipBenchmarkModel:
        return self


class ClipBenchmarkTokenizer:
    """Texts -> int64 token ids as a torch tensor, as open_clip's tokenizers return them."""

    def __init__(self, model: jaxvlm.Model):
        self.model = model

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        import torch

        return torch.from_numpy(
            self.model.tokenize([texts] if isinstance(texts, str) else list(texts)).astype(np.int64)
        )


class ClipBenchmarkTransform:
    """PIL image -> float32 [3, H, W], the model's own preprocessing."""

    def __init__(self, model: jaxvlm.Model):
        self.model = model

    def __call__(self, image: Image.Image) -> np.ndarray:
        return np.transpose(self.model.preprocess([image])[0], (2, 0, 1))


def load_clip_benchmark(
    model_name: str, pretrained: str, cache_dir: str | None = None, device: object = "cpu", batch_size: int = 256
) -> tuple[ClipBenchmarkModel, ClipBenchmarkTransform, ClipBenchmarkTokenizer]:
    """CLIP_benchmark's loader signature: ``pretrained`` is the jaxvlm model directory; the model
    runs on JAX's devices whatever ``device`` says."""
    model = jaxvlm.load(pretrained, batch_size=batch_size)
    return ClipBenchmarkModel(model), ClipBenchmarkTransform(model), ClipBenchmarkTokenizer(model)
