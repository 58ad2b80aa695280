"""Grain input pipelines for image-text data (see docs/data.md)."""

from __future__ import annotations

from jaxvlm.data.checkpoint import iterator_restore_args, iterator_save_args
from jaxvlm.data.config import default_config
from jaxvlm.data.multihost import global_batch
from jaxvlm.data.pipeline import TrainIterator, class_names, eval_batches, train_iterator

__all__ = [
    "TrainIterator",
    "class_names",
    "default_config",
    "eval_batches",
    "global_batch",
    "iterator_restore_args",
    "iterator_save_args",
    "train_iterator",
]
