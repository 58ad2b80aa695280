"""NaFlex data: the Grain pipelines batch uint8 patches, masks and grids at the model's patch budget
(the same patches `naflex_patches` gives without augmentation), random crops keep their own aspect
ratio, evaluation pads with a one-patch image, and global batches split every field on the batch axis."""

import io

import jax
import numpy as np
import pytest
from PIL import Image

import jaxvlm.data
from jaxvlm import parallel
from jaxvlm.data.records import Record
from jaxvlm.data.tar import write_tar_shard
from jaxvlm.data.transforms import ExampleTransform
from jaxvlm.preprocess import NaFlexImages, PreprocessConfig, naflex_patches, preprocess
from tests.data.records import FORMATS, encoded, photo

NAFLEX = PreprocessConfig(image_size=32, resize_mode="naflex", patch_size=8, max_num_patches=16)
SIZES = [(48, 40), (30, 70), (90, 20), (16, 16), (100, 100), (13, 50)]  # wide, tall, square, small


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """One tar shard of photos of several aspect ratios and formats."""
    records = []
    for i in range(12):
        extension = list(FORMATS)[i % 3]
        image = encoded(photo(i, SIZES[i % len(SIZES)]), FORMATS[extension])
        records.append({"key": f"{i:05d}", extension: image, "txt": f"picture {i}".encode()})
    path = tmp_path_factory.mktemp("naflex") / "00000.tar"
    write_tar_shard(path, records)
    return path, [Image.open(io.BytesIO(r[next(e for e in FORMATS if e in r)])) for r in records]


def config(path, augment: str):
    c = jaxvlm.data.default_config()
    c.source, c.augment, c.shuffle, c.worker_count = f"tar:{path}", augment, False, 0
    return c


def test_train_batches_are_naflex_patches_at_the_budget(shard, tokenizer):
    path, images = shard
    it = jaxvlm.data.train_iterator(
        config(path, "eval"), preprocess=NAFLEX, tokenizer=tokenizer, global_batch_size=8, seed=0
    )
    batch = next(it)
    image = batch["image"]
    assert isinstance(image, NaFlexImages)
    assert [(x.shape, x.dtype) for x in image] == [((8, 16, 192), np.uint8), ((8, 16), np.bool_), ((8, 2), np.int32)]
    expected = naflex_patches(images[:8], NAFLEX)
    for got, want in zip(image, expected):
        np.testing.assert_array_equal(got, want)
    print("grids", image.grid.tolist(), "patches used", image.mask.sum(1).tolist())
    assert len({tuple(g) for g in image.grid.tolist()}) > 3  # the images' own aspect ratios
    assert batch["text"].shape == (8, 16)


def test_train_crops_keep_their_aspect_ratio(shard, tokenizer):
    path, _ = shard
    it = jaxvlm.data.train_iterator(
        config(path, "train"), preprocess=NAFLEX, tokenizer=None, global_batch_size=12, seed=0
    )
    image = next(it)["image"]
    counts = image.mask.sum(1)
    assert (counts == image.grid.prod(1)).all() and (counts <= 16).all()
    assert all(m[:c].all() and not m[c:].any() for m, c in zip(image.mask, counts))
    assert all((p[c:] == 0).all() for p, c in zip(image.patches, counts))  # padding stays zero
    assert image.grid[:, 0].tolist() != image.grid[:, 1].tolist()


def test_a_whole_image_crop_is_naflex_patches_of_the_image():
    img = photo(3, (56, 24))
    transform = ExampleTransform(NAFLEX, crop_scale=(1.0, 1.0), crop_ratio=(56 / 24, 56 / 24), flip=False)
    out = transform(Record("k", "s", encoded(img, "PNG")), np.random.default_rng(0))["image"]
    expected = preprocess([img], NAFLEX)
    for got, want in zip(out, expected):
        np.testing.assert_array_equal(got, want[0])


def test_eval_batches_pad_with_one_patch_images(shard, tokenizer):
    path, images = shard
    batches = list(
        jaxvlm.data.eval_batches(f"tar:{path}", "train", preprocess=NAFLEX, tokenizer=tokenizer, batch_size=5)
    )
    assert len(batches) == 3 and batches[-1]["valid"].tolist() == [True, True, False, False, False]
    got = NaFlexImages(*(np.concatenate(field)[:12] for field in zip(*(b["image"] for b in batches))))
    expected = preprocess(images, NAFLEX)
    err = max(float(np.abs(np.asarray(a, np.float64) - b).max()) for a, b in zip(got, expected))
    print(f"eval patches vs preprocess: max abs {err}")
    assert err == 0
    padding = batches[-1]["image"]
    assert padding.grid[2:].tolist() == [[1, 1]] * 3 and padding.mask[2:].sum(1).tolist() == [1, 1, 1]


def test_global_batch_splits_every_field_on_the_batch_axis():
    mesh = parallel.create_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    image = naflex_patches([photo(i, SIZES[i % len(SIZES)]) for i in range(8)], NAFLEX)
    batch = jaxvlm.data.global_batch({"image": image, "text": np.zeros((8, 4), np.int32)}, mesh)
    assert isinstance(batch["image"], NaFlexImages)
    for x, host in zip(batch["image"], image):
        assert x.sharding.spec[0] == ("data", "fsdp") and x.addressable_shards[0].data.shape[0] == 1
        np.testing.assert_array_equal(jax.device_get(x), host)
