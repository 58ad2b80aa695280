"""The PE-Core image tower (kind "pe_vit"): its rotary tables against timm's, its FLOPs counted on the traced
program against the arithmetic (tiny and full size), logical axis names on every parameter, the flash-attention
path, tokens, and bad configs. Parity with open_clip is tests/convert/test_pe_core.py's."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxvlm.errors import InputError
from jaxvlm.models import Runtime, towers
from jaxvlm.models.registry import get_architecture
from jaxvlm.models.towers.pe_vit import PeViT, PeViTConfig, rope_tables
from jaxvlm.parallel import LOGICAL_RULES, create_mesh, param_shardings
from tests.convert.pe_core_models import TINY_PE_VITS

PE_CORE = ["PE-Core-T-16-384", "PE-Core-S-16-384", "PE-Core-B-16", "PE-Core-L-14-336", "PE-Core-bigG-14-448"]
TINY = list(TINY_PE_VITS.values())


def timm_rope(v: PeViTConfig):
    """timm's RotaryEmbeddingCat as its Eva class builds it for ``v`` (sin, cos) [grid * grid, head_dim]."""
    torch = pytest.importorskip("torch")
    create_rope_embed = pytest.importorskip("timm.layers").create_rope_embed

    ref = None if v.rope_ref_grid is None else (v.rope_ref_grid,) * 2
    rope = create_rope_embed(
        rope_type="cat",
        dim=v.width,
        num_heads=v.heads,
        feat_shape=(v.grid, v.grid),
        temperature=v.rope_temperature,
        grid_indexing="xy",
        in_pixels=False,
        grid_offset=v.rope_offset,
        ref_feat_shape=ref,
    )
    with torch.no_grad():
        return [x.numpy() for x in rope.get_embed().chunk(2, -1)]


@pytest.mark.parametrize("v", TINY + [get_architecture(n).model.vision for n in PE_CORE], ids=lambda v: str(v.width))
def test_rope_tables_are_timms(v):
    sin, cos = rope_tables(v)
    prefix = int(v.class_token)
    assert np.array_equal(sin[:prefix], 0 * sin[:prefix]) and np.array_equal(cos[:prefix], 1 + 0 * cos[:prefix])
    ref_sin, ref_cos = timm_rope(v)
    error = max(np.max(np.abs(sin[prefix:] - ref_sin)), np.max(np.abs(cos[prefix:] - ref_cos)))
    print(f"\nRoPE tables ({v.grid}x{v.grid} grid, head width {v.width // v.heads}) vs timm max abs error: {error:.1e}")
    assert error <= 2**-23  # sin / cos of the same float32 angles, each rounded to within a unit in the last place


def pe_vit_flops(v: PeViTConfig, embed_dim: int) -> float:
    """Multiply-adds x 2 of one image: patch embedding, per block q/k/v/out, scores and weighted values and the
    MLP, then the MAP head (one query over every token) and the projection."""
    n, w, p = v.num_tokens, v.width, v.patch_size
    block = 2 * n * w * 4 * w + 2 * 2 * n * n * w + 2 * 2 * n * w * v.mlp_dim
    head = 2 * w * w + 2 * n * w * 2 * w + 2 * 2 * n * w + 2 * w * w + 2 * 2 * w * v.pool_mlp_dim
    return 2 * v.grid**2 * p * p * 3 * w + v.depth * block + head + 2 * w * embed_dim * v.proj


@pytest.mark.parametrize("name", ["tiny", "PE-Core-B-16", "PE-Core-bigG-14-448"])
def test_flops_per_example(name):
    v, embed_dim = (TINY[0], 32) if name == "tiny" else (get_architecture(name).model.vision, None)
    embed_dim = embed_dim or get_architecture(name).model.embed_dim
    # XLA's attention: the TPU kernel that "auto" picks at full size would count its padding to whole blocks
    counted = towers.flops_per_example(v, embed_dim, Runtime(attention="xla"))
    print(f"\n{name} image tower: {counted / 1e9:.4g} GFLOPs per image")
    assert counted == pe_vit_flops(v, embed_dim)


