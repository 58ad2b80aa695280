"""Bounds for float32 results that are sums of many terms, relative to the size of the values.

Adding n float32 terms in another order (another CPU, XLA's fusion and blocking, micro-batches,
a mesh's reductions) moves the sum by rounding errors relative to the partial sums: at most about
n * eps of the sum of the terms' magnitudes, typically sqrt(n) * eps of it, as the errors of the
n additions are about as often up as down. So the error grows with the size of the values, and an
absolute bound that holds for values of size 1 fails for values of size 10 on another machine.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 2**-23 = 1.19e-7


def assert_close_to_scale(
    actual: Any, expected: Any, *, rtol_of_scale: float, what: str = "", scale: float | None = None
) -> float:
    """Asserts that every leaf of the pytree (or array) ``actual`` is within ``rtol_of_scale *
    scale`` of the same leaf of ``expected``, where scale is the largest magnitude anywhere in
    ``expected``; prints the max abs error, the scale and the bound; returns the max abs error.

    One scale for the whole tree, not one per leaf: rounding errors follow the magnitudes of the
    terms summed, not of their sum, and a leaf whose terms cancel has a small maximum but errors
    the size of its terms, which come from the same forward and backward pass as the largest
    values. (An attention key bias's gradient is exactly zero, as softmax ignores a shift of all
    scores: computed, it is rounding noise of about 1e-9, as large as its own maximum.) For a
    single array the two scales are the same.

    Pass ``scale`` where the size of the terms is known better than from the results: logits
    exp(t) * cosine + b carry errors of exp(t) times the cosines' however small the cosines are,
    so their scale is exp(t) + |b|, the largest a logit can be.
    """
    got, got_tree = jax.tree_util.tree_flatten_with_path(actual)
    want, want_tree = jax.tree_util.tree_flatten_with_path(expected)
    assert got_tree == want_tree, f"{what}: the trees differ: {got_tree} vs {want_tree}"
    errors, largest = {}, 0.0
    for (path, a), (_, b) in zip(got, want, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        name = jax.tree_util.keystr(path) or "the array"
        assert a.shape == b.shape, f"{what} {name}: shape {a.shape} vs {b.shape}"
        error = float(np.max(np.abs(a - b), initial=0.0))
        errors[name] = np.inf if np.isnan(error) else error  # a NaN fails, and max() below must see it
        largest = max(largest, float(np.max(np.abs(b), initial=0.0)))
    scale = largest if scale is None else float(scale)
    worst = max(errors, key=errors.__getitem__)
    bound = rtol_of_scale * scale
    print(
        f"{what}: max abs error {errors[worst]:.2e} ({worst}), scale {scale:.2e}, bound {bound:.2e} "
        f"= {rtol_of_scale:.1e} x scale"
    )
    assert errors[worst] <= bound, (
        f"{what}: max abs error {errors[worst]:.3e} at {worst} exceeds "
        f"{rtol_of_scale:.1e} x scale {scale:.3e} = {bound:.3e}"
    )
    return errors[worst]
