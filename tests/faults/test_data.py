"""Bad data: corrupt images (fuzzed), decompression bombs, tar members named ``../x`` or ``/x`` (and
links), empty / non-UTF-8 / 100 kB captions, shards of zero records. Each bad record is skipped
and counted (or, in strict mode, one error naming it); nothing is written outside the output
directory; nothing crashes or hangs."""

from __future__ import annotations

import io
import os
import random
import struct
import tarfile
import time
import uuid
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from jaxvlm.cli import main
from jaxvlm.data.records import BadRecord, Record
from jaxvlm.data.sources import open_source
from jaxvlm.data.tar import write_tar_shard
from jaxvlm.data.transforms import ExampleTransform, checked_record
from jaxvlm.errors import InputError
from tests.data.records import PREPROCESS, encoded, photo, tar_records

MAX_PIXELS = 4_000_000
EXOTIC = {  # (PIL mode, format): images that decode but are not plain RGB
    "RGB JPEG": ("RGB", "JPEG"),
    "CMYK JPEG": ("CMYK", "JPEG"),
    "grey PNG": ("L", "PNG"),
    "16-bit PNG": ("I;16", "PNG"),
    "palette PNG": ("P", "PNG"),
    "LA PNG": ("LA", "PNG"),
    "RGBA WebP": ("RGBA", "WEBP"),
    "GIF": ("P", "GIF"),
    "1-bit BMP": ("1", "BMP"),
    "float TIFF": ("F", "TIFF"),
    "32-bit int TIFF": ("I", "TIFF"),
    "YCbCr TIFF": ("YCbCr", "TIFF"),
}


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return {name: encoded(photo(i).convert(mode), fmt) for i, (name, (mode, fmt)) in enumerate(EXOTIC.items())}


@pytest.fixture(scope="module")
def transforms(tokenizer):
    return {
        "train": ExampleTransform(PREPROCESS, tokenizer, augment="train", max_image_pixels=MAX_PIXELS),
        "eval": ExampleTransform(PREPROCESS, tokenizer, augment="eval", max_image_pixels=MAX_PIXELS),
        "strict": ExampleTransform(PREPROCESS, tokenizer, augment="train", max_image_pixels=MAX_PIXELS, strict=True),
    }


@pytest.fixture(scope="module")
def tokenizer():
    from jaxvlm.tokenizers import CLIP_BPE_FILE, ClipBpeTokenizer

    return ClipBpeTokenizer(CLIP_BPE_FILE, context_length=16)


def outcome(transforms, data: bytes, caption=b"a caption") -> str:
    """Through the build check and every transform: "ok" or the rejection reason; anything else fails."""
    record = Record(key="k", shard="s", image=data, texts=(caption,))
    checked = checked_record(record, MAX_PIXELS, need_texts=True)
    results = []
    for name, transform in transforms.items():
        try:
            example = transform(record, np.random.default_rng(0))
        except InputError as e:
            assert name == "strict" and "bad record 'k' in s" in str(e)
            results.append("strict error")
            continue
        if isinstance(example, BadRecord):
            results.append(example.reason)
            continue
        assert example["image"].shape == (32, 32, 3) and np.isfinite(example["image"]).all()
        assert example["text"].shape == (16,)
        results.append("ok")
    reasons = {r for r in results if r not in ("ok", "strict error")}
    if isinstance(checked, BadRecord):
        assert reasons <= {checked.reason} and "ok" not in results[:2], (checked, results)
        return checked.reason
    assert reasons == set() or reasons == {"corrupt image"}, results  # a lazy decoder may notice later
    return "ok" if not reasons else "corrupt image"


def test_every_image_mode_decodes(images, transforms, record):
    outcomes = {name: outcome(transforms, data) for name, data in images.items()}
    print(outcomes)
    record(
        "Bad inputs",
        "images of unusual modes (CMYK, 16-bit, float, palette, 1-bit, alpha, YCbCr)",
        ", ".join(EXOTIC),
        "all decoded to finite float32 [32, 32, 3] by the train and eval transforms",
    )
    assert set(outcomes.values()) == {"ok"}, outcomes


corruptions = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip bits"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=8)),
    st.tuples(st.just("overwrite bytes"), st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=16))),
    st.tuples(st.just("insert bytes"), st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=64))),
)


