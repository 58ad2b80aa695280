"""The NaFlex tower: its position resizing equals torch's antialiased bilinear interpolation, it
reads only real patches (padding changes nothing), and its flash-attention path equals the XLA one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxvlm.models import ModelConfig, Runtime, build_model
from jaxvlm.models.towers import NaFlexViTConfig, TransformerTextConfig
from jaxvlm.models.towers.naflex_vit import resize_weights
from jaxvlm.preprocess import NaFlexImages
from tests.tolerances import assert_close_to_scale

GRID = 4
VISION = NaFlexViTConfig(patch_size=4, width=32, depth=2, heads=4, mlp_dim=64, position_grid=GRID, max_num_patches=24)
TEXT = TransformerTextConfig(vocab_size=50, context_length=8, width=32, depth=1, heads=4, mlp_dim=64, causal=False)
CONFIG = ModelConfig(embed_dim=32, vision=VISION, text=TEXT, loss="sigmoid", logit_bias_init=-10.0)


@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (4, 4), (3, 8), (6, 2), (11, 1), (5, 5), (1, 24)])
def test_position_resizing_is_hf_siglip2s(shape):
    """HF's Siglip2 resizes the positions with F.interpolate's antialiased bilinear weights written out
    (F.interpolate itself gives a constant for some one-column outputs, e.g. 4 x 4 -> 2 x 1, in torch 2.13)."""
    from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

    rows, cols = shape
    table = np.random.default_rng(0).normal(size=(GRID, GRID, 5)).astype(np.float32)
    length = rows * cols + 3
    expected = Siglip2VisionEmbeddings.resize_positional_embeddings(
        torch.from_numpy(table), torch.tensor([shape]), max_length=length
    )[0].numpy()
    resized = np.asarray(resize_weights(jnp.array([shape]), length, GRID) @ table.reshape(-1, 5))[0]
    err = float(np.abs(resized - expected).max())
    print(f"resize to {shape}: max abs {err:.1e}")
    assert err <= 1e-6
    np.testing.assert_array_equal(resized[rows * cols :], np.repeat(resized[:1], 3, axis=0))  # padding: position 0
    if cols > 1:  # and where F.interpolate is right, it is F.interpolate
        interpolated = torch.nn.functional.interpolate(
            torch.from_numpy(table).permute(2, 0, 1)[None], size=shape, mode="bilinear", antialias=True
        )
        assert np.abs(resized[: rows * cols] - interpolated[0].permute(1, 2, 0).reshape(-1, 5).numpy()).max() <= 1e-6


def images(rng, grids, length=VISION.max_num_patches) -> NaFlexImages:
    patches = rng.normal(size=(len(grids), length, VISION.patch_dim)).astype(np.float32)
    counts = np.array([r * c for r, c in grids])
    mask = np.arange(length)[None] < counts[:, None]
    return NaFlexImages(patches, mask, np.array(grids, np.int32))


@pytest.fixture(scope="module")
def params():
    module = build_model(CONFIG)
    return module.init(jax.random.key(0), VISION.example_input(2), jnp.zeros((2, 8), jnp.int32))["params"]


def encode(params, x, runtime=Runtime()):
    return np.asarray(build_model(CONFIG, runtime).apply({"params": params}, x, method="encode_image"))


def test_padding_is_never_read(params):
    x = images(np.random.default_rng(1), [(2, 7), (4, 4), (1, 3)])
    noisy = x._replace(patches=np.where(x.mask[..., None], x.patches, 1e3))
    longer = images(np.random.default_rng(1), [(2, 7), (4, 4), (1, 3)])
    longer = NaFlexImages(
        np.concatenate([x.patches, np.full((3, 8, VISION.patch_dim), 7.0, np.float32)], axis=1),
        np.concatenate([x.mask, np.zeros((3, 8), bool)], axis=1),
        longer.grid,
    )
    base = encode(params, x)
    for other in (noisy, longer):
        err = float(np.abs(encode(params, other) - base).max())
        print(f"padding changed embeddings by {err:.1e}")
        assert err <= 1e-6


@pytest.mark.slow  # the kernel in Pallas's TPU interpreter: about a minute
def test_flash_attention_path_with_masks_equals_xla(params, monkeypatch):
    """On a TPU `ops.attention` runs the Mosaic kernel with the patch mask (the GPU kernel takes no
    key mask and falls back to XLA); here that kernel runs in Pallas's interpreter for every
    attention of the tower, the MAP head's single query included."""
    from jaxvlm import ops
    from jaxvlm.kernels.flash_attention import flash_attention

    x = images(np.random.default_rng(2), [(2, 7), (4, 4), (1, 3), (24, 1)])
    xla = encode(params, x, Runtime(attention="xla"))
    calls = []

    def tpu_kernel(q, k, v, *, causal=False, q_offset=None, key_mask=None, implementation="auto"):
        calls.append(key_mask is not None)
        return flash_attention(q, k, v, causal=causal, key_mask=key_mask, backend="tpu", interpret=True)

    monkeypatch.setattr(ops, "attention", tpu_kernel)
    flash = encode(params, x)
    assert len(calls) >= 2 and all(calls)  # the encoder's blocks and the MAP head, all masked
    assert_close_to_scale(flash, xla, rtol_of_scale=1e-5, what="Mosaic kernel (interpreted) vs XLA")


def test_flops_are_the_fixed_resolution_towers_plus_the_position_resizing():
    """At 256 patches, B/16 NaFlex does SigLIP 2 B/16-256's work plus resizing the 16 x 16 positions
    (one [256, 256] x [256, 768] product per image); `jaxvlm.flops` counts it the same way."""
    from jaxvlm.models.registry import get_architecture
    from jaxvlm.models.towers import flops_per_example

    naflex = get_architecture("ViT-B-16-SigLIP2-NaFlex").model
    fixed = get_architecture("ViT-B-16-SigLIP2-256").model
    extra = flops_per_example(naflex.vision, naflex.embed_dim) - flops_per_example(fixed.vision, fixed.embed_dim)
    print(f"NaFlex B/16 at 256 patches: {flops_per_example(naflex.vision, naflex.embed_dim) / 1e9:.2f} GFLOPs")
    assert extra == 2 * 256 * 256 * 768


@pytest.mark.parametrize("shape", [(2, 7), (4, 4), (11, 1), (1, 24), (9, 3)])
def test_position_resizing_is_big_visions(shape):
    """big_vision's NaFlex ViT resizes its grid with jax.image.scale_and_translate (bilinear, antialiased) to
    (rows, columns) and gathers each patch's cell: the same numbers."""
    table = np.random.default_rng(1).normal(size=(GRID, GRID, 5)).astype(np.float32)
    rows, cols = shape
    scaled = jax.image.scale_and_translate(
        jnp.asarray(table),
        shape=(rows, cols, 5),
        spatial_dims=(0, 1),
        scale=jnp.array(shape, jnp.float32) / GRID,
        translation=jnp.zeros(2),
        method="bilinear",
        antialias=True,
    )
    resized = resize_weights(jnp.array([shape]), rows * cols, GRID)[0] @ table.reshape(-1, 5)
    err = float(np.abs(np.asarray(resized) - np.asarray(scaled).reshape(-1, 5)).max())
    print(f"vs jax.image.scale_and_translate {shape}: max abs {err:.1e}")
    assert err <= 1e-6
