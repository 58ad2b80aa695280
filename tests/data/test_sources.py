import pytest

from jaxvlm.data.sources import open_source, parse_spec
from jaxvlm.errors import InputError


def test_parse_spec():
    assert parse_spec("tfds:coco_captions?split=val&text_key=captions/text") == (
        "tfds",
        "coco_captions",
        {"split": "val", "text_key": "captions/text"},
    )
    assert parse_spec("tar:/d/{000..009}.tar") == ("tar", "/d/{000..009}.tar", {})
    assert parse_spec("folder:/d/img?captions=/d/c.tsv") == ("folder", "/d/img", {"captions": "/d/c.tsv"})


@pytest.mark.parametrize(
    "spec, message",
    [
        ("/data/shards", "must start with one of tfds:, arrayrecord:, tar:, folder:"),
        ("tar:", "names no tar location"),
        ("tar:/d/a.tar?x", "options must be ?name=value"),
        ("tar:/d/a.tar?split=train", "unknown options ['split'] (known: [])"),
        ("folder:/d?caption=/d/c.csv", "unknown options ['caption']"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(InputError) as e:
        open_source(spec)
    assert message in str(e.value)


def test_templates_are_for_tfds_only(tar_dir):
    with pytest.raises(InputError, match="text_templates apply to TFDS sources only"):
        open_source(f"tar:{tar_dir}/00000.tar", text_templates=("a photo of a {}.",))
