"""Config files, command-line overrides and the checks made before anything compiles."""

from __future__ import annotations

import pytest

from jaxvlm.cli import main
from jaxvlm.errors import InputError
from jaxvlm.train import config as train_config

from tests.train.conftest import REPO

DEMO = REPO / "configs" / "demo.py"


def test_overrides_are_parsed_as_the_fields_types():
    c = train_config.load(DEMO, ["total_steps=7", "optimizer.lr=3e-4", "model.name=tiny-siglip",
                                 "checkpoint.async_save=false", "optimizer.lr_rules=(('txt/.*', 0.5),)",
                                 "data.data_dir=/tmp/somewhere", "mesh.dcn.data=2"])
    assert (c.total_steps, c.optimizer.lr, c.model.name) == (7, 3e-4, "tiny-siglip")
    assert c.checkpoint.async_save is False and c.optimizer.lr_rules == (("txt/.*", 0.5),)
    assert c.data.data_dir == "/tmp/somewhere" and c.mesh.dcn.data == 2


@pytest.mark.parametrize("override, message", [
    ("optimizer.lrr=1", "unknown config key 'optimizer.lrr'"),
    ("nothing=1", "unknown config key 'nothing'"),
    ("total_steps=ten", "config key 'total_steps' is a int; cannot use 'ten'"),
    ("optimizer.lr=fast", "config key 'optimizer.lr' is a float"),
    ("checkpoint.async_save=maybe", "config key 'checkpoint.async_save' is a bool"),
    ("total_steps", "must look like key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(InputError, match=message):
        train_config.load(DEMO, [override])


def test_bad_config_files(tmp_path):
    with pytest.raises(InputError, match="no such config file"):
        train_config.load(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("from jaxvlm.train.config import base_config\n\ndef get_config():\n"
                      "    c = base_config()\n    c.lock()\n    c.optimiser = 1\n    return c\n")
    with pytest.raises(InputError, match=r"broken.py: AttributeError"):
        train_config.load(broken)


@pytest.mark.parametrize("override, message", [
    ("mesh.data=3", r"has 3 devices, not 8"),
    ("mesh.fsdp=3", r"does not divide 8 devices"),
    ("global_batch_size=100", "global_batch_size 100 is not divisible by the 8 batch shards"),
    ("microbatches=3", "times 3 microbatches"),
    ("total_steps=0", "total_steps must be >= 1"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last must be >= 1"),
    ("loss.implementation=cuda", "loss.implementation is 'cuda'"),
    ("mesh.dcn.data=3", "does not divide 8 devices"),
])
def test_impossible_configs_fail_the_check(override, message):
    with pytest.raises(InputError, match=message):
        train_config.check(train_config.load(DEMO, [override]), devices=8)


def test_cli_rejects_bad_configs_with_one_line(tmp_path, capsys):
    code = main(["train", "--config", str(DEMO), "--workdir", str(tmp_path), "--config.optimizer.lrr=1"])
    err = capsys.readouterr().err
    assert code == 2 and err == "jaxvlm: error: unknown config key 'optimizer.lrr'\n"
    assert main(["train", "--config", str(DEMO), "--workdir", str(tmp_path), "--batch=3"]) == 2
    assert "unrecognized argument: --batch=3" in capsys.readouterr().err
    assert main(["train", "--config", str(DEMO), "--workdir", str(tmp_path), "--config.model.name=tiny-kitten"]) == 2
    assert "unknown model 'tiny-kitten'" in capsys.readouterr().err
    assert main(["train", "--config", str(DEMO), "--workdir", str(tmp_path), "--config.model.name=tiny-siglip"]) == 2
    assert "the model needs its tokenizer file 'tokenizer.model'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was started
