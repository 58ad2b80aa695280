"""open_clip's table of published checkpoints, as jaxvlm ships it."""

import pytest

import jaxvlm
from jaxvlm import pretrained
from jaxvlm.errors import InputError


def test_the_table_is_open_clips():
    pytest.importorskip("open_clip")
    rows = pretrained.table_from_open_clip()
    shipped = [vars(pretrained.get_pretrained(arch, tag)) for arch, tag in jaxvlm.list_pretrained()]
    assert shipped == rows, "open_clip's table changed: run `make pretrained-table`"


def test_every_pair_names_a_hub_repo():
    pairs = jaxvlm.list_pretrained()
    assert len(pairs) == len(set(pairs)) == 196  # open_clip 3.3.0
    entry = pretrained.get_pretrained("ViT-B-32", "openai")
    assert entry.hub_name == "hf-hub:timm/vit_base_patch32_clip_224.openai"
    assert entry.hub_file is None and entry.quick_gelu
    vitamin = pretrained.get_pretrained("ViTamin-S", "datacomp1b")
    assert (vitamin.hub_repo, vitamin.hub_file) == ("jienengchen/ViTamin-S", "pytorch_model.bin")


@pytest.mark.parametrize(
    "arch, tag, message",
    [("ViT-B-32", "laion5b", "its tags: openai, laion400m_e31"), ("ViT-Z-99", "openai", "jaxvlm.list_pretrained()")],
)
def test_an_unknown_pair_is_one_clear_error(arch, tag, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pretrained.get_pretrained(arch, tag)
