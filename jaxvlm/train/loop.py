"""The training loop: mesh, program, data, restore-or-init, steps, logging, evaluation hooks,
checkpoints, preemption, and the final model directory.

A run's working directory holds ``checkpoints/`` (orbax), ``metrics.jsonl``, ``tensorboard/``,
``curves.png``, ``config.json`` and, once finished, ``model/`` (a model directory `jaxvlm.load`
opens). Running the same command again resumes from the newest readable checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import ml_collections

from jaxvlm import data, parallel
from jaxvlm.errors import InputError
from jaxvlm.tokenizers import build_tokenizer
from jaxvlm.train import PREEMPTED_EXIT_CODE, TrainingError
from jaxvlm.train import config as train_config
from jaxvlm.train.checkpoint import Checkpoints, CheckpointWriteError, export
from jaxvlm.train.metrics import CURVES_FILE, METRICS_FILE, MetricsLog, Progress, plot
from jaxvlm.train.peers import PeerWatch
from jaxvlm.train.program import TrainProgram, build
from jaxvlm.train.state import TrainState

log = logging.getLogger(__name__)

# (step, params) -> {name: value}, e.g. jaxvlm.eval.training_hook; (step, params, batch_stats) for a model with
# BatchNorm. params are the train state's global arrays: with several processes, not every shard is on this
# process (process_allgather gathers them).
Hook = Callable[[int, dict], dict]
MODEL_DIR = "model"


@dataclasses.dataclass
class Result:
    step: int  # steps done
    state: TrainState
    metrics: dict[str, float]  # the last logged train metrics
    evaluation: dict[str, float]  # the last evaluation results
    preempted: bool  # stopped by SIGTERM / a preemption notice, after saving a checkpoint
    workdir: Path

    @property
    def model_dir(self) -> Path | None:
        path = self.workdir / MODEL_DIR
        return path if path.is_dir() else None


def train(
    config: ml_collections.ConfigDict,
    workdir: Path | str,
    *,
    hooks: Sequence[Hook] = (),
    iterator: Iterator[dict] | None = None,
) -> Result:
    """Trains (or resumes) the run of ``config`` in ``workdir``. Every process of a multi-host job
    calls this with the same arguments. ``iterator``: process-local batches with Grain's
    get_state / set_state (default: `jaxvlm.data.train_iterator` of ``config.data``); ``hooks``:
    extra evaluations besides ``config.eval_specs``, run every ``config.eval_every`` steps and at
    the end."""
    workdir = Path(workdir)
    train_config.check(config, jax.device_count())
    if jax.process_count() == 1:
        return _train(config, workdir, hooks, iterator)
    watch = PeerWatch(config.peer_timeout_secs)
    try:
        return _train(config, workdir, hooks, iterator)
    except Exception:  # if a lost process caused it (a failed collective or barrier), name that one
        watch.leave()
        raise
    finally:
        watch.stop()


def _train(config, workdir: Path, hooks, iterator) -> Result:
    program = build(config, parallel.create_mesh(config.mesh, config.mesh.dcn))
    spec = program.spec
    if not (spec.tokenizer_dir / spec.tokenizer.file).is_file():
        raise InputError(
            f"the model needs its tokenizer file {spec.tokenizer.file!r}, which is not in "
            f"{spec.tokenizer_dir}: set model.tokenizer_dir"
        )
    tokenizer = build_tokenizer(spec.tokenizer, spec.tokenizer_dir)
    if iterator is None:
        iterator = data.train_iterator(
            config.data,
            preprocess=program.spec.preprocess,
            tokenizer=tokenizer,
            global_batch_size=config.global_batch_size,
            seed=config.seed,
        )
    train_config.check_eval_specs(config)  # the training data first, then every evaluation's
    hooks = list(hooks) + _eval_hooks(config, program, tokenizer)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    with Checkpoints(workdir / "checkpoints", config.checkpoint) as checkpoints:
        return _Run(config, workdir, program, iterator, hooks, checkpoints).run()


def _eval_hooks(config, program: TrainProgram, tokenizer) -> list[Hook]:
    if not config.eval_specs:
        return []
    from jaxvlm.eval import training_hook

    return [training_hook(program.spec.config, program.spec.preprocess, tokenizer, train_config.eval_specs(config))]


class _Preemption:
    """Whether to save and stop now. Several processes: JAX's preemption service (it catches
    SIGTERM and agrees on a step all processes reach); one process: our own SIGTERM handler. Once
    noticed, the checkpoint must be written within ``grace_secs``, or the process exits without
    it (the previous checkpoint stays the newest)."""

    def __init__(self, grace_secs: float, checkpoints: Checkpoints):
        self._multi = jax.process_count() > 1
        self._grace, self._checkpoints = grace_secs, checkpoints
        self._deadline: threading.Timer | None = None
        self.step: int | None = None  # the step being saved for the notice
        if not self._multi:
            self._previous = signal.signal(signal.SIGTERM, self._notice)

    def _notice(self, signum=None, frame=None):
        if self._deadline is None:
            self._deadline = threading.Timer(self._grace, self._expire)
            self._deadline.daemon = True
            self._deadline.start()

    def reached(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self._notice()
        if self._deadline is not None and self.step is None:
            self.step = step
        return self.step is not None

    def _expire(self):
        saving = f"the checkpoint of step {self.step} was not" if self.step is not None else "no checkpoint was"
        sys.stderr.write(
            f"jaxvlm: preempted: {saving} finished within the grace period of {self._grace:g} s "
            f"(checkpoint.preemption_grace_secs); the newest complete checkpoint is step "
            f"{self._checkpoints.newest()}: run the same command to resume\n"
        )
        sys.stderr.flush()
        os._exit(PREEMPTED_EXIT_CODE)

    def close(self):
        if self._deadline is not None:
            self._deadline.cancel()
        if not self._multi:
            signal.signal(signal.SIGTERM, self._previous)


class _Run:
    def __init__(self, config, workdir: Path, program: TrainProgram, iterator, hooks, checkpoints: Checkpoints):
        self.config, self.workdir, self.program, self.iterator = config, workdir, program, iterator
        self.hooks, self.checkpoints = hooks, checkpoints
        self.chief = jax.process_index() == 0
        self.last_saved = -1

    def run(self) -> Result:
        config = self.config
        state = self.checkpoints.restore(self.program.state.abstract, self.iterator)
        if state is None:
            state = self.program.init()
        start = int(state.step)
        self.last_saved = start
        self.log = MetricsLog(self.workdir, start) if self.chief else None
        self.progress = Progress(config.total_steps, start, config.global_batch_size) if self.chief else None
        if start and self.chief:
            self.progress.write(f"resuming {self.workdir} from its checkpoint of step {start}")
        preemption = _Preemption(config.checkpoint.preemption_grace_secs, self.checkpoints)
        metrics: dict[str, float] = {}
        evaluation: dict[str, float] = {}
        pending = None  # the previous step's metrics, read once the next step is queued
        try:
            for step in range(start + 1, config.total_steps + 1):
                batch = data.global_batch(next(self.iterator), self.program.mesh, parallel.BATCH_AXES)
                state, step_metrics = self.program.run_step(state, batch)
                if pending is not None:
                    self._check(*pending)
                pending = (step, step_metrics)
                if self.chief:
                    self.progress.update(step)
                if step % config.log_every == 0 or step == config.total_steps:
                    metrics = self._log(step, step_metrics)
                if config.eval_every and step % config.eval_every == 0 and step != config.total_steps:
                    evaluation = self._evaluate(step, state)
                if preemption.reached(step):
                    self._save_for_preemption(step, state)
                    return Result(step, state, metrics, evaluation, True, self.workdir)
                if step % config.checkpoint.every == 0 or step == config.total_steps:
                    self._save(step, state)
            if pending is not None:
                self._check(*pending)
            if self.hooks:
                evaluation = self._evaluate(config.total_steps, state)
            self._save(config.total_steps, state)
            self._wait()
            self._export(state)
            return Result(config.total_steps, state, metrics, evaluation, False, self.workdir)
        finally:
            preemption.close()
            self._settle()
            if self.chief:
                self.progress.close()
                self.log.close()
                if (self.workdir / METRICS_FILE).exists():
                    plot(self.workdir / METRICS_FILE, self.workdir / CURVES_FILE)

    def _check(self, step: int, metrics: dict) -> None:
        streak = int(metrics["nan_streak"])
        if streak >= self.config.max_nan_steps:
            self._settle()
            raise TrainingError(
                f"the loss or gradients were not finite for {streak} steps in a row (steps "
                f"{step - streak + 1}-{step}, each skipped); the newest checkpoint is step "
                f"{self.checkpoints.newest() or 0}"
            )
        if streak and self.chief:
            log.warning("step %d: non-finite loss or gradients, update skipped (%d in a row)", step, streak)

    def _log(self, step: int, step_metrics: dict) -> dict[str, float]:
        metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        if self.chief:
            metrics["images_per_sec"] = self.progress.log(step, metrics)
            self.log.write(step, metrics)
        return metrics

    def _evaluate(self, step: int, state: TrainState) -> dict[str, float]:
        results = {}
        variables = (state.params, state.batch_stats) if state.batch_stats else (state.params,)
        for hook in self.hooks:
            results.update({k: float(v) for k, v in hook(step, *variables).items()})
        if self.chief:
            self.log.write(step, results)
            self.progress.write(f"step {step}  " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
        return results

    def _save(self, step: int, state: TrainState) -> None:
        if step != self.last_saved:
            self.last_saved = step
            self._wait()  # the previous save's failure, if any, is that step's
            try:
                self.checkpoints.save(step, state, self.iterator)
            except CheckpointWriteError as e:
                self._write_failed(e)

    def _wait(self) -> None:
        try:
            self.checkpoints.wait()
        except CheckpointWriteError as e:
            self._write_failed(e)

    def _write_failed(self, error: CheckpointWriteError) -> None:
        """Stops the run or goes on, as ``checkpoint.on_save_error`` says."""
        newest = self.checkpoints.newest()
        where = "no checkpoint is complete" if newest is None else f"the newest complete checkpoint is step {newest}"
        if self.config.checkpoint.on_save_error == "stop":
            raise TrainingError(f"{error}; {where}") from None
        if self.chief:
            log.warning("%s; training goes on (checkpoint.on_save_error is 'continue'), %s", error, where)

    def _settle(self) -> None:
        """Waits for a save still being written, when the run is ending anyway: a failure is logged."""
        try:
            self.checkpoints.wait()
        except CheckpointWriteError as e:
            log.warning("%s; the newest complete checkpoint is step %s", e, self.checkpoints.newest())

    def _save_for_preemption(self, step: int, state: TrainState) -> None:
        try:
            if step != self.last_saved:
                self.checkpoints.save(step, state, self.iterator)
            self.checkpoints.wait()
        except CheckpointWriteError as e:
            raise TrainingError(
                f"preempted after step {step}, but {e}; the newest complete checkpoint is step "
                f"{self.checkpoints.newest()}"
            ) from None

    def _export(self, state: TrainState) -> None:
        out = self.workdir / MODEL_DIR
        if self.chief:
            # a previous export killed half-way left its hidden staging directory (model_dir.save)
            for stale in [out, *self.workdir.glob(f".{MODEL_DIR}.partial-*")]:
                shutil.rmtree(stale, ignore_errors=True)
        provenance = {
            "source": "jaxvlm train",
            "workdir": str(self.workdir.absolute()),
            "steps": self.config.total_steps,
            **self.program.spec.origin,
        }
        export(out, self.program.spec, state.params, provenance, state.batch_stats)
