"""open_clip's HFTextEncoder over BERT with pooler_type "cls_pooler": the HF model's pooler (dense + tanh over the
first token) then a linear projection. A tiny perturbed open_clip model with a BERT config and a WordPiece tokenizer
(made here, no network) saved as a hub repo converts with no --model and matches open_clip: embeddings and ids."""

from unittest import mock

import numpy as np
import pytest

from jaxvlm.cli import main
from tests.convert import hf_text_models
from tests.convert.hf_text_models import CAPTIONS, CONTEXT, hf_configs_offline, tiny_hf_text_repo
from tests.convert.open_clip_models import compare_with_open_clip, load_on_one_device
from tests.wordpiece import tiny_bert_tokenizer

open_clip = pytest.importorskip("open_clip")


def bert_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        max_position_embeddings=CONTEXT,
    )


BERT = {"bert": ("jaxvlmtest/bert-tiny", tiny_bert_tokenizer, bert_config, "cls_pooler", "linear")}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    with mock.patch.dict(hf_text_models.KINDS, BERT):
        repo, configs = tiny_hf_text_repo(root / "repo", "bert")
    out = root / "model"
    with hf_configs_offline(configs, root / "hub"):
        assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 0
    return repo, configs, out


def test_tiny_bert_cls_pooler_matches_open_clip(converted, tmp_path):
    repo, configs, out = converted
    with hf_configs_offline(configs, tmp_path):
        model = compare_with_open_clip(out, repo, "open_clip repo tiny BERT (cls_pooler) text tower")
    t = model.config.text
    assert (t.kind, t.pool, t.proj, t.pad_id, t.position_ids, t.type_vocab_size) == (
        "hf_encoder",
        "pooler",
        "linear",
        0,
        "arange",
        2,
    )


def test_tiny_bert_ids_are_open_clips(converted):
    repo, _, out = converted
    ids = load_on_one_device(out).tokenize(CAPTIONS)
    np.testing.assert_array_equal(ids, open_clip.get_tokenizer(f"local-dir:{repo}")(CAPTIONS).numpy())
    assert ids[0, 0] == 101 and 102 in ids[0]  # [CLS] ... [SEP]
