"""Classification metrics against scikit-learn on fixed random scores."""

import re

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score

from jaxvlm.errors import InputError
from jaxvlm.eval import classification_metrics


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("n, classes", [(1000, 10), (333, 100), (50, 7)])
def test_equal_to_scikit_learn(n, classes):
    rng = np.random.default_rng(n)
    scores = rng.normal(size=(n, classes)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    labels[labels == 3] = 4  # a class with no examples: mean per-class recall skips it, as sklearn does
    got = classification_metrics(scores, labels)
    expected = {
        "acc1": accuracy_score(labels, scores.argmax(1)),
        "acc5": top_k_accuracy_score(labels, scores, k=5, labels=np.arange(classes)),
        "mean_per_class_recall": balanced_accuracy_score(labels, scores.argmax(1)),
    }
    print({k: abs(got[k] - v) for k, v in expected.items()})
    assert got == expected  # exactly


def test_fewer_than_five_classes_have_no_top5():
    metrics = classification_metrics(np.eye(3, dtype=np.float32), np.array([0, 1, 1]))
    assert metrics == {"acc1": 2 / 3, "mean_per_class_recall": 0.75}


@pytest.mark.parametrize(
    "scores, labels, words",
    [
        (np.zeros((3, 4)), np.array([0, 1]), "labels [N]"),
        (np.zeros((2, 4)), np.array([0, 4]), "labels must be in [0, 4)"),
        (np.zeros((0, 4)), np.zeros(0, int), "N>0"),
    ],
)
def test_bad_input(scores, labels, words):
    with pytest.raises(InputError, match=re.escape(words)):
        classification_metrics(scores, labels)
