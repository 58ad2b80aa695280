"""The train step on 8 simulated CPU devices: meshes agree with one device, gradient caching
equals the full batch, frozen parameters stay bitwise, the NaN guard skips bad steps."""

from __future__ import annotations

import dataclasses

import flax
import jax
import numpy as np
import pytest

from jaxvlm import model_dir, parallel
from jaxvlm.preprocess import normalize
from jaxvlm.train import program as program_module
from jaxvlm.train.checkpoint import export
from jaxvlm.train.program import ModelSpec, build, model_spec
from jaxvlm.train.step import Objective, make_gradients
from tests.tolerances import FLOAT32_EPS, assert_close_to_scale
from tests.train.runs import batches, mesh_of, on_mesh, tiny_config

STEPS = 20


def run(program, host_batches):
    state = program.init()
    losses = []
    for batch in host_batches:
        state, metrics = program.run_step(state, on_mesh(batch, program.mesh))
        losses.append(float(metrics["loss"]))
    return state, np.array(losses)


@pytest.fixture(scope="module")
def programs():
    """Programs of the tiny config by mesh, built once for the module (each compiles once)."""
    config = tiny_config()
    built = {}

    def get(sizes):
        if sizes not in built:
            built[sizes] = build(config, mesh_of(sizes))
        return built[sizes]

    return config, get


@pytest.fixture(scope="module")
def curve(programs):
    config, get = programs
    host_batches = batches(config, STEPS)
    state, losses = run(get((1, 1, 1)), host_batches)
    return host_batches, state, losses


def test_the_step_lowers_from_shapes_alone(programs):
    """What `jaxvlm plan` needs: the step lowered for abstract, sharded inputs (no data, no state)."""
    _, get = programs
    text = get((1, 8, 1)).lower(64).as_text()
    assert "sharding" in text and "tensor<64x32x32x3xui8>" in text


@pytest.mark.parametrize(
    "sizes, most",
    [
        pytest.param((8, 1, 1), 1.0, marks=pytest.mark.latest),  # data parallel: every device holds all parameters
        pytest.param((1, 8, 1), 0.14, marks=pytest.mark.slow),  # FSDP: each device about 1/8
        pytest.param(
            (4, 1, 2), 0.55, marks=pytest.mark.slow
        ),  # data x tensor: the vocabulary, heads and MLP split in two
    ],
)
def test_meshes_give_the_single_device_loss_curve(programs, curve, sizes, most):
    _, get = programs
    host_batches, _, reference = curve
    state, losses = run(get(sizes), host_batches)
    print(f"mesh {sizes}: losses {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < losses[0]
    # each step's gradients are sums over 16 examples x 77 text positions, reduced in the mesh's order:
    # sqrt(n) * eps of rounding each, carried into the parameters and adding up as a random walk over the
    # steps: sqrt(STEPS * 16 * 77) * eps = 1.9e-5 of the losses' size (8e-5 at their 4.25; it was 1e-4 absolute)
    assert_close_to_scale(
        losses,
        reference,
        rtol_of_scale=np.sqrt(STEPS * 16 * 77) * FLOAT32_EPS,
        what=f"mesh {sizes}: loss curve over {STEPS} steps",
    )
    total = sum(x.nbytes for x in jax.tree.leaves(state.params))
    held = parallel.per_device_bytes(state.params)
    assert len(held) == 8
    print(f"mesh {sizes}: parameter bytes per device {max(held.values())} of {total}")
    assert max(held.values()) <= most * total
    if sizes[1] > 1 or sizes[2] > 1:
        embedding = state.params["txt"]["token_embed"]["embedding"]
        assert embedding.addressable_shards[0].data.size == embedding.size // 8 * (sizes[0])


def small_vocabulary(spec: ModelSpec) -> ModelSpec:
    """The same model with a 1000-token vocabulary (CoCa's caption logits stay small on CPU)."""
    cfg = spec.config
    decoder = cfg.decoder and dataclasses.replace(cfg.decoder, vocab_size=1000, sot_id=998, eot_id=999)
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, vocab_size=1000), decoder=decoder)
    return dataclasses.replace(spec, config=cfg)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("tiny-clip", marks=pytest.mark.slow),
        pytest.param("tiny-siglip", marks=pytest.mark.slow),
        pytest.param("tiny-coca", marks=pytest.mark.slow),
    ],
)
def test_gradient_caching_equals_the_full_batch(name, monkeypatch):
    """Also: uint8 pixels normalised on the device give what the same pixels normalised on the
    host give (the input pipeline sends uint8)."""
    config = tiny_config(name, {"global_batch_size": 32})
    mesh = mesh_of((4, 2, 1))
    monkeypatch.setattr(program_module, "model_spec", lambda cfg, **kw: small_vocabulary(model_spec(cfg, **kw)))
    program = build(config, mesh)
    params = program.init().params
    spec = program.spec.config
    objective = Objective(
        spec.loss, caption=spec.decoder is not None, pad_id=program.spec.tokenizer.pad_id, implementation="xla"
    )
    pixels = batches(config, 1, seed=3)[0]
    pixels["image"] = np.random.default_rng(3).integers(0, 256, pixels["image"].shape, np.uint8)
    normalized = {**pixels, "image": normalize(pixels["image"], program.spec.preprocess)}
    rng = jax.random.key(0)
    results = {}
    for k, batch in [(1, normalized), (1, pixels), (4, pixels)]:
        gradients = jax.jit(
            make_gradients(program.module, objective, mesh=mesh, preprocess=program.spec.preprocess, microbatches=k)
        )
        with parallel.activate(mesh):
            loss, terms, _, _, grads, _ = gradients(params, on_mesh(batch, mesh), rng)
        results[k, batch["image"].dtype.name] = (float(loss), {k: float(v) for k, v in terms.items()}, grads)
    loss, terms, grads = results[1, "float32"]
    # every gradient, and the loss, is a float32 sum over the 32 examples x up to 77 token positions,
    # n = 2464 terms, which micro-batching (and XLA's fusion) adds in another order: typically
    # sqrt(n) * eps = 5.9e-6 of the size of the values (the worst case, n * eps = 2.9e-4, is not reached)
    rtol = np.sqrt(32 * 77) * FLOAT32_EPS
    for key in [(1, "uint8"), (4, "uint8")]:
        loss_k, terms_k, grads_k = results[key]
        what = f"{name}, {key[0]} micro-batches of {key[1]} pixels vs 1 of host-normalised"
        print(f"{what}: loss {loss:.6f} vs {loss_k:.6f} ({terms})")
        assert_close_to_scale(
            {"loss": loss_k, **terms_k}, {"loss": loss, **terms}, rtol_of_scale=rtol, what=f"{what}, loss"
        )
        assert_close_to_scale(grads_k, grads, rtol_of_scale=rtol, what=f"{what}, gradients")


