"""Hashes of data batches, to compare batches (and tell examples apart) across runs and processes."""

import hashlib

import numpy as np


def batch_digest(batch: dict) -> str:
    """One hash of every array in a batch (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(batch):
        value = np.ascontiguousarray(batch[name])
        h.update(f"{name}{value.dtype}{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def example_digests(batch: dict) -> list[str]:
    """One hash per example (its image and label), to tell records apart."""
    return [
        hashlib.sha256(batch["image"][i].tobytes() + batch["label"][i].tobytes()).hexdigest()
        for i in range(len(batch["image"]))
    ]
