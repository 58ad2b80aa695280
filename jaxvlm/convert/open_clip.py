"""open_clip checkpoints -> jaxvlm: the OpenAI-style CLIP ViTs, the timm-based SigLIP and PE-Core models and CoCa.

Two sources: a weights file, whose architecture ``model_name`` names (open_clip's names, as
`jaxvlm list` shows them), or an open_clip hub repo directory, which carries its own config
(`jaxvlm.convert.open_clip_repo`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxvlm.convert.common import (
    Converted,
    SourceKeys,
    attention_params,
    check_params,
    conv,
    converter_for,
    dense,
    layer_norm,
    read_weights,
    stack_layers,
    strip_prefix,
)
from jaxvlm.errors import InputError
from jaxvlm.models.config import ModelConfig
from jaxvlm.models.registry import get_architecture
from jaxvlm.models.towers import PeViTConfig, TransformerTextConfig, ViTConfig
from jaxvlm.tokenizers import CLIP_BPE_FILE

# Buffers that are not parameters: older checkpoints (and OpenAI's own) carry them.
NON_PARAMETERS = ("attn_mask", "input_resolution", "context_length", "vocab_size", "text.attn_mask")


# Source names inside one block: norm1, packed q/k/v (weight and bias), out projection, norm2, fc1, fc2.
OPENAI_BLOCK = ("ln_1", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
TIMM_BLOCK = ("norm1", "attn.qkv.weight", "attn.qkv.bias", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def _blocks(src: SourceKeys, name: str, heads: int, names: tuple) -> Callable[[int], dict[str, np.ndarray]]:
    """One open_clip ResidualAttentionBlock or timm Block (both pre-LN, packed qkv) -> one jaxvlm Block."""
    norm1, qkv_weight, qkv_bias, out, norm2, fc1, fc2 = names

    def one(i: int) -> dict[str, np.ndarray]:
        p = f"{name}.{i}"
        qkv_w = np.split(src.take(f"{p}.{qkv_weight}"), 3)
        qkv_b = np.split(src.take(f"{p}.{qkv_bias}"), 3)
        return {
            **layer_norm(src, f"{p}.{norm1}", "norm1"),
            **attention_params(
                "attn", *zip(qkv_w, qkv_b), src.take(f"{p}.{out}.weight"), src.take(f"{p}.{out}.bias"), heads
            ),
            **layer_norm(src, f"{p}.{norm2}", "norm2"),
            **dense(src, f"{p}.{fc1}", "mlp/fc1"),
            **dense(src, f"{p}.{fc2}", "mlp/fc2"),
        }

    return one


def _vit(src: SourceKeys, v: ViTConfig) -> dict[str, np.ndarray]:
    """open_clip's own VisionTransformer, or (MAP-pooled SigLIP) a timm ViT trunk."""
    return _timm_vision(src, v) if v.pool == "map" else _openai_vision(src, v)


def _openai_vision(src: SourceKeys, v: ViTConfig) -> dict[str, np.ndarray]:
    pooler = _attention_pooler(src, "visual.attn_pool", v.attn_pool_heads) if v.pool == "attn_pool" else {}
    return {
        **pooler,
        "img/patch_embed/kernel": conv(src.take("visual.conv1.weight")),
        "img/cls": src.take("visual.class_embedding").reshape(1, 1, -1),
        "img/pos_embed": src.take("visual.positional_embedding")[None],
        **(layer_norm(src, "visual.ln_pre", "img/pre_norm") if v.pre_norm else {}),
        **stack_layers(
            v.depth, _blocks(src, "visual.transformer.resblocks", v.heads, OPENAI_BLOCK), "img/encoder/blocks"
        ),
        **layer_norm(src, "visual.ln_post", "img/final_norm"),
        "img/proj/kernel": src.take("visual.proj"),
    }


