"""The pictures of `jaxvlm eval --plots`: the confusion matrix counts what the metrics count, the
retrieval grid shows each query's true top hits, and both are written as PNGs by the CLI."""

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

import jaxvlm
from jaxvlm.cli import main
from jaxvlm.data import eval_batches
from jaxvlm.errors import InputError
from jaxvlm.eval import EvalSpec, evaluate, plots
from jaxvlm.eval.runner import RETRIEVAL_HITS, RETRIEVAL_QUERIES, _spread_queries, picture_path

DIGITS = "tfds:jaxvlm_digits"


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    from jaxvlm.data.builders import build_digits

    directory = tmp_path_factory.mktemp("tfds")
    build_digits(directory)
    return str(directory)


@pytest.fixture(scope="module")
def model(tiny_clip_dir):
    return jaxvlm.load(tiny_clip_dir, batch_size=120)


class Captured:
    """Wraps a figure function, keeping the arguments of each call."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


def test_confusion_matrix_counts_as_scikit_learn():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    np.testing.assert_array_equal(
        plots.confusion_matrix(labels, predictions, 7), sklearn_confusion_matrix(labels, predictions, labels=range(7))
    )
    with pytest.raises(InputError, match="predictions"):
        plots.confusion_matrix(labels, predictions + 1, 7)
    with pytest.raises(InputError, match="shape"):
        plots.confusion_matrix(labels, predictions[:-1], 7)


def test_spread_queries_are_distinct_texts_over_the_split():
    texts = ["a", "b", "a", "c", "d", "c", "e", "f"]
    assert list(_spread_queries(texts, 3)) == [0, 3, 7]  # first a, b, c, d, e, f at 0 1 3 4 6 7: a, c, f
    assert list(_spread_queries(texts, 10)) == [0, 1, 3, 4, 6, 7]
    assert list(_spread_queries(["x"] * 5, 6)) == [0]


def test_zeroshot_picture_is_the_metrics_confusion_matrix(model, digits_dir, tmp_path, monkeypatch):
    figure = Captured(plots.confusion_figure)
    monkeypatch.setattr(plots, "confusion_figure", figure)
    spec = EvalSpec(task="zeroshot", dataset=DIGITS, data_dir=digits_dir, batch_size=120)
    metrics = evaluate(model, spec, plots_dir=tmp_path)
    (matrix, names, _), _ = figure.calls[0]
    print("confusion matrix of a random tiny CLIP on the digits:\n", matrix, "\n", metrics)
    assert names == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    assert matrix.sum() == 360 and np.trace(matrix) / 360 == metrics["acc1"]
    recalls = np.diag(matrix) / matrix.sum(axis=1)
    assert recalls.mean() == pytest.approx(metrics["mean_per_class_recall"], abs=1e-12)
    assert Image.open(picture_path(tmp_path, spec)).size[0] >= 400
    assert evaluate(model, spec) == metrics  # the picture changes nothing


def test_retrieval_picture_shows_each_querys_top_images(model, digits_dir, tmp_path, monkeypatch):
    figure = Captured(plots.retrieval_figure)
    monkeypatch.setattr(plots, "retrieval_figure", figure)
    spec = EvalSpec(task="retrieval", dataset=DIGITS, split="test[:100]", data_dir=digits_dir, batch_size=32)
    evaluate(model, spec, plots_dir=tmp_path)
    (queries, images), kwargs = figure.calls[0]

    # brute force: every caption of the split against every image, as the model sees them
    pixels, texts, owner = [], [], []
    for batch in eval_batches(
        DIGITS, "test[:100]", preprocess=model.preprocess_config, batch_size=100, data_dir=digits_dir
    ):
        for image, captions, valid in zip(batch["image"], batch["texts"], batch["valid"]):
            if valid:
                texts.extend(captions)
                owner.extend([len(pixels)] * len(captions))
                pixels.append(image)
    pixels = np.stack(pixels)
    scores = model.encode_text(model.tokenize(list(queries))) @ model.encode_image(pixels).T
    spread = _spread_queries(texts, RETRIEVAL_QUERIES)
    assert len(set(queries)) == len(queries) == RETRIEVAL_QUERIES
    assert list(queries) == [texts[t] for t in spread] and all(len(row) == RETRIEVAL_HITS for row in images)
    for q, t in enumerate(spread):
        best = np.argsort(-scores[q], kind="stable")[:RETRIEVAL_HITS]
        for rank, index in enumerate(best):
            np.testing.assert_array_equal(images[q][rank], plots.viewable(pixels[index], model.preprocess_config))
        np.testing.assert_allclose(kwargs["scores"][q], scores[q, best], atol=1e-5)
        assert list(kwargs["correct"][q]) == [i == owner[t] for i in best]
    assert Image.open(picture_path(tmp_path, spec)).size[0] >= 400


def test_cli_writes_the_pictures(tiny_clip_dir, digits_dir, tmp_path, capsys):
    for task in ("zeroshot", "retrieval"):
        argv = [
            "eval",
            str(tiny_clip_dir),
            "--task",
            task,
            "--dataset",
            DIGITS,
            "--split",
            "test[:64]",
            "--data-dir",
            digits_dir,
            "--batch-size",
            "32",
            "--plots",
            str(tmp_path / "plots"),
            "--quiet",
        ]
        assert main(argv) == 0
        name = {"zeroshot": "confusion_matrix", "retrieval": "retrieval"}[task]
        path = tmp_path / "plots" / f"jaxvlm_digits_test_64_{name}.png"
        assert f"wrote {path}" in capsys.readouterr().err
        assert Image.open(path).format == "PNG"
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "jaxvlm_digits_test_64_confusion_matrix.png",
        "jaxvlm_digits_test_64_retrieval.png",
    ]  # no leftovers


def assert_one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxvlm: error:") and "\n" not in err and all(w in err for w in words), err


def test_bad_plots_argument_is_one_error_line(tiny_clip_dir, digits_dir, tmp_path, capsys):
    argv = ["eval", str(tiny_clip_dir), "--dataset", DIGITS, "--data-dir", digits_dir, "--quiet"]
    assert main(argv + ["--task", "linear_probe", "--plots", str(tmp_path / "plots")]) == 2
    assert_one_error_line(capsys, "pictures", "linear_probe")
    assert not (tmp_path / "plots").exists()
    (tmp_path / "a.png").write_bytes(b"")
    assert main(argv + ["--task", "zeroshot", "--plots", str(tmp_path / "a.png")]) == 2
    assert_one_error_line(capsys, "--plots", "directory")
