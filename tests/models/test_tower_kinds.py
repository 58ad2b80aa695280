"""A tower kind is one file, one config, one registry entry: a toy third image tower (an MLP-Mixer,
defined here and not shipped) is registered, trained for a few steps by the ordinary train
program, exported, loaded with `jaxvlm.load`, and counted by `flops_per_example`."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import flax.linen as nn
import jax
import numpy as np
import pytest

import jaxvlm
from jaxvlm import parallel
from jaxvlm.errors import InputError
from jaxvlm.models import ModelConfig, Runtime, towers
from jaxvlm.models.layers import dense, layer_norm
from jaxvlm.models.registry import ARCHITECTURES, Architecture, get_architecture
from jaxvlm.models.towers.base import ImageTowerConfig
from jaxvlm.models.towers.vit import PatchEmbed
from jaxvlm.train import checkpoint, program
from jaxvlm.train import config as train_config
from tests.tolerances import FLOAT32_EPS, assert_close_to_scale


@dataclasses.dataclass(frozen=True)
class MixerConfig(ImageTowerConfig):
    kind: ClassVar[str] = "mixer"

    image_size: int
    patch_size: int
    width: int
    depth: int
    token_mlp_dim: int
    channel_mlp_dim: int

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise InputError(f"vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def token_width(self, embed_dim: int) -> int:
        return self.width


class Mixer(nn.Module):
    cfg: MixerConfig
    embed_dim: int
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg, dtype = self.cfg, self.runtime.compute_dtype
        x = PatchEmbed(cfg.patch_size, cfg.width, True, dtype, name="patch_embed")(images)
        for i in range(cfg.depth):
            y = layer_norm(1e-6, dtype, f"token_norm_{i}")(x).swapaxes(1, 2)
            y = dense(cfg.token_mlp_dim, ("length", "mlp"), dtype=dtype, name=f"token_fc1_{i}")(y)
            y = dense(cfg.tokens, ("mlp", "length"), dtype=dtype, name=f"token_fc2_{i}")(nn.gelu(y))
            x = x + y.swapaxes(1, 2)
            y = layer_norm(1e-6, dtype, f"channel_norm_{i}")(x)
            y = dense(cfg.channel_mlp_dim, ("embed", "mlp"), dtype=dtype, name=f"channel_fc1_{i}")(y)
            x = x + dense(cfg.width, ("mlp", "embed"), dtype=dtype, name=f"channel_fc2_{i}")(nn.gelu(y))
        x = layer_norm(1e-6, dtype, "final_norm")(x)
        pooled = dense(self.embed_dim, ("embed", "proj"), use_bias=False, dtype=dtype, name="proj")(x.mean(axis=1))
        return pooled, x


MIXER = MixerConfig(image_size=32, patch_size=8, width=48, depth=2, token_mlp_dim=24, channel_mlp_dim=96)


@pytest.fixture
def mixer_registered(monkeypatch):
    """The one registry entry a new kind needs, and a named architecture using it."""
    monkeypatch.setitem(towers.IMAGE_TOWERS, "mixer", towers.TowerKind(MixerConfig, Mixer))
    clip = get_architecture("tiny-clip")
    arch = Architecture(ModelConfig(embed_dim=32, vision=MIXER, text=clip.model.text), clip.preprocess, clip.tokenizer)
    monkeypatch.setitem(ARCHITECTURES, "tiny-mixer-clip", arch)
    return arch


def test_a_third_tower_kind_trains_saves_and_loads(mixer_registered, tmp_path):
    config = train_config.base_config()
    config.model.name = "tiny-mixer-clip"
    config.global_batch_size = 8
    config.optimizer.warmup_steps = 0
    mesh = parallel.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    train = program.build(config, mesh)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        "text": rng.integers(1, 1000, (8, 77)).astype(np.int32),
    }
    state, losses = train.init(), []
    for _ in range(5):  # one batch, seen five times: its loss must fall
        state, metrics = train.run_step(state, batch)
        losses.append(float(metrics["loss"]))
    print("mixer tower, contrastive loss per step:", " ".join(f"{x:.3f}" for x in losses))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]

    out = tmp_path / "model"
    checkpoint.export(out, train.spec, state.params, {"model": "tiny-mixer-clip"})
    written = json.loads((out / "config.json").read_text())["model"]
    assert written["vision"]["kind"] == "mixer" and "dtype" not in written

    model = jaxvlm.load(out)
    assert model.config == mixer_registered.model
    pixels = rng.random((3, 32, 32, 3), dtype=np.float32)
    direct = jax.jit(lambda p, x: train.module.apply({"params": p}, x, method="encode_image"))(state.params, pixels)
    # one program compiled twice (for one device, and for the Model's data mesh): unit vectors that agree to
    # float32 rounding
    assert_close_to_scale(model.encode_image(pixels), direct, rtol_of_scale=16 * FLOAT32_EPS, what="loaded vs trained")


def test_flops_per_example_of_the_third_kind(mixer_registered):
    p, tokens, w = MIXER.patch_size, MIXER.tokens, MIXER.width
    per_layer = 2 * (2 * w * tokens * MIXER.token_mlp_dim) + 2 * (2 * tokens * w * MIXER.channel_mlp_dim)
    expected = 2 * tokens * (p * p * 3) * w + MIXER.depth * per_layer + 2 * w * 32
    assert towers.flops_per_example(MIXER, embed_dim=32) == expected


def test_an_unregistered_kind_is_one_clear_error():
    d = get_architecture("tiny-clip").model.to_dict()
    d["vision"] = {**dataclasses.asdict(MIXER), "kind": "mixer"}
    with pytest.raises(InputError, match=r"unknown tower kind 'mixer'; known: ([a-z_]+, )*[a-z_]+$"):
        ModelConfig.from_dict(d)


def test_converters_name_a_kind_they_cannot_convert(mixer_registered):
    from jaxvlm.convert.open_clip import convert_state_dict

    with pytest.raises(InputError, match="open_clip weights of 'mixer' towers cannot be converted"):
        convert_state_dict({}, mixer_registered.model)
