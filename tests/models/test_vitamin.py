"""The ViTamin image tower (kind "vitamin"): its FLOPs counted on the traced program against the arithmetic (tiny and
full size), logical axis names on every parameter and the shardings they give, tokens, rematerialised blocks, bad
configs, and one train step of a tiny ViTamin CLIP on a data x FSDP x tensor mesh. Parity with open_clip is
tests/convert/test_vitamin.py's."""

import json
from unittest import mock

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxvlm.errors import InputError
from jaxvlm.models import Runtime, registry, towers
from jaxvlm.models.registry import get_architecture
from jaxvlm.models.towers.vitamin import ViTamin, ViTaminConfig
from jaxvlm.parallel import LOGICAL_RULES, create_mesh, param_shardings
from tests.convert.vitamin_models import TINY_VITAMINS

TINY = list(TINY_VITAMINS.values())
IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)


def vitamin_flops(v: ViTaminConfig, embed_dim: int) -> float:
    """Multiply-adds x 2 of one image: the stem's two 3 x 3 convolutions, per MBConv block its widening shortcut
    (if any), 1 x 1 expansion, depthwise 3 x 3 and 1 x 1 projection, the 3 x 3 convolution to the ViT's width, per
    ViT block q/k/v/out, scores and weighted values and the GeGLU's three products, then open_clip's projection."""
    side = v.image_size // 2
    total = 2 * side**2 * 9 * 3 * v.stem_width + 2 * side**2 * 9 * v.stem_width**2
    channels = v.stem_width
    for depth, dim in zip(v.depths, v.dims):
        for d in range(depth):
            hidden, out_side = v.hidden(dim), side // 2 if d == 0 else side
            if channels != dim:
                total += 2 * out_side**2 * channels * dim
            total += 2 * side**2 * channels * hidden + 2 * out_side**2 * hidden * (9 + dim)
            side, channels = out_side, dim
    n, w = v.grid**2, v.width
    total += 2 * n * 9 * channels * w
    block = 2 * n * w * 4 * w + 2 * 2 * n * n * w + 3 * 2 * n * w * v.mlp_dim
    return total + v.depth * block + 2 * w * embed_dim


@pytest.mark.parametrize("name", ["tiny", "tiny without positions", "ViTamin-S", "ViTamin-XL-384"])
def test_flops_per_example(name):
    if name.startswith("tiny"):
        v, embed_dim = TINY[name != "tiny"], 40
    else:
        v, embed_dim = get_architecture(name).model.vision, get_architecture(name).model.embed_dim
    # XLA's attention: the TPU kernel that "auto" picks at full size would count its padding to whole blocks
    counted = towers.flops_per_example(v, embed_dim, Runtime(attention="xla"))
    print(f"\n{name} image tower: {counted / 1e9:.4g} GFLOPs per image")
    assert counted == vitamin_flops(v, embed_dim)


def unflatten(flat):
    return flax.traverse_util.unflatten_dict({tuple(k.split("/")): x for k, x in flat.items()})


