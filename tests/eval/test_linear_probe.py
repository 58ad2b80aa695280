"""The L-BFGS logistic regression against scikit-learn, and the regularisation search."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from jaxvlm.errors import InputError
from jaxvlm.eval import ProbeConfig, fit_logistic_regression
from jaxvlm.eval.linear_probe import choose_l2, predict, split_validation


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def objective(w, b, x, y, l2):
    """mean cross-entropy + l2 / 2 |w|^2 in float64."""
    logits = x.astype(np.float64) @ w + b
    top = logits.max(1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
    return (log_z - logits[np.arange(len(y)), y]).mean() + 0.5 * l2 * (w**2).sum()


@pytest.mark.parametrize("l2", [1e-4, 1e-2, 1.0])
def test_same_minimum_as_scikit_learn(digits, l2):
    x, y = digits
    params = fit_logistic_regression(x, y, 10, l2)
    with threadpool_limits(1):  # BLAS threads fighting JAX's for 2 cores make this 30x slower
        reference = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(x, y)
    ours = objective(np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64), x, y, l2)
    theirs = objective(reference.coef_.T, reference.intercept_, x, y, l2)
    logits = predict(params, x)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    prob_error = np.abs(probs - reference.predict_proba(x)).max()
    print(f"l2={l2}: objective {ours:.9f} vs scikit-learn {theirs:.9f}, max abs probability error {prob_error:.2e}")
    assert ours <= theirs + 1e-6 * abs(theirs)
    assert prob_error < 2e-3
    # the predictions agree wherever scikit-learn's two best classes are not within a hair
    top2 = np.sort(reference.predict_proba(x), axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3
    np.testing.assert_array_equal(logits.argmax(1)[clear], reference.predict(x)[clear])


def test_the_search_picks_the_best_grid_value_on_validation(digits):
    x, y = digits
    config = ProbeConfig(l2_min=1e-6, l2_max=1e-2, grid=9, coarse=3, max_iter=300)
    train, val = split_validation(x, y, config)
    chosen = choose_l2(train, val, 10, config)

    def val_accuracy(l2):
        return (predict(fit_logistic_regression(*train, 10, l2, config), val[0]).argmax(1) == val[1]).mean()

    accuracies = {l2: val_accuracy(l2) for l2 in config.l2_values()}
    print({f"{k:.0e}": round(float(v), 4) for k, v in accuracies.items()}, "chosen", chosen)
    assert chosen in accuracies
    # a coarse-to-fine search finds a local peak: no neighbour on the grid does better
    i = list(accuracies).index(chosen)
    neighbours = list(accuracies.values())[max(i - 1, 0) : i + 2]
    assert accuracies[chosen] == max(neighbours)
    assert accuracies[chosen] > 0.9


def test_too_few_examples_to_hold_out():
    with pytest.raises(InputError, match="validation"):
        split_validation(np.zeros((2, 3), np.float32), np.zeros(2, int))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"l2_min": 0.0}, "l2_min"),
        ({"l2_min": 1.0, "l2_max": 0.5}, "l2_max"),
        ({"grid": 0}, "probe grid must be an integer >= 1"),
        ({"coarse": 1.5}, "probe coarse"),
        ({"max_iter": 0}, "probe max_iter"),
        ({"tol": -1.0}, "probe tol"),
        ({"val_fraction": 1.0}, r"probe val_fraction must be in \(0, 1\)"),
        ({"seed": -1}, "probe seed"),
        ({"l2_max": "big"}, "probe l2_max must be a finite number"),
    ],
)
def test_probe_config_is_checked(options, message):
    with pytest.raises(InputError, match=message):
        ProbeConfig(**options)
    with pytest.raises(InputError, match="probe config: unknown keys: lr"):
        ProbeConfig.from_dict({"lr": 0.1})
    assert ProbeConfig.from_dict(ProbeConfig(grid=9).to_dict()) == ProbeConfig(grid=9)
