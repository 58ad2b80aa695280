"""The ConvNeXt image tower (kind "convnext"): its FLOPs counted on the traced program against the arithmetic
(tiny and full size), logical axis names on every parameter and the shardings they give, tokens, rematerialised
blocks, bad configs, and one train step of a tiny ConvNeXt CLIP on a data x FSDP x tensor mesh. Parity with
open_clip is tests/convert/test_convnext.py's."""

import dataclasses
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
from jaxvlm.models.towers.convnext import ConvNeXt, ConvNeXtConfig
from jaxvlm.parallel import LOGICAL_RULES, create_mesh, param_shardings
from tests.convert.convnext_models import TINY_CONVNEXTS

CONVNEXT = [
    "convnext_base",
    "convnext_base_w",
    "convnext_base_w_320",
    "convnext_large_d",
    "convnext_large_d_320",
    "convnext_xxlarge",
]
TINY = list(TINY_CONVNEXTS.values())
IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)


def convnext_flops(v: ConvNeXtConfig, embed_dim: int) -> float:
    """Multiply-adds x 2 of one image: the stem's patch convolution, per stage the 2 x 2 downsampling
    convolution (all but the first), per block the depthwise convolution and the MLP, then open_clip's head."""
    side = v.image_size // v.patch_size
    total = 2 * side**2 * v.patch_size**2 * 3 * v.dims[0]
    for i, (depth, dim) in enumerate(zip(v.depths, v.dims)):
        if i:
            side //= 2
            total += 2 * side**2 * 4 * v.dims[i - 1] * dim
        block = 2 * side**2 * dim * v.kernel_size**2 + 2 * 2 * side**2 * dim * v.mlp_ratio * dim
        total += depth * block
    width = v.dims[-1]
    if v.head == "linear":
        return total + 2 * width * embed_dim
    return total + 2 * width * 2 * embed_dim + 2 * 2 * embed_dim * embed_dim


@pytest.mark.parametrize("name", ["tiny", "tiny mlp head", "convnext_base_w_320", "convnext_xxlarge"])
def test_flops_per_example(name):
    if name.startswith("tiny"):
        v, embed_dim = TINY[name == "tiny mlp head"], 32
    else:
        v, embed_dim = get_architecture(name).model.vision, get_architecture(name).model.embed_dim
    counted = towers.flops_per_example(v, embed_dim)
    print(f"\n{name} image tower: {counted / 1e9:.4g} GFLOPs per image")
    assert counted == convnext_flops(v, embed_dim)


def unflatten(flat):
    return flax.traverse_util.unflatten_dict({tuple(k.split("/")): x for k, x in flat.items()})


def boxed_shapes(module):
    """The module's parameters (boxed with their logical axis names) as shapes, traced only."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), IMAGES))["params"]


@pytest.mark.parametrize("v", TINY, ids=["linear head", "mlp head"])
def test_every_parameter_has_logical_axes(v):
    known = {name for name, _ in LOGICAL_RULES} | {None}
    flat = flax.traverse_util.flatten_dict(boxed_shapes(ConvNeXt(v, 32)), sep="/")
    assert all(isinstance(x, flax.linen.Partitioned) and len(x.names) == x.value.ndim for x in flat.values())
    assert set().union(*(x.names for x in flat.values())) <= known
    assert flat["stage_0/conv_dw/kernel"].names == ("layers", None, None, None, "embed")
    assert flat["stage_2/mlp/fc1/kernel"].names == ("layers", "embed", "mlp")
    assert flat["downsample_1/kernel"].names == (None, None, None, "embed")
    mesh = create_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:8])
    shardings = flax.traverse_util.flatten_dict(param_shardings(unflatten(flat), mesh), sep="/")
    assert shardings["stage_2/mlp/fc1/kernel"].spec == P(None, "fsdp", "tensor")
    assert shardings["stage_2/conv_dw/kernel"].spec == P(None, None, None, None, "fsdp")
    head = "proj/kernel" if v.head == "linear" else "head_fc2/kernel"
    assert head in flat and flat[head].names[-1] == "proj"


@pytest.mark.parametrize("v", TINY, ids=["linear head", "mlp head"])
def test_tokens_are_the_final_feature_map(v):
    pooled, tokens = jax.eval_shape(lambda: ConvNeXt(v, 32).init_with_output(jax.random.key(0), IMAGES)[0])
    assert v.grid == 2 and v.token_width(32) == v.dims[-1]
    assert pooled.shape == (2, 32) and tokens.shape == (2, v.grid**2, v.dims[-1])


def test_runtime_remat_reaches_the_blocks():
    """runtime.remat rematerialises each stage's scanned blocks (a checkpoint per stage)."""
    v = TINY[0]
    params = boxed_shapes(ConvNeXt(v, 32))
    for remat, checkpoints in [("none", 0), ("full", len(v.depths))]:
        jaxpr = jax.make_jaxpr(ConvNeXt(v, 32, Runtime(remat=remat)).apply)({"params": params}, IMAGES)
        assert str(jaxpr).count("= remat2[") == checkpoints, remat


