"""`jaxvlm plan`: what a training config costs on a TPU slice, found before paying for one.

The real train step (`jaxvlm.train.program.build`: the model, the optimizer, the config's loss,
on TPU its fused Pallas kernels) is built from abstract, sharded shapes for the devices of a TPU
topology that libtpu describes on any host (`jax.experimental.topologies`, the `jax[tpu]` extra),
and compiled ahead of time. Nothing is allocated. From the compiled program:

  per-chip memory   parameters and optimizer state (their shards, from the shardings), the
                    batch, temporaries (activations, gradients, workspace: XLA's
                    temp_size_in_bytes), code, and the total XLA's memory_analysis() gives,
                    against the chip's HBM
  FLOPs per step    matrix-multiply FLOPs per chip (`jaxvlm.flops`: XLA's cost_analysis counts a
                    scanned layer stack once, not once per layer), as executed (with the
                    recomputation of remat and gradient caching) and as the model needs them
  step time, MFU    executed FLOPs / the chip's peak bf16 FLOP/s: the step time if the chip ran
                    at its peak; model FLOPs / executed FLOPs: the MFU of that step
  largest batch     the largest global batch whose program the compiler fits in HBM, by
                    bisection over compiles (a program that does not fit fails fast)

Slice names follow Google's accelerator types: v4-N and v5p-N count TensorCores (2 per chip:
v5p-128 is 64 chips), v5e-N (gcloud: v5litepod-N) and v6e-N count chips. `parse_slice` maps a
name to its chips and its topology, e.g. v5p-128 -> "v5p:4x4x4", v5e-256 -> "v5e:16x16".
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from jaxvlm.errors import InputError

if TYPE_CHECKING:  # jax is imported only where a plan is compiled
    import jax
    import ml_collections

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str
    hbm_bytes: int
    peak_bf16_flops: float  # per chip, per second
    cores_in_name: bool  # the accelerator type counts TensorCores (2 per chip), not chips
    dims: int  # the topology's dimensions: 3 (a 3D torus of chips) or 2
    gcloud_prefix: str  # gcloud's accelerator type is f"{gcloud_prefix}-{count}"


# Peak bf16 FLOP/s and HBM per chip, as Google's Cloud TPU pages state them:
CHIPS = {
    # cloud.google.com/tpu/docs/v4: "Peak compute per chip 275 teraflops (bf16 or int8)",
    # "HBM2 capacity and bandwidth 32 GiB, 1200 GBps"
    "v4": Chip("v4", 32 * GIB, 275e12, cores_in_name=True, dims=3, gcloud_prefix="v4"),
    # cloud.google.com/tpu/docs/v5e: "Peak compute per chip (bf16) 197 TFLOPs",
    # "HBM2 capacity and bandwidth 16 GB, 819 GBps"
    "v5e": Chip("v5e", 16 * GIB, 197e12, cores_in_name=False, dims=2, gcloud_prefix="v5litepod"),
    # cloud.google.com/tpu/docs/v5p: "Peak compute per chip (bf16) 459 TFLOPs",
    # "HBM2e capacity and bandwidth 95GB, 2765 GBps"
    "v5p": Chip("v5p", 95 * GIB, 459e12, cores_in_name=True, dims=3, gcloud_prefix="v5p"),
    # cloud.google.com/tpu/docs/v6e: "Peak compute per chip (bf16) 918 TFLOPs",
    # "HBM capacity per chip 32 GB"
    "v6e": Chip("v6e", 32 * GIB, 918e12, cores_in_name=False, dims=2, gcloud_prefix="v6e"),
}
ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    chip: Chip
    shape: tuple[int, ...]  # chips along each axis of the topology

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def topology(self) -> str:
        """libtpu's topology name, e.g. "v5p:4x4x4"."""
        return f"{self.chip.generation}:{'x'.join(map(str, self.shape))}"

    @property
    def name(self) -> str:
        """Google's name, e.g. "v5p-128" (TensorCores) or "v5e-256" (chips)."""
        return f"{self.chip.generation}-{self.chips * (2 if self.chip.cores_in_name else 1)}"

    @property
    def accelerator_type(self) -> str:
        """gcloud's --accelerator-type, e.g. "v5p-128", "v5litepod-256"."""
        return f"{self.chip.gcloud_prefix}-{self.name.split('-')[1]}"


