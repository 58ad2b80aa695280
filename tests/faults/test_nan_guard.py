"""Non-finite losses injected at step k (a NaN or an infinite pixel in that step's batch): the NaN
guard skips those updates, goes on while fewer than ``max_nan_steps`` come in a row and stops the
run when that many do, and no checkpoint ever holds a non-finite value."""

from __future__ import annotations

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxvlm.train import TrainingError
from jaxvlm.train.checkpoint import Checkpoints
from jaxvlm.train.metrics import read
from tests.train.runs import standin_iterator, tiny_config

STEPS = 8
MAX_NAN_STEPS = 3


def config():
    return tiny_config(
        changes={
            "total_steps": STEPS,
            "global_batch_size": 8,
            "log_every": 1,
            "max_nan_steps": MAX_NAN_STEPS,
            "checkpoint.every": 1,
            "checkpoint.keep_last": 100,
        }
    )


class Poisoned(grain.DatasetIterator):
    """The stand-in batches, with one pixel of each batch of ``steps`` set to ``value``
    (checkpointable: the run saves its position)."""

    def __init__(self, config, steps: set[int], value: float):
        super().__init__(standin_iterator(config))
        self._steps, self._value, self._step = steps, value, 0

    def __next__(self) -> dict:
        batch = next(self._parent)
        self._step += 1
        if self._step in self._steps:
            batch["image"][0, 0, 0, 0] = self._value
        return batch

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "step": self._step}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._step = state["step"]


def saved_states(workdir, config) -> dict[int, dict]:
    """Every checkpoint's train state, restored as written (host arrays)."""
    with Checkpoints(workdir / "checkpoints", config.checkpoint) as checkpoints:
        args = ocp.args.Composite(state=ocp.args.StandardRestore())
        return {
            step: jax.device_get(checkpoints.manager.restore(step, args=args).state) for step in checkpoints.steps()
        }


def all_finite(state) -> bool:
    return all(
        np.isfinite(np.asarray(leaf, np.float64)).all()
        for leaf in jax.tree.leaves(state)
        if np.issubdtype(np.asarray(leaf).dtype, np.inexact)
    )


def equal_params(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])))


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.slow  # make test has the nan guard in tests/train (test_step, test_loop)
def test_a_few_non_finite_steps_are_skipped(value, train_in_process, tmp_path, record):
    k = int(np.random.default_rng().integers(2, STEPS - MAX_NAN_STEPS + 2))
    bad = set(range(k, k + MAX_NAN_STEPS - 1))
    c = config()
    result = train_in_process(c, tmp_path, Poisoned(c, bad, value))
    skipped = [line["skipped"] for line in read(tmp_path / "metrics.jsonl") if "skipped" in line]
    states = saved_states(tmp_path, c)
    assert result.step == STEPS and skipped == [int(s in bad) for s in range(1, STEPS + 1)]
    assert sorted(states) == list(range(1, STEPS + 1)) and all(all_finite(s) for s in states.values())
    assert all(equal_params(states[s], states[k - 1]) for s in bad)  # a skipped step changes nothing
    assert not equal_params(states[STEPS], states[k - 1])
    record(
        "Faults",
        f"{'NaN' if np.isnan(value) else '+inf'} in the batches of {len(bad)} steps in a row "
        f"(max_nan_steps {MAX_NAN_STEPS})",
        f"steps {sorted(bad)} of {STEPS}",
        f"those updates skipped (parameters unchanged), the run finished; {len(states)} checkpoints, all finite",
    )


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_steps_in_a_row_stop_the_run(value, train_in_process, tmp_path, record):
    k = int(np.random.default_rng().integers(2, STEPS - MAX_NAN_STEPS + 2))
    c = config()
    with pytest.raises(
        TrainingError,
        match=rf"not finite for {MAX_NAN_STEPS} steps in a row \(steps "
        rf"{k}-{k + MAX_NAN_STEPS - 1}, each skipped\)",
    ) as stopped:
        train_in_process(c, tmp_path, Poisoned(c, set(range(k, STEPS + 1)), value))
    states = saved_states(tmp_path, c)
    assert all(all_finite(s) for s in states.values())
    assert all(equal_params(states[s], states[k - 1]) for s in states if s >= k)
    record(
        "Faults",
        f"{'NaN' if np.isnan(value) else '+inf'} in every batch from step k on (max_nan_steps {MAX_NAN_STEPS})",
        f"k = {k}",
        f'stopped: "{str(stopped.value).split(";")[0]}"; {len(states)} checkpoints written, all finite, '
        f"those after step {k - 1} with its parameters",
    )
