"""CLIPA (open_clip's ViT-{L,H,bigG}-14-CLIPA[-336]): a ViT without pre-LN that averages its patch tokens and
normalises the average (final_ln_after_pool), a bidirectional text tower pooled at the last position, and
BERT's WordPiece ids with [SEP] zeroed (strip_sep_token). A tiny perturbed open_clip CLIPA saved as a hub
repo (open_clip_config.json, weights, a tiny BERT tokenizer's files) converts with no --model and matches
open_clip; the six architectures map from open_clip's configs, count their FLOPs, and (slow) account for
every key of open_clip's full-size models."""

import copy
import dataclasses
import json
from unittest import mock

import jax
import numpy as np
import pytest
import torch

from jaxvlm.cli import main
from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.errors import InputError
from jaxvlm.models import towers
from jaxvlm.models.registry import ARCHITECTURES, CLIPA_TOKENIZER
from jaxvlm.preprocess import IMAGENET_MEAN, IMAGENET_STD
from tests.convert.open_clip_models import compare_with_open_clip, load_on_one_device, perturbed, save_repo
from tests.wordpiece import PAD_ID, SEP_ID, tiny_bert_tokenizer

open_clip = pytest.importorskip("open_clip")

CLIPA_NAMES = [name for name in ARCHITECTURES if "CLIPA" in name]
# ViT-L-14-CLIPA's options at tiny sizes; the text tower narrower than the image tower so that swapped
# tensors show, its vocabulary larger than the tokenizer's (as CLIPA's 32000 rows hold BERT's 30522 ids)
TINY_CLIPA_CFG = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 32,
        "layers": 2,
        "width": 64,
        "patch_size": 8,
        "no_ln_pre": True,
        "pool_type": "avg",
        "final_ln_after_pool": True,
    },
    "text_cfg": {
        "context_length": 32,
        "vocab_size": 640,
        "hf_tokenizer_name": "bert-base-uncased",
        "tokenizer_kwargs": {"strip_sep_token": True},
        "width": 48,
        "heads": 3,
        "layers": 2,
        "pool_type": "last",
        "no_causal_mask": True,
    },
}
CLIPA_PREPROCESS = {
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "interpolation": "bilinear",
    "resize_mode": "squash",
}
CAPTIONS = [
    "A photo of a CAT.",
    "  kato   rimo\tsky\n",
    "Café crème brûlée, naïve über-façade",
    "猫 and 狗 on the sky",
    "emoji 🐱🚀 and &amp; html &lt;b&gt;",
    "literal [SEP] and [CLS] and [PAD] tokens",
    "",
    "ka to ri mo su ne pa lu " * 3,
    "the red cat on the blue sky, " * 30,
    "supercalifragilisticexpialidocious" * 10,  # one word over WordPiece's 100 characters: [UNK]
]


@pytest.fixture(scope="module")
def clipa_repo(tmp_path_factory):
    from open_clip.tokenizer import HFTokenizer

    root = tmp_path_factory.mktemp("clipa")
    bert = tiny_bert_tokenizer(root / "bert")
    tokenizer = HFTokenizer(str(bert), context_length=32, strip_sep_token=True)
    torch.manual_seed(0)
    model = perturbed(open_clip.CLIP(**copy.deepcopy(TINY_CLIPA_CFG)))
    return save_repo(root / "repo", model, tokenizer, TINY_CLIPA_CFG, CLIPA_PREPROCESS, safe_serialization=True)


@pytest.fixture(scope="module")
def converted(clipa_repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("clipa-converted") / "model"
    assert main(["convert", "--from", "open_clip", str(clipa_repo), str(out)]) == 0
    return out


def test_tiny_clipa_repo_converts_without_model_and_matches_open_clip(clipa_repo, converted):
    model = compare_with_open_clip(converted, clipa_repo, "open_clip repo tiny CLIPA")
    v, t = model.config.vision, model.config.text
    assert (v.pre_norm, v.class_token, v.pool, v.norm_after_pool) == (False, True, "gap", True)
    assert (t.causal, t.pool, t.pad_mask) == (False, "last", "none")
    # the tiny tokenizer has bert-base-uncased's special ids, so the record is the registry's CLIPA tokenizer
    assert json.loads((converted / "config.json").read_text())["tokenizer"] == CLIPA_TOKENIZER.to_dict()
    registered = ARCHITECTURES["ViT-L-14-CLIPA"].preprocess.replace(image_size=32)
    assert model.preprocess_config == registered


def test_tiny_clipa_tokenizer_ids_are_open_clips(clipa_repo, converted):
    model = load_on_one_device(converted)
    reference = open_clip.get_tokenizer(f"local-dir:{clipa_repo}")
    ids, truncated = model.tokenizer.tokenize_with_truncation(CAPTIONS)
    ref_ids = reference(CAPTIONS).numpy()
    print(f"\n{len(CAPTIONS)} captions, {int(truncated.sum())} truncated; first row {ids[0][:12]}")
    np.testing.assert_array_equal(ids, ref_ids)
    assert truncated.tolist() == [False] * 8 + [True, False]
    assert not (ids == SEP_ID).any() and (ids[:, -1] == PAD_ID).all()


def test_a_repo_without_named_special_tokens_gets_berts(converted, tmp_path):
    """bert-base-uncased's tokenizer_config.json names no special tokens: a WordPiece tokenizer.json alone
    pads with [PAD] and strips [SEP], as transformers' BertTokenizer does by default."""
    (tmp_path / "tokenizer.json").write_bytes((converted / "tokenizer.json").read_bytes())
    text_cfg = TINY_CLIPA_CFG["text_cfg"]
    tokenizer, source = converter.tokenizer_from_open_clip(tmp_path, text_cfg, 32, None, "x")
    assert (tokenizer, source) == (CLIPA_TOKENIZER, tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"sep_token": "[END]"}))
    with pytest.raises(InputError, match="^x text_cfg.tokenizer_kwargs.strip_sep_token: .* has no separator token"):
        converter.tokenizer_from_open_clip(tmp_path, text_cfg, 32, None, "x")


