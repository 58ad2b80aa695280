"""Training a model with BatchNorm (a tiny OpenAI ModifiedResNet CLIP): from scratch its running statistics
are updated (synchronised over the data axes: 8 devices == 1), fine-tuning keeps them by default, they are
checkpointed, exported and interpolated by WiSE-FT; checkpoints of models without BatchNorm are unchanged."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxvlm import data, model_dir
from jaxvlm.errors import InputError
from jaxvlm.models import abstract_variables
from jaxvlm.models.registry import modified_resnet_clip
from jaxvlm.tokenizers import CLIP_BPE_FILE
from jaxvlm.train import config as train_config
from jaxvlm.train import program as program_module
from jaxvlm.train import wise_ft
from jaxvlm.train.checkpoint import Checkpoints
from jaxvlm.train.loop import train
from jaxvlm.train.program import build
from tests.train.runs import batches, mesh_of, on_mesh, standin_iterator, tiny_config

NAME = "tiny-resnet"
# open_clip's tiny ModifiedResNet of tests/convert/resnet_models.py: one block per stage, 16 stem channels, 64 px
TINY = modified_resnet_clip(
    embed_dim=32, vision=dict(image_size=64, layers=(1, 1, 1, 1), width=16), text_width=64, act="quick_gelu"
)
TINY = dataclasses.replace(TINY, model=TINY.model.replace(text=dataclasses.replace(TINY.model.text, depth=2)))


@pytest.fixture(scope="module", autouse=True)
def tiny_resnet_architecture():
    """``tiny-resnet`` known to the training program (and to tests/train/runs.py, which asks it)."""
    known = program_module.get_architecture
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(program_module, "get_architecture", lambda name: TINY if name == NAME else known(name))
        yield


def resnet_config(changes: dict | None = None):
    return tiny_config(NAME, {"global_batch_size": 8, "optimizer.warmup_steps": 0, **(changes or {})})


def flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/").items()}


def random_variables(seed: int) -> dict:
    """The tiny model's params and batch_stats drawn by numpy: kernels N(0, 1 / fan_in), other params
    N(0, 0.02), BatchNorm scales 1 + N(0, 0.1), running means N(0, 0.1), variances 1 + U(0, 0.2)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            fan_in = shape[0] if path[-2].key in ("query", "key", "value") else np.prod(shape[:-1])
            return rng.normal(0, fan_in**-0.5, shape).astype(np.float32)
        if name in ("scale", "var"):
            drawn = rng.normal(0, 0.1, shape) if name == "scale" else rng.uniform(0, 0.2, shape)
            return (1 + drawn).astype(np.float32)
        return rng.normal(0, 0.1 if name == "mean" else 0.02, shape).astype(np.float32)

    shapes = flax.linen.unbox(abstract_variables(TINY.model))
    return jax.tree_util.tree_map_with_path(draw, shapes)


def write_resnet(path, seed: int) -> dict:
    variables = random_variables(seed)
    loaded = model_dir.ModelDir(
        TINY.model,
        TINY.preprocess,
        TINY.tokenizer,
        {"seed": seed},
        variables["params"],
        batch_stats=variables["batch_stats"],
    )
    model_dir.save(path, loaded, CLIP_BPE_FILE)
    return variables


def steps(program, count: int, seed: int = 0):
    state, host_batches = program.init(), batches(program_config(program), count, seed)
    for batch in host_batches:
        state, metrics = program.run_step(state, on_mesh(batch, program.mesh))
        assert int(metrics["skipped"]) == 0
    return state


def program_config(program):
    return resnet_config({"model.init_from": program.spec.origin.get("init_from", "")})


@pytest.fixture(scope="module")
def scratch():
    """The tiny model's program from scratch on one device (its step compiled once for the module)."""
    return build(resnet_config(), mesh_of((1, 1, 1)))


