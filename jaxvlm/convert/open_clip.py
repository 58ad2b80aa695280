"""open_clip checkpoints -> jaxvlm: the OpenAI-style CLIP ViTs, the timm-based SigLIP, PE-Core, EVA,
ConvNeXt and ViTamin models and CoCa.

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
from jaxvlm.convert.fastvit import fastvit_variables, is_folded
from jaxvlm.errors import InputError
from jaxvlm.models.config import ModelConfig
from jaxvlm.models.registry import get_architecture
from jaxvlm.models.towers import (
    ConvNeXtConfig,
    EvaViTConfig,
    HFTextConfig,
    ModifiedResNetConfig,
    TransformerTextConfig,
    ViTaminConfig,
    ViTConfig,
)
from jaxvlm.tokenizers import CLIP_BPE_FILE, TokenizerConfig

# Buffers that are not parameters: older checkpoints (and OpenAI's own) carry them.
NON_PARAMETERS = ("attn_mask", "input_resolution", "context_length", "vocab_size", "text.attn_mask")
# flat names under this prefix are BatchNorm statistics (the model's "batch_stats" collection), not parameters
BATCH_STATS = "batch_stats"


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


def _eva_qkv(src: SourceKeys, p: str) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """timm's Eva attention weights in any of its layouts: packed q/k/v with a packed bias (PE-Core), with
    q_bias and v_bias only (EVA01, EVA02-E), or separate q/k/v projections, the keys' without bias (EVA02)."""
    # the layout any one of its keys shows, so that a missing key is named
    if any(f"{p}.{x}_proj.weight" in src for x in "qkv"):
        return [(src.take(f"{p}.{x}_proj.weight"), src.take(f"{p}.{x}_proj.bias") if x != "k" else None) for x in "qkv"]
    weights = np.split(src.take(f"{p}.qkv.weight"), 3)
    if f"{p}.q_bias" in src or f"{p}.v_bias" in src:
        return list(zip(weights, (src.take(f"{p}.q_bias"), None, src.take(f"{p}.v_bias"))))
    return list(zip(weights, np.split(src.take(f"{p}.qkv.bias"), 3)))


def _eva_blocks(src: SourceKeys, name: str, v: EvaViTConfig) -> Callable[[int], dict[str, np.ndarray]]:
    """One block of timm's Eva (EvaBlock / EvaBlockPostNorm) -> one jaxvlm EvaBlock."""

    def one(i: int) -> dict[str, np.ndarray]:
        p = f"{name}.{i}"
        q, k, val = _eva_qkv(src, f"{p}.attn")
        if k[1] is not None and not v.key_bias:
            raise InputError(f"{src.what}: {p}.attn has a key bias, which the architecture's keys lack")
        out = src.take(f"{p}.attn.proj.weight"), src.take(f"{p}.attn.proj.bias")
        params = {
            **layer_norm(src, f"{p}.norm1", "norm1"),
            **attention_params("attn", q, k, val, *out, v.heads),
            **layer_norm(src, f"{p}.norm2", "norm2"),
            **dense(src, f"{p}.mlp.fc2", "mlp/fc2"),
        }
        for fc1 in ("fc1_g", "fc1_x") if v.mlp == "swiglu" else ("fc1",):
            params.update(dense(src, f"{p}.mlp.{fc1}", f"mlp/{fc1}"))
        if v.attn_norm:
            norm = layer_norm(src, f"{p}.attn.norm", "attn/norm")
            params.update({key: x.reshape(v.heads, -1) for key, x in norm.items()})
        if v.mlp_norm:
            params.update(layer_norm(src, f"{p}.mlp.norm", "mlp/norm"))
        return params

    return one


def _eva_patch_embed(src: SourceKeys, t: str, v: EvaViTConfig) -> dict[str, np.ndarray]:
    params = {"img/patch_embed/kernel": conv(src.take(f"{t}.patch_embed.proj.weight"))}
    if v.patch_bias:
        params["img/patch_embed/bias"] = src.take(f"{t}.patch_embed.proj.bias")
    return params


