"""Tiny open_clip models with HF text towers (open_clip's HFTextEncoder), built with no network: RoBERTa-,
XLM-R- and NLLB-style HF configs and tokenizers made here, handed to open_clip where it would download them
(transformers' AutoConfig.from_pretrained) and to jaxvlm where it would (`jaxvlm.hub.download` of the
hf_model_name's config.json)."""

import contextlib
import copy
import json
import random
from pathlib import Path
from unittest import mock

import torch

from tests.convert.open_clip_models import CLIP_PREPROCESS, perturbed, save_repo

CONTEXT = 24
SYLLABLES = "ka to ri mo su ne pa lu shi ve an or ing the cat dog sky red blu ph x qu zz é ü 猫 写真 の".split()
CAPTIONS = [
    "A photo of a CAT.",
    "  kato   rimo\tsky\n",
    "Café crème brûlée, naïve über-façade",
    "猫 and 狗 on the sky",
    "literal <s> and </s> and <pad> tokens",
    "",
    "the red cat on the blue sky, " * 10,
]


def _corpus() -> list[str]:
    rng = random.Random(0)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(1500)]
    return [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(2000)]


SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq's layout, as RoBERTa, XLM-R and NLLB keep it


def roberta_tokenizer(directory: Path):
    """A byte-level BPE tokenizer laid out as roberta-base's (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaTokenizer

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(_corpus(), trainer)
    model = json.loads(backend.to_str())["model"]
    vocab = {**model["vocab"], "<mask>": len(model["vocab"])}
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[tuple(m) if isinstance(m, list) else m for m in model["merges"]])
    tokenizer.save_pretrained(directory)
    return tokenizer


def xlm_r_tokenizer(directory: Path):
    """A Unigram tokenizer laid out as xlm-roberta-base's (<s>, <pad>, </s>, <unk>, the pieces, <mask>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(_corpus(), trainers.UnigramTrainer(vocab_size=300, special_tokens=SPECIALS))
    pieces = [tuple(p) for p in json.loads(backend.to_str())["model"]["vocab"]]
    tokenizer = XLMRobertaTokenizer(vocab=[*pieces, ("<mask>", 0.0)])
    tokenizer.save_pretrained(directory)
    return tokenizer


def nllb_tokenizer(directory: Path):
    """A Metaspace BPE tokenizer laid out as NLLB's (<s>, <pad>, </s>, <unk>, the pieces, then the language
    codes NllbTokenizer adds), its tokenizer.json holding the legacy post-processor facebook's nllb-200 files
    hold (`legacy_nllb_file`); NllbTokenizer puts the source language's code (eng_Latn) first and </s> last."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import NllbTokenizer

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS))
    model = json.loads(backend.to_str())["model"]
    tokenizer = NllbTokenizer(
        vocab=model["vocab"], merges=[tuple(m) if isinstance(m, list) else m for m in model["merges"]]
    )
    tokenizer.save_pretrained(directory)
    legacy_nllb_file(directory)
    return tokenizer


def legacy_nllb_file(directory: Path) -> None:
    """``directory``/tokenizer.json with the post-processor of facebook/nllb-200-*'s files: $A </s> eng_Latn
    (transformers' NllbTokenizer replaces it when it loads the file)."""
    from tokenizers import Tokenizer, processors

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    ids = [("</s>", 2), ("eng_Latn", tokenizer.token_to_id("eng_Latn"))]
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s> eng_Latn", special_tokens=ids)
    tokenizer.save(str(directory / "tokenizer.json"))


def roberta_config(vocab_size: int, model_type: str = "roberta"):
    from transformers import RobertaConfig, XLMRobertaConfig

    kind = RobertaConfig if model_type == "roberta" else XLMRobertaConfig
    return kind(
        vocab_size=vocab_size,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        max_position_embeddings=CONTEXT + 2,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )


def m2m_config(vocab_size: int):
    from transformers import M2M100Config

    return M2M100Config(
        vocab_size=vocab_size,
        d_model=48,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=3,
        decoder_attention_heads=3,
        encoder_ffn_dim=96,
        decoder_ffn_dim=96,
        max_position_embeddings=CONTEXT,
        scale_embedding=True,
        activation_function="relu",
        pad_token_id=1,
    )


# name -> (hf_model_name, tokenizer builder, HF config builder, text_cfg's pooler and projection)
KINDS = {
    "roberta": ("jaxvlmtest/roberta-tiny", roberta_tokenizer, roberta_config, "mean_pooler", "mlp"),
    "xlm-roberta": (
        "jaxvlmtest/xlm-roberta-tiny",
        xlm_r_tokenizer,
        lambda v: roberta_config(v, "xlm-roberta"),
        "mean_pooler",
        "mlp",
    ),
    "nllb": ("jaxvlmtest/nllb-tiny", nllb_tokenizer, m2m_config, "cls_pooler", "linear"),
}


def tiny_cfg(kind: str) -> dict:
    name, _, _, pooler, proj = KINDS[kind]
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
        "text_cfg": {
            "context_length": CONTEXT,
            "hf_model_name": name,
            "hf_tokenizer_name": name,
            "hf_model_pretrained": False,
            "hf_pooler_type": pooler,
            "hf_proj_type": proj,
        },
    }


