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

# the special ids of each vocabulary, for HF's text config
SIGLIP_SPECIAL = dict(pad_token_id=1, eos_token_id=1, bos_token_id=None)  # SigLIP's T5 vocab layout
GEMMA_SPECIAL = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)  # SigLIP 2's

# ---------------------------------------------------------------- the reference and its npz


def hf_siglip(shapes, seed=0, special=None):
    torch.manual_seed(seed)
    common = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    config = transformers.SiglipConfig(
        text_config={**shapes["text"], **common, **(special or SIGLIP_SPECIAL)},
        vision_config={**shapes["vision"], **common},
    )
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():  # every tensor moves off its initial value, so swapped or missed ones show
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(0.02 * torch.randn_like(value))
        model.logit_scale.fill_(np.log(10.0) + 0.1)
        model.logit_bias.fill_(-10.0 + 0.3)
    return model.double()


def hf_siglip2_naflex(shapes, seed=0):
    """``hf_siglip``'s towers as a Siglip2Model: the image tower NaFlex, its learned positions the
    (image_size / patch_size)^2 grid."""
    torch.manual_seed(seed)
    common = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    vision = {k: v for k, v in shapes["vision"].items() if k != "image_size"}
    vision["num_patches"] = (shapes["vision"]["image_size"] // vision["patch_size"]) ** 2
    config = transformers.Siglip2Config(
        text_config={**shapes["text"], **common, **GEMMA_SPECIAL}, vision_config={**vision, **common}
    )
    model = transformers.Siglip2Model(config).eval()
    with torch.no_grad():
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
    """A SiglipModel's weights under big_vision's names, as a float32 npz would hold them; a Siglip2Model's
    as big_vision's NaFlex ViT holds them (a Dense over flattened patches, a [g, g, w] position grid)."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    vc, tc = model.config.vision_config, model.config.text_config
    h = "vision_model.head"
    patch = sd["vision_model.embeddings.patch_embedding.weight"]
    pos = sd["vision_model.embeddings.position_embedding.weight"]
    naflex = patch.ndim == 2
    grid = round(len(pos) ** 0.5)
    q, k, v = np.split(sd[f"{h}.attention.in_proj_weight"], 3)
    qb, kb, vb = np.split(sd[f"{h}.attention.in_proj_bias"], 3)
    out = {
        "img/embedding/kernel": patch.T if naflex else patch.transpose(2, 3, 1, 0),
        "img/embedding/bias": sd["vision_model.embeddings.patch_embedding.bias"],
        "img/pos_embedding": pos.reshape(grid, grid, -1) if naflex else pos[None],
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


# ---------------------------------------------------------------- SigLIP 2: Gemma's vocabulary

# SMALL's towers (the text tower narrower than the image one and projected to its width, as g-opt's So400m
# text tower is) over a vocabulary that holds gemma_spm's pieces
SIGLIP2_SMALL = dict(vision=SMALL["vision"], text={**SMALL["text"], "vocab_size": 640, "max_position_embeddings": 16})


def gemma_spm(directory, vocab_size=600):
    """A tiny SentencePiece model trained here as Gemma's is laid out (gs://big_vision/gemma_tokenizer.model):
    BPE with byte fallback, no dummy prefix, no normalisation, whitespace kept, digits split, <pad> 0,
    <eos> 1, <bos> 2, <unk> 3 and user-defined pieces, over a corpus with capitals, punctuation and
    non-ASCII letters (so that lower-casing and punctuation change the ids)."""
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    syllables = "ka to ri mo su ne pa lu shi ve an or ing the cat dog sky red blu ph x qu zz zü éc ωa жи".split()
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(1500)]
    words = [w.upper() if rng.random() < 0.1 else w.capitalize() if rng.random() < 0.2 else w for w in words]
    marks = ["", "", "", ",", ".", "!", '"', "'s", " 1984", " 42"]
    corpus = directory / "corpus.txt"
    corpus.write_text(
        "\n".join(
            " ".join(w + rng.choice(marks) for w in rng.choices(words, k=rng.randint(3, 12))) for _ in range(3000)
        )
    )
    pieces = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "gemma"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        user_defined_symbols=["<mask>", "<start_of_turn>"],
        minloglevel=2,
        **{f"{name}_id": i for name, i in pieces.items()},
        **{f"{name}_piece": f"<{name}>" for name in pieces},
    )
    return directory / "gemma.model"


def big_vision_gemma_tokens(spm_file, texts, length):
    """big_vision's SigLIP 2 text pre-processing (SigLIP2_demo.ipynb:
    `lower(key="text")|tok(length=L, model="gemma", bos="no", eos="sticky", key="text")`), op by op from
    big_vision's sources, as big_vision (which needs TensorFlow) is not installed here: `lower` is
    tf.strings.lower, which with its default encoding lowers ASCII bytes only; `tok` is the tokenizer's
    `to_int(bos=False, eos=True)` (SentencePiece's EncodeAsIds, then the <eos> id), then `tolen` with a sticky
    end: `length` or more ids keep the first length - 1 and the last, fewer are padded with the <pad> id."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_file))
    rows = []
    for text in texts:
        lowered = bytes(b + 32 if 65 <= b <= 90 else b for b in text.encode("utf-8")).decode("utf-8")
        ids = sp.EncodeAsIds(lowered) + [sp.eos_id()]
        rows.append(ids[: length - 1] + ids[-1:] if len(ids) >= length else ids + [sp.pad_id()] * (length - len(ids)))
    return np.array(rows, np.int32)


# ---------------------------------------------------------------- full-size shapes

# big_vision's ViT variants (models/vit.py decode_variant): width, depth, mlp_dim, heads
VARIANTS = {
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "g-opt": (1536, 40, 6144, 16),
}


def _attention_shapes(prefix, width, heads):
    head_dim = width // heads
    shapes = {f"{prefix}/{n}/kernel": (width, heads, head_dim) for n in ("query", "key", "value")}
    shapes |= {f"{prefix}/{n}/bias": (heads, head_dim) for n in ("query", "key", "value")}
    return shapes | {f"{prefix}/out/kernel": (heads, head_dim, width), f"{prefix}/out/bias": (width,)}


def _mlp_shapes(prefix, width, mlp):
    return {
        f"{prefix}/Dense_0/kernel": (width, mlp),
        f"{prefix}/Dense_0/bias": (mlp,),
        f"{prefix}/Dense_1/kernel": (mlp, width),
        f"{prefix}/Dense_1/bias": (width,),
    }


def _norm_shapes(prefix, width):
    return {f"{prefix}/scale": (width,), f"{prefix}/bias": (width,)}


def _encoder_shapes(prefix, variant):
    """A scan=True encoder (`encoderblock` stacked on a leading layer axis) and its final norm."""
    width, depth, mlp, heads = VARIANTS[variant]
    block = {
        **_norm_shapes("LayerNorm_0", width),
        **_attention_shapes("MultiHeadDotProductAttention_0", width, heads),
        **_norm_shapes("LayerNorm_1", width),
        **_mlp_shapes("MlpBlock_0", width, mlp),
    }
    stacked = {f"{prefix}/encoderblock/{k}": (depth, *s) for k, s in block.items()}
    return stacked | _norm_shapes(f"{prefix}/encoder_norm", width)


def siglip2_shapes(image_variant, patch, res, text_variant, vocab=256000, context=64):
    """{key: shape} of a SigLIP 2 two-tower checkpoint as SigLIP2_demo.ipynb builds it (scan=True, MAP head,
    out_dim=[None, image width]: no image head, the text head projects to the image width)."""
    width, _, mlp, heads = VARIANTS[image_variant]
    text_width = VARIANTS[text_variant][0]
    grid = res // patch
    image = {
        "img/embedding/kernel": (patch, patch, 3, width),
        "img/embedding/bias": (width,),
        "img/pos_embedding": (1, grid * grid, width),
        **_encoder_shapes("img/Transformer", image_variant),
        "img/MAPHead_0/probe": (1, 1, width),
        **_attention_shapes("img/MAPHead_0/MultiHeadDotProductAttention_0", width, heads),
        **_norm_shapes("img/MAPHead_0/LayerNorm_0", width),
        **_mlp_shapes("img/MAPHead_0/MlpBlock_0", width, mlp),
    }
    text = {
        "txt/Embed_0/embedding": (vocab, text_width),
        "txt/pos_embedding": (1, context, text_width),
        **_encoder_shapes("txt/Encoder_0", text_variant),
        "txt/head/kernel": (text_width, width),
        "txt/head/bias": (width,),
    }
    return {**image, **text, "t": (1,), "b": (1,)}
