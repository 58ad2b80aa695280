"""jaxvlm model directory -> HF transformers repo: `CLIPModel` or `SiglipModel`, the inverse of
`jaxvlm.convert.hf`.

The family comes from the config: a softmax-loss model is a CLIPModel, a sigmoid-loss one a
SiglipModel, and every other field must then be what that class computes (`LAYOUTS`): CLIP's
class token, pre-LN, causal text pooled where HF pools it, bias-free projections; SigLIP's MAP head,
patch bias, bidirectional text pooled at the last position, biased text head, logit bias. A model
neither class can compute (CoCa, other tower kinds, other pooling, ...) is refused with one line.

Written files:
- config.json: the full text_config / vision_config. HF CLIP pools the text at the argmax of the
  ids when text eos_token_id is 2 (its legacy rule) and at the first eos_token_id otherwise, so
  jaxvlm's pool "argmax" is written as eos_token_id 2 and pool "eos" as its eos_id.
- model.safetensors: float32 tensors under transformers' names (`weight_table`).
- the tokenizer: CLIP BPE as vocab.json + merges.txt (CLIPTokenizer), a SentencePiece model as
  spiece.model (SiglipTokenizer), a tokenizer.json as it is (PreTrainedTokenizerFast), each with
  tokenizer_config.json naming its special tokens, the padding token and model_max_length.
  jaxvlm's text towers never mask padding, so a bidirectional tower's tokenizer is told to return
  no attention_mask (`model_input_names`): HF would otherwise mask the padding jaxvlm attends to.
- preprocessor_config.json: shortest-side resize + centre crop as CLIPImageProcessor, a square
  resize as the family's own processor; bicubic or bilinear, /255, mean/std.

What transformers' own code does differently, on inputs no test caption or photo needs (the
converter accepts the same differences in the other direction):
- jaxvlm's "lower" / "canonicalize" / "whitespace" cleaning runs ftfy and unescapes HTML entities
  first; transformers' tokenizers do neither, so mojibake, curly quotes, ligatures, full-width
  characters and "&amp;" can tokenize differently. "canonicalize" also turns "_" into a space,
  where SiglipTokenizer drops it. CLIP's special tokens are spelt "<|startoftext|>" /
  "<|endoftext|>" in transformers and "<start_of_text>" / "<end_of_text>" in jaxvlm (and open_clip):
  a caption holding one of these literally is split differently.
- HF's centre crop offset is floor((size - crop) / 2), jaxvlm's (torchvision's) round-half-even:
  they differ by one pixel when size - crop is 3 mod 4. HF converts to RGB before resizing,
  jaxvlm after the crop (as open_clip): the same for RGB images.
- HF's default image processors are the torchvision ones (`backend="pil"` gives the PIL ones, which
  this file describes); they differ by up to ~0.015 per pixel.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import numpy as np

from jaxvlm.convert.common import check_params
from jaxvlm.convert.hf import ACTIVATIONS, MODEL_CLASSES, RESAMPLE
from jaxvlm.errors import InputError
from jaxvlm.model_dir import ModelDir
from jaxvlm.models.config import ModelConfig
from jaxvlm.tokenizers import ClipBpeTokenizer, Tokenizer, TokenizerConfig, build_tokenizer

FAMILIES = {"softmax": "clip", "sigmoid": "siglip"}  # ModelConfig.loss -> HF model_type

# jaxvlm act -> HF hidden_act: the first HF name of each (gelu_pytorch_tanh, not gelu_new)
HF_ACTIVATIONS = {act: name for name, act in reversed(ACTIVATIONS.items())}
HF_RESAMPLE = {name: value for value, name in RESAMPLE.items()}

# What each HF class computes, as jaxvlm config fields; a model exports only when its towers have these.
LAYOUTS = {
    "clip": {
        "vision": {
            "kind": "vit",
            "pos_embed": "learned",
            "patch_bias": False,
            "class_token": True,
            "pre_norm": True,
            "pool": "cls",
            "proj": True,
            "proj_bias": False,
        },
        "text": {
            "kind": "transformer",
            "causal": True,
            "append_cls": False,
            "pad_mask": "none",
            "proj": True,
            "proj_bias": False,
        },
    },
    "siglip": {
        "vision": {
            "kind": "vit",
            "pos_embed": "learned",
            "patch_bias": True,
            "class_token": False,
            "pre_norm": False,
            "pool": "map",
            "proj": False,
        },
        "text": {
            "kind": "transformer",
            "causal": False,
            "append_cls": False,
            "pad_mask": "none",
            "pool": "last",
            "proj": True,
            "proj_bias": True,
        },
    },
}
CLIP_TEXT_POOLS = ("argmax", "eos")  # HF's two rules, told apart by eos_token_id == 2
CLIP_LEGACY_EOS = 2

# HF (sub-)config field -> jaxvlm tower field
TOWER_FIELDS = {
    "hidden_size": "width",
    "intermediate_size": "mlp_dim",
    "num_hidden_layers": "depth",
    "num_attention_heads": "heads",
    "layer_norm_eps": "ln_eps",
}
TEXT_FIELDS = {**TOWER_FIELDS, "vocab_size": "vocab_size", "max_position_embeddings": "context_length"}
VISION_FIELDS = {**TOWER_FIELDS, "image_size": "image_size", "patch_size": "patch_size"}

# ---------------------------------------------------------------- weight tables
# One row per transformers tensor: (its name, the jaxvlm param(s) it is made of, the transform that
# undoes jaxvlm.convert.common's). Several params are transformed each and concatenated (torch's
# packed q/k/v). Block rows repeat for every layer of an encoder, on that layer of each param.

TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda a: a,
    "flat": lambda a: a.reshape(-1),  # per-head bias [heads, head_dim], class token [1, 1, W]
    "unbatch": lambda a: a[0],  # position table [1, N, W]
    "linear": lambda a: a.T,  # flax kernel [in, out] -> torch Linear [out, in]
    "conv": lambda a: a.transpose(3, 2, 0, 1),  # [kh, kw, in, out] -> torch Conv2d [out, in, kh, kw]
    "heads_in": lambda a: a.reshape(a.shape[0], -1).T,  # [in, heads, head_dim] -> [out, in]
    "heads_out": lambda a: a.reshape(-1, a.shape[-1]).T,  # [heads, head_dim, out] -> [out, in]
    "scalar": lambda a: a.reshape(()),  # CLIPModel's logit_scale
    "scalar_1": lambda a: a.reshape(1),  # SiglipModel's logit_scale / logit_bias
}

BLOCK = (
    ("layer_norm1.weight", "norm1/scale", "copy"),
    ("layer_norm1.bias", "norm1/bias", "copy"),
    ("self_attn.q_proj.weight", "attn/query/kernel", "heads_in"),
    ("self_attn.q_proj.bias", "attn/query/bias", "flat"),
    ("self_attn.k_proj.weight", "attn/key/kernel", "heads_in"),
    ("self_attn.k_proj.bias", "attn/key/bias", "flat"),
    ("self_attn.v_proj.weight", "attn/value/kernel", "heads_in"),
    ("self_attn.v_proj.bias", "attn/value/bias", "flat"),
    ("self_attn.out_proj.weight", "attn/out/kernel", "heads_out"),
    ("self_attn.out_proj.bias", "attn/out/bias", "copy"),
    ("layer_norm2.weight", "norm2/scale", "copy"),
    ("layer_norm2.bias", "norm2/bias", "copy"),
    ("mlp.fc1.weight", "mlp/fc1/kernel", "linear"),
    ("mlp.fc1.bias", "mlp/fc1/bias", "copy"),
    ("mlp.fc2.weight", "mlp/fc2/kernel", "linear"),
    ("mlp.fc2.bias", "mlp/fc2/bias", "copy"),
)
ENCODERS = (("vision_model.encoder.layers", "img/encoder/blocks"), ("text_model.encoder.layers", "txt/encoder/blocks"))

TEXT = (
    ("text_model.embeddings.token_embedding.weight", "txt/token_embed/embedding", "copy"),
    ("text_model.embeddings.position_embedding.weight", "txt/pos_embed", "unbatch"),
    ("text_model.final_layer_norm.weight", "txt/final_norm/scale", "copy"),
    ("text_model.final_layer_norm.bias", "txt/final_norm/bias", "copy"),
)

_MAP = "img/map_head/attn"
WEIGHTS = {
    "clip": (
        ("vision_model.embeddings.patch_embedding.weight", "img/patch_embed/kernel", "conv"),
        ("vision_model.embeddings.class_embedding", "img/cls", "flat"),
        ("vision_model.embeddings.position_embedding.weight", "img/pos_embed", "unbatch"),
        ("vision_model.pre_layrnorm.weight", "img/pre_norm/scale", "copy"),
        ("vision_model.pre_layrnorm.bias", "img/pre_norm/bias", "copy"),
        ("vision_model.post_layernorm.weight", "img/final_norm/scale", "copy"),
        ("vision_model.post_layernorm.bias", "img/final_norm/bias", "copy"),
        ("visual_projection.weight", "img/proj/kernel", "linear"),
        *TEXT,
        ("text_projection.weight", "txt/proj/kernel", "linear"),
        ("logit_scale", "t", "scalar"),
    ),
    "siglip": (
        ("vision_model.embeddings.patch_embedding.weight", "img/patch_embed/kernel", "conv"),
        ("vision_model.embeddings.patch_embedding.bias", "img/patch_embed/bias", "copy"),
        ("vision_model.embeddings.position_embedding.weight", "img/pos_embed", "unbatch"),
        ("vision_model.post_layernorm.weight", "img/final_norm/scale", "copy"),
        ("vision_model.post_layernorm.bias", "img/final_norm/bias", "copy"),
        ("vision_model.head.probe", "img/map_head/probe", "copy"),
        (
            "vision_model.head.attention.in_proj_weight",
            (f"{_MAP}/query/kernel", f"{_MAP}/key/kernel", f"{_MAP}/value/kernel"),
            "heads_in",
        ),
        (
            "vision_model.head.attention.in_proj_bias",
            (f"{_MAP}/query/bias", f"{_MAP}/key/bias", f"{_MAP}/value/bias"),
            "flat",
        ),
        ("vision_model.head.attention.out_proj.weight", f"{_MAP}/out/kernel", "heads_out"),
        ("vision_model.head.attention.out_proj.bias", f"{_MAP}/out/bias", "copy"),
        ("vision_model.head.layernorm.weight", "img/map_head/norm/scale", "copy"),
        ("vision_model.head.layernorm.bias", "img/map_head/norm/bias", "copy"),
        ("vision_model.head.mlp.fc1.weight", "img/map_head/mlp/fc1/kernel", "linear"),
        ("vision_model.head.mlp.fc1.bias", "img/map_head/mlp/fc1/bias", "copy"),
        ("vision_model.head.mlp.fc2.weight", "img/map_head/mlp/fc2/kernel", "linear"),
        ("vision_model.head.mlp.fc2.bias", "img/map_head/mlp/fc2/bias", "copy"),
        *TEXT,
        ("text_model.head.weight", "txt/proj/kernel", "linear"),
        ("text_model.head.bias", "txt/proj/bias", "copy"),
        ("logit_scale", "t", "scalar_1"),
        ("logit_bias", "b", "scalar_1"),
    ),
}

# ---------------------------------------------------------------- tokenizers
CLIP_SPECIALS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # jaxvlm -> HF spelling
CLIP_MERGES_HEADER = "#version: 0.2"
# The cleaning each kind's transformers tokenizer does itself (see the module docstring for where
# ftfy / HTML unescaping make jaxvlm's differ): CLIPTokenizer lower-cases and collapses whitespace,
# SiglipTokenizer lower-cases and drops punctuation whatever jaxvlm cleaned first, a tokenizer.json
# runs its own normaliser only.
CLEANS = {
    "clip_bpe": ("lower",),
    "sentencepiece": ("canonicalize", "lower", "whitespace", "none"),
    "hf_json": ("none",),
}
TOKENIZER_CLASSES = {
    "clip_bpe": "CLIPTokenizer",
    "sentencepiece": "SiglipTokenizer",
    "hf_json": "PreTrainedTokenizerFast",
}
PROCESSOR_CLASSES = {"clip": "CLIPImageProcessor", "siglip": "SiglipImageProcessor"}


def family(cfg: ModelConfig) -> str:
    """The family ("clip" or "siglip") whose transformers class computes ``cfg``; an InputError naming
    the first thing neither class can compute."""
    if cfg.decoder is not None:
        raise InputError("a CoCa model (caption decoder): transformers' CLIPModel and SiglipModel have no decoder")
    name = FAMILIES[cfg.loss]
    hf_class = MODEL_CLASSES[name]
    for where, tower in (("vision", cfg.vision), ("text", cfg.text)):
        wrong = [
            f"{where}.{field} {getattr(tower, field, None)!r} (needs {value!r})"
            for field, value in LAYOUTS[name][where].items()
            if getattr(tower, field, None) != value
        ]
        if wrong:
            raise InputError(f"{cfg.loss}-loss model with {'; '.join(wrong)}: not expressible as {hf_class}")
        if tower.act not in HF_ACTIVATIONS:
            raise InputError(f"{where}.act {tower.act!r} has no transformers hidden_act")
    if name == "clip":
        text = cfg.text
        if text.pool not in CLIP_TEXT_POOLS or (text.pool == "eos" and text.eos_id == CLIP_LEGACY_EOS):
            raise InputError(
                f"text.pool {text.pool!r}{f' at id {text.eos_id}' if text.pool == 'eos' else ''}: CLIPModel pools "
                f"at the argmax of the ids or at the first eos_token_id other than {CLIP_LEGACY_EOS}"
            )
        if cfg.logit_bias_init is not None:
            raise InputError("a logit bias b: CLIPModel's logits have none")
    elif cfg.logit_bias_init is None:
        raise InputError("a sigmoid-loss model without a logit bias b: SiglipModel always adds one")
    return name


# ---------------------------------------------------------------- config.json


def _sub_config(tower: Any, fields: dict[str, str]) -> dict:
    return {hf: getattr(tower, mine) for hf, mine in fields.items()} | {"hidden_act": HF_ACTIVATIONS[tower.act]}


def hf_config(cfg: ModelConfig, name: str, tokenizer: Tokenizer, pad_id: int) -> dict:
    """The transformers config.json of ``cfg`` (family ``name``), with the tokenizer's special ids
    (``pad_id``: the one transformers pads with)."""
    text = _sub_config(cfg.text, TEXT_FIELDS) | {
        "model_type": f"{name}_text_model",
        "pad_token_id": pad_id,
        "bos_token_id": getattr(tokenizer, "sot_id", None),
        "eos_token_id": getattr(tokenizer, "eot_id", getattr(tokenizer, "eos_id", None)),
    }
    vision = _sub_config(cfg.vision, VISION_FIELDS) | {"model_type": f"{name}_vision_model", "num_channels": 3}
    top = {"architectures": [MODEL_CLASSES[name]], "model_type": name, "dtype": "float32", "initializer_factor": 1.0}
    if name == "clip":
        text["eos_token_id"] = CLIP_LEGACY_EOS if cfg.text.pool == "argmax" else cfg.text.eos_id
        text["projection_dim"] = vision["projection_dim"] = cfg.embed_dim
        top |= {"projection_dim": cfg.embed_dim, "logit_scale_init_value": cfg.logit_scale_init}
    else:
        text["projection_size"] = cfg.embed_dim
        vision["vision_use_head"] = True
    return top | {"text_config": text, "vision_config": vision}


# ---------------------------------------------------------------- model.safetensors


def weight_table(name: str, cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], str, int | None]]:
    """(HF name, jaxvlm params, transform, layer or None) for every tensor of family ``name``."""
    rows = [(hf, (mine,) if isinstance(mine, str) else mine, how, None) for hf, mine, how in WEIGHTS[name]]
    for (hf_prefix, prefix), tower in zip(ENCODERS, (cfg.vision, cfg.text), strict=True):
        for i in range(tower.depth):
            rows += [(f"{hf_prefix}.{i}.{hf}", (f"{prefix}/{mine}",), how, i) for hf, mine, how in BLOCK]
    return rows


def hf_weights(name: str, cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """jaxvlm params (nested) -> transformers' state dict, every param used."""
    flat = flax.traverse_util.flatten_dict(check_params(cfg, _flat(params), "the model's weights"), sep="/")
    out, used = {}, set()
    for hf, mine, how, layer in weight_table(name, cfg):
        parts = [TRANSFORMS[how](flat[k] if layer is None else flat[k][layer]) for k in mine]
        out[hf] = np.array(np.concatenate(parts) if len(parts) > 1 else parts[0], np.float32, order="C")
        used.update(mine)
    unused = sorted(set(flat) - used)
    if unused:  # check_params matched the tree to the config, so a table misses these
        raise AssertionError(f"exporter bug: params {unused[:5]} have no transformers name")
    return out


