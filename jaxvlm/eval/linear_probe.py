"""Linear probe: L2-regularised multinomial logistic regression on frozen image features, fitted
full-batch with L-BFGS (optax) in JAX, its regularisation chosen on a validation split.

The objective is ``mean cross-entropy + l2 / 2 * |W|^2`` (the bias is not regularised), the same
minimiser as scikit-learn's ``LogisticRegression(C=1 / (l2 * n))``. The search follows the CLIP
paper's recipe as CLIP_benchmark runs it: a log-spaced grid, a coarse pass over every
``grid // (coarse - 1)``-th value, then passes around the best value with halving steps; the
final classifier is refitted on train + validation with the chosen value.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from jaxvlm.config_base import Config, check_int
from jaxvlm.errors import InputError
from jaxvlm.eval.classification import classification_metrics

# (features [N, D], labels [N]) of one split
Split = tuple[ArrayLike, ArrayLike]


@dataclasses.dataclass(frozen=True)
class ProbeConfig(Config):
    name: ClassVar[str] = "probe config"

    l2_min: float = 1e-6
    l2_max: float = 1e2
    grid: int = 97  # log-spaced values between l2_min and l2_max
    coarse: int = 7  # values tried in the first pass
    max_iter: int = 1000  # L-BFGS iterations per fit
    tol: float = 1e-5  # stop when the gradient's norm is below this
    val_fraction: float = 0.2  # held out of the training split when there is no validation split
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("l2_min", "l2_max", "tol", "val_fraction"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise InputError(f"probe {field} must be a finite number, got {value!r}")
        if not 0 < self.l2_min <= self.l2_max:
            raise InputError(f"probe l2_min, l2_max must be 0 < l2_min <= l2_max, got {self.l2_min}, {self.l2_max}")
        check_int("probe grid", self.grid, 1)
        check_int("probe coarse", self.coarse, 1)
        check_int("probe max_iter", self.max_iter, 1)
        check_int("probe seed", self.seed, 0)
        if self.tol < 0:
            raise InputError(f"probe tol must be >= 0, got {self.tol}")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"probe val_fraction must be in (0, 1), got {self.val_fraction}")

    def l2_values(self) -> np.ndarray:
        return np.logspace(np.log10(self.l2_min), np.log10(self.l2_max), self.grid)


def _loss(params, x, y, l2):
    logits = x @ params["w"] + params["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def _fit(x, y, l2, tol, *, num_classes, max_iter):
    value_fn = functools.partial(_loss, x=x, y=y, l2=l2)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(value_fn)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    def running(carry):
        count = optax.tree.get(carry[1], "count")
        grad_norm = optax.tree.norm(optax.tree.get(carry[1], "grad"))
        return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

    params = {"w": jnp.zeros((x.shape[1], num_classes), x.dtype), "b": jnp.zeros((num_classes,), x.dtype)}
    return jax.lax.while_loop(running, step, (params, opt.init(params)))[0]


def fit_logistic_regression(
    features: ArrayLike, labels: ArrayLike, num_classes: int, l2: float, config: ProbeConfig = ProbeConfig()
) -> dict[str, jax.Array]:
    """{"w": [D, C], "b": [C]} minimising mean cross-entropy + l2 / 2 * |w|^2."""
    return _fit(
        jnp.asarray(features, jnp.float32),
        jnp.asarray(labels, jnp.int32),
        jnp.float32(l2),
        jnp.float32(config.tol),
        num_classes=num_classes,
        max_iter=config.max_iter,
    )


def predict(params: dict[str, jax.Array], features: ArrayLike) -> np.ndarray:
    return np.asarray(jnp.asarray(features, jnp.float32) @ params["w"] + params["b"])


def choose_l2(train: Split, val: Split, num_classes: int, config: ProbeConfig = ProbeConfig()) -> float:
    """The grid value whose fit on ``train`` (features, labels) scores the best top-1 on ``val``;
    ties go to the stronger regularisation."""
    values = config.l2_values()
    accuracy = {}

    def score(i):
        if i not in accuracy:
            params = fit_logistic_regression(*train, num_classes, values[i], config)
            accuracy[i] = classification_metrics(predict(params, val[0]), val[1])["acc1"]
        return accuracy[i], i

    stride = max((len(values) - 1) // max(config.coarse - 1, 1), 1)
    best = max(range(0, len(values), stride), key=score)
    span = stride // 2
    while span:
        best = max((max(best - span, 0), best, min(best + span, len(values) - 1)), key=score)
        span //= 2
    return float(values[best])


def split_validation(
    features: np.ndarray, labels: np.ndarray, config: ProbeConfig = ProbeConfig()
) -> tuple[Split, Split]:
    """(train, val) pairs of (features, labels): a seeded random ``val_fraction`` held out."""
    n = len(labels)
    n_val = int(round(n * config.val_fraction))
    if not 0 < n_val < n:
        raise InputError(f"cannot hold out a validation fraction of {config.val_fraction} from {n} examples")
    order = np.random.default_rng(config.seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    return (features[train], labels[train]), (features[val], labels[val])


def linear_probe(
    train: Split, test: Split, val: Split | None = None, config: ProbeConfig = ProbeConfig()
) -> dict[str, float]:
    """Fits on ``train`` (features [N, D], labels [N]), choosing l2 on ``val`` (held out of train when
    None), refits on train + val and reports CLIP_benchmark's lp_* metrics on ``test``."""
    train = (np.asarray(train[0], np.float32), np.asarray(train[1]))
    if val is None:
        train, val = split_validation(*train, config)
    num_classes = int(max(train[1].max(), val[1].max(), np.max(test[1]))) + 1
    l2 = choose_l2(train, val, num_classes, config)
    both = (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
    params = fit_logistic_regression(*both, num_classes, l2, config)
    metrics = classification_metrics(predict(params, test[0]), test[1])
    return {**{f"lp_{name}": value for name, value in metrics.items()}, "l2": l2}
