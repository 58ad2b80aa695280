"""timm's Eva image tower (kind "eva_vit": PE-Core, EVA01, EVA02): its rotary tables against timm's ('xy' and 'ij'
grids), its FLOPs counted on the traced program against the arithmetic (tiny and full size), logical axis names on
every parameter, the flash-attention path, tokens, and bad configs. Parity with open_clip is
tests/convert/test_pe_core.py's and test_eva.py's."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxvlm.errors import InputError
from jaxvlm.models import Runtime, towers
from jaxvlm.models.registry import get_architecture
from jaxvlm.models.towers.eva_vit import EvaViT, EvaViTConfig, rope_tables
from jaxvlm.parallel import LOGICAL_RULES, create_mesh, param_shardings
from tests.convert.eva_models import TINY_EVA_VITS, TINY_PE_VITS
from tests.models.eva_flops import eva_vit_flops

PE_CORE = ["PE-Core-T-16-384", "PE-Core-S-16-384", "PE-Core-B-16", "PE-Core-L-14-336", "PE-Core-bigG-14-448"]
EVA02 = ["EVA02-B-16", "EVA02-L-14", "EVA02-L-14-336"]  # the EVA towers with RoPE
TINY = list(TINY_PE_VITS.values())
TINY_EVA = list(TINY_EVA_VITS.values())  # EVA01-, EVA02- and EVA02-E-style
ROPE = TINY + [TINY_EVA[1]] + [get_architecture(n).model.vision for n in PE_CORE + EVA02]


def timm_rope(v: EvaViTConfig):
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
        grid_indexing=v.rope_indexing,
        in_pixels=False,
        grid_offset=v.rope_offset,
        ref_feat_shape=ref,
    )
    with torch.no_grad():
        return [x.numpy() for x in rope.get_embed().chunk(2, -1)]


@pytest.mark.parametrize("v", ROPE, ids=lambda v: f"{v.width}-{v.rope_indexing}-{v.image_size}")
def test_rope_tables_are_timms(v):
    sin, cos = rope_tables(v)
    prefix = int(v.class_token)
    assert np.array_equal(sin[:prefix], 0 * sin[:prefix]) and np.array_equal(cos[:prefix], 1 + 0 * cos[:prefix])
    ref_sin, ref_cos = timm_rope(v)
    error = max(np.max(np.abs(sin[prefix:] - ref_sin)), np.max(np.abs(cos[prefix:] - ref_cos)))
    print(f"\nRoPE tables ({v.grid}x{v.grid} grid, head width {v.width // v.heads}) vs timm max abs error: {error:.1e}")
    assert error <= 2**-23  # sin / cos of the same float32 angles, each rounded to within a unit in the last place


@pytest.mark.parametrize(
    "name", ["tiny", "tiny-eva02", "PE-Core-B-16", "PE-Core-bigG-14-448", "EVA01-g-14", "EVA02-L-14", "EVA02-E-14"]
)
def test_flops_per_example(name):
    tiny = {"tiny": TINY[0], "tiny-eva02": TINY_EVA[1]}
    v, embed_dim = (tiny[name], 32) if name in tiny else (get_architecture(name).model.vision, None)
    embed_dim = embed_dim or get_architecture(name).model.embed_dim
    # XLA's attention: the TPU kernel that "auto" picks at full size would count its padding to whole blocks
    counted = towers.flops_per_example(v, embed_dim, Runtime(attention="xla"))
    print(f"\n{name} image tower: {counted / 1e9:.4g} GFLOPs per image")
    assert counted == eva_vit_flops(v, embed_dim)


def unflatten(flat):
    return flax.traverse_util.unflatten_dict({tuple(k.split("/")): x for k, x in flat.items()})


IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)


def boxed_shapes(module):
    """The module's parameters (boxed with their logical axis names) as shapes, traced only."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), IMAGES))["params"]


def test_every_parameter_has_logical_axes():
    """Named as the ViT's are (the same paths carry the same names), from the axes the sharding rules know."""
    known = {name for name, _ in LOGICAL_RULES} | {None}
    flat = flax.traverse_util.flatten_dict(boxed_shapes(EvaViT(TINY[0], 32)), sep="/")
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


def test_eva02_parameters():
    """EVA02's extras carry the axes of what they normalise or project: the sub-LN the MLP's, the LN before the
    out projection the heads'; its keys have no bias."""
    flat = flax.traverse_util.flatten_dict(boxed_shapes(EvaViT(TINY_EVA[1], 32)), sep="/")
    b = "encoder/blocks"
    assert flat[f"{b}/mlp/norm/scale"].names == ("layers", "mlp") and flat[f"{b}/mlp/fc1_g/kernel"].names[-1] == "mlp"
    assert flat[f"{b}/attn/norm/scale"].names == ("layers", "heads", "kv")
    assert f"{b}/attn/key/bias" not in flat and f"{b}/attn/query/bias" in flat and f"{b}/mlp/fc1/kernel" not in flat
    assert "map_head/probe" not in flat and "pre_norm/scale" not in flat and "patch_embed/bias" in flat


@pytest.mark.parametrize("v", TINY + TINY_EVA, ids=["class token", "no class token", "eva01", "eva02", "eva02-e"])
def test_tokens_are_the_patch_tokens(v):
    module = EvaViT(v, 32)
    pooled, tokens = jax.eval_shape(lambda: module.init_with_output(jax.random.key(0), IMAGES)[0])
    assert pooled.shape == (2, 32) and tokens.shape == (2, v.grid**2, v.width)


@pytest.mark.parametrize("v", [TINY[0], TINY_EVA[1]], ids=["pe-core", "eva02"])
def test_attention_goes_through_the_kernels(v):
    """The rotated queries and keys go through `jaxvlm.ops.attention`: with "pallas" every block's attention
    (and the MAP head's) is the flash kernel (in Pallas's interpreter on CPU)."""
    module = EvaViT(v, 32, Runtime(attention="pallas"))
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), IMAGES))
    assert "pallas_call" in str(jax.make_jaxpr(module.apply)(params, IMAGES))


@pytest.mark.slow
def test_attention_switch():
    """ "pallas" (the Triton kernel in Pallas's interpreter on CPU) gives what "xla" gives."""
    v = TINY[0]
    params = flax.linen.meta.unbox(jax.jit(EvaViT(v, 32).init)(jax.random.key(0), IMAGES)["params"])
    pooled = {
        name: jax.jit(EvaViT(v, 32, Runtime(attention=name)).apply)({"params": params}, IMAGES)[0]
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
    with pytest.raises(InputError, match="vision.mlp is 'geglu'"):
        TINY_EVA[0].replace(mlp="geglu")
    with pytest.raises(InputError, match="pool 'cls' needs the class token"):
        TINY_EVA[0].replace(class_token=False)
    with pytest.raises(InputError, match="vision.pool_heads must be"):
        TINY_EVA[0].replace(pool="map")
    TINY_EVA[0].replace(width=72)  # no RoPE: any head width
