"""Checkpoints with orbax: an asynchronous CheckpointManager whose every step holds the train
state (parameters, optimizer state, step, RNG, NaN-guard counters) and the data iterator's state.

orbax writes each step into a temporary directory and renames it into place only when every
process has finished, so a run killed mid-save leaves no step that `restore` would pick up (the
leftover temporary directory is removed when the next run opens the manager). A step that exists
but cannot be read is skipped in favour of the one before, with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxvlm import data, model_dir
from jaxvlm.train import TrainingError
from jaxvlm.train.state import TrainState

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(self, directory: Path, cfg):
        keep = [policies.LatestN(cfg.keep_last)] + ([policies.EveryNSteps(cfg.keep_every)] if cfg.keep_every else [])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep),
            enable_async_checkpointing=cfg.async_save,
            cleanup_tmp_directories=True,
        )
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: TrainState, iterator) -> None:
        """Starts saving ``state`` (taken after ``step`` batches) and ``iterator``'s position. Returns
        once both are copied off the devices / out of the iterator; writing goes on in the background."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=data.iterator_save_args(iterator)), force=True)

    def restore(self, abstract: TrainState, iterator) -> TrainState | None:
        """The newest readable checkpoint's state, laid out as ``abstract`` says (any mesh), with
        ``iterator`` moved to its position; None when there is no checkpoint."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), data=data.iterator_restore_args(iterator)))
            except Exception as e:  # noqa: BLE001 - orbax and the file system raise many kinds
                log.warning("checkpoint step %d in %s cannot be restored (%s: %s); trying an older one",
                            step, self.directory, type(e).__name__, e)
                continue
            if step != steps[0]:
                log.warning("restored checkpoint step %d instead of the newest, %d", step, steps[0])
            return restored.state
        if steps:
            raise TrainingError(f"none of the checkpoints in {self.directory} (steps {steps}) can be restored")
        return None

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def export(out: Path, spec, params, provenance: dict) -> None:
    """Writes ``params`` as a model directory that `jaxvlm.load` opens (process 0 writes; every
    process must call this, since gathering sharded parameters is collective)."""
    from jax.experimental import multihost_utils

    host = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        loaded = model_dir.ModelDir(spec.config, spec.preprocess, spec.tokenizer, provenance, host)
        model_dir.save(out, loaded, spec.tokenizer_dir / spec.tokenizer.file)