# the ResNet's train step takes about a minute to compile on a shared 2-core CPU: those tests are slow
@pytest.mark.slow
def test_training_from_scratch_updates_the_statistics(scratch):
    program = scratch
    initial = program.init()
    stats = flat(initial.batch_stats)
    assert stats and all(k.startswith("img/") for k in stats)
    trained = steps(program, 3)
    after = flat(trained.batch_stats)
    moved = {k: float(np.max(np.abs(after[k] - stats[k]))) for k in stats}
    print(f"{len(moved)} statistics, smallest change {min(moved.values()):.3g}")
    assert all(v > 0 for v in moved.values())
    assert all(np.all(after[k] > 0) for k in after if k.endswith("/var"))


def test_a_bad_batch_norm_mode_is_one_line():
    config = resnet_config({"model.batch_norm": "running"})
    with pytest.raises(InputError, match=r"^model.batch_norm is 'running'; expected one of auto, frozen, train$"):
        train_config.check(config, 1)
    assert train_config.batch_norm_mode(resnet_config().model) == "train"
    assert train_config.batch_norm_mode(resnet_config({"model.init_from": "x"}).model) == "frozen"


@pytest.mark.slow
def test_eight_devices_give_the_single_device_statistics():
    """The batch mean and variance of a batch split over 8 devices are the global ones (GSPMD reduces them)."""
    config = resnet_config({"global_batch_size": 16})
    batch = batches(config, 1, seed=2)[0]
    results = {}
    for sizes in [(1, 1, 1), (8, 1, 1)]:
        program = build(config, mesh_of(sizes))
        state, _ = program.run_step(program.init(), on_mesh(batch, program.mesh))
        results[sizes] = flat(state.batch_stats)
    one, eight = results[(1, 1, 1)], results[(8, 1, 1)]
    worst = max(float(np.max(np.abs(one[k] - eight[k]) / (1 + np.abs(one[k])))) for k in one)
    print(f"8 devices vs 1: max |difference| / (1 + |value|) of the updated statistics {worst:.2e}")
    assert worst < 1e-5  # sums over 16 x 32 x 32 positions, reduced in another order


@pytest.mark.slow
def test_fine_tuning_keeps_the_statistics_exported_and_checkpointed(tmp_path):
    """init_from with the default (frozen): the directory's statistics in the state, bitwise through training,
    in every checkpoint and in the exported model directory; an evaluation hook is given them."""
    source = write_resnet(tmp_path / "source", seed=1)
    config = resnet_config({"model.init_from": str(tmp_path / "source"), "total_steps": 2, "checkpoint.every": 1})
    given = []
    hook = lambda step, params, batch_stats: given.append(flat(batch_stats)) or {"calls": len(given)}
    result = train(config, tmp_path / "run", hooks=[hook], iterator=standin_iterator(config))
    expected = flat(source["batch_stats"])
    for stats in [flat(result.state.batch_stats), *given, model_dir.load(result.model_dir).batch_stats]:
        stats = flat(stats)
        assert stats.keys() == expected.keys() and all(np.array_equal(stats[k], expected[k]) for k in expected)
    params = flat(result.state.params)
    assert not np.array_equal(params["t"], source["params"]["t"])  # the parameters did train
    program = build(config, mesh_of((1, 1, 1)))
    with Checkpoints(tmp_path / "run" / "checkpoints", config.checkpoint) as checkpoints:
        restored = checkpoints.restore(program.state.abstract, standin_iterator(config))
    assert int(restored.step) == 2
    assert all(np.array_equal(v, expected[k]) for k, v in flat(restored.batch_stats).items())


@pytest.mark.slow
def test_trained_statistics_round_trip_through_a_checkpoint(scratch, tmp_path):
    config, program = resnet_config(), scratch
    state = steps(program, 1)
    iterator = standin_iterator(config)
    with Checkpoints(tmp_path, config.checkpoint) as checkpoints:
        checkpoints.save(1, state, iterator)
    with Checkpoints(tmp_path, config.checkpoint) as checkpoints:
        restored = checkpoints.restore(program.state.abstract, standin_iterator(config))
    saved, loaded = flat(state.batch_stats), flat(restored.batch_stats)
    assert saved.keys() == loaded.keys() and all(np.array_equal(saved[k], loaded[k]) for k in saved)
    assert not all(np.all(v == 1) for k, v in saved.items() if k.endswith("/var"))  # trained, not initial


