"""A program the evaluation tests run as two jax.distributed processes (4 CPU devices each):
`python -m tests.eval.processes MODEL_DIR DIGITS_DIR PORT PROCESS_ID`.

It loads the model's parameters as global arrays sharded over all 8 devices of both processes
(no process holds them whole), runs the training hook's zero-shot and retrieval evaluations on them and
prints the metrics (one JSON line).
"""

import json
import os
import sys


def main(model_dir, digits_dir, port, process_id):
    import jax

    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(process_id))
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxvlm import model_dir as model_dirs
    from jaxvlm.eval import training_hook
    from jaxvlm.tokenizers import build_tokenizer

    loaded = model_dirs.load(model_dir)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), devices=jax.devices())

    def sharded(x):
        spec = PartitionSpec("data") if x.ndim and x.shape[0] % jax.device_count() == 0 else PartitionSpec()
        return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: x[index])

    params = jax.tree.map(sharded, loaded.params)
    assert any(not x.is_fully_addressable for x in jax.tree.leaves(params))
    hook = training_hook(
        loaded.config,
        loaded.preprocess,
        build_tokenizer(loaded.tokenizer, model_dir),
        [
            {"task": task, "dataset": "tfds:jaxvlm_digits", "data_dir": digits_dir, "batch_size": 64}
            for task in ("zeroshot", "retrieval")
        ],
    )
    print(json.dumps(hook(0, params)))
    jax.distributed.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    main(*sys.argv[1:])
