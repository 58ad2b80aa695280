"""CoCa generation against open_clip's decoder run step by step, and the beam search and
sampling invariants, on the tiny converted CoCa of the `tiny_coca` fixture."""

import dataclasses

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data

import jaxvlm
from jaxvlm.errors import InputError
from jaxvlm.generation import GenerationConfig, _process, _sampling_filter, generator
from tests.tolerances import FLOAT32_EPS

torch = pytest.importorskip("torch")

SOT, EOT = 49406, 49407
MAX_LEN, MIN_LEN = 12, 2


@pytest.fixture(scope="module")
def coca(tiny_coca):
    reference, directory = tiny_coca
    model = jaxvlm.load(directory)
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.camera()]
    pixels = model.preprocess([Image.fromarray(p).convert("RGB") for p in photos])
    return reference, model, pixels


def run(model, pixels, **options):
    cfg = GenerationConfig(**{"max_len": MAX_LEN, "min_len": MIN_LEN, **options})
    ids, scores = generator(model.module, cfg, 0)(model.params, pixels, jax.random.key(cfg.seed))
    return np.asarray(ids), np.asarray(scores)


def until_end(row) -> list:
    row = list(row)
    return row[: row.index(EOT) + 1] if EOT in row else row


def reference_greedy(reference, pixels):
    """open_clip's decoder re-run on the whole prefix for every token, argmax, end token
    forbidden before MIN_LEN tokens."""
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    out = torch.full((len(pixels), 1), SOT)
    with torch.no_grad():
        for step in range(MAX_LEN):
            logits = reference(images, out, output_labels=False)["logits"][:, -1]
            if step < MIN_LEN:
                logits[:, EOT] = -float("inf")
            out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
    return out[:, 1:].numpy()


def teacher_forced_score(model, pixels, sequences, length_penalty):
    """Sum of the log-probabilities (min-length rule applied) of each sequence [N, MAX_LEN] up to
    its end token, divided by its length ** length_penalty, from one uncached forward pass."""
    ids = np.concatenate([np.full((len(sequences), 1), SOT), sequences], axis=1).astype(np.int32)
    logits = jax.jit(model.module.apply)({"params": model.params}, pixels, ids).caption_logits[:, :-1]
    logprobs = np.array(jax.nn.log_softmax(logits.at[:, :MIN_LEN, EOT].set(-np.inf), axis=-1))
    scores = []
    for row, rows_logprobs in zip(sequences, logprobs):
        row = until_end(row)
        scores.append(rows_logprobs[np.arange(len(row)), row].sum() / len(row) ** length_penalty)
    return np.array(scores)


def test_greedy_matches_open_clip_step_by_step(coca):
    reference, model, pixels = coca
    ids, _ = run(model, pixels, method="greedy")
    expected = reference_greedy(reference, pixels)
    lengths = [len(until_end(row)) for row in expected]
    print(f"\ngreedy caption lengths {lengths}")
    assert len(set(lengths)) > 1 and min(lengths) < MAX_LEN  # some end early, not all alike
    for got, want in zip(ids[:, 0], expected):
        assert until_end(got) == until_end(want)
        assert all(t == 0 for t in got[len(until_end(want)) :])  # padding after the end token


