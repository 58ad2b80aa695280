"""Optimizer rules from config: AdamW / Adafactor / Lion, learning-rate schedules, weight decay
only on weight matrices, regex rules for per-group learning rates and frozen parameters, and
layer-wise learning-rate decay.

Parameters are named by their '/'-joined path (``img/encoder/blocks/attn/query/kernel``); rules
are regexes matched against the whole name.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxvlm.errors import InputError

OPTIMIZERS = ("adamw", "adafactor", "lion")
SCHEDULES = ("cosine", "rsqrt", "constant")
# Leading parts of a tower's names that count as its embedding layer for layer-wise decay.
EMBEDDING_LAYERS = ("patch_embed", "pos_embed", "cls", "token_embed", "pre_norm")
# The scanned stack of each tower: parameters stacked on a leading layer axis.
STACKS = ("blocks", "layers")


@dataclasses.dataclass(frozen=True)
class Optimizer:
    tx: optax.GradientTransformation
    schedule: optax.Schedule  # learning rate after n applied updates (before per-parameter multipliers)
    trainable: Any  # tree of bools: False for frozen parameters


def param_names(tree: Any) -> Any:
    """The tree with each leaf replaced by its '/'-joined path."""
    return jax.tree_util.tree_map_with_path(lambda path, _: "/".join(str(k.key) for k in path), tree)


def compile_regex(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise InputError(f"{what}: bad regex {pattern!r}: {e}") from None


def _matching(pattern: re.Pattern, names: list[str], what: str) -> set[str]:
    matched = {n for n in names if pattern.fullmatch(n)}
    if not matched:
        raise InputError(f"{what} {pattern.pattern!r} matches no parameter (names look like {names[0]})")
    return matched


def frozen_names(cfg: ml_collections.ConfigDict, names: list[str]) -> set[str]:
    if not cfg.freeze:
        return set()
    return _matching(compile_regex(cfg.freeze, "optimizer.freeze"), names, "optimizer.freeze")


def lr_multipliers(cfg: ml_collections.ConfigDict, params: Any) -> Any:
    """Per-parameter learning-rate multipliers: the first matching ``lr_rules`` entry (regex,
    multiplier) times the layer-wise decay factor. A stacked (scanned) parameter gets an array
    that scales each layer's slice by its own factor."""
    rules = []
    for i, rule in enumerate(cfg.lr_rules):
        if len(rule) != 2:
            raise InputError(f"optimizer.lr_rules[{i}] must be (regex, multiplier), got {rule!r}")
        rules.append((compile_regex(rule[0], f"optimizer.lr_rules[{i}]"), float(rule[1])))
    names = jax.tree.leaves(param_names(params))
    for i, (pattern, _) in enumerate(rules):
        _matching(pattern, names, f"optimizer.lr_rules[{i}]")
    depths = _tower_depths(params)

    def one(name, leaf):
        rule = next((m for pattern, m in rules if pattern.fullmatch(name)), 1.0)
        return rule * _layer_decay(name, np.shape(leaf), depths, cfg.layer_decay)

    return jax.tree.map(one, param_names(params), params)


def _tower_depths(params: Any) -> dict[str, int]:
    depths = {}
    for name, leaf in zip(jax.tree.leaves(param_names(params)), jax.tree.leaves(params)):
        parts = name.split("/")
        if any(p in STACKS for p in parts):
            depths[parts[0]] = np.shape(leaf)[0]
    return depths


