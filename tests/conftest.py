"""Shared test set-up.

The PyPI torchvision wheel cannot load its compiled operators next to the CPU build of torch,
and fails at import because `torchvision::nms` has no schema. open_clip, timm and transformers'
CLIP import torchvision, so the two schemas its Python code registers fakes for are defined here,
before anything imports it. No test calls these operators.
"""

import os

# 8 simulated CPU devices for the multi-device tests; single-device programs still use one
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# libtpu (ahead-of-time TPU compiles) refuses to load while another process holds its lock file
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
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

from tests.reference_models import TINY_COCA, initialise_decoder_head  # noqa: E402


@pytest.fixture(scope="session")
def spm_model_file(tmp_path_factory):
    """A small SentencePiece model trained here, laid out like SigLIP's (pad 0, eos 1, unk 2)."""
    import sentencepiece as spm

    syllables = "ka to ri mo su ne pa lu shi ve an or ing the cat dog sky red blu ph x qu zz".split()
    rng = random.Random(0)
    directory = tmp_path_factory.mktemp("spm")
    corpus = directory / "corpus.txt"
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(2000)]
    corpus.write_text("\n".join(" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(3000)))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "spm"),
        vocab_size=200,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    return directory / "spm.model"


@pytest.fixture(scope="session")
def tiny_coca(tmp_path_factory):
    """(open_clip CoCa at tiny sizes, the jaxvlm model directory converted from it by the CLI).

    Every tensor is perturbed, and the end token's column of the vocabulary head copies that of
    a token the model often produces, so that greedy captions end at different lengths.
    """
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    from jaxvlm.cli import main

    torch.manual_seed(0)
    model = initialise_decoder_head(open_clip.CoCa(**TINY_COCA).eval())
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key != "logit_scale" and value.is_floating_point():
                value.add_(0.02 * torch.randn_like(value))
        head = model.text_decoder.text_projection
        head[:, 49407] = 1.01 * head[:, 519]  # a token this model often picks: some captions end early
    directory = tmp_path_factory.mktemp("tiny-coca")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "weights.safetensors")
    assert (
        main(
            [
                "convert",
                "--from",
                "open_clip",
                str(directory / "weights.safetensors"),
                str(directory / "model"),
                "--model",
                "tiny-coca",
            ]
        )
        == 0
    )
    return model, directory / "model"
