"""Arbitrary unicode (hypothesis: any code point, lone surrogates, control characters, text of up to
100 kB) through every tokenizer kind: never an exception, always int32 [N, context_length] ids
inside the vocabulary, and bounded time."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxvlm.tokenizers import CLIP_BPE_FILE, TokenizerConfig, build_tokenizer

CONTEXT = 16
SECONDS_PER_100KB = 5.0  # a 100 kB caption may not stall a data worker for longer


@pytest.fixture(scope="module")
def tokenizers(spm_model_file, tmp_path_factory):
    """One tokenizer of each kind: CLIP's BPE, a SentencePiece model, a HF tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    directory = tmp_path_factory.mktemp("hf-json")
    hf = Tokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(
        ["a photo of a cat", "two dogs on the grass", "ein Hund im Schnee"] * 50,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    hf.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    hf.save(str(directory / "tokenizer.json"))
    configs = {
        "clip_bpe": (TokenizerConfig("clip_bpe", CLIP_BPE_FILE.name, CONTEXT), CLIP_BPE_FILE.parent),
        "sentencepiece": (
            TokenizerConfig("sentencepiece", spm_model_file.name, CONTEXT, clean="canonicalize", pad_id=0, eos_id=1),
            spm_model_file.parent,
        ),
        "hf_json": (TokenizerConfig("hf_json", "tokenizer.json", CONTEXT, clean="none"), directory),
    }
    return {kind: build_tokenizer(cfg, where) for kind, (cfg, where) in configs.items()}


def check(tokenizer, texts) -> None:
    ids = tokenizer(texts)
    assert ids.dtype == np.int32 and ids.shape == (len(texts), CONTEXT)
    assert ids.min() >= 0 and ids.max() < tokenizer.vocab_size


SPECIAL = [
    "<start_of_text>",
    "<end_of_text>",
    "<|endoftext|>",
    "<s>",
    "</s>",
    "<unk>",
    "<pad>",
    "\u2581",
    "\x00",
    "&amp;",
    " ",
    "\n",
    "\t",
]
pieces = st.one_of(
    st.characters(codec=None, exclude_categories=()),  # any code point
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
    st.sampled_from(SPECIAL),
)  # special-token literals, whitespace, NUL
any_text = st.lists(pieces, max_size=80).map("".join)


@pytest.mark.parametrize("kind", ["clip_bpe", "sentencepiece", "hf_json"])
@pytest.mark.parametrize(
    "examples", [pytest.param(150, id="short"), pytest.param(5000, id="full", marks=pytest.mark.faults_slow)]
)
def test_arbitrary_unicode(kind, examples, tokenizers, record):
    @settings(max_examples=examples, deadline=5000, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(any_text, min_size=1, max_size=4))
    def run(texts):
        check(tokenizers[kind], texts)

    run()
    record(
        "Bad inputs",
        f"arbitrary unicode through the {kind} tokenizer (hypothesis)",
        f"{examples} batches of 1-4 texts: any code point, lone surrogates, controls, special-token literals",
        f"never raised; always int32 [N, {CONTEXT}] ids inside the vocabulary",
    )


def long_texts(seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzäöüßéèçñ"
    return {
        "one 100 kB word of random letters": "".join(rng.choice(letters) for _ in range(100_000)),
        "100 kB of random words": " ".join(
            "".join(rng.choice(letters) for _ in range(rng.randint(1, 12))) for _ in range(15_000)
        )[:100_000],
        "100 kB of random CJK": "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(33_000)),
        "100 kB of random code points": "".join(chr(rng.randint(1, 0x10FFFF)) for _ in range(25_000)),
    }


@pytest.mark.parametrize("kind", ["clip_bpe", "sentencepiece", "hf_json"])
def test_100kb_texts_take_bounded_time(kind, tokenizers, record):
    times = {}
    for name, text in long_texts(random.randrange(2**32)).items():
        started = time.perf_counter()
        check(tokenizers[kind], [text])
        times[name] = time.perf_counter() - started
    print(kind, {k: f"{v:.2f} s" for k, v in times.items()})
    record(
        "Bad inputs",
        f"100 kB texts through the {kind} tokenizer",
        ", ".join(times),
        "context-length ids in at most " + f"{max(times.values()):.2f} s per text",
    )
    assert max(times.values()) < SECONDS_PER_100KB, times
