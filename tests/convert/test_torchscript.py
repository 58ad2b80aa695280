"""TorchScript archives, the format of OpenAI's original CLIP .pt files: a perturbed open_clip CLIP at
tiny-clip-quickgelu's sizes, traced (as OpenAI's were) or scripted, saved with torch.jit.save. Its
weights are read without running the archive's code and equal the module's own state dict; the
converted model computes what open_clip computes; a planted global and damaged archives are one
error line, and nothing runs."""

import copy
import os
import pickle
import shlex
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from jaxvlm.cli import main
from jaxvlm.convert.torchscript import read_torchscript_weights
from jaxvlm.errors import InputError
from tests.convert.open_clip_models import CAPTIONS, TOLERANCE, load_on_one_device, max_abs, photos
from tests.tolerances import assert_close_to_scale

open_clip = pytest.importorskip("open_clip")

TINY_CLIP_QUICKGELU = dict(  # open_clip CLIP arguments with the sizes of jaxvlm's "tiny-clip-quickgelu"
    embed_dim=32,
    vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
    quick_gelu=True,
)
NON_PERSISTENT = {"attn_mask"}  # a TorchScript module's state_dict keeps the buffers open_clip marks non-persistent


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP_QUICKGELU).eval()
    with torch.no_grad():  # every tensor moves off its initial value, so swapped or missed ones show
        for key, value in model.state_dict().items():
            if key != "logit_scale" and value.is_floating_point():
                value.add_(0.02 * torch.randn_like(value))
    return model


@pytest.fixture(scope="module")
def archives(reference, tmp_path_factory):
    """{kind: path}: the model traced (encode_image and encode_text, as OpenAI's files hold them),
    the trace in float16 (OpenAI's files are), and the model scripted."""
    directory = tmp_path_factory.mktemp("torchscript")
    examples = {"encode_image": torch.randn(2, 3, 32, 32), "encode_text": torch.randint(0, 49408, (2, 77))}
    traced = torch.jit.trace_module(reference, examples)
    paths = {kind: directory / f"{kind}.pt" for kind in ("traced", "traced-fp16", "scripted")}
    torch.jit.save(traced, paths["traced"])
    # a trace shares the module's tensors: .half() on one of a copy leaves the reference in float32
    torch.jit.save(torch.jit.trace_module(copy.deepcopy(reference), examples).half(), paths["traced-fp16"])
    torch.jit.save(torch.jit.script(reference), paths["scripted"])
    return paths


@pytest.mark.parametrize("kind", ["traced", "traced-fp16", "scripted"])
def test_weights_equal_the_modules_state_dict(kind, archives, reference, monkeypatch):
    monkeypatch.setattr(torch.jit, "load", None)  # the reader never calls it
    weights = read_torchscript_weights(archives[kind])
    monkeypatch.undo()
    loaded = torch.jit.load(archives[kind]).state_dict()  # this test's own file: running it is safe
    assert list(weights) == list(loaded)
    eager = reference.state_dict()
    assert set(weights) - set(eager) == NON_PERSISTENT and set(eager) <= set(weights)
    worst = 0.0
    for key, value in loaded.items():
        assert weights[key].dtype == np.float32 and weights[key].shape == tuple(value.shape), key
        worst = max(worst, max_abs(weights[key], value.float()))
        expected = eager.get(key, value)  # attn_mask: compared with the loaded module's
        if kind == "traced-fp16":  # float16 values, widened exactly
            expected = expected.half()
        assert np.array_equal(weights[key], expected.float().numpy()), key
    print(f"\n{kind}: {len(weights)} tensors, max abs difference from the module's state_dict {worst:.1e}")
    assert worst == 0


