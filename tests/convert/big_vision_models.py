"""A big_vision SigLIP checkpoint without big_vision: HF's SiglipModel (the reference port of its
numerics) at small sizes, perturbed, written out by the big_vision <-> HF key correspondence."""

import numpy as np
import torch
import transformers

# Vision as the brief's small model; the text tower deliberately differs in width, depth, heads
# and MLP size so that inferring each from the shapes is tested.
SMALL = dict(
    vision=dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8
    ),
    text=dict(
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=96,
        vocab_size=1000,
        max_position_embeddings=12,
        projection_size=64,
    ),
)
# The registry's tiny-siglip: siglip(32, 8, 64, 2, 4, 256, context=16), vocab 32000.
TINY_SIGLIP = dict(
    vision=dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=32, patch_size=8
    ),
    text=dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        vocab_size=32000,
        max_position_embeddings=16,
        projection_size=64,
    ),
)


# ---------------------------------------------------------------- the reference and its npz


def hf_siglip(shapes, seed=0):
    torch.manual_seed(seed)
    common = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    special = dict(pad_token_id=1, eos_token_id=1, bos_token_id=None)  # SigLIP's vocab layout
    config = transformers.SiglipConfig(
        text_config={**shapes["text"], **common, **special}, vision_config={**shapes["vision"], **common}
    )
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():  # every tensor moves off its initial value, so swapped or missed ones show
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(0.02 * torch.randn_like(value))
        model.logit_scale.fill_(np.log(10.0) + 0.1)
        model.logit_bias.fill_(-10.0 + 0.3)
    return model.double()


def _attention(prefix, q, k, v, out, heads):
    """(weight, bias) pairs in torch layout -> big_vision MultiHeadDotProductAttention_0 arrays."""
    params = {}
    for name, (w, b) in (("query", q), ("key", k), ("value", v)):
        params[f"{prefix}/{name}/kernel"] = w.T.reshape(w.shape[1], heads, -1)
        params[f"{prefix}/{name}/bias"] = b.reshape(heads, -1)
    w, b = out
    params[f"{prefix}/out/kernel"] = w.T.reshape(heads, -1, w.shape[0])
    params[f"{prefix}/out/bias"] = b
    return params


def _block(sd, p, heads):
    """HF SiglipEncoderLayer `p` -> the arrays of one big_vision encoderblock (relative names)."""
    lin = lambda n: (sd[f"{p}.{n}.weight"], sd[f"{p}.{n}.bias"])  # noqa: E731
    return {
        "LayerNorm_0/scale": sd[f"{p}.layer_norm1.weight"],
        "LayerNorm_0/bias": sd[f"{p}.layer_norm1.bias"],
        **_attention(
            "MultiHeadDotProductAttention_0",
            lin("self_attn.q_proj"),
            lin("self_attn.k_proj"),
            lin("self_attn.v_proj"),
            lin("self_attn.out_proj"),
            heads,
        ),
        "LayerNorm_1/scale": sd[f"{p}.layer_norm2.weight"],
        "LayerNorm_1/bias": sd[f"{p}.layer_norm2.bias"],
        "MlpBlock_0/Dense_0/kernel": sd[f"{p}.mlp.fc1.weight"].T,
        "MlpBlock_0/Dense_0/bias": sd[f"{p}.mlp.fc1.bias"],
        "MlpBlock_0/Dense_1/kernel": sd[f"{p}.mlp.fc2.weight"].T,
        "MlpBlock_0/Dense_1/bias": sd[f"{p}.mlp.fc2.bias"],
    }


def _blocks(sd, hf_prefix, bv_prefix, depth, heads, stacked):
    layers = [_block(sd, f"{hf_prefix}.{i}", heads) for i in range(depth)]
    if stacked:
        return {f"{bv_prefix}/encoderblock/{k}": np.stack([layer[k] for layer in layers]) for k in layers[0]}
    return {f"{bv_prefix}/encoderblock_{i}/{k}": v for i, layer in enumerate(layers) for k, v in layer.items()}


def to_big_vision(model, *, stacked: bool, prefix: str = "", img_head=None) -> dict[str, np.ndarray]:
    """A SiglipModel's weights under big_vision's names, as a float32 npz would hold them."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    vc, tc = model.config.vision_config, model.config.text_config
    h = "vision_model.head"
    q, k, v = np.split(sd[f"{h}.attention.in_proj_weight"], 3)
    qb, kb, vb = np.split(sd[f"{h}.attention.in_proj_bias"], 3)
    out = {
        "img/embedding/kernel": sd["vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
        "img/embedding/bias": sd["vision_model.embeddings.patch_embedding.bias"],
        "img/pos_embedding": sd["vision_model.embeddings.position_embedding.weight"][None],
        **_blocks(
            sd, "vision_model.encoder.layers", "img/Transformer", vc.num_hidden_layers, vc.num_attention_heads, stacked
        ),
        "img/Transformer/encoder_norm/scale": sd["vision_model.post_layernorm.weight"],
        "img/Transformer/encoder_norm/bias": sd["vision_model.post_layernorm.bias"],
        "img/MAPHead_0/probe": sd[f"{h}.probe"],
        **_attention(
            "img/MAPHead_0/MultiHeadDotProductAttention_0",
            (q, qb),
            (k, kb),
            (v, vb),
            (sd[f"{h}.attention.out_proj.weight"], sd[f"{h}.attention.out_proj.bias"]),
            vc.num_attention_heads,
        ),
        "img/MAPHead_0/LayerNorm_0/scale": sd[f"{h}.layernorm.weight"],
        "img/MAPHead_0/LayerNorm_0/bias": sd[f"{h}.layernorm.bias"],
        "img/MAPHead_0/MlpBlock_0/Dense_0/kernel": sd[f"{h}.mlp.fc1.weight"].T,
        "img/MAPHead_0/MlpBlock_0/Dense_0/bias": sd[f"{h}.mlp.fc1.bias"],
        "img/MAPHead_0/MlpBlock_0/Dense_1/kernel": sd[f"{h}.mlp.fc2.weight"].T,
        "img/MAPHead_0/MlpBlock_0/Dense_1/bias": sd[f"{h}.mlp.fc2.bias"],
        "txt/Embed_0/embedding": sd["text_model.embeddings.token_embedding.weight"],
        "txt/pos_embedding": sd["text_model.embeddings.position_embedding.weight"][None],
        **_blocks(
            sd, "text_model.encoder.layers", "txt/Encoder_0", tc.num_hidden_layers, tc.num_attention_heads, stacked
        ),
        "txt/Encoder_0/encoder_norm/scale": sd["text_model.final_layer_norm.weight"],
        "txt/Encoder_0/encoder_norm/bias": sd["text_model.final_layer_norm.bias"],
        "txt/head/kernel": sd["text_model.head.weight"].T,
        "txt/head/bias": sd["text_model.head.bias"],
        "t": sd["logit_scale"],
        "b": sd["logit_bias"],
    }
    if img_head is not None:
        out["img/head/kernel"], out["img/head/bias"] = (x.astype(np.float32) for x in img_head)
    return {f"{prefix}{k}": np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def write_npz(path, arrays):
    np.savez(path, **arrays)
    return path
