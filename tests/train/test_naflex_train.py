"""NaFlex models train: the train step on 8 simulated devices equals the single-device step
(uint8 patches, mask and grid split on the batch axis), gradient caching equals the full batch, and
`jaxvlm train` runs a tiny NaFlex SigLIP end to end on jaxvlm_digits."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxvlm import parallel
from jaxvlm.cli import main
from jaxvlm.preprocess import NaFlexImages, normalize_images
from jaxvlm.train.program import build, model_spec
from jaxvlm.train.step import Objective, make_gradients
from tests.paths import REPO
from tests.tolerances import FLOAT32_EPS, assert_close_to_scale
from tests.train.runs import mesh_of, tiny_config

NAME = "tiny-siglip-naflex"
BATCH = 16


def naflex_batch(spec, seed: int) -> dict:
    """A host batch as the input pipeline sends it for a `ModelSpec`: uint8 patches of random grids
    within the patch budget (zero padding after each image's patches), and random token ids."""
    vision, text = spec.config.vision, spec.config.text
    rng = np.random.default_rng(seed)
    length = vision.max_num_patches
    rows = rng.integers(1, length + 1, BATCH)
    cols = rng.integers(1, length // rows + 1)
    mask = np.arange(length)[None] < (rows * cols)[:, None]
    patches = rng.integers(0, 256, (BATCH, length, vision.patch_dim), np.uint8) * mask[..., None].astype(np.uint8)
    ids = rng.integers(1, text.vocab_size, (BATCH, text.context_length)).astype(np.int32)
    return {"image": NaFlexImages(patches, mask, np.stack([rows, cols], 1).astype(np.int32)), "text": ids}


def on_mesh(batch: dict, mesh) -> dict:
    return jax.device_put(batch, parallel.batch_sharding(mesh))


@pytest.fixture(scope="module")
def config():
    # no warmup: the first step already moves the parameters. Adam's eps of 1 makes its first update,
    # lr * g / (|g| + eps), nearly linear in g: rounding in the gradients reaches the parameters at lr
    # times its size instead of lr / eps times (with eps 1e-6, a gradient that is rounding noise of
    # 1e-9, as an attention key bias's is, would move its parameter by about lr / 1000 either way)
    return tiny_config(NAME, {"global_batch_size": BATCH, "optimizer.warmup_steps": 0, "optimizer.eps": 1.0})


def gradients(program, batch, microbatches: int = 1):
    spec = program.spec.config
    objective = Objective(spec.loss, caption=False, pad_id=program.spec.tokenizer.pad_id, implementation="xla")
    fn = make_gradients(
        program.module, objective, mesh=program.mesh, preprocess=program.spec.preprocess, microbatches=microbatches
    )
    with parallel.activate(program.mesh):
        loss, _, _, _, grads, _ = jax.jit(fn)(program.init().params, on_mesh(batch, program.mesh), jax.random.key(0))
    return float(loss), grads


# the loss and every gradient are float32 sums over the 16 x 16 image-text pairs of the sigmoid loss and
# the up to 16 patches or tokens of each tower, which a mesh (or micro-batching) adds in another order:
# sqrt(n) * eps of their size
RTOL = np.sqrt(BATCH * BATCH * 16) * FLOAT32_EPS


@pytest.mark.slow  # two train steps compiled: about a minute of CPU
def test_eight_devices_give_the_single_device_step(config):
    batch = naflex_batch(model_spec(config.model), seed=0)
    results = {}
    for sizes in [(1, 1, 1), (2, 4, 1)]:
        program = build(config, mesh_of(sizes))
        state = program.init()
        initial = jax.device_get(state.params)
        state, metrics = program.run_step(state, on_mesh(batch, program.mesh))
        assert int(metrics["skipped"]) == 0
        results[sizes] = jax.device_get(metrics), jax.device_get(state.params)
    (metrics1, params1), (metrics8, params8) = results[(1, 1, 1)], results[(2, 4, 1)]
    print(f"loss: one device {metrics1['loss']:.7f}, 8 devices (data 2 x fsdp 4) {metrics8['loss']:.7f}")
    assert_close_to_scale(metrics8["loss"], metrics1["loss"], rtol_of_scale=RTOL, what="loss")
    # each gradient may differ by RTOL x the largest gradient (at most the global gradient norm); the first
    # update (clipped to norm 1, then lr * g / (|g| + 1)) by lr times that; adding it to a parameter rounds
    # to eps of that parameter's size
    lr, grad_norm = config.optimizer.lr, float(metrics1["grad_norm"])
    bounds = jax.tree.map(lambda p: lr * RTOL * grad_norm + FLOAT32_EPS * float(np.abs(p).max()), params1)
    errors = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params8, params1)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params1, initial)
    worst = max(zip(jax.tree.leaves(errors), jax.tree.leaves(bounds)))
    print(f"updated parameters: max abs difference {worst[0]:.2e} (bound there {worst[1]:.2e})")
    print(f"the step moved them by up to {max(jax.tree.leaves(moved)):.2e}")
    assert all(e <= b for e, b in zip(jax.tree.leaves(errors), jax.tree.leaves(bounds)))
    assert max(jax.tree.leaves(moved)) > 10 * max(jax.tree.leaves(bounds))


@pytest.mark.slow
def test_gradient_caching_equals_the_full_batch(config):
    """Micro-batches of NaFlex images (every field of the image pytree split alike), uint8 patches
    normalised on the device vs float patches normalised on the host."""
    program = build(config, mesh_of((4, 2, 1)))
    batch = naflex_batch(program.spec, seed=1)
    host = {**batch, "image": normalize_images(batch["image"], program.spec.preprocess)}
    loss, grads = gradients(program, host)
    for k in (1, 4):
        loss_k, grads_k = gradients(program, batch, microbatches=k)
        print(f"{k} micro-batches of uint8 patches: loss {loss_k:.7f} vs {loss:.7f}")
        assert_close_to_scale(loss_k, loss, rtol_of_scale=RTOL, what=f"{k} micro-batches, loss")
        assert_close_to_scale(grads_k, grads, rtol_of_scale=RTOL, what=f"{k} micro-batches, gradients")


@pytest.mark.slow  # compiles init, the step and the evaluation
def test_jaxvlm_train_runs_a_naflex_model(digits_dir, tmp_path, capsys):
    """The Grain pipeline's NaFlex batches (random crops at their own aspect ratio) through the
    whole loop: checkpoints, the exported model directory, and the zero-shot evaluation at the end."""
    args = [
        "train",
        "--config",
        str(REPO / "configs" / "demo.py"),
        "--workdir",
        str(tmp_path / "run"),
        f"--config.model.name={NAME}",
        f"--config.data.data_dir={digits_dir}",
        "--config.total_steps=4",
        "--config.global_batch_size=32",
        "--config.log_every=1",
        "--config.checkpoint.every=2",
        "--config.optimizer.warmup_steps=1",
        "--config.eval_every=0",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "jaxvlm_digits/acc1" in out
    import jaxvlm

    model = jaxvlm.load(tmp_path / "run" / "model")
    assert model.preprocess_config.resize_mode == "naflex"
    from PIL import Image

    images = [Image.new("RGB", (40, 24), "white"), Image.new("RGB", (24, 40), "black")]
    assert model.encode_image(model.preprocess(images)).shape == (2, 64)
