"""Lowering for CUDA on this CPU host: Pallas runs its Triton lowering when a program is lowered
(the Triton IR is embedded in the program), so lowering catches what the Triton backend cannot
take, which interpret mode lets through. Compiling the IR to GPU code needs a GPU."""

import functools

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

TRITON_CALL = "__gpu$xla.gpu.triton"  # the custom-call target of a Pallas Triton kernel


@functools.cache
def _cuda_lowering_error() -> str | None:
    """Why this host cannot lower a trivial Pallas Triton kernel for CUDA, or None."""

    def double(x_ref, o_ref):
        o_ref[...] = 2 * x_ref[...]

    # Triton's compiler params select the Triton backend (without them CUDA gets Mosaic GPU)
    kernel = pl.pallas_call(
        double, out_shape=jax.ShapeDtypeStruct((16,), jnp.float32), compiler_params=plgpu.CompilerParams()
    )
    try:
        jax.jit(kernel).trace(jax.ShapeDtypeStruct((16,), jnp.float32)).lower(lowering_platforms=("cuda",))
    except Exception as e:  # e.g. a jaxlib without the Triton dialect
        return f"{type(e).__name__}: {e}"
    return None


def lower_for_cuda(fn, *args) -> str:
    """The StableHLO text of jit(fn) lowered for CUDA; skips when this host cannot lower for CUDA."""
    if (error := _cuda_lowering_error()) is not None:
        pytest.skip(f"cannot lower a Pallas Triton kernel for CUDA on this host: {error}")
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def triton_kernels(text: str) -> int:
    """How many Pallas Triton kernel calls a lowered program holds."""
    return text.count(TRITON_CALL)