def _flat(params: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}


# ---------------------------------------------------------------- tokenizer files


def _clip_bpe_files(tok: ClipBpeTokenizer, path: Path, out: Path) -> tuple[dict[str, str], list[str], list[int]]:
    # the vocabulary and merge ranks ClipBpeTokenizer built from its file, specials in transformers' spelling
    tokens = [CLIP_SPECIALS.get(t, t) for t in tok._tokens]
    vocab = json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False)
    (out / "vocab.json").write_text(vocab + "\n", encoding="utf-8")
    merges = sorted(tok._ranks, key=tok._ranks.__getitem__)
    (out / "merges.txt").write_text("\n".join([CLIP_MERGES_HEADER, *map(" ".join, merges)]) + "\n", encoding="utf-8")
    start, end = tokens[tok.sot_id], tokens[tok.eot_id]
    return {"bos_token": start, "eos_token": end, "unk_token": end}, tokens, [tok.sot_id, tok.eot_id]


def _sentencepiece_files(tok: Any, path: Path, out: Path) -> tuple[dict[str, str], list[str], list[int]]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))  # build_tokenizer has read it already
    if tok.eos_id is None:
        raise InputError(f"{path} has no end token: SiglipTokenizer appends one to every text")
    shutil.copyfile(path, out / "spiece.model")
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    special = [i for i in range(len(pieces)) if sp.is_control(i) or sp.is_unknown(i)]
    tokens = {"eos_token": pieces[tok.eos_id], "unk_token": pieces[sp.unk_id()], "do_lower_case": True}
    return tokens, pieces, special


