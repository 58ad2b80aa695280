"""OpenAI's ModifiedResNet CLIPs (RN50 ... RN50x64): a tiny perturbed open_clip model (its BatchNorm statistics
perturbed too) saved as an open_clip hub repo, as a state dict and as a traced TorchScript archive (the form of
OpenAI's RN50.pt), converted and compared with open_clip in eval mode; the model directory's round trip with its
statistics; every full-size architecture's keys and shapes against open_clip's."""

import flax
import jax
import numpy as np
import pytest
import torch

from jaxvlm import model_dir, pretrained
from jaxvlm.cli import main
from jaxvlm.convert import common
from jaxvlm.convert import open_clip as open_clip_converter
from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.convert.torchscript import read_torchscript_weights
from jaxvlm.errors import InputError
from jaxvlm.models import TwoTower
from jaxvlm.models.registry import ARCHITECTURES
from jaxvlm.models.towers import ModifiedResNetConfig
from tests.convert.open_clip_models import TOLERANCE, assert_full_size_keys_accounted, compare_with_open_clip, max_abs
from tests.convert.resnet_models import TINY_RESNET_CFG, tiny_resnet_model, tiny_resnet_repo

open_clip = pytest.importorskip("open_clip")

SIZES = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64"]


def flat(tree):
    return flax.traverse_util.flatten_dict(tree, sep="/")


def test_repo_converts_without_model_and_round_trips(tmp_path):
    repo = tiny_resnet_repo(tmp_path / "repo")
    out = tmp_path / "model"
    assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 0
    model = compare_with_open_clip(out, repo, "open_clip ModifiedResNet repo")
    assert model.config.vision == ModifiedResNetConfig(image_size=64, layers=(1, 1, 1, 1), width=16, heads=8)
    assert (out / model_dir.BATCH_STATS_FILE).is_file()

    loaded = model_dir.load(out)
    stats = flat(loaded.batch_stats)
    assert stats and all(k.endswith(("/bn/mean", "/bn/var")) for k in stats)
    assert not any(k.endswith(("/mean", "/var")) for k in flat(loaded.params))
    model_dir.save(tmp_path / "again", loaded, out / loaded.tokenizer.file)
    again = model_dir.load(tmp_path / "again")
    for a, b in ((loaded.params, again.params), (loaded.batch_stats, again.batch_stats)):
        assert flat(a).keys() == flat(b).keys()
        assert all(np.array_equal(flat(a)[k], flat(b)[k]) for k in flat(a))


def _check_against_open_clip(weights, reference, what):
    cfg = converter.model_config_from_open_clip(TINY_RESNET_CFG, "tiny")
    params, stats = open_clip_converter.convert_variables(weights, cfg, what)
    images = np.random.default_rng(0).normal(size=(3, 64, 64, 3)).astype(np.float32)
    ids = open_clip.get_tokenizer("RN50")(["a photo of a cat", "a diagram", ""]).numpy().astype(np.int32)
    out = jax.jit(TwoTower(cfg).apply)({"params": params, "batch_stats": stats}, images, ids)
    with torch.no_grad():
        ref_zi = reference.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True)
        ref_zt = reference.encode_text(torch.from_numpy(ids).long(), normalize=True)
    errors = {"image": max_abs(out.image, ref_zi), "text": max_abs(out.text, ref_zt)}
    print(f"\n{what} vs open_clip (eval mode) max abs error: {errors}")
    assert max(errors.values()) <= TOLERANCE, errors
    return params, stats


def test_state_dict_converts_with_its_statistics(tmp_path):
    reference = tiny_resnet_model()
    torch.save(reference.state_dict(), tmp_path / "weights.bin")
    weights = common.read_weights(tmp_path / "weights.bin")
    assert any(k.endswith("num_batches_tracked") for k in weights)
    _, stats = _check_against_open_clip(weights, reference, "open_clip ModifiedResNet state dict")
    ours = flat(stats)["img/stage2_block0/shortcut/bn/var"]
    assert np.array_equal(ours, reference.state_dict()["visual.layer2.0.downsample.1.running_var"].numpy())


def test_traced_torchscript_converts(tmp_path):
    """OpenAI's RN50.pt files are traced TorchScript archives of this module tree."""
    reference = tiny_resnet_model()
    # one traced method is enough: the archive holds the whole module tree's parameters and buffers
    torch.jit.save(torch.jit.trace_module(reference, {"encode_image": torch.randn(1, 3, 64, 64)}), tmp_path / "RN.pt")
    _check_against_open_clip(read_torchscript_weights(tmp_path / "RN.pt"), reference, "TorchScript ModifiedResNet")


@pytest.mark.parametrize("dropped", ["visual.layer3.0.bn2.running_var", "visual.attnpool.c_proj.bias"])
def test_a_missing_key_is_named(dropped):
    weights = {k: v.numpy() for k, v in tiny_resnet_model().state_dict().items() if k != dropped}
    cfg = converter.model_config_from_open_clip(TINY_RESNET_CFG, "tiny")
    with pytest.raises(InputError, match=dropped):
        open_clip_converter.convert_variables(weights, cfg)


def test_registered_resnets_map_from_open_clips_config():
    for size in SIZES:
        for name in (size, f"{size}-quickgelu"):
            cfg = converter.model_config_from_open_clip(open_clip.get_model_config(name), name)
            assert cfg == ARCHITECTURES[name].model and converter.registered_name(cfg) == name


def test_every_resnet_pair_loads():
    """open_clip's RN pairs (timm/resnet*_clip.* hub repos: open_clip_config.json with open_clip's weights)."""
    pairs = [pair for pair in pretrained.list_pretrained() if pair[0].startswith("RN")]
    entries = [pretrained.get_pretrained(*pair) for pair in pairs]
    assert len(pairs) == 16 and all(e.loads for e in entries)
    assert all(e.hub_repo.startswith("timm/resnet") and e.hub_repo.endswith(f"_clip.{e.tag}") for e in entries)
    assert {e.architecture for e in entries} == {f"{size}-quickgelu" for size in SIZES}


def test_bad_resnet_configs_are_one_line():
    for vision, match in [
        ({"layers": [1, 1, 1]}, "four positive block counts"),
        ({"layers": [1, 0, 1, 1]}, "four positive block counts"),
        ({"image_size": 70}, "not a multiple of 32"),
        ({"head_width": 48}, "not a multiple of head_width"),
    ]:
        bad = {**TINY_RESNET_CFG, "vision_cfg": {**TINY_RESNET_CFG["vision_cfg"], **vision}}
        with pytest.raises(InputError, match=match):
            converter.model_config_from_open_clip(bad, "x")


@pytest.mark.slow
@pytest.mark.parametrize("name", SIZES)
def test_converter_accounts_for_every_key(name, monkeypatch):
    dropped = ["visual.layer4.0.downsample.1.running_mean", "visual.attnpool.positional_embedding"]
    assert_full_size_keys_accounted(name, monkeypatch, dropped)