@flax.struct.dataclass
class StateBeforeBatchNorm:
    """The train state as it was before it carried BatchNorm's statistics."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    skipped: jax.Array
    nan_streak: jax.Array


def test_checkpoints_of_models_without_batch_norm_restore_as_before(tmp_path):
    """A checkpoint written as the state was before (no batch_stats field) restores into today's state."""
    config = tiny_config()
    program = build(config, mesh_of((1, 1, 1)))
    rng = np.random.default_rng(0)  # values of the state's shapes, without compiling its init
    fill = lambda s: jax.device_put(rng.normal(size=s.shape).astype(s.dtype), s.sharding)
    state = jax.tree.map(fill, program.state.abstract)
    assert state.batch_stats == {}
    old = StateBeforeBatchNorm(**{f.name: getattr(state, f.name) for f in dataclasses.fields(StateBeforeBatchNorm)})
    iterator = standin_iterator(config)
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(
            3, args=ocp.args.Composite(state=ocp.args.StandardSave(old), data=data.iterator_save_args(iterator))
        )
        manager.wait_until_finished()
    with Checkpoints(tmp_path, config.checkpoint) as checkpoints:
        restored = checkpoints.restore(program.state.abstract, standin_iterator(config))
        assert restored.batch_stats == {}
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))
        checkpoints.save(4, restored, iterator)  # and is written with the same tree again
    with ocp.CheckpointManager(tmp_path) as manager:
        again = manager.restore(
            4,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, old))),
        )
    assert jax.tree.structure(again.state) == jax.tree.structure(old)


def test_wise_ft_interpolates_the_statistics_linearly(tmp_path):
    a, b = write_resnet(tmp_path / "a", seed=1), write_resnet(tmp_path / "b", seed=2)
    wise_ft.interpolate(tmp_path / "a", tmp_path / "b", 0.25, tmp_path / "mixed")
    mixed = flat(model_dir.load(tmp_path / "mixed").batch_stats)
    fa, fb = flat(a["batch_stats"]), flat(b["batch_stats"])
    assert mixed.keys() == fa.keys()
    worst = max(float(np.max(np.abs(mixed[k] - (0.75 * fa[k] + 0.25 * fb[k])))) for k in fa)
    print(f"WiSE-FT statistics: max abs vs 0.75 a + 0.25 b {worst:.2e}")
    assert worst < 1e-6


@pytest.mark.slow
def test_micro_batches_update_the_statistics_once_each(tmp_path):
    """With 2 micro-batches, the running statistics take each micro-batch in turn: as two steps of the halves
    (first pass only; the second pass's repeated updates are dropped)."""
    # a learning rate too small to move the parameters: the halves' second step sees the first's parameters
    config = resnet_config({"microbatches": 2, "optimizer.lr": 1e-20})
    program = build(config, mesh_of((1, 1, 1)))
    batch = batches(config, 1, seed=4)[0]
    state, _ = program.run_step(program.init(), on_mesh(batch, program.mesh))
    halves = build(resnet_config({"global_batch_size": 4, "optimizer.lr": 1e-20}), mesh_of((1, 1, 1)))
    reference = halves.init()
    for rows in (slice(0, None, 2), slice(1, None, 2)):  # micro-batch i holds rows i, i + 2, ...
        reference, _ = halves.run_step(reference, on_mesh({k: v[rows] for k, v in batch.items()}, halves.mesh))
    got, expected = flat(state.batch_stats), flat(reference.batch_stats)
    worst = max(float(np.max(np.abs(got[k] - expected[k]))) for k in got)
    print(f"2 micro-batches vs 2 steps of their halves: max abs of the statistics {worst:.2e}")
    assert worst < 1e-5
