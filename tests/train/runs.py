"""Small training runs in this process: tiny configs, generated batches, a Grain stand-in for the
data pipeline (checkpointable like the real one), and meshes of the simulated CPU devices."""

from __future__ import annotations

import grain
import jax
import numpy as np
from ml_collections.config_flags import config_path

from jaxvlm import parallel
from jaxvlm.train import config as train_config
from jaxvlm.train.program import model_spec


def tiny_config(name: str = "tiny-clip", changes: dict | None = None):
    """A small run of a tiny architecture: 16 per batch, short warmup, every tensor FSDP-split;
    ``changes``: {dotted key: value}."""
    c = train_config.base_config()
    c.model.name = name
    c.total_steps = 20
    c.global_batch_size = 16
    c.log_every = 5
    c.optimizer.warmup_steps = 2
    c.mesh.fsdp_min_size = 0
    c.checkpoint.every = 5
    for key, value in (changes or {}).items():
        config_path.set_value(key, c, value)
    return c


def example(index: int, image_size: int, context: int, vocab: int) -> dict:
    """Record ``index`` of the generated data set: an image and a padded token sequence."""
    rng = np.random.default_rng(index)
    length = int(rng.integers(3, context))
    text = np.zeros(context, np.int32)
    text[:length] = rng.integers(1, vocab, length)
    return {"image": rng.normal(size=(image_size, image_size, 3)).astype(np.float32), "text": text}


def standin_iterator(config, records: int = 256):
    """Process-local batches of generated records, shuffled and repeated by Grain like the real
    pipeline (get_state / set_state included)."""
    spec = model_spec(config.model).config
    make = lambda i: example(i, spec.vision.image_size, spec.text.context_length, 1000)
    ds = grain.MapDataset.range(records)[jax.process_index() :: jax.process_count()]
    ds = ds.shuffle(seed=config.seed).repeat().map(make)
    return iter(ds.batch(config.global_batch_size // jax.process_count()).to_iter_dataset())


def batches(config, count: int, seed: int = 0) -> list[dict]:
    """``count`` host batches of the global batch size."""
    spec = model_spec(config.model).config
    first = seed * 10_000
    return [
        {
            k: np.stack(
                [
                    example(
                        first + i * config.global_batch_size + j, spec.vision.image_size, spec.text.context_length, 1000
                    )[k]
                    for j in range(config.global_batch_size)
                ]
            )
            for k in ("image", "text")
        }
        for i in range(count)
    ]


def on_mesh(batch: dict, mesh) -> dict:
    return {k: jax.device_put(v, parallel.batch_sharding(mesh)) for k, v in batch.items()}


def mesh_of(sizes: tuple[int, int, int], devices: int | None = None):
    return parallel.create_mesh(
        dict(zip(parallel.MESH_AXES, sizes)), devices=jax.devices()[: devices or int(np.prod(sizes))]
    )
