"""big_vision SigLIP and SigLIP 2 (fixed resolution and NaFlex) `.npz` checkpoints -> jaxvlm.

big_vision (`models/proj/image_text/two_towers.py`) is flax too, so its kernels already have
our layouts (conv [p, p, 3, w], attention [w, heads, head_dim] / [heads, head_dim, w], dense
[in, out]) and LayerNorms already say `scale`; converting is renaming, stacking per-layer
blocks on a leading axis, and turning the [1]-shaped `t` / `b` into scalars. The names:

    img/embedding/{kernel,bias}                 patch embedding (a Conv with bias)
    img/pos_embedding                           [1, grid*grid, w], no class token
    img/Transformer/encoderblock_{i}/...        one block per layer, or
    img/Transformer/encoderblock/...            all layers stacked (a `scan=True` model)
        LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_1,
        MlpBlock_0/{Dense_0,Dense_1}
    img/Transformer/encoder_norm                final LayerNorm
    img/MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}
    img/head/{kernel,bias}                      only when the image tower has an out_dim
    txt/Embed_0/embedding, txt/pos_embedding    [vocab, w], [1, context, w]
    txt/Encoder_0/encoderblock(_{i})/..., txt/Encoder_0/encoder_norm
    txt/head/{kernel,bias}
    t, b                                        [1] each (b only with a sigmoid loss)

optionally all under `params/`. A NaFlex image tower (`models/proj/image_text/naflex_vit.py`) has the
same names with two other shapes: `img/embedding` is a Dense over flattened patches [p*p*3, w] (pixels in
(row, column, channel) order) and `img/pos_embedding` is the learned grid [g, g, w].

Some early text towers also hold `txt/Encoder_0/pos_embedding`
(a second position embedding added by mistake); big_vision's loader sums it into
`txt/pos_embedding`, and so does this converter.

With no `model_name` the architecture is read off the shapes. big_vision's numerics are flax
defaults: tanh-approximated GELU, LayerNorm eps 1e-6; the text tower is bidirectional and pools
its last position. SigLIP 2's checkpoints have SigLIP's layout (and a 256k vocabulary); what
differs is the text pre-processing, which follows the SentencePiece model (`TEXT_PRE_PROCESSING`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np

from jaxvlm.convert.common import Converted, SourceKeys, check_params, converter_for, read_weights, stack_layers
from jaxvlm.errors import InputError
from jaxvlm.models.config import ModelConfig
from jaxvlm.models.registry import SIGLIP_TOKENIZER_FILE, get_architecture
from jaxvlm.models.towers import NaFlexViTConfig, TransformerTextConfig, ViTConfig
from jaxvlm.preprocess import INCEPTION_MEAN, INCEPTION_STD, PreprocessConfig
from jaxvlm.tokenizers import TokenizerConfig

LN_EPS = 1e-6  # flax nn.LayerNorm's default, which big_vision never overrides
ACT = "gelu_tanh"  # flax nn.gelu defaults to approximate=True

# (big_vision name inside one encoder block, jaxvlm name inside one Block)
BLOCK = {
    "LayerNorm_0/scale": "norm1/scale",
    "LayerNorm_0/bias": "norm1/bias",
    **{
        f"MultiHeadDotProductAttention_0/{p}/{a}": f"attn/{p}/{a}"
        for p in ("query", "key", "value", "out")
        for a in ("kernel", "bias")
    },
    "LayerNorm_1/scale": "norm2/scale",
    "LayerNorm_1/bias": "norm2/bias",
    "MlpBlock_0/Dense_0/kernel": "mlp/fc1/kernel",
    "MlpBlock_0/Dense_0/bias": "mlp/fc1/bias",
    "MlpBlock_0/Dense_1/kernel": "mlp/fc2/kernel",
    "MlpBlock_0/Dense_1/bias": "mlp/fc2/bias",
}

MAP_HEAD = {
    "probe": "probe",
    **{
        f"MultiHeadDotProductAttention_0/{p}/{a}": f"attn/{p}/{a}"
        for p in ("query", "key", "value", "out")
        for a in ("kernel", "bias")
    },
    "LayerNorm_0/scale": "norm/scale",
    "LayerNorm_0/bias": "norm/bias",
    "MlpBlock_0/Dense_0/kernel": "mlp/fc1/kernel",
    "MlpBlock_0/Dense_0/bias": "mlp/fc1/bias",
    "MlpBlock_0/Dense_1/kernel": "mlp/fc2/kernel",
    "MlpBlock_0/Dense_1/bias": "mlp/fc2/bias",
}

# Where each tower keeps its encoder blocks and final norm.
IMG_ENCODER = "img/Transformer"
TXT_ENCODER = "txt/Encoder_0"
TXT_EXTRA_POSEMB = "txt/Encoder_0/pos_embedding"

TOKENIZER_HINT = (
    "big_vision checkpoints do not carry their tokenizer: pass its SentencePiece model with "
    "--tokenizer (SigLIP's English models use c4_en, gs://t5-data/vocabs/cc_en.32000/sentencepiece.model; "
    "the i18n ones mc4, gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model; "
    "SigLIP 2 Gemma's, gs://big_vision/gemma_tokenizer.model)"
)

# big_vision's text pre-processing, told apart by the SentencePiece model (both append the model's
# <eos> and keep it as the last token when truncating):
#   SigLIP's T5 vocabularies (c4_en, mc4: no <bos> piece): `tokenize(max_len, eos="sticky", pad_value=1)`,
#     run as HF's SiglipTokenizer runs it (texts canonicalised), padded with 1 (the <eos>);
#   SigLIP 2's Gemma vocabulary (<pad> 0, <eos> 1, <bos> 2): `lower|tok(length, model="gemma", bos="no",
#     eos="sticky")`, TensorFlow's ASCII-only lower case, then the model's own encode, padded with <pad>.
TEXT_PRE_PROCESSING = {
    "SigLIP's T5 vocabulary": {"clean": "canonicalize", "encode": "hf_siglip", "pad_id": 1},
    "SigLIP 2's Gemma vocabulary": {"clean": "ascii_lower", "encode": "plain", "pad_id": None},  # None: <pad>
}


# ---------------------------------------------------------------- reading and layout


def _without_params_prefix(weights: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """Drops the `params/` prefix of a saved train state; keys outside it stay (and so are unused)."""
    if not any(k.startswith("params/") for k in weights):
        return weights
    out = {}
    for k, v in weights.items():
        name = k.removeprefix("params/")
        if name in out:
            raise InputError(f"{what}: '{name}' is there both with and without the 'params/' prefix")
        out[name] = v
    return out


def _layout(weights: dict[str, np.ndarray], encoder: str) -> str:
    """'stacked' (scan: one encoderblock with a leading layer axis) or 'per_layer'."""
    return "stacked" if any(k.startswith(f"{encoder}/encoderblock/") for k in weights) else "per_layer"


def _depth(weights: dict[str, np.ndarray], encoder: str, layout: str, what: str) -> int:
    if layout == "stacked":
        key = f"{encoder}/encoderblock/LayerNorm_0/scale"
        shape = _shape(weights, key, what)
        if len(shape) != 2:
            raise InputError(f"{what}: stacked '{key}' has shape {shape}; expected [layers, width]")
        return shape[0]
    pattern = re.compile(re.escape(encoder) + r"/encoderblock_(\d+)/")
    indices = {int(m.group(1)) for k in weights if (m := pattern.match(k))}
    if not indices:
        raise InputError(
            f"{what}: no encoder blocks under '{encoder}/' (expected '{encoder}/encoderblock_0/...' "
            f"or '{encoder}/encoderblock/...') — is this a big_vision SigLIP checkpoint?"
        )
    return max(indices) + 1  # a gap shows up as a missing key when its block is read


def _shape(weights: dict[str, np.ndarray], key: str, what: str) -> tuple[int, ...]:
    if key not in weights:
        raise InputError(f"{what}: missing key '{key}' — is this a big_vision SigLIP checkpoint?")
    return tuple(int(d) for d in np.shape(weights[key]))


# ---------------------------------------------------------------- architecture from shapes


def infer_config(weights: dict[str, np.ndarray], what: str) -> ModelConfig:
    """A SigLIP ModelConfig with big_vision's numerics, sized by the checkpoint's own shapes."""

    def block_shape(encoder, name):
        layout = _layout(weights, encoder)
        block = "encoderblock" if layout == "stacked" else "encoderblock_0"
        shape = _shape(weights, f"{encoder}/{block}/{name}", what)
        return shape[1:] if layout == "stacked" else shape

    def tower(encoder):
        q = block_shape(encoder, "MultiHeadDotProductAttention_0/query/kernel")  # [w, heads, head_dim]
        mlp = block_shape(encoder, "MlpBlock_0/Dense_0/kernel")  # [w, mlp_dim]
        if len(q) != 3 or len(mlp) != 2:
            raise InputError(
                f"{what}: '{encoder}' attention kernels are {q}, MLP kernels {mlp}; expected "
                "[width, heads, head_dim] and [width, mlp_dim]"
            )
        return dict(depth=_depth(weights, encoder, _layout(weights, encoder), what), heads=q[1], mlp_dim=mlp[1])

    img_out = _shape(weights, "img/head/kernel", what)[-1] if "img/head/kernel" in weights else None
    patch = _shape(weights, "img/embedding/kernel", what)
    if len(patch) == 2 and img_out is None:
        vision = _naflex_vision(weights, patch, tower(IMG_ENCODER), what)
    else:
        vision = _fixed_vision(weights, patch, tower(IMG_ENCODER), img_out, what)

    vocab, text_width = _shape(weights, "txt/Embed_0/embedding", what)
    txt_pos = _shape(weights, "txt/pos_embedding", what)
    if len(txt_pos) != 3 or txt_pos[0] != 1:
        raise InputError(f"{what}: 'txt/pos_embedding' has shape {txt_pos}; expected [1, context_length, width]")
    txt_out = _shape(weights, "txt/head/kernel", what)[-1] if "txt/head/kernel" in weights else None
    text = TransformerTextConfig(
        vocab_size=vocab,
        context_length=txt_pos[1],
        width=text_width,
        **tower(TXT_ENCODER),
        act=ACT,
        ln_eps=LN_EPS,
        causal=False,
        pool="last",
        proj=txt_out is not None,
        proj_bias="txt/head/bias" in weights,
    )

    img_dim, txt_dim = img_out or vision.width, txt_out or text.width
    if img_dim != txt_dim:
        raise InputError(f"{what}: the image tower gives {img_dim}-d embeddings but the text tower {txt_dim}-d")
    sigmoid = "b" in weights  # LiT-style checkpoints (softmax loss) have no bias
    return ModelConfig(
        embed_dim=img_dim,
        vision=vision,
        text=text,
        loss="sigmoid" if sigmoid else "softmax",
        logit_scale_init=math.log(10.0),
        logit_bias_init=-10.0 if sigmoid else None,
    )


def _fixed_vision(weights: dict, patch: tuple, encoder: dict, img_out: int | None, what: str) -> ViTConfig:
    if len(patch) != 4 or patch[0] != patch[1] or patch[2] != 3:
        raise InputError(f"{what}: 'img/embedding/kernel' has shape {patch}; expected [p, p, 3, width]")
    width, p = patch[3], patch[0]
    pos = _shape(weights, "img/pos_embedding", what)
    grid = math.isqrt(pos[1]) if len(pos) == 3 else 0
    if len(pos) != 3 or pos[0] != 1 or grid * grid != pos[1]:
        raise InputError(f"{what}: 'img/pos_embedding' has shape {pos}; expected [1, grid*grid, width]")
    return ViTConfig(
        image_size=grid * p,
        patch_size=p,
        width=width,
        **encoder,
        act=ACT,
        ln_eps=LN_EPS,
        patch_bias="img/embedding/bias" in weights,
        class_token=False,
        pos_embed="learned",
        pre_norm=False,
        pool="map",
        proj=img_out is not None,
        proj_bias="img/head/bias" in weights,
    )


def _naflex_vision(weights: dict, patch: tuple, encoder: dict, what: str) -> NaFlexViTConfig:
    p = math.isqrt(patch[0] // 3)
    pos = _shape(weights, "img/pos_embedding", what)
    if 3 * p * p != patch[0] or len(pos) != 3 or pos[0] != pos[1] or pos[2] != patch[1]:
        raise InputError(
            f"{what}: NaFlex 'img/embedding/kernel' {patch} and 'img/pos_embedding' {pos}; expected "
            "[p*p*3, width] and [grid, grid, width]"
        )
    return NaFlexViTConfig(patch_size=p, width=patch[1], **encoder, act=ACT, ln_eps=LN_EPS, position_grid=pos[0])


def named_config(model_name: str) -> ModelConfig:
    """The registry architecture, with big_vision's tanh GELU in both towers."""
    cfg = get_architecture(model_name).model
    v = cfg.vision
    plain = v.kind == "vit" and not (v.pool != "map" or v.class_token or v.pre_norm or v.pos_embed != "learned")
    if not (plain or v.kind == "naflex_vit") or cfg.text.kind != "transformer":
        raise InputError(
            f"{model_name} is not a SigLIP architecture (a ViT with a MAP head, no class token); "
            "big_vision SigLIP checkpoints need one of the *-SigLIP models, or no --model at all"
        )
    return cfg.replace(vision=dataclasses.replace(cfg.vision, act=ACT), text=dataclasses.replace(cfg.text, act=ACT))