def _hf_json_files(tok: Any, path: Path, out: Path) -> tuple[dict[str, str], list[str], list[int]]:
    from tokenizers import Tokenizer as Backend

    backend = Backend.from_file(str(path))  # build_tokenizer has read it already
    shutil.copyfile(path, out / "tokenizer.json")
    tokens = [backend.id_to_token(i) for i in range(backend.get_vocab_size(with_added_tokens=True))]
    return {}, tokens, [i for i, t in backend.get_added_tokens_decoder().items() if t.special]


TOKENIZER_FILES = {"clip_bpe": _clip_bpe_files, "sentencepiece": _sentencepiece_files, "hf_json": _hf_json_files}
END_IDS = {"clip_bpe": "eot_id", "sentencepiece": "eos_id"}  # the token every text ends with


def padding_is_inert(text: Any, pad_id: int, end_id: int) -> bool:
    """Whether padding with the end token instead of ``pad_id`` leaves every pooled text feature as it
    is: true for a causal tower pooled at or before the end token, which never reads what follows."""
    if not text.causal:
        return False
    if text.pool == "argmax":  # the first largest id: the end token or before it, unless a pad is larger
        return pad_id <= end_id
    if text.pool == "eos":  # the first eos_id: the end token, or a text token, unless the pads are eos_id
        return text.eos_id == end_id or text.eos_id != pad_id
    return text.pool == "first"


