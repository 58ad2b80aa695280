"""open_clip's HF text towers (HFTextEncoder): RoBERTa, XLM-R and NLLB's encoder. Tiny perturbed open_clip models
with RoBERTa-, XLM-R- and NLLB-style HF configs and tokenizers (made here, no network) saved as hub repos convert
with no --model (the HF config from hf_model_name's config.json, as open_clip reads it) and match open_clip:
embeddings and token ids. The seven architectures map from open_clip's configs with the published HF configs'
sizes, count their FLOPs, and (slow) account for every key of open_clip's full-size models."""

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
from jaxvlm.models.registry import ARCHITECTURES
from jaxvlm.tokenizers import build_tokenizer
from tests.convert.hf_text_models import (
    CAPTIONS,
    KINDS,
    hf_configs_offline,
    published_hf_configs,
    tiny_cfg,
    tiny_hf_text_repo,
)
from tests.convert.open_clip_models import compare_with_open_clip, load_on_one_device

open_clip = pytest.importorskip("open_clip")

HF_TEXT_NAMES = [name for name in ARCHITECTURES if "roberta" in name or "nllb" in name]


@pytest.fixture(scope="module", params=list(KINDS))
def converted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    repo, configs = tiny_hf_text_repo(root / "repo", request.param)
    out = root / "model"
    with hf_configs_offline(configs, root / "hub"):
        assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 0
    return request.param, repo, configs, out


def test_tiny_repo_converts_without_model_and_matches_open_clip(converted, tmp_path):
    kind, repo, configs, out = converted
    with hf_configs_offline(configs, tmp_path):
        model = compare_with_open_clip(out, repo, f"open_clip repo tiny {kind} text tower")
    t = model.config.text
    assert t.kind == "hf_encoder" and t.pad_id == 1 and t.post_norm == (kind != "nllb")
    tokenizer = json.loads((out / "config.json").read_text())["tokenizer"]
    assert tokenizer["whitespace_split"] == (kind == "xlm-roberta") and tokenizer["pad_id"] == 1


def test_tiny_tokenizer_ids_are_open_clips(converted):
    kind, repo, _, out = converted
    ids = load_on_one_device(out).tokenize(CAPTIONS)
    reference = open_clip.get_tokenizer(f"local-dir:{repo}")(CAPTIONS).numpy()
    print(f"\n{kind}: first row {ids[0][:10]}")
    np.testing.assert_array_equal(ids, reference)
    if kind == "nllb":  # NllbTokenizer puts the source language's code (eng_Latn) first, the pooled token
        assert len(set(ids[:, 0].tolist())) == 1 and ids[0, 0] > 3


def test_hf_text_tower_options_are_checked(tmp_path):
    cfg = tiny_cfg("roberta")
    hf = KINDS["roberta"][2](100)
    text = converter._Fields(cfg["text_cfg"], converter.TEXT_FIELDS, "text_cfg", "CLIPTextCfg")
    with pytest.raises(InputError, match="hf_pooler_type is 'max_pooler'"):
        bad = converter._Fields({**cfg["text_cfg"], "hf_pooler_type": "max_pooler"}, converter.TEXT_FIELDS, "t", "c")
        converter._hf_text_config(bad, 32, hf.to_dict(), "x")
    with pytest.raises(InputError, match="^x: model_type 'gpt2' is a HF text tower jaxvlm cannot build"):
        converter._hf_text_config(text, 32, {"model_type": "gpt2"}, "x")
    with pytest.raises(InputError, match="position_embedding_type is 'relative_key'"):
        converter._hf_text_config(text, 32, {**hf.to_dict(), "position_embedding_type": "relative_key"}, "x")
    with pytest.raises(InputError, match="context_length 40 needs position 41, past the 26 rows"):
        converter._hf_text_config(
            converter._Fields({**cfg["text_cfg"], "context_length": 40}, converter.TEXT_FIELDS, "t", "c"),
            32,
            hf.to_dict(),
            "x",
        )


