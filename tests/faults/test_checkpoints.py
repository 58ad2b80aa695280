"""The newest checkpoint truncated or deleted in part: restore falls back to the previous complete
one, says so, sets the damaged one aside, and the run continues to the uninterrupted run's exact
parameters."""

from __future__ import annotations

import logging
import os
import random
import shutil

import jax
import numpy as np
import pytest

from jaxvlm import parallel
from jaxvlm.train import TrainingError
from jaxvlm.train.checkpoint import UNREADABLE_SUFFIX, Checkpoints
from jaxvlm.train.program import build
from tests.train.runs import standin_iterator, tiny_config

STEPS = 8
DAMAGES = {
    "truncated to half": lambda path: os.truncate(path, path.stat().st_size // 2),
    "truncated to 0 bytes": lambda path: os.truncate(path, 0),
    "deleted": lambda path: path.unlink(),
}


def config():
    return tiny_config(
        changes={
            "total_steps": STEPS,
            "global_batch_size": 8,
            "checkpoint.every": 2,
            "checkpoint.keep_last": 2,
            "checkpoint.preemption_grace_secs": 600.0,
        }
    )


@pytest.fixture(scope="module")
def reference(train_in_process, tmp_path_factory):
    """An uninterrupted run in process: its work directory and final parameters."""
    workdir = tmp_path_factory.mktemp("reference")
    result = train_in_process(config(), workdir, standin_iterator(config()))
    return workdir, jax.device_get(result.state.params)


def complete_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def restore():
    """``restore(checkpoints directory, caplog) -> (host state, warnings)`` as the run restores it."""
    c = config()
    abstract = build(c, parallel.create_mesh(c.mesh, devices=jax.devices()[:1])).state.abstract

    def run(directory, caplog):
        caplog.clear()
        with caplog.at_level(logging.WARNING, "jaxvlm"), Checkpoints(directory, c.checkpoint) as checkpoints:
            state = checkpoints.restore(abstract, standin_iterator(c))
        return jax.device_get(state), caplog.text

    return run


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize(
    "cases",
    [
        pytest.param(12, id="sample", marks=pytest.mark.slow),
        pytest.param(None, id="every", marks=pytest.mark.faults_slow),
    ],
)
def test_files_of_the_newest_checkpoint_damaged(cases, reference, restore, tmp_path, caplog, record):
    """Files of the newest step truncated or deleted (a random sample, or each file in turn with
    each damage): restore gives either that step, bitwise, or the step before (with a warning, the
    damaged step set aside) — nothing else."""
    source = reference[0] / "checkpoints"
    previous, newest = complete_steps(reference[0])
    intact = {
        step: restore(_copy(source, tmp_path / f"intact-{step}", keep=[step]), caplog)[0] for step in (newest, previous)
    }
    files = sorted(p.relative_to(source / str(newest)) for p in (source / str(newest)).rglob("*") if p.is_file())
    combinations = [(damage, name) for damage in DAMAGES for name in files]
    if cases is not None:
        combinations = random.sample(combinations, cases)
    outcomes = {"fell back": 0, "unaffected": 0}
    for damage, name in combinations:
        work = _copy(source, tmp_path / "work")
        DAMAGES[damage](work / str(newest) / name)
        state, warnings = restore(work, caplog)
        if same(state, intact[newest]):
            outcomes["unaffected"] += 1
            continue
        assert same(state, intact[previous]), f"{name} {damage}: restored neither step"
        assert f"restored checkpoint step {previous} instead of the newest, {newest}" in warnings
        assert (work / f"{newest}{UNREADABLE_SUFFIX}").is_dir() and not (work / str(newest)).exists()
        outcomes["fell back"] += 1
    print(outcomes)
    record(
        "Faults",
        "a file of the newest checkpoint truncated to half, to 0 bytes, or deleted",
        f"{len(combinations)} of its {len(files)} files x {len(DAMAGES)} damages",
        f"{outcomes['fell back']}: fell back to the previous step with a warning, damaged step set aside; "
        f"{outcomes['unaffected']}: file not needed, newest step restored bitwise; 0 other outcomes",
    )
    assert cases is not None or outcomes["fell back"] >= len(DAMAGES)


@pytest.mark.slow  # builds the reference run; make test-slow and make test-faults cover this file
def test_no_readable_checkpoint_is_one_clear_error(reference, restore, tmp_path, caplog, record):
    work = _copy(reference[0] / "checkpoints", tmp_path / "work")
    for step in complete_steps(reference[0]):
        (work / str(step) / "state" / "manifest.ocdbt").unlink()
    with pytest.raises(TrainingError, match="none of the checkpoints .* can be restored"):
        restore(work, caplog)
    record(
        "Faults",
        "every checkpoint damaged",
        "manifest of each step deleted",
        "one error naming the directory and the steps; nothing set aside",
    )
    assert sorted(p.name for p in work.iterdir()) == sorted(str(s) for s in complete_steps(reference[0]))


def test_the_run_continues_after_falling_back(reference, train_in_process, tmp_path, caplog, record):
    """A rerun on a work directory whose newest checkpoint lost part of its largest file (or all
    of it): it says so, resumes from the step before, writes the damaged step anew and ends
    bitwise where the uninterrupted run did."""
    damage, apply = random.choice(sorted(DAMAGES.items()))
    previous, newest = complete_steps(reference[0])
    _copy(reference[0] / "checkpoints", tmp_path / "checkpoints")
    state = tmp_path / "checkpoints" / str(newest) / "state"
    biggest = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    apply(biggest)
    with caplog.at_level(logging.WARNING, "jaxvlm"):
        result = train_in_process(config(), tmp_path, standin_iterator(config()))
    assert f"restored checkpoint step {previous} instead of the newest, {newest}" in caplog.text
    assert complete_steps(tmp_path) == [previous, newest]
    assert (tmp_path / "checkpoints" / f"{newest}{UNREADABLE_SUFFIX}").is_dir()
    differ = [
        i
        for i, (a, b) in enumerate(
            zip(jax.tree.leaves(reference[1]), jax.tree.leaves(jax.device_get(result.state.params)))
        )
        if not np.array_equal(a, b)
    ]
    record(
        "Faults",
        "the newest checkpoint's largest array file damaged, then the run restarted",
        damage,
        f"warned, resumed from step {previous}, set the damaged step aside and wrote step {newest} "
        f"anew; {len(differ)} parameter tensors differ from the uninterrupted run",
    )
    assert not differ


def _copy(source, target, keep=None):
    """A fresh copy of a checkpoints directory (only the steps in ``keep``, if given)."""
    shutil.rmtree(target, ignore_errors=True)
    skip = lambda d, names: [n for n in names if d == str(source) and n.isdigit() and int(n) not in keep]
    shutil.copytree(source, target, ignore=None if keep is None else skip)
    return target