@contextlib.contextmanager
def hf_configs_offline(configs: dict, hub_dir: Path):
    """transformers' AutoConfig.from_pretrained answers ``configs`` (hf_model_name -> config) and
    `jaxvlm.hub.download` a folder holding each one's config.json, as the hub would."""
    import transformers

    from jaxvlm import hub

    original_config, original_download = transformers.AutoConfig.from_pretrained, hub.download

    def from_pretrained(name, *args, **kwargs):
        return copy.deepcopy(configs[name]) if name in configs else original_config(name, *args, **kwargs)

    def download(repo, revision, extra_files=(), only=None):
        if repo not in configs:
            return original_download(repo, revision, extra_files, only)
        folder = hub_dir / repo
        folder.mkdir(parents=True, exist_ok=True)
        configs[repo].to_json_file(folder / "config.json")
        return folder

    with (
        mock.patch.object(transformers.AutoConfig, "from_pretrained", from_pretrained),
        mock.patch.object(hub, "download", download),
    ):
        yield


def tiny_hf_text_repo(directory: Path, kind: str):
    """A perturbed open_clip CustomTextCLIP with a tiny HF text tower of ``kind`` saved at ``directory`` by
    save_for_hf with its tokenizer's files. Returns (repo, {hf_model_name: HF config}); build and load it
    inside hf_configs_offline(that dict)."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    name, make_tokenizer, make_config, _, _ = KINDS[kind]
    tokenizer_dir = directory.with_name(f"{directory.name}-tokenizer")
    make_tokenizer(tokenizer_dir)
    tokenizer = HFTokenizer(str(tokenizer_dir), context_length=CONTEXT)
    configs = {name: make_config(len(tokenizer.tokenizer))}
    cfg = tiny_cfg(kind)
    with hf_configs_offline(configs, directory.with_name(f"{directory.name}-hub")):
        torch.manual_seed(0)
        model = perturbed(open_clip.CustomTextCLIP(**copy.deepcopy(cfg)))
        save_repo(directory, model, tokenizer, cfg, CLIP_PREPROCESS, safe_serialization=True)
    if kind == "nllb":
        legacy_nllb_file(directory)
    return directory, configs


def published_hf_configs() -> dict:
    """The config.json of each hf_model_name open_clip's configs name, at the published sizes (no network)."""
    from transformers import M2M100Config, RobertaConfig, XLMRobertaConfig

    roberta = dict(max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1)
    large = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    nllb = dict(
        vocab_size=256206, d_model=1024, encoder_attention_heads=16, decoder_attention_heads=16, decoder_layers=1
    )
    return {
        "roberta-base": RobertaConfig(vocab_size=50265, **roberta),
        "xlm-roberta-base": XLMRobertaConfig(vocab_size=250002, **roberta),
        "xlm-roberta-large": XLMRobertaConfig(vocab_size=250002, **roberta, **large),
        "facebook/nllb-200-distilled-600M": M2M100Config(**nllb, encoder_layers=12, encoder_ffn_dim=4096),
        "facebook/nllb-200-distilled-1.3B": M2M100Config(**nllb, encoder_layers=24, encoder_ffn_dim=8192),
    }
