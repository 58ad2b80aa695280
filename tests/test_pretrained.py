"""The tables of published checkpoints, as jaxvlm ships them: open_clip's, and the transformers repos
and big_vision files jaxvlm adds."""

import pytest

import jaxvlm
from jaxvlm import pretrained
from jaxvlm.errors import InputError


def test_the_table_is_open_clips():
    pytest.importorskip("open_clip")
    rows = pretrained.table_from_open_clip()
    shipped = [vars(pretrained.get_pretrained(arch, tag)) for arch, tag in jaxvlm.list_pretrained()[: len(rows)]]
    assert [{k: entry[k] for k in row} for entry, row in zip(shipped, rows)] == rows, (
        "open_clip's table changed: run `make pretrained-table`"
    )


def test_every_pair_names_a_hub_repo_or_a_gcs_file():
    pairs = jaxvlm.list_pretrained()
    entries = [pretrained.get_pretrained(*pair) for pair in pairs]
    assert len(pairs) == len(set(pairs)) == 196 + 52 + 26  # open_clip 3.3.0's, then jaxvlm's
    assert all((e.hub_repo is None) != (e.weights_url is None) for e in entries)
    prefixes = ("openai/clip-", "laion/CLIP-", "facebook/metaclip-", "google/siglip-", "google/siglip2-", "OFA-Sys/")
    prefixes += ("kakaobrain/align-",)
    added = entries[196:]
    assert all(e.tag == e.hub_repo and e.hub_repo.startswith(prefixes) for e in added if e.hub_repo)
    big_vision = [e for e in added if e.weights_url]
    assert all(e.tag == e.weights_url and e.tag.startswith("gs://big_vision/siglip") for e in big_vision)
    assert all(e.tokenizer_url.startswith("gs://") for e in big_vision)
    entry = pretrained.get_pretrained("ViT-B-32", "openai")
    assert entry.source == "hf-hub:timm/vit_base_patch32_clip_224.openai"
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


def test_the_readme_table_is_current():
    readme = pretrained.README.read_text()
    assert pretrained.loading_table() in readme, "the registry or the tables changed: run `make pretrained-table`"
    assert "| open_clip's pretrained table | 196 |" in readme


def test_an_architecture_jaxvlm_does_not_build_is_one_line_before_any_download(monkeypatch, tmp_path):
    from jaxvlm.models import registry

    monkeypatch.setenv("JAXVLM_CACHE", str(tmp_path))
    monkeypatch.delitem(registry.ARCHITECTURES, "MobileCLIP-S1")  # every open_clip pair loads now: pretend one does not
    for arch, tag in [("MobileCLIP-S1", "datacompdr")]:
        with pytest.raises(InputError, match=f"does not build the architecture {arch}(-quickgelu)? yet") as error:
            jaxvlm.load(arch, pretrained=tag)
        assert "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())
