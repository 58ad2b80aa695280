"""Programs the data tests run in fresh processes: `python -m tests.data.processes MODE ...`.

resume DIGITS_DIR CKPT_DIR STEP WORKERS: restore the iterator saved at STEP, print the digests
    of its next batches (one JSON list).
shard DIGITS_DIR PORT PROCESS_ID: one of two jax.distributed processes; print the digests of
    the examples of its first epoch and the shapes of the global arrays of its first batch.
"""

import json
import os
import sys

from tests.data.digests import batch_digest, example_digests
from tests.data.records import PREPROCESS

RESUMED_BATCHES = 100
GLOBAL_BATCH = 8


def resume_config(digits_dir, workers):
    import jaxvlm.data

    config = jaxvlm.data.default_config()
    config.data_dir, config.split, config.worker_count = digits_dir, "test", workers
    return config


def make_train_iterator(config):
    import jaxvlm.data
    from jaxvlm.tokenizers import CLIP_BPE_FILE, ClipBpeTokenizer

    return jaxvlm.data.train_iterator(
        config,
        preprocess=PREPROCESS,
        tokenizer=ClipBpeTokenizer(CLIP_BPE_FILE, context_length=16),
        global_batch_size=GLOBAL_BATCH,
        seed=7,
    )


def resume(digits_dir, checkpoint_dir, step, workers):
    import orbax.checkpoint as ocp

    import jaxvlm.data

    it = make_train_iterator(resume_config(digits_dir, int(workers)))
    with ocp.CheckpointManager(checkpoint_dir) as manager:
        manager.restore(int(step), args=ocp.args.Composite(data=jaxvlm.data.iterator_restore_args(it)))
    digests = [batch_digest(next(it)) for _ in range(RESUMED_BATCHES)]
    it.close()
    print(json.dumps(digests))


def shard(digits_dir, port, process_id):
    import jax
    import numpy as np

    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(process_id))
    import jaxvlm.data
    from jaxvlm.preprocess import normalize

    config = jaxvlm.data.default_config()
    config.data_dir, config.split, config.augment, config.worker_count = digits_dir, "test", "eval", 0
    it = jaxvlm.data.train_iterator(config, preprocess=PREPROCESS, tokenizer=None, global_batch_size=24, seed=0)
    batches = [next(it) for _ in range(360 // 24)]  # one epoch: each process holds 180 of the 360 records
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), devices=jax.devices())
    arrays = jaxvlm.data.global_batch(batches[0], mesh)
    local = {
        name: np.concatenate([np.asarray(s.data) for s in sorted(a.addressable_shards, key=lambda s: s.index[0].start)])
        for name, a in arrays.items()
    }
    print(
        json.dumps(
            {
                # normalised as the train step does, to compare with the (normalised) eval batches
                "examples": [
                    d for b in batches for d in example_digests({**b, "image": normalize(b["image"], PREPROCESS)})
                ],
                "global_shapes": {name: list(a.shape) for name, a in arrays.items()},
                "local_rows_equal": all(np.array_equal(local[n], batches[0][n]) for n in local),
            }
        )
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    {"resume": resume, "shard": shard}[sys.argv[1]](*sys.argv[2:])