def _attention_pooler(src: SourceKeys, name: str, heads: int) -> dict[str, np.ndarray]:
    """CoCa's AttentionalPooler. Its nn.MultiheadAttention keeps separate q/k/v weights when the
    key width differs from the query width (as in every open_clip CoCa ViT), one packed bias always."""
    if f"{name}.attn.in_proj_weight" in src:
        weights = np.split(src.take(f"{name}.attn.in_proj_weight"), 3)
    else:
        weights = [src.take(f"{name}.attn.{x}_proj_weight") for x in "qkv"]
    biases = np.split(src.take(f"{name}.attn.in_proj_bias"), 3)
    return {
        "img/attn_pool/queries": src.take(f"{name}.query"),
        **attention_params(
            "img/attn_pool/attn",
            *zip(weights, biases),
            src.take(f"{name}.attn.out_proj.weight"),
            src.take(f"{name}.attn.out_proj.bias"),
            heads,
        ),
        **layer_norm(src, f"{name}.ln_q", "img/attn_pool/norm_q"),
        **layer_norm(src, f"{name}.ln_k", "img/attn_pool/norm_kv"),
    }


def _timm_vision(src: SourceKeys, v: ViTConfig) -> dict[str, np.ndarray]:
    return {
        "img/patch_embed/kernel": conv(src.take("visual.trunk.patch_embed.proj.weight")),
        "img/patch_embed/bias": src.take("visual.trunk.patch_embed.proj.bias"),
        "img/pos_embed": src.take("visual.trunk.pos_embed"),
        **stack_layers(v.depth, _blocks(src, "visual.trunk.blocks", v.heads, TIMM_BLOCK), "img/encoder/blocks"),
        **layer_norm(src, "visual.trunk.norm", "img/final_norm"),
        **_timm_map_head(src, "visual.trunk.attn_pool", v.heads),
    }


def _timm_map_head(src: SourceKeys, name: str, heads: int) -> dict[str, np.ndarray]:
    """timm's AttentionPoolLatent (one latent query, packed k/v) -> a jaxvlm MapHead."""
    k_w, v_w = np.split(src.take(f"{name}.kv.weight"), 2)
    k_b, v_b = np.split(src.take(f"{name}.kv.bias"), 2)
    return {
        "img/map_head/probe": src.take(f"{name}.latent"),
        **attention_params(
            "img/map_head/attn",
            (src.take(f"{name}.q.weight"), src.take(f"{name}.q.bias")),
            (k_w, k_b),
            (v_w, v_b),
            src.take(f"{name}.proj.weight"),
            src.take(f"{name}.proj.bias"),
            heads,
        ),
        **layer_norm(src, f"{name}.norm", "img/map_head/norm"),
        **dense(src, f"{name}.mlp.fc1", "img/map_head/mlp/fc1"),
        **dense(src, f"{name}.mlp.fc2", "img/map_head/mlp/fc2"),
    }


def _pe_vision(src: SourceKeys, v: PeViTConfig) -> dict[str, np.ndarray]:
    """timm's PE-Core ViT (its Eva class) under open_clip's TimmModel; its classifier head is the projection."""
    t = "visual.trunk"
    params = {
        "img/patch_embed/kernel": conv(src.take(f"{t}.patch_embed.proj.weight")),
        "img/pos_embed": src.take(f"{t}.pos_embed"),
        **layer_norm(src, f"{t}.norm_pre", "img/pre_norm"),
        **stack_layers(v.depth, _blocks(src, f"{t}.blocks", v.heads, TIMM_BLOCK), "img/encoder/blocks"),
        **layer_norm(src, f"{t}.norm", "img/final_norm"),
        **_timm_map_head(src, f"{t}.attn_pool", v.pool_heads),
    }
    if v.class_token:
        params["img/cls"] = src.take(f"{t}.cls_token")
    if v.proj:
        params.update(dense(src, f"{t}.head", "img/proj", bias=v.proj_bias))
    return params


def _text(src: SourceKeys, t: TransformerTextConfig) -> dict[str, np.ndarray]:
    p = "text." if "text.token_embedding.weight" in src else ""  # CustomTextCLIP nests the tower
    params = {
        "txt/token_embed/embedding": src.take(f"{p}token_embedding.weight"),
        "txt/pos_embed": src.take(f"{p}positional_embedding")[None],
        **stack_layers(t.depth, _blocks(src, f"{p}transformer.resblocks", t.heads, OPENAI_BLOCK), "txt/encoder/blocks"),
        **layer_norm(src, f"{p}ln_final", "txt/final_norm"),
    }
    # open_clip's proj_type 'none' holds no text_projection (a state dict with one has an unused key)
    if t.proj and f"{p}text_projection.weight" in src:  # nn.Linear (SigLIP) rather than a bare matrix
        params.update(dense(src, f"{p}text_projection", "txt/proj", bias=t.proj_bias))
    elif t.proj:
        params["txt/proj/kernel"] = src.take(f"{p}text_projection")
    if t.append_cls:
        params["txt/cls"] = src.take(f"{p}cls_emb").reshape(1, 1, -1)
    return params