def _check_named(cfg: ModelConfig, weights: dict[str, np.ndarray], what: str) -> ModelConfig:
    """Names what differs between the named architecture and the checkpoint's shapes, when those read."""
    try:
        found = infer_config(weights, what)
    except InputError:
        return cfg  # not readable as a whole; the key accounting below names what is wrong
    v = cfg.vision
    if found.vision.kind != v.kind:
        raise InputError(f"{what}: the checkpoint holds a {found.vision.kind} image tower, the model a {v.kind}")
    if v.kind == "vit" and found.vision.image_size == v.image_size // v.patch_size * v.patch_size:
        # the shapes give the patch grid only: So400m/14 at 384 px has 27 x 27 patches, as at 378 px
        found = found.replace(vision=dataclasses.replace(found.vision, image_size=v.image_size))
    diffs = [f"embed_dim {found.embed_dim} (model: {cfg.embed_dim})"] if found.embed_dim != cfg.embed_dim else []
    for tower in ("vision", "text"):
        ours, theirs = getattr(found, tower), getattr(cfg, tower)
        diffs += [
            f"{tower}.{f.name} {getattr(ours, f.name)} (model: {getattr(theirs, f.name)})"
            for f in dataclasses.fields(ours)
            if getattr(ours, f.name) != getattr(theirs, f.name)
        ]
    if diffs:
        raise InputError(f"{what}: the checkpoint is not this architecture: {', '.join(diffs)}")
    return cfg