def parse_slice(name: str) -> TpuSlice:
    """A slice from Google's name ("v5p-128", "v5e-256", "v5litepod-16", "v4-8", "v6e-64") or a
    topology ("v5p:4x4x8", "v5e:2x4")."""
    match = re.fullmatch(r"(v4|v5e|v5p|v6e|v5litepod)(?:-(\d+)|:(\d+(?:x\d+)+))", name.strip().lower())
    if not match:
        raise InputError(
            f"TPU slice {name!r}: expected a name like v5p-128, v5e-256, v4-8, v6e-64 or a topology like v5p:4x4x8"
        )
    generation, count, topology = match.groups()
    chip = CHIPS[ALIASES.get(generation, generation)]
    if topology:
        shape = tuple(int(n) for n in topology.split("x"))
        if len(shape) != chip.dims or min(shape) < 1:
            raise InputError(f"TPU slice {name!r}: a {chip.generation} topology has {chip.dims} positive sizes")
        return TpuSlice(chip, shape)
    count = int(count)
    chips, odd = divmod(count, 2) if chip.cores_in_name else (count, 0)
    if odd or chips < 1 or chips & (chips - 1) or (chip.dims == 3 and chips < 4):
        unit = "TensorCores (2 per chip)" if chip.cores_in_name else "chips"
        raise InputError(
            f"TPU slice {name!r}: {chip.generation}-N counts {unit}; N must give a power of 2 "
            f"chips{', at least 4' if chip.dims == 3 else ''}"
        )
    return TpuSlice(chip, default_shape(chips, chip.dims))


def default_shape(chips: int, dims: int) -> tuple[int, ...]:
    """Google's default topology for a power-of-2 number of chips: v5p 4 -> 2x2x1, 8 -> 2x2x2,
    16 -> 2x2x4, 32 -> 2x4x4, 64 -> 4x4x4, 128 -> 4x4x8; v5e 8 -> 2x4, 256 -> 16x16. Each
    doubling doubles the last of the smallest sizes."""
    if dims == 3 and chips == 4:
        return (2, 2, 1)
    shape = [2] * 3 if dims == 3 else [1] * 2
    while math.prod(shape) < chips:
        last_smallest = max(i for i, size in enumerate(shape) if size == min(shape))
        shape[last_smallest] *= 2
    return tuple(shape)


def topology_devices(tpu: TpuSlice, num_slices: int = 1) -> list[jax.Device]:
    """The devices of ``num_slices`` slices of ``tpu``, one per chip, as libtpu describes them
    (no hardware needed). v4 and v5p chips hold two TensorCores driven as one device
    ("megacore"), as JAX runs them."""
    from jax.experimental import topologies

    options = {"chip_config_name": "megacore"} if tpu.chip.cores_in_name else {}
    if tpu.chips < 4:  # smaller than a host: the host bounds are the slice
        options["chips_per_host_bounds"] = (*tpu.shape, 1, 1)[:3]
    if num_slices > 1:
        options["num_slices"] = num_slices
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=tpu.topology, **options).devices)
    except Exception as e:  # no libtpu, or a topology it rejects: one line
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"cannot describe TPU topology {tpu.topology} (needs libtpu: pip install 'jax[tpu]'): {message}"
        ) from None


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per chip of one compiled train step."""

    params: int  # this chip's shards of the parameters
    optimizer: int  # ... of the optimizer state
    batch: int  # ... of the input batch
    temporaries: int  # activations, gradients, workspace (XLA's temp_size_in_bytes)
    code: int  # the compiled program
    total: int  # arguments + outputs not aliased to them + temporaries + code (memory_analysis())

    @property
    def other(self) -> int:
        """The rest of the total: the arrays' padding to the chip's tiles, the step counters,
        outputs that do not reuse an input's buffer."""
        return self.total - self.params - self.optimizer - self.batch - self.temporaries - self.code


@dataclasses.dataclass(frozen=True)
class Plan:
    model: str
    tpu: TpuSlice
    num_slices: int
    mesh: dict[str, int]  # axis sizes, ICI x DCN
    global_batch_size: int
    microbatches: int
    memory: Memory | None  # None: the step does not fit (see `needed`)
    needed: str  # when it does not fit: what XLA says it needs
    executed_flops: float  # per chip per step, recomputation (remat, gradient caching) included
    model_flops: float  # per chip per step, without recomputation
    largest_batch: tuple[int, int] | None  # (the largest global batch found to fit, the smallest found not to)
    seconds: float  # how long planning took

    @property
    def fits(self) -> bool:
        return _fits(self.memory, self.tpu.chip)

    @property
    def step_seconds(self) -> float:
        """The step time if every chip ran at its peak bf16 FLOP/s."""
        return self.executed_flops / self.tpu.chip.peak_bf16_flops

    @property
    def mfu(self) -> float:
        """Model FLOPs utilisation at that step time: model / executed FLOPs."""
        return self.model_flops / self.executed_flops


