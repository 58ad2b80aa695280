"""Long-CLIP position stretching: the table transform against a hand computation and Long-CLIP's own
loop, and a stretched model directory that reads long captions and embeds short ones as before."""

import json

import numpy as np
import pytest

import jaxvlm
from jaxvlm import model_dir
from jaxvlm.errors import InputError
from jaxvlm.models.long_context import stretch, stretch_positions
from tests.eval.model_dirs import random_model_dir


def long_clip_loop(pos, keep=20):
    """Long-CLIP's `load_from_clip` stretching, row by row as its loop writes it."""
    length, width = pos.shape
    out = np.zeros((4 * length - 3 * keep, width))
    out[:keep] = pos[:keep]
    for i in range(length - 1 - keep):
        for k in range(4):
            out[4 * i + keep + k] = (4 - k) * pos[i + keep] / 4 + k * pos[i + 1 + keep] / 4
    for k in range(4):
        out[4 * length - 3 * keep - 4 + k] = pos[length - 1] + k * (pos[length - 1] - pos[length - 2]) / 4
    return out


def test_first_positions_kept_the_rest_interpolated_as_long_clip_does():
    pos = np.random.default_rng(0).standard_normal((77, 8)).astype(np.float32)
    new = stretch_positions(pos)
    assert new.shape == (248, 8) and new.dtype == np.float32
    np.testing.assert_array_equal(new[:20], pos[:20])
    hand = {
        20: pos[20],
        21: 0.75 * pos[20] + 0.25 * pos[21],
        62: 0.5 * pos[30] + 0.5 * pos[31],  # 20 + 4 * 10 + 2
        243: 0.25 * pos[75] + 0.75 * pos[76],
        244: pos[76],
        247: pos[76] + 0.75 * (pos[76] - pos[75]),  # past the last row: the line goes on
    }
    for row, expected in hand.items():
        np.testing.assert_allclose(new[row], expected, rtol=1e-6, atol=1e-6, err_msg=f"row {row}")
    print("max abs difference from Long-CLIP's loop", np.abs(new - long_clip_loop(pos)).max())
    np.testing.assert_allclose(new, long_clip_loop(pos), atol=1e-6)
    # another length and factor: the same rule, (100 - 4) / (10 - 4) = 16x
    small = stretch_positions(pos[:10], context=100, keep=4)
    np.testing.assert_array_equal(small[:4], pos[:4])
    np.testing.assert_allclose(small[4 + 16 * 2 + 4], 0.75 * pos[6] + 0.25 * pos[7], atol=1e-6)


@pytest.mark.parametrize(
    "context, keep, words", [(77, 20, "above the current 77"), (248, 76, "keep must be"), (248.0, 20, "context")]
)
def test_bad_lengths(context, keep, words):
    with pytest.raises(InputError, match=words):
        stretch_positions(np.zeros((77, 4)), context, keep)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("long")
    short = random_model_dir(base / "tiny-clip", "tiny-clip")
    stretch(short, base / "tiny-clip-248")
    return short, base / "tiny-clip-248"


def test_stretched_directory_reads_long_captions_and_embeds_short_ones_as_before(dirs):
    short_dir, long_dir = dirs
    config = json.loads((long_dir / "config.json").read_text())
    assert config["model"]["text"]["context_length"] == config["tokenizer"]["context_length"] == 248
    assert config["provenance"]["context_length"] == {"from": 77, "to": 248}
    before, after = model_dir.load(short_dir).params, model_dir.load(long_dir).params
    assert after["txt"]["pos_embed"].shape == (1, 248, 64)
    np.testing.assert_array_equal(after["txt"]["pos_embed"][0, :20], before["txt"]["pos_embed"][0, :20])
    np.testing.assert_array_equal(after["img"]["pos_embed"], before["img"]["pos_embed"])

    short, long = jaxvlm.load(short_dir), jaxvlm.load(long_dir)
    caption = " ".join(["cat", "dog"] * 99)  # 198 words: 200 tokens with the start and end tokens
    ids, truncated = long.tokenize_with_truncation([caption])
    assert ids.shape == (1, 248) and (ids[0] != 0).sum() == 200 and not truncated.any()
    assert short.tokenizer.count_truncated([caption]) == 1
    assert np.isfinite(long.encode_text(ids)).all()

    texts = ["a cat", "a photo of a dog on a red sofa", "one two three four five six seven eight nine ten"]
    assert max((row != 0).sum() for row in long.tokenize(texts)) <= 20
    a, b = short.encode_text(short.tokenize(texts)), long.encode_text(long.tokenize(texts))
    print("short texts: max abs difference of the embeddings", np.abs(a - b).max())
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_refuses_coca_and_a_used_output(dirs, tmp_path):
    coca = random_model_dir(tmp_path / "coca", "tiny-coca")
    with pytest.raises(InputError, match="cannot stretch a CoCa model") as e:
        stretch(coca, tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="output exists"):
        stretch(dirs[0], dirs[1])


def test_the_stretch_command(dirs, tmp_path, capsys):
    from jaxvlm.cli import main

    out = tmp_path / "cli-248"
    assert main(["stretch", str(dirs[0]), str(out)]) == 0
    assert "text context 248, the first 20 kept" in capsys.readouterr().out.replace("positions ", "")
    np.testing.assert_array_equal(
        model_dir.load(out).params["txt"]["pos_embed"], model_dir.load(dirs[1]).params["txt"]["pos_embed"]
    )
    assert main(["stretch", str(dirs[0]), str(tmp_path / "bad"), "--context", "50"]) == 2
    err = capsys.readouterr().err.strip()
    assert "context must be an integer above the current 77 positions" in err and "\n" not in err
    assert not (tmp_path / "bad").exists()