# ---------------------------------------------------------------- conversion


def _encoder(src: SourceKeys, encoder: str, depth: int, layout: str, prefix: str) -> dict[str, np.ndarray]:
    """Encoder blocks (per-layer or stacked) -> jaxvlm's stacked blocks under ``prefix``."""
    if layout == "stacked":
        return {f"{prefix}/{ours}": src.take(f"{encoder}/encoderblock/{theirs}") for theirs, ours in BLOCK.items()}
    return stack_layers(
        depth,
        lambda i: {ours: src.take(f"{encoder}/encoderblock_{i}/{theirs}") for theirs, ours in BLOCK.items()},
        prefix,
    )


def _norm(src: SourceKeys, name: str, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}/scale": src.take(f"{name}/scale"), f"{prefix}/bias": src.take(f"{name}/bias")}


def _dense(src: SourceKeys, name: str, prefix: str, bias: bool) -> dict[str, np.ndarray]:
    out = {f"{prefix}/kernel": src.take(f"{name}/kernel")}
    if bias:
        out[f"{prefix}/bias"] = src.take(f"{name}/bias")
    return out


def _scalar(src: SourceKeys, key: str, what: str) -> np.ndarray:
    value = src.take(key)
    if value.size != 1:
        raise InputError(f"{what}: '{key}' has shape {value.shape}; expected a single number")
    return value.reshape(())


