"""The train step of every convolutional image tower kind (OpenAI's ModifiedResNet, ConvNeXt, ViTamin, MobileCLIP's
ConvStem ViT and FastViT, ALIGN's EfficientNet) compiles ahead of time for a TPU v5p slice on this CPU (libtpu's
description of the topology): convolutions sharded FSDP x data over its 4 chips, BatchNorm trained with
statistics reduced over the batch axes. Tiny towers of each kind; what the compiler is given is the program
`jaxvlm train` runs."""

from __future__ import annotations

import dataclasses

import pytest

from jaxvlm import parallel, plan
from jaxvlm.models.registry import ARCHITECTURES, convnext, mobileclip, modified_resnet_clip, vitamin
from jaxvlm.models.towers import EfficientNetConfig
from jaxvlm.train import program as program_module
from jaxvlm.train.program import build
from tests.convert.fastvit_models import TINY_FASTVITS
from tests.convert.mobileclip_models import TINY_CLIP_VITS
from tests.train.runs import tiny_config

pytest.importorskip("libtpu", reason="compiling for a TPU topology needs the jax[tpu] extra")


def tiny_align():
    """ALIGN-base with two EfficientNet stages at 64 px (its embedding as wide as the last stage)."""
    vision = EfficientNetConfig(
        image_size=64, width_coefficient=0.5, depth_coefficient=1.0, kernel_sizes=(3, 5), in_channels=(32, 16),
        out_channels=(16, 48), strides=(1, 2), block_repeats=(1, 2), expand_ratios=(1, 6),
    )  # fmt: skip
    align = ARCHITECTURES["ALIGN-base"]
    return dataclasses.replace(align, model=align.model.replace(vision=vision, embed_dim=vision.features))


def with_tiny_text(arch):
    text = dataclasses.replace(arch.model.text, width=64, heads=1, mlp_dim=256, depth=2)
    return dataclasses.replace(arch, model=arch.model.replace(text=text))


TINY_CONV_MODELS = {
    "tiny-resnet": modified_resnet_clip(
        embed_dim=32, vision=dict(image_size=64, layers=(1, 1, 1, 1), width=16), text_width=64
    ),
    "tiny-convnext": convnext(
        embed_dim=32,
        vision={"image_size": 64, "depths": (1, 1, 1, 1), "dims": (16, 32, 32, 64)},
        text={"width": 64, "depth": 2},
    ),
    "tiny-vitamin": vitamin(
        embed_dim=32,
        vision=dict(image_size=64, stem_width=16, dim=32, width=64, depth=2, heads=2),
        text={"width": 64, "heads": 1, "depth": 2},
    ),
    "tiny-mobileclip-convstem": mobileclip(
        embed_dim=32, vision=TINY_CLIP_VITS["vit_jaxvlmtest_mci_32"], text_width=64, causal=False
    ),
    "tiny-fastvit": mobileclip(
        embed_dim=32, vision=TINY_FASTVITS["fastvit_jaxvlmtest_batch_norm"], text_width=64, causal=False
    ),
    "tiny-align": tiny_align(),
}


@pytest.fixture(autouse=True)
def tiny_conv_architectures(monkeypatch):
    known = program_module.get_architecture
    tiny = {name: with_tiny_text(arch) for name, arch in TINY_CONV_MODELS.items()}
    monkeypatch.setattr(program_module, "get_architecture", lambda name: tiny.get(name) or known(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY_CONV_MODELS)
def test_train_step_compiles_for_a_v5p_slice(name):
    config = tiny_config(name, {"global_batch_size": 16, "mesh.fsdp": 2, "model.batch_norm": "train"})
    tpu = plan.parse_slice("v5p-8")
    mesh = parallel.create_mesh(config.mesh, config.mesh.dcn, devices=plan.topology_devices(tpu))
    program = build(config, mesh, pretrained=False)
    with parallel.activate(mesh):
        compiled = program.step.trace(program.state.abstract, program.abstract_batch(16)).lower().compile()
    stats = compiled.memory_analysis()
    hlo = compiled.as_text()
    print(f"{name}: {stats.temp_size_in_bytes / 2**20:.1f} MiB temporaries per chip; {len(hlo)} characters of HLO")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 1}
    assert "convolution" in hlo and "all-reduce" in hlo
    assert stats.temp_size_in_bytes < tpu.chip.hbm_bytes