@pytest.mark.slow
def test_lit_keeps_the_frozen_tower_bitwise(programs, curve, tmp_path):
    """LiT: the image tower comes from a model directory (here: the trained curve's) and is
    frozen; the text tower is new."""
    _, get = programs
    _, trained_state, _ = curve
    export(tmp_path / "donor", get((1, 1, 1)).spec, trained_state.params, {"source": "test"})
    config = tiny_config(
        changes={
            "model.init_from": str(tmp_path / "donor"),
            "model.init_params": "img/.*",
            "optimizer.freeze": "img/.*",
            "loss.logit_scale_max": 2.0,
        }
    )
    state, _ = run(build(config, mesh_of((2, 4, 1))), batches(config, 3))
    pretrained = flax.traverse_util.flatten_dict(model_dir.load(tmp_path / "donor").params, sep="/")
    trained = flax.traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
    image = [n for n in trained if n.startswith("img/")]
    assert image and all(np.array_equal(trained[n], pretrained[n]) for n in image)
    assert all(trained[n].tobytes() == pretrained[n].tobytes() for n in image)
    text = [n for n in trained if n.startswith("txt/")]
    assert all(not np.array_equal(trained[n], pretrained[n]) for n in text if n.endswith("kernel"))
    assert 1.99 < float(state.params["t"]) <= 2.0  # from ln(1 / 0.07) = 2.66, clamped to 2 by the first step
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]  # optimizer state: text tower only
    assert sum(x.size for x in moments) == 2 * sum(v.size for n, v in trained.items() if v.ndim and n[:4] != "img/")


def test_nan_guard_skips_the_update(programs, curve):
    config, get = programs
    program = get((8, 1, 1))
    mesh = program.mesh
    state = program.init()
    bad, good = batches(config, 2)
    state, _ = program.run_step(state, on_mesh(good, mesh))  # past the warmup's zero learning rate
    bad["image"][3, 0, 0, 0] = np.nan
    before = jax.device_get(state.params)
    state, metrics = program.run_step(state, on_mesh(bad, mesh))
    assert int(metrics["skipped"]) == 1 and int(state.nan_streak) == 1 and int(state.skipped) == 1
    assert int(state.step) == 2
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)))
    state, metrics = program.run_step(state, on_mesh(good, mesh))
    assert int(metrics["skipped"]) == 0 and int(state.nan_streak) == 0 and int(state.step) == 3
    assert not np.array_equal(before["txt"]["proj"]["kernel"], state.params["txt"]["proj"]["kernel"])


@pytest.mark.slow
def test_the_step_compiles_ahead_of_time_for_a_tpu_slice():
    """A SigLIP step (bf16, 2 micro-batches, data 2 x fsdp 2) compiled on this CPU for a v5e 2x2
    slice, with the fused Mosaic loss kernels in it: what `jaxvlm plan` builds on."""
    from tests.kernels.tpu import MOSAIC_CALL, tpu_devices

    config = tiny_config("tiny-siglip", {"model.dtype": "bfloat16", "microbatches": 2, "mesh.fsdp": 2})
    program = build(config, parallel.create_mesh(config.mesh, devices=tpu_devices("v5e")))
    compiled = program.lower(64).compile()
    assert compiled.as_text().count(f'custom_call_target="{MOSAIC_CALL}"') > 0
    memory = compiled.memory_analysis()
    print(
        f"tiny-siglip on v5e:2x2: arguments {memory.argument_size_in_bytes / 2**20:.1f} MiB, "
        f"temporaries {memory.temp_size_in_bytes / 2**20:.1f} MiB per chip"
    )
    assert memory.argument_size_in_bytes > 0
