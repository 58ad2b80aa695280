"""`jaxvlm export`'s entry point: the target is checked, a failed export leaves nothing, and
`--push` uploads the folder with huggingface_hub (against the stand-in hub, `tests/hub_server.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxvlm.cli import main
from jaxvlm.errors import InputError
from jaxvlm.export import export
from tests.eval.model_dirs import random_model_dir
from tests.hub_server import HubServer
from tests.paths import REPO

FIXTURE = REPO / "tests" / "fixtures" / "model_dir_265f16b"


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_uploads_the_exported_folder_as_one_commit(tmp_path):
    model = random_model_dir(tmp_path / "tiny-clip", "tiny-clip")
    with HubServer(tmp_path / "repos") as server:
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env |= {"HF_ENDPOINT": server.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_stand_in"}
        out = tmp_path / "exported"
        command = [sys.executable, "-m", "jaxvlm.cli", "export", str(model), str(out), "--to", "hf"]
        done = subprocess.run(
            [*command, "--push", "me/tiny-clip"], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "uploaded it to hf-hub:me/tiny-clip" in done.stdout
        commit = server.commit_of("me/tiny-clip", "main")
        pushed = files(server.root / "me/tiny-clip" / commit)
        print(f"pushed {len(pushed)} files, {sum(map(len, pushed.values()))} bytes: {', '.join(pushed)}")
        assert pushed == files(out) and "config.json" in pushed and "model.safetensors" in pushed


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    for args, message in [
        ([str(FIXTURE), str(out), "--to", "keras"], "invalid choice: 'keras'"),
        ([str(FIXTURE), str(out), "--to", "hf", "--push", "no-slash"], "'no-slash' is not a hub repo name"),
        ([str(tmp_path / "missing"), str(out), "--to", "hf"], "not a jaxvlm model directory"),
    ]:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    with pytest.raises(InputError, match="unknown export target 'tflite'"):
        export(FIXTURE, out, "tflite")
    (out / "x").parent.mkdir()
    (out / "x").write_text("taken")
    with pytest.raises(InputError, match="output exists and is not an empty directory"):
        export(FIXTURE, out, "hf")