def _vit(src: SourceKeys, v: ViTConfig, layout: str) -> dict[str, np.ndarray]:
    params = {"img/patch_embed/kernel": src.take("img/embedding/kernel")}
    if v.patch_bias:
        params["img/patch_embed/bias"] = src.take("img/embedding/bias")
    params["img/pos_embed"] = src.take("img/pos_embedding")
    params.update(_encoder(src, IMG_ENCODER, v.depth, layout, "img/encoder/blocks"))
    params.update(_norm(src, f"{IMG_ENCODER}/encoder_norm", "img/final_norm"))
    params.update({f"img/map_head/{ours}": src.take(f"img/MAPHead_0/{theirs}") for theirs, ours in MAP_HEAD.items()})
    if v.proj:
        params.update(_dense(src, "img/head", "img/proj", v.proj_bias))
    return params


def _text(src: SourceKeys, t: TransformerTextConfig, layout: str) -> dict[str, np.ndarray]:
    pos = src.take("txt/pos_embedding")
    if TXT_EXTRA_POSEMB in src:  # early checkpoints added a second posemb inside the encoder
        pos = pos + src.take(TXT_EXTRA_POSEMB)
    params = {"txt/token_embed/embedding": src.take("txt/Embed_0/embedding"), "txt/pos_embed": pos}
    params.update(_encoder(src, TXT_ENCODER, t.depth, layout, "txt/encoder/blocks"))
    params.update(_norm(src, f"{TXT_ENCODER}/encoder_norm", "txt/final_norm"))
    if t.proj:
        params.update(_dense(src, "txt/head", "txt/proj", t.proj_bias))
    return params


