"""Model directories: what config.json holds, and directories written by earlier releases."""

from pathlib import Path

import numpy as np
import pytest

import jaxvlm
from jaxvlm import model_dir
from jaxvlm.errors import InputError
from jaxvlm.models import Runtime

FIXTURES = Path(__file__).parent / "fixtures"
# written by jaxvlm 265f16b, whose model config still held dtype ("bfloat16"), remat ("full") and attention
# ("xla"), and whose towers had no kind; the .npz holds its inputs and the embeddings that release computed
BEFORE_RUNTIME_SPLIT = FIXTURES / "model_dir_265f16b"


def test_a_directory_from_before_the_runtime_split_loads():
    loaded = model_dir.load(BEFORE_RUNTIME_SPLIT)
    assert (loaded.config.vision.kind, loaded.config.text.kind) == ("vit", "transformer")
    expected = np.load(FIXTURES / "model_dir_265f16b_embeddings.npz")
    # that release computed in the dtype its config named: the same program now asks for it at load time
    model = jaxvlm.load(BEFORE_RUNTIME_SPLIT, dtype="bfloat16", attention="xla")
    np.testing.assert_array_equal(model.tokenize(["a photo of the digit one", "a cat"]), expected["ids"])
    errors = {
        "image": np.abs(model.encode_image(expected["x"]) - expected["zi"]).max(),
        "text": np.abs(model.encode_text(expected["ids"]) - expected["zt"]).max(),
    }
    print("embeddings vs those 265f16b computed, max abs:", errors)
    assert max(errors.values()) == 0.0  # the same computation, bit for bit


def test_config_json_holds_the_architecture_only(tmp_path):
    loaded = model_dir.load(BEFORE_RUNTIME_SPLIT)
    model_dir.save(tmp_path / "again", loaded, BEFORE_RUNTIME_SPLIT / loaded.tokenizer.file)
    written = (tmp_path / "again" / model_dir.CONFIG_FILE).read_text()
    for field in ("dtype", "remat", "attention"):
        assert f'"{field}"' not in written
    assert model_dir.load(tmp_path / "again").config == loaded.config


@pytest.mark.parametrize("options", [{"dtype": "float16"}, {"attention": "flash"}])
def test_bad_runtime_options_fail_at_load(options):
    with pytest.raises(InputError, match=next(iter(options))):
        jaxvlm.load(BEFORE_RUNTIME_SPLIT, **options)


def test_runtime_options_change_how_not_what():
    bf16 = jaxvlm.load(BEFORE_RUNTIME_SPLIT, dtype="bfloat16")
    f32 = jaxvlm.load(BEFORE_RUNTIME_SPLIT)
    assert bf16.runtime == Runtime(dtype="bfloat16") and f32.runtime == Runtime()
    x = np.load(FIXTURES / "model_dir_265f16b_embeddings.npz")["x"]
    error = np.abs(bf16.encode_image(x) - f32.encode_image(x)).max()
    print(f"bfloat16 vs float32 image embeddings, max abs: {error:.1e}")
    # unit vectors through one bfloat16 layer (8 mantissa bits: 2^-8 = 3.9e-3 relative per rounding)
    assert 0 < error < 5e-2