def _conv_stem(src: SourceKeys, name: str, v: EvaViTConfig) -> dict[str, np.ndarray]:
    """timm's ConvStem (ConvNormAct layers: conv, then BatchNorm with its statistics, the last conv with a bias
    and no norm)."""
    last = len(v.stem_widths) - 1
    params = {}
    for i in range(last):
        params[f"img/stem/conv{i}/kernel"] = conv(src.take(f"{name}.{i}.conv.weight"))
        for ours, theirs in (("scale", "weight"), ("bias", "bias")):
            params[f"img/stem/bn{i}/{ours}"] = src.take(f"{name}.{i}.bn.{theirs}")
        for ours, theirs in (("mean", "running_mean"), ("var", "running_var")):
            params[f"{BATCH_STATS}/img/stem/bn{i}/{ours}"] = src.take(f"{name}.{i}.bn.{theirs}")
    params[f"img/stem/conv{last}/kernel"] = conv(src.take(f"{name}.{last}.conv.weight"))
    params[f"img/stem/conv{last}/bias"] = src.take(f"{name}.{last}.conv.bias")
    return params


def _eva_vision(src: SourceKeys, v: EvaViTConfig) -> dict[str, np.ndarray]:
    """timm's Eva ViT (EVA01 / EVA02 / PE-Core) under open_clip's TimmModel; its classifier head is the
    projection."""
    t = "visual.trunk"
    params = {
        **(_conv_stem(src, f"{t}.patch_embed.backbone", v) if v.stem_widths else _eva_patch_embed(src, t, v)),
        "img/pos_embed": src.take(f"{t}.pos_embed"),
        **stack_layers(v.depth, _eva_blocks(src, f"{t}.blocks", v), "img/encoder/blocks"),
        **layer_norm(src, f"{t}.norm", "img/final_norm"),
    }
    if v.pre_norm:
        params.update(layer_norm(src, f"{t}.norm_pre", "img/pre_norm"))
    if v.pool == "map":
        params.update(_timm_map_head(src, f"{t}.attn_pool", v.pool_heads))
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


def _convnext_block(src: SourceKeys, name: str, v: ConvNeXtConfig) -> Callable[[int], dict[str, np.ndarray]]:
    def one(i: int) -> dict[str, np.ndarray]:
        p = f"{name}.{i}"
        return {
            "conv_dw/kernel": conv(src.take(f"{p}.conv_dw.weight")),
            "conv_dw/bias": src.take(f"{p}.conv_dw.bias"),
            **layer_norm(src, f"{p}.norm", "norm"),
            **dense(src, f"{p}.mlp.fc1", "mlp/fc1"),
            **dense(src, f"{p}.mlp.fc2", "mlp/fc2"),
            **({"gamma": src.take(f"{p}.gamma")} if v.layer_scale else {}),
        }

    return one


def _convnext_vision(src: SourceKeys, v: ConvNeXtConfig) -> dict[str, np.ndarray]:
    """timm's ConvNeXt trunk and open_clip's TimmModel head (a linear projection or an MLP)."""
    t = "visual.trunk"
    params = {
        "img/stem/kernel": conv(src.take(f"{t}.stem.0.weight")),
        "img/stem/bias": src.take(f"{t}.stem.0.bias"),
        **layer_norm(src, f"{t}.stem.1", "img/stem_norm"),
        **layer_norm(src, f"{t}.head.norm", "img/head_norm"),
    }
    for i, depth in enumerate(v.depths):
        if i:
            params.update(layer_norm(src, f"{t}.stages.{i}.downsample.0", f"img/downsample_norm_{i}"))
            params[f"img/downsample_{i}/kernel"] = conv(src.take(f"{t}.stages.{i}.downsample.1.weight"))
            params[f"img/downsample_{i}/bias"] = src.take(f"{t}.stages.{i}.downsample.1.bias")
        params.update(stack_layers(depth, _convnext_block(src, f"{t}.stages.{i}.blocks", v), f"img/stage_{i}"))
    if v.head == "linear":
        params.update(dense(src, "visual.head.proj", "img/proj", bias=v.proj_bias))
    else:
        params.update(dense(src, "visual.head.mlp.fc1", "img/head_fc1"))
        params.update(dense(src, "visual.head.mlp.fc2", "img/head_fc2", bias=v.proj_bias))
    return params


def _conv(src: SourceKeys, name: str, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}/kernel": conv(src.take(f"{name}.weight")), f"{prefix}/bias": src.take(f"{name}.bias")}


def _vitamin_block(src: SourceKeys, name: str, heads: int) -> Callable[[int], dict[str, np.ndarray]]:
    """One timm Block with ViTamin's GeGluMlp (its own LayerNorm, gate w0, value w1, out w2)."""

    def one(i: int) -> dict[str, np.ndarray]:
        p = f"{name}.{i}"
        qkv_w, qkv_b = np.split(src.take(f"{p}.attn.qkv.weight"), 3), np.split(src.take(f"{p}.attn.qkv.bias"), 3)
        out_w, out_b = src.take(f"{p}.attn.proj.weight"), src.take(f"{p}.attn.proj.bias")
        return {
            **layer_norm(src, f"{p}.norm1", "norm1"),
            **attention_params("attn", *zip(qkv_w, qkv_b), out_w, out_b, heads),
            **layer_norm(src, f"{p}.norm2", "norm2"),
            **layer_norm(src, f"{p}.mlp.norm", "mlp_norm"),
            **{k: v for w in ("w0", "w1", "w2") for k, v in dense(src, f"{p}.mlp.{w}", w).items()},
        }

    return one


