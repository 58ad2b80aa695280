"""kill -9 of `jaxvlm train` at random moments (start-up and restore, between steps, while an
asynchronous checkpoint is being written, during the final save and export), each run resumed by
the same command: no resumed run loads a checkpoint that was not completely written, and every
chain of interrupted runs ends bitwise where the uninterrupted run did."""

from __future__ import annotations

import collections
import random
import time

import pytest

from tests.faults import runs

KILLS = 20
KINDS = ["checkpoint write"] * 8 + ["training"] * 6 + ["start-up"] * 3 + ["final save / export"] * 3
WRITE_DELAY = 1.0  # seconds the slow-save wrapper adds to each array write and to the final rename


def kill_at(kind: str, process: runs.Run, resume: int, rng: random.Random) -> str | None:
    """Waits for the kind's moment and kills the process there; None if it finished first."""
    if kind == "start-up":
        delay = rng.uniform(0.5, 8.0)
        if process.wait_for(lambda p: time.monotonic() - p.started > delay or p.logged_steps()):
            process.kill()
            return f"{delay:.1f} s after start"
        return None
    if kind == "training":
        if resume + 1 > runs.STEPS - 1:  # resumed at the last step or after it: no training moment left
            process.wait_for(lambda p: False)
            return None
        target = rng.randint(resume + 1, runs.STEPS - 1)
        if process.wait_for(lambda p: target in p.logged_steps()):
            time.sleep(rng.uniform(0, 0.3))
            process.kill()
            return f"after step {target}"
        return None
    if kind == "checkpoint write":
        if process.wait_for(lambda p: p.saves_started()):
            step = process.saves_started()[0]
            time.sleep(rng.uniform(0, 1.5 * WRITE_DELAY))
            process.kill()
            return f"writing step {step}"
        return None
    if process.wait_for(lambda p: runs.STEPS in p.logged_steps()):
        time.sleep(rng.uniform(0, 2.5))
        if process.process.poll() is None:
            process.kill()
            return "after the last step"
    return None


@pytest.mark.faults_slow
def test_kill_9_at_random_moments(train_data, reference_run, tmp_path, record):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    expected_weights, expected_losses = runs.weights(reference_run), runs.losses(reference_run)
    kinds = rng.sample(KINDS, len(KINDS))
    points, chains = [], []
    while kinds:
        workdir = tmp_path / f"chain-{len(chains)}"
        args = runs.train_args(workdir, train_data, runs.STEPS)
        while kinds:
            kind = kinds[0]
            newest = max(runs.complete_steps(workdir), default=0)
            process = runs.Run(args, slow_save=WRITE_DELAY if kind == "checkpoint write" else 0)
            moment = kill_at(kind, process, newest, rng)
            process.finish()
            resumed_from = process.logged_steps()[0] - 1 if process.logged_steps() else None
            assert resumed_from in (None, newest), f"resumed from step {resumed_from}, newest complete was {newest}"
            if moment is None:  # it finished before the moment came: this chain is done
                assert process.process.returncode == 0, process.stderr
                break
            kinds.pop(0)
            points.append(
                {
                    "kind": kind,
                    "moment": moment,
                    "complete": runs.complete_steps(workdir),
                    "partial": runs.partial_checkpoints(workdir),
                    "resumed_from": resumed_from,
                }
            )
        done = runs.run(args)
        assert done.process.returncode == 0, done.stderr
        newest = points[-1]["complete"][-1] if points and points[-1]["complete"] else 0
        assert done.logged_steps()[:1] in ([], [newest + 1])
        assert not runs.partial_checkpoints(workdir) and not list(workdir.glob(".model.partial-*"))
        got_losses = runs.losses(workdir)
        chains.append(
            {
                "tensors": runs.differing(expected_weights, runs.weights(workdir)),
                "losses": [s for s in expected_losses if got_losses.get(s) != expected_losses[s]],
            }
        )

    print(f"seed {seed}; kill points:")
    for point in points:
        print(f"  {point['kind']:20s} {point['moment']:24s} complete {point['complete']} partial {point['partial']}")
    by_kind = collections.defaultdict(list)
    for point in points:
        by_kind[point["kind"]].append(point)
    mid_write = sum(bool(p["partial"]) for p in by_kind["checkpoint write"])
    tensors = len(expected_weights)
    for kind, hits in by_kind.items():
        extra = (
            f"; {mid_write} of them left a partial checkpoint (a temporary directory), never loaded"
            if kind == "checkpoint write"
            else ""
        )
        record(
            "Faults",
            f"kill -9 of `jaxvlm train` during {kind}",
            f"{len(hits)} kill points",
            f"each rerun resumed from the newest complete step{extra}",
        )
    differences = sum(len(c["tensors"]) for c in chains)
    record(
        "Faults",
        "kill -9 at random moments, each run resumed by the same command",
        f"{len(points)} kill points in {len(chains)} resumed chains of {runs.STEPS} steps (seed {seed})",
        f"{differences} of {tensors * len(chains)} final parameter tensors differ from the uninterrupted run; "
        f"{sum(len(c['losses']) for c in chains)} of {runs.STEPS * len(chains)} logged losses differ",
    )
    assert len(points) == KILLS
    assert mid_write >= 1, "no kill landed while a checkpoint was being written"
    assert all(not c["tensors"] and not c["losses"] for c in chains), chains
