"""`jaxvlm plan`: slice names, the chip table, the largest-batch search, and plans compiled ahead
of time for real TPU topologies on this CPU (libtpu): per-chip memory that agrees with a one-chip
compile of the same program, the search against the compiler's own verdicts, the command line."""

from __future__ import annotations

import json
import re

import pytest
from jax.sharding import PartitionSpec

from jaxvlm import parallel, plan
from jaxvlm.cli import main
from jaxvlm.errors import InputError
from jaxvlm.train import config as train_config
from jaxvlm.train.program import build

pytest.importorskip("libtpu", reason="plans compile for TPU topologies: needs the jax[tpu] extra")


@pytest.mark.parametrize(
    "name, chips, topology, gcloud",
    [
        ("v5p-128", 64, "v5p:4x4x4", "v5p-128"),
        ("v5p-8", 4, "v5p:2x2x1", "v5p-8"),
        ("v5p-32", 16, "v5p:2x2x4", "v5p-32"),
        ("v5p-256", 128, "v5p:4x4x8", "v5p-256"),
        ("v4-8", 4, "v4:2x2x1", "v4-8"),
        ("v4-128", 64, "v4:4x4x4", "v4-128"),
        ("v5e-256", 256, "v5e:16x16", "v5litepod-256"),
        ("v5litepod-8", 8, "v5e:2x4", "v5litepod-8"),
        ("v5e-1", 1, "v5e:1x1", "v5litepod-1"),
        ("v6e-256", 256, "v6e:16x16", "v6e-256"),
        ("v6e-32", 32, "v6e:4x8", "v6e-32"),
        ("v5p:4x4x8", 128, "v5p:4x4x8", "v5p-256"),
    ],
)
def test_slice_names(name, chips, topology, gcloud):
    tpu = plan.parse_slice(name)
    assert (tpu.chips, tpu.topology, tpu.accelerator_type) == (chips, topology, gcloud)


@pytest.mark.parametrize(
    "name, message",
    [
        ("v5p-100", "v5p-N counts TensorCores (2 per chip)"),
        ("v5p-4", "at least 4"),
        ("v5e-12", "v5e-N counts chips"),
        ("v7-8", "expected a name like v5p-128"),
        ("v5p:4x4", "a v5p topology has 3 positive sizes"),
    ],
)
def test_bad_slice_names(name, message):
    with pytest.raises(InputError, match=re.escape(message)):
        plan.parse_slice(name)


def test_the_chip_table():
    """HBM and peak bf16 FLOP/s per chip as Google's pages state them (sources in jaxvlm/plan.py)."""
    table = {g: (c.hbm_bytes / plan.GIB, c.peak_bf16_flops / 1e12) for g, c in plan.CHIPS.items()}
    assert table == {"v4": (32, 275), "v5e": (16, 197), "v5p": (95, 459), "v6e": (32, 918)}


def test_topologies_have_one_device_per_chip():
    for name in ("v4-8", "v5p-8", "v5e-4", "v6e-1"):
        tpu = plan.parse_slice(name)
        assert len(plan.topology_devices(tpu)) == tpu.chips
    assert len(plan.topology_devices(plan.parse_slice("v5e-4"), num_slices=2)) == 8


@pytest.mark.parametrize("limit", [0, 1, 7, 100, 1024])
@pytest.mark.parametrize("start", [1, 9, 5000])
def test_the_search_brackets_then_bisects(limit, start):
    calls = []

    def fits(n):
        calls.append(n)
        return n <= limit

    assert plan.largest_fitting(fits, start, 0) == (limit, limit + 1)
    assert len(calls) <= 2 * 14 + 2  # log2 of the range, twice: bracketing, then bisection
    calls.clear()
    lo, hi = plan.largest_fitting(fits, start, 0.25)
    assert lo <= limit < hi and (hi <= 1.25 * lo or hi - lo == 1 or lo == 0)


def tiny_config(batch: int):
    c = train_config.base_config()
    c.model.name = "tiny-clip"
    c.model.dtype = "bfloat16"
    c.global_batch_size = batch
    return c


@pytest.mark.slow
def test_per_chip_memory_agrees_with_a_one_chip_compile():
    """Data parallel over 4 chips, each chip holds the whole state and a quarter of the batch:
    the plan's per-chip memory is that of the same program compiled for one chip with that
    quarter (XLA's memory_analysis). State and batch agree exactly; the 4-chip program's
    temporaries exceed the one-chip program's by at most one copy of the gradients (as large as
    the f32 parameters): the buffer its all-reduce of the gradients works in."""
    four = plan.plan(tiny_config(64), plan.parse_slice("v5e-4"))
    config = tiny_config(16)
    mesh = parallel.create_mesh(config.mesh, config.mesh.dcn, devices=plan.topology_devices(plan.parse_slice("v5e-1")))
    program = build(config, mesh, pretrained=False)
    with parallel.activate(mesh):
        stats = program.lower(16).compile().memory_analysis()
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
        + stats.generated_code_size_in_bytes
    )
    m = four.memory
    print(
        f"per chip: plan on v5e-4 {m.total / 2**20:.2f} MiB (temporaries {m.temporaries / 2**20:.2f}), one-chip "
        f"memory_analysis {total / 2**20:.2f} MiB (temporaries {stats.temp_size_in_bytes / 2**20:.2f}): "
        f"{abs(m.total - total) / total:.2%} apart; parameters {m.params / 2**20:.2f} MiB"
    )
    state = program.state.abstract
    assert (m.params, m.optimizer) == (plan._shard_bytes(state.params), plan._shard_bytes(state.opt_state))
    assert m.batch == plan._shard_bytes(program.abstract_batch(16))
    assert 0 <= m.temporaries - stats.temp_size_in_bytes <= m.params
    assert 0 <= m.total - total <= m.params