@pytest.mark.parametrize("name", HF_TEXT_NAMES)
def test_architectures_are_open_clips(name, tmp_path):
    """The registered configs are what the repo converter reads from open_clip's model_configs and the
    published HF configs, and every pretrained pair of them loads."""
    from jaxvlm.pretrained import get_pretrained, list_pretrained

    with hf_configs_offline(published_hf_configs(), tmp_path):
        read = converter.model_config_from_open_clip(open_clip.get_model_config(name), name)
    assert read == ARCHITECTURES[name].model
    assert all(get_pretrained(a, tag).loads for a, tag in list_pretrained() if a == name)


@pytest.mark.parametrize(
    "name",
    [
        n if n in ("roberta-ViT-B-32", "nllb-clip-base") else pytest.param(n, marks=pytest.mark.slow)
        for n in HF_TEXT_NAMES
    ],
)
def test_flops_per_example(name):
    """The text tower's count is the arithmetic's: embeddings and pooling add no matrix multiply."""
    cfg = ARCHITECTURES[name].model
    t = cfg.text
    n, w = t.context_length, t.width
    layer = 2 * n * w * 4 * w + 2 * 2 * n * n * w + 2 * 2 * n * w * t.mlp_dim
    proj = 2 * w * cfg.embed_dim if t.proj == "linear" else 2 * (w + cfg.embed_dim) * ((w + cfg.embed_dim) // 2)
    text = towers.flops_per_example(t, cfg.embed_dim)
    assert text == t.depth * layer + proj
    print(f"\n{name}: {text / 1e9:.2f} GFLOPs per text")


def _stack_shapes(depth, one_layer, prefix):
    """`stack_layers` without its copy: each layer's keys taken and of the first one's shapes, zero-stride."""
    first = {k: np.shape(x) for k, x in one_layer(0).items()}
    for i in range(1, depth):
        assert {k: np.shape(x) for k, x in one_layer(i).items()} == first, i
    return {f"{prefix}/{k}": np.broadcast_to(np.float32(0), (depth, *shape)) for k, shape in first.items()}


def open_clip_on_meta(name, tmp_path):
    with hf_configs_offline(published_hf_configs(), tmp_path), torch.device("meta"):
        return open_clip.create_model(name, pretrained=None, pretrained_text=False, device="meta")


@pytest.mark.slow
@pytest.mark.parametrize("name", HF_TEXT_NAMES)
def test_full_size_keys_are_open_clips(name, tmp_path):
    """open_clip's full-size model on the meta device (HF configs at the published sizes): its keys and shapes,
    as zero-stride arrays, convert to exactly jaxvlm's parameter tree."""
    from jaxvlm.convert.open_clip import convert_state_dict

    reference = open_clip_on_meta(name, tmp_path)
    state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in reference.state_dict().items()}
    with mock.patch("jaxvlm.convert.open_clip.stack_layers", _stack_shapes):
        params = convert_state_dict(state, name)
    count = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
    assert count == sum(v.numel() for v in reference.state_dict().values())


@pytest.mark.parametrize(
    ("name", "kind"),
    [("roberta-ViT-B-32", "roberta"), ("xlm-roberta-base-ViT-B-32", "xlm-roberta"), ("nllb-clip-base", "nllb")],
)
def test_weights_only_repos_take_hf_tokenizer_name_from_the_hub(name, kind, tmp_path):
    """laion's RoBERTa / XLM-R repos hold open_clip weights alone: converting them as the architecture downloads
    the tokenizer of its hf_tokenizer_name, as open_clip's get_tokenizer does, and reads it as the registry says."""
    from open_clip.tokenizer import HFTokenizer

    from jaxvlm import hub
    from jaxvlm.convert.open_clip import HF_TOKENIZER_NAMES, hf_hub_tokenizer

    folder = tmp_path / "tokenizer"
    KINDS[kind][1](folder)
    asked = []
    with mock.patch.object(hub, "download", lambda repo, revision, only=None: asked.append(repo) or folder):
        tokenizer, source = hf_hub_tokenizer(name, 77)
    assert asked == [HF_TOKENIZER_NAMES[name]] and source.name == "tokenizer.json"
    assert tokenizer == ARCHITECTURES[name].tokenizer
    ids = build_tokenizer(tokenizer, source.parent)(CAPTIONS)
    expected = HFTokenizer(str(folder), context_length=77)(CAPTIONS).numpy()  # what open_clip runs
    np.testing.assert_array_equal(ids, expected)  # NLLB: eng_Latn first, though the file puts it last
