"""The command line on good and bad input: one error line, exit code 2, nothing left behind."""

import dataclasses
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import jaxvlm
from jaxvlm.cli import build_parser, main
from jaxvlm.errors import InputError
from jaxvlm.generation import GenerationConfig
from jaxvlm.models.runtime import DTYPES
from jaxvlm.ops import IMPLEMENTATIONS
from tests.convert.open_clip_models import tiny_open_clip_state

open_clip = pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "tiny.safetensors"
    save_file(tiny_open_clip_state(), path)
    return path


@pytest.fixture(scope="module")
def model_dir(weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny"
    assert main(["convert", "--from", "open_clip", str(weights), str(out), "--model", "tiny-clip"]) == 0
    return out


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(path)
    return path


def assert_one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxvlm: error:") and "\n" not in err, err
    for word in words:
        assert word in err, err
    return err


def test_list_names_the_architectures(capsys):
    assert main(["list"]) == 0
    names = capsys.readouterr().out.split()
    assert {"ViT-B-32", "ViT-B-32-quickgelu", "ViT-L-14-336", "ViT-B-16-SigLIP-384", "ViT-SO400M-14-SigLIP"} <= set(
        names
    )


def test_embed_writes_the_arrays_and_the_truncated_count(model_dir, image_file, tmp_path, capsys):
    out = tmp_path / "e.npz"
    assert (
        main(
            [
                "embed",
                str(model_dir),
                "--images",
                str(image_file),
                str(image_file),
                "--texts",
                "a cat",
                "a dog",
                "",
                "a long caption " * 30,  # 90 words: past tiny-clip's 77 tokens
                "--out",
                str(out),
            ]
        )
        == 0
    )
    with np.load(out) as z:
        assert sorted(z.files) == ["image_embeds", "logits", "text_embeds", "truncated_texts"]
        assert z["image_embeds"].shape == (2, 32) and z["text_embeds"].shape == (4, 32)
        np.testing.assert_allclose(np.linalg.norm(z["image_embeds"], axis=1), 1, atol=1e-5)
        assert z["logits"].shape == (2, 4)
        assert z["truncated_texts"] == 1
    captured = capsys.readouterr()
    assert "truncated_texts 1" in captured.out
    assert captured.err.strip() == "note: 1 of 4 texts are longer than the model's 77 tokens and were truncated"
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".partial"] == []


def test_truncated_safetensors(weights, tmp_path, capsys):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "out"
    assert main(["convert", "--from", "open_clip", str(bad), str(out), "--model", "tiny-clip"]) == 2
    assert_one_error_line(capsys, "safetensors", str(bad))
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["cut.safetensors"]


