import json

import pytest
from array_record.python.array_record_module import ArrayRecordReader

from jaxvlm.data.arrayrecord import METADATA_FILE, decode_record, encode_record, write_shard
from jaxvlm.data.records import Record
from jaxvlm.data.sources import open_source
from jaxvlm.errors import InputError
from tests.data.records import encoded, photo

RECORDS = [
    Record(key=f"k{i}", shard="", image=encoded(photo(i), "PNG"), texts=(f"cap {i}", "ünïcode ✓"), label=i % 3)
    for i in range(12)
]


@pytest.fixture
def shards(tmp_path):
    write_shard(tmp_path / "a-0.array_record", RECORDS[:7])
    write_shard(tmp_path / "a-1.array_record", RECORDS[7:])
    return tmp_path


def test_records_equal_a_direct_read(shards):
    source = open_source(f"arrayrecord:{shards}/a-*.array_record")
    assert len(source) == 12 and source.has_labels and source.has_texts and source.class_names is None
    readers = [ArrayRecordReader(str(shards / f"{name}.array_record")) for name in ("a-0", "a-1")]
    direct = [r for reader in readers for r in reader.read(list(range(reader.num_records())))]
    for i, (record, raw) in enumerate(zip((source[i] for i in range(12)), direct)):
        shard = str(shards / f"a-{int(i >= 7)}.array_record")
        assert record == decode_record(raw, shard)
        assert encode_record(record) == raw
        assert (record.key, record.image, record.texts, record.label, record.shard) == (
            RECORDS[i].key,
            RECORDS[i].image,
            RECORDS[i].texts,
            RECORDS[i].label,
            shard,
        )


def test_broken_shards_fail_at_start(shards):
    with pytest.raises(InputError, match="no ArrayRecord shards match"):
        open_source(f"arrayrecord:{shards}/b-*.array_record")
    data = (shards / "a-0.array_record").read_bytes()
    (shards / "a-0.array_record").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=r"a-0.array_record is not a readable ArrayRecord file"):
        open_source(f"arrayrecord:{shards}/a-*.array_record")


def test_metadata_catches_a_replaced_shard(shards):
    (shards / METADATA_FILE).write_text(
        json.dumps(
            {
                "format": "jaxvlm-records/1",
                "shards": {"a-0.array_record": 7, "a-1.array_record": 6},
                "has_labels": True,
                "has_texts": True,
                "class_names": ["a", "b", "c"],
            }
        )
    )
    with pytest.raises(InputError, match=r"a-1.array_record holds 5 records, dataset.json says 6"):
        open_source(f"arrayrecord:{shards}/a-*.array_record")
    assert open_source(f"arrayrecord:{shards}/a-0.array_record").class_names == ["a", "b", "c"]


def test_foreign_records_are_refused(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(tmp_path / "x.array_record"), "group_size:1")
    writer.write(b"some other format")
    writer.close()
    with pytest.raises(InputError, match="holds a record that jaxvlm did not write"):
        open_source(f"arrayrecord:{tmp_path}/x.array_record")
