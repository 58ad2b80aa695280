"""Optimizer rules: schedules, weight decay only on weight matrices, per-group learning rates,
frozen parameters, layer-wise decay, and the config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.errors import InputError
from jaxvlm.train import optimizer as optim
from tests.train.runs import tiny_config


def params():
    """A tree shaped like a two-tower model's: a stacked encoder, embeddings, norms, t."""

    def tower(depth):
        return {
            "patch_embed": {"kernel": jnp.ones((4, 8))},
            "pos_embed": jnp.ones((1, 5, 8)),
            "encoder": {
                "blocks": {
                    "mlp": {"fc1": {"kernel": jnp.ones((depth, 8, 16)), "bias": jnp.ones((depth, 16))}},
                    "norm1": {"scale": jnp.ones((depth, 8))},
                }
            },
            "final_norm": {"scale": jnp.ones((8,)), "bias": jnp.ones((8,))},
            "proj": {"kernel": jnp.ones((8, 4))},
        }

    return {"img": tower(3), "txt": tower(2), "t": jnp.asarray(2.0)}


def opt_config(**changes):
    cfg = tiny_config().optimizer
    cfg.update(changes)
    return cfg


def one_update(cfg, grads_value=1.0, steps=1):
    p = params()
    opt = optim.build(cfg, p, total_steps=100)
    state = opt.tx.init(p)
    grads = jax.tree.map(lambda x: jnp.full_like(x, grads_value), p)
    for _ in range(steps):
        updates, state = opt.tx.update(grads, state, p)
    return p, updates, opt


def test_schedules():
    cosine = optim.schedule(opt_config(lr=1.0, warmup_steps=10, min_lr_ratio=0.1), 110)
    assert float(cosine(0)) == 0.0 and float(cosine(5)) == pytest.approx(0.5)
    assert float(cosine(10)) == pytest.approx(1.0) and float(cosine(110)) == pytest.approx(0.1)
    rsqrt = optim.schedule(opt_config(lr=1.0, schedule="rsqrt", warmup_steps=0, rsqrt_timescale=100), 1000)
    assert float(rsqrt(300)) == pytest.approx(0.5)
    constant = optim.schedule(opt_config(lr=2.0, schedule="constant", warmup_steps=0, cooldown_steps=10), 100)
    assert [float(constant(n)) for n in (0, 89, 90, 95, 100)] == pytest.approx([2.0, 2.0, 2.0, 1.0, 0.0])


def test_weight_decay_only_on_weight_matrices():
    """With zero gradients AdamW's update is -lr * wd * p where decay applies, 0 elsewhere."""
    cfg = opt_config(lr=1.0, warmup_steps=0, schedule="constant", weight_decay=0.5, grad_clip_norm=0.0)
    p, updates, _ = one_update(cfg, grads_value=0.0)
    decayed = {n for n, u in zip(jax.tree.leaves(optim.param_names(p)), jax.tree.leaves(updates)) if np.any(u)}
    assert decayed == {f"{t}/{layer}/kernel" for t in ("img", "txt") for layer in ("patch_embed", "proj")} | {
        f"{t}/encoder/blocks/mlp/fc1/kernel" for t in ("img", "txt")
    }


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_frozen_parameters_get_no_update_and_no_state(name):
    cfg = opt_config(name=name, warmup_steps=0, freeze="img/.*")
    p, updates, opt = one_update(cfg, steps=2)
    assert all(not np.any(u) for u in jax.tree.leaves(updates["img"]))
    assert all(np.all(u != 0) for u in jax.tree.leaves(updates["txt"]))
    assert opt.trainable["img"]["proj"]["kernel"] is False and opt.trainable["t"] is True
    state = opt.tx.init(p)
    held = sum(x.size for x in jax.tree.leaves(state) if x.ndim)
    trainable = sum(x.size for x in jax.tree.leaves({"txt": p["txt"]}))
    assert trainable <= held <= 2 * trainable  # moments (factored for adafactor) of the text tower only


def test_lr_rules_and_layer_decay_multiply():
    cfg = opt_config(lr_rules=(("txt/proj/.*", 10.0), ("txt/.*", 0.5)), layer_decay=0.5)
    mult = optim.lr_multipliers(cfg, params())
    assert mult["txt"]["proj"]["kernel"] == 10.0  # first match wins; outside the blocks: decay ** 0
    assert mult["t"] == 1.0
    # img: depth 3; the embedding layer is layer 0 (0.5 ** 4), block i is layer i + 1 (0.5 ** (3 - i)),
    # the rest of the tower layer 4 (factor 1)
    assert mult["img"]["patch_embed"]["kernel"] == 0.5**4
    blocks = mult["img"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]
    assert blocks.shape == (3, 1, 1) and blocks.ravel().tolist() == [0.125, 0.25, 0.5]
    text_blocks = mult["txt"]["encoder"]["blocks"]["norm1"]["scale"]
    assert text_blocks.ravel().tolist() == [0.5 * 0.25, 0.5 * 0.5]
    _, updates, _ = one_update(opt_config(warmup_steps=0, schedule="constant", weight_decay=0.0, layer_decay=0.5))
    fc1 = np.asarray(updates["img"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"])
    assert fc1[0, 0, 0] == pytest.approx(fc1[2, 0, 0] / 4)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"freeze": "image/.*"}, "optimizer.freeze 'image/.*' matches no parameter"),
        ({"freeze": "img/(("}, "bad regex"),
        ({"lr_rules": (("img/.*",),)}, r"lr_rules\[0\] must be \(regex, multiplier\)"),
        ({"name": "sgd"}, "optimizer.name is 'sgd'"),
        ({"schedule": "linear"}, "optimizer.schedule is 'linear'"),
        ({"warmup_steps": 1000}, "warmup_steps"),
        ({"layer_decay": 0.0}, "layer_decay"),
    ],
)
def test_bad_optimizer_configs(changes, message):
    with pytest.raises(InputError, match=message):
        optim.build(opt_config(**changes), params(), total_steps=100)
