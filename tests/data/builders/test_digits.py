import io
import sys

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxvlm.data.builders import build_digits
from jaxvlm.data.builders.digits import CAPTIONS_PER_IMAGE, IMAGE_SIZE, NAMES, TEMPLATES, _png


def _read(digits_dir, split):
    source = tfds.data_source(
        "jaxvlm_digits", split=split, data_dir=str(digits_dir), decoders={"image": tfds.decode.SkipDecoding()}
    )
    return [source[i] for i in range(len(source))]


def test_digits_are_sklearn_digits_with_captions(digits_dir):
    from sklearn.datasets import load_digits

    digits = load_digits()
    expected = {}  # PNG bytes -> labels of the scikit-learn images that encode to them
    for pixels, label in zip(digits.images, digits.target):
        expected.setdefault(_png(pixels), []).append(int(label))
    train, test = _read(digits_dir, "train"), _read(digits_dir, "test")
    assert (len(train), len(test)) == (1437, 360)
    seen = []
    for record in train + test:
        labels = expected[record["image"]]
        assert record["label"] in labels
        seen.append((record["image"], record["label"]))
        name = NAMES[record["label"]]
        captions = [c.decode() for c in record["captions"]]
        assert len(set(captions)) == CAPTIONS_PER_IMAGE
        allowed = {t.format(name=name, digit=record["label"]) for t in TEMPLATES}
        assert set(captions) <= allowed, (captions, allowed)
        image = np.asarray(Image.open(io.BytesIO(record["image"])))
        assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
    # every scikit-learn image is in exactly one split
    assert sorted(seen) == sorted((png, label) for png, labels in expected.items() for label in labels)


def test_build_is_idempotent_and_needs_no_tensorflow(digits_dir):
    files = sorted(p.name for p in (digits_dir / "jaxvlm_digits" / "1.0.0").iterdir())
    assert any(name.startswith("jaxvlm_digits-train.array_record") for name in files), files
    build_digits(digits_dir)  # already built: nothing is rewritten
    assert sorted(p.name for p in (digits_dir / "jaxvlm_digits" / "1.0.0").iterdir()) == files
    assert "tensorflow" not in sys.modules
