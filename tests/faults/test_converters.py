"""Converters on damaged and wrong input (hypothesis): random truncations, bit flips and overwritten
bytes of safetensors / npz / .bin files and of HF config.json files, weights of other architectures,
tensors of other dtypes. Always a one-line InputError with no output directory left (not even a
hidden staging one), or a complete model directory with finite weights; never another exception."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxvlm import model_dir
from jaxvlm.convert import convert
from jaxvlm.errors import InputError
from jaxvlm.models.registry import list_models
from tests.convert.big_vision_models import SMALL, hf_siglip, to_big_vision
from tests.convert.open_clip_models import tiny_open_clip_state

EXAMPLES = {"short": 12, "full": 60}


@pytest.fixture(scope="module")
def sources(tmp_path_factory, spm_model_file):
    """{name: (source kind, path, model name, tokenizer, the file to damage)}: tiny-clip open_clip
    weights as .safetensors, .bin and .npz, a HF SigLIP directory, a big_vision SigLIP .npz."""
    from safetensors.torch import save_file

    directory = tmp_path_factory.mktemp("sources")
    state = tiny_open_clip_state()
    save_file(state, directory / "w.safetensors")
    torch.save(state, directory / "w.bin")
    np.savez(directory / "w.npz", **{k: v.numpy() for k, v in state.items()})
    siglip = hf_siglip(SMALL).float()
    siglip.save_pretrained(directory / "hf")
    np.savez(directory / "bv.npz", **to_big_vision(siglip, stacked=False))
    hf = directory / "hf"
    return {
        "open_clip .safetensors": ("open_clip", directory / "w.safetensors", "tiny-clip", None, "w.safetensors"),
        "open_clip .bin": ("open_clip", directory / "w.bin", "tiny-clip", None, "w.bin"),
        "open_clip .npz": ("open_clip", directory / "w.npz", "tiny-clip", None, "w.npz"),
        "HF model.safetensors": ("hf", hf, None, spm_model_file, "hf/model.safetensors"),
        "HF config.json": ("hf", hf, None, spm_model_file, "hf/config.json"),
        "big_vision .npz": ("big_vision", directory / "bv.npz", None, spm_model_file, "bv.npz"),
    }


def attempt(source, src, model, tokenizer, out) -> str:
    """Converts; checks that the result is a clean refusal or a complete, finite model directory."""
    try:
        convert(source, src, out, model, tokenizer)
    except InputError as e:
        assert "\n" not in str(e), str(e)
        assert not out.exists() and not list(out.parent.glob(f".{out.name}.partial*")), "left something behind"
        return "refused"
    loaded = model_dir.load(out)
    assert all(np.isfinite(v).all() for v in _leaves(loaded.params))
    return "converted"


def _leaves(tree):
    for value in tree.values():
        yield from _leaves(value) if isinstance(value, dict) else [value]


damages = st.one_of(
    st.tuples(st.just("truncated"), st.floats(0, 1)),
    st.tuples(st.just("bits flipped"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=8)),
    st.tuples(st.just("bytes overwritten"), st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=16))),
)


def damage(data: bytes, how) -> bytes:
    kind, arg = how
    data = bytearray(data)
    if kind == "truncated":
        return bytes(data[: int(arg * len(data))])
    if kind == "bits flipped":
        for where, bit in arg:
            data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
        return bytes(data)
    where, chunk = arg
    at = int(where * len(data))
    data[at : at + len(chunk)] = chunk
    return bytes(data)


@pytest.mark.parametrize("budget", [pytest.param("short"), pytest.param("full", marks=pytest.mark.faults_slow)])
@pytest.mark.parametrize(
    "name",
    [
        "open_clip .safetensors",
        "open_clip .bin",
        "open_clip .npz",
        "HF model.safetensors",
        "HF config.json",
        "big_vision .npz",
    ],
)
def test_damaged_files(name, budget, sources, tmp_path, record):
    source, src, model, tokenizer, target = sources[name]
    original = (src.parent / target).read_bytes()
    counts = {}

    @settings(max_examples=EXAMPLES[budget], deadline=10_000, database=None, suppress_health_check=list(HealthCheck))
    @given(damages)
    def run(how):
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        copy = work / "src"
        if src.is_dir():
            shutil.copytree(src, copy)
            damaged = work / target.replace("hf/", "src/")
        else:
            copy = work / "src" / src.name
            copy.parent.mkdir(parents=True)
            damaged = copy
            shutil.copy(src, copy)
        damaged.write_bytes(damage(original, how))
        result = attempt(source, copy, model, tokenizer, work / "out")
        counts[f"{how[0]}: {result}"] = counts.get(f"{how[0]}: {result}", 0) + 1

    run()
    record(
        "Bad inputs",
        f"damaged {name} (hypothesis: truncations, bit flips, overwritten bytes)",
        f"{EXAMPLES[budget]} damaged files",
        ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + "; never another exception, never a partial model directory. A damaged file that still converts "
        "differs only where its format has no check: in tensor values, or in fields that stay valid "
        "(safetensors, torch files and config.json carry no checksum; npz members do); finite values are "
        "taken as they are, non-finite ones refused",
    )


def test_weights_of_other_architectures(sources, tmp_path, record):
    tried = 0
    for name, (source, src, model, tokenizer, _) in sources.items():
        if name == "HF config.json":
            continue
        for other in list_models():
            if other == model or other == f"{model}-quickgelu":  # the same tensors, another activation
                continue
            tried += 1
            assert attempt(source, src, other, tokenizer, tmp_path / "out") == "refused", (name, other)
    record(
        "Bad inputs",
        "weights converted as another architecture",
        f"{tried} (source, --model) pairs over {len(list_models())} architectures",
        "all refused with a one-line InputError, nothing written",
    )


def test_config_json_of_another_architecture(sources, tmp_path, record):
    _, src, _, tokenizer, _ = sources["HF model.safetensors"]
    changes = {
        "model_type": "clip",
        "vision_config.hidden_size": 96,
        "text_config.num_hidden_layers": 5,
        "vision_config.patch_size": 4,
        "text_config.vocab_size": "many",
        "vision_config.image_size": -32,
        "text_config.hidden_act": "swish",
        "architectures": ["SiglipVisionModel"],
    }
    for key, value in changes.items():
        work = tmp_path / key
        shutil.copytree(src, work)
        config = json.loads((work / "config.json").read_text())
        where = config
        *parents, last = key.split(".")
        for part in parents:
            where = where[part]
        where[last] = value
        (work / "config.json").write_text(json.dumps(config))
        assert attempt("hf", work, None, tokenizer, tmp_path / f"out-{key}") == "refused", key
    record(
        "Bad inputs",
        "HF config.json describing another architecture or holding bad values",
        ", ".join(f"{k}={v!r}" for k, v in changes.items()),
        "all refused with a one-line InputError",
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64", "int32", "int64", "bool", "uint8", "complex64"])
def test_tensors_of_other_dtypes(dtype, sources, tmp_path, record):
    """One tensor of the state dict stored in another dtype: floats of any width convert (exactly as
    their float32 values), anything else is refused (it used to be cast silently)."""
    state = {k: v.clone() for k, v in tiny_open_clip_state().items()}
    key = "visual.proj"
    state[key] = state[key] > 0 if dtype == "bool" else state[key].to(getattr(torch, dtype))
    path = tmp_path / "w.bin"
    torch.save(state, path)
    result = attempt("open_clip", path, "tiny-clip", None, tmp_path / "out")
    floating = dtype.startswith(("float", "bfloat"))
    assert result == ("converted" if floating else "refused")
    if floating:
        converted = model_dir.load(tmp_path / "out").params["img"]["proj"]["kernel"]
        assert np.array_equal(converted, state[key].float().numpy())
    record(
        "Bad inputs",
        f"a weight tensor stored as {dtype}",
        "open_clip .bin, tiny-clip",
        "converted, values equal to the float32 cast"
        if floating
        else "refused: one-line InputError naming the tensor and its dtype",
    )
