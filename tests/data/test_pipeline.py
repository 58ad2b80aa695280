import collections
import io
import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import jaxvlm.data
from jaxvlm.errors import InputError
from jaxvlm.preprocess import normalize, preprocess
from tests.data.digests import batch_digest, example_digests
from tests.data.records import PREPROCESS, SPOIL_REASONS, SPOILS, spoil, tar_records


def _direct_test_split(digits_dir):
    """The test split read straight from TFDS, through the model's own preprocessing."""
    source = tfds.data_source(
        "jaxvlm_digits", split="test", data_dir=str(digits_dir), decoders={"image": tfds.decode.SkipDecoding()}
    )
    records = [source[i] for i in range(len(source))]
    images = preprocess([Image.open(io.BytesIO(r["image"])) for r in records], PREPROCESS)
    return records, images


def test_train_batches(digits_config, tokenizer):
    it = jaxvlm.data.train_iterator(
        digits_config, preprocess=PREPROCESS, tokenizer=tokenizer, global_batch_size=16, seed=0
    )
    batch = next(it)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "image": ((16, 32, 32, 3), np.uint8),
        "text": ((16, 16), np.int32),
        "label": ((16,), np.int32),
    }
    assert set(batch["label"]) <= set(range(10)) and batch["image"].min() < batch["image"].max()
    assert (batch["text"][:, 0] == tokenizer.sot_id).all()