def test_state_dict_of_another_architecture(weights, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", "--from", "open_clip", str(weights), str(out), "--model", "ViT-B-32"]) == 2
    assert_one_error_line(capsys, "architecture")
    assert not out.exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("packing", ["torch.save", "raw pickle"])
def test_malicious_pickle_never_runs(packing, tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.bin"
    payload = {"visual.proj": _RunsCode(marker)}
    if packing == "torch.save":
        torch.save(payload, bad)
    else:
        bad.write_bytes(pickle.dumps(payload))
    out = tmp_path / "out"
    assert main(["convert", "--from", "open_clip", str(bad), str(out), "--model", "tiny-clip"]) == 2
    assert_one_error_line(capsys, str(bad))
    assert not marker.exists(), "the pickle ran code"
    assert not out.exists()


def test_non_image_file(model_dir, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a picture")
    out = tmp_path / "e.npz"
    assert main(["embed", str(model_dir), "--images", str(bad), "--texts", "x", "--out", str(out)]) == 2
    assert_one_error_line(capsys, str(bad))
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["notes.jpg"]


def test_empty_text_list(model_dir, tmp_path, capsys):
    out = tmp_path / "e.npz"
    assert main(["embed", str(model_dir), "--texts", "--out", str(out)]) == 2
    assert_one_error_line(capsys, "empty text list")
    assert not out.exists()


def test_output_directory_not_empty(weights, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert", "--from", "open_clip", str(weights), str(out), "--model", "tiny-clip"]) == 2
    assert_one_error_line(capsys, "not an empty directory")
    assert os.listdir(out) == ["keep.txt"]


@pytest.mark.parametrize("argv", [["convert", "--from", "nowhere", "a", "b"], ["embed"], ["frobnicate"], []])
def test_usage_errors_are_one_line(argv, capsys):
    assert main(argv) == 2
    assert_one_error_line(capsys)


def test_not_a_model_directory(tmp_path, capsys):
    assert main(["embed", str(tmp_path), "--texts", "a", "--out", str(tmp_path / "e.npz")]) == 2
    assert_one_error_line(capsys, "config.json")


def test_caption_prints_one_line_per_image(tiny_coca, image_file, tmp_path, capsys):
    _, coca_dir = tiny_coca
    other = tmp_path / "other.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 20, 3), np.uint8)).save(other)
    assert (
        main(
            [
                "caption",
                str(coca_dir),
                "--images",
                str(image_file),
                str(other),
                "--method",
                "greedy",
                "--max-len",
                "8",
                "--min-len",
                "2",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(image_file), str(other)]
    model = jaxvlm.load(coca_dir)
    expected = model.generate(model.preprocess([image_file, other]), method="greedy", max_len=8, min_len=2)
    assert [line.split("\t", 1)[1] for line in lines] == expected


@pytest.mark.parametrize(
    "options, words",
    [
        (["--num-beams", "0"], ["num_beams"]),
        (["--method", "sample", "--top-p", "1.5"], ["top_p"]),
        (["--max-len", "3", "--min-len", "5"], ["min_len"]),
        (["--max-len", "ten"], ["--max-len", "ten"]),
    ],
)
def test_caption_bad_options(tiny_coca, image_file, options, words, capsys):
    assert main(["caption", str(tiny_coca[1]), "--images", str(image_file), *options]) == 2
    assert_one_error_line(capsys, *words)


def test_caption_needs_a_coca_model(model_dir, image_file, capsys):
    assert main(["caption", str(model_dir), "--images", str(image_file)]) == 2
    assert_one_error_line(capsys, "CoCa")


# each command's required arguments, for parsing without running
COMMANDS = {
    "embed": ["m", "--texts", "a", "--out", "e.npz"],
    "caption": ["m", "--images", "a.png"],
    "eval": ["m", "--task", "captioning", "--dataset", "tfds:x"],
}


@pytest.mark.parametrize("command", ["caption", "eval"])
def test_every_generation_option_is_a_flag(command, capsys):
    fields = dataclasses.fields(GenerationConfig)
    argv = [command, *COMMANDS[command]]
    for field in fields:
        argv += [f"--{field.name.replace('_', '-')}", str(field.default)]
    args = build_parser().parse_args(argv)
    for field in fields:  # typed as the field is
        value = getattr(args, field.name)
        assert value == field.default and type(value) is type(field.default), field.name
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    for field in fields:
        assert f"--{field.name.replace('_', '-')}" in usage and " ".join(field.metadata["help"].split()) in usage


@pytest.mark.parametrize("command", COMMANDS)
def test_dtype_and_attention_choices(command, capsys):
    for dtype in DTYPES:
        for attention in IMPLEMENTATIONS:
            args = build_parser().parse_args([command, *COMMANDS[command], "--dtype", dtype, "--attention", attention])
            assert (args.dtype, args.attention) == (dtype, attention)
    assert main([command, *COMMANDS[command], "--dtype", "float16"]) == 2
    assert_one_error_line(capsys, "--dtype", "float16")
    assert main([command, *COMMANDS[command], "--attention", "flash"]) == 2
    assert_one_error_line(capsys, "--attention", "flash")


@pytest.mark.parametrize("command", COMMANDS)
def test_dtype_and_attention_reach_load(command, monkeypatch, capsys):
    calls = []

    def load(directory, **kwargs):
        calls.append(kwargs)
        raise InputError("loaded")

    monkeypatch.setattr(jaxvlm, "load", load)
    assert main([command, *COMMANDS[command], "--dtype", "bfloat16", "--attention", "xla"]) == 2
    assert_one_error_line(capsys, "loaded")
    assert main([command, *COMMANDS[command]]) == 2
    assert_one_error_line(capsys, "loaded")
    assert [(c["dtype"], c["attention"]) for c in calls] == [("bfloat16", "xla"), ("float32", "auto")]
