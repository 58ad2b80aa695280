"""The contrastive kernels' tolerance against their references, shared by the TPU and GPU kernel tests."""

import jax.numpy as jnp
import numpy as np

# float32: 1e-5, relative to the largest reference value where that exceeds 1; bfloat16: 2e-2
# relative (with a floor for all-zero references, e.g. N = 1).
TOLERANCES = {jnp.dtype(jnp.float32): (1e-5, 1e-5), jnp.dtype(jnp.bfloat16): (2e-2, 1e-7)}


def assert_close(name, actual, expected, dtype):
    """max |actual - expected| <= max(rtol * max |expected|, atol), printing the errors."""
    rtol, atol = TOLERANCES[jnp.dtype(dtype)]
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    error, size = np.max(np.abs(actual - expected)), np.max(np.abs(expected))
    print(f"  {name}: max abs error {error:.3g}, max |ref| {size:.3g}")
    assert error <= max(rtol * size, atol), (name, error, size)
