"""The notebook-facing API: ``jaxvlm.load(dir)`` and the Model it returns."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvlm import hub, model_dir
from jaxvlm.errors import InputError
from jaxvlm.generation import GenerationConfig, generator
from jaxvlm.models import ModelConfig, Runtime, build_model
from jaxvlm.models.two_tower import TwoTower, contrastive_logits
from jaxvlm.preprocess import NaFlexImages, PreprocessConfig, load_image, preprocess
from jaxvlm.tokenizers import Tokenizer, build_tokenizer


class Model:
    """A model: its tokenizer, preprocessing and jitted encoders.

    Embeddings come back as float32 numpy arrays, L2-normalised. Inputs are encoded in chunks
    of ``batch_size`` rows (the last chunk padded, so every call reuses one compiled program),
    each chunk split over a 1-D data mesh of ``devices`` with the parameters replicated. Chunks are
    rounded up to a multiple of the device count. By default ``devices`` are all local
    accelerators, or one CPU device: CPU devices share the host's memory and cores, so a replica
    per CPU device (e.g. simulated with --xla_force_host_platform_device_count) costs memory and
    gains nothing.

    `jaxvlm.load` builds one from a model directory; the constructor takes the parts in memory
    (a training loop evaluating its current parameters), and `with_params` swaps parameters
    while keeping the compiled programs. ``runtime`` says how it computes (dtype, attention).
    A model with BatchNorm takes its statistics as ``batch_stats`` and normalises with them (running
    averages, as in evaluation mode).
    """

    def __init__(
        self,
        config: ModelConfig,
        params: Any,
        preprocess_config: PreprocessConfig,
        tokenizer: Tokenizer,
        *,
        runtime: Runtime = Runtime(),
        provenance: dict | None = None,
        directory: str | Path | None = None,
        batch_size: int = 32,
        devices: Sequence[jax.Device] | None = None,
        batch_stats: Any = None,
    ):
        self.directory = Path(directory) if directory is not None else None
        self.config = config
        self.preprocess_config = preprocess_config
        self.provenance = provenance or {}
        self.runtime = runtime
        self.module = build_model(config, runtime)
        self.batch_size = batch_size
        self.mesh = Mesh(np.asarray(devices if devices is not None else default_devices()), ("data",))
        self.params = self._replicated(params)
        self.batch_stats = self._replicated(batch_stats or {})
        self._tokenizer = tokenizer
        self._generators: dict[GenerationConfig, object] = {}

    def __repr__(self) -> str:
        return f"Model({self.directory}, provenance={self.provenance})"

    def with_params(self, params: Any, batch_stats: Any = None) -> Model:
        """The same model with other parameters (same tree and shapes; BatchNorm statistics too, when
        given): no recompilation."""
        other = copy.copy(self)
        other.params = self._replicated(params)
        if batch_stats is not None:
            other.batch_stats = self._replicated(batch_stats)
        return other

    def reparameterize(self) -> Model:
        """The same model for inference with its image tower's branches and BatchNorms folded into single
        convolutions (a FastViT's, as timm's reparameterize_model folds them): the same embeddings from fewer
        operations. Fine-tune the model as loaded; other models come back as they are."""
        from jaxvlm.models.towers.fastvit import reparameterize_model

        config, params, batch_stats = reparameterize_model(self.config, self.params, self.batch_stats)
        if config is self.config:
            return self
        return Model(
            config,
            params,
            self.preprocess_config,
            self._tokenizer,
            runtime=self.runtime,
            provenance=self.provenance,
            directory=self.directory,
            batch_size=self.batch_size,
            devices=list(self.mesh.devices.flat),
            batch_stats=batch_stats,
        )

    @property
    def variables(self) -> dict:
        """What the module applies to: the parameters and, for a model with BatchNorm, its statistics."""
        return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer (what `tokenize` calls), e.g. for `jaxvlm.data` pipelines."""
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """int32 [N, context_length] ids; longer texts are truncated as the model's source truncates
        them (`tokenize_with_truncation` says which)."""
        return self._tokenizer(texts)

    def tokenize_with_truncation(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, truncated): `tokenize`'s ids and bool [N], True for the texts that did not fit the context."""
        return self._tokenizer.tokenize_with_truncation(texts)

    def preprocess(self, images: Sequence) -> np.ndarray | NaFlexImages:
        """PIL images (or paths to image files) -> float32 [N, H, W, 3], or for a NaFlex model
        `NaFlexImages` (each image at its own aspect ratio within the patch budget): what
        `encode_image` takes."""
        if isinstance(images, (str, Path)):
            images = [images]
        return preprocess([load_image(x) if isinstance(x, (str, Path)) else x for x in images], self.preprocess_config)

    def encode_image(self, pixels: np.ndarray | NaFlexImages) -> np.ndarray:
        return self._chunked(self._image_fn, self._checked_pixels(pixels, "encode_image"))

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        text = self.config.text
        if ids.ndim != 2 or not len(ids) or not 0 < ids.shape[1] <= text.context_length:
            raise InputError(f"encode_text expects token ids [M>0, <= {text.context_length}], got {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= text.vocab_size:
            raise InputError(f"token ids must be integers in [0, {text.vocab_size})")
        return self._chunked(self._text_fn, ids.astype(np.int32))

    def logits(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
        """[N, M] = exp(t) * image_embeds @ text_embeds.T (+ b for SigLIP)."""
        b = self.params.get("b")
        return np.asarray(contrastive_logits(jnp.asarray(image_embeds), jnp.asarray(text_embeds), self.params["t"], b))

    def generate(self, pixels: np.ndarray, **options: Any) -> list[str]:
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
            run, rng = generator(self.module, cfg, self._tokenizer.pad_id), jax.random.key(cfg.seed)
            self._generators[cfg] = self._sharded(lambda variables, x: run(variables["params"], x, rng)[0][:, 0])
        ids = self._chunked(self._generators[cfg], pixels)
        eot = self.config.decoder.eot_id
        return [self._tokenizer.decode(row[: list(row).index(eot)] if eot in row else row) for row in ids]

    def _checked_pixels(self, pixels, what: str) -> np.ndarray | NaFlexImages:
        if self.preprocess_config.resize_mode == "naflex":
            return self._checked_patches(pixels, what)
        size = self.config.vision.image_size
        pixels = np.asarray(pixels, np.float32)
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3) or not len(pixels):
            raise InputError(f"{what} expects float pixels [N>0, {size}, {size}, 3], got {pixels.shape}")
        return pixels

    def _checked_patches(self, images, what: str) -> NaFlexImages:
        dim = self.config.vision.patch_dim
        if not isinstance(images, NaFlexImages):
            raise InputError(f"{what} expects NaFlexImages (what preprocess returns) for a NaFlex model")
        patches, mask, grid = (np.asarray(x) for x in images)
        n, length = patches.shape[:2] if patches.ndim == 3 else (0, 0)
        if patches.shape != (n, length, dim) or not n or mask.shape != (n, length) or grid.shape != (n, 2):
            raise InputError(
                f"{what} expects NaFlexImages of patches [N>0, L, {dim}], mask [N, L] and grid [N, 2], "
                f"got {patches.shape}, {mask.shape}, {grid.shape}"
            )
        if np.any(grid < 1) or np.any(grid.prod(axis=1) != mask.sum(axis=1)):
            raise InputError(f"{what}: each image's grid (rows, columns) must count its real patches in mask")
        return NaFlexImages(patches.astype(np.float32), mask.astype(bool), grid.astype(np.int32))

    @functools.cached_property
    def _image_fn(self):
        return self._sharded(lambda v, x: self.module.apply(v, x, method=TwoTower.encode_image))

    @functools.cached_property
    def _text_fn(self):
        return self._sharded(lambda v, x: self.module.apply(v, x, method=TwoTower.encode_text))

    def _sharded(self, fn):
        """jit(fn(variables, batch)) with the batch split over the data mesh and the variables replicated."""
        return jax.jit(
            fn, in_shardings=(NamedSharding(self.mesh, PartitionSpec()), self._rows), out_shardings=self._rows
        )

    @property
    def _rows(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec("data"))

    def _replicated(self, params):
        if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(params)):
            # a multi-host training state: every process gathers the whole parameters
            from jax.experimental import multihost_utils

            params = multihost_utils.process_allgather(params, tiled=True)
        return jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))

    def _chunked(self, fn, inputs: Any) -> np.ndarray:
        """fn over ``inputs`` (an array, or a tuple of arrays with the same rows) in padded chunks."""
        devices = self.mesh.size
        n = len(jax.tree.leaves(inputs)[0])
        size = -(-min(self.batch_size, n) // devices) * devices
        outs = []
        for start in range(0, n, size):
            count = min(size, n - start)
            padded = jax.tree.map(functools.partial(_padded_rows, start=start, count=count, size=size), inputs)
            # placed explicitly: with several processes, jit takes no numpy input for a split argument
            outs.append(np.asarray(fn(self.variables, jax.device_put(padded, self._rows)))[:count])
        return np.concatenate(outs)


def _padded_rows(x: np.ndarray, start: int, count: int, size: int) -> np.ndarray:
    """Rows start..start+count of x, the last one repeated up to ``size`` rows."""
    chunk = x[start : start + count]
    return np.concatenate([chunk, np.repeat(chunk[-1:], size - count, axis=0)])


def default_devices() -> list:
    """All local devices, or the first one when they are CPU devices (see `Model`)."""
    devices = jax.local_devices()
    return devices[:1] if devices[0].platform == "cpu" else devices


def load(
    name: str | Path,
    batch_size: int = 32,
    devices: Sequence[jax.Device] | None = None,
    *,
    pretrained: str | None = None,
    dtype: str = "float32",
    attention: str = "auto",
) -> Model:
    """Loads a model to compute in ``dtype`` (parameters stay float32) with the ``attention``
    implementation (`jaxvlm.ops.attention`). ``name``: a model directory (no network, no torch), a
    transformers or open_clip checkpoint folder, ``hf-hub:ORG/NAME[@REVISION]``, or with
    ``pretrained`` an open_clip architecture whose tag names published weights
    (`jaxvlm.list_pretrained`). What is not a model directory is converted once into the conversion
    cache (`jaxvlm.hub`)."""
    runtime = Runtime(dtype=dtype, attention=attention)
    directory = hub.pretrained_directory(str(name), pretrained) if pretrained else hub.model_directory(name)
    loaded = model_dir.load(directory)
    return Model(
        loaded.config,
        loaded.params,
        loaded.preprocess,
        build_tokenizer(loaded.tokenizer, directory),
        runtime=runtime,
        provenance=loaded.provenance,
        directory=directory,
        batch_size=batch_size,
        devices=devices,
        batch_stats=loaded.batch_stats,
    )