class _Step:
    """The train step of a config on a mesh, lowered and compiled for any global batch size."""

    def __init__(self, config, mesh):
        from jaxvlm.train.program import build

        self.config, self.mesh = config, mesh
        self.program = build(config, mesh, pretrained=False)

    def trace(self, batch: int):
        from jaxvlm import parallel

        with parallel.activate(self.mesh):
            return self.program.step.trace(self.program.state.abstract, self.program.abstract_batch(batch))

    def compile(self, batch: int, traced=None) -> tuple[Memory | None, str]:
        """(its memory, "") or (None, XLA's reason) when the compiler finds it does not fit in HBM.
        ``traced``: `trace(batch)`, if already done."""
        import jax

        try:
            compiled = (traced or self.trace(batch)).lower().compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            return None, str(e).strip().splitlines()[0]
        state, stats = self.program.state.abstract, compiled.memory_analysis()
        return Memory(
            params=_shard_bytes(state.params),
            optimizer=_shard_bytes(state.opt_state),
            batch=_shard_bytes(self.program.abstract_batch(batch)),
            temporaries=stats.temp_size_in_bytes,
            code=stats.generated_code_size_in_bytes,
            total=(
                stats.argument_size_in_bytes
                + stats.output_size_in_bytes
                - stats.alias_size_in_bytes
                + stats.temp_size_in_bytes
                + stats.generated_code_size_in_bytes
            ),
        ), ""


