"""The runner end to end on the bundled digits dataset: padding and devices never change a
metric, the CLI's JSON, the training hook, and bad input."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxvlm
from jaxvlm.cli import main
from jaxvlm.errors import InputError
from jaxvlm.eval import EvalSpec, ProbeConfig, captioning_metrics, evaluate, training_hook
from jaxvlm.eval.runner import _image_features
from jaxvlm.models.registry import get_architecture
from jaxvlm.tokenizers import CLIP_BPE_FILE, build_tokenizer

DIGITS = "tfds:jaxvlm_digits"
REPO = Path(__file__).resolve().parents[2]
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


def test_padding_and_devices_never_change_a_metric(tiny_clip_dir, digits_dir):
    """Batches that divide the split (360 = 45 x 8) and that do not (7, 50), on 8 devices and on 1."""
    runs = {}
    for batch_size, devices in [(45, jax.local_devices()), (7, jax.local_devices()), (50, jax.local_devices()[:1])]:
        model = jaxvlm.load(tiny_clip_dir, batch_size=batch_size, devices=devices)
        runs[batch_size] = {
            "features": _image_features(
                model, spec("zeroshot", digits_dir, batch_size=batch_size), "test", progress=False
            ),
            **{
                task: evaluate(model, spec(task, digits_dir, batch_size=batch_size))
                for task in ("zeroshot", "retrieval")
            },
        }
    first, *others = runs.values()
    print({size: {task: run[task] for task in ("zeroshot", "retrieval")} for size, run in runs.items()})
    embeds, labels = first["features"]
    assert embeds.shape == (TEST_SIZE, 32) and labels.shape == (TEST_SIZE,)
    for other in others:
        print("max abs difference of the image features", np.abs(other["features"][0] - embeds).max())
        np.testing.assert_array_equal(other["features"][1], labels)
        np.testing.assert_allclose(other["features"][0], embeds, atol=1e-6)
        assert other["zeroshot"] == first["zeroshot"] and other["retrieval"] == first["retrieval"]


def test_linear_probe_on_random_features(tiny_clip_dir, digits_dir):
    model = jaxvlm.load(tiny_clip_dir, batch_size=120)
    metrics = evaluate(model, spec("linear_probe", digits_dir, batch_size=120, probe=_small_probe()))
    print(metrics)
    assert set(metrics) == {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "l2"}
    assert metrics["lp_acc1"] > 0.4  # chance is 0.1: random features of digits still tell them apart


def _small_probe():
    from jaxvlm.eval import ProbeConfig

    return ProbeConfig(l2_min=1e-6, l2_max=1e-2, grid=9, coarse=3, max_iter=300)


def test_captioning_scores_the_generated_captions(tiny_coca_dir, digits_dir):
    model = jaxvlm.load(tiny_coca_dir, batch_size=8)  # generation compiles once: every chunk has 8 rows
    options = {"method": "greedy", "max_len": 5, "min_len": 2}
    metrics = evaluate(model, spec("captioning", digits_dir, split="test[:24]", batch_size=16, generation=options))
    from jaxvlm.data import eval_batches

    batch = next(
        eval_batches(DIGITS, "test[:24]", preprocess=model.preprocess_config, batch_size=24, data_dir=digits_dir)
    )
    expected = captioning_metrics(model.generate(batch["image"], **options), batch["texts"])
    print(metrics)
    assert metrics == expected and set(metrics) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"}


class EchoCaptioner:
    """A stand-in CoCa answering each image with its first reference caption (looked up by its
    pixels), and padding images with words no reference has."""

    def __init__(self, model, lookup):
        self.config, self.preprocess_config, self.lookup = model.config, model.preprocess_config, lookup

    def generate(self, pixels, **options):
        return [self.lookup.get(np.asarray(p).tobytes(), "padding padding padding padding") for p in pixels]


def test_captioning_pairs_each_caption_with_its_references(tiny_coca_dir, digits_dir):
    from jaxvlm.data import eval_batches

    model = jaxvlm.load(tiny_coca_dir)
    lookup = {}
    for batch in eval_batches(DIGITS, "test", preprocess=model.preprocess_config, batch_size=64, data_dir=digits_dir):
        for pixels, texts, valid in zip(batch["image"], batch["texts"], batch["valid"]):
            if valid:
                lookup[pixels.tobytes()] = texts[0]
    metrics = evaluate(EchoCaptioner(model, lookup), spec("captioning", digits_dir, batch_size=64))
    print(metrics)
    # every candidate is one of its image's references: all precisions 1, no brevity penalty
    assert metrics["Bleu_4"] == metrics["Bleu_1"] == 1.0 and metrics["CIDEr"] > 1


def test_cli_json_equals_the_training_hook_and_imports_no_torch(tiny_clip_dir, digits_dir, tmp_path):
    """`jaxvlm eval` (in a fresh process, which must not import torch) reports in CLIP_benchmark's
    schema what `evaluate` and the training hook report for the same parameters."""
    out = tmp_path / "results" / "digits.json"
    argv = [
        "eval",
        str(tiny_clip_dir),
        "--task",
        "zeroshot",
        "--dataset",
        DIGITS,
        "--data-dir",
        digits_dir,
        "--batch-size",
        "64",
        "--out",
        str(out),
    ]
    script = (
        "import sys\n"
        "from jaxvlm.cli import main\n"
        f"assert main({argv!r}) == 0\n"
        "assert not [n for n in sys.modules if n.split('.')[0] in ('torch', 'transformers', 'open_clip')], 'torch'\n"
    )
    printed = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    record = json.loads(out.read_text())
    assert json.loads(printed) == record
    assert {k: record[k] for k in ("dataset", "model", "pretrained", "task", "language", "split")} == {
        "dataset": DIGITS,
        "model": "tiny-clip",
        "pretrained": str(tiny_clip_dir),
        "task": "zeroshot_classification",
        "language": "en",
        "split": "test",
    }
    assert [p.name for p in out.parent.iterdir()] == ["digits.json"]

    assert record["metrics"]["truncated_texts"] == 0  # the digits' class prompts are short
    loaded = jaxvlm.load(tiny_clip_dir, batch_size=64)
    assert record["metrics"] == evaluate(loaded, spec("zeroshot", digits_dir, batch_size=64))
    tokenizer = build_tokenizer(get_architecture("tiny-clip").tokenizer, CLIP_BPE_FILE.parent)
    hook = training_hook(
        loaded.config,
        loaded.preprocess_config,
        tokenizer,
        [{"task": "zeroshot", "dataset": DIGITS, "data_dir": digits_dir, "batch_size": 64}],
    )
    names = {f"jaxvlm_digits/{k}": v for k, v in record["metrics"].items()}
    assert hook(100, loaded.params) == names
    # other parameters, the same compiled programs
    assert hook(200, jax.tree.map(lambda x: x * 1.5, loaded.params)).keys() == names.keys()


@pytest.mark.slow
def test_the_hook_evaluates_parameters_sharded_over_two_processes(tiny_clip_dir, digits_dir):
    """Each process gathers the parameters, evaluates the whole split on its own devices, and
    reports what one process reports."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.eval.processes", str(tiny_clip_dir), digits_dir, str(port), str(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    reported = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        reported.append(json.loads(out.strip().splitlines()[-1]))
    loaded = jaxvlm.load(tiny_clip_dir)
    tokenizer = build_tokenizer(get_architecture("tiny-clip").tokenizer, CLIP_BPE_FILE.parent)
    hook = training_hook(
        loaded.config,
        loaded.preprocess_config,
        tokenizer,
        [spec(task, digits_dir, batch_size=64) for task in ("zeroshot", "retrieval")],
    )
    print(reported)
    assert reported[0] == reported[1] == hook(0, loaded.params)


def test_the_progress_bar_knows_its_total(tiny_clip_dir, digits_dir, capsys):
    model = jaxvlm.load(tiny_clip_dir, batch_size=45)
    evaluate(model, spec("zeroshot", digits_dir, batch_size=45), progress=True)
    bar = capsys.readouterr().err.strip().split("\r")[-1]
    print(bar)
    assert bar.startswith("zeroshot jaxvlm_digits:test: 100%") and " 8/8 " in bar  # 360 images, 45 a batch


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--task", "zeroshot", "--dataset", "tfds:no_such_dataset"], ["no_such_dataset"]),
        (["--task", "zeroshot", "--dataset", DIGITS, "--split", "validation"], ["validation"]),
        (["--task", "zeroshot", "--dataset", f"{DIGITS}?label_key=digit"], ["no class names", "label_key=digit"]),
        (["--task", "captioning", "--dataset", DIGITS], ["CoCa"]),
        (["--task", "zeroshot", "--dataset", DIGITS, "--prompts", "cifar10"], ["cifar10", "jaxvlm_digits"]),
        (["--task", "zeroshot", "--dataset", DIGITS, "--out", "r.txt"], ["--out", ".json"]),
        (["--task", "clustering", "--dataset", DIGITS], ["--task"]),
        (["--task", "retrieval", "--dataset", f"{DIGITS}?text_key=nothing"], ["no captions", "retrieval"]),
        (["--task", "retrieval", "--dataset", DIGITS, "--recall-k", "0"], ["recall_k"]),
        (["--task", "zeroshot", "--dataset", DIGITS, "--batch-size", "0"], ["batch_size"]),
    ],
)
def test_bad_input_is_one_error_line(argv, words, tiny_clip_dir, digits_dir, capsys):
    assert main(["eval", str(tiny_clip_dir), "--data-dir", digits_dir, *argv]) == 2
    assert_one_error_line(capsys, *words)


