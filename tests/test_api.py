"""The notebook API: jaxvlm.load and the Model's checks on its inputs."""

import numpy as np
import pytest
from safetensors.torch import save_file

import jaxvlm
from jaxvlm.cli import main
from jaxvlm.errors import InputError
from tests.convert.open_clip_models import tiny_open_clip_state


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("api")
    save_file(tiny_open_clip_state(), directory / "w.safetensors")
    assert (
        main(
            [
                "convert",
                "--from",
                "open_clip",
                str(directory / "w.safetensors"),
                str(directory / "m"),
                "--model",
                "tiny-clip",
            ]
        )
        == 0
    )
    return jaxvlm.load(directory / "m", batch_size=2)


def test_chunked_encoding_equals_one_batch(model):
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(5, 32, 32, 3)).astype(np.float32)
    ids = model.tokenize([f"caption number {i}" for i in range(5)])
    one_batch = jaxvlm.load(model.directory, batch_size=8)
    np.testing.assert_allclose(model.encode_image(pixels), one_batch.encode_image(pixels), atol=1e-6)
    np.testing.assert_allclose(model.encode_text(ids), one_batch.encode_text(ids), atol=1e-6)


def test_logits_use_the_learned_scale(model):
    zi = model.encode_image(np.zeros((1, 32, 32, 3), np.float32))
    zt = model.encode_text(model.tokenize(["a", "b"]))
    np.testing.assert_allclose(model.logits(zi, zt), np.exp(np.asarray(model.params["t"])) * zi @ zt.T, rtol=1e-6)


def test_tokenize_follows_the_model_rules(model):
    ids = model.tokenize(["a photo of a cat"])
    assert ids.dtype == np.int32 and ids.shape == (1, 77)
    assert ids[0, 0] == 49406 and 49407 in ids[0] and ids[0, -1] == 0


@pytest.mark.parametrize("pixels", [np.zeros((2, 31, 32, 3)), np.zeros((32, 32, 3)), np.zeros((0, 32, 32, 3))])
def test_bad_pixels(model, pixels):
    with pytest.raises(InputError, match="encode_image"):
        model.encode_image(pixels)


@pytest.mark.parametrize(
    "ids", [np.zeros((1, 78), np.int32), np.full((1, 5), 49408), np.full((1, 5), -1), np.zeros((1, 5), np.float32)]
)
def test_bad_ids(model, ids):
    with pytest.raises(InputError):
        model.encode_text(ids)


def test_empty_inputs(model):
    with pytest.raises(InputError, match="empty"):
        model.tokenize([])
    with pytest.raises(InputError):
        model.preprocess([])


def test_loading_and_encoding_never_import_torch(model):
    import subprocess
    import sys

    script = (
        "import sys, jaxvlm\n"
        f"m = jaxvlm.load({str(model.directory)!r})\n"
        "m.encode_text(m.tokenize(['a cat']))\n"
        "assert not [n for n in sys.modules if n.split('.')[0] in ('torch', 'transformers', 'open_clip')], 'torch'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