def unflatten(flat):
    return flax.traverse_util.unflatten_dict({tuple(k.split("/")): x for k, x in flat.items()})


IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)


def boxed_shapes(module):
    """The module's parameters (boxed with their logical axis names) as shapes, traced only."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), IMAGES))["params"]


def test_every_parameter_has_logical_axes():
    """Named as the ViT's are (the same paths carry the same names), from the axes the sharding rules know."""
    known = {name for name, _ in LOGICAL_RULES} | {None}
    flat = flax.traverse_util.flatten_dict(boxed_shapes(PeViT(TINY[0], 32)), sep="/")
    assert all(isinstance(x, flax.linen.Partitioned) and len(x.names) == x.value.ndim for x in flat.values())
    assert set().union(*(x.names for x in flat.values())) <= known
    vit = get_architecture("tiny-siglip").model.vision.replace(patch_bias=False, class_token=True, pre_norm=True)
    vit_flat = flax.traverse_util.flatten_dict(boxed_shapes(towers.ViT(vit.replace(proj=True), 32)), sep="/")
    assert vit_flat.keys() == flat.keys() - {"proj/bias"}
    assert all(flat[k].names == x.names for k, x in vit_flat.items())
    assert flat["encoder/blocks/attn/query/kernel"].names == ("layers", "embed", "heads", "kv")
    mesh = create_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:8])
    shardings = flax.traverse_util.flatten_dict(param_shardings(unflatten(flat), mesh), sep="/")
    assert shardings["encoder/blocks/attn/query/kernel"].spec == P(None, "fsdp", "tensor", None)
    assert shardings["map_head/mlp/fc1/kernel"].spec == P("fsdp", "tensor")


@pytest.mark.parametrize("v", TINY, ids=["class token", "no class token"])
def test_tokens_are_the_patch_tokens(v):
    module = PeViT(v, 32)
    pooled, tokens = jax.eval_shape(lambda: module.init_with_output(jax.random.key(0), IMAGES)[0])
    assert pooled.shape == (2, 32) and tokens.shape == (2, v.grid**2, v.width)


def test_attention_goes_through_the_kernels():
    """The rotated queries and keys go through `jaxvlm.ops.attention`: with "pallas" every block's attention
    and the MAP head's are the flash kernel (in Pallas's interpreter on CPU)."""
    module = PeViT(TINY[0], 32, Runtime(attention="pallas"))
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), IMAGES))
    assert "pallas_call" in str(jax.make_jaxpr(module.apply)(params, IMAGES))


@pytest.mark.slow
def test_attention_switch():
    """ "pallas" (the Triton kernel in Pallas's interpreter on CPU) gives what "xla" gives."""
    v = TINY[0]
    params = flax.linen.meta.unbox(jax.jit(PeViT(v, 32).init)(jax.random.key(0), IMAGES)["params"])
    pooled = {
        name: jax.jit(PeViT(v, 32, Runtime(attention=name)).apply)({"params": params}, IMAGES)[0]
        for name in ("xla", "pallas")
    }
    error = float(jnp.max(jnp.abs(pooled["pallas"] - pooled["xla"])))
    print(f"\npallas vs xla pooled features max abs error: {error:.1e}")
    assert error < 1e-5


def test_bad_configs_are_one_clear_error():
    with pytest.raises(InputError, match="head width 18 is not a multiple of 4"):
        TINY[0].replace(width=72)
    with pytest.raises(InputError, match="not divisible by pool_heads 3"):
        TINY[0].replace(pool_heads=3)
    with pytest.raises(InputError, match="proj is off but vision.width 64 != embed_dim 32"):
        TINY[0].replace(proj=False).check(32)
