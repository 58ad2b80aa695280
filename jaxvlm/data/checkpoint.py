"""Saving and restoring a data iterator's state with orbax, next to the training state.

Grain's orbax handler writes one small JSON file per process (`process_<i>-of-<n>.json`)
holding the iterator's state; restoring sets the state on a freshly built iterator with the
same config and worker count. In a `CheckpointManager`, store it under its own item name:

    mgr.save(step, args=ocp.args.Composite(state=..., data=iterator_save_args(it)))
    mgr.restore(step, args=ocp.args.Composite(state=..., data=iterator_restore_args(it)))
"""

from __future__ import annotations

import grain


def iterator_save_args(iterator: grain.DatasetIterator) -> grain.checkpoint.CheckpointSave:
    """orbax args that save `iterator`'s current state."""
    return grain.checkpoint.CheckpointSave(iterator)


def iterator_restore_args(iterator: grain.DatasetIterator) -> grain.checkpoint.CheckpointRestore:
    """orbax args that restore a saved state into `iterator` (built with the same config)."""
    return grain.checkpoint.CheckpointRestore(iterator)