def _naflex_vit(src: SourceKeys, v: NaFlexViTConfig, layout: str) -> dict[str, np.ndarray]:
    """The fixed ViT's tables, the patch Dense stored as the patch kernel and the grid flattened."""
    p = v.patch_size
    params = {
        "img/patch_embed/kernel": src.take("img/embedding/kernel").reshape(p, p, 3, v.width),
        "img/patch_embed/bias": src.take("img/embedding/bias"),
        "img/pos_embed": src.take("img/pos_embedding").reshape(1, -1, v.width),
    }
    params.update(_encoder(src, IMG_ENCODER, v.depth, layout, "img/encoder/blocks"))
    params.update(_norm(src, f"{IMG_ENCODER}/encoder_norm", "img/final_norm"))
    params.update({f"img/map_head/{ours}": src.take(f"img/MAPHead_0/{theirs}") for theirs, ours in MAP_HEAD.items()})
    return params


# tower kind -> the converter of its big_vision weights ("img/..." / "txt/...")
IMAGE_TOWERS = {"vit": _vit, "naflex_vit": _naflex_vit}
TEXT_TOWERS = {"transformer": _text}


def converts(model: ModelConfig) -> bool:
    """Whether this converter writes both towers of ``model`` (`jaxvlm.pretrained.Pretrained.loads`)."""
    return model.vision.kind in IMAGE_TOWERS and model.text.kind in TEXT_TOWERS


def _vocabulary(sp) -> str:
    """The TEXT_PRE_PROCESSING entry of a SentencePiece model: Gemma's has a <bos> piece, T5's have none."""
    return "SigLIP 2's Gemma vocabulary" if sp.bos_id() >= 0 else "SigLIP's T5 vocabulary"


