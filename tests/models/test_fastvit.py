"""The FastViT image tower (kind "fastvit"): `reparameterize` folds the branches and BatchNorms with the outputs
unchanged (random weights, BatchNorm statistics far from 0 and 1; no torch), FLOPs counted on the traced program
against the arithmetic in both forms, logical axis names on every parameter, BatchNorm statistics updated only when
made mutable, the registered MCi configs, bad configs; slow: one train step of a tiny FastViT CLIP on a data x FSDP
x tensor mesh, and its train step compiled for a v5p slice. Parity with timm and open_clip:
tests/convert/test_fastvit.py."""

import json
from unittest import mock

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.errors import InputError
from jaxvlm.models import registry, towers
from jaxvlm.models.registry import get_architecture
from jaxvlm.models.towers.fastvit import FastViT, FastViTConfig, make_divisible, reparameterize
from jaxvlm.parallel import LOGICAL_RULES
from tests.convert.fastvit_models import TINY_FASTVITS

TINY = list(TINY_FASTVITS.values())
IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)


def random_variables(v: FastViTConfig, embed_dim: int = 24, seed: int = 0) -> tuple[dict, dict]:
    """Random parameters of the tower's shapes (normal around 0, BatchNorm and LayerNorm scales around 1) and
    statistics far from 0 and 1: drawn by numpy, as compiling flax's initialisers takes this CPU many seconds."""
    shapes = jax.eval_shape(lambda: FastViT(v, embed_dim).init(jax.random.key(seed), IMAGES))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = path[-1].key
        noise = rng.normal(size=x.shape).astype(np.float32)
        if name == "var":
            return jnp.asarray(np.exp(0.5 * noise))
        return jnp.asarray((1.0 if name == "scale" else 0.0) + (0.5 if name == "mean" else 0.1) * noise)

    params = jax.tree_util.tree_map_with_path(draw, flax.linen.unbox(shapes["params"]))
    return params, jax.tree_util.tree_map_with_path(draw, shapes["batch_stats"])


@pytest.mark.parametrize("v", TINY, ids=["batch_norm", "layer_norm"])
def test_reparameterize_keeps_the_outputs(v):
    params, stats = random_variables(v)
    pooled, tokens = jax.jit(FastViT(v, 24).apply)({"params": params, "batch_stats": stats}, IMAGES)
    folded_cfg, folded, folded_stats = reparameterize(v, params, stats)
    assert folded_cfg == v.replace(reparameterized=True)
    shapes = jax.eval_shape(lambda: FastViT(folded_cfg, 24).init(jax.random.key(0), IMAGES))
    assert jax.tree.structure(flax.linen.unbox(shapes["params"])) == jax.tree.structure(folded)
    assert jax.tree.structure(shapes["batch_stats"]) == jax.tree.structure(folded_stats)
    pooled2, tokens2 = jax.jit(FastViT(folded_cfg, 24).apply)({"params": folded, "batch_stats": folded_stats}, IMAGES)
    errors = float(jnp.abs(pooled - pooled2).max()), float(jnp.abs(tokens - tokens2).max())
    scale = float(jnp.abs(tokens).max())
    print(f"\nfolded vs multi-branch max abs: pooled {errors[0]:.2e}, tokens {errors[1]:.2e} (largest {scale:.1f})")
    assert errors[0] <= 1e-5 and errors[1] <= 1e-5 * max(1.0, scale)
    assert reparameterize(folded_cfg, folded, folded_stats)[1] is folded


def conv(side: int, k: int, cin_per_group: int, cout: int) -> float:
    return 2 * side**2 * k**2 * cin_per_group * cout


def fastvit_flops(v: FastViTConfig, embed_dim: int) -> float:
    """Multiply-adds x 2 of one image: every convolution branch (one per MobileOne / large-kernel / RepMixer block
    when folded), the squeeze-excites' two dense layers, attention's projections and its two products, the MLPs
    and the head."""
    branches = not v.reparameterized
    side, d0 = v.image_size // 2, v.dims[0]
    total = conv(side, 3, 3, d0) + branches * v.stem_scale_branch * conv(side, 1, 3, d0)
    side //= 2
    total += conv(side, 3, 1, d0) + branches * v.stem_scale_branch * conv(side, 1, 1, d0) + conv(side, 1, d0, d0)
    prev = d0
    for i, (depth, dim) in enumerate(zip(v.layers, v.dims)):
        if v.downsample(i):
            side //= 2
            total += conv(side, v.down_kernel, 1, dim) + branches * conv(side, 3, 1, dim) + conv(side, 1, dim, dim)
            total += v.se_downsamples[i] * 4 * dim * make_divisible(dim * 0.25, 8)
        prev = dim
        total += v.pos_embs[i] * conv(side, v.pos_kernel, 1, dim)
        n, hidden = side**2, int(dim * v.mlp_ratios[i])
        block = conv(side, 7, 1, dim) + 4 * n * dim * hidden
        if v.token_mixers[i] == "repmixer":
            block += conv(side, v.repmixer_kernel, 1, dim) + branches * conv(side, 1, 1, dim)
        else:
            block += 8 * n * dim * dim + 4 * n * n * dim
        total += depth * block
    f = v.features
    total += conv(side, 3, 1, f) + branches * conv(side, 1, 1, f) + 4 * f * make_divisible(f / 16, 1)
    assert prev == v.dims[-1]
    return total + 2 * f * embed_dim


