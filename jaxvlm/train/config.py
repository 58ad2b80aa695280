"""Training configs: ml_collections files with ``get_config()`` built on `base_config`, command-line
overrides (``--config.optimizer.lr=1e-3``) checked against the fields' types, and a check of the
whole config before anything is compiled. Every mistake is a one-line InputError.
"""

from __future__ import annotations

import ast
import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections.config_flags import config_path, tuple_parser

from jaxvlm.errors import InputError
from jaxvlm.ops import IMPLEMENTATIONS

SAVE_ERROR_ACTIONS = ("stop", "continue")
BATCH_NORM_MODES = ("auto", "frozen", "train")

_PARSERS = {
    bool: flags.BooleanParser(),
    int: flags.IntegerParser(),
    float: flags.FloatParser(),
    str: flags.ArgumentParser(),
    tuple: tuple_parser.TupleParser(),
}


class _UntypedParser:
    """For fields that default to None: a Python literal, else the text itself."""

    def parse(self, raw: str):
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw


def base_config() -> ml_collections.ConfigDict:
    """Every training field with its default; recipes change values, never add keys."""
    from jaxvlm import data

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.global_batch_size = 256
    c.microbatches = 1  # gradient accumulation: the batch is processed in this many parts
    c.log_every = 50
    c.eval_every = 0  # run the evaluations every this many steps (0: only at the end)
    c.eval_specs = ()  # jaxvlm.eval.EvalSpec fields as dicts; data_dir defaults to data.data_dir
    c.max_nan_steps = 10  # stop after this many non-finite steps in a row (each one is skipped)
    c.peer_timeout_secs = 30.0  # several processes: one silent this long is lost, and the others stop

    c.model = ml_collections.ConfigDict()
    c.model.name = "tiny-clip"  # an architecture of jaxvlm.models.registry (ignored with init_from)
    c.model.init_from = ""  # a model directory to start from: its architecture, preprocessing, tokenizer
    c.model.init_params = ".*"  # regex: the parameters taken from init_from (LiT: "img/.*"); others are new
    c.model.tokenizer_dir = ""  # where the tokenizer file is, when it is not bundled (SentencePiece)
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    c.model.remat = "none"
    c.model.attention = "auto"
    # BatchNorm (ResNet towers): "frozen" normalises by the running statistics and keeps them, "train" by each
    # batch's (synchronised over the data axes) and updates them; "auto": frozen with init_from, else train
    c.model.batch_norm = "auto"

    c.loss = ml_collections.ConfigDict()
    c.loss.implementation = "auto"  # contrastive loss: auto (fused kernel on TPU), xla or pallas
    c.loss.contrastive_weight = 1.0
    c.loss.caption_weight = 2.0  # CoCa: open_clip's coca_caption_loss_weight
    c.loss.logit_scale_max = math.log(100.0)  # t is clamped to this after each update (open_clip)
    c.loss.batch_accuracy = True  # log in-batch image->text top-1 accuracy (gathers the texts)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # adamw, adafactor or lion
    c.optimizer.lr = 1e-3
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-6
    c.optimizer.weight_decay = 0.2
    c.optimizer.weight_decay_on = ".*/kernel"  # regex: weight matrices; norms, biases, embeddings, t, b are not
    c.optimizer.grad_clip_norm = 1.0  # 0: no clipping
    c.optimizer.schedule = "cosine"  # cosine, rsqrt or constant, after a linear warmup
    c.optimizer.warmup_steps = 100
    c.optimizer.cooldown_steps = 0  # linear decay to 0 over the last steps
    c.optimizer.min_lr_ratio = 0.0  # cosine ends at lr * this
    c.optimizer.rsqrt_timescale = 10_000
    c.optimizer.freeze = ""  # regex of frozen parameters (LiT: "img/.*")
    c.optimizer.lr_rules = ()  # ((regex, multiplier), ...): the first match scales that parameter's lr
    c.optimizer.layer_decay = 1.0  # layer-wise lr decay per transformer block (fine-tuning: ~0.75)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices the other axes leave
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.dcn = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})  # slices per axis (multi-slice)
    c.mesh.fsdp_min_size = 2**16  # parameters with fewer elements stay replicated

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 500
    c.checkpoint.keep_last = 3
    c.checkpoint.keep_every = 0  # also keep every checkpoint at a multiple of this step (0: none)
    c.checkpoint.async_save = True
    c.checkpoint.on_save_error = "stop"  # a save fails (disk full, write error): "stop" the run or "continue"
    c.checkpoint.preemption_grace_secs = 25.0  # after SIGTERM, exit without the checkpoint if it takes longer

    c.data = data.default_config()
    return c


