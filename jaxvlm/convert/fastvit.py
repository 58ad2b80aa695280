"""timm's FastVit trunk (open_clip's MobileCLIP / MobileCLIP2 S-models: ``visual.trunk.*``) -> the "fastvit" tower
(`jaxvlm.models.towers.fastvit`), in the form the weights ship in: multi-branch (``conv_kxk``, ``conv_scale``,
``identity`` BatchNorms) or folded by timm's reparameterize_model (``reparam_conv``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jaxvlm.convert.common import SourceKeys, attention_params, conv, layer_norm, linear
from jaxvlm.models.towers.fastvit import FastViTConfig

BATCH_STATS = "batch_stats"  # flat names under this prefix are BatchNorm statistics (as jaxvlm.convert.open_clip's)


def is_folded(weights: Mapping[str, np.ndarray]) -> bool:
    """Whether a FastVit state dict is timm's re-parameterised (inference) form."""
    return any(".reparam_conv." in k for k in weights)


def _pointwise(w: np.ndarray) -> np.ndarray:
    """A 1x1 Conv2d weight [out, in, 1, 1] -> a Dense kernel [in, out]."""
    return w[:, :, 0, 0].T


def _bn(src: SourceKeys, name: str, prefix: str) -> dict[str, np.ndarray]:
    return {
        f"{prefix}/scale": src.take(f"{name}.weight"),
        f"{prefix}/bias": src.take(f"{name}.bias"),
        f"{BATCH_STATS}/{prefix}/mean": src.take(f"{name}.running_mean"),
        f"{BATCH_STATS}/{prefix}/var": src.take(f"{name}.running_var"),
    }


def _conv_norm(src: SourceKeys, name: str, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}/conv/kernel": conv(src.take(f"{name}.conv.weight")), **_bn(src, f"{name}.bn", f"{prefix}/bn")}


def _conv(src: SourceKeys, name: str, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}/kernel": conv(src.take(f"{name}.weight")), f"{prefix}/bias": src.take(f"{name}.bias")}


def _pointwise_dense(src: SourceKeys, name: str, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}/kernel": _pointwise(src.take(f"{name}.weight")), f"{prefix}/bias": src.take(f"{name}.bias")}


def _se(src: SourceKeys, name: str, prefix: str) -> dict[str, np.ndarray]:
    if f"{name}.fc1.weight" not in src:
        return {}
    fc1, fc2 = (_pointwise_dense(src, f"{name}.{fc}", f"{prefix}/{fc}") for fc in ("fc1", "fc2"))
    return {**fc1, **fc2}


def _mobileone(src: SourceKeys, name: str, prefix: str, folded: bool) -> dict[str, np.ndarray]:
    """A MobileOneBlock: whichever branches the checkpoint has (the model's own tree checks them)."""
    out = _se(src, f"{name}.se", f"{prefix}/se")
    if folded:
        return {**out, **_conv(src, f"{name}.reparam_conv", f"{prefix}/reparam_conv")}
    j = 0
    while f"{name}.conv_kxk.{j}.conv.weight" in src:
        out.update(_conv_norm(src, f"{name}.conv_kxk.{j}", f"{prefix}/conv_kxk_{j}"))
        j += 1
    if f"{name}.conv_scale.conv.weight" in src:
        out.update(_conv_norm(src, f"{name}.conv_scale", f"{prefix}/conv_scale"))
    if f"{name}.identity.weight" in src:
        out.update(_bn(src, f"{name}.identity", f"{prefix}/identity"))
    return out


def _mlp(src: SourceKeys, name: str) -> dict[str, np.ndarray]:
    return {
        **_conv_norm(src, f"{name}.conv", "mlp/conv"),
        **_pointwise_dense(src, f"{name}.fc1", "mlp/fc1"),
        **_pointwise_dense(src, f"{name}.fc2", "mlp/fc2"),
    }


def _gamma(src: SourceKeys, name: str) -> np.ndarray:
    return src.take(f"{name}.gamma").reshape(-1)