def corrupt(data: bytes, how) -> bytes:
    kind, arg = how
    data = bytearray(data)
    if kind == "truncate":
        return bytes(data[: int(arg * len(data))])
    if kind == "flip bits":
        for where, bit in arg:
            data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
        return bytes(data)
    where, chunk = arg
    at = int(where * len(data))
    if kind == "overwrite bytes":
        data[at : at + len(chunk)] = chunk
    else:
        data[at:at] = chunk
    return bytes(data)


@pytest.mark.parametrize(
    "examples", [pytest.param(120, id="short"), pytest.param(5000, id="full", marks=pytest.mark.faults_slow)]
)
def test_fuzzed_corrupt_images(examples, images, transforms, record):
    counts = {}

    @settings(max_examples=examples, deadline=5000, database=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(images)), corruptions)
    def run(name, how):
        result = outcome(transforms, corrupt(images[name], how))
        counts[result] = counts.get(result, 0) + 1

    run()
    record(
        "Bad inputs",
        "corrupt images (hypothesis: truncations, bit flips, overwritten and inserted bytes of "
        f"{len(images)} kinds of image)",
        f"{examples} images",
        ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + "; each rejected one skipped and counted "
        "(strict mode: one error naming it), never an exception",
    )


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims ``width`` x ``height`` pixels (a few rows of data, the rest missing)."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(b"\0" * (width // 8 + 1) * 4)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