def write_tokenizer(cfg: TokenizerConfig, source: Path, out: Path, text: Any) -> tuple[Tokenizer, int]:
    """The tokenizer's files for transformers' AutoTokenizer, for the text tower ``text``; returns the
    jaxvlm tokenizer and the id transformers pads with.

    transformers pads with a token it also splits out of every text, so an ordinary token (CLIP BPE's
    "!", id 0, which open_clip pads with) cannot pad there without changing other texts' ids. Where
    the model cannot tell, transformers pads with the end token instead; elsewhere that is refused.
    """
    if cfg.clean not in CLEANS[cfg.kind]:
        raise InputError(
            f"tokenizer clean {cfg.clean!r}: transformers' {TOKENIZER_CLASSES[cfg.kind]} cleans text as "
            f"{' / '.join(repr(c) for c in CLEANS[cfg.kind])} does"
        )
    tok = build_tokenizer(cfg, source)
    tokens, vocab, special = TOKENIZER_FILES[cfg.kind](tok, source / cfg.file, out)
    pad_id = tok.pad_id
    if pad_id not in special:
        end_id = getattr(tok, END_IDS.get(cfg.kind, ""), None)
        if end_id is None or not padding_is_inert(text, pad_id, end_id):
            instead = (
                f"a {cfg.kind} tokenizer names no end token to pad with instead"
                if end_id is None
                else "padding with the end token instead changes this text tower's output"
            )
            raise InputError(
                f"tokenizer pad_id {pad_id} ({vocab[pad_id]!r}) is an ordinary token, which transformers would "
                f"also split out of texts, and {instead}"
            )
        pad_id = end_id
    config = {"tokenizer_class": TOKENIZER_CLASSES[cfg.kind], "model_max_length": cfg.context_length, **tokens}
    config["pad_token"] = vocab[pad_id]
    if not text.causal:
        config["model_input_names"] = ["input_ids"]  # no attention_mask: jaxvlm attends to the padding
    text_config = json.dumps(config, indent=2, ensure_ascii=False)
    (out / "tokenizer_config.json").write_text(text_config + "\n", encoding="utf-8")
    return tok, pad_id


