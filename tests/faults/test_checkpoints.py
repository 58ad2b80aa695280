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

from jaxvlm import data, parallel
from jaxvlm.tokenizers import build_tokenizer
from jaxvlm.train import TrainingError
from jaxvlm.train import config as train_config
from jaxvlm.train.checkpoint import UNREADABLE_SUFFIX, Checkpoints
from jaxvlm.train.program import build

from tests.faults import runs

DAMAGES = {
    "truncated to half": lambda path: os.truncate(path, path.stat().st_size // 2),
    "truncated to 0 bytes": lambda path: os.truncate(path, 0),
    "deleted": lambda path: path.unlink(),
}


@pytest.fixture(scope="module")
def restore(train_data):
    """``restore(checkpoints directory) -> (host state or None, warnings)``, as the run of
    `runs.train_args` restores it (one device)."""
    args = runs.train_args(runs.REPO, train_data, runs.STEPS)
    config = train_config.load(args[2], [a[len("--config."):] for a in args if a.startswith("--config.")])
    mesh = parallel.create_mesh(config.mesh, devices=jax.devices()[:1])
    program = build(config, mesh)
    tokenizer = build_tokenizer(program.spec.tokenizer, program.spec.tokenizer_dir)

    def run(directory, caplog):
        iterator = data.train_iterator(config.data, preprocess=program.spec.preprocess, tokenizer=tokenizer,
                                       global_batch_size=config.global_batch_size, seed=config.seed)
        caplog.clear()
        with caplog.at_level(logging.WARNING, "jaxvlm"), Checkpoints(directory, config.checkpoint) as checkpoints:
            state = checkpoints.restore(program.state.abstract, iterator)
        return jax.device_get(state), caplog.text

    return run


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_every_file_of_the_newest_checkpoint_damaged(reference_run, restore, tmp_path, caplog, record):
    """Each file of the newest step truncated or deleted in turn: restore gives either that step,
    bitwise, or the step before (with a warning, the damaged step set aside) — nothing else."""
    source = reference_run / "checkpoints"
    newest, previous = runs.complete_steps(reference_run)[-1], runs.complete_steps(reference_run)[-2]
    intact = {step: restore(_copy(source, tmp_path / f"intact-{step}", keep=[step]), caplog)[0]
              for step in (newest, previous)}
    files = sorted(p.relative_to(source / str(newest)) for p in (source / str(newest)).rglob("*") if p.is_file())
    outcomes = {"fell back": 0, "unaffected": 0}
    for damage, apply in DAMAGES.items():
        for name in files:
            work = _copy(source, tmp_path / "work")
            apply(work / str(newest) / name)
            state, warnings = restore(work, caplog)
            if same(state, intact[newest]):
                outcomes["unaffected"] += 1
                continue
            assert same(state, intact[previous]), f"{name} {damage}: restored neither step"
            assert f"restored checkpoint step {previous} instead of the newest, {newest}" in warnings
            assert (work / f"{newest}{UNREADABLE_SUFFIX}").is_dir() and not (work / str(newest)).exists()
            outcomes["fell back"] += 1
    print(outcomes)
    record("Faults", "a file of the newest checkpoint truncated to half, to 0 bytes, or deleted",
           f"each of its {len(files)} files x {len(DAMAGES)} damages = {len(files) * len(DAMAGES)}",
           f"{outcomes['fell back']}: fell back to the previous step with a warning, damaged step set aside; "
           f"{outcomes['unaffected']}: file not needed, newest step restored bitwise; 0 other outcomes")
    assert outcomes["fell back"] >= len(DAMAGES)


def test_no_readable_checkpoint_is_one_clear_error(reference_run, restore, tmp_path, caplog, record):
    work = _copy(reference_run / "checkpoints", tmp_path / "work")
    for step in runs.complete_steps(reference_run):
        (work / str(step) / "state" / "manifest.ocdbt").unlink()
    with pytest.raises(TrainingError, match="none of the checkpoints .* can be restored"):
        restore(work, caplog)
    record("Faults", "every checkpoint damaged", "manifest of each step deleted",
           "one error naming the directory and the steps; nothing set aside")
    assert sorted(p.name for p in work.iterdir()) == sorted(str(s) for s in runs.complete_steps(reference_run))


def test_the_run_continues_after_falling_back(train_data, reference_run, tmp_path, record):
    """`jaxvlm train` on a work directory whose newest checkpoint lost a random file part: it says
    so, resumes from the step before, writes the damaged step anew and ends bitwise where the
    uninterrupted run did."""
    rng = random.Random()
    workdir = tmp_path / "run"
    steps = runs.complete_steps(reference_run)
    _copy(reference_run / "checkpoints", workdir / "checkpoints")
    shutil.copy(reference_run / "metrics.jsonl", workdir / "metrics.jsonl")
    state = workdir / "checkpoints" / str(steps[-1]) / "state"
    biggest = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    damage, apply = rng.choice(sorted(DAMAGES.items()))
    apply(biggest)
    done = runs.run(runs.train_args(workdir, train_data, runs.STEPS))
    assert done.process.returncode == 0, done.stderr
    assert f"restored checkpoint step {steps[-2]} instead of the newest, {steps[-1]}" in done.stderr
    assert done.logged_steps() == list(range(steps[-2] + 1, runs.STEPS + 1))
    assert runs.complete_steps(workdir) == steps and (workdir / "checkpoints" / f"{steps[-1]}{UNREADABLE_SUFFIX}").is_dir()
    differ = runs.differing(runs.weights(reference_run), runs.weights(workdir))
    record("Faults", "newest checkpoint's largest array file damaged, then `jaxvlm train` rerun",
           f"{damage} ({biggest.stat().st_size if biggest.exists() else 0} bytes left)",
           f"warned, resumed from step {steps[-2]}, rewrote step {steps[-1]}; {len(differ)} parameter tensors "
           "differ from the uninterrupted run")
    assert not differ


def _copy(source, target, keep=None):
    """A fresh copy of a checkpoints directory (only the steps in ``keep``, if given)."""
    shutil.rmtree(target, ignore_errors=True)
    skip = (lambda d, names: [n for n in names if d == str(source) and n.isdigit() and int(n) not in keep])
    shutil.copytree(source, target, ignore=None if keep is None else skip)
    return target
