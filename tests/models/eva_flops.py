"""The hand count of an eva_vit image tower's FLOPs, which the tower tests compare `flops_per_example` with."""

from jaxvlm.models.towers.eva_vit import EvaViTConfig


def eva_vit_flops(v: EvaViTConfig, embed_dim: int) -> float:
    """Multiply-adds x 2 of one image: patch embedding, per block q/k/v/out, scores and weighted values and the
    MLP (three products with SwiGLU, two without), then the MAP head (one query over every token) if it has one
    and the projection."""
    n, w, p = v.num_tokens, v.width, v.patch_size
    mlp_products = 3 if v.mlp == "swiglu" else 2
    block = 2 * n * w * 4 * w + 2 * 2 * n * n * w + 2 * mlp_products * n * w * v.mlp_dim
    head = 0
    if v.pool == "map":
        head = 2 * w * w + 2 * n * w * 2 * w + 2 * 2 * n * w + 2 * w * w + 2 * 2 * w * v.pool_mlp_dim
    return 2 * v.grid**2 * p * p * 3 * w + v.depth * block + head + 2 * w * embed_dim * v.proj