def _block(src: SourceKeys, name: str, mixer: str, heads: int, layer_norm2d: bool, folded: bool) -> dict:
    out = _mlp(src, f"{name}.mlp")
    if mixer == "repmixer":
        out["mlp_layer_scale"] = _gamma(src, f"{name}.layer_scale")
        t = f"{name}.token_mixer"
        if folded:
            return {**out, **_conv(src, f"{t}.reparam_conv", "token_mixer_reparam_conv")}
        return {
            **out,
            **_mobileone(src, f"{t}.mixer", "token_mixer", False),
            **_mobileone(src, f"{t}.norm", "token_mixer_norm", False),
            "token_mixer_layer_scale": _gamma(src, f"{t}.layer_scale"),
        }
    qkv = np.split(src.take(f"{name}.token_mixer.qkv.weight"), 3)
    out.update(
        attention_params(
            "",
            *((w, None) for w in qkv),
            src.take(f"{name}.token_mixer.proj.weight"),
            src.take(f"{name}.token_mixer.proj.bias"),
            heads,
        )
    )
    out = {k.removeprefix("/"): v for k, v in out.items()}
    norm = layer_norm(src, f"{name}.norm", "norm") if layer_norm2d else _bn(src, f"{name}.norm", "norm")
    return {
        **out,
        **norm,
        "attn_layer_scale": _gamma(src, f"{name}.layer_scale_1"),
        "mlp_layer_scale": _gamma(src, f"{name}.layer_scale_2"),
    }


def stack_blocks(blocks: list[dict]) -> dict[str, np.ndarray]:
    """Per-block flat variables -> the scanned layout (a leading "layers" axis)."""
    return {k: np.stack([b[k] for b in blocks]) for k in blocks[0]}


def fastvit_variables(
    src: SourceKeys, v: FastViTConfig, t: str = "visual.trunk", prefix: str = "img"
) -> dict[str, np.ndarray]:
    """timm's FastVit under ``t`` (with its classifier head) -> flat "img/..." params and
    "batch_stats/img/..." statistics of a FastViTConfig ``v``, in its form (``v.reparameterized``)."""
    folded = v.reparameterized
    flat = {}

    def add(tree: dict, under: str) -> None:
        for k, x in tree.items():
            k = k.lstrip("/")
            if k.startswith(f"{BATCH_STATS}/"):
                flat[f"{BATCH_STATS}/{prefix}/{under}/{k.removeprefix(f'{BATCH_STATS}/').lstrip('/')}"] = x
            else:
                flat[f"{prefix}/{under}/{k}"] = x

    for i in range(3):
        add(_mobileone(src, f"{t}.stem.{i}", "", folded), f"stem_{i}")
    for i, depth in enumerate(v.layers):
        s = f"{t}.stages.{i}"
        if v.downsample(i):
            d = f"{s}.downsample.proj"
            if folded:
                add(_conv(src, f"{d}.0.reparam_conv", "reparam_conv"), f"downsample_{i}")
            else:
                add(_conv_norm(src, f"{d}.0.large_conv", "large_conv"), f"downsample_{i}")
                add(_conv_norm(src, f"{d}.0.small_conv", "small_conv"), f"downsample_{i}")
            add(_se(src, f"{d}.0.se", "se"), f"downsample_{i}")
            add(_mobileone(src, f"{d}.1", "pointwise", folded), f"downsample_{i}")
        if v.pos_embs[i]:
            form = "reparam_conv" if folded else "pos_enc"
            add(_conv(src, f"{s}.pos_emb.{form}", ""), f"pos_emb_{i}_{form}")
        heads, ln = v.dims[i] // v.head_dim, v.attention_norm == "layer_norm"
        blocks = [_block(src, f"{s}.blocks.{j}", v.token_mixers[i], heads, ln, folded) for j in range(depth)]
        add(stack_blocks(blocks), f"stage_{i}")
    add(_mobileone(src, f"{t}.final_conv", "", folded), "final_conv")
    flat[f"{prefix}/head/kernel"] = linear(src.take(f"{t}.head.fc.weight"))
    flat[f"{prefix}/head/bias"] = src.take(f"{t}.head.fc.bias")
    return flat
