import json

import pytest

from jaxvlm.data.records import BadRecord
from jaxvlm.data.sources import open_source
from jaxvlm.errors import InputError
from tests.data.records import encoded, photo


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "images" / "sub").mkdir(parents=True)
    for i in range(6):
        (tmp_path / "images" / "sub" / f"{i}.png").write_bytes(encoded(photo(i), "PNG"))
    return tmp_path


def test_jsonl_records_equal_a_direct_read(folder):
    lines = [
        {"image": f"sub/{i}.png", "caption": [f"photo {i}", f"picture {i}"] if i % 2 else f"photo {i}", "label": i}
        for i in range(6)
    ]
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    source = open_source(f"folder:{folder}/images?captions={folder}/captions.jsonl")
    assert len(source) == 6 and source.has_labels and source.has_texts
    for i, line in enumerate(lines):
        record = source[i]
        texts = tuple(line["caption"]) if isinstance(line["caption"], list) else (line["caption"],)
        assert (record.key, record.image, record.texts, record.label) == (
            line["image"],
            (folder / "images" / line["image"]).read_bytes(),
            texts,
            i,
        )


@pytest.mark.parametrize("suffix, separator", [(".csv", ","), (".tsv", "\t")])
def test_csv_with_named_columns(folder, suffix, separator):
    rows = [f"sub/{i}.png{separator}a photo, number {i}" for i in range(6)]
    body = f"filepath{separator}title\n" + "\n".join(
        r if separator == "\t" else r.replace("a photo, number", '"a photo, number') + '"' for r in rows
    )
    (folder / f"c{suffix}").write_text(body + "\n")
    source = open_source(
        f"folder:{folder}/images?captions={folder}/c{suffix}&image_column=filepath&caption_column=title"
    )
    assert [source[i].texts for i in range(6)] == [(f"a photo, number {i}",) for i in range(6)]
    assert not source.has_labels and source[5].label == -1


def test_missing_image_is_a_bad_record(folder):
    (folder / "c.jsonl").write_text('{"image": "sub/0.png", "caption": "x"}\n{"image": "nope.png", "caption": "y"}\n')
    source = open_source(f"folder:{folder}/images?captions={folder}/c.jsonl")
    bad = source[1]
    assert isinstance(bad, BadRecord) and (bad.key, bad.reason) == ("nope.png", "unreadable image")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"image": "sub/0.png"}\nnot json\n', "line 2 is not JSON"),
        ('{"caption": "x"}\n', "line 1 has no 'image' image path"),
        ('{"image": "sub/0.png", "caption": 5}\n', "'caption' must be a string or a list of strings"),
        ('{"image": "sub/0.png", "caption": "x", "label": "cat"}\n', "'label' must be an integer"),
        ("", "lists no images"),
    ],
)
def test_bad_captions_files(folder, content, message):
    (folder / "c.jsonl").write_text(content)
    with pytest.raises(InputError, match=None) as e:
        open_source(f"folder:{folder}/images?captions={folder}/c.jsonl")
    assert message in str(e.value)


def test_bad_folder_specs(folder):
    with pytest.raises(InputError, match="needs its captions file"):
        open_source(f"folder:{folder}/images")
    with pytest.raises(InputError, match="cannot read captions file"):
        open_source(f"folder:{folder}/images?captions={folder}/none.jsonl")
    with pytest.raises(InputError, match="is not a directory"):
        open_source(f"folder:{folder}/nothing?captions={folder}/c.jsonl")
    (folder / "c.txt").write_text("x")
    with pytest.raises(InputError, match=r"must end in .jsonl, .csv or .tsv"):
        open_source(f"folder:{folder}/images?captions={folder}/c.txt")
