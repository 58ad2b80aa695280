"""The train step on 8 simulated CPU devices: meshes agree with one device, gradient caching
equals the full batch, frozen parameters stay bitwise, the NaN guard skips bad steps."""

from __future__ import annotations

import flax
import jax
import numpy as np
import pytest

from jaxvlm import model_dir, parallel
from jaxvlm.train.checkpoint import export
from jaxvlm.train.program import build
from jaxvlm.train.step import Objective, make_gradients

from tests.train.conftest import batches, mesh_of, on_mesh, tiny_config

STEPS = 20


def run(config, mesh, host_batches):
    program = build(config, mesh)
    state = program.init()
    losses = []
    for batch in host_batches:
        state, metrics = program.run_step(state, on_mesh(batch, mesh))
        losses.append(float(metrics["loss"]))
    return program, state, np.array(losses)


@pytest.fixture(scope="module")
def curve():
    config = tiny_config()
    host_batches = batches(config, STEPS)
    return config, host_batches, run(config, mesh_of((1, 1, 1)), host_batches)[2]


@pytest.mark.parametrize("sizes, most", [
    ((8, 1, 1), 1.0),  # data parallel: every device holds all parameters
    ((1, 8, 1), 0.14),  # FSDP: each device about 1/8
    ((4, 1, 2), 0.55),  # data x tensor: the vocabulary, heads and MLP split in two
])
def test_meshes_give_the_single_device_loss_curve(curve, sizes, most):
    config, host_batches, reference = curve
    _, state, losses = run(config, mesh_of(sizes), host_batches)
    error = np.abs(losses - reference).max()
    print(f"mesh {sizes}: max abs loss difference over {STEPS} steps {error:.2e} (losses {losses[0]:.4f} -> "
          f"{losses[-1]:.4f})")
    assert losses[-1] < losses[0]
    assert error < 1e-4
    total = sum(x.nbytes for x in jax.tree.leaves(state.params))
    held = parallel.per_device_bytes(state.params)
    assert len(held) == 8
    print(f"mesh {sizes}: parameter bytes per device {max(held.values())} of {total}")
    assert max(held.values()) <= most * total
    if sizes[1] > 1 or sizes[2] > 1:
        embedding = state.params["txt"]["token_embed"]["embedding"]
        assert embedding.addressable_shards[0].data.size == embedding.size // 8 * (sizes[0])


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-siglip", "tiny-coca"])
def test_gradient_caching_equals_the_full_batch(name):
    config = tiny_config(name, {"global_batch_size": 32})
    mesh = mesh_of((4, 2, 1))
    program = build(config, mesh)
    params = program.init().params
    spec = program.spec.config
    objective = Objective(spec.loss, caption=spec.decoder is not None, pad_id=program.spec.tokenizer.pad_id,
                          implementation="xla")
    batch = on_mesh(batches(config, 1, seed=3)[0], mesh)
    rng = jax.random.key(0)
    results = []
    for k in (1, 4):
        gradients = jax.jit(make_gradients(program.module, objective, mesh=mesh, microbatches=k))
        with parallel.activate(mesh):
            loss, terms, *_, grads = gradients(params, batch, rng)
        results.append((float(loss), {k: float(v) for k, v in terms.items()}, grads))
    (loss, terms, grads), (loss_k, terms_k, grads_k) = results
    error = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_k)))
    scale = max(float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(grads))
    print(f"{name}: loss {loss:.6f} vs {loss_k:.6f} ({terms}); max abs gradient difference {error:.2e} "
          f"(largest gradient {scale:.2e})")
    assert abs(loss - loss_k) < 1e-5
    assert all(abs(terms[t] - terms_k[t]) < 1e-5 for t in terms)
    assert error < 1e-5


def test_lit_keeps_the_frozen_tower_bitwise(tmp_path):
    """LiT: the image tower comes from a model directory and is frozen; the text tower is new."""
    mesh = mesh_of((2, 4, 1))
    donor = build(tiny_config(), mesh)
    export(tmp_path / "donor", donor.spec, donor.init().params, {"source": "test"})
    config = tiny_config(changes={"model.init_from": str(tmp_path / "donor"), "model.init_params": "img/.*",
                                  "optimizer.freeze": "img/.*"})
    program, state, _ = run(config, mesh, batches(config, 3))
    pretrained = flax.traverse_util.flatten_dict(model_dir.load(tmp_path / "donor").params, sep="/")
    trained = flax.traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
    image = [n for n in trained if n.startswith("img/")]
    assert image and all(np.array_equal(trained[n], pretrained[n]) for n in image)
    assert all(trained[n].tobytes() == pretrained[n].tobytes() for n in image)
    text = [n for n in trained if n.startswith("txt/")]
    assert all(not np.array_equal(trained[n], pretrained[n]) for n in text if n.endswith("kernel"))
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]  # optimizer state: text tower only
    assert sum(x.size for x in moments) == 2 * sum(v.size for n, v in trained.items() if v.ndim and n[:4] != "img/")


def test_nan_guard_skips_the_update():
    config = tiny_config(changes={"optimizer.warmup_steps": 0})
    mesh = mesh_of((8, 1, 1))
    program = build(config, mesh)
    state = program.init()
    good, bad = batches(config, 2)
    bad["image"][3, 0, 0, 0] = np.nan
    before = jax.device_get(state.params)
    state, metrics = program.run_step(state, on_mesh(bad, mesh))
    assert int(metrics["skipped"]) == 1 and int(state.nan_streak) == 1 and int(state.skipped) == 1
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)))
    state, metrics = program.run_step(state, on_mesh(good, mesh))
    assert int(metrics["skipped"]) == 0 and int(state.nan_streak) == 0 and int(state.step) == 2
    assert not np.array_equal(before["txt"]["proj"]["kernel"], state.params["txt"]["proj"]["kernel"])