def test_norm_after_pool_needs_a_pooled_token():
    vit = ARCHITECTURES["ViT-L-14-CLIPA"].model.vision
    with pytest.raises(InputError, match="vision.norm_after_pool needs vision.pool 'cls' or 'gap', not 'map'"):
        dataclasses.replace(vit, pool="map")
    # open_clip's attentional pooler (CoCa) pools its first query: averaging its outputs is not converted
    cfg = copy.deepcopy(TINY_CLIPA_CFG)
    cfg["vision_cfg"]["attentional_pool"] = True
    with pytest.raises(InputError, match="^x: vision_cfg.pool_type is 'avg'"):
        converter.model_config_from_open_clip(cfg, "x")


@pytest.mark.parametrize("name", CLIPA_NAMES)
def test_clipa_architectures_are_open_clips(name):
    """The registered configs are what the repo converter reads from open_clip's model_configs, and the
    preprocessing is open_clip's pretrained table's (squash, bilinear, ImageNet mean and std)."""
    from jaxvlm.pretrained import get_pretrained, list_pretrained

    arch = ARCHITECTURES[name]
    assert converter.model_config_from_open_clip(open_clip.get_model_config(name), name) == arch.model
    entry = next(get_pretrained(a, tag) for a, tag in list_pretrained() if a == name)
    assert entry.loads
    read = converter.preprocess_from_open_clip(entry.preprocess, arch.model.vision.image_size, name)
    assert read == arch.preprocess


def _encoder_flops(tokens: int, width: int, mlp_dim: int, depth: int) -> int:
    """q, k, v, out projections, the two attention products and the MLP: 2 FLOPs per multiply-add."""
    return depth * (2 * tokens * width * 4 * width + 2 * 2 * tokens * tokens * width + 2 * 2 * tokens * width * mlp_dim)


@pytest.mark.parametrize(
    "name", [n if n == "ViT-L-14-CLIPA" else pytest.param(n, marks=pytest.mark.slow) for n in CLIPA_NAMES]
)
def test_flops_per_example(name):
    """The text tower's count is the arithmetic's; the image tower's that of the CLIP ViT of the same sizes
    (pooling and norms add no matrix multiply; attention may be padded to the flash kernel's blocks)."""
    cfg = ARCHITECTURES[name].model
    v, t = cfg.vision, cfg.text
    text = towers.flops_per_example(t, cfg.embed_dim)
    assert text == _encoder_flops(t.context_length, t.width, t.mlp_dim, t.depth) + 2 * t.width * cfg.embed_dim
    image = towers.flops_per_example(v, cfg.embed_dim)
    clip_vit = dataclasses.replace(v, pre_norm=True, pool="cls", norm_after_pool=False)
    assert image == towers.flops_per_example(clip_vit, cfg.embed_dim)
    patches = v.grid**2
    least = 2 * patches * v.patch_size**2 * 3 * v.width + 2 * v.width * cfg.embed_dim
    assert image >= least + _encoder_flops(patches + 1, v.width, v.mlp_dim, v.depth)
    print(f"\n{name}: {image / 1e9:.1f} GFLOPs per image, {text / 1e9:.2f} per text")


def _stack_shapes(depth, one_layer, prefix):
    """`stack_layers` without its copy: each layer converted (its source keys taken) and of the first one's
    shapes, the stack a zero-stride array. Stacked, bigG's layers would hold 10 GB."""
    first = {k: np.shape(x) for k, x in one_layer(0).items()}
    for i in range(1, depth):
        assert {k: np.shape(x) for k, x in one_layer(i).items()} == first, i
    return {f"{prefix}/{k}": np.broadcast_to(np.float32(0), (depth, *shape)) for k, shape in first.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", CLIPA_NAMES)
def test_full_size_keys_are_open_clips(name):
    """open_clip's full-size model on the meta device: its keys and shapes, as zero-stride arrays, convert
    to exactly jaxvlm's parameter tree (every source key used, every target key filled, shapes checked)."""
    from jaxvlm.convert.open_clip import convert_state_dict

    with torch.device("meta"):
        reference = open_clip.create_model(name, pretrained=None, device="meta")
    state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in reference.state_dict().items()}
    assert "visual.ln_pre.weight" not in state and "visual.class_embedding" in state
    with mock.patch("jaxvlm.convert.open_clip.stack_layers", _stack_shapes):
        params = convert_state_dict(state, name)
        count = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
        assert count == sum(v.numel() for v in reference.state_dict().values())
        del state["visual.ln_post.weight"]
        with pytest.raises(InputError, match="visual.ln_post.weight"):
            convert_state_dict(state, name)
