"""Checkpoints with orbax: an asynchronous CheckpointManager whose every step holds the train
state (parameters, optimizer state, step, RNG, NaN-guard counters) and the data iterator's state.

orbax writes each step into a temporary directory and renames it into place only when every
process has finished, so a run killed mid-save leaves no step that `restore` would pick up (the
leftover temporary directory is removed when the next run opens the manager). A step that exists
but cannot be read is skipped in favour of the one before, with a warning, and set aside as
``<step>.unreadable`` so that the run can write that step again. A save that fails (a full disk, a
write error) raises `CheckpointWriteError` naming the step and why; its temporary directory is
removed and the steps before it stay as they were.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxvlm import data, model_dir
from jaxvlm.train import TrainingError
from jaxvlm.train.state import TrainState

if TYPE_CHECKING:  # program.py pulls in the models and the train step; only its type is needed here
    from jaxvlm.train.program import ModelSpec

log = logging.getLogger(__name__)

UNREADABLE_SUFFIX = ".unreadable"


class CheckpointWriteError(TrainingError):
    """A checkpoint could not be written; the ones before it are intact."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"checkpoint step {step} could not be written ({reason})")
        self.step = step


class Checkpoints:
    def __init__(self, directory: Path, cfg: ml_collections.ConfigDict):
        keep = [policies.LatestN(cfg.keep_last)] + ([policies.EveryNSteps(cfg.keep_every)] if cfg.keep_every else [])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep),
            enable_async_checkpointing=cfg.async_save,
            cleanup_tmp_directories=True,
        )
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._writing: int | None = None  # the step whose asynchronous write is not known to have succeeded

    def save(self, step: int, state: TrainState, iterator: grain.DatasetIterator) -> None:
        """Starts saving ``state`` (taken after ``step`` batches) and ``iterator``'s position. Returns
        once both are copied off the devices / out of the iterator; writing goes on in the background.
        Raises `CheckpointWriteError` for the previous save if that one failed (this one is then not
        started), or for this one if it fails at once."""
        self.wait()
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_stored(state)), data=data.iterator_save_args(iterator)
                ),
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - orbax and the file system raise many kinds
            self._discard(step)
            raise CheckpointWriteError(step, describe(e)) from None
        self._writing = step

    def wait(self) -> None:
        """Blocks until the last save is written; raises `CheckpointWriteError` (once) if it failed."""
        step, self._writing = self._writing, None
        if step is None:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._discard(step)
            raise CheckpointWriteError(step, describe(e)) from None

    def restore(self, abstract: TrainState, iterator: grain.DatasetIterator) -> TrainState | None:
        """The newest readable checkpoint's state, laid out as ``abstract`` says (any mesh), with
        ``iterator`` moved to its position; None when there is no checkpoint. Newer steps that cannot
        be read are set aside (renamed ``<step>.unreadable``)."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(_stored(abstract)), data=data.iterator_restore_args(iterator)
                    ),
                )
            except Exception as e:  # noqa: BLE001 - orbax and the file system raise many kinds
                log.warning(
                    "checkpoint step %d in %s cannot be restored (%s); trying an older one",
                    step,
                    self.directory,
                    describe(e),
                )
                continue
            if step != steps[0]:
                unreadable = [s for s in steps if s > step]
                self._set_aside(unreadable)
                log.warning(
                    "restored checkpoint step %d instead of the newest, %d; the unreadable steps %s are "
                    "set aside as <step>%s",
                    step,
                    steps[0],
                    unreadable,
                    UNREADABLE_SUFFIX,
                )
            return TrainState(**restored.state) if isinstance(abstract, TrainState) else restored.state
        if steps:
            raise TrainingError(f"none of the checkpoints in {self.directory} (steps {steps}) can be restored")
        return None

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def newest(self) -> int | None:
        """The newest step written completely (on disk, whatever this manager is still writing)."""
        steps = [int(p.name) for p in self.directory.iterdir() if p.name.isdigit()] if self.directory.is_dir() else []
        return max(steps, default=None)

    def _discard(self, step: int) -> None:
        """Removes what a failed save of ``step`` left behind (never a complete step)."""
        if jax.process_index() == 0:
            for path in self.directory.glob(f"{step}{ocp.path.atomicity_types.TMP_DIR_SUFFIX}*"):
                shutil.rmtree(path, ignore_errors=True)

    def _set_aside(self, steps: list[int]) -> None:
        _sync("jaxvlm checkpoint restore tried")
        if jax.process_index() == 0:
            for step in steps:
                target = self.directory / f"{step}{UNREADABLE_SUFFIX}"
                n = 1
                while target.exists():
                    target = self.directory / f"{step}{UNREADABLE_SUFFIX}-{n}"
                    n += 1
                os.replace(self.directory / str(step), target)
        _sync("jaxvlm checkpoints set aside")
        self.manager.reload()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stored(state: Any) -> Any:
    """A `TrainState` as orbax stores it: its fields by name, without batch_stats when there are none, so that
    checkpoints of models without BatchNorm keep the tree they had before the field existed (orbax takes
    an empty dict for a node and would refuse the old checkpoints' tree, which lacks it). Other trees as they are."""
    if not isinstance(state, TrainState):
        return state
    fields = {field.name: getattr(state, field.name) for field in dataclasses.fields(state)}
    if not fields["batch_stats"]:
        del fields["batch_stats"]
    return fields


def describe(error: BaseException) -> str:
    """One short line for an error from orbax / TensorStore / the file system (a full disk reads
    "No space left on device"), instead of their pages of specs."""
    errno = getattr(error, "errno", None) or next(
        (int(m) for m in re.findall(r"os_error_code='(\d+)'", str(error))), None
    )
    if errno:
        return f"{os.strerror(errno)}, errno {errno}"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def export(out: Path, spec: ModelSpec, params: Any, provenance: dict, batch_stats: Any = None) -> None:
    """Writes ``params`` (and BatchNorm's ``batch_stats``, if any) as a model directory that `jaxvlm.load`
    opens (process 0 writes; every process must call this, since gathering sharded parameters is collective)."""
    from jax.experimental import multihost_utils

    host, host_stats = multihost_utils.process_allgather((params, batch_stats or {}), tiled=True)
    if jax.process_index() == 0:
        loaded = model_dir.ModelDir(
            spec.config, spec.preprocess, spec.tokenizer, provenance, host, batch_stats=host_stats
        )
        model_dir.save(out, loaded, spec.tokenizer_dir / spec.tokenizer.file)
