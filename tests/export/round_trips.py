"""What the export tests share: an export converted back by jaxvlm gives the model directory it came from."""

import dataclasses

import flax

from jaxvlm import model_dir
from jaxvlm.convert import convert
from tests.convert.open_clip_models import max_abs


def assert_reconverts_exactly(directory, source: str, exported, out):
    """The export ``exported`` of ``directory``, converted back by jaxvlm's converter from ``source`` ("hf",
    "open_clip") into ``out``: the same architecture, preprocessing, tokenizer and parameters (max abs 0)."""
    convert(source, exported, out)
    before, after = model_dir.load(directory), model_dir.load(out)
    assert after.config == before.config
    assert after.preprocess == before.preprocess
    assert dataclasses.replace(after.tokenizer, file=before.tokenizer.file) == before.tokenizer
    a = flax.traverse_util.flatten_dict(before.params, sep="/")
    b = flax.traverse_util.flatten_dict(after.params, sep="/")
    assert a.keys() == b.keys()
    worst = max(max_abs(a[k], b[k]) for k in a)
    print(f"re-converted export: {len(a)} parameters, max abs difference {worst:.1e}")
    assert worst == 0
