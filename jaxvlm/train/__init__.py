"""Training: mesh-sharded train state, optimizer rules, train step, checkpoints, loop and WiSE-FT
(docs/training.md). Entry points: `jaxvlm.train.loop.train` and `jaxvlm train` on the command line."""


class TrainingError(RuntimeError):
    """A run that cannot go on: its loss stayed non-finite, or none of its checkpoints can be read."""
