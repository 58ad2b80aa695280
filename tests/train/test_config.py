"""Config files, command-line overrides and the checks made before anything compiles."""

from __future__ import annotations

import pytest

from jaxvlm.cli import main
from jaxvlm.errors import InputError
from jaxvlm.train import config as train_config
from tests.paths import REPO
from tests.train.model_dirs import write_model

DEMO = REPO / "configs" / "demo.py"
FINETUNE = REPO / "configs" / "finetune.py"


def test_overrides_are_parsed_as_the_fields_types():
    c = train_config.load(
        DEMO,
        [
            "total_steps=7",
            "optimizer.lr=3e-4",
            "model.name=tiny-siglip",
            "checkpoint.async_save=false",
            "optimizer.lr_rules=(('txt/.*', 0.5),)",
            "data.data_dir=/tmp/somewhere",
            "mesh.dcn.data=2",
        ],
    )
    assert (c.total_steps, c.optimizer.lr, c.model.name) == (7, 3e-4, "tiny-siglip")
    assert c.checkpoint.async_save is False and c.optimizer.lr_rules == (("txt/.*", 0.5),)
    assert c.data.data_dir == "/tmp/somewhere" and c.mesh.dcn.data == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lrr=1", "unknown config key 'optimizer.lrr'"),
        ("nothing=1", "unknown config key 'nothing'"),
        ("total_steps=ten", "config key 'total_steps' is a int; cannot use 'ten'"),
        ("optimizer.lr=fast", "config key 'optimizer.lr' is a float"),
        ("checkpoint.async_save=maybe", "config key 'checkpoint.async_save' is a bool"),
        ("total_steps", "must look like key=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(InputError, match=message):
        train_config.load(DEMO, [override])


def test_bad_config_files(tmp_path):
    with pytest.raises(InputError, match="no such config file"):
        train_config.load(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text(
        "from jaxvlm.train.config import base_config\n\ndef get_config():\n"
        "    c = base_config()\n    c.lock()\n    c.optimiser = 1\n    return c\n"
    )
    with pytest.raises(InputError, match=r"broken.py: AttributeError"):
        train_config.load(broken)


@pytest.mark.parametrize(
    "override, message",
    [
        ("mesh.data=3", r"has 3 devices, not 8"),
        ("mesh.fsdp=3", r"does not divide 8 devices"),
        ("global_batch_size=100", "global_batch_size 100 is not divisible by the 8 batch shards"),
        ("microbatches=3", "times 3 microbatches"),
        ("total_steps=0", "total_steps must be >= 1"),
        ("checkpoint.keep_last=0", "checkpoint.keep_last must be >= 1"),
        ("loss.implementation=cuda", "loss.implementation is 'cuda'"),
        ("mesh.dcn.data=3", "does not divide 8 devices"),
    ],
)
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


@pytest.mark.parametrize(
    "eval_specs, words",
    [
        (None, ["eval_specs[0] (zeroshot on tfds:cifar100)", "TFDS dataset 'cifar100' is not built"]),
        (
            "({'task': 'zeroshot', 'dataset': 'tfds:jaxvlm_digitz'},)",
            ["eval_specs[0] (zeroshot on tfds:jaxvlm_digitz)", "unknown TFDS dataset 'jaxvlm_digitz'"],
        ),
        (
            "({'task': 'zeroshot', 'dataset': 'tfds:jaxvlm_digits'}, "
            "{'task': 'zeroshot', 'dataset': 'tfds:jaxvlm_digits', 'split': 'validation'})",
            ["eval_specs[1] (zeroshot on tfds:jaxvlm_digits)", "split 'validation'"],
        ),
        (
            "({'task': 'linear_probe', 'dataset': 'tfds:jaxvlm_digits', 'val_split': 'valid'},)",
            ["eval_specs[0]", "split 'valid'"],
        ),
        (
            "({'task': 'retrieval', 'dataset': 'tfds:jaxvlm_digits?text_key=nothing'},)",
            ["eval_specs[0]", "no captions"],
        ),
        (
            "({'task': 'zeroshot', 'dataset': 'tfds:jaxvlm_digits', 'prompts': 'cifar10'},)",
            ["eval_specs[0]", "cifar10"],
        ),
    ],
)
def test_bad_eval_specs_fail_before_training(eval_specs, words, digits_dir, tmp_path, capsys):
    """configs/finetune.py (its eval dataset, CIFAR-100, is not built here) and misspelt datasets, unknown
    splits, data lacking what the task needs: one error line before anything is compiled or written."""
    write_model(tmp_path / "zero_shot", 0)
    workdir = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(FINETUNE),
        "--workdir",
        str(workdir),
        f"--config.model.init_from={tmp_path / 'zero_shot'}",
        f"--config.data.data_dir={digits_dir}",
        "--config.data.source=tfds:jaxvlm_digits",
        "--config.data.worker_count=0",
        "--config.global_batch_size=16",
        "--config.total_steps=2",
        "--config.optimizer.warmup_steps=1",
    ]
    if eval_specs is not None:
        args.append(f"--config.eval_specs={eval_specs}")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxvlm: error: ") and err.count("\n") == 1, err
    assert all(word in err for word in words), err
    assert not workdir.exists()


def test_good_eval_specs_pass_the_check(digits_dir):
    config = train_config.load(
        DEMO,
        [
            f"data.data_dir={digits_dir}",
            "eval_specs=({'task': 'linear_probe', 'dataset': 'tfds:jaxvlm_digits', 'val_split': 'test'},)",
        ],
    )
    train_config.check_eval_specs(config)
    train_config.check_eval_specs(train_config.load(DEMO, [f"data.data_dir={digits_dir}"]))