def png_bomb(width: int, height: int) -> bytes:
    """A complete 1-bit PNG of ``width`` x ``height`` zeros: kilobytes on disk, gigabytes decoded."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (width // 8 + 2)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", body)
        + chunk(b"IEND", b"")
    )


def gif_claiming(width: int, height: int) -> bytes:
    """A 1 x 1 GIF whose logical screen says ``width`` x ``height``."""
    data = bytearray(encoded(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def test_decompression_bombs(tmp_path, capsys, record):
    """`jaxvlm data build` on tar shards holding images that claim (or hold) billions of pixels."""
    bombs = {
        "PNG claiming 100000 x 100000": png_header_only(100_000, 100_000),
        "PNG of 20000 x 20000 zeros (complete)": png_bomb(20_000, 20_000),
        "GIF claiming 65535 x 65535": gif_claiming(65535, 65535),
    }
    records = tar_records(4)
    for i, (name, data) in enumerate(bombs.items()):
        records.append({"key": f"bomb{i}", "png": data, "txt": name.encode()})
    write_tar_shard(tmp_path / "0.tar", records)
    started = time.perf_counter()
    for limit in (MAX_PIXELS, 10**12):  # ours, then only Pillow's own bomb check
        out = tmp_path / f"out-{limit}"
        assert (
            main(
                ["data", "build", f"tar:{tmp_path}/0.tar", str(out), "--workers", "1", "--max-image-pixels", str(limit)]
            )
            == 0
        )
        printed = capsys.readouterr().out
        assert "wrote 4 records" in printed and f"image too large: {len(bombs)}" in printed, printed
    took = time.perf_counter() - started
    record(
        "Bad inputs",
        "decompression bombs in `jaxvlm data build`",
        ", ".join(bombs),
        f'all skipped as "image too large" from their headers, with --max-image-pixels {MAX_PIXELS} and with '
        f"10^12 (Pillow's own check); both builds together {took:.2f} s",
    )


def test_tar_members_cannot_write_outside(tmp_path, capsys, record):
    """Members named ``../x``, ``/abs/x``, ``a/../../x``, symbolic and hard links to files outside, a
    device node: the build writes only its output directory and reads no file outside the shard."""
    outside = f"/tmp/jaxvlm-faults-{uuid.uuid4().hex}"
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the data set")
    good = tar_records(2)
    image = good[0]["jpg"]
    shard = tmp_path / "shards" / "0.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:

        def add(name, data=b"", **fields):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for record_ in good:
            for extension in ("jpg", "png", "webp", "txt"):
                if extension in record_:
                    add(f"{record_['key']}.{extension}", record_[extension])
        for name in ("../../escape", f"{outside}", "a/../../../up"):
            add(f"{name}.jpg", image)
            add(f"{name}.txt", b"caption")
        add("link.jpg", type=tarfile.SYMTYPE, linkname=str(secret))
        add("link.txt", b"caption")
        add("hard.jpg", type=tarfile.LNKTYPE, linkname=str(secret))
        add("hard.txt", b"caption")
        add("dev.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("dev.txt", b"caption")
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "out"
    assert main(["data", "build", f"tar:{shard}", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    after = {p for p in tmp_path.rglob("*")}
    assert {p for p in after - before if out not in p.parents and p != out} == set()
    assert not os.path.exists(f"{outside}.jpg") and not (tmp_path.parent / "escape.jpg").exists()
    built = open_source(f"arrayrecord:{out}/*.array_record")
    keys = sorted(built[i].key for i in range(len(built)))
    assert all(secret.read_bytes() not in built[i].image for i in range(len(built)))
    record(
        "Bad inputs",
        "tar members named `../../x`, `/abs/x`, `a/../../../x`; symbolic and hard links to a file "
        "outside; a device node",
        "1 shard through `jaxvlm data build`",
        f"nothing written outside the output directory (tar members are read at their offsets, never "
        f"extracted); the named members kept as records keyed {keys[:3]}...; links and devices never followed "
        f"({printed.splitlines()[-1].strip() if 'skipped' in printed else 'no records from them'})",
    )


def test_captions(tmp_path, capsys, tokenizer, record):
    """Empty, blank, non-UTF-8, NUL-holding and 100 kB captions through `jaxvlm data build` and the
    training pipeline."""
    rng = random.Random()
    huge = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(100_000)).encode()
    captions = {
        "empty": b"",
        "blank": b" \t\n",
        "not UTF-8": b"caf\xe9 \xff\xfe",
        "NUL": b"a\x00b",
        "100 kB one word": huge,
        "100 kB words": b" ".join([b"word"] * 20_000),
        "plain": b"a red circle",
    }
    records = [
        {"key": f"{i:03d}", "png": encoded(photo(i), "PNG"), "txt": caption}
        for i, caption in enumerate(captions.values())
    ]
    write_tar_shard(tmp_path / "0.tar", records)
    out = tmp_path / "out"
    started = time.perf_counter()
    assert main(["data", "build", f"tar:{tmp_path}/0.tar", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 3 records: caption is not UTF-8: 1, empty caption: 2" in printed, printed
    import jaxvlm.data

    config = jaxvlm.data.default_config()
    config.source, config.worker_count = f"arrayrecord:{out}/*.array_record", 0
    iterator = jaxvlm.data.train_iterator(
        config, preprocess=PREPROCESS, tokenizer=tokenizer, global_batch_size=4, seed=0
    )
    batch = next(iterator)
    took = time.perf_counter() - started
    assert batch["text"].shape == (4, 16) and took < 60
    record(
        "Bad inputs",
        "captions: empty, blank, not UTF-8, holding NUL, 100 kB (one word / many words)",
        f"{len(captions)} records through `jaxvlm data build` and the training pipeline",
        f"empty, blank and non-UTF-8 skipped and counted; the others kept, 100 kB ones tokenised to the "
        f"context length; build + first batch {took:.1f} s",
    )


def test_shards_of_zero_records(tmp_path, capsys, record):
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    write_tar_shard(tmp_path / "good.tar", tar_records(3))
    all_bad = tmp_path / "bad.tar"
    write_tar_shard(all_bad, [{"key": "x", "png": b"junk", "txt": b"caption"}])
    outcomes = {}
    assert main(["data", "build", f"tar:{empty}", str(tmp_path / "o1")]) == 2
    outcomes["an empty tar shard alone"] = capsys.readouterr().err.strip().replace(str(tmp_path), "DIR")
    assert main(["data", "build", f"tar:{tmp_path}/*.tar", str(tmp_path / "o2"), "--workers", "1"]) == 0
    outcomes["an empty shard among good ones"] = capsys.readouterr().out.splitlines()[0].replace(str(tmp_path), "DIR")
    assert main(["data", "build", f"tar:{all_bad}", str(tmp_path / "o3"), "--workers", "1"]) == 0
    capsys.readouterr()
    with pytest.raises(InputError, match="hold no records"):
        open_source(f"arrayrecord:{tmp_path}/o3/*.array_record")
    outcomes["ArrayRecord shards of zero records (every record bad)"] = 'reading them: InputError "... hold no records"'
    print(outcomes)
    assert (
        outcomes["an empty tar shard alone"].startswith("jaxvlm: error:")
        and "no records" in outcomes["an empty tar shard alone"]
    )
    assert "wrote 3 records" in outcomes["an empty shard among good ones"]
    record(
        "Bad inputs", "shards of zero records", ", ".join(outcomes), "; ".join(f"{k}: {v}" for k, v in outcomes.items())
    )
