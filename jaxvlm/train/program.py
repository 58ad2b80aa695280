"""From a training config and a mesh to the programs that run it: the model, its optimizer, the
train state's shapes and shardings, the jitted ``init`` and ``step``. Built from shapes alone, so
``step`` can be lowered and compiled ahead of time for any mesh (`TrainProgram.lower`) without
data or a checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from jaxvlm import model_dir, parallel
from jaxvlm.errors import InputError
from jaxvlm.models import ModelConfig, Runtime, abstract_params, build_model, example_inputs
from jaxvlm.models.registry import get_architecture
from jaxvlm.preprocess import NaFlexImages, PreprocessConfig
from jaxvlm.tokenizers import CLIP_BPE_FILE, TokenizerConfig
from jaxvlm.train import config as train_config
from jaxvlm.train import optimizer as optim
from jaxvlm.train.state import StateLayout, TrainState, layout, place
from jaxvlm.train.step import Objective, make_train_step


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a run trains and exports: architecture, preprocessing, tokenizer (and where its file
    is), and the pretrained parameters it starts from, if any."""

    config: ModelConfig
    runtime: Runtime
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig
    tokenizer_dir: Path
    pretrained: dict | None  # nested numpy tree of a model directory
    # what it starts from, for the exported model's provenance: the architecture's name ("model"), and with
    # init_from that directory and its own provenance
    origin: dict
    pretrained_stats: dict = dataclasses.field(default_factory=dict)  # the model directory's BatchNorm statistics


def model_spec(cfg: ml_collections.ConfigDict, *, pretrained: bool = True) -> ModelSpec:
    """``pretrained`` False: an ``init_from`` directory's architecture without its weights
    (ahead-of-time planning needs shapes only)."""
    try:
        runtime = Runtime(dtype=cfg.dtype, remat=cfg.remat, attention=cfg.attention)
    except InputError as e:  # named as the training config names it
        raise InputError(f"model.{e}") from None
    if cfg.init_from:
        source = Path(cfg.init_from)
        loaded = model_dir.load(source, weights=pretrained)
        # named as `jaxvlm eval` names init_from itself: by its provenance, else by its directory
        origin = {
            "model": loaded.provenance.get("model") or source.absolute().name,
            "init_from": str(source.absolute()),
            "init_from_provenance": loaded.provenance,
        }
        return ModelSpec(
            loaded.config,
            runtime,
            loaded.preprocess,
            loaded.tokenizer,
            Path(cfg.tokenizer_dir or cfg.init_from),
            loaded.params,
            origin,
            loaded.batch_stats,
        )
    arch = get_architecture(cfg.name)
    tokenizer_dir = Path(cfg.tokenizer_dir) if cfg.tokenizer_dir else CLIP_BPE_FILE.parent
    return ModelSpec(arch.model, runtime, arch.preprocess, arch.tokenizer, tokenizer_dir, None, {"model": cfg.name})


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    mesh: Mesh
    spec: ModelSpec
    module: flax.linen.Module
    optimizer: optim.Optimizer
    state: StateLayout
    step: jax.stages.Wrapped  # jitted (state, batch) -> (state, metrics); donates the state
    init_params: str  # regex: the parameters taken from spec.pretrained

    def abstract_batch(self, global_batch_size: int) -> dict[str, Any]:
        """The batch the input pipeline delivers: uint8 pixels (or NaFlex patches, with their mask and
        grid) and int32 token ids, every array split on the batch axis."""
        sharding = parallel.batch_sharding(self.mesh)
        images, ids = jax.eval_shape(lambda: example_inputs(self.spec.config, global_batch_size))
        sent = lambda x, dtype=None: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=sharding)
        if isinstance(images, NaFlexImages):  # the mask (bool) and grid (int32) as the model takes them
            images = NaFlexImages(sent(images.patches, jnp.uint8), sent(images.mask), sent(images.grid))
        else:
            images = sent(images, jnp.uint8)
        return {"image": images, "text": sent(ids)}

    def lower(self, global_batch_size: int) -> jax.stages.Lowered:
        """The train step lowered for abstract inputs: ``.compile()`` it for memory and cost analyses."""
        with parallel.activate(self.mesh):
            return self.step.lower(self.state.abstract, self.abstract_batch(global_batch_size))

    def init(self) -> TrainState:
        """A new train state, created directly sharded (pretrained parameters placed over it).
        Traced without the mesh context: flax would constrain each initialiser's output by its
        logical names, which DenseGeneral's reshaped kernels do not fit; out_shardings place it."""
        state = self.state.init()
        if self.spec.pretrained is None:
            return state
        stats = state.batch_stats
        if stats:  # BatchNorm's statistics come with the parameters they normalise for (same names, same regex)
            stats = _with_pretrained(
                stats, self.state.abstract.batch_stats, self.spec.pretrained_stats, self.init_params, "batch statistic"
            )
        return state.replace(
            params=_with_pretrained(state.params, self.state.abstract.params, self.spec.pretrained, self.init_params),
            batch_stats=stats,
        )

    def run_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        with parallel.activate(self.mesh):
            return self.step(state, batch)


