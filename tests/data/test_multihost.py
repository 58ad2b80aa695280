import collections
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxvlm.data

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "axes, spec", [(("data", "fsdp"), (("data", "fsdp"),)), (("data", "model"), ("data",)), (("model", "seq"), (None,))]
)
def test_global_batch_shards_dim0_over_the_data_axes(axes, spec):
    mesh = jax.make_mesh((4, 2), axes)
    batch = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3), "label": np.arange(16, dtype=np.int32)}
    arrays = jaxvlm.data.global_batch(batch, mesh)
    for name, value in arrays.items():
        assert value.sharding.spec == jax.sharding.PartitionSpec(*spec)
        np.testing.assert_array_equal(np.asarray(value), batch[name])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_read_disjoint_shards_covering_the_data(digits_dir):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.data.processes", "shard", str(digits_dir), str(port), str(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    first, second = (collections.Counter(r["examples"]) for r in results)
    assert first.total() == second.total() == 180
    direct = jaxvlm.data.eval_batches(
        "tfds:jaxvlm_digits",
        "test",
        preprocess=jaxvlm.preprocess.PreprocessConfig(32),
        batch_size=360,
        data_dir=digits_dir,
    )
    from tests.data.digests import example_digests

    # (a few digits images are identical, so records are counted: together, each one exactly once)
    assert first + second == collections.Counter(example_digests(next(direct)))
    for r in results:
        assert r["global_shapes"] == {"image": [24, 32, 32, 3], "label": [24]} and r["local_rows_equal"]
