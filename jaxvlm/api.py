"""The notebook-facing API: ``jaxvlm.load(dir)`` and the Model it returns."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import model_dir
from jaxvlm.errors import InputError
from jaxvlm.generation import GenerationConfig, generator
from jaxvlm.models import build_model
from jaxvlm.models.two_tower import TwoTower, contrastive_logits
from jaxvlm.preprocess import load_image, preprocess
from jaxvlm.tokenizers import build_tokenizer


class Model:
    """A loaded model: its tokenizer, preprocessing and jitted encoders.

    Embeddings come back as float32 numpy arrays, L2-normalised. Inputs are encoded in chunks
    of ``batch_size`` (the last chunk padded, so every call reuses one compiled program).
    """

    def __init__(self, loaded: model_dir.ModelDir, directory: Path, batch_size: int = 32):
        self.directory = Path(directory)
        self.config = loaded.config
        self.preprocess_config = loaded.preprocess
        self.tokenizer_config = loaded.tokenizer
        self.provenance = loaded.provenance
        self.params = jax.tree.map(jnp.asarray, loaded.params)
        self.module = build_model(self.config)
        self.batch_size = batch_size
        self._tokenizer = build_tokenizer(loaded.tokenizer, self.directory)
        self._generators: dict[GenerationConfig, object] = {}

    def __repr__(self) -> str:
        return f"Model({self.directory}, provenance={self.provenance})"

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return self._tokenizer(texts)

    def preprocess(self, images: Sequence) -> np.ndarray:
        """PIL images (or paths to image files) -> float32 [N, H, W, 3]."""
        if isinstance(images, (str, Path)):
            images = [images]
        return preprocess([load_image(x) if isinstance(x, (str, Path)) else x for x in images],
                          self.preprocess_config)

    def encode_image(self, pixels) -> np.ndarray:
        return self._chunked(self._image_fn, self._checked_pixels(pixels, "encode_image"))

    def encode_text(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        text = self.config.text
        if ids.ndim != 2 or not len(ids) or not 0 < ids.shape[1] <= text.context_length:
            raise InputError(f"encode_text expects token ids [M>0, <= {text.context_length}], got {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= text.vocab_size:
            raise InputError(f"token ids must be integers in [0, {text.vocab_size})")
        return self._chunked(self._text_fn, ids.astype(np.int32))

    def logits(self, image_embeds, text_embeds) -> np.ndarray:
        """[N, M] = exp(t) * image_embeds @ text_embeds.T (+ b for SigLIP)."""
        b = self.params.get("b")
        return np.asarray(contrastive_logits(jnp.asarray(image_embeds), jnp.asarray(text_embeds),
                                             self.params["t"], b))

    def generate(self, pixels, **options) -> list[str]:
        """Captions from a CoCa model, one per image (for beam search, the best beam).

        Options are `jaxvlm.generation.GenerationConfig`'s: method ("greedy", "beam", "sample"),
        num_beams, max_len, min_len, temperature, top_k, top_p, repetition_penalty,
        length_penalty, seed. They are checked before anything is compiled.
        """
        try:
            cfg = GenerationConfig(**options)
        except TypeError as e:
            raise InputError(f"generate: {e}") from None
        cfg.validate(self.config)
        pixels = self._checked_pixels(pixels, "generate")
        if cfg not in self._generators:
            self._generators[cfg] = generator(self.module, cfg, self.tokenizer_config.pad_id)
        run, rng = self._generators[cfg], jax.random.key(cfg.seed)
        ids = self._chunked(lambda params, x: run(params, x, rng)[0][:, 0], pixels)
        eot = self.config.decoder.eot_id
        return [self._tokenizer.decode(row[: list(row).index(eot)] if eot in row else row) for row in ids]

    def _checked_pixels(self, pixels, what: str) -> np.ndarray:
        size = self.config.vision.image_size
        pixels = np.asarray(pixels, np.float32)
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3) or not len(pixels):
            raise InputError(f"{what} expects float pixels [N>0, {size}, {size}, 3], got {pixels.shape}")
        return pixels

    @functools.cached_property
    def _image_fn(self):
        return jax.jit(lambda p, x: self.module.apply({"params": p}, x, method=TwoTower.encode_image))

    @functools.cached_property
    def _text_fn(self):
        return jax.jit(lambda p, x: self.module.apply({"params": p}, x, method=TwoTower.encode_text))

    def _chunked(self, fn, inputs: np.ndarray) -> np.ndarray:
        n, size = len(inputs), min(self.batch_size, len(inputs))
        outs = []
        for start in range(0, n, size):
            chunk = inputs[start:start + size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
            outs.append(np.asarray(fn(self.params, padded))[: len(chunk)])
        return np.concatenate(outs)


def load(directory, batch_size: int = 32) -> Model:
    """Loads a converted or trained model directory (no network, no torch)."""
    return Model(model_dir.load(Path(directory)), Path(directory), batch_size=batch_size)
