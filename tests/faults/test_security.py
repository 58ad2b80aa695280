"""Nobody's code runs: `jaxvlm.load`, every converter and `jaxvlm train --config.model.init_from`
read pickles only through torch's ``weights_only`` unpickler (or refuse them); a planted pickle
whose unpickling would create a file never creates it. A model directory is data only: config.json,
model.safetensors and the tokenizer file it names, inside it."""

from __future__ import annotations

import builtins
import json
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import jaxvlm
from jaxvlm.cli import main
from jaxvlm.convert import convert
from jaxvlm.errors import InputError
from tests.convert.open_clip_models import tiny_open_clip_state


class Planted:
    """Unpickling it writes ``path``: the proof that a pickle ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.exec, (f"open({self.path!r}, 'w').write('pwned')",)


@pytest.fixture(scope="module")
def model_directory(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    save_file(tiny_open_clip_state(), directory / "w.safetensors")
    convert("open_clip", directory / "w.safetensors", directory / "model", "tiny-clip")
    return directory / "model"


def plant(kind: str, path, marker):
    """Writes a file of ``kind`` at ``path`` whose loading with plain pickle would create ``marker``."""
    payload = {"visual.proj": Planted(marker), "logit_scale": torch.zeros(())}
    if kind == "torch.save":
        torch.save(payload, path)
    elif kind == "raw pickle":
        path.write_bytes(pickle.dumps(payload))
    elif kind == "npz with an object array":
        np.savez(path, **{"img/embedding/kernel": np.array([Planted(marker)], dtype=object)})
    elif kind == "pickle named .npy inside an npz":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("t.npy", pickle.dumps(Planted(marker)))
    else:
        raise ValueError(kind)
    return path


def test_the_planted_pickle_is_live(tmp_path):
    """The control: plain unpickling of the payload does create the file."""
    pickle.loads(pickle.dumps(Planted(tmp_path / "pwned")))
    assert (tmp_path / "pwned").read_text() == "pwned"


CONVERTER_CASES = {
    "open_clip .bin (torch.save)": ("open_clip", "w.bin", "torch.save"),
    "open_clip .pt (raw pickle)": ("open_clip", "w.pt", "raw pickle"),
    "open_clip .pth (torch.save)": ("open_clip", "w.pth", "torch.save"),
    "big_vision .npz with an object array": ("big_vision", "w.npz", "npz with an object array"),
    "big_vision .npz holding a pickle as .npy": ("big_vision", "w.npz", "pickle named .npy inside an npz"),
    "HF directory with pytorch_model.bin": ("hf", "pytorch_model.bin", "torch.save"),
    "HF directory with a sharded index naming a pickle": ("hf", "pytorch_model-00001-of-00001.bin", "raw pickle"),
}


@pytest.mark.parametrize("case", list(CONVERTER_CASES))
def test_converters_never_run_a_planted_pickle(case, tmp_path, spm_model_file, capsys, record):
    source, name, kind = CONVERTER_CASES[case]
    marker = tmp_path / "pwned"
    src = tmp_path / "src"
    src.mkdir()
    plant(kind, src / name, marker)
    if source == "hf":
        (src / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
        if "index" in case:
            (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"visual.proj": name}}))
    argv = [
        "convert",
        "--from",
        source,
        str(src if source == "hf" else src / name),
        str(tmp_path / "out"),
        "--tokenizer",
        str(spm_model_file),
    ] + (["--model", "tiny-clip"] if source == "open_clip" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxvlm: error:") and "\n" not in err
    assert not marker.exists(), "the pickle ran code"
    assert not (tmp_path / "out").exists()
    record(
        "Security",
        f"a pickle that writes a file when unpickled, planted as {case}",
        "`jaxvlm convert`",
        f"refused ({err[len('jaxvlm: error: ') :][:110]}...); the file never appeared",
    )


def test_load_reads_only_data(model_directory, tmp_path, record):
    """Pickles, Python files and a .pth next to a model's files are never opened; `jaxvlm.load` and
    a training run starting from the directory work and no planted code runs."""
    marker = tmp_path / "pwned"
    directory = tmp_path / "model"
    shutil.copytree(model_directory, directory)
    plant("torch.save", directory / "pytorch_model.bin", marker)
    plant("raw pickle", directory / "model.pkl", marker)
    (directory / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    (directory / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    model = jaxvlm.load(directory)
    assert model.encode_text(model.tokenize(["a cat"])).shape == (1, 32)
    from jaxvlm.train.config import base_config
    from jaxvlm.train.program import model_spec

    cfg = base_config().model
    cfg.init_from = str(directory)
    assert model_spec(cfg).pretrained is not None
    assert not marker.exists()
    record(
        "Security",
        "pickles (`pytorch_model.bin`, `model.pkl`) and Python files planted in a model directory",
        "`jaxvlm.load`, `model.init_from` of a training run",
        "loaded from config.json + model.safetensors + the tokenizer file only; nothing planted was opened or ran",
    )


@pytest.mark.parametrize("replaced", ["model.safetensors", "bpe_simple_vocab_16e6.txt.gz"])
def test_a_pickle_in_place_of_a_model_file(replaced, model_directory, tmp_path, record):
    marker = tmp_path / "pwned"
    directory = tmp_path / "model"
    shutil.copytree(model_directory, directory)
    plant("torch.save", directory / replaced, marker)
    with pytest.raises(InputError) as error:
        jaxvlm.load(directory)
    assert not marker.exists() and "\n" not in str(error.value)
    record(
        "Security",
        f"a pickle in place of a model directory's {replaced}",
        "`jaxvlm.load`",
        f'InputError "{str(error.value).replace(str(tmp_path), "DIR")[:100]}..."; the planted code never ran',
    )


@pytest.mark.parametrize("name", ["../../outside.model", "/etc/passwd", "sub/tokenizer.json", ".."])
def test_a_tokenizer_file_outside_the_directory_is_refused(name, model_directory, tmp_path, record):
    """config.json naming its tokenizer file by a path would read (and a training run's export would
    write) outside the directory."""
    directory = tmp_path / "model"
    shutil.copytree(model_directory, directory)
    config = json.loads((directory / "config.json").read_text())
    config["tokenizer"]["file"] = name
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="tokenizer file must be a plain file name"):
        jaxvlm.load(directory)
    record(
        "Security",
        f"config.json naming the tokenizer file `{name}`",
        "`jaxvlm.load`",
        "refused: the tokenizer file must be a plain file name inside the directory",
    )
