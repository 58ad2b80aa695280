"""The Colab notebooks run top to bottom on CPU at tiny sizes (JAXVLM_NOTEBOOK_SMOKE=1), and are
committed as a newcomer should receive them: outputs cleared, an "Open in Colab" badge pointing at
the notebook itself, a first cell that installs jaxvlm and says what hardware it found.

In smoke mode the notebooks read small random checkpoints from ``stand_ins/`` instead of
downloading real ones; `stand_ins` writes them here, in the sources' own formats (an HF
CLIPModel directory, an open_clip CoCa state dict), so the notebooks' conversions run for real.
"""

import os
import sys
import time
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.stand_ins import hf_clip_dir, open_clip_coca_state

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "colab").glob("*.ipynb"))
REPO_URL = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
COLAB_URL = "https://colab.research.google.com/github/" + REPO_URL.removeprefix("https://github.com/")
# pictures each notebook must show: a test that passes with no picture drawn would prove little
PICTURES = {"zero_shot": 1, "retrieval": 1, "captioning": 1, "finetune": 3}


def load(path: Path):
    return nbformat.read(path, as_version=4)


def test_every_notebook_is_listed():
    assert {p.stem for p in NOTEBOOKS} == set(PICTURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_clean_with_badge_and_setup(path):
    nb = load(path)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: clear the outputs before committing"
            )
    badge = f"({COLAB_URL}/blob/main/colab/{path.name})"
    assert nb.cells[0].cell_type == "markdown" and "colab-badge.svg" in nb.cells[0].source
    assert badge in nb.cells[0].source, f"{path.name}: the Open in Colab badge must point at {badge}"
    setup = nb.cells[1].source
    assert nb.cells[1].cell_type == "code" and "pip install" in setup and REPO_URL in setup
    assert "JAXVLM_NOTEBOOK_SMOKE" in setup and "jax.devices()" in setup


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Tiny random checkpoints named as the real ones the notebooks download."""
    from safetensors.torch import save_file

    directory = tmp_path_factory.mktemp("stand_ins")
    hf_clip_dir(directory / "clip-vit-base-patch32")
    save_file(open_clip_coca_state(), directory / "coca.safetensors")
    return directory


def kernel_env(cache: Path) -> dict:
    """The notebooks' kernel: smoke mode, one CPU device (not the suite's 8 simulated ones), the
    virtual environment's `jaxvlm` command on PATH, the suite's compilation cache, and ``cache`` as
    the conversion cache."""
    env = dict(os.environ)
    env.update(
        {
            "JAXVLM_NOTEBOOK_SMOKE": "1",
            "JAXVLM_CACHE": str(cache),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "JAX_COMPILATION_CACHE_DIR": str(REPO / ".pytest_cache" / "jax-compilation-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }
    )
    return env


def outputs(nb, kind: str):
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if kind == "image" and "image/png" in output.get("data", {}):
                yield output
            if kind == "text" and output.get("output_type") == "stream":
                yield output["text"]


@pytest.mark.slow
# `make test-latest` runs one notebook against the newest releases
@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.latest) if p.stem == "zero_shot" else p for p in NOTEBOOKS],
    ids=lambda p: p.stem,
)
def test_runs_top_to_bottom(path, stand_ins, tmp_path):
    (tmp_path / "stand_ins").symlink_to(stand_ins)
    nb = load(path)
    start = time.perf_counter()
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute(
        env=kernel_env(tmp_path / "jaxvlm-cache")
    )  # raises CellExecutionError on the first error
    text = "".join(outputs(nb, "text"))
    print(f"\n{path.name}: {time.perf_counter() - start:.1f} s\n{text[-3000:]}")
    # a failed shell command (`!jaxvlm ...`) prints its error without stopping the notebook
    assert "jaxvlm: error" not in text and "Traceback" not in text, text
    assert "found 1 CPU device(s)" in text
    assert len(list(outputs(nb, "image"))) >= PICTURES[path.stem]