def test_seeded_and_shuffled_every_epoch(digits_config):
    digits_config.split, digits_config.augment = "test", "eval"

    def epochs(seed, count=2):
        it = jaxvlm.data.train_iterator(
            digits_config, preprocess=PREPROCESS, tokenizer=None, global_batch_size=12, seed=seed
        )
        batches = [next(it) for _ in range(count * 360 // 12)]
        normalized = [{**b, "image": normalize(b["image"], PREPROCESS)} for b in batches]  # as the train step does
        return [[d for b in normalized[e * 30 : (e + 1) * 30] for d in example_digests(b)] for e in range(count)]

    first, second = epochs(0)
    records, images = _direct_test_split(digits_config.data_dir)
    direct = sorted(example_digests({"image": images, "label": np.array([r["label"] for r in records], np.int32)}))
    assert sorted(first) == sorted(second) == direct  # each epoch: every record once
    assert first != second  # reshuffled
    assert epochs(0, 1)[0] == first and epochs(1, 1)[0] != first


def test_eval_batches_read_the_split_in_order(digits_dir, tokenizer):
    records, images = _direct_test_split(digits_dir)
    batches = list(
        jaxvlm.data.eval_batches(
            "tfds:jaxvlm_digits", "test", preprocess=PREPROCESS, tokenizer=tokenizer, batch_size=64, data_dir=digits_dir
        )
    )
    assert len(batches) == 6 and all(len(b["texts"]) == 64 for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid[:360].all() and not valid[360:].any()
    cat = {k: np.concatenate([b[k] for b in batches])[:360] for k in ("image", "label", "text")}
    print("max abs error vs direct read", np.abs(cat["image"] - images).max())
    np.testing.assert_array_equal(cat["image"], images)
    np.testing.assert_array_equal(cat["label"], [r["label"] for r in records])
    texts = [t for b in batches for t in b["texts"]][:360]
    assert texts == [[c.decode() for c in r["captions"]] for r in records]
    np.testing.assert_array_equal(cat["text"], tokenizer([t[0] for t in texts]))
    assert (batches[-1]["image"][~batches[-1]["valid"]] == 0).all()


def test_eval_shards_cover_the_split_in_equal_batch_counts(digits_dir):
    iterators = [
        jaxvlm.data.eval_batches(
            "tfds:jaxvlm_digits",
            "test",
            preprocess=PREPROCESS,
            batch_size=50,
            data_dir=digits_dir,
            shard_index=i,
            num_shards=3,
        )
        for i in range(3)
    ]
    assert [len(it) for it in iterators] == [3, 3, 3]  # known before the first batch is read
    shards = [list(it) for it in iterators]
    assert [len(s) for s in shards] == [3, 3, 3] and [len(it) for it in iterators] == [3, 3, 3]
    labels = np.concatenate([b["label"][b["valid"]] for s in shards for b in s])
    whole = np.concatenate(
        [
            b["label"]
            for b in jaxvlm.data.eval_batches(
                "tfds:jaxvlm_digits", "test", preprocess=PREPROCESS, batch_size=360, data_dir=digits_dir
            )
        ]
    )
    np.testing.assert_array_equal(labels, whole)


def test_class_names(digits_dir):
    assert jaxvlm.data.class_names("tfds:jaxvlm_digits", data_dir=digits_dir)[7] == "seven"


def test_text_templates_caption_label_only_data(digits_config, tokenizer):
    digits_config.text_templates = ("a photo of a {}.",)
    digits_config.split = "test"
    batch = next(
        jaxvlm.data.train_iterator(
            digits_config, preprocess=PREPROCESS, tokenizer=tokenizer, global_batch_size=8, seed=0
        )
    )
    np.testing.assert_array_equal(
        batch["text"],
        tokenizer(
            [
                f"a photo of a {jaxvlm.data.class_names('tfds:jaxvlm_digits', data_dir=digits_config.data_dir)[i]}."
                for i in batch["label"]
            ]
        ),
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("augment", "random", "data.augment must be one of"),
        ("crop_scale", (0.9, 1.2), "data.crop_scale must be two numbers with"),
        ("worker_count", -2, "data.worker_count must be"),
        ("source", "s3:bucket", "must start with one of tfds:"),
        ("source", "tfds:no_such_dataset_here", "unknown TFDS dataset 'no_such_dataset_here'"),
        (
            "source",
            "tfds:jaxvlm_digits?split=validation",
            "cannot read TFDS dataset 'jaxvlm_digits' split 'validation'",
        ),
        ("source", "tfds:jaxvlm_digits?colour=red", "unknown options ['colour']"),
        ("text_key", "nothing", "has no captions"),
        ("mixture", (("tfds:jaxvlm_digits", 0),), "data.mixture entries must be (spec, positive weight)"),
    ],
)
def test_bad_config(digits_config, tokenizer, field, value, message):
    digits_config[field] = value
    with pytest.raises(InputError, match=None) as e:
        jaxvlm.data.train_iterator(
            digits_config, preprocess=PREPROCESS, tokenizer=tokenizer, global_batch_size=8, seed=0
        )
    assert message in str(e.value)


def test_unknown_config_key_and_bad_batch_size(digits_config):
    with pytest.raises(InputError, match="global batch size 0 must be a positive multiple"):
        jaxvlm.data.train_iterator(digits_config, preprocess=PREPROCESS, tokenizer=None, global_batch_size=0, seed=0)
    digits_config.worker_cuont = 2
    with pytest.raises(InputError, match=r"unknown data config keys \['worker_cuont'\]"):
        jaxvlm.data.train_iterator(digits_config, preprocess=PREPROCESS, tokenizer=None, global_batch_size=8, seed=0)


def test_unbuilt_dataset_says_how_to_build_it(tmp_path):
    with pytest.raises(InputError, match=r"'jaxvlm_digits' is not built in .*build_digits"):
        jaxvlm.data.class_names("tfds:jaxvlm_digits", data_dir=tmp_path)


def test_batches_do_not_depend_on_the_worker_count(digits_config, tokenizer):
    def digests(workers):
        digits_config.worker_count = workers
        it = jaxvlm.data.train_iterator(
            digits_config, preprocess=PREPROCESS, tokenizer=tokenizer, global_batch_size=8, seed=3
        )
        out = [batch_digest(b) for b in itertools.islice(it, 12)]
        it.close()
        return out

    assert digests(2) == digests(0)


@pytest.fixture
def spoiled_tars(tmp_path):
    """Four tar shards of 50 records, 10 of them (5%) bad in four different ways; the last is good."""
    from jaxvlm.data.tar import write_tar_shard

    records = tar_records(200)
    bad = {i: SPOILS[n % len(SPOILS)] for n, i in enumerate(range(7, 199, 20))}
    for i, how in bad.items():
        records[i] = spoil(records[i], how)
    for s in range(4):
        write_tar_shard(tmp_path / f"{s}.tar", records[50 * s : 50 * (s + 1)])
    return f"tar:{tmp_path}/{{0..3}}.tar", bad


def test_training_reads_through_bad_records_and_counts_them(digits_config, tokenizer, spoiled_tars, caplog):
    spec, bad = spoiled_tars
    digits_config.update(source=spec, shuffle=False)
    it = jaxvlm.data.train_iterator(
        digits_config, preprocess=PREPROCESS, tokenizer=tokenizer, global_batch_size=10, seed=0
    )
    batches = [next(it) for _ in range(19)]  # the 190 good records of the first epoch
    assert all(np.isfinite(b["image"]).all() and b["image"].shape == (10, 32, 32, 3) for b in batches)
    assert it.skipped == collections.Counter(SPOIL_REASONS[how] for how in bad.values())
    assert it.skipped.total() == 10
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping bad record")]
    assert len(logged) == 5 and "'00007'" in logged[0] and "0.tar: corrupt image" in logged[0]
    assert it.get_state()["skipped"] == dict(it.skipped)


def test_strict_fails_naming_the_record_and_shard(digits_config, spoiled_tars):
    spec, _ = spoiled_tars
    digits_config.update(source=spec, shuffle=False, strict=True, worker_count=2)
    it = jaxvlm.data.train_iterator(digits_config, preprocess=PREPROCESS, tokenizer=None, global_batch_size=10, seed=0)
    with pytest.raises(Exception, match=r"bad record '00007' in .*0.tar: corrupt image") as e:
        next(it)
    it.close()
    assert isinstance(e.value, InputError)


def test_mixture_follows_the_weights(tmp_path, digits_config):
    from jaxvlm.data.tar import write_tar_shard

    for name, label in (("a", b"0"), ("b", b"1")):
        write_tar_shard(tmp_path / f"{name}.tar", [{**r, "cls": label} for r in tar_records(30)])
    digits_config.mixture = ((f"tar:{tmp_path}/a.tar", 3.0), (f"tar:{tmp_path}/b.tar", 1.0))
    digits_config.augment = "eval"
    it = jaxvlm.data.train_iterator(digits_config, preprocess=PREPROCESS, tokenizer=None, global_batch_size=40, seed=0)
    labels = np.concatenate([next(it)["label"] for _ in range(5)])
    assert (labels == 0).sum() == 150 and (labels == 1).sum() == 50


def test_eval_never_skips_a_bad_record(spoiled_tars):
    spec, _ = spoiled_tars
    with pytest.raises(InputError, match=r"bad record '00007' in .*0.tar: corrupt image"):
        list(jaxvlm.data.eval_batches(spec, "test", preprocess=PREPROCESS, batch_size=50))
