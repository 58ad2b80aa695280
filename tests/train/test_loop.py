"""`jaxvlm train` end to end in subprocesses on jaxvlm_digits: exact resume after SIGTERM and
kill -9 at random steps, two processes x four devices with jax.distributed, the exported model
directory, and the evaluation number matching `jaxvlm eval`'s."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import jaxvlm
from jaxvlm.cli import PREEMPTED_EXIT_CODE, main
from jaxvlm.train.metrics import read
from tests.paths import REPO
from tests.train.cli_runs import cli_env, run_cli

STEPS = 12


def train_args(workdir: Path, digits_dir: Path, *extra: str) -> list[str]:
    """A tiny run of the demo config: batch 32, a checkpoint every 3 steps, every step logged."""
    return [
        "train",
        "--config",
        str(REPO / "configs" / "demo.py"),
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={digits_dir}",
        f"--config.total_steps={STEPS}",
        "--config.global_batch_size=32",
        "--config.log_every=1",
        "--config.checkpoint.every=3",
        "--config.optimizer.warmup_steps=4",
        "--config.optimizer.lr=1e-3",
        "--config.eval_every=0",
        *extra,
    ]


def start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jaxvlm.cli", *args],
        env=env or cli_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(workdir: Path, process: subprocess.Popen, step: int, timeout: float = 300) -> int:
    """Blocks until the run has logged ``step`` (returns the last logged step)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = workdir / "metrics.jsonl"
        logged = [line["step"] for line in read(path) if "loss" in line] if path.exists() else []
        if logged and logged[-1] >= step:
            return logged[-1]
        if process.poll() is not None:
            raise AssertionError(f"the run ended before step {step}: {process.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


def weights(workdir: Path) -> dict[str, np.ndarray]:
    return load_file(str(workdir / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_dir):
    """An uninterrupted run, evaluated zero-shot at the end."""
    workdir = tmp_path_factory.mktemp("reference")
    done = run_cli(train_args(workdir, digits_dir), timeout=600)
    assert done.returncode == 0, done.stderr
    return workdir, done.stdout


def test_run_writes_everything_and_reports_the_eval_number(reference, digits_dir, capsys):
    workdir, stdout = reference
    for name in ("metrics.jsonl", "curves.png", "config.json", "checkpoints", "tensorboard", "model"):
        assert (workdir / name).exists(), name
    assert f"model directory  {workdir / 'model'}" in stdout
    lines = read(workdir / "metrics.jsonl")
    assert [line["step"] for line in lines if "loss" in line] == list(range(1, STEPS + 1))
    trained = {k.split("/")[1]: v for k, v in lines[-1].items() if k.startswith("jaxvlm_digits/")}
    assert f"jaxvlm_digits/acc1 {trained['acc1']:.4f}" in stdout
    model = jaxvlm.load(workdir / "model")
    assert model.encode_image(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 32)
    assert (
        main(
            [
                "eval",
                str(workdir / "model"),
                "--task",
                "zeroshot",
                "--dataset",
                "tfds:jaxvlm_digits",
                "--data-dir",
                str(digits_dir),
                "--batch-size",
                "128",
                "--quiet",
            ]
        )
        == 0
    )
    evaluated = json.loads(capsys.readouterr().out)["metrics"]
    print(f"zero-shot after {STEPS} steps: training loop {trained}, jaxvlm eval {evaluated}")
    assert trained["mean_per_class_recall"] > 0.12  # above chance (0.1): not one class for every image
    assert all(evaluated[k] == pytest.approx(v, abs=1e-6) for k, v in trained.items())
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [9, 12]  # keep_last 2 of the demo config


@pytest.mark.slow
def test_exact_resume_after_sigterm_and_kill_9(reference, digits_dir, tmp_path):
    """SIGTERM at a random step (a checkpoint of that step, exit 143), then kill -9 at a later
    random step: the run resumed from its newest checkpoint ends bitwise where the uninterrupted one did."""
    rng = random.Random()
    args = train_args(tmp_path, digits_dir)
    first = start(args)
    at = wait_for_step(tmp_path, first, rng.randint(2, 5))
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == PREEMPTED_EXIT_CODE, err
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] >= at and "run the same command to resume" in err
    second = start(args)
    killed_at = wait_for_step(tmp_path, second, rng.randint(saved[-1] + 1, STEPS - 1))
    second.kill()
    second.communicate()
    done = run_cli(args, timeout=600)
    assert done.returncode == 0, done.stderr
    expected, got = weights(reference[0]), weights(tmp_path)
    differing = [name for name in expected if not np.array_equal(expected[name], got[name])]
    print(
        f"SIGTERM after step {at} (checkpoint {saved[-1]}), kill -9 after step {killed_at}: "
        f"{len(differing)} of {len(expected)} tensors differ"
    )
    assert sorted(got) == sorted(expected) and not differing
    logged = [line["step"] for line in read(tmp_path / "metrics.jsonl") if "loss" in line]
    assert logged == list(range(1, STEPS + 1))  # redone steps replace the interrupted run's lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(digits_dir, tmp_path):
    """2 processes x 4 CPU devices (gloo), the parameters FSDP-split across both, each process a
    slice of a multi-slice mesh, bfloat16 compute with rematerialisation; both resume from the
    shared checkpoint and continue."""

    def run(steps: int) -> list[subprocess.CompletedProcess]:
        port = free_port()
        args = train_args(
            tmp_path,
            digits_dir,
            "--config.mesh.fsdp=2",
            "--config.mesh.dcn.data=2",
            f"--config.total_steps={steps}",
            "--config.eval_specs=()",
            "--config.model.dtype=bfloat16",
            "--config.model.remat=full",
        )
        procs = [
            start(
                [*args, "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                env=cli_env(devices=4),
            )
            for i in range(2)
        ]
        return [(p, *p.communicate(timeout=600)) for p in procs]

    for p, _, err in run(4):
        assert p.returncode == 0, err
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [3, 4]
    for p, _, err in run(6):
        assert p.returncode == 0, err
    logged = [line["step"] for line in read(tmp_path / "metrics.jsonl") if "loss" in line]
    assert logged == [1, 2, 3, 4, 5, 6]  # the second run started at step 5
    assert jaxvlm.load(tmp_path / "model").config.vision.image_size == 32


def test_hooks_run_and_the_nan_guard_stops_the_run(tmp_path):
    """In process: an evaluation hook every 2 steps, then batches that make the loss NaN: each is
    skipped, and the run stops after max_nan_steps of them in a row."""
    import jax.numpy as jnp

    from jaxvlm.train import TrainingError
    from jaxvlm.train.loop import train
    from tests.train.runs import standin_iterator, tiny_config

    config = tiny_config(
        changes={"total_steps": 10, "eval_every": 2, "max_nan_steps": 2, "log_every": 1, "checkpoint.every": 100}
    )
    calls = []

    def hook(step, params):
        calls.append(step)
        return {"probe/t": float(jnp.asarray(params["t"]))}

    def batches():
        for step, batch in enumerate(standin_iterator(config), start=1):
            if step >= 4:
                batch["image"][0, 0, 0, 0] = np.nan
            yield batch

    with pytest.raises(TrainingError, match=r"not finite for 2 steps in a row \(steps 4-5, each skipped\)"):
        train(config, tmp_path, hooks=[hook], iterator=batches())
    assert calls == [2, 4]
    lines = read(tmp_path / "metrics.jsonl")
    assert [line["skipped"] for line in lines if "skipped" in line][:5] == [0, 0, 0, 1, 1]
    assert [line["step"] for line in lines if "probe/t" in line] == [2, 4]
    assert (tmp_path / "curves.png").exists()


@pytest.mark.slow
def test_a_fine_tuned_model_records_what_it_started_from(digits_dir, tmp_path, capsys):
    """init_from a converted checkpoint: the model directory's provenance names that checkpoint's architecture (not
    the config's default model.name) and keeps its provenance, and `jaxvlm eval` reports that name."""
    from jaxvlm import model_dir
    from jaxvlm.train.loop import train
    from tests.train.model_dirs import write_model
    from tests.train.runs import standin_iterator, tiny_config

    converted = {"source": "open_clip", "model": "tiny-clip-quickgelu", "weights": "open_clip_model.safetensors"}
    write_model(tmp_path / "converted", 0, "tiny-clip-quickgelu", provenance=converted)
    config = tiny_config(
        changes={"model.init_from": str(tmp_path / "converted"), "total_steps": 2, "checkpoint.every": 100}
    )
    assert config.model.name == "tiny-clip"
    result = train(config, tmp_path / "run", iterator=standin_iterator(config))
    provenance = model_dir.load(result.model_dir, weights=False).provenance
    assert {k: provenance.get(k) for k in ("source", "model", "init_from", "init_from_provenance")} == {
        "source": "jaxvlm train",
        "model": "tiny-clip-quickgelu",
        "init_from": str(tmp_path / "converted"),
        "init_from_provenance": converted,
    }
    capsys.readouterr()  # the run's progress
    assert (
        main(
            [
                "eval",
                str(result.model_dir),
                "--task",
                "zeroshot",
                "--dataset",
                "tfds:jaxvlm_digits",
                "--split",
                "test[:32]",
                "--data-dir",
                str(digits_dir),
                "--batch-size",
                "32",
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["model"] == "tiny-clip-quickgelu"