def boxed_shapes(module):
    """The module's parameters (boxed with their logical axis names) as shapes, traced only."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), IMAGES))["params"]


@pytest.mark.parametrize("v", TINY, ids=["positions", "no positions"])
def test_every_parameter_has_logical_axes(v):
    known = {name for name, _ in LOGICAL_RULES} | {None}
    flat = flax.traverse_util.flatten_dict(boxed_shapes(ViTamin(v, 40)), sep="/")
    assert all(isinstance(x, flax.linen.Partitioned) and len(x.names) == x.value.ndim for x in flat.values())
    assert set().union(*(x.names for x in flat.values())) <= known
    assert ("pos_embed" in flat) == v.pos_embed
    assert ("stage_0_0/shortcut/kernel" in flat) == (v.stem_width != v.dims[0])
    assert flat["blocks/w0/kernel"].names == ("layers", "embed", "mlp")
    assert flat["stage_1_0/conv2/kernel"].names == (None, None, None, "mlp")
    mesh = create_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:8])
    shardings = flax.traverse_util.flatten_dict(param_shardings(unflatten(flat), mesh), sep="/")
    assert shardings["blocks/w1/kernel"].spec == P(None, "fsdp", "tensor")
    assert flat["proj/kernel"].names[-1] == "proj"


@pytest.mark.parametrize("v", TINY, ids=["positions", "no positions"])
def test_tokens_are_the_vits_output(v):
    pooled, tokens = jax.eval_shape(lambda: ViTamin(v, 40).init_with_output(jax.random.key(0), IMAGES)[0])
    assert v.grid == 4 and v.token_width(40) == v.width
    assert pooled.shape == (2, 40) and tokens.shape == (2, v.grid**2, v.width)


def test_runtime_remat_reaches_the_blocks():
    """runtime.remat rematerialises the scanned ViT blocks (one checkpoint)."""
    v = TINY[0]
    params = boxed_shapes(ViTamin(v, 40))
    for remat, checkpoints in [("none", 0), ("full", 1)]:
        jaxpr = jax.make_jaxpr(ViTamin(v, 40, Runtime(remat=remat)).apply)({"params": params}, IMAGES)
        assert str(jaxpr).count("= remat2[") == checkpoints, remat


def test_config_round_trips_through_json():
    for name in ("ViTamin-L2-336", "ViTamin-XL-256"):
        v = get_architecture(name).model.vision
        assert towers.ImageTowerConfig.from_dict(json.loads(json.dumps(v.to_dict()))) == v


def test_bad_configs_are_one_clear_error():
    v = TINY[0]
    with pytest.raises(InputError, match=r"vision.depths \[2\] and vision.dims \[16, 24\] differ"):
        v.replace(depths=(2,))
    with pytest.raises(InputError, match=r"vision.dims\[1\] must be an integer >= 1"):
        v.replace(dims=(16, 0))
    with pytest.raises(InputError, match="vision.image_size 72 is not a multiple of the stride 16"):
        v.replace(image_size=72)
    with pytest.raises(InputError, match="vision.width 32 is not divisible by heads 3"):
        v.replace(heads=3)
    with pytest.raises(InputError, match="unknown keys: patch_size"):
        towers.ImageTowerConfig.from_dict({**v.to_dict(), "patch_size": 3})


@pytest.mark.slow  # the train step compiled for 8 devices: minutes of this shared CPU
def test_a_tiny_vitamin_clip_trains_one_step():
    """One step of `jaxvlm.train` on a data x FSDP x tensor mesh: the parameters shard by their names, the
    loss is finite and every parameter moves."""
    from jaxvlm.train.program import build
    from tests.train.runs import batches, mesh_of, on_mesh, tiny_config

    vision = dict(image_size=64, stem_width=8, dim=16, width=32, depth=2, heads=2, pos_embed=True)
    arch = registry.vitamin(embed_dim=32, vision=vision, text={"width": 64, "heads": 2, "depth": 2})
    with mock.patch.dict(registry.ARCHITECTURES, {"tiny-vitamin": arch}):
        config = tiny_config("tiny-vitamin", {"optimizer.warmup_steps": 0})
        program = build(config, mesh_of((2, 2, 2)))
        state = program.init()
        before = jax.device_get(state.params)
        state, metrics = program.run_step(state, on_mesh(batches(config, 1)[0], program.mesh))
    after = jax.device_get(state.params)
    print(f"\ntiny ViTamin CLIP, one step on data 2 x fsdp 2 x tensor 2: loss {float(metrics['loss']):.4f}")
    assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped"]) == 0
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
    assert all(jax.tree.leaves(moved)), flax.traverse_util.flatten_dict(moved, sep="/")
    w0 = state.params["img"]["blocks"]["w0"]["kernel"]
    assert w0.sharding.spec == P(None, "fsdp", "tensor")