def _layer_decay(name: str, shape: tuple, depths: dict[str, int], decay: float):
    """decay ** (depth + 1 - layer): the embedding layer is 0, block i is i + 1, the rest of a
    tower (final norm, pooling, projection) and the logit scale/bias are depth + 1 (factor 1)."""
    parts = name.split("/")
    depth = depths.get(parts[0])
    if decay == 1.0 or depth is None:
        return 1.0
    if any(p in STACKS for p in parts):
        layers = np.arange(1, depth + 1, dtype=np.float32)
        return (decay ** (depth + 1 - layers)).reshape((depth,) + (1,) * (len(shape) - 1))
    if len(parts) > 1 and parts[1] in EMBEDDING_LAYERS:
        return decay ** (depth + 1)
    return 1.0


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``lr``, then cosine (to ``lr * min_lr_ratio``), rsqrt or constant,
    with an optional linear cooldown to 0 over the last ``cooldown_steps``."""
    warmup = cfg.warmup_steps
    if cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warmup, 1), alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "rsqrt":
        main = lambda n: cfg.lr / jnp.sqrt(1.0 + n / cfg.rsqrt_timescale)
    else:
        main = optax.constant_schedule(cfg.lr)
    fn = optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup]) if warmup else main
    if not cfg.cooldown_steps:
        return fn
    return lambda n: fn(n) * jnp.clip((total_steps - n) / cfg.cooldown_steps, 0.0, 1.0)


def _scale_by(cfg) -> optax.GradientTransformation:
    if cfg.name == "adamw":
        return optax.scale_by_adam(cfg.b1, cfg.b2, cfg.eps)
    if cfg.name == "lion":
        return optax.scale_by_lion(cfg.b1, cfg.b2)
    # Adafactor's factored second moments with update clipping (d = 1); the step size comes from
    # the schedule, not from the parameters' scale.
    return optax.chain(optax.scale_by_factored_rms(epsilon=cfg.eps), optax.clip_by_block_rms(1.0))


def _scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
    def update(updates, state, params=None):
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build(cfg: ml_collections.ConfigDict, params: Any, total_steps: int) -> Optimizer:
    """The optimizer for a parameter tree (arrays or shapes), checked against it.

    Frozen parameters get zero updates and no optimizer state; clipping, weight decay and the
    optimizer's statistics cover only the trainable ones.
    """
    check(cfg, total_steps)
    names = param_names(params)
    frozen = frozen_names(cfg, jax.tree.leaves(names))
    labels = jax.tree.map(lambda n: "frozen" if n in frozen else "train", names)
    decay_pattern = compile_regex(cfg.weight_decay_on, "optimizer.weight_decay_on")
    decay_mask: Callable = lambda p: jax.tree.map(lambda n: bool(decay_pattern.fullmatch(n)), param_names(p))
    lr = schedule(cfg, total_steps)
    train = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm else optax.identity(),
        _scale_by(cfg),
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask) if cfg.weight_decay else optax.identity(),
        optax.scale_by_learning_rate(lr),
    )
    tx = optax.chain(
        optax.multi_transform({"train": train, "frozen": optax.set_to_zero()}, labels),
        _scale_by_tree(lr_multipliers(cfg, params)),
    )
    return Optimizer(tx, lr, jax.tree.map(lambda label: label == "train", labels))


def check(cfg: ml_collections.ConfigDict, total_steps: int) -> None:
    """Config values that cannot work, as one-line errors before anything is built."""
    if cfg.name not in OPTIMIZERS:
        raise InputError(f"optimizer.name is {cfg.name!r}; expected one of {', '.join(OPTIMIZERS)}")
    if cfg.schedule not in SCHEDULES:
        raise InputError(f"optimizer.schedule is {cfg.schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if cfg.lr <= 0:
        raise InputError(f"optimizer.lr must be > 0, got {cfg.lr}")
    if not 0 <= cfg.warmup_steps <= total_steps or not 0 <= cfg.cooldown_steps <= total_steps:
        raise InputError(
            f"optimizer.warmup_steps ({cfg.warmup_steps}) and cooldown_steps ({cfg.cooldown_steps}) "
            f"must lie in [0, total_steps = {total_steps}]"
        )
    if not 0 < cfg.layer_decay <= 1:
        raise InputError(f"optimizer.layer_decay must be in (0, 1], got {cfg.layer_decay}")
    if cfg.grad_clip_norm < 0 or cfg.weight_decay < 0:
        raise InputError("optimizer.grad_clip_norm and optimizer.weight_decay must be >= 0")
    if not (
        0 <= cfg.b1 < 1 and 0 <= cfg.b2 < 1 and cfg.eps >= 0 and 0 <= cfg.min_lr_ratio <= 1 and cfg.rsqrt_timescale > 0
    ):
        raise InputError(
            f"optimizer.b1 and b2 must lie in [0, 1), eps be >= 0, min_lr_ratio in [0, 1] and "
            f"rsqrt_timescale > 0; got b1 {cfg.b1}, b2 {cfg.b2}, eps {cfg.eps}, min_lr_ratio "
            f"{cfg.min_lr_ratio}, rsqrt_timescale {cfg.rsqrt_timescale}"
        )