def test_beam_search_with_one_beam_is_greedy(coca):
    _, model, pixels = coca
    greedy, greedy_scores = run(model, pixels, method="greedy", length_penalty=0.0)
    beam, beam_scores = run(model, pixels, method="beam", num_beams=1, length_penalty=0.0)
    np.testing.assert_array_equal(beam, greedy)
    np.testing.assert_allclose(beam_scores, greedy_scores, rtol=1e-6)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_scores(coca, length_penalty):
    _, model, pixels = coca
    beams, scores = run(model, pixels, method="beam", num_beams=4, length_penalty=length_penalty)
    greedy, greedy_scores = run(model, pixels, method="greedy", length_penalty=length_penalty)
    assert beams.shape == (len(pixels), 4, MAX_LEN)
    assert np.all(np.diff(scores, axis=1) <= 0), scores
    # a score sums up to MAX_LEN log-probabilities, all <= 0 (their magnitudes add up to |score|), that the two
    # searches compute and add in their own order: up to about MAX_LEN * eps * |score| apart (was 1e-5 absolute)
    slack = MAX_LEN * FLOAT32_EPS * np.abs(greedy_scores[:, 0])
    print(
        f"\nlength_penalty {length_penalty}: best beam - greedy score {scores[:, 0] - greedy_scores[:, 0]}, "
        f"slack {slack}"
    )
    assert np.all(scores[:, 0] >= greedy_scores[:, 0] - slack), (scores[:, 0], greedy_scores[:, 0], slack)
    # each returned score is the score of its returned sequence
    sequences = np.concatenate([greedy, beams], axis=1).reshape(-1, MAX_LEN)
    rescored = teacher_forced_score(model, np.repeat(pixels, 5, axis=0), sequences, length_penalty).reshape(-1, 5)
    np.testing.assert_allclose(np.concatenate([greedy_scores, scores], axis=1), rescored, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_sampling(coca):
    _, model, pixels = coca
    greedy, _ = run(model, pixels, method="greedy")
    np.testing.assert_array_equal(run(model, pixels, method="sample", top_k=1)[0], greedy)
    np.testing.assert_array_equal(run(model, pixels, method="sample", top_p=1e-6)[0], greedy)
    first, _ = run(model, pixels, method="sample", temperature=2.0, seed=1)
    np.testing.assert_array_equal(run(model, pixels, method="sample", temperature=2.0, seed=1)[0], first)
    assert not np.array_equal(run(model, pixels, method="sample", temperature=2.0, seed=2)[0], first)
    for row in first[:, 0]:
        assert EOT not in row[:MIN_LEN]


def test_logit_processing_matches_transformers():
    from transformers import (
        MinLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    vocab, index = 50, 3
    logits = rng.normal(size=(4, vocab)).astype(np.float32) * 3
    ids = rng.integers(0, vocab, size=(4, 8)).astype(np.int32)  # positions after `index` are not in the sequence
    cfg = GenerationConfig(method="sample", repetition_penalty=1.3, min_len=5, temperature=0.7, top_k=20, top_p=0.8)
    ours = _sampling_filter(_process(logits, ids, index, cfg, eot_id=7), cfg)
    prefix, theirs = torch.from_numpy(ids[:, : index + 1]).long(), torch.from_numpy(logits)
    for processor in (
        RepetitionPenaltyLogitsProcessor(1.3),
        MinLengthLogitsProcessor(5 + 1, eos_token_id=7),
        TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(20),
        TopPLogitsWarper(0.8),
    ):
        theirs = processor(prefix, theirs)
    np.testing.assert_array_equal(np.isinf(np.asarray(ours)), np.isinf(theirs.numpy()))
    kept = ~np.isinf(np.asarray(ours))
    np.testing.assert_allclose(np.asarray(ours)[kept], theirs.numpy()[kept], rtol=1e-6)


def test_generate_returns_captions(coca):
    _, model, pixels = coca
    captions = model.generate(pixels, method="greedy", max_len=MAX_LEN, min_len=MIN_LEN)
    ids, _ = run(model, pixels, method="greedy")
    assert captions == [model._tokenizer.decode(until_end(row)[:-1] if EOT in row else row) for row in ids[:, 0]]
    assert len(captions) == len(pixels) and all(isinstance(c, str) for c in captions)
    assert model.generate(pixels[:2], method="beam", num_beams=3, max_len=MAX_LEN)[0] != ""


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_beams": 0}, "num_beams"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_len": 4, "min_len": 6}, "min_len"),
        ({"max_len": 77}, "max_len"),
        ({"method": "nucleus"}, "method"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"beams": 3}, "beams"),
    ],
)
def test_bad_options_fail_before_compiling(coca, monkeypatch, options, message):
    _, model, pixels = coca

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled before checking the options")

    monkeypatch.setattr(jax, "jit", no_compiling)
    with pytest.raises(InputError, match=message):
        model.generate(pixels, **options)


def test_generate_needs_a_coca_model(tmp_path):
    from safetensors.torch import save_file

    from jaxvlm.cli import main
    from tests.convert.open_clip_models import tiny_open_clip_state

    save_file(tiny_open_clip_state(), tmp_path / "clip.safetensors")
    assert (
        main(
            [
                "convert",
                "--from",
                "open_clip",
                str(tmp_path / "clip.safetensors"),
                str(tmp_path / "m"),
                "--model",
                "tiny-clip",
            ]
        )
        == 0
    )
    model = jaxvlm.load(tmp_path / "m")
    with pytest.raises(InputError, match="CoCa"):
        model.generate(np.zeros((1, 32, 32, 3), np.float32))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"method": "nucleus"}, "method is 'nucleus'; expected one of greedy, beam, sample"),
        ({"num_beams": 0}, "num_beams must be an integer >= 1, got 0"),
        ({"max_len": 0}, "max_len must be an integer >= 1, got 0"),
        ({"max_len": 4, "min_len": 6}, r"min_len must be an integer \[0, 4\], got 6"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"seed": 2**32}, "seed must be an integer"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"length_penalty": float("inf")}, "length_penalty must be finite"),
        ({"top_p": "high"}, "top_p must be a number"),
    ],
)
def test_generation_config_checks_what_needs_no_model(options, message):
    with pytest.raises(InputError, match=message):
        GenerationConfig(**options)


def test_generation_config_from_dict_and_help():
    cfg = GenerationConfig.from_dict({"method": "sample", "top_k": np.int64(5), "seed": 3})
    assert cfg == GenerationConfig(method="sample", top_k=5, seed=3)
    assert GenerationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="generation config: unknown keys: beams"):
        GenerationConfig.from_dict({"beams": 3})
    for field in dataclasses.fields(GenerationConfig):  # the CLI's flags take their help from here
        assert field.metadata["help"], field.name
