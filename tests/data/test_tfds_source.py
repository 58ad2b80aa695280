import pytest
import tensorflow_datasets as tfds

from jaxvlm.data.sources import open_source
from jaxvlm.errors import InputError


def test_records_equal_a_direct_read(digits_dir):
    source = open_source("tfds:jaxvlm_digits", split="test", data_dir=digits_dir)
    direct = tfds.data_source(
        "jaxvlm_digits", split="test", data_dir=str(digits_dir), decoders={"image": tfds.decode.SkipDecoding()}
    )
    assert len(source) == len(direct) == 360 and source.has_labels and source.has_texts
    for i in range(len(source)):
        record, expected = source[i], direct[i]
        assert (record.image, record.texts, record.label) == (
            expected["image"],
            tuple(expected["captions"]),
            expected["label"],
        )
        assert (record.key, record.shard) == (str(i), "tfds:jaxvlm_digits/test")


def test_templates_and_spec_options(digits_dir):
    source = open_source(
        "tfds:jaxvlm_digits?split=test&text_key=none",
        data_dir=digits_dir,
        text_templates=("a photo of a {}.", "the number {}"),
    )
    label = source[0].label
    name = source.class_names[label]
    assert source[0].texts == (f"a photo of a {name}.", f"the number {name}")
    assert not open_source("tfds:jaxvlm_digits?text_key=none", data_dir=digits_dir).has_texts


@pytest.mark.parametrize(
    "options, message",
    [("?image_key=picture", "has no feature 'picture'"), ("?label_key=captions", "text_templates need class names")],
)
def test_bad_feature_names(digits_dir, options, message):
    with pytest.raises(InputError) as e:
        open_source(f"tfds:jaxvlm_digits{options}", data_dir=digits_dir, text_templates=("{}",))
    assert message in str(e.value)