def load(path: str | Path, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """The config of a file's ``get_config()``, with ``key=value`` overrides applied (locked:
    unknown keys are errors)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such config file: {path}")
    spec = importlib.util.spec_from_file_location(f"jaxvlm_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config()
    except InputError:
        raise
    except Exception as e:  # a broken recipe file: say which and why, on one line
        raise InputError(f"config file {path}: {type(e).__name__}: {e}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise InputError(f"config file {path}: get_config() must return an ml_collections.ConfigDict")
    config.lock()
    for item in overrides:
        override(config, item)
    return config


def override(config: ml_collections.ConfigDict, item: str) -> None:
    """Applies one ``key=value`` (``key`` dotted, e.g. ``optimizer.lr``), parsed as the field's type."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise InputError(f"config override {item!r} must look like key=value")
    try:
        kind = config_path.get_type(key, config)
    except (KeyError, AttributeError, IndexError, ValueError):
        raise InputError(f"unknown config key '{key}'") from None
    parser = _PARSERS.get(kind, _UntypedParser() if kind is type(None) else None)
    if parser is None:
        raise InputError(f"config key '{key}' holds a {kind.__name__}, which cannot be set from the command line")
    try:
        value = parser.parse(raw)
        config_path.set_value(key, config, value)
    except (ValueError, TypeError) as e:
        raise InputError(f"config key '{key}' is a {kind.__name__}; cannot use {raw!r} ({e})") from None


def check_fields(config: ml_collections.ConfigDict) -> None:
    """Rejects keys `base_config` does not define, missing keys, and values whose type differs
    from the default's (an int may stand for a float, a list for a tuple; None defaults take any
    value). The data section is checked by `jaxvlm.data.check_config`."""
    from jaxvlm.data.config import check_config as check_data

    _check_fields(config, base_config(), "")
    check_data(config.data)


def _check_fields(config, defaults, prefix: str) -> None:
    if not isinstance(config, ml_collections.ConfigDict):
        raise InputError(f"config key '{prefix[:-1]}' must be a section (ConfigDict), got {config!r}")
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise InputError(f"unknown config key '{prefix}{unknown[0]}'")
    missing = sorted(set(defaults) - set(config))
    if missing:
        raise InputError(f"config is missing key '{prefix}{missing[0]}'")
    for key, default in defaults.items():
        value, name = config[key], prefix + key
        if key == "data" and not prefix:
            continue
        if isinstance(default, ml_collections.ConfigDict):
            _check_fields(value, default, f"{name}.")
        elif default is not None and not _same_kind(value, default):
            raise InputError(f"config key '{name}' must be a {type(default).__name__}, got {value!r}")


def _same_kind(value, default) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, tuple):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def check(config: ml_collections.ConfigDict, devices: int) -> None:
    """Rejects configs that cannot run on ``devices`` devices, before anything is built: unknown,
    missing or mistyped fields (`check_fields`), bad values, impossible meshes, batches that do not
    split over the data axes."""
    from jaxvlm import parallel

    check_fields(config)
    for key, value in _leaves(config).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"config key '{key}' is {value}; numbers in a config must be finite")
    for name in ("total_steps", "global_batch_size", "microbatches", "log_every", "max_nan_steps"):
        if config[name] < 1:
            raise InputError(f"{name} must be >= 1, got {config[name]}")
    for name in ("eval_every",):
        if config[name] < 0:
            raise InputError(f"{name} must be >= 0, got {config[name]}")
    for i, spec in enumerate(config.eval_specs):
        if not isinstance(spec, Mapping):
            raise InputError(f"eval_specs[{i}] must be a dict of jaxvlm.eval.EvalSpec fields, got {spec!r}")
    ck = config.checkpoint
    if ck.every < 1 or ck.keep_last < 1 or ck.keep_every < 0:
        raise InputError("checkpoint.every and checkpoint.keep_last must be >= 1, checkpoint.keep_every >= 0")
    if ck.on_save_error not in SAVE_ERROR_ACTIONS:
        raise InputError(
            f"checkpoint.on_save_error is {ck.on_save_error!r}; expected one of {', '.join(SAVE_ERROR_ACTIONS)}"
        )
    for name, value in (
        ("checkpoint.preemption_grace_secs", ck.preemption_grace_secs),
        ("peer_timeout_secs", config.peer_timeout_secs),
    ):
        if not 0 < value < math.inf:
            raise InputError(f"{name} must be a positive number of seconds, got {value}")
    if config.model.batch_norm not in BATCH_NORM_MODES:
        raise InputError(
            f"model.batch_norm is {config.model.batch_norm!r}; expected one of {', '.join(BATCH_NORM_MODES)}"
        )
    if config.loss.implementation not in IMPLEMENTATIONS:
        raise InputError(
            f"loss.implementation is {config.loss.implementation!r}; expected one of {', '.join(IMPLEMENTATIONS)}"
        )
    mesh = config.mesh
    slices = math.prod(mesh.dcn[a] for a in parallel.MESH_AXES)
    if slices < 1 or devices % slices:
        raise InputError(f"mesh.dcn {dict(mesh.dcn)} does not divide {devices} devices")
    shape = parallel.mesh_shape(mesh, devices // slices)
    shards = math.prod(s * mesh.dcn[a] for a, s in zip(parallel.MESH_AXES, shape) if a in parallel.BATCH_AXES)
    if config.global_batch_size % (shards * config.microbatches):
        raise InputError(
            f"global_batch_size {config.global_batch_size} is not divisible by the {shards} batch shards "
            f"(mesh data x fsdp) times {config.microbatches} microbatches"
        )


def batch_norm_mode(model: ml_collections.ConfigDict) -> str:
    """What BatchNorm does in training: model.batch_norm, "auto" resolved by whether the run fine-tunes."""
    if model.batch_norm == "auto":
        return "frozen" if model.init_from else "train"
    return model.batch_norm


def eval_specs(config: ml_collections.ConfigDict) -> list[dict]:
    """The fields of each of ``config.eval_specs``, data_dir defaulting to data.data_dir."""
    return [{"data_dir": config.data.data_dir, **dict(spec)} for spec in config.eval_specs]


def check_eval_specs(config: ml_collections.ConfigDict) -> None:
    """Opens the data of every eval spec as its evaluation will (dataset built, split known, the labels or
    captions its task needs), so that a bad one fails before training starts, not at the first evaluation.
    Not part of `check`: `jaxvlm plan` and the TPU launcher check configs where the data may not be."""
    from jaxvlm.eval.runner import EvalSpec, check_data

    for i, fields in enumerate(eval_specs(config)):
        try:
            check_data(EvalSpec.from_dict(fields))
        except InputError as e:
            named = f" ({fields['task']} on {fields['dataset']})" if {"task", "dataset"} <= fields.keys() else ""
            raise InputError(f"eval_specs[{i}]{named}: {e}") from None


def _leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    """{dotted key: value} of every field that is not itself a ConfigDict."""
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
