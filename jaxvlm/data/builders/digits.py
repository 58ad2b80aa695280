"""`jaxvlm_digits`: an image-text dataset made offline from scikit-learn's handwritten digits.

The 1797 8x8 images of `sklearn.datasets.load_digits` are scaled to 0..255, upscaled to
`IMAGE_SIZE` px with bilinear interpolation, made RGB and stored as PNG. Every image keeps its
label (a ClassLabel named "zero".."nine") and gets `CAPTIONS_PER_IMAGE` different captions drawn
from `TEMPLATES` with a fixed seed. Every fifth image (by position in scikit-learn's order) is in
"test", the others in "train". The files are ArrayRecord, so `tfds.data_source` reads them with
no TensorFlow; TFDS writes them with its own serializer, so building needs no TensorFlow either.
"""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

IMAGE_SIZE = 32
CAPTIONS_PER_IMAGE = 3
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = (
    "a photo of the number {name}",
    "a handwritten {name}",
    "the digit {digit}",
    "a picture of a handwritten number {name}",
    "the number {digit} written by hand",
    "a blurry image of the digit {name}",
)
TEST_EVERY = 5
_SEED = 0


class JaxvlmDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits as RGB images with captions and labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=NAMES),
                    "captions": tfds.features.Sequence(tfds.features.Text()),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data ships with scikit-learn
        return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

    def _generate_examples(self, split: str):
        from sklearn.datasets import load_digits

        digits = load_digits()
        rng = np.random.default_rng(_SEED)
        for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
            # Drawn for every image, whatever its split, so both splits are fixed by the seed.
            templates = rng.choice(len(TEMPLATES), CAPTIONS_PER_IMAGE, replace=False)
            if (i % TEST_EVERY == 0) != (split == "test"):
                continue
            yield (
                f"{i:04d}",
                {
                    "image": _png(pixels),
                    "label": int(label),
                    "captions": [TEMPLATES[t].format(name=NAMES[label], digit=label) for t in templates],
                },
            )


def _png(pixels: np.ndarray) -> bytes:
    gray = Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8), "L")
    rgb = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR).convert("RGB")
    out = io.BytesIO()
    rgb.save(out, "PNG")
    return out.getvalue()


def build_digits(data_dir: str | os.PathLike[str]) -> None:
    """Builds `jaxvlm_digits` under `data_dir` (ArrayRecord files); does nothing if it is built."""
    JaxvlmDigits(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