def _vitamin_vision(src: SourceKeys, v: ViTaminConfig) -> dict[str, np.ndarray]:
    """timm's ViTamin (a VisionTransformer over its MbConvStages backbone) and open_clip's linear head."""
    t, b = "visual.trunk", "visual.trunk.patch_embed.backbone"
    params = {
        **_conv(src, f"{b}.stem.conv1", "img/stem_conv1"),
        **layer_norm(src, f"{b}.stem.norm1", "img/stem_norm"),
        **_conv(src, f"{b}.stem.conv2", "img/stem_conv2"),
        **layer_norm(src, f"{b}.pool.norm", "img/pool_norm"),
        **_conv(src, f"{b}.pool.proj", "img/pool_conv"),
        **stack_layers(v.depth, _vitamin_block(src, f"{t}.blocks", v.heads), "img/blocks"),
        **layer_norm(src, f"{t}.fc_norm", "img/fc_norm"),
        **dense(src, "visual.head.proj", "img/proj", bias=v.proj_bias),
    }
    if v.pos_embed:
        params["img/pos_embed"] = src.take(f"{t}.pos_embed")
    channels = v.stem_width
    for s, (depth, dim) in enumerate(zip(v.depths, v.dims)):
        for d in range(depth):
            p, prefix = f"{b}.stages.{s}.{d}", f"img/stage_{s}_{d}"
            if channels != dim:  # the first block's shortcut: pooled then widened, or (stride 1) widened
                params.update(_conv(src, f"{p}.shortcut.expand" if d == 0 else f"{p}.shortcut", f"{prefix}/shortcut"))
            params.update(layer_norm(src, f"{p}.pre_norm", f"{prefix}/pre_norm"))
            for i, kind in enumerate(("conv1_1x1", "conv2_kxk", "conv3_1x1"), 1):
                params.update(_conv(src, f"{p}.{kind}", f"{prefix}/conv{i}"))
            channels = dim
    return params


def _conv_norm(src: SourceKeys, conv_name: str, bn_name: str, prefix: str) -> dict[str, np.ndarray]:
    """A bias-free Conv2d and its BatchNorm2d -> a ModifiedResNet ConvNorm; the running statistics go to
    the "batch_stats" collection (their num_batches_tracked counter is no parameter)."""
    return {
        f"{prefix}/conv/kernel": conv(src.take(f"{conv_name}.weight")),
        f"{prefix}/bn/scale": src.take(f"{bn_name}.weight"),
        f"{prefix}/bn/bias": src.take(f"{bn_name}.bias"),
        f"{BATCH_STATS}/{prefix}/bn/mean": src.take(f"{bn_name}.running_mean"),
        f"{BATCH_STATS}/{prefix}/bn/var": src.take(f"{bn_name}.running_var"),
    }


def _modified_resnet(src: SourceKeys, v: ModifiedResNetConfig) -> dict[str, np.ndarray]:
    """open_clip's (and OpenAI's) ModifiedResNet."""
    flat = {}
    for i in (1, 2, 3):
        flat.update(_conv_norm(src, f"visual.conv{i}", f"visual.bn{i}", f"img/stem{i}"))
    for stage, blocks in enumerate(v.layers):
        for block in range(blocks):
            p, ours = f"visual.layer{stage + 1}.{block}", f"img/stage{stage + 1}_block{block}"
            for i in (1, 2, 3):
                flat.update(_conv_norm(src, f"{p}.conv{i}", f"{p}.bn{i}", f"{ours}/conv{i}"))
            if f"{p}.downsample.0.weight" in src:
                flat.update(_conv_norm(src, f"{p}.downsample.0", f"{p}.downsample.1", f"{ours}/shortcut"))
    pool = "visual.attnpool"
    qkv = [(src.take(f"{pool}.{x}_proj.weight"), src.take(f"{pool}.{x}_proj.bias")) for x in "qkv"]
    out = attention_params(
        "img/attn_pool", *qkv, src.take(f"{pool}.c_proj.weight"), src.take(f"{pool}.c_proj.bias"), v.heads
    )
    return {**flat, **out, "img/attn_pool/pos_embed": src.take(f"{pool}.positional_embedding")}


