import collections
import json

import numpy as np
import pytest

import jaxvlm.data
from jaxvlm.cli import main
from jaxvlm.data.sources import open_source
from jaxvlm.data.tar import write_tar_shard
from tests.data.records import PREPROCESS, SPOIL_REASONS, spoil, tar_records


def test_build_from_tar_skips_and_reports_bad_records(tmp_path, capsys):
    records = tar_records(40)
    bad = {3: "truncated", 17: "junk", 25: "not utf-8", 38: "empty caption"}
    for i, how in bad.items():
        records[i] = spoil(records[i], how)
    write_tar_shard(tmp_path / "0.tar", records[:20])
    write_tar_shard(tmp_path / "1.tar", records[20:])
    out = tmp_path / "built"
    assert (
        main(["data", "build", f"tar:{tmp_path}/{{0..1}}.tar", str(out), "--records-per-shard", "15", "--workers", "2"])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"wrote 36 records in 3 shards to {out}" in printed
    assert "skipped 4 records: caption is not UTF-8: 1, corrupt image: 2, empty caption: 1" in printed
    assert f"bad record '00003' in {tmp_path}/0.tar: corrupt image" in printed
    metadata = json.loads((out / "dataset.json").read_text())
    assert metadata["skipped"] == dict(collections.Counter(SPOIL_REASONS[h] for h in bad.values()))
    built = open_source(f"arrayrecord:{out}/*.array_record")
    good = [r for i, r in enumerate(records) if i not in bad]
    assert len(built) == len(good) and built.has_labels
    for i, expected in enumerate(good):
        record = built[i]
        image = next(v for e, v in expected.items() if e in ("jpg", "png", "webp"))
        assert (record.key, record.image, record.texts, record.label) == (
            expected["key"],
            image,
            (expected["txt"].decode(),),
            int(expected["cls"]),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.tar", "1.tar", "built"]  # no partial directory


def test_build_from_tfds_keeps_class_names_and_records(digits_dir, tmp_path):
    out = tmp_path / "digits"
    assert (
        main(
            [
                "data",
                "build",
                "tfds:jaxvlm_digits",
                str(out),
                "--split",
                "test",
                "--data-dir",
                str(digits_dir),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    spec = f"arrayrecord:{out}/*.array_record"
    assert jaxvlm.data.class_names(spec) == jaxvlm.data.class_names("tfds:jaxvlm_digits", data_dir=digits_dir)
    built = next(jaxvlm.data.eval_batches(spec, "ignored", preprocess=PREPROCESS, batch_size=360))
    direct = next(
        jaxvlm.data.eval_batches(
            "tfds:jaxvlm_digits", "test", preprocess=PREPROCESS, batch_size=360, data_dir=digits_dir
        )
    )
    for name in ("image", "label", "valid"):
        np.testing.assert_array_equal(built[name], direct[name])
    assert built["texts"] == direct["texts"]


def test_build_from_a_folder(tmp_path, capsys):
    from tests.data.records import encoded, photo

    (tmp_path / "img").mkdir()
    for i in range(4):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(encoded(photo(i), "JPEG"))
    (tmp_path / "c.csv").write_text("image,caption\n" + "".join(f"{i}.jpg,photo {i}\n" for i in range(5)))
    assert main(["data", "build", f"folder:{tmp_path}/img?captions={tmp_path}/c.csv", str(tmp_path / "out")]) == 0
    assert "skipped 1 records: unreadable image: 1" in capsys.readouterr().out
    built = open_source(f"arrayrecord:{tmp_path}/out/*.array_record")
    assert [built[i].texts for i in range(len(built))] == [(f"photo {i}",) for i in range(4)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["tar:{tmp}/none.tar", "{tmp}/out"], "cannot read tar shard"),
        (["tar:{tmp}/a.tar", "{tmp}"], "exists and is not empty"),
        (["tar:{tmp}/a.tar", "{tmp}/out", "--records-per-shard", "0"], "records per shard must be positive"),
        (["zip:{tmp}/a.zip", "{tmp}/out"], "must start with one of tfds:"),
    ],
)
def test_build_errors_are_one_line(tmp_path, capsys, args, message):
    write_tar_shard(tmp_path / "a.tar", tar_records(2))
    assert main(["data", "build", *(a.format(tmp=tmp_path) for a in args)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar"]