def test_the_search_steps_in_whole_micro_batches_per_shard(monkeypatch):
    """plan's search over a real 4-chip program (traced), the compiler's verdicts replaced by a limit of
    5003 examples (a compile that fits costs minutes on this machine: the benchmark
    benchmarks/max_batch.py runs real ones): every batch it compiles is a multiple of 4 shards x 2
    micro-batches, and it reports the bracket around the limit to that granularity."""
    compiled = []

    def compile_up_to_the_limit(self, batch, traced=None):
        compiled.append(batch)
        return (plan.Memory(0, 0, 0, 0, 0, 0), "") if batch <= 5003 else (None, "RESOURCE_EXHAUSTED: limit")

    monkeypatch.setattr(plan._Step, "compile", compile_up_to_the_limit)
    config = tiny_config(64)
    config.microbatches = 2
    p = plan.plan(config, plan.parse_slice("v5e-4"), search=True, tolerance=0)
    assert p.fits and compiled[0] == 64 and all(batch % 8 == 0 for batch in compiled)
    assert p.largest_batch == (5000, 5008)


@pytest.mark.slow
def test_cli_plans_two_slices_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert (
        main(
            [
                "plan",
                "--config",
                "configs/demo.py",
                "--topology",
                "v5e-4",
                "--num-slices",
                "2",
                "--quiet",
                "--config.mesh.dcn.data=2",
                "--config.global_batch_size=64",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    print(table)
    assert "tiny-clip on v5e-4 x 2 slices (v5e:2x2, 8 chips)" in table and "fits" in table
    record = json.loads(out.read_text())
    assert record["chips"] == 8 and record["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1} and record["fits"]
    memory = record["memory_bytes_per_chip"]
    parts = ("params", "optimizer", "batch", "temporaries", "code", "other")
    assert sum(memory[k] for k in parts) == memory["total"] and memory["params"] > 0
    assert 0 < record["model_flops_per_chip"] <= record["executed_flops_per_chip"]
    assert record["step_seconds_at_peak"] == record["executed_flops_per_chip"] / 197e12


@pytest.mark.parametrize(
    "args, message",
    [
        (["--topology", "v5e-3"], "v5e-N counts chips"),
        (["--topology", "v5e-4", "--config.mesh.fsdp=3"], "does not divide 4 devices"),
        (["--topology", "v5e-4", "--config.global_batch_size=6"], "global_batch_size 6 is not divisible by the 4"),
        (["--topology", "v5e-4", "--json", "plan.txt"], "--json must name a .json file"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, capsys):
    assert main(["plan", "--config", "configs/demo.py", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_naflex_model_plans_with_its_patches_mask_and_grid_in_the_batch(monkeypatch):
    """A NaFlex model's batch (uint8 patches, bool mask, int32 grid, each split on the batch axis)
    traced for a TPU slice: its bytes per chip and the FLOPs of the step (the compile stubbed, as above)."""
    steps = []

    def compile_stub(self, batch, traced=None):
        steps.append(self)
        return plan.Memory(0, 0, 0, 0, 0, 0), ""

    monkeypatch.setattr(plan._Step, "compile", compile_stub)
    config = tiny_config(64)
    config.model.name = "tiny-siglip-naflex"
    p = plan.plan(config, plan.parse_slice("v5e-4"))
    image = steps[0].program.abstract_batch(64)["image"]
    assert [(x.shape, x.dtype.name, x.sharding.spec) for x in image] == [
        ((64, 16, 192), "uint8", PartitionSpec(parallel.BATCH_AXES)),
        ((64, 16), "bool", PartitionSpec(parallel.BATCH_AXES)),
        ((64, 2), "int32", PartitionSpec(parallel.BATCH_AXES)),
    ]
    assert plan._shard_bytes(image) == 16 * (16 * 192 + 16 + 2 * 4)
    assert 0 < p.model_flops <= p.executed_flops


@pytest.mark.slow
def test_the_siglip2_naflex_recipe_plans_on_v5p_128(tmp_path, capsys):
    """configs/siglip2_so400m16_naflex.py compiled for a v5p-128 (minutes of CPU): the README's figures."""
    out = tmp_path / "plan.json"
    args = ["plan", "--config", "configs/siglip2_so400m16_naflex.py", "--topology", "v5p-128", "--quiet"]
    assert main([*args, "--json", str(out)]) == 0
    print(capsys.readouterr().out)
    record = json.loads(out.read_text())
    assert record["fits"] and record["mesh"] == {"data": 8, "fsdp": 8, "tensor": 1}
    assert record["global_batch_size"] == 32768
