"""Prompt ensembles and zero-shot metrics."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score

import jaxvlm
from jaxvlm.eval import PromptSet, zeroshot_classifier, zeroshot_metrics
from jaxvlm.eval.zeroshot import zeroshot_classifier_counted


@pytest.fixture(scope="module")
def model(tiny_clip_dir):
    return jaxvlm.load(tiny_clip_dir, batch_size=16)


def test_ensemble_normalises_per_template_then_averages_then_renormalises(model):
    prompts = PromptSet(
        name="t", classes=("cat", "dog", "red car"), templates=("a photo of a {}.", "a {}", "a blurry photo of the {}.")
    )
    got = zeroshot_classifier(model, prompts)
    expected = []
    for name in prompts.classes:
        z = np.stack([model.encode_text(model.tokenize([t.format(name)]))[0] for t in prompts.templates])
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        mean = z.mean(0)
        expected.append(mean / np.linalg.norm(mean))
    print("max abs error", np.abs(got - np.stack(expected)).max())
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)


def test_the_prompts_longer_than_the_context_are_counted(model):
    long = "a photo of a {} " + "seen from very far away " * 20  # past tiny-clip's 77 tokens
    prompts = PromptSet(name="t", classes=("cat", "dog", "red car"), templates=("a {}", long))
    classifier, truncated = zeroshot_classifier_counted(model, prompts)
    assert truncated == 3
    np.testing.assert_array_equal(classifier, zeroshot_classifier(model, prompts))


def test_metrics_equal_scikit_learn_on_random_embeddings():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(500, 24)).astype(np.float32)
    classes = rng.normal(size=(12, 24)).astype(np.float32)
    labels = rng.integers(0, 12, 500)
    scores = images.astype(np.float64) @ classes.T.astype(np.float64)
    assert np.diff(np.sort(scores, axis=1), axis=1).min() > 1e-4  # no near-ties: float32 ranks as float64
    got = zeroshot_metrics(images, labels, classes)
    assert got == {
        "acc1": accuracy_score(labels, scores.argmax(1)),
        "acc5": top_k_accuracy_score(labels, scores, k=5),
        "mean_per_class_recall": balanced_accuracy_score(labels, scores.argmax(1)),
    }