def _decoder(src: SourceKeys, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """CoCa's MultimodalTransformer: per layer resblocks.i (self) and cross_attn.i (cross, with ln_1_kv)."""
    d = cfg.decoder
    self_block = _blocks(src, "text_decoder.resblocks", d.heads, OPENAI_BLOCK)
    cross_block = _blocks(src, "text_decoder.cross_attn", d.heads, OPENAI_BLOCK)

    def layer(i: int) -> dict[str, np.ndarray]:
        cross = {**cross_block(i), **layer_norm(src, f"text_decoder.cross_attn.{i}.ln_1_kv", "norm_kv")}
        return {
            **{f"self_block/{k}": x for k, x in self_block(i).items()},
            **{f"cross_block/{k}": x for k, x in cross.items()},
        }

    return {
        **stack_layers(d.depth, layer, "dec/layers"),
        **layer_norm(src, "text_decoder.ln_final", "dec/final_norm"),
        "dec/head/kernel": src.take("text_decoder.text_projection"),
    }


# tower kind -> the converter of its open_clip weights ("visual.*" / "text.*" or top-level text keys)
IMAGE_TOWERS = {"vit": _vit, "pe_vit": _pe_vision}
TEXT_TOWERS = {"transformer": _text}


def convert_state_dict(weights: dict[str, np.ndarray], model: str | ModelConfig, what: str = "state dict") -> dict:
    """An open_clip state dict (numpy arrays) -> the jaxvlm parameter tree of ``model`` (an
    architecture name, or the config of an open_clip model built from its own arguments), every
    source key used and every parameter's shape checked."""
    cfg = model if isinstance(model, ModelConfig) else get_architecture(model).model
    src = SourceKeys(strip_prefix(weights, "module."), what, ignore=NON_PARAMETERS)
    vision = converter_for(IMAGE_TOWERS, cfg.vision, "open_clip")
    text = converter_for(TEXT_TOWERS, cfg.text, "open_clip")
    flat = {**vision(src, cfg.vision), **text(src, cfg.text), "t": src.take("logit_scale").reshape(())}
    if cfg.decoder is not None:
        flat.update(_decoder(src, cfg))
    if cfg.logit_bias_init is not None:
        flat["b"] = src.take("logit_bias").reshape(())
    src.check_all_used()
    return check_params(cfg, flat, what)


def convert(src_path: Path, model_name: str | None, tokenizer_path: Path | None = None) -> Converted:
    """A weights file of the open_clip architecture ``model_name``, or a hub repo directory (`convert_repo`)."""
    if Path(src_path).is_dir():
        from jaxvlm.convert.open_clip_repo import convert_repo

        return convert_repo(Path(src_path), model_name, tokenizer_path)
    if not Path(src_path).exists():
        raise InputError(f"no such file or directory: {src_path}")
    if not model_name:
        raise InputError(
            "converting an open_clip weights file needs --model (the open_clip architecture name); "
            "a hub repo directory with open_clip_config.json does not"
        )
    arch = get_architecture(model_name)
    params = convert_state_dict(read_weights(src_path), model_name, f"{src_path} as open_clip {model_name}")
    tokenizer_source = tokenizer_path or (CLIP_BPE_FILE if arch.tokenizer.kind == "clip_bpe" else None)
    if tokenizer_source is None:
        raise InputError(
            f"{model_name} uses a tokenizer that open_clip downloads from the HF hub; pass its file with "
            "--tokenizer (the checkpoint's tokenizer.model / spiece.model; CLIPA: bert-base-uncased's tokenizer.json)"
        )
    return Converted(
        arch.model,
        params,
        arch.preprocess,
        arch.tokenizer,
        Path(tokenizer_source),
        {"source": "open_clip", "model": model_name, "weights": str(src_path)},
    )