# open_clip's HFTextEncoder keeps the HF model under text.transformer: BERT / RoBERTa / XLM-R layer names,
# or M2M100's encoder (NLLB). Each tuple: norm1, q, k, v, attention out, norm2, fc1, fc2.
BERT_LAYER = (
    "attention.output.LayerNorm",
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "output.LayerNorm",
    "intermediate.dense",
    "output.dense",
)
M2M100_LAYER = (
    "self_attn_layer_norm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "final_layer_norm",
    "fc1",
    "fc2",
)
# buffers of the HF text models that older transformers saved with the parameters
HF_TEXT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids", "embed_positions.weights")


def hf_encoder_layers(src: SourceKeys, name: str, heads: int, names: tuple) -> Callable[[int], dict[str, np.ndarray]]:
    """One HF encoder layer (separate q/k/v) -> one jaxvlm block (`Block` or hf_text's PostNormBlock)."""
    norm1, q, k, v, out, norm2, fc1, fc2 = names

    def one(i: int) -> dict[str, np.ndarray]:
        p = f"{name}.{i}"
        qkv = [(src.take(f"{p}.{x}.weight"), src.take(f"{p}.{x}.bias")) for x in (q, k, v)]
        return {
            **layer_norm(src, f"{p}.{norm1}", "norm1"),
            **attention_params("attn", *qkv, src.take(f"{p}.{out}.weight"), src.take(f"{p}.{out}.bias"), heads),
            **layer_norm(src, f"{p}.{norm2}", "norm2"),
            **dense(src, f"{p}.{fc1}", "mlp/fc1"),
            **dense(src, f"{p}.{fc2}", "mlp/fc2"),
        }

    return one


def hf_text_encoder(src: SourceKeys, t: HFTextConfig, p: str) -> dict[str, np.ndarray]:
    """The HF encoder under prefix ``p`` (BERT's or M2M100's key names, as ``t.post_norm`` says) -> txt/*."""
    for buffer in HF_TEXT_BUFFERS:
        if f"{p}{buffer}" in src:
            src.used.add(f"{p}{buffer}")
    if t.post_norm:  # BERT, RoBERTa, XLM-R
        e = f"{p}embeddings"
        params = {
            "txt/token_embed/embedding": src.take(f"{e}.word_embeddings.weight"),
            "txt/pos_embed": src.take(f"{e}.position_embeddings.weight"),
            **layer_norm(src, f"{e}.LayerNorm", "txt/embed_norm"),
            **stack_layers(t.depth, hf_encoder_layers(src, f"{p}encoder.layer", t.heads, BERT_LAYER), "txt/blocks"),
        }
        if t.type_vocab_size:
            params["txt/type_embed"] = src.take(f"{e}.token_type_embeddings.weight")
        if t.pool == "pooler":
            params.update(dense(src, f"{p}pooler.dense", "txt/pooler"))
        return params
    return {  # M2M100's encoder (NLLB): fixed positions, pre-LN layers, a final norm
        "txt/token_embed/embedding": src.take(f"{p}embed_tokens.weight"),
        **stack_layers(t.depth, hf_encoder_layers(src, f"{p}layers", t.heads, M2M100_LAYER), "txt/blocks"),
        **layer_norm(src, f"{p}layer_norm", "txt/final_norm"),
    }


def _hf_text(src: SourceKeys, t: HFTextConfig) -> dict[str, np.ndarray]:
    """open_clip's HFTextEncoder: the HF model under text.transformer, its projection under text.proj."""
    params = hf_text_encoder(src, t, "text.transformer.")
    if t.proj == "linear":
        params.update(dense(src, "text.proj", "txt/proj", bias=False))
    elif t.proj == "mlp":  # nn.Sequential(Linear, GELU, Linear)
        params.update(dense(src, "text.proj.0", "txt/proj_fc1", bias=False))
        params.update(dense(src, "text.proj.2", "txt/proj_fc2", bias=False))
    return params


# tower kind -> the converter of its open_clip weights ("visual.*" / "text.*" or top-level text keys)
IMAGE_TOWERS = {
    "vit": _vit,
    "eva_vit": _eva_vision,
    "convnext": _convnext_vision,
    "vitamin": _vitamin_vision,
    "modified_resnet": _modified_resnet,
    "fastvit": fastvit_variables,
}
TEXT_TOWERS = {"transformer": _text, "hf_encoder": _hf_text}