def plan(
    config: ml_collections.ConfigDict,
    tpu: TpuSlice,
    *,
    num_slices: int = 1,
    search: bool = False,
    tolerance: float = 1 / 16,
    log: Callable[[str], object] = lambda message: None,
) -> Plan:
    """Plans ``config`` (a training config) on ``num_slices`` slices of ``tpu``: checks it,
    compiles its train step at ``config.global_batch_size`` and, with ``search``, finds the
    largest global batch that fits, to within ``tolerance`` (relative) or one step of the batch's
    granularity (batch shards x micro-batches)."""
    import time

    from jaxvlm import parallel
    from jaxvlm.flops import per_device_flops
    from jaxvlm.train import config as train_config

    started = time.perf_counter()
    devices = topology_devices(tpu, num_slices)
    train_config.check(config, len(devices))
    mesh = parallel.create_mesh(config.mesh, config.mesh.dcn, devices=devices)
    step = _Step(config, mesh)
    batch = config.global_batch_size
    log(
        f"compiling the train step for {tpu.topology}{f' x {num_slices}' if num_slices > 1 else ''} "
        f"at global batch {batch}"
    )
    traced = step.trace(batch)
    memory, needed = step.compile(batch, traced)
    executed = per_device_flops(traced.jaxpr, len(devices))
    model_flops = per_device_flops(_Step(_without_recomputation(config), mesh).trace(batch).jaxpr, len(devices))
    largest = None
    if search:
        unit = math.prod(mesh.shape[a] for a in parallel.BATCH_AXES) * config.microbatches

        def fits(units: int) -> bool:
            log(f"compiling at global batch {units * unit}")
            return _fits(step.compile(units * unit)[0], tpu.chip)

        lo, hi = largest_fitting(fits, batch // unit, tolerance, known=_fits(memory, tpu.chip))
        largest = (lo * unit, hi * unit)
    return Plan(
        model=_model_name(config),
        tpu=tpu,
        num_slices=num_slices,
        mesh=dict(mesh.shape),
        global_batch_size=batch,
        microbatches=config.microbatches,
        memory=memory,
        needed=needed,
        executed_flops=executed,
        model_flops=model_flops,
        largest_batch=largest,
        seconds=time.perf_counter() - started,
    )


def _fits(memory: Memory | None, chip: Chip) -> bool:
    return memory is not None and memory.total <= chip.hbm_bytes


def _shard_bytes(tree) -> int:
    """Bytes one device holds of the abstract arrays in ``tree`` (from their shardings)."""
    import jax

    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def _without_recomputation(config):
    """The config's model and batch without remat or gradient caching, with XLA's attention and loss
    (the fused kernels recompute in their backward passes): its FLOPs are the model's own."""
    plain = config.copy_and_resolve_references()
    plain.model.remat, plain.model.attention, plain.loss.implementation = "none", "xla", "xla"
    plain.microbatches = 1
    return plain


def _model_name(config) -> str:
    return config.model.init_from or config.model.name


def largest_fitting(
    fits: Callable[[int], bool], start: int, tolerance: float, *, known: bool | None = None
) -> tuple[int, int]:
    """(lo, hi): ``fits(lo)`` and not ``fits(hi)``, for a ``fits`` that holds up to some n >= 1 and
    fails above it (lo 0: nothing fits). Doubling or halving from ``start`` brackets n, bisection
    narrows the bracket until hi - lo == 1 or hi <= lo * (1 + tolerance). ``known``: ``fits(start)``."""
    lo = max(1, start)
    if fits(lo) if known is None else known:
        while fits(2 * lo):
            lo *= 2
        hi = 2 * lo
    else:
        hi, lo = lo, lo // 2
        while lo >= 1 and not fits(lo):
            hi, lo = lo, lo // 2
        if lo < 1:
            return 0, hi
    while hi - lo > 1 and hi > lo * (1 + tolerance):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, hi


def format_table(p: Plan) -> str:
    """The plan as a small text table."""
    chip = p.tpu.chip
    slices = f" x {p.num_slices} slices" if p.num_slices > 1 else ""
    chips = p.tpu.chips * p.num_slices
    mesh = " x ".join(f"{axis} {size}" for axis, size in p.mesh.items())
    lines = [
        f"{p.model} on {p.tpu.name}{slices} ({p.tpu.topology}, {chips} chips)",
        f"mesh {mesh}; global batch {p.global_batch_size} ({p.global_batch_size / chips:g} per chip), "
        f"{p.microbatches} micro-batch{'es' if p.microbatches > 1 else ''}",
        "",
        f"{'per chip':<26}{'GiB':>10}",
    ]
    if p.memory is None:
        lines.append(f"  does not fit: {p.needed}")
    else:
        m = p.memory
        for label, value in (
            ("parameters", m.params),
            ("optimizer state", m.optimizer),
            ("batch", m.batch),
            ("temporaries", m.temporaries),
            ("code", m.code),
            ("padding, counters", m.other),
            ("total", m.total),
        ):
            lines.append(f"  {label:<24}{value / GIB:>10.3f}")
        lines[-1] += (
            f"   of {chip.hbm_bytes / GIB:g} GiB HBM ({m.total / chip.hbm_bytes:.0%}): "
            f"{'fits' if p.fits else 'DOES NOT FIT'}"
        )
    lines += [
        "",
        f"{'FLOPs per chip per step':<26}{p.executed_flops:>10.3e} executed, {p.model_flops:.3e} model",
        f"{'step time at peak':<26}{_duration(p.step_seconds):>10} "
        f"({chip.peak_bf16_flops / 1e12:g} TFLOP/s bf16 per chip)",
        f"{'MFU at that step time':<26}{p.mfu:>10.1%}",
    ]
    if p.largest_batch is not None:
        fits, fails = p.largest_batch
        lines.append(f"{'largest global batch':<26}{fits:>10} (bisection over compiles: {fails} does not fit)")
    lines.append(f"{'planned in':<26}{p.seconds:>10.0f} s")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


def to_json(p: Plan) -> str:
    import json

    record = {
        "model": p.model,
        "slice": p.tpu.name,
        "topology": p.tpu.topology,
        "num_slices": p.num_slices,
        "chips": p.tpu.chips * p.num_slices,
        "mesh": p.mesh,
        "global_batch_size": p.global_batch_size,
        "microbatches": p.microbatches,
        "memory_bytes_per_chip": {**dataclasses.asdict(p.memory), "other": p.memory.other} if p.memory else None,
        "does_not_fit": p.needed or None,
        "hbm_bytes_per_chip": p.tpu.chip.hbm_bytes,
        "fits": p.fits,
        "executed_flops_per_chip": p.executed_flops,
        "model_flops_per_chip": p.model_flops,
        "peak_bf16_flops_per_chip": p.tpu.chip.peak_bf16_flops,
        "step_seconds_at_peak": p.step_seconds,
        "mfu_at_peak": p.mfu,
        "largest_global_batch": p.largest_batch and p.largest_batch[0],
        "smallest_global_batch_not_fitting": p.largest_batch and p.largest_batch[1],
        "seconds": p.seconds,
    }
    return json.dumps(record, indent=2) + "\n"
