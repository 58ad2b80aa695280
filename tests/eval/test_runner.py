"""The runner end to end on the bundled digits dataset: padding and devices never change a
metric, the CLI's JSON, the training hook, and bad input."""

import json

import jax
import numpy as np
import pytest

import jaxvlm
from jaxvlm.cli import main
from jaxvlm.eval import EvalSpec, captioning_metrics, evaluate, training_hook
from jaxvlm.eval.runner import _image_features
from jaxvlm.models.registry import get_architecture
from jaxvlm.tokenizers import CLIP_BPE_FILE, build_tokenizer

DIGITS = "tfds:jaxvlm_digits"
TEST_SIZE = 360  # every fifth of scikit-learn's 1797 digits


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    from jaxvlm.data.builders import build_digits

    directory = tmp_path_factory.mktemp("tfds")
    build_digits(directory)
    return str(directory)


def assert_one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxvlm: error:") and "\n" not in err, err
    for word in words:
        assert word in err, err


def spec(task, digits_dir, **kw):
    return EvalSpec(task=task, dataset=DIGITS, data_dir=digits_dir, **kw)


@pytest.mark.parametrize("task", ["zeroshot", "retrieval"])
def test_padding_and_devices_never_change_a_metric(task, tiny_clip_dir, digits_dir):
    """Batches that divide the split (360 = 45 x 8) and that do not (7, 50), on 8 devices and on 1."""
    runs = {}
    for batch_size, devices in [(45, None), (7, None), (50, jax.local_devices()[:1])]:
        model = jaxvlm.load(tiny_clip_dir, batch_size=batch_size, devices=devices)
        runs[batch_size, 1 if devices else 8] = evaluate(model, spec(task, digits_dir, batch_size=batch_size))
    print(runs)
    first = next(iter(runs.values()))
    assert all(metrics == first for metrics in runs.values())


def test_features_are_the_same_whatever_the_batching(tiny_clip_dir, digits_dir):
    features = {}
    for batch_size, devices in [(45, None), (7, None), (50, jax.local_devices()[:1])]:
        model = jaxvlm.load(tiny_clip_dir, batch_size=batch_size, devices=devices)
        features[batch_size] = _image_features(model, spec("zeroshot", digits_dir, batch_size=batch_size), "test",
                                               progress=False)
    (embeds, labels), *others = features.values()
    assert embeds.shape == (TEST_SIZE, 32) and labels.shape == (TEST_SIZE,)
    for other_embeds, other_labels in others:
        print("max abs difference", np.abs(other_embeds - embeds).max())
        np.testing.assert_array_equal(other_labels, labels)
        np.testing.assert_allclose(other_embeds, embeds, atol=1e-6)


def test_linear_probe_on_random_features(tiny_clip_dir, digits_dir):
    model = jaxvlm.load(tiny_clip_dir, batch_size=120)
    metrics = evaluate(model, spec("linear_probe", digits_dir, batch_size=120, probe=_small_probe()))
    print(metrics)
    assert set(metrics) == {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "l2"}
    assert metrics["lp_acc1"] > 0.5  # random features of digits still separate them well


def _small_probe():
    from jaxvlm.eval import ProbeConfig

    return ProbeConfig(l2_min=1e-5, l2_max=1e-1, grid=9, coarse=3, max_iter=300)


def test_captioning_scores_the_generated_captions(tiny_coca_dir, digits_dir):
    model = jaxvlm.load(tiny_coca_dir, batch_size=64)
    options = {"method": "greedy", "max_len": 6, "min_len": 2}
    metrics = evaluate(model, spec("captioning", digits_dir, split="test[:40]", batch_size=16, generation=options))
    from jaxvlm.data import eval_batches

    batch = next(eval_batches(DIGITS, "test[:40]", preprocess=model.preprocess_config, batch_size=40,
                              data_dir=digits_dir))
    expected = captioning_metrics(model.generate(batch["image"], **options), batch["texts"])
    print(metrics)
    assert metrics == expected and set(metrics) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"}


def test_cli_writes_clip_benchmark_json(tiny_clip_dir, digits_dir, tmp_path, capsys):
    out = tmp_path / "results" / "digits.json"
    assert main(["eval", str(tiny_clip_dir), "--task", "retrieval", "--dataset", DIGITS, "--data-dir", digits_dir,
                 "--batch-size", "64", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == record
    assert {k: record[k] for k in ("dataset", "model", "pretrained", "task", "language", "split")} == {
        "dataset": DIGITS, "model": "tiny-clip", "pretrained": str(tiny_clip_dir), "task": "zeroshot_retrieval",
        "language": "en", "split": "test"}
    expected = evaluate(jaxvlm.load(tiny_clip_dir, batch_size=64), spec("retrieval", digits_dir, batch_size=64))
    assert record["metrics"] == expected
    assert [p.name for p in out.parent.iterdir()] == ["digits.json"]


def test_the_training_hook_reports_what_the_cli_reports(tiny_clip_dir, digits_dir, tmp_path, capsys):
    loaded = jaxvlm.load(tiny_clip_dir)
    tokenizer = build_tokenizer(get_architecture("tiny-clip").tokenizer, CLIP_BPE_FILE.parent)
    hook = training_hook(loaded.config, loaded.preprocess_config, tokenizer,
                         [{"task": "zeroshot", "dataset": DIGITS, "data_dir": digits_dir, "batch_size": 64}])
    reported = hook(100, loaded.params)
    assert main(["eval", str(tiny_clip_dir), "--task", "zeroshot", "--dataset", DIGITS, "--data-dir", digits_dir,
                 "--batch-size", "64", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert reported == {f"jaxvlm_digits/{k}": v for k, v in metrics.items()}
    # other parameters, same compiled programs
    shifted = jax.tree.map(lambda x: x * 1.5, loaded.params)
    assert hook(200, shifted).keys() == reported.keys()


@pytest.mark.parametrize("argv, words", [
    (["--task", "zeroshot", "--dataset", "tfds:no_such_dataset"], ["no_such_dataset"]),
    (["--task", "zeroshot", "--dataset", DIGITS, "--split", "validation"], ["validation"]),
    (["--task", "zeroshot", "--dataset", f"{DIGITS}?label_key=digit"], ["no class labels", "zero-shot"]),
    (["--task", "captioning", "--dataset", DIGITS], ["CoCa"]),
    (["--task", "zeroshot", "--dataset", DIGITS, "--prompts", "cifar10"], ["cifar10", "jaxvlm_digits"]),
    (["--task", "zeroshot", "--dataset", DIGITS, "--out", "r.txt"], ["--out", ".json"]),
    (["--task", "clustering", "--dataset", DIGITS], ["--task"]),
])
def test_bad_input_is_one_error_line(argv, words, tiny_clip_dir, digits_dir, capsys):
    assert main(["eval", str(tiny_clip_dir), "--data-dir", digits_dir, *argv]) == 2
    assert_one_error_line(capsys, *words)