def convert_variables(
    weights: dict[str, np.ndarray], model: str | ModelConfig, what: str = "state dict"
) -> tuple[dict, dict]:
    """An open_clip state dict (numpy arrays) -> (parameter tree, BatchNorm statistics tree: empty for a
    model without BatchNorm) of ``model`` (an architecture name, or the config of an open_clip model
    built from its own arguments), every source key used and every shape checked."""
    cfg = model if isinstance(model, ModelConfig) else get_architecture(model).model
    weights = strip_prefix(weights, "module.")
    counters = tuple(k for k in weights if k.endswith(".num_batches_tracked"))
    src = SourceKeys(weights, what, ignore=NON_PARAMETERS + counters)
    vision = converter_for(IMAGE_TOWERS, cfg.vision, "open_clip")
    text = converter_for(TEXT_TOWERS, cfg.text, "open_clip")
    flat = {**vision(src, cfg.vision), **text(src, cfg.text), "t": src.take("logit_scale").reshape(())}
    if cfg.decoder is not None:
        flat.update(_decoder(src, cfg))
    if cfg.logit_bias_init is not None:
        flat["b"] = src.take("logit_bias").reshape(())
    src.check_all_used()
    prefix = f"{BATCH_STATS}/"
    stats = {k.removeprefix(prefix): flat.pop(k) for k in [k for k in flat if k.startswith(prefix)]}
    return check_params(cfg, flat, what), check_params(cfg, stats, what, BATCH_STATS)


def matching_form(cfg: ModelConfig, weights: dict[str, np.ndarray]) -> ModelConfig:
    """``cfg`` in the form ``weights`` ship in: a FastViT tower multi-branch or folded (`jaxvlm.convert.fastvit`)."""
    if cfg.vision.kind != "fastvit":
        return cfg
    return cfg.replace(vision=cfg.vision.replace(reparameterized=is_folded(weights)))


def convert_state_dict(weights: dict[str, np.ndarray], model: str | ModelConfig, what: str = "state dict") -> dict:
    """The parameter tree of `convert_variables` (a model with BatchNorm has statistics as well)."""
    return convert_variables(weights, model, what)[0]


# open_clip architectures whose weights-only hub repos (laion's RoBERTa / XLM-R ones) leave the tokenizer to
# their text_cfg's hf_tokenizer_name, which open_clip downloads: jaxvlm does too
HF_TOKENIZER_NAMES = {
    "roberta-ViT-B-32": "roberta-base",
    "xlm-roberta-base-ViT-B-32": "xlm-roberta-base",
    "xlm-roberta-large-ViT-H-14": "xlm-roberta-large",
    "nllb-clip-base": "facebook/nllb-200-distilled-600M",
    "nllb-clip-large": "facebook/nllb-200-distilled-1.3B",
    "nllb-clip-base-siglip": "facebook/nllb-200-distilled-600M",
    "nllb-clip-large-siglip": "facebook/nllb-200-distilled-1.3B",
}


def hf_hub_tokenizer(model_name: str, context_length: int) -> tuple[TokenizerConfig, Path]:
    """The tokenizer open_clip's get_tokenizer runs for ``model_name``: hf_tokenizer_name's, downloaded."""
    from jaxvlm.convert.open_clip_repo import _hub_tokenizer, tokenizer_from_open_clip

    text_cfg = {"hf_tokenizer_name": HF_TOKENIZER_NAMES[model_name], "context_length": context_length}
    folder = _hub_tokenizer(text_cfg["hf_tokenizer_name"], f"{model_name} text_cfg")
    return tokenizer_from_open_clip(folder, text_cfg, context_length, None, model_name)


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
    weights = read_weights(src_path)
    cfg = matching_form(arch.model, weights)
    params, batch_stats = convert_variables(weights, cfg, f"{src_path} as open_clip {model_name}")
    tokenizer, tokenizer_source = arch.tokenizer, tokenizer_path
    if tokenizer_source is None and arch.tokenizer.kind == "clip_bpe":
        tokenizer_source = CLIP_BPE_FILE
    elif tokenizer_source is None and model_name in HF_TOKENIZER_NAMES:
        tokenizer, tokenizer_source = hf_hub_tokenizer(model_name, arch.tokenizer.context_length)
    if tokenizer_source is None:
        raise InputError(
            f"{model_name} uses a tokenizer that open_clip downloads from the HF hub; pass its file with "
            "--tokenizer (the checkpoint's tokenizer.model / spiece.model; CLIPA: bert-base-uncased's tokenizer.json)"
        )
    return Converted(
        cfg,
        params,
        arch.preprocess,
        tokenizer,
        Path(tokenizer_source),
        {"source": "open_clip", "model": model_name, "weights": str(src_path)},
        batch_stats,
    )
