"""`jaxvlm launch tpu --dry-run`: the gcloud commands of every action, for one slice and for a
multi-slice queued resource, against the command lines written out here; the config check before
anything runs; and, where gcloud is installed, gcloud itself parsing every command line."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile

import pytest

from jaxvlm.cli import main
from jaxvlm.launch import tpu
from tests.paths import REPO

TMP = tempfile.gettempdir()
INSTALL = (
    "rm -rf jaxvlm && mkdir -p jaxvlm && tar -xzf jaxvlm-src.tar.gz -C jaxvlm && cd jaxvlm && "
    "python3 -m pip install -q --user uv && ~/.local/bin/uv venv -q --python 3.11 .venv && "
    "~/.local/bin/uv pip install -q --python .venv/bin/python -e '.[tpu]'"
)
START = (
    "cd jaxvlm && mkdir -p logs && (nohup .venv/bin/jaxvlm train --config configs/demo.py --workdir "
    "/mnt/runs/demo --multihost --config.global_batch_size=512 > logs/train.log 2>&1 < /dev/null & "
    "echo $! > logs/train.pid)"
)
TAIL = "tail --pid=$(cat jaxvlm/logs/train.pid) -n +1 -F jaxvlm/logs/train.log"


def dry_run(capsys, *args: str) -> list[list[str]]:
    """The commands `jaxvlm launch tpu ... --dry-run` prints, each split as a shell would."""
    assert main(["launch", "tpu", *args, "--source", str(REPO), "--dry-run"]) == 0, capsys.readouterr().err
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]


def test_one_slice_run_creates_installs_trains_streams_and_deletes(capsys):
    commands = dry_run(
        capsys,
        "run",
        "pod",
        "--zone=us-east5-a",
        "--project=lab",
        "--slice=v5p-128",
        f"--config={REPO / 'configs' / 'demo.py'}",
        "--workdir=/mnt/runs/demo",
        "--delete-after",
        "--config.global_batch_size=512",
    )
    where = ["--zone=us-east5-a", "--project=lab"]
    tpus = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert commands == [
        [*tpus, "create", "pod", *where, "--accelerator-type=v5p-128", "--version=v2-alpha-tpuv5"],
        [*tpus, "scp", f"{TMP}/jaxvlm-pod.tar.gz", "pod:jaxvlm-src.tar.gz", *where, "--worker=all"],
        [*tpus, "ssh", "pod", *where, "--worker=all", f"--command={INSTALL}"],
        [*tpus, "ssh", "pod", *where, "--worker=all", f"--command={START}"],
        [*tpus, "ssh", "pod", *where, "--worker=0", f"--command={TAIL}"],
        [*tpus, "delete", "pod", *where, "--quiet"],
    ]


def test_multislice_uses_one_queued_resource_and_every_node(capsys):
    common = ["ms", "--zone=us-central2-b", "--slice=v5e-256", "--num-slices=2"]
    queued = ["gcloud", "compute", "tpus", "queued-resources"]
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
    assert dry_run(capsys, "create", *common, "--spot") == [
        [
            *queued,
            "create",
            "ms",
            "--zone=us-central2-b",
            "--accelerator-type=v5litepod-256",
            "--runtime-version=v2-alpha-tpuv5-lite",
            "--node-count=2",
            "--node-prefix=ms",
            "--spot",
        ],
        [*queued, "describe", "ms", "--zone=us-central2-b", "--format=value(state.state)"],
    ]
    assert dry_run(
        capsys,
        "train",
        *common,
        f"--config={REPO / 'configs' / 'demo.py'}",
        "--workdir=/mnt/runs/demo",
        "--config.global_batch_size=512",
        "--config.mesh.dcn.data=2",
        "--detach",
    ) == [
        [
            *ssh,
            node,
            "--zone=us-central2-b",
            "--worker=all",
            f"--command={START.replace('=512', '=512 --config.mesh.dcn.data=2')}",
        ]
        for node in ("ms-0", "ms-1")
    ]
    assert dry_run(capsys, "stop", *common) == [
        [*ssh, node, "--zone=us-central2-b", "--worker=all", "--command=kill $(cat jaxvlm/logs/train.pid)"]
        for node in ("ms-0", "ms-1")
    ]
    assert dry_run(capsys, "delete", *common) == [
        [*queued, "delete", "ms", "--zone=us-central2-b", "--force", "--quiet"]
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.global_batch_size=100"], "global_batch_size 100 is not divisible by the 64 batch shards"),
        (["--config.optimizer.lrr=1"], "unknown config key 'optimizer.lrr'"),
        (["--workdir=gs://bucket/run"], "mount the bucket on every worker"),
        (["--slice=v5p-100"], "v5p-N counts TensorCores"),
    ],
)
def test_train_checks_before_anything_runs(capsys, extra, message):
    args = [
        "launch",
        "tpu",
        "train",
        "pod",
        "--zone=z",
        "--slice=v5p-128",
        f"--config={REPO / 'configs' / 'demo.py'}",
        "--workdir=/mnt/run",
        "--source",
        str(REPO),
        "--dry-run",
        *extra,
    ]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and err.count("\n") == 1, err


def test_the_packed_files_are_those_git_knows():
    files = tpu.project_files(REPO)
    assert "pyproject.toml" in files and "launch/tpu.py" in files and "configs/demo.py" in files
    assert not any(name.startswith((".venv/", ".git/")) or "__pycache__" in name for name in files)


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")
def test_gcloud_parses_every_kind_of_command(capsys, tmp_path):
    """gcloud, with an empty configuration (no account), parses each kind of command line and
    stops only for want of credentials (exit 1); a flag it does not know would be exit 2."""
    config = f"--config={REPO / 'configs' / 'demo.py'}"
    commands = (
        dry_run(
            capsys,
            "run",
            "pod",
            "--zone=us-east5-a",
            "--project=lab",
            "--slice=v4-8",
            config,
            "--workdir=/mnt/runs/demo",
            "--delete-after",
            "--spot",
        )
        + dry_run(capsys, "create", "ms", "--zone=us-east5-a", "--project=lab", "--slice=v5p-16", "--num-slices=2")
        + dry_run(capsys, "delete", "ms", "--zone=us-east5-a", "--project=lab", "--num-slices=2")
    )
    kinds = {tuple(argv[3:5]): argv for argv in commands}  # one ssh: the others differ only in --command
    assert len(kinds) == 7
    env = {"CLOUDSDK_CONFIG": str(tmp_path), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1", "PATH": "/usr/bin:/bin"}
    for argv in kinds.values():
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "active account" in done.stderr, (argv, done.stderr)
