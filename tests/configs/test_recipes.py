"""The recipe configs: each loads, passes every check for the slice it is written for, documents
what it reproduces and what it costs, and builds its model and optimizer; configs with unknown,
missing or mistyped keys are one-line errors before anything is built."""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import flax
import jax
import pytest

from jaxvlm import model_dir, parallel
from jaxvlm.cli import main
from jaxvlm.errors import InputError
from jaxvlm.models.registry import get_architecture
from jaxvlm.train import config as train_config
from jaxvlm.train.program import build

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# recipe: (architecture, chips of the slice it is written for, parameters in millions, frozen ones)
RECIPES = {
    "demo": ("tiny-clip", 1, 3.38, 0),
    "clip_b32": ("ViT-B-32", 64, 151.28, 0),
    "clip_b16": ("ViT-B-16", 64, 149.62, 0),
    "siglip_b16": ("ViT-B-16-SigLIP", 256, 203.16, 0),
    "siglip_so400m": ("ViT-SO400M-14-SigLIP", 256, 877.36, 0),
    "siglip2_so400m16_naflex": ("ViT-SO400M-16-SigLIP2-NaFlex", 64, 1135.67, 0),
    "coca_b32": ("coca_ViT-B-32", 128, 253.56, 0),
    "lit": ("ViT-B-16-SigLIP", 4, 203.16, 92.88),
    "finetune": ("ViT-B-16-quickgelu", 8, 149.62, 0),
    "finetune_mobileclip_s1": ("MobileCLIP-S1", 1, 84.97, 0),
}
PRETRAINED = {"lit", "finetune", "finetune_mobileclip_s1"}  # the recipes that start from a converted model


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[str, Path]:
    """Model directories standing in for the converted checkpoints the PRETRAINED recipes start from:
    config.json alone, which is all that building a program from shapes reads."""
    out = {}
    for name in (RECIPES[recipe][0] for recipe in PRETRAINED):
        arch = get_architecture(name)
        directory = tmp_path_factory.mktemp(name)
        (directory / model_dir.CONFIG_FILE).write_text(
            json.dumps(
                {
                    "format": model_dir.FORMAT,
                    "format_version": model_dir.FORMAT_VERSION,
                    "model": arch.model.to_dict(),
                    "preprocess": arch.preprocess.to_dict(),
                    "tokenizer": arch.tokenizer.to_dict(),
                    "provenance": {},
                }
            )
        )
        out[name] = directory
    return out


def recipe(name: str, pretrained: dict[str, Path]):
    arch = RECIPES[name][0]
    overrides = [f"model.init_from={pretrained[arch]}"] if name in PRETRAINED else []
    return train_config.load(CONFIGS / f"{name}.py", overrides)


def test_every_recipe_file_is_listed():
    assert sorted(p.stem for p in CONFIGS.glob("*.py")) == sorted(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_document_what_they_reproduce_and_cost(name):
    doc = (CONFIGS / f"{name}.py").read_text().split('"""')[1]
    assert "Expected cost" in doc or "Cost:" in doc, name
    assert not re.search(r"\bCOST\b", doc), f"{name}: the cost is not filled in"
    assert "jaxvlm train --config configs/" in doc


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_build_their_model_and_optimizer(name, pretrained):
    """Checked against the chips of the slice each is written for; built on this machine's
    devices (shapes only: nothing is allocated)."""
    arch, chips, millions, frozen = RECIPES[name]
    config = recipe(name, pretrained)
    train_config.check(config, chips)
    config.global_batch_size = 8 * config.microbatches
    config.mesh.fsdp = 1
    mesh = parallel.create_mesh(config.mesh, config.mesh.dcn, devices=jax.devices()[:8])
    program = build(config, mesh, pretrained=False)
    params = program.state.abstract.params
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(params)) / 1e6
    assert count == pytest.approx(millions, abs=0.005), (name, count)
    assert program.spec.config.vision.image_size == get_architecture(arch).model.vision.image_size
    flat = flax.traverse_util.flatten_dict(program.optimizer.trainable, sep="/")
    shapes = flax.traverse_util.flatten_dict(params, sep="/")
    frozen_count = sum(math.prod(shapes[k].shape) for k, keep in flat.items() if not keep) / 1e6
    assert frozen_count == pytest.approx(frozen, abs=0.005), (name, frozen_count)


def write_recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "recipe.py"
    path.write_text(
        "import ml_collections\nfrom jaxvlm.train.config import base_config\n\n\ndef get_config():\n"
        "    c = base_config()\n" + textwrap.indent(textwrap.dedent(body), "    ") + "    return c\n"
    )
    return path


@pytest.mark.parametrize(
    "body, message",
    [
        ("c.optimizer.learning_rate = 1e-4\n", "unknown config key 'optimizer.learning_rate'"),
        ("c.mesh.dcn.slices = 2\n", "unknown config key 'mesh.dcn.slices'"),
        (
            "c.loss = ml_collections.ConfigDict({**c.loss, 'contrastive_weight': 'one'})\n",
            "config key 'loss.contrastive_weight' must be a float, got 'one'",
        ),
        (
            "c.mesh = ml_collections.ConfigDict({**c.mesh, 'data': 2.0})\n",
            "config key 'mesh.data' must be a int, got 2.0",
        ),
        ("c.checkpoint = ml_collections.ConfigDict({'every': 5})\n", "config is missing key 'checkpoint.async_save'"),
        ("c = ml_collections.ConfigDict({**c, 'optimizer': 'adamw'})\n", "config key 'optimizer' must be a section"),
        ("c.data.shuffle_buffer = 10\n", "unknown data config keys ['shuffle_buffer']"),
        ("c.mesh.data = 3\n", "has 3 devices, not 8"),
        ("c.global_batch_size = 12\n", "global_batch_size 12 is not divisible by the 8 batch shards"),
    ],
)
def test_bad_recipes_fail_the_check(tmp_path, body, message):
    config = train_config.load(write_recipe(tmp_path, body))
    with pytest.raises(InputError, match=re.escape(message)):
        train_config.check(config, devices=8)


def test_the_cli_rejects_a_bad_recipe_with_one_line_before_building(tmp_path, capsys):
    path = write_recipe(tmp_path, "c.optimizer.learning_rate = 1e-4\n")
    assert main(["train", "--config", str(path), "--workdir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "jaxvlm: error: unknown config key 'optimizer.learning_rate'\n"
    assert not (tmp_path / "run").exists()
