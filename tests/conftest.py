"""Shared test set-up.

The PyPI torchvision wheel cannot load its compiled operators next to the CPU build of torch,
and fails at import because `torchvision::nms` has no schema. open_clip, timm and transformers'
CLIP import torchvision, so the two schemas its Python code registers fakes for are defined here,
before anything imports it. No test calls these operators.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _define_torchvision_schemas():
    try:
        import torch
    except ImportError:  # the library's own tests run without torch
        return
    for name, schema in (
        ("nms", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"),
        ("qnms", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"),
    ):
        try:
            torch.library.define(f"torchvision::{name}", schema)
        except RuntimeError:  # already defined (torchvision's ops did load after all)
            pass


_define_torchvision_schemas()


import random  # noqa: E402

import pytest  # noqa: E402

SYLLABLES = "ka to ri mo su ne pa lu shi ve an or ing the cat dog sky red blu ph x qu zz".split()


@pytest.fixture(scope="session")
def spm_model_file(tmp_path_factory):
    """A small SentencePiece model trained here, laid out like SigLIP's (pad 0, eos 1, unk 2)."""
    import sentencepiece as spm

    rng = random.Random(0)
    directory = tmp_path_factory.mktemp("spm")
    corpus = directory / "corpus.txt"
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(2000)]
    corpus.write_text("\n".join(" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(3000)))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "spm"), vocab_size=200, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )
    return directory / "spm.model"