def test_eval_spec_from_dict():
    d = {"task": "linear_probe", "dataset": DIGITS, "recall_k": [1, 2], "probe": {"grid": 5, "coarse": 3}}
    got = EvalSpec.from_dict(d)
    assert got.recall_k == (1, 2) and got.probe == ProbeConfig(grid=5, coarse=3)
    assert EvalSpec.from_dict(got.to_dict()) == got
    assert got.to_dict()["probe"]["grid"] == 5 and got.to_dict()["recall_k"] == [1, 2]
    for bad, words in [
        ({"task": "zeroshot"}, "eval spec: missing keys: dataset"),
        ({**d, "colour": 1, "bogus": 2}, "eval spec: unknown keys: bogus, colour"),
        ({**d, "probe": {"l2": 1.0}}, "eval spec.probe: unknown keys: l2"),
        ({**d, "probe": 3}, "eval spec.probe must be a mapping, got int"),
        ({**d, "batch_size": 0}, "eval batch_size must be an integer >= 1, got 0"),
        ({**d, "recall_k": [0]}, "recall_k must be positive integers"),
        ({**d, "task": "clustering"}, "unknown task 'clustering'"),
        # generation options are checked as far as they can be without a model
        ({**d, "generation": {"beams": 2}}, "captioning generation options: unknown keys: beams"),
        ({**d, "generation": {"num_beams": 0}}, "num_beams must be an integer >= 1"),
    ]:
        with pytest.raises(InputError, match=re.escape(words)):
            EvalSpec.from_dict(bad)