@pytest.mark.parametrize("name", ["tiny", "tiny layer_norm", "MobileCLIP-S1", "MobileCLIP2-S4"])
@pytest.mark.parametrize("folded", [False, True], ids=["multi-branch", "folded"])
def test_flops_per_example(name, folded):
    if name.startswith("tiny"):
        v, embed_dim = TINY[name.endswith("layer_norm")], 24
    else:
        v, embed_dim = get_architecture(name).model.vision, get_architecture(name).model.embed_dim
    v = v.replace(reparameterized=folded)
    counted = towers.flops_per_example(v, embed_dim)
    print(f"\n{name} image tower ({'folded' if folded else 'multi-branch'}): {counted / 1e9:.4g} GFLOPs per image")
    assert counted == fastvit_flops(v, embed_dim)


@pytest.mark.parametrize("folded", [False, True], ids=["multi-branch", "folded"])
def test_every_parameter_has_logical_axes(folded):
    v = TINY[0].replace(reparameterized=folded)
    known = {name for name, _ in LOGICAL_RULES} | {None}
    boxed = jax.eval_shape(lambda: FastViT(v, 24).init(jax.random.key(0), IMAGES))["params"]
    flat = flax.traverse_util.flatten_dict(boxed, sep="/")
    assert all(isinstance(x, flax.linen.Partitioned) and len(x.names) == x.value.ndim for x in flat.values())
    assert set().union(*(x.names for x in flat.values())) <= known
    assert flat["stage_1/mlp/fc1/kernel"].names == ("layers", "embed", "mlp")
    assert flat["stage_1/query/kernel"].names == ("layers", "embed", "heads", "kv")
    assert flat["head/kernel"].names == ("embed", "proj")
    # grouped (depthwise) kernels stay whole: split, they make SPMD reshard the activations around each of them
    assert flat["stage_1/mlp/conv/conv/kernel"].names == ("layers", None, None, None, None)
    stem = "stem_0/reparam_conv/kernel" if folded else "stem_0/conv_kxk_0/conv/kernel"
    assert flat[stem].names == (None, None, None, "embed")


def test_batch_statistics_update_only_when_mutable():
    v = TINY[0]
    params, stats = random_variables(v)
    module = FastViT(v, 24)
    variables = {"params": params, "batch_stats": stats}
    frozen = jax.jit(module.apply)(variables, IMAGES)[0]
    trained, updated = jax.jit(lambda x: module.apply(variables, x, mutable=["batch_stats"]))(IMAGES)
    assert not np.allclose(frozen, trained[0])
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, updated["batch_stats"])
    assert all(jax.tree.leaves(moved))
    assert updated["batch_stats"]["stage_1"]["mlp"]["conv"]["bn"]["mean"].shape == (2, 32)


def test_tokens_and_config_round_trip():
    v = get_architecture("MobileCLIP-S1").model.vision
    assert v.reduction == 32 and v.token_width(512) == 1024
    assert get_architecture("MobileCLIP2-S4").model.vision.reduction == 64
    assert towers.ImageTowerConfig.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    pooled, tokens = jax.eval_shape(lambda: FastViT(TINY[0], 24).init_with_output(jax.random.key(0), IMAGES)[0])
    assert pooled.shape == (2, 24) and tokens.shape == (2, 64, 64)


def test_bad_configs_are_one_clear_error():
    v = TINY[0]
    with pytest.raises(InputError, match=r"vision.dims must be a list of one entry per stage \(2\)"):
        v.replace(dims=(16, 32, 64))
    with pytest.raises(InputError, match=r"vision.token_mixers\[1\] is 'conv'"):
        v.replace(token_mixers=("repmixer", "conv"))
    with pytest.raises(InputError, match=r"vision.dims\[1\] 48 is not a multiple of head_dim 32"):
        v.replace(dims=(16, 48))
    with pytest.raises(InputError, match="vision.attention_norm is 'group_norm'"):
        v.replace(attention_norm="group_norm")
    with pytest.raises(InputError, match="image_size 4 is smaller than the tower's stride 8"):
        v.replace(image_size=4)
    with pytest.raises(InputError, match="vision.repmixer_kernel 4 must be odd"):
        v.replace(repmixer_kernel=4)
    with pytest.raises(InputError, match="vision.cls_ratio 1.5 must make a positive multiple of 32"):
        v.replace(cls_ratio=1.5)
    with pytest.raises(InputError, match="unknown keys: width"):
        towers.ImageTowerConfig.from_dict({**v.to_dict(), "width": 3})


@pytest.mark.slow  # the train step compiled for 8 devices: minutes of this shared CPU
def test_a_tiny_fastvit_clip_trains_one_step():
    """One step of `jaxvlm.train` (from scratch: BatchNorm in training mode) on a data x FSDP x tensor mesh: the loss
    is finite, every parameter and every BatchNorm statistic moves."""
    from jaxvlm.train.program import build
    from tests.train.runs import batches, mesh_of, on_mesh, tiny_config

    tiny = registry.mobileclip(embed_dim=32, vision=TINY[0], text_width=64, causal=False)
    with mock.patch.dict(registry.ARCHITECTURES, {"tiny-fastvit": tiny}):
        config = tiny_config("tiny-fastvit", {"optimizer.warmup_steps": 0})
        program = build(config, mesh_of((2, 2, 2)))
        state = program.init()
        before, stats = jax.device_get((state.params, state.batch_stats))
        state, metrics = program.run_step(state, on_mesh(batches(config, 1)[0], program.mesh))
    print(f"\ntiny FastViT CLIP, one step on data 2 x fsdp 2 x tensor 2: loss {float(metrics['loss']):.4f}")
    assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped"]) == 0
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, jax.device_get(state.params))
    assert all(jax.tree.leaves(moved)), flax.traverse_util.flatten_dict(moved, sep="/")
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), stats, jax.device_get(state.batch_stats))
    assert all(jax.tree.leaves(moved)), flax.traverse_util.flatten_dict(moved, sep="/")
