"""The top-level folders `kernels/` and `launch/` are the packages `jaxvlm.kernels` and `jaxvlm.launch`
(through the links `jaxvlm/kernels` and `jaxvlm/launch`), and never the top-level packages `kernels`
(PyPI's, which transformers imports) or `launch` (also on PyPI): not from the repository root, where
`python -c` and `python -m pytest` put the checkout first on sys.path, not from an installed copy,
not from the wheel."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.latest  # `make test-latest` runs these in a regular install
OURS = ("kernels", "launch")

# prints where each name was found: a regular package or module has a file, a namespace package only a path
PROBE = """
import importlib, importlib.metadata, json
found = {}
for name in ["kernels", "launch", "jaxvlm", "jaxvlm.kernels.softmax_loss", "jaxvlm.launch.local"]:
    try:
        module = importlib.import_module(name)
    except ImportError:
        found[name] = None
        continue
    found[name] = {"file": getattr(module, "__file__", None), "path": list(getattr(module, "__path__", []))}
dist = importlib.metadata.distribution("jaxvlm")  # how jaxvlm is installed
found["editable"] = json.loads(dist.read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable", False)
found["site"] = str(dist.locate_file(""))
print(json.dumps(found))
"""


def probe(cwd: Path, pythonpath: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"} | {"PYTHONPATH": pythonpath}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def check(found: dict, jaxvlm_root: Path):
    for name in OURS:
        where = found[name]
        if where is not None:  # absent from PyPI's installs here: then at most our folder as a namespace
            assert where["file"] is None or not Path(where["file"]).resolve().is_relative_to(REPO / name), (
                f"`import {name}` found the repository's {name}/ folder: {where}"
            )
    assert Path(found["jaxvlm"]["file"]).parent == jaxvlm_root
    assert Path(found["jaxvlm.kernels.softmax_loss"]["file"]).parent == jaxvlm_root / "kernels"
    assert Path(found["jaxvlm.launch.local"]["file"]).parent == jaxvlm_root / "launch"


def test_transformers_needs_pypi_kernels():
    """What broke main: transformers imports PyPI's `kernels` package."""
    pytest.importorskip("kernels")
    found = probe(REPO)["kernels"]
    assert found["file"] and "site-packages" in found["file"], found


def test_from_the_repository_root():
    """Here the checkout's jaxvlm comes first, whatever the install mode, and must be whole."""
    check(probe(REPO), REPO / "jaxvlm")


def test_from_elsewhere_the_installed_package(tmp_path):
    """The editable install maps jaxvlm to the checkout; a regular one copies it to site-packages.
    (This process's own jaxvlm is the checkout's either way: pytest puts the repository first.)"""
    found = probe(tmp_path)
    check(found, REPO / "jaxvlm" if found["editable"] else Path(found["site"]) / "jaxvlm")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("jaxvlm-*.whl")
    return path


def test_wheel_holds_the_folders_inside_jaxvlm(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {name.split("/")[0] for name in names}
    assert not tops & set(OURS), tops
    for folder in OURS:
        sources = {f"jaxvlm/{folder}/{p.name}" for p in (REPO / folder).glob("*.py")}
        assert sources and sources <= names, sources - names
    # every module of the package itself (a sub-package missing from pyproject's list is left out silently)
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "jaxvlm").rglob("*.py")}
    assert modules <= names, sorted(modules - names)


def test_from_the_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    check(probe(tmp_path, pythonpath=str(site)), site / "jaxvlm")
