"""Grain pipelines: the infinite, sharded, checkpointable training iterator and finite eval batches.

Training, per process:

    each source: its process shard of the index -> global shuffle per epoch -> repeat forever
    -> mix the sources by weight -> per-record transform (decode, augment, tokenise)
    -> `worker_count` worker processes -> batches of the good records -> `TrainIterator`

Worker i transforms positions i, i + n, i + 2n, ... and Grain interleaves their outputs back in
position order; a record's random generator is seeded by the seed and its position. Batching
and dropping bad records happen after the workers, so the batches are the same for every
worker count, and epochs end exactly where they should. A restored state continues exactly
where it was saved (with the worker count it was saved with: Grain's state holds one entry per
worker).
"""

from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Iterator, Sequence

import grain
import ml_collections
import numpy as np

from jaxvlm.data.config import check_config
from jaxvlm.data.records import BadRecord
from jaxvlm.data.sources import open_source
from jaxvlm.data.transforms import ExampleTransform
from jaxvlm.errors import InputError
from jaxvlm.preprocess import NaFlexImages, PreprocessConfig, naflex_example
from jaxvlm.tokenizers import Tokenizer

log = logging.getLogger(__name__)

LOGGED_BAD_RECORDS = 5  # the first few bad records are logged by key; the rest are only counted
MAX_BAD_PER_GOOD = 10  # more bad records than this per good one is an error, not a data set
MAX_AUTO_WORKERS = 16


def _multiprocessing(ds: grain.IterDataset, workers: int, buffer_size: int) -> grain.IterDataset:
    if workers:
        from absl import flags

        # Grain's worker start-up reads absl flags directly; programs that are not absl apps
        # have not parsed them, so their defaults are declared final here.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer_size))


