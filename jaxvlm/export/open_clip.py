"""jaxvlm model directories -> open_clip hub repos: the inverse of `jaxvlm.convert.open_clip_repo`.

The folder holds what open_clip's `save_for_hf` writes and its factory reads with ``local-dir:`` (or
``hf-hub:`` once uploaded):

- ``open_clip_config.json``: ``model_cfg`` (as open_clip's ``model_configs/*.json``: its own ViT, or
  a timm SigLIP ViT by name, with its text transformer and, for CoCa, ``multimodal_cfg``) and
  ``preprocess_cfg``;
- ``open_clip_model.safetensors``: the float32 state dict of that model;
- the tokenizer: nothing for CLIP's BPE (open_clip bundles it); otherwise ``text_cfg.hf_tokenizer_name``
  and the files its HFTokenizer loads from the folder: ``spiece.model`` run by transformers'
  SiglipTokenizer, or a ``tokenizer.json``, each with a ``tokenizer_config.json`` naming the
  padding and end tokens.

Nothing is left to chance: the config written is read back with the converter's own reader and must
give the model's config, preprocessing and tokenizer exactly; what open_clip cannot express (another
tower kind, a ViT without a timm name, a field open_clip has no option for) is one InputError naming it.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax
import numpy as np

from jaxvlm.convert.common import check_params, flat_fields
from jaxvlm.convert.open_clip import OPENAI_BLOCK, TIMM_BLOCK
from jaxvlm.convert.open_clip_repo import (
    CONFIG_FILE,
    OPEN_CLIP_CLEANS,
    REPO_WEIGHTS,
    TIMM_VITS,
    VISION_FIELDS,
    TimmViT,
    model_config_from_open_clip,
    preprocess_from_open_clip,
    tokenizer_from_open_clip,
)
from jaxvlm.errors import InputError
from jaxvlm.model_dir import ModelDir
from jaxvlm.models.config import ModelConfig
from jaxvlm.preprocess import PreprocessConfig
from jaxvlm.tokenizers import CLIP_BPE_FILE, ClipBpeTokenizer, TokenizerConfig

WEIGHTS_FILE = REPO_WEIGHTS[0]  # open_clip_model.safetensors, the file open_clip prefers
SPIECE_FILE = "spiece.model"  # the name transformers' SiglipTokenizer reads
HF_JSON_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# text_cfg.hf_tokenizer_name when no hub repo is named: with local-dir: open_clip loads the folder's own
# files whatever the name; from the hub it would download this name, which fails as no repo has it
LOCAL_TOKENIZER_NAME = "jaxvlm-export-tokenizer-files-in-this-repo"
# jaxvlm activation -> (quick_gelu, act_kwargs) in open_clip's towers (QuickGELU, or nn.GELU's `approximate`)
ACTIVATIONS = {"gelu": (False, None), "gelu_tanh": (False, {"approximate": "tanh"}), "quick_gelu": (True, None)}
DEFAULT_LN_EPS = 1e-5  # torch LayerNorm's, open_clip's unless norm_kwargs say otherwise


def write(model: ModelDir, source: Path, out: Path, repo_id: str | None = None) -> None:
    """Writes ``model`` (a loaded model directory; its tokenizer file lies in ``source``) into the empty
    folder ``out`` as an open_clip hub repo. ``repo_id`` (ORG/NAME) is the hub repo it will be uploaded
    to: a SentencePiece or tokenizer.json tokenizer names it as ``hf_tokenizer_name``, so that open_clip
    finds the files there with ``hf-hub:`` too."""
    cfg = model.config
    model_cfg = model_config_to_open_clip(cfg)
    _check_reads_back(model_cfg, cfg)
    preprocess_cfg = preprocess_to_open_clip(model.preprocess, cfg.vision.image_size)
    model_cfg["text_cfg"].update(
        _write_tokenizer(model.tokenizer, Path(source), Path(out), repo_id or LOCAL_TOKENIZER_NAME)
    )
    _check_tokenizer_reads_back(model_cfg["text_cfg"], cfg, model.tokenizer, Path(out))
    if model.params is None:
        raise InputError(f"{source}: the model directory was loaded without its weights")
    state = state_dict(model.params, cfg, custom=bool(model_cfg.get("custom_text")))

    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, str(Path(out) / WEIGHTS_FILE))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (Path(out) / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


# ---------------------------------------------------------------- model_cfg


def model_config_to_open_clip(cfg: ModelConfig) -> dict[str, Any]:
    """The ``model_cfg`` open_clip builds ``cfg`` from (without the tokenizer's text_cfg fields):
    open_clip's ViT, or a MAP-pooled ViT as the timm SigLIP model of its exact shape, with open_clip's
    text transformer and CoCa's decoder. What open_clip has no field for is an InputError naming it;
    `write` also reads the result back with the converter to confirm it is ``cfg`` exactly."""
    if cfg.vision.kind != "vit":
        raise InputError(f"open_clip cannot express an image tower of kind {cfg.vision.kind!r} (jaxvlm exports 'vit')")
    if cfg.text.kind != "transformer":
        raise InputError(
            f"open_clip cannot express a text tower of kind {cfg.text.kind!r} (jaxvlm exports 'transformer')"
        )
    if (cfg.loss == "sigmoid") != (cfg.logit_bias_init is not None):
        raise InputError(
            f"open_clip cannot express loss {cfg.loss!r} with logit_bias_init {cfg.logit_bias_init!r}: its "
            "config tells the sigmoid loss only by init_logit_bias"
        )
    timm = cfg.vision.pool == "map"  # as the converter reads it: MAP-pooled ViTs are timm's SigLIP trunks
    quick_gelu = _quick_gelu(cfg, timm)
    coca = cfg.decoder is not None
    model_cfg: dict[str, Any] = {"embed_dim": cfg.embed_dim}
    if quick_gelu:
        model_cfg["quick_gelu"] = True
    default_scale = math.log(10.0) if cfg.logit_bias_init is not None else math.log(1 / 0.07)
    if cfg.logit_scale_init != default_scale:
        model_cfg["init_logit_scale"] = cfg.logit_scale_init
    if cfg.logit_bias_init is not None:
        model_cfg["init_logit_bias"] = cfg.logit_bias_init
    if timm or coca or cfg.text.append_cls:  # as open_clip's SigLIP and CoCa configs: the text tower under `text.`
        model_cfg["custom_text"] = True
    model_cfg["vision_cfg"] = _timm_vision_cfg(cfg) if timm else _vision_cfg(cfg, coca)
    model_cfg["text_cfg"] = _text_cfg(cfg, coca)
    if coca:
        d = cfg.decoder
        model_cfg["multimodal_cfg"] = {
            "context_length": d.context_length,
            "vocab_size": d.vocab_size,
            "width": d.width,
            "heads": d.heads,
            "layers": d.depth,
        }
    return model_cfg


def _quick_gelu(cfg: ModelConfig, timm: bool) -> bool:
    """open_clip's quick_gelu: QuickGELU in all of its own towers (and the decoder), never in timm's."""
    own = {"text": cfg.text.act} if timm else {"vision": cfg.vision.act, "text": cfg.text.act}
    for where, act in own.items():
        if act not in ACTIVATIONS:
            raise InputError(f"open_clip cannot express {where}.act {act!r} (it runs {', '.join(ACTIVATIONS)})")
    quick = {where for where, act in own.items() if act == "quick_gelu"}
    if quick and len(quick) != len(own):
        raise InputError(
            "open_clip cannot express QuickGELU in one tower only (its quick_gelu sets both): "
            + ", ".join(f"{where}.act {act!r}" for where, act in own.items())
        )
    return bool(quick)


def _block_fields(tower: Any) -> dict[str, Any]:
    """mlp_ratio, act_kwargs and norm_kwargs of one of open_clip's own towers, where not its defaults."""
    fields: dict[str, Any] = {}
    if tower.mlp_dim != 4 * tower.width:
        ratio = tower.mlp_dim / tower.width
        if int(tower.width * ratio) != tower.mlp_dim:  # open_clip's mlp width is int(width * mlp_ratio)
            ratio = math.nextafter(ratio, math.inf)
        fields["mlp_ratio"] = ratio
    _, act_kwargs = ACTIVATIONS[tower.act]
    if act_kwargs:
        fields["act_kwargs"] = act_kwargs
    if tower.ln_eps != DEFAULT_LN_EPS:
        fields["norm_kwargs"] = {"eps": tower.ln_eps}
    return fields


def _vision_cfg(cfg: ModelConfig, coca: bool) -> dict[str, Any]:
    v = cfg.vision
    fields: dict[str, Any] = {"image_size": v.image_size, "layers": v.depth, "width": v.width}
    if v.width // v.heads != 64:
        fields["head_width"] = v.width // v.heads
    fields["patch_size"] = v.patch_size
    fields.update(_block_fields(v))
    if v.pool == "attn_pool":
        fields["attentional_pool"] = True
        pooler = {"attn_pooler_queries": v.attn_pool_queries, "attn_pooler_heads": v.attn_pool_heads}
        fields.update({k: x for k, x in pooler.items() if x != VISION_FIELDS[k]})
    if coca:
        fields["output_tokens"] = True  # CoCa reads the image tokens
    return fields


def _timm_vision_cfg(cfg: ModelConfig) -> dict[str, Any]:
    v = cfg.vision
    shape = TimmViT(v.image_size, v.patch_size, v.width, v.depth, v.heads, v.mlp_dim, v.act)
    name = next((name for name, tower in TIMM_VITS.items() if tower == shape), None)
    if name is None:
        example, tower = next(iter(TIMM_VITS.items()))
        raise InputError(
            f"open_clip builds MAP-pooled ViTs only as timm's SigLIP models, and none has this one's shape "
            f"({_shape(shape)}; e.g. {example} has {_shape(tower)})"
        )
    return {
        "image_size": v.image_size,
        "timm_model_name": name,
        "timm_model_pretrained": False,
        "timm_pool": "map",
        "timm_proj": "none",
    }


def _shape(tower: TimmViT) -> str:
    return ", ".join(f"{f.name} {getattr(tower, f.name)}" for f in dataclasses.fields(tower))


def _text_cfg(cfg: ModelConfig, coca: bool) -> dict[str, Any]:
    t = cfg.text
    fields: dict[str, Any] = {
        "context_length": t.context_length,
        "vocab_size": t.vocab_size,
        "width": t.width,
        "heads": t.heads,
        "layers": t.depth,
    }
    fields.update(_block_fields(t))
    if not t.causal:
        fields["no_causal_mask"] = True
    if not t.proj:
        fields["proj_type"] = "none"
    elif t.proj_bias:
        fields["proj_bias"] = True
    if t.append_cls:  # CoCa's appended class token, pooled last with the shifted padding mask
        fields["embed_cls"] = True
        if t.pad_id != 0:
            fields["pad_id"] = t.pad_id
    elif t.pool != "argmax":
        fields["pool_type"] = t.pool
        if t.pool == "eos":
            fields["eos_id"] = t.eos_id
    if coca:
        fields["output_tokens"] = True  # CoCa's decoder reads the text tokens
    return fields


def _check_reads_back(model_cfg: Mapping[str, Any], cfg: ModelConfig) -> None:
    """The converter's reading of ``model_cfg`` must be ``cfg``: the fields it differs in are what open_clip
    cannot express."""
    try:
        back = model_config_from_open_clip(model_cfg, "the exported model_cfg")
    except InputError as e:
        raise InputError(f"open_clip cannot express this model: {e}") from None
    if back == cfg:
        return
    mine, theirs = flat_fields(cfg), flat_fields(back)
    diffs = [k for k in {**mine, **theirs} if mine.get(k) != theirs.get(k)]
    raise InputError(
        "open_clip has no option for "
        + "; ".join(f"{k} {mine.get(k)!r} (its model builds {theirs.get(k)!r})" for k in diffs[:3])
        + ("; ..." if len(diffs) > 3 else "")
    )


# ---------------------------------------------------------------- preprocess_cfg


def preprocess_to_open_clip(preprocess: PreprocessConfig, image_size: int) -> dict[str, Any]:
    """open_clip's ``preprocess_cfg`` (PreprocessCfg's fields) for jaxvlm's preprocessing."""
    if preprocess.image_size != image_size:
        raise InputError(
            f"open_clip cannot express preprocess image_size {preprocess.image_size} for a model of "
            f"{image_size} px (its transform resizes to the model's size)"
        )
    preprocess_cfg = {
        "size": image_size,
        "mode": "RGB",
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
        "interpolation": preprocess.interpolation,
        "resize_mode": preprocess.resize_mode,
    }
    back = preprocess_from_open_clip(preprocess_cfg, image_size, "preprocess_cfg")
    assert back == preprocess, (back, preprocess)  # jaxvlm's modes are all open_clip's
    return preprocess_cfg


# ---------------------------------------------------------------- tokenizer


def _write_tokenizer(tokenizer: TokenizerConfig, source: Path, out: Path, hf_name: str) -> dict[str, Any]:
    """Writes the files open_clip's tokenizer for ``tokenizer`` reads from ``out``; returns the text_cfg
    fields that choose it: none for CLIP's BPE (open_clip's bundled SimpleTokenizer), hf_tokenizer_name
    for a SentencePiece model (transformers' SiglipTokenizer) or a tokenizer.json."""
    if tokenizer.clean not in OPEN_CLIP_CLEANS:
        raise InputError(
            f"open_clip cannot express tokenizer clean {tokenizer.clean!r}: its tokenizers always clean text "
            f"with one of {', '.join(OPEN_CLIP_CLEANS)}"
        )
    path = source / tokenizer.file
    if not path.is_file():
        raise InputError(f"tokenizer file not found: {path}")
    clean = {"tokenizer_kwargs": {"clean": tokenizer.clean}}
    if tokenizer.kind == "clip_bpe":
        if _bpe_merges(path) != _bpe_merges(CLIP_BPE_FILE):
            raise InputError(f"open_clip runs CLIP's own BPE merges without hf_tokenizer_name; {path} holds others")
        return {} if tokenizer.clean == "lower" else clean  # 'lower': SimpleTokenizer's default
    settings: dict[str, Any] = {"model_max_length": tokenizer.context_length}
    if tokenizer.kind == "sentencepiece":
        piece = _sentencepiece_pieces(path)
        if tokenizer.eos_id is None:
            raise InputError(
                "open_clip cannot express a SentencePiece tokenizer without an end token (transformers' "
                "SiglipTokenizer appends one)"
            )
        shutil.copyfile(path, out / SPIECE_FILE)
        settings.update(tokenizer_class="SiglipTokenizer", do_lower_case=True)
        special = {"pad_token": tokenizer.pad_id, "eos_token": tokenizer.eos_id, "unk_token": None}
    else:
        piece = _hf_json_tokens(path)
        shutil.copyfile(path, out / HF_JSON_FILE)
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
        special = {"pad_token": tokenizer.pad_id}
    for name, token_id in special.items():
        settings[name] = piece(token_id)
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return {"hf_tokenizer_name": hf_name, **clean}


def _bpe_merges(path: Path) -> list[str]:
    """The merges of a CLIP BPE file, as `ClipBpeTokenizer` reads them."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read CLIP BPE merges file {path}: {e}") from None
    return lines[1 : ClipBpeTokenizer.NUM_MERGES + 1]


def _sentencepiece_pieces(path: Path) -> Callable[[int | None], str]:
    """id -> piece of a SentencePiece model (None: its unknown token)."""
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise InputError(f"cannot load SentencePiece model {path}: {e}") from None

    def piece(token_id: int | None) -> str:
        token_id = sp.unk_id() if token_id is None else token_id
        if not 0 <= token_id < sp.get_piece_size():
            raise InputError(f"token id {token_id} is outside the SentencePiece vocabulary of {path}")
        return sp.id_to_piece(token_id)

    return piece


def _hf_json_tokens(path: Path) -> Callable[[int], str]:
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises bare Exceptions
        raise InputError(f"cannot load tokenizer.json {path}: {e}") from None

    def token(token_id: int) -> str:
        text = backend.id_to_token(token_id)
        if text is None:
            raise InputError(f"token id {token_id} is not in the vocabulary of {path}")
        return text

    return token


def _check_tokenizer_reads_back(
    text_cfg: Mapping[str, Any], cfg: ModelConfig, tokenizer: TokenizerConfig, out: Path
) -> None:
    """What the converter makes of the written tokenizer (which is what open_clip runs) must be ``tokenizer``."""
    try:
        back, _ = tokenizer_from_open_clip(out, text_cfg, cfg.text.context_length, None, "the exported text_cfg")
    except InputError as e:
        raise InputError(f"open_clip cannot run this tokenizer as jaxvlm does: {e}") from None
    mine, theirs = tokenizer.to_dict(), {**back.to_dict(), "file": tokenizer.file}
    diffs = [k for k in mine if mine[k] != theirs[k]]
    if diffs:
        raise InputError(
            "open_clip cannot express tokenizer "
            + "; ".join(f"{k} {mine[k]!r} (its tokenizer runs {theirs[k]!r})" for k in diffs)
        )


# ---------------------------------------------------------------- state dict

# jaxvlm parameter (prefix) -> open_clip tensor, by how the converter maps it (`jaxvlm.convert.common`):
# "norm": LayerNorm scale/bias -> weight/bias; "dense": Linear kernel/bias -> weight (transposed)/bias;
# "patch": patch embedding kernel (/bias) -> Conv2d weight (/bias); "token": [1, 1, W] -> [W];
# "table": [1, N, W] -> [N, W]; "same": as it is.
OPENAI_VISION = (
    ("patch", "img/patch_embed", "visual.conv1"),
    ("token", "img/cls", "visual.class_embedding"),
    ("table", "img/pos_embed", "visual.positional_embedding"),
    ("norm", "img/pre_norm", "visual.ln_pre"),
    ("norm", "img/final_norm", "visual.ln_post"),
    ("same", "img/proj/kernel", "visual.proj"),
)
ATTENTION_POOLER = (  # CoCa's AttentionalPooler, its attention apart (`_pooler_attention`)
    ("same", "img/attn_pool/queries", "visual.attn_pool.query"),
    ("norm", "img/attn_pool/norm_q", "visual.attn_pool.ln_q"),
    ("norm", "img/attn_pool/norm_kv", "visual.attn_pool.ln_k"),
)
TIMM_VISION = (  # the MAP head's attention apart (`_map_attention`)
    ("patch", "img/patch_embed", "visual.trunk.patch_embed.proj"),
    ("same", "img/pos_embed", "visual.trunk.pos_embed"),
    ("norm", "img/final_norm", "visual.trunk.norm"),
    ("same", "img/map_head/probe", "visual.trunk.attn_pool.latent"),
    ("norm", "img/map_head/norm", "visual.trunk.attn_pool.norm"),
    ("dense", "img/map_head/mlp/fc1", "visual.trunk.attn_pool.mlp.fc1"),
    ("dense", "img/map_head/mlp/fc2", "visual.trunk.attn_pool.mlp.fc2"),
)
TEXT = (  # under `text.` in CustomTextCLIP and CoCa; the projection apart (a Linear with a bias, else a matrix)
    ("same", "txt/token_embed/embedding", "token_embedding.weight"),
    ("table", "txt/pos_embed", "positional_embedding"),
    ("norm", "txt/final_norm", "ln_final"),
)
DECODER = (
    ("norm", "dec/final_norm", "text_decoder.ln_final"),
    ("same", "dec/head/kernel", "text_decoder.text_projection"),
)
SCALARS = (("t", "logit_scale"), ("b", "logit_bias"))
# stacked layers: jaxvlm prefix -> open_clip module list and the block's names (the converter's tables)
OPENAI_VISION_BLOCKS = ("img/encoder/blocks", "visual.transformer.resblocks", OPENAI_BLOCK)
TIMM_BLOCKS = ("img/encoder/blocks", "visual.trunk.blocks", TIMM_BLOCK)
TEXT_BLOCKS = ("txt/encoder/blocks", "transformer.resblocks", OPENAI_BLOCK)
DECODER_LAYERS = ("dec/layers", "text_decoder.resblocks", "text_decoder.cross_attn")


class _Params:
    """The flat jaxvlm parameters, each of which must be used exactly once."""

    def __init__(self, flat: dict[str, np.ndarray]):
        self.flat, self.used = flat, set()

    def __contains__(self, key: str) -> bool:
        return key in self.flat

    def take(self, key: str) -> np.ndarray:
        assert key not in self.used, f"exporter bug: '{key}' used twice"
        self.used.add(key)
        return np.asarray(self.flat[key], np.float32)

    def check_all_used(self) -> None:
        unused = sorted(set(self.flat) - self.used)
        assert not unused, f"exporter bug: parameters left out: {unused[:5]}"


def _norm(p: _Params, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": p.take(f"{src}/scale"), f"{dst}.bias": p.take(f"{src}/bias")}


def _dense(p: _Params, src: str, dst: str) -> dict[str, np.ndarray]:
    out = {f"{dst}.weight": p.take(f"{src}/kernel").T}
    if f"{src}/bias" in p:
        out[f"{dst}.bias"] = p.take(f"{src}/bias")
    return out


def _patch(p: _Params, src: str, dst: str) -> dict[str, np.ndarray]:
    out = {f"{dst}.weight": p.take(f"{src}/kernel").transpose(3, 2, 0, 1)}  # [kh, kw, in, out] -> torch's
    if f"{src}/bias" in p:
        out[f"{dst}.bias"] = p.take(f"{src}/bias")
    return out


MAPS: dict[str, Callable[[_Params, str, str], dict[str, np.ndarray]]] = {
    "norm": _norm,
    "dense": _dense,
    "patch": _patch,
    "token": lambda p, src, dst: {dst: p.take(src).reshape(-1)},
    "table": lambda p, src, dst: {dst: p.take(src)[0]},
    "same": lambda p, src, dst: {dst: p.take(src)},
}


def _mapped(p: _Params, table: tuple, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for kind, src, dst in table:
        out.update(MAPS[kind](p, src, prefix + dst))
    return out


def _attention(p: _Params, prefix: str) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """flax Attention params -> torch's q/k/v weights [out, in] and biases, out-projection weight and bias."""
    weights, biases = [], []
    for name in ("query", "key", "value"):
        kernel = p.take(f"{prefix}/{name}/kernel")  # [in, heads, head_dim]
        weights.append(kernel.reshape(kernel.shape[0], -1).T)
        biases.append(p.take(f"{prefix}/{name}/bias").reshape(-1))
    out = p.take(f"{prefix}/out/kernel")  # [heads, head_dim, out]
    return weights, biases, out.reshape(-1, out.shape[-1]).T, p.take(f"{prefix}/out/bias")


def _layers(p: _Params, prefix: str) -> list[_Params]:
    """The stacked parameters under ``prefix`` (a leading layer axis), one set per layer."""
    keys = [k for k in p.flat if k.startswith(f"{prefix}/")]
    depth = len(p.flat[keys[0]])
    for k in keys:
        p.take(k)
    return [_Params({k[len(prefix) + 1 :]: p.flat[k][i] for k in keys}) for i in range(depth)]


def _block(layer: _Params, dst: str, names: tuple) -> dict[str, np.ndarray]:
    """One jaxvlm Block -> an open_clip ResidualAttentionBlock or timm Block (packed q/k/v)."""
    norm1, qkv_weight, qkv_bias, out, norm2, fc1, fc2 = names
    weights, biases, out_w, out_b = _attention(layer, "attn")
    return {
        **_norm(layer, "norm1", f"{dst}.{norm1}"),
        f"{dst}.{qkv_weight}": np.concatenate(weights),
        f"{dst}.{qkv_bias}": np.concatenate(biases),
        f"{dst}.{out}.weight": out_w,
        f"{dst}.{out}.bias": out_b,
        **_norm(layer, "norm2", f"{dst}.{norm2}"),
        **_dense(layer, "mlp/fc1", f"{dst}.{fc1}"),
        **_dense(layer, "mlp/fc2", f"{dst}.{fc2}"),
    }


def _blocks(p: _Params, spec: tuple, prefix: str = "") -> dict[str, np.ndarray]:
    src, dst, names = spec
    out = {}
    for i, layer in enumerate(_layers(p, src)):
        out.update(_block(layer, f"{prefix}{dst}.{i}", names))
        layer.check_all_used()
    return out


def _pooler_attention(p: _Params, packed: bool) -> dict[str, np.ndarray]:
    """CoCa's pooler: torch's MultiheadAttention packs q/k/v weights only when keys are as wide as queries."""
    weights, biases, out_w, out_b = _attention(p, "img/attn_pool/attn")
    name = "visual.attn_pool.attn"
    out = {f"{name}.in_proj_weight": np.concatenate(weights)} if packed else {}
    if not packed:
        out.update({f"{name}.{x}_proj_weight": w for x, w in zip("qkv", weights)})
    out.update({f"{name}.in_proj_bias": np.concatenate(biases), f"{name}.out_proj.weight": out_w})
    out[f"{name}.out_proj.bias"] = out_b
    return out


def _map_attention(p: _Params) -> dict[str, np.ndarray]:
    """timm's MAP head: q apart, k and v packed as kv."""
    (q_w, k_w, v_w), (q_b, k_b, v_b), out_w, out_b = _attention(p, "img/map_head/attn")
    name = "visual.trunk.attn_pool"
    return {
        f"{name}.q.weight": q_w,
        f"{name}.q.bias": q_b,
        f"{name}.kv.weight": np.concatenate([k_w, v_w]),
        f"{name}.kv.bias": np.concatenate([k_b, v_b]),
        f"{name}.proj.weight": out_w,
        f"{name}.proj.bias": out_b,
    }


def _decoder(p: _Params) -> dict[str, np.ndarray]:
    src, self_dst, cross_dst = DECODER_LAYERS
    out = _mapped(p, DECODER)
    for i, layer in enumerate(_layers(p, src)):
        self_block = _Params({k[len("self_block/") :]: v for k, v in layer.flat.items() if k.startswith("self_block/")})
        cross = _Params({k[len("cross_block/") :]: v for k, v in layer.flat.items() if k.startswith("cross_block/")})
        assert len(self_block.flat) + len(cross.flat) == len(layer.flat), sorted(layer.flat)
        out.update(_block(self_block, f"{self_dst}.{i}", OPENAI_BLOCK))
        out.update(_block(cross, f"{cross_dst}.{i}", OPENAI_BLOCK))
        out.update(_norm(cross, "norm_kv", f"{cross_dst}.{i}.ln_1_kv"))
        self_block.check_all_used()
        cross.check_all_used()
    return out


def state_dict(params: Mapping[str, Any], cfg: ModelConfig, custom: bool) -> dict[str, np.ndarray]:
    """The open_clip state dict (float32 numpy arrays) of the jaxvlm parameter tree ``params`` of ``cfg``
    (checked against it first), for CLIP (``custom`` False: the text tower at the top level) or
    CustomTextCLIP / CoCa (under ``text.``): what `jaxvlm.convert.open_clip.convert_state_dict` maps back
    to ``params`` exactly."""
    flat = flax.traverse_util.flatten_dict(dict(params), sep="/")
    check_params(cfg, flat, "the model's parameters")
    p = _Params(flat)
    if cfg.vision.pool == "map":
        state = {**_mapped(p, TIMM_VISION), **_map_attention(p), **_blocks(p, TIMM_BLOCKS)}
    else:
        state = {**_mapped(p, OPENAI_VISION), **_blocks(p, OPENAI_VISION_BLOCKS)}
        if cfg.vision.pool == "attn_pool":
            state.update(_mapped(p, ATTENTION_POOLER))
            state.update(_pooler_attention(p, packed=cfg.vision.width == cfg.embed_dim))
    text = "text." if custom else ""
    state.update(_mapped(p, TEXT, text))
    state.update(_blocks(p, TEXT_BLOCKS, text))
    if cfg.text.append_cls:
        state.update(_mapped(p, (("token", "txt/cls", "cls_emb"),), text))
    # proj_type 'none' (text.proj False) holds no text_projection
    if cfg.text.proj and cfg.text.proj_bias:  # nn.Linear
        state.update(_dense(p, "txt/proj", f"{text}text_projection"))
    elif cfg.text.proj:  # a bare [width, embed_dim] matrix, applied as x @ text_projection
        state[f"{text}text_projection"] = p.take("txt/proj/kernel")
    if cfg.decoder is not None:
        state.update(_decoder(p))
    for src, dst in SCALARS:
        if src in p:
            state[dst] = p.take(src).reshape(())
    p.check_all_used()
    return state
