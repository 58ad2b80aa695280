"""Input pipeline speed: jaxvlm's Grain pipeline against a torch DataLoader with open_clip's transform.

Both read the same WebDataset-style JPEG tar shards (photos from scikit-image, randomly cropped
and resized so the short side is 256-640 px, with generated captions), in shuffled order, and
produce batches of decoded, random-resized-cropped (224 px, scale 0.9-1.0, bicubic),
normalised float32 images and 77-token CLIP ids, with the same number of worker processes:

  jaxvlm          `jaxvlm.data.train_iterator` on "tar:..." (flip off, like open_clip's default);
  jaxvlm no-draft the same with `jpeg_draft` off: every JPEG decoded at full size, as torch does;
  torch           torch DataLoader over the same records, open_clip's `image_transform(224,
                  is_train=True)` and `open_clip.get_tokenizer("ViT-B-32")`, default collation.

Each pipeline is started, its first batch taken (worker start-up is not timed), then
``--batches`` batches are timed; the pipelines run one after another ``--repeats`` times and the
median is kept. The machine is shared, so only ratios within one run mean anything.

    python benchmarks/input_pipeline.py [--workers 2] [--batch 64] [--batches 20] [--repeats 3]

Prints a table and writes benchmarks/results/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import metric, write_results
from PIL import Image

import jaxvlm.data
from jaxvlm.data.tar import TarSource, write_tar_shard
from jaxvlm.preprocess import PreprocessConfig
from jaxvlm.tokenizers import CLIP_BPE_FILE, ClipBpeTokenizer

TARGET = 1.0  # jaxvlm must be at least as fast as the torch pipeline
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
WORDS = "a photo of the red blue small large cat dog rocket coffee cup sky space woman person on in with".split()


def write_shards(directory: Path, images: int, shards: int) -> str:
    """JPEG tar shards of random crops of scikit-image's photos; returns their tar: pattern."""
    import skimage.data

    rng = np.random.default_rng(0)
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    per_shard = -(-images // shards)
    for s in range(shards):
        records = []
        for i in range(s * per_shard, min(images, (s + 1) * per_shard)):
            photo = photos[rng.integers(len(photos))]
            w, h = photo.size
            cw, ch = int(w * rng.uniform(0.5, 1)), int(h * rng.uniform(0.5, 1))
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            short = int(rng.integers(256, 641))
            scale = short / min(cw, ch)
            img = photo.resize(
                (round(cw * scale), round(ch * scale)), Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch)
            )
            out = io.BytesIO()
            img.save(out, "JPEG", quality=90)
            caption = " ".join(rng.choice(WORDS, int(rng.integers(4, 16))))
            records.append({"key": f"{i:06d}", "jpg": out.getvalue(), "txt": caption.encode()})
        write_tar_shard(directory / f"{s:05d}.tar", records)
    return f"tar:{directory}/{{00000..{shards - 1:05d}}}.tar"


def jaxvlm_batches(spec: str, workers: int, batch: int, jpeg_draft: bool):
    config = jaxvlm.data.default_config()
    config.update(source=spec, worker_count=workers, flip=False, jpeg_draft=jpeg_draft)
    it = jaxvlm.data.train_iterator(
        config,
        preprocess=PreprocessConfig(224),
        tokenizer=ClipBpeTokenizer(CLIP_BPE_FILE),
        global_batch_size=batch,
        seed=0,
    )
    return it, it.close


def torch_batches(spec: str, workers: int, batch: int):
    import torch

    for name in ("nms", "qnms"):  # see tests/conftest.py: lets torchvision import next to CPU torch
        try:
            torch.library.define(f"torchvision::{name}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
            pass
    import open_clip

    class Records(torch.utils.data.Dataset):
        def __init__(self):
            self.source = TarSource(spec.removeprefix("tar:"))
            self.transform = open_clip.image_transform(224, is_train=True)
            self.tokenizer = open_clip.get_tokenizer("ViT-B-32")

        def __len__(self):
            return len(self.source)

        def __getitem__(self, i):
            record = self.source[i]
            image = self.transform(Image.open(io.BytesIO(record.image)))
            return image, self.tokenizer([record.texts[0].decode()])[0]

    loader = torch.utils.data.DataLoader(
        Records(),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )

    def forever():
        while True:
            yield from loader

    return forever(), lambda: None


def images_per_s(make, batch: int, batches: int) -> float:
    it, close = make()
    next(it)  # start-up: worker processes, first batch
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    close()
    return batch * batches / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1024)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        spec = write_shards(Path(tmp), args.images, shards=4)
        pipelines = {
            "jaxvlm": lambda: jaxvlm_batches(spec, args.workers, args.batch, jpeg_draft=True),
            "jaxvlm no-draft": lambda: jaxvlm_batches(spec, args.workers, args.batch, jpeg_draft=False),
            "torch": lambda: torch_batches(spec, args.workers, args.batch),
        }
        runs = {name: [] for name in pipelines}
        for _ in range(args.repeats):
            for name, make in pipelines.items():
                runs[name].append(images_per_s(make, args.batch, args.batches))
                print(f"{name:16s} {runs[name][-1]:8.1f} images/s", flush=True)
    rates = {name: statistics.median(r) for name, r in runs.items()}
    base = rates["torch"]
    print(f"\n{'pipeline':16s} {'images/s':>9s} {'vs torch':>9s}")
    for name, rate in rates.items():
        print(f"{name:16s} {rate:9.1f} {rate / base:8.2f}x")

    import grain
    import torch

    summary = [
        metric(
            "input pipeline images/s, Grain vs torch DataLoader + open_clip transform", rates["jaxvlm"] / base, TARGET
        )
    ]
    write_results(
        "input_pipeline",
        {
            "library_versions": {"grain": grain.__version__, "torch": torch.__version__, "pillow": Image.__version__},
            "settings": {
                **vars(args),
                "image_size": 224,
                "crop_scale": [0.9, 1.0],
                "tokens": 77,
                "data": "JPEG q90 tar shards, short side 256-640 px, scikit-image photos",
            },
            "results": {
                name: {"images_per_s": rate, "runs": runs[name], "vs_torch": rate / base}
                for name, rate in rates.items()
            },
        },
        summary,
    )


if __name__ == "__main__":
    main()
