"""The training loop: mesh, program, data, restore-or-init, steps, logging, evaluation hooks,
checkpoints, preemption, and the final model directory.

A run's working directory holds ``checkpoints/`` (orbax), ``metrics.jsonl``, ``tensorboard/``,
``curves.png``, ``config.json`` and, once finished, ``model/`` (a model directory `jaxvlm.load`
opens). Running the same command again resumes from the newest readable checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
from pathlib import Path
from typing import Callable, Iterator, Sequence

import jax
import ml_collections

from jaxvlm import data, parallel
from jaxvlm.errors import InputError
from jaxvlm.tokenizers import build_tokenizer
from jaxvlm.train import TrainingError
from jaxvlm.train import config as train_config
from jaxvlm.train.checkpoint import Checkpoints, export
from jaxvlm.train.metrics import CURVES_FILE, METRICS_FILE, MetricsLog, Progress, plot
from jaxvlm.train.program import TrainProgram, build
from jaxvlm.train.state import TrainState

log = logging.getLogger(__name__)

# (step, params) -> {name: value}, e.g. jaxvlm.eval.training_hook. params are the train state's global
# arrays: with several processes, not every shard is on this process (process_allgather gathers them).
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


def train(config: ml_collections.ConfigDict, workdir: Path | str, *, hooks: Sequence[Hook] = (),
          iterator: Iterator[dict] | None = None) -> Result:
    """Trains (or resumes) the run of ``config`` in ``workdir``. Every process of a multi-host job
    calls this with the same arguments. ``iterator``: process-local batches with Grain's
    get_state / set_state (default: `jaxvlm.data.train_iterator` of ``config.data``); ``hooks``:
    extra evaluations besides ``config.eval_specs``, run every ``config.eval_every`` steps and at
    the end."""
    workdir = Path(workdir)
    train_config.check(config, jax.device_count())
    program = build(config, parallel.create_mesh(config.mesh, config.mesh.dcn))
    spec = program.spec
    if not (spec.tokenizer_dir / spec.tokenizer.file).is_file():
        raise InputError(f"the model needs its tokenizer file {spec.tokenizer.file!r}, which is not in "
                         f"{spec.tokenizer_dir}: set model.tokenizer_dir")
    tokenizer = build_tokenizer(spec.tokenizer, spec.tokenizer_dir)
    if iterator is None:
        iterator = data.train_iterator(config.data, preprocess=program.spec.preprocess, tokenizer=tokenizer,
                                       global_batch_size=config.global_batch_size, seed=config.seed)
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

    specs = [{"data_dir": config.data.data_dir, **dict(spec)} for spec in config.eval_specs]
    return [training_hook(program.spec.config, program.spec.preprocess, tokenizer, specs)]


class _Preemption:
    """Whether to save and stop now. Several processes: JAX's preemption service (it catches
    SIGTERM and agrees on a step all processes reach); one process: our own SIGTERM handler."""

    def __init__(self):
        self._multi = jax.process_count() > 1
        self._noticed = False
        if not self._multi:
            self._previous = signal.signal(signal.SIGTERM, self._notice)

    def _notice(self, signum, frame):
        self._noticed = True

    def reached(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._noticed

    def close(self):
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
        preemption = _Preemption()
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
                    self._save(step, state)
                    self.checkpoints.wait()
                    return Result(step, state, metrics, evaluation, True, self.workdir)
                if step % config.checkpoint.every == 0 or step == config.total_steps:
                    self._save(step, state)
            if pending is not None:
                self._check(*pending)
            if self.hooks:
                evaluation = self._evaluate(config.total_steps, state)
            self._save(config.total_steps, state)
            self.checkpoints.wait()
            self._export(state)
            return Result(config.total_steps, state, metrics, evaluation, False, self.workdir)
        finally:
            preemption.close()
            self.checkpoints.wait()
            if self.chief:
                self.progress.close()
                self.log.close()
                if (self.workdir / METRICS_FILE).exists():
                    plot(self.workdir / METRICS_FILE, self.workdir / CURVES_FILE)

    def _check(self, step: int, metrics: dict) -> None:
        streak = int(metrics["nan_streak"])
        if streak >= self.config.max_nan_steps:
            self.checkpoints.wait()
            raise TrainingError(f"the loss or gradients were not finite for {streak} steps in a row (steps "
                                f"{step - streak + 1}-{step}, each skipped); the newest checkpoint is step "
                                f"{max(self.checkpoints.steps(), default=0)}")
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
        for hook in self.hooks:
            results.update({k: float(v) for k, v in hook(step, state.params).items()})
        if self.chief:
            self.log.write(step, results)
            self.progress.write(f"step {step}  " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
        return results

    def _save(self, step: int, state: TrainState) -> None:
        if step != self.last_saved:
            self.checkpoints.save(step, state, self.iterator)
            self.last_saved = step

    def _export(self, state: TrainState) -> None:
        out = self.workdir / MODEL_DIR
        if self.chief and out.exists():
            shutil.rmtree(out)
        provenance = {"source": "jaxvlm train", "workdir": str(self.workdir.absolute()),
                      "steps": self.config.total_steps, "model": self.config.model.name or self.config.model.init_from}
        export(out, self.program.spec, state.params, provenance)

