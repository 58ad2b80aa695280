"""`jaxvlm` with orbax's checkpoint writes slowed down and announced, so that a test can kill the
process while a checkpoint is being written (a tiny model's checkpoint is written in milliseconds).

Each save prints ``faults: saving step N`` on stderr when it starts; then every array waits up to
$JAXVLM_FAULTS_SLOW_SAVE seconds before or after it is written (at random, so a kill finds some
arrays on disk and others not), and the finished temporary directory waits as long again before it
is renamed into place. Only timing changes: what is written is what jaxvlm would write.

    python tests/faults/slow_save.py train --config ...     (the arguments of `jaxvlm`)
"""

import asyncio
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import orbax.checkpoint as ocp  # noqa: E402
from orbax.checkpoint._src.path import atomicity  # noqa: E402
from orbax.checkpoint._src.serialization import serialization  # noqa: E402

from jaxvlm.cli import main  # noqa: E402

DELAY = float(os.environ["JAXVLM_FAULTS_SLOW_SAVE"])


def announced(save):
    def wrapper(self, step, *args, **kwargs):
        print(f"faults: saving step {step}", file=sys.stderr, flush=True)
        return save(self, step, *args, **kwargs)

    return wrapper


def slowed_write(write):
    async def wrapper(*args, **kwargs):
        before = random.random() < 0.5
        if before:
            await asyncio.sleep(random.uniform(0, DELAY))
        result = await write(*args, **kwargs)
        if not before:
            await asyncio.sleep(random.uniform(0, DELAY))
        return result

    return wrapper


def slowed_rename(finalize):
    async def wrapper(self, *args, **kwargs):
        await asyncio.sleep(DELAY)
        return await finalize(self, *args, **kwargs)

    return wrapper


ocp.CheckpointManager.save = announced(ocp.CheckpointManager.save)
serialization.async_serialize_from_host = slowed_write(serialization.async_serialize_from_host)
atomicity.AtomicRenameTemporaryPath.finalize = slowed_rename(atomicity.AtomicRenameTemporaryPath.finalize)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
