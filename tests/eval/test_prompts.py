"""The shipped prompt sets: complete, sourced, and aligned with TFDS's label ids."""

import json

import pytest

from jaxvlm.errors import InputError
from jaxvlm.eval import find_prompt_set, list_prompt_sets, load_prompt_set
from jaxvlm.eval.prompts import PROMPTS_DIR, dataset_name

# datasets whose label names ship inside the tensorflow_datasets package (the others' come
# with the downloaded data, e.g. CIFAR's batches.meta.txt, so they cannot be read here)
TFDS_NAMED = [
    "food101",
    "sun397",
    "dtd",
    "caltech101",
    "oxford_flowers102",
    "oxford_iiit_pet",
    "eurosat/rgb",
    "resisc45",
    "cars196",
    "imagenet2012",
    "imagenet_v2",
]


def test_the_clip_paper_sets_are_shipped():
    assert {
        "imagenet2012",
        "imagenet_v2",
        "imagenet_sketch",
        "cifar10",
        "cifar100",
        "food101",
        "sun397",
        "cars196",
        "dtd",
        "oxford_iiit_pet",
        "caltech101",
        "oxford_flowers102",
        "mnist",
        "stl10",
        "eurosat",
        "resisc45",
        "patch_camelyon",
        "svhn_cropped",
        "jaxvlm_digits",
    } <= set(list_prompt_sets())
    imagenet = load_prompt_set("imagenet2012")
    assert len(imagenet.classes) == 1000 and len(imagenet.templates) == 80
    assert imagenet.classes[:3] == ("tench", "goldfish", "great white shark")
    assert len(load_prompt_set("cifar100").classes) == 100 and len(load_prompt_set("cifar10").templates) == 18


@pytest.mark.parametrize("path", sorted(PROMPTS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_file_records_its_source(path):
    d = json.loads(path.read_text())
    assert d["source"]["classes"] and d["source"]["templates"]
    assert len(d["classes"]) == len(d["labels"]) == len(set(d["labels"]))  # CLIP names two ImageNet classes twice
    assert d["tfds"]


@pytest.mark.parametrize("tfds_name", TFDS_NAMED)
def test_labels_are_tfds_label_ids(tfds_name, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    names = tfds.builder(tfds_name, data_dir=str(tmp_path)).info.features["label"].names
    assert list(find_prompt_set(f"tfds:{tfds_name}").labels) == names


def test_texts_are_class_major():
    digits = load_prompt_set("jaxvlm_digits")
    texts = digits.texts()
    assert len(texts) == 10 * len(digits.templates)
    assert texts[0] == digits.templates[0].format("zero") and texts[len(digits.templates)].endswith("one")


def test_dataset_names():
    assert dataset_name("tfds:eurosat/rgb:2.0.0?label_key=label") == "eurosat"
    assert dataset_name("tfds:cifar10") == "cifar10" and find_prompt_set("tfds:cifar10:3.0.2").name == "cifar10"
    assert find_prompt_set("tfds:no_such_thing") is None


def test_a_prompt_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"classes": ["cat", "dog"], "templates": ["a {}.", "the {}"]}))
    prompts = load_prompt_set(str(path))
    assert prompts.texts() == ["a cat.", "the cat", "a dog.", "the dog"] and prompts.labels is None


@pytest.mark.parametrize(
    "content, words",
    [
        ("{", "not valid JSON"),
        ('{"classes": ["a"]}', "needs 'classes' and 'templates'"),
        ('{"classes": ["a"], "templates": ["no slot"]}', "one '{}'"),
        ('{"classes": [], "templates": ["{}"]}', "non-empty"),
    ],
)
def test_bad_prompt_files(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=words.replace("{", "\\{").replace("}", "\\}")):
        load_prompt_set(str(path))


def test_unknown_prompt_set():
    with pytest.raises(InputError, match="unknown prompt set 'nope'"):
        load_prompt_set("nope")
