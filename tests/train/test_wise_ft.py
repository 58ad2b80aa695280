"""`jaxvlm wise-ft`: weight-space interpolation of a zero-shot and a fine-tuned model directory."""

from __future__ import annotations

import json

import flax
import numpy as np
import pytest

from jaxvlm import model_dir
from jaxvlm.cli import main
from tests.train.model_dirs import write_model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("wise")
    return root, write_model(root / "zero_shot", 0), write_model(root / "fine_tuned", 1)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_interpolates_every_parameter(pair, alpha, tmp_path):
    root, a, b = pair
    out = tmp_path / "mixed"
    assert main(["wise-ft", str(root / "zero_shot"), str(root / "fine_tuned"), "--alpha", str(alpha), str(out)]) == 0
    mixed = model_dir.load(out)
    got = flax.traverse_util.flatten_dict(mixed.params, sep="/")
    assert sorted(got) == sorted(a)
    exact = {k: ((1 - alpha) * a[k].astype(np.float64) + alpha * b[k].astype(np.float64)) for k in a}
    error = max(np.abs(got[k] - exact[k]).max() for k in a)
    print(f"alpha {alpha}: max abs error against float64 {error:.2e}")
    assert all(np.array_equal(got[k], exact[k].astype(np.float32)) for k in a)  # rounded once, from float64
    if alpha in (0.0, 1.0):
        assert all(np.array_equal(got[k], (a if alpha == 0 else b)[k]) for k in a)
    assert mixed.provenance["alpha"] == alpha and mixed.provenance["fine_tuned_provenance"] == {"seed": 1}


def test_bad_inputs(pair, tmp_path, capsys):
    root, *_ = pair
    other = tmp_path / "other"
    write_model(other, 2, "tiny-clip-quickgelu")
    args = lambda alpha, b=root / "fine_tuned", out=tmp_path / "out": [
        "wise-ft",
        str(root / "zero_shot"),
        str(b),
        "--alpha",
        str(alpha),
        str(out),
    ]
    assert main(args(1.5)) == 2 and "--alpha must be in [0, 1]" in capsys.readouterr().err
    assert main(args(0.5, other)) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "differ in their config (model.text.act: 'gelu' vs 'quick_gelu'; model.vision.act: 'gelu' vs 'quick_gelu')"
        in err
    ), err
    assert main(args(0.5, out=root / "zero_shot")) == 2 and "output exists" in capsys.readouterr().err
    assert main(args(0.5, tmp_path / "missing")) == 2 and "not a jaxvlm model directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_how_a_model_runs_does_not_count(pair, tmp_path, capsys):
    """A model fine-tuned in bfloat16 with remat and XLA attention by a release whose config.json recorded those
    (as configs/finetune.py's runs did) is still a copy of the zero-shot model; the mix records none of them."""
    root, a, _ = pair
    b = write_model(tmp_path / "bf16", 3)
    config_path = tmp_path / "bf16" / model_dir.CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["model"].update(dtype="bfloat16", remat="full", attention="xla")
    config_path.write_text(json.dumps(config))
    out = tmp_path / "mixed"
    assert main(["wise-ft", str(root / "zero_shot"), str(tmp_path / "bf16"), "--alpha", "0.5", str(out)]) == 0, (
        capsys.readouterr().err
    )
    mixed = model_dir.load(out)
    assert "dtype" not in json.loads((out / model_dir.CONFIG_FILE).read_text())["model"]
    got = flax.traverse_util.flatten_dict(mixed.params, sep="/")
    assert all(np.array_equal(got[k], (0.5 * a[k].astype(np.float64) + 0.5 * b[k]).astype(np.float32)) for k in a)