def test_config_round_trips_through_json():
    v = get_architecture("convnext_large_d").model.vision
    assert towers.ImageTowerConfig.from_dict(json.loads(json.dumps(v.to_dict()))) == v


def test_bad_configs_are_one_clear_error():
    v = TINY[0]
    with pytest.raises(InputError, match="vision.head is 'attn'"):
        v.replace(head="attn")
    with pytest.raises(InputError, match=r"vision.depths \[2, 1\] and vision.dims \[16, 24, 32, 40\] differ"):
        v.replace(depths=(2, 1))
    with pytest.raises(InputError, match=r"vision.dims\[1\] must be an integer >= 1"):
        v.replace(dims=(16, 0, 32, 40))
    with pytest.raises(InputError, match="kernel_size 4 must be odd"):
        v.replace(kernel_size=4)
    with pytest.raises(InputError, match="image_size 16 is smaller than the tower's stride 32"):
        v.replace(image_size=16)
    with pytest.raises(InputError, match="unknown keys: width"):
        towers.ImageTowerConfig.from_dict({**v.to_dict(), "width": 3})


def tiny_convnext_clip() -> registry.Architecture:
    """A ConvNeXt CLIP as the registry builds convnext_base, at the tests' tiny sizes."""
    v = TINY_CONVNEXTS["convnext_jaxvlmtest"]
    vision = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
    return registry.convnext(embed_dim=32, vision=vision, text={"width": 64, "depth": 2})


@pytest.mark.slow  # the train step compiled for 8 devices: two minutes of this shared CPU
def test_a_tiny_convnext_clip_trains_one_step():
    """One step of `jaxvlm.train` on a data x FSDP x tensor mesh: the parameters shard by their names, the
    loss is finite and every parameter moves."""
    from jaxvlm.train.program import build
    from tests.train.runs import batches, mesh_of, on_mesh, tiny_config

    with mock.patch.dict(registry.ARCHITECTURES, {"tiny-convnext": tiny_convnext_clip()}):
        config = tiny_config("tiny-convnext", {"optimizer.warmup_steps": 0})
        program = build(config, mesh_of((2, 2, 2)))
        state = program.init()
        before = jax.device_get(state.params)
        state, metrics = program.run_step(state, on_mesh(batches(config, 1)[0], program.mesh))
    after = jax.device_get(state.params)
    print(f"\ntiny ConvNeXt CLIP, one step on data 2 x fsdp 2 x tensor 2: loss {float(metrics['loss']):.4f}")
    assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped"]) == 0
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
    assert all(jax.tree.leaves(moved)), flax.traverse_util.flatten_dict(moved, sep="/")
    fc1 = state.params["img"]["stage_2"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec == P(None, "fsdp", "tensor")