def _tokenizer(tokenizer_path: Path | None, cfg: ModelConfig, model_name: str | None) -> TokenizerConfig:
    """The text pre-processing big_vision trained with the tokenizer's vocabulary: SentencePiece ids +
    sticky EOS, cleaned, encoded and padded as TEXT_PRE_PROCESSING says."""
    if tokenizer_path is None:
        raise InputError(TOKENIZER_HINT)
    if not Path(tokenizer_path).is_file():
        raise InputError(f"no such tokenizer file: {tokenizer_path}")
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    except (OSError, RuntimeError) as e:
        raise InputError(f"{tokenizer_path} is not a SentencePiece model ({' '.join(str(e).split())[:200]})") from None
    if sp.eos_id() < 0:
        raise InputError(f"SentencePiece model {tokenizer_path} has no EOS piece, which SigLIP's text tower pools")
    if sp.get_piece_size() > cfg.text.vocab_size:
        raise InputError(
            f"SentencePiece model {tokenizer_path} has {sp.get_piece_size()} pieces but the text tower "
            f"embeds only {cfg.text.vocab_size} — the tokenizer belongs to another model"
        )
    vocabulary = _vocabulary(sp)
    rules = TEXT_PRE_PROCESSING[vocabulary]
    pad_id = int(sp.pad_id()) if rules["pad_id"] is None else rules["pad_id"]
    if pad_id < 0:
        raise InputError(f"SentencePiece model {tokenizer_path} ({vocabulary}) has no <pad> piece to pad texts with")
    trained_pad = get_architecture(model_name).tokenizer.pad_id if model_name else pad_id
    if trained_pad != pad_id:
        raise InputError(
            f"{model_name} was trained on texts padded with id {trained_pad}, but {tokenizer_path} is "
            f"{vocabulary}, whose texts big_vision pads with id {pad_id} — the tokenizer belongs to another model"
        )
    return TokenizerConfig(
        kind="sentencepiece",
        file=SIGLIP_TOKENIZER_FILE,
        context_length=cfg.text.context_length,
        clean=rules["clean"],
        pad_id=pad_id,
        eos_id=int(sp.eos_id()),
        encode=rules["encode"],
    )


def preprocess_config(vision: ViTConfig | NaFlexViTConfig) -> PreprocessConfig:
    """big_vision's `resize(size)|value_range(-1, 1)`: squash to size x size, then [-1, 1].

    big_vision resizes with TensorFlow's `tf.image.resize(method="bilinear")`, which does not
    antialias. Pillow's bilinear filter (used here) widens its kernel when it shrinks an image,
    so pixels are not bit-identical to big_vision's, and differ visibly for large downscales;
    the model's inputs are otherwise the same (mean = std = 0.5 is value_range(-1, 1)).
    """
    squash = PreprocessConfig(
        image_size=vision.image_size,
        resize_mode="squash",
        interpolation="bilinear",
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
    )
    if vision.kind != "naflex_vit":
        return squash
    # NaFlex: each image resized (bilinear) to fit the patch budget at its own aspect ratio
    return squash.replace(resize_mode="naflex", patch_size=vision.patch_size, max_num_patches=vision.max_num_patches)


def convert(src_path: Path, model_name: str | None, tokenizer_path: Path | None = None) -> Converted:
    what = f"{src_path} as big_vision" + (f" {model_name}" if model_name else "")
    named = named_config(model_name) if model_name else None
    weights = _without_params_prefix(read_weights(src_path), what)
    cfg = infer_config(weights, what) if named is None else _check_named(named, weights, what)
    tokenizer = _tokenizer(tokenizer_path, cfg, model_name)
    layouts = {"img": _layout(weights, IMG_ENCODER), "txt": _layout(weights, TXT_ENCODER)}
    src = SourceKeys(weights, what)
    vision = converter_for(IMAGE_TOWERS, cfg.vision, "big_vision")(src, cfg.vision, layouts["img"])
    text = converter_for(TEXT_TOWERS, cfg.text, "big_vision")(src, cfg.text, layouts["txt"])
    flat = {**vision, **text, "t": _scalar(src, "t", what)}
    if cfg.logit_bias_init is not None:
        flat["b"] = _scalar(src, "b", what)
    src.check_all_used()
    params = check_params(cfg, flat, what)
    layout = layouts["img"] if layouts["img"] == layouts["txt"] else f"img {layouts['img']}, txt {layouts['txt']}"
    provenance = {"source": "big_vision", "weights": str(src_path), "layout": layout}
    if model_name:
        provenance["model"] = model_name
    return Converted(cfg, params, preprocess_config(cfg.vision), tokenizer, Path(tokenizer_path), provenance)
