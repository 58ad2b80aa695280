"""`jaxvlm data build`: any source (tar shards, an image folder, a TFDS dataset) -> ArrayRecord shards.

Every record is read, its image decoded once in full and its captions checked; the bad ones
are left out and counted per reason. Worker processes write the shards in parallel into a
hidden sibling of the output directory, which is renamed into place once `dataset.json`
(record counts, labels, class names, what was skipped) is written: an interrupted build
leaves nothing half-written behind. Images are stored as they came, not re-encoded.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from jaxvlm.data.arrayrecord import FORMAT, METADATA_FILE, write_shard
from jaxvlm.data.records import BadRecord
from jaxvlm.data.sources import open_source
from jaxvlm.data.transforms import checked_record
from jaxvlm.errors import InputError

EXAMPLES_KEPT = 10  # bad records named in dataset.json and the summary
_PROGRESS_EVERY = 64  # records between updates of the shared progress counter

_worker = {}  # per worker process: the source, the settings, the progress counter


def _init_worker(source, max_pixels: int, need_texts: bool, progress) -> None:
    _worker.update(source=source, max_pixels=max_pixels, need_texts=need_texts, progress=progress)


def _write_shard(path: str, start: int, stop: int) -> tuple[int, dict, list]:
    """Writes the good records among positions [start, stop); returns (written, skipped, examples)."""
    skipped, examples = collections.Counter(), []

    def good_records():
        for i in range(start, stop):
            record = checked_record(_worker["source"][i], _worker["max_pixels"], _worker["need_texts"])
            if isinstance(record, BadRecord):
                skipped[record.reason] += 1
                if len(examples) < EXAMPLES_KEPT:
                    examples.append(record.describe())
            else:
                yield record
            if (i - start) % _PROGRESS_EVERY == _PROGRESS_EVERY - 1 or i == stop - 1:
                with _worker["progress"].get_lock():
                    _worker["progress"].value += (i - start) % _PROGRESS_EVERY + 1

    return write_shard(path, good_records()), dict(skipped), examples


def build(
    spec: str,
    out_dir: str | os.PathLike[str],
    *,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    image_key: str = "image",
    text_key: str = "captions",
    label_key: str = "label",
    text_templates: Iterable[str] = (),
    records_per_shard: int = 10_000,
    workers: int | None = None,
    max_image_pixels: int = 40_000_000,
    progress: bool = True,
) -> dict:
    """Builds ArrayRecord shards of `spec` in `out_dir` (new or empty); returns dataset.json's content."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"output directory {out_dir} exists and is not empty")
    if records_per_shard < 1:
        raise InputError(f"records per shard must be positive, got {records_per_shard}")
    source = open_source(
        spec,
        split=split,
        data_dir=data_dir,
        image_key=image_key,
        text_key=text_key,
        label_key=label_key,
        text_templates=tuple(text_templates),
    )
    total = len(source)
    shards = -(-total // records_per_shard)
    names = [f"records-{i:05d}-of-{shards:05d}.array_record" for i in range(shards)]
    workers = min(shards, workers or len(os.sched_getaffinity(0)))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        results = _run(source, tmp, names, total, records_per_shard, workers, max_image_pixels, progress)
        skipped, examples = collections.Counter(), []
        for _, shard_skipped, shard_examples in results:
            skipped.update(shard_skipped)
            examples.extend(shard_examples)
        metadata = {
            "format": FORMAT,
            "source": spec,
            "split": split if spec.startswith("tfds:") else None,
            "records": sum(r[0] for r in results),
            "shards": {name: r[0] for name, r in zip(names, results)},
            "has_texts": source.has_texts,
            "has_labels": source.has_labels,
            "class_names": source.class_names,
            "skipped": dict(sorted(skipped.items())),
            "skipped_examples": examples[:EXAMPLES_KEPT],
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metadata


def _run(source, tmp: Path, names, total, records_per_shard, workers, max_image_pixels, progress):
    from tqdm import tqdm

    tasks = [
        (str(tmp / name), i * records_per_shard, min(total, (i + 1) * records_per_shard))
        for i, name in enumerate(names)
    ]
    context = multiprocessing.get_context("spawn")  # the caller may hold threads (JAX): no fork
    counter = context.Value("q", 0)
    settings = (source, max_image_pixels, source.has_texts, counter)
    with tqdm(total=total, unit="records", disable=not progress, desc="building") as bar:

        def show_progress():
            if counter.value > bar.n:
                bar.update(counter.value - bar.n)

        if workers <= 1:
            _init_worker(*settings)
            results = []
            for task in tasks:
                results.append(_write_shard(*task))
                show_progress()
            return results
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=settings
        ) as pool:
            futures = [pool.submit(_write_shard, *task) for task in tasks]
            pending = futures
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, timeout=0.2, return_when=concurrent.futures.FIRST_EXCEPTION
                )
                show_progress()
                failed = next((f for f in done if f.exception()), None)
                if failed:
                    pool.shutdown(cancel_futures=True)
                    raise failed.exception()
            return [f.result() for f in futures]


def summary(metadata: dict, out_dir: str | os.PathLike[str]) -> str:
    """The lines `jaxvlm data build` prints: what was written, what was skipped and why."""
    lines = [f"wrote {metadata['records']} records in {len(metadata['shards'])} shards to {out_dir}"]
    skipped = metadata["skipped"]
    if skipped:
        lines.append(
            f"skipped {sum(skipped.values())} records: "
            + ", ".join(f"{reason}: {count}" for reason, count in skipped.items())
        )
        lines += [f"  {example}" for example in metadata["skipped_examples"]]
    return "\n".join(lines)
