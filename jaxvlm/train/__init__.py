"""Training: mesh-sharded train state, optimizer rules, train step, checkpoints, loop and WiSE-FT
(docs/training.md). Entry points: `jaxvlm.train.loop.train` and `jaxvlm train` on the command line."""

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the run stopped early, with a checkpoint to resume from


class TrainingError(RuntimeError):
    """A run that cannot go on: its loss stayed non-finite, none of its checkpoints can be read, or
    one could not be written."""