def auto_worker_count() -> int:
    """One worker process per CPU core this process may use, at most MAX_AUTO_WORKERS."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))


class TrainIterator(grain.DatasetIterator):
    """What `train_iterator` returns: batches of numpy arrays, with Grain's get_state / set_state.

    It stacks `batch_size` good examples per batch and sets the bad records aside: `skipped`
    counts them per reason (the first LOGGED_BAD_RECORDS are logged by key and shard), and is part
    of the state.
    """

    def __init__(self, parent: grain.DatasetIterator, batch_size: int):
        super().__init__(parent)
        self._batch_size = batch_size
        self.skipped = collections.Counter()

    def __next__(self) -> dict:
        examples, bad = [], 0
        while len(examples) < self._batch_size:
            element = next(self._parent)
            if isinstance(element, BadRecord):
                if self.skipped.total() < LOGGED_BAD_RECORDS:
                    log.warning("skipping %s", element.describe())
                self.skipped[element.reason] += 1
                bad += 1
                if bad > MAX_BAD_PER_GOOD * self._batch_size:
                    raise InputError(
                        f"more than {MAX_BAD_PER_GOOD} bad records per good one, e.g. {element.describe()}"
                    )
            else:
                examples.append(element)
        return {name: stack([e[name] for e in examples]) for name in examples[0]}

    def get_state(self) -> dict:
        # Batches end at record boundaries, so the parent's state says where the next one starts.
        return {"pipeline": self._parent.get_state(), "skipped": dict(self.skipped)}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["pipeline"])
        self.skipped = collections.Counter(state["skipped"])


def _sources(config, *, need_texts: bool) -> list[tuple[str, object, float]]:
    """(spec, opened source, weight) of each source the config names."""
    entries = tuple(config.mixture) or ((config.source, 1.0),)
    out = []
    for spec, weight in entries:
        source = open_source(
            spec,
            split=config.split,
            data_dir=config.data_dir,
            image_key=config.image_key,
            text_key=config.text_key,
            label_key=config.label_key,
            text_templates=tuple(config.text_templates),
        )
        if need_texts and not source.has_texts:
            raise InputError(
                f"dataset {spec!r} has no captions (no text feature {config.text_key!r}, and no text_templates)"
            )
        out.append((spec, source, float(weight)))
    return out


def train_iterator(
    config: ml_collections.ConfigDict,
    *,
    preprocess: PreprocessConfig,
    tokenizer: Tokenizer | None,
    global_batch_size: int,
    seed: int,
) -> TrainIterator:
    """An infinite iterator over this process's batches of `config.source` (or `config.mixture`).

    Batches are {"image": uint8 [b, H, W, 3] (resized and augmented, not normalised: the train
    step normalises on the accelerator), or for a NaFlex ``preprocess`` `NaFlexImages` (uint8
    patches [b, max_num_patches, p * p * 3], bool mask [b, max_num_patches], int32 grid [b, 2]):
    every batch at the same patch budget, "text": int32 [b, L] (with a tokenizer),
    "label": int32 [b] (when every source has labels)}, b = global_batch_size // process_count.
    Each process reads the records at positions process_index, + process_count, ... of each source.
    """
    import jax

    check_config(config)
    process_index, process_count = jax.process_index(), jax.process_count()
    if not isinstance(global_batch_size, int) or global_batch_size < 1 or global_batch_size % process_count:
        raise InputError(
            f"global batch size {global_batch_size!r} must be a positive multiple of the {process_count} processes"
        )
    sources = _sources(config, need_texts=tokenizer is not None)
    shuffle_seed = seed if config.shuffle_seed is None else config.shuffle_seed
    datasets = []
    for i, (spec, source, _) in enumerate(sources):
        ds = grain.MapDataset.source(source)[process_index::process_count]
        if len(ds) == 0:
            raise InputError(f"dataset {spec!r} has {len(source)} records: too few for {process_count} processes")
        if config.shuffle:
            ds = ds.shuffle(seed=shuffle_seed + i)
        datasets.append(ds.repeat())
    weights = [weight for _, _, weight in sources]
    ds = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(datasets, weights)
    transform = ExampleTransform(
        preprocess,
        tokenizer,
        augment=config.augment,
        crop_scale=tuple(config.crop_scale),
        crop_ratio=tuple(config.crop_ratio),
        flip=config.flip,
        jpeg_draft=config.jpeg_draft,
        max_image_pixels=config.max_image_pixels,
        with_label=all(source.has_labels for _, source, _ in sources),
        strict=config.strict,
        normalize=False,
    )
    batch_size = global_batch_size // process_count
    ds = ds.random_map(transform, seed=seed)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=batch_size))
    workers = auto_worker_count() if config.worker_count == -1 else config.worker_count
    ds = _multiprocessing(ds, workers, buffer_size=config.worker_buffer_size * batch_size)
    return TrainIterator(ds.__iter__(), batch_size)


class _EvalExample:
    """Position -> example; positions past the end are padding (zeros, "valid" False)."""

    def __init__(self, source, transform: ExampleTransform):
        self._source, self._transform = source, transform

    def __call__(self, index: int) -> dict:
        if index < len(self._source):
            return {**self._transform(self._source[index]), "valid": True}
        example = {"image": _blank(self._transform.preprocess), "valid": False}
        tokenizer = self._transform.tokenizer
        if tokenizer is not None:
            example["text"] = np.full(tokenizer.context_length, tokenizer.pad_id, np.int32)
        if self._transform.with_texts:
            example["texts"] = []
        if self._transform.with_label:
            example["label"] = np.int32(0)
        return example


def _blank(cfg: PreprocessConfig) -> np.ndarray | NaFlexImages:
    """A normalised padding image: zeros, for NaFlex one patch of them (a 1 x 1 grid, so that the
    model's attention and position resizing see a real patch)."""
    if cfg.resize_mode == "naflex":
        return naflex_example(
            np.zeros((cfg.patch_size, cfg.patch_size, 3), np.float32), cfg.patch_size, cfg.max_num_patches
        )
    return np.zeros((cfg.image_size, cfg.image_size, 3), np.float32)


def stack(values: list) -> np.ndarray | NaFlexImages:
    """Examples' arrays stacked into a batch; `NaFlexImages` field by field."""
    if isinstance(values[0], NaFlexImages):
        return NaFlexImages(*(np.stack(field) for field in zip(*values)))
    return np.stack(values)


def _stack(examples: list[dict]) -> dict:
    return {
        name: [e[name] for e in examples] if name == "texts" else stack([e[name] for e in examples])
        for name in examples[0]
    }


class EvalBatches:
    """What `eval_batches` returns: an iterator over the batches whose `len` is how many it yields in all."""

    def __init__(self, batches: Iterator[dict], count: int):
        self._batches, self._count = batches, count

    def __iter__(self) -> EvalBatches:
        return self

    def __next__(self) -> dict:
        return next(self._batches)

    def __len__(self) -> int:
        return self._count


def eval_batches(
    source: str,
    split: str,
    *,
    preprocess: PreprocessConfig,
    tokenizer: Tokenizer | None = None,
    batch_size: int,
    data_dir: str | os.PathLike[str] | None = None,
    image_key: str = "image",
    text_key: str = "captions",
    label_key: str = "label",
    text_templates: Sequence[str] = (),
    shard_index: int = 0,
    num_shards: int = 1,
    worker_count: int = 0,
) -> EvalBatches:
    """Every record of a split once, in order, with the model's own eval transform.

    `split` and the feature keys apply to TFDS sources (a spec's own options override them).

    Batches of `batch_size`: "image" float32 [b, H, W, 3] (`NaFlexImages` for a NaFlex model),
    "valid" bool [b] (False on the padding that fills the last batch), "label" int32 [b] if the source
    has labels, "texts" (a list of each record's captions) if it has captions, and "text" int32 [b, L]
    (the first caption's ids) with a tokenizer; `len()` of the result is the number of batches. With
    `num_shards` > 1, shard `shard_index` gets one contiguous block of the records and every shard
    gets the same number of batches (for multi-host evaluation). A bad record is an error naming it:
    evaluation never skips data.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"eval batch size must be a positive integer, got {batch_size!r}")
    if not 0 <= shard_index < num_shards:
        raise InputError(f"shard_index {shard_index} must be in [0, {num_shards})")
    src = open_source(
        source,
        split=split,
        data_dir=data_dir,
        image_key=image_key,
        text_key=text_key,
        label_key=label_key,
        text_templates=tuple(text_templates),
    )
    if tokenizer is not None and not src.has_texts:
        raise InputError(f"dataset {source!r} has no captions to tokenise")
    transform = ExampleTransform(
        preprocess, tokenizer, augment="eval", with_label=src.has_labels, with_texts=src.has_texts, strict=True
    )
    per_shard = math.ceil(math.ceil(len(src) / num_shards) / batch_size) * batch_size
    start = shard_index * per_shard
    ds = grain.MapDataset.range(start, start + per_shard)
    ds = ds.map(_EvalExample(src, transform)).batch(batch_size, batch_fn=_stack)
    count = len(ds)
    ds = _multiprocessing(ds.to_iter_dataset(), worker_count, buffer_size=1)
    return EvalBatches(iter(ds), count)


def class_names(
    source: str, *, split: str = "train", data_dir: str | os.PathLike[str] | None = None, label_key: str = "label"
) -> list[str]:
    """The class names of a source's labels (a TFDS ClassLabel, or those `jaxvlm data build` kept),
    read from ``split`` (some datasets have no "train" split)."""
    names = open_source(source, split=split, data_dir=data_dir, label_key=label_key).class_names
    if names is None:
        raise InputError(f"dataset {source!r} has no class names (no labels, or labels that are not a TFDS ClassLabel)")
    return names