def build(config: ml_collections.ConfigDict, mesh: Mesh, *, pretrained: bool = True) -> TrainProgram:
    """``pretrained`` False: shapes only, for lowering (`init` then starts from scratch)."""
    spec = model_spec(config.model, pretrained=pretrained)
    module = build_model(spec.config, spec.runtime)
    boxed = abstract_params(spec.config, spec.runtime)
    optimizer = optim.build(config.optimizer, flax.linen.unbox(boxed), config.total_steps)
    state = layout(
        module,
        example_inputs(spec.config),
        boxed,
        optimizer.tx,
        mesh,
        seed=config.seed,
        fsdp_min_size=config.mesh.fsdp_min_size,
    )
    objective = Objective(
        loss=spec.config.loss,
        caption=spec.config.decoder is not None,
        contrastive_weight=config.loss.contrastive_weight,
        caption_weight=config.loss.caption_weight,
        pad_id=spec.tokenizer.pad_id,
        implementation=config.loss.implementation,
        batch_accuracy=config.loss.batch_accuracy,
    )
    step = make_train_step(
        module,
        optimizer.tx,
        objective,
        mesh=mesh,
        preprocess=spec.preprocess,
        schedule=optimizer.schedule,
        trainable=optimizer.trainable,
        microbatches=config.microbatches,
        logit_scale_max=config.loss.logit_scale_max,
        batch_norm=train_config.batch_norm_mode(config.model),
    )
    replicated = parallel.replicated(mesh)
    jitted = jax.jit(
        step,
        in_shardings=(state.shardings, parallel.batch_sharding(mesh)),
        out_shardings=(state.shardings, replicated),
        donate_argnums=0,
    )
    return TrainProgram(mesh, spec, module, optimizer, state, jitted, config.model.init_params)


def _with_pretrained(params, abstract, pretrained: dict, pattern: str, what: str = "parameter") -> dict:
    """``params`` with the leaves whose names match ``pattern`` replaced by the pretrained ones; ``what``:
    "parameter" (which ``pattern`` must match) or "batch statistic" (BatchNorm's, which it may not)."""
    regex = optim.compile_regex(pattern, "model.init_params")
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    shapes = flax.traverse_util.flatten_dict(abstract, sep="/")
    source = flax.traverse_util.flatten_dict(pretrained, sep="/")
    taken = [name for name in flat if regex.fullmatch(name)]
    if not taken and what == "parameter":
        raise InputError(f"model.init_params {pattern!r} matches no parameter")
    for name in taken:
        if name not in source:
            raise InputError(f"model.init_from has no {what} {name}")
        if source[name].shape != shapes[name].shape:
            raise InputError(
                f"model.init_from's {name} has shape {source[name].shape}, the model needs {shapes[name].shape}"
            )
        flat[name] = place(source[name], shapes[name])
    return flax.traverse_util.unflatten_dict(flat, sep="/")