# ---------------------------------------------------------------- preprocessor_config.json


def processor_config(model: ModelDir, name: str) -> dict:
    """The HF image processor that reproduces the model's PreprocessConfig."""
    pre, size = model.preprocess, model.preprocess.image_size
    config = {
        "do_resize": True,
        "resample": HF_RESAMPLE[pre.interpolation],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
        "do_convert_rgb": True,
    }
    if pre.resize_mode == "shortest":  # only CLIPImageProcessor crops
        crop = {"size": {"shortest_edge": size}, "do_center_crop": True, "crop_size": {"height": size, "width": size}}
        return {"image_processor_type": PROCESSOR_CLASSES["clip"], **config, **crop}
    square = {"size": {"height": size, "width": size}}
    if name == "clip":
        square["do_center_crop"] = False
    return {"image_processor_type": PROCESSOR_CLASSES[name], **config, **square}


# ---------------------------------------------------------------- entry point


def write(model: ModelDir, source: Path, out: Path) -> None:
    """Writes ``model`` (loaded from the model directory ``source``) into the empty folder ``out``
    as a transformers repo that `AutoModel` / `AutoTokenizer` / `AutoImageProcessor` load."""
    from safetensors.numpy import save_file

    cfg = model.config
    try:
        name = family(cfg)
        if model.tokenizer.context_length > cfg.text.context_length:
            raise InputError(
                f"tokenizer context_length {model.tokenizer.context_length} exceeds the text tower's "
                f"{cfg.text.context_length} positions"
            )
        weights = hf_weights(name, cfg, model.params)
        tokenizer, pad_id = write_tokenizer(model.tokenizer, Path(source), out, cfg.text)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None
    config = hf_config(cfg, name, tokenizer, pad_id)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(processor_config(model, name), indent=2) + "\n")
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
