import tarfile

import pytest

from jaxvlm.data.records import BadRecord
from jaxvlm.data.sources import open_source
from jaxvlm.data.tar import expand_pattern, write_tar_shard
from jaxvlm.errors import InputError
from tests.data.records import tar_records


def _direct(path):
    """{key: {extension: bytes}} read member by member with tarfile."""
    records = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, _, extension = member.name.partition(".")
            records.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return records


def test_records_equal_a_direct_read(tar_dir):
    source = open_source(f"tar:{tar_dir}/{{00000..00002}}.tar")
    assert len(source) == 60 and source.has_texts and source.has_labels and source.class_names is None
    direct = {}
    for s in range(3):
        direct.update({k: (v, f"{tar_dir}/{s:05d}.tar") for k, v in _direct(tar_dir / f"{s:05d}.tar").items()})
    for i in range(len(source)):
        record = source[i]
        members, shard = direct[record.key]
        image = next(v for e, v in members.items() if e in ("jpg", "png", "webp"))
        assert (record.image, record.texts, record.label, record.shard) == (
            image,
            (members["txt"],),
            int(members["cls"]),
            shard,
        )
    assert [source[i].key for i in range(60)] == [f"{i:05d}" for i in range(60)]


def test_patterns():
    assert expand_pattern("/d/{008..011}.tar") == ["/d/008.tar", "/d/009.tar", "/d/010.tar", "/d/011.tar"]
    assert expand_pattern("/d/a{1..2}-{0..1}.tar") == ["/d/a1-0.tar", "/d/a1-1.tar", "/d/a2-0.tar", "/d/a2-1.tar"]


def test_records_missing_members(tmp_path):
    records = tar_records(3)
    del records[0]["txt"]
    for extension in ("jpg", "png", "webp"):
        records[1].pop(extension, None)
    write_tar_shard(tmp_path / "a.tar", records)
    source = open_source(f"tar:{tmp_path}/a.tar")
    assert source[0].texts == ()
    assert isinstance(source[1], BadRecord) and source[1].reason == "no image"


def test_missing_and_broken_shards_fail_at_start(tar_dir, tmp_path):
    with pytest.raises(InputError, match=r"cannot read tar shard .*00003.tar"):
        open_source(f"tar:{tar_dir}/{{00000..00003}}.tar")
    data = (tar_dir / "00000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"tar shard .*cut.tar is truncated"):
        open_source(f"tar:{tmp_path}/cut.tar")
    (tmp_path / "junk.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(InputError, match="cannot read tar shard .*junk.tar"):
        open_source(f"tar:{tmp_path}/junk.tar")
    with pytest.raises(InputError, match="no tar shards match"):
        open_source(f"tar:{tmp_path}/*.tgz")