def test_reading_needs_no_torch(archives):
    """In a process where importing torch fails, the archive still reads: nothing of torch runs."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from jaxvlm.convert.torchscript import read_torchscript_weights\n"
        f"w = read_torchscript_weights({str(archives['traced'])!r})\n"
        "print(len(w), w['visual.conv1.weight'].shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == str(len(read_torchscript_weights(archives["traced"])))


def test_converted_model_matches_open_clip(archives, reference, tmp_path):
    out = tmp_path / "model"
    argv = ["convert", "--from", "open_clip", str(archives["traced"]), str(out), "--model", "tiny-clip-quickgelu"]
    assert main(argv) == 0
    model = load_on_one_device(out)
    pixels = model.preprocess(photos())
    ids = model.tokenize(CAPTIONS)
    zi, zt = model.encode_image(pixels), model.encode_text(ids)
    with torch.no_grad():
        ref_zi = reference.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2), normalize=True)
        ref_zt = reference.encode_text(torch.from_numpy(ids).long(), normalize=True)
        ref_logits = reference.logit_scale.exp() * ref_zi @ ref_zt.T
    errors = {"image": max_abs(zi, ref_zi), "text": max_abs(zt, ref_zt)}
    print("\nTorchScript tiny-clip-quickgelu max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert all(e <= TOLERANCE for e in errors.values()), errors
    assert_close_to_scale(
        model.logits(zi, zt),
        ref_logits.numpy(),
        rtol_of_scale=TOLERANCE,
        scale=float(reference.logit_scale.exp()),
        what="TorchScript tiny-clip-quickgelu logits",
    )


def rewrite(source, target, change):
    """Copies the zip ``source`` to ``target``, each entry's bytes through ``change(name, data)``
    (None drops the entry)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = change(name, old.read(name))
            if data is not None:
                new.writestr(name, data)
    return target


def convert_error(path, tmp_path, capsys) -> str:
    """The one error line of converting ``path``; checks that nothing was written."""
    out = tmp_path / "out"
    assert main(["convert", "--from", "open_clip", str(path), str(out), "--model", "tiny-clip-quickgelu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxvlm: error:") and "\n" not in err and str(path) in err, err
    assert not out.exists()
    print(f"\n{err}")
    return err


class Planted:
    """Unpickling it runs a shell command that creates ``path``: the proof that a pickle ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.path)}",)


def test_a_planted_global_is_refused_and_never_runs(archives, tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"visual.proj": Planted(marker)}, protocol=2)
    pickle.loads(payload)  # the control: plain unpickling runs it
    assert marker.exists()
    marker.unlink()
    planted = rewrite(
        archives["traced"], tmp_path / "planted.pt", lambda name, data: payload if name.endswith("/data.pkl") else data
    )
    err = convert_error(planted, tmp_path, capsys)
    assert "refusing" in err and f"{os.system.__module__}.system" in err and "nothing was run" in err
    with pytest.raises(InputError, match="system"):
        read_torchscript_weights(planted)
    assert not marker.exists(), "the pickle ran code"


def first_storage(name: str) -> bool:
    return name.endswith("/data/0")


DAMAGES = {  # how the archive is damaged -> words the error line holds
    "truncated": (lambda path, target: target.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "truncated"),
    "a storage missing": (
        lambda path, target: rewrite(path, target, lambda n, d: None if first_storage(n) else d),
        "data/0, which the archive lacks",
    ),
    "a storage cut short": (
        lambda path, target: rewrite(path, target, lambda n, d: d[: len(d) // 2] if first_storage(n) else d),
        "data/0 holds",
    ),
    "complex tensors": (
        lambda path, target: rewrite(
            path,
            target,
            lambda n, d: (
                d.replace(b"torch\nFloatStorage\n", b"torch\nComplexFloatStorage\n") if n.endswith("/data.pkl") else d
            ),
        ),
        "ComplexFloatStorage; weights are float or integer tensors",
    ),
    "data.pkl garbled": (
        lambda path, target: rewrite(path, target, lambda n, d: d[: len(d) // 3] if n.endswith("/data.pkl") else d),
        "cannot read",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_archive_is_one_clear_error(damage, archives, tmp_path, capsys):
    make, words = DAMAGES[damage]
    damaged = tmp_path / "damaged.pt"
    make(archives["traced"], damaged)
    assert words in convert_error(damaged, tmp_path, capsys)
