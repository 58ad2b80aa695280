"""Docs that cannot rot: every code block of README.md, docs/*.md and launch/*.md is run or checked.

A `bash`, `sh`, `console` or `python` block must be preceded by a comment saying how it is
checked (docs/index.md explains them to writers):

    <!-- doc-test: run -->                     run as written
    <!-- doc-test: substitute: WHY -->         run after SUBSTITUTIONS (real names and sizes -> stand-ins')
    <!-- doc-test: parse-only: WHY -->         checked without running (see `check_parse_only`)

A page's blocks run in order in one scratch directory, so later blocks see what earlier ones
wrote. The directory holds the stand-ins of `world`: tiny random checkpoints in each source's
format under the names real ones have, photos, the digits dataset (also TFDS_DATA_DIR), and the
repository's configs — except any path a page's own commands create. `json` blocks must parse;
`text` blocks are prose; a block without a language is an error.
"""

import ast
import dataclasses
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "launch").glob("*.md"))]
CODE = {"bash", "sh", "console", "python"}
BLOCK_TIMEOUT_S = 300
HOW = ("run", "substitute", "parse-only")

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<how>[\w-]+)\s*(?::(?P<why>.*?))?\s*-->\s*$")

# real checkpoint names and sizes -> the stand-ins' ("{port}": a free port, chosen per run)
SUBSTITUTIONS = [
    (r"--model ViT-B-32\b", "--model tiny-clip"),
    (r"--model coca_ViT-B-32\b", "--model tiny-coca"),
    (r"\btfds:(cifar10|coco_captions)\b", "tfds:jaxvlm_digits"),
    (r"(?<![\w./])/data/", "data/"),
    (r"\{00000\.\.00999\}", "{00000..00001}"),
    (r"(--task captioning\s+--dataset \S+)", r"\1 --split test[:8]"),
    (r"--train-split train\b", "--train-split 'train[:300]'"),
    (r"--config.global_batch_size=512\b", "--config.global_batch_size=64"),
    (r'"total_steps=\d+"', '"total_steps=2", "optimizer.warmup_steps=1"'),
    (r"--config.total_steps=\d+", "--config.total_steps=2"),
    (r"(jaxvlm train --config \S+)", r"\1 --config.total_steps=2 --config.optimizer.warmup_steps=1"),
    (r"127\.0\.0\.1:12355", "127.0.0.1:{port}"),
    (r"(jaxvlm launch tpu [a-z]+)", r"\1 --dry-run"),  # the Cloud TPU launcher prints its gcloud commands
]
# python blocks importing these get tests/conftest.py's fix for this machine's CPU torch next to
# the PyPI torchvision, as the suite's own process does
TORCH_IMPORTS = re.compile(r"^\s*(from|import)\s+(torch|torchvision|open_clip|clip_benchmark|transformers)\b", re.M)


@dataclasses.dataclass
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    how: str | None  # the marker's treatment, None without a marker
    why: str

    @property
    def where(self) -> str:
        shown = self.document.relative_to(REPO) if self.document.is_relative_to(REPO) else self.document
        return f"{shown}:{self.line}"


def read_blocks(document: Path) -> list[Block]:
    lines = document.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        end = next(
            (
                j
                for j in range(i + 1, len(lines))
                if lines[j].strip().startswith(fence) and not lines[j].strip()[len(fence) :].strip()
            ),
            len(lines),
        )
        body = "\n".join(
            line[indent:] if line[:indent].isspace() or not indent else line.lstrip() for line in lines[i + 1 : end]
        )
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        blocks.append(
            Block(
                document,
                i + 1,
                opening["lang"].lower(),
                body + "\n",
                marker and marker["how"],
                (marker and marker["why"] or "").strip(),
            )
        )
        i = end + 1
    return blocks


def doc_id(path: Path) -> str:
    return str(path.relative_to(REPO))


# ---------------------------------------------------------------- every block says how it is checked


def marking_problems(document: Path) -> list[str]:
    problems = []
    blocks = read_blocks(document)
    for block in blocks:
        if not block.language:
            problems.append(f"{block.where}: a fenced block needs a language (bash, python, json, text, ...)")
        elif block.language in CODE and block.how is None:
            problems.append(
                f"{block.where}: a {block.language} block needs a comment just before it saying how the "
                "test checks it: <!-- doc-test: run -->, <!-- doc-test: substitute: WHY --> or "
                "<!-- doc-test: parse-only: WHY --> (docs/index.md)"
            )
        elif block.how is not None and (block.language not in CODE or block.how not in HOW):
            problems.append(
                f"{block.where}: doc-test '{block.how}' on a {block.language} block: the treatments are "
                f"{', '.join(HOW)}, for {', '.join(sorted(CODE))} blocks"
            )
        elif block.how in ("substitute", "parse-only") and not block.why:
            problems.append(f"{block.where}: say why: <!-- doc-test: {block.how}: WHY -->")
        elif block.how == "substitute" and substituted(block.text, 0) == block.text:
            problems.append(f"{block.where}: no substitution applies: mark it run")
    markers = sum(bool(MARKER.match(line)) for line in document.read_text().splitlines())
    if markers != sum(b.how is not None for b in blocks):
        problems.append(f"{document.name}: a doc-test comment is not directly before a code block")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=doc_id)
def test_every_code_block_says_how_it_is_checked(document):
    problems = marking_problems(document)
    assert not problems, "\n".join(problems)


def test_unmarked_and_badly_marked_blocks_are_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "\n".join(
            [
                "```bash",
                "jaxvlm list",
                "```",  # no marker
                "<!-- doc-test: parse-only -->",
                "```python",
                "x = 1",
                "```",  # no reason
                "<!-- doc-test: substitute: sizes -->",
                "```bash",
                "jaxvlm list",
                "```",  # nothing to substitute
                "<!-- doc-test: run -->",
                "```json",
                "{}",
                "```",  # marker on data
                "```",
                "plain",
                "```",  # no language
                "<!-- doc-test: run -->",
                "",
                "text between",
                "```text",
                "out",
                "```",  # dangling marker
                "<!-- doc-test: run -->",
                "  ```python",
                "  import os",
                "  ```",  # fine, indented
            ]
        )
    )
    problems = marking_problems(page)
    print("\n".join(problems))
    for line, words in [
        (1, "needs a comment"),
        (5, "say why"),
        (9, "no substitution"),
        (13, "doc-test 'run' on a json"),
        (16, "needs a language"),
    ]:
        assert any(p.startswith(f"{page}:{line}:") and words in p for p in problems), (line, words)
    assert problems[-1].endswith("a doc-test comment is not directly before a code block") and len(problems) == 6
    assert read_blocks(page)[-1].text == "import os\n"


@pytest.mark.parametrize("document", DOCUMENTS, ids=doc_id)
def test_json_blocks_parse(document):
    for block in read_blocks(document):
        if block.language == "json":
            json.loads(block.text)


def substituted(text: str, port: int) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text)
    return text.replace("{port}", str(port))


# ---------------------------------------------------------------- shell commands


def commands(script: str, language: str) -> list[list[str]]:
    """The simple commands of a shell block, as tokens (a console block's are its `$ ` lines)."""
    if language == "console":
        script = "\n".join(line[2:] for line in script.splitlines() if line.startswith("$ "))
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        current = []
        for token in shlex.split(line, comments=True) + [";"]:
            ends = token in ("&", "&&", "||", "|") or token.endswith(";")
            word = token.removesuffix(";") if token.endswith(";") else None if ends else token
            if word:
                current.append(word)
            if ends and current:
                out.append(current)
                current = []
    return out


def without_environment(tokens: list[str]) -> list[str]:
    """Drops leading VAR=value assignments."""
    i = 0
    while i < len(tokens) and re.fullmatch(r"[A-Za-z_]\w*=.*", tokens[i]):
        i += 1
    return tokens[i:]


def jaxvlm_args(tokens: list[str]):
    """(parsed arguments, config overrides) of a `jaxvlm ...` command, with jaxvlm's own parser
    (a shell variable stands for 0). Commands taking `--config FILE` (train, and whatever else runs a
    training config) take `--config.KEY=VALUE` overrides too."""
    from jaxvlm.cli import _config_overrides, build_parser

    tokens = [re.sub(r"\$(\w+|\{[^}]*\})", "0", token) for token in tokens]
    args, extra = build_parser().parse_known_args(tokens[1:])
    takes_config = getattr(args, "config", None) is not None
    assert takes_config or not extra, f"unrecognised arguments: {extra}"
    return args, _config_overrides(extra) if takes_config else []


def created_paths(blocks: list[Block]) -> set[str]:
    """What a page's `jaxvlm` commands write (model directories, work directories, outputs)."""
    created = set()
    for block in blocks:
        if block.language not in ("bash", "sh", "console") or block.how == "parse-only":
            continue
        for tokens in commands(substituted(block.text, 0), block.language):
            tokens = without_environment(tokens)
            if tokens and tokens[0] == "jaxvlm":
                args, _ = jaxvlm_args(tokens)
                created.update(
                    str(getattr(args, name))
                    for name in ("out", "workdir", "plots")
                    if getattr(args, name, None) is not None
                )
    return created


# ---------------------------------------------------------------- parse-only checks


def check_parse_only(block: Block) -> None:
    if block.language == "python":
        check_python(block.text, block.where)
        return
    for tokens in commands(block.text, block.language):
        tokens = without_environment(tokens)
        assert tokens and tokens[0] in PARSE_CHECKS, (
            f"{block.where}: no parse-only check for `{' '.join(tokens)}`: add one to tests/test_docs.py"
        )
        PARSE_CHECKS[tokens[0]](tokens)


def check_python(text: str, where: str) -> None:
    """Compiles, and every imported module exists (benchmarks/harness.py counts: benchmark scripts,
    which the performance page shows, import it from their own directory)."""
    tree = ast.parse(text, where)
    compile(tree, where, "exec")
    for node in ast.walk(tree):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.module
            else []
        )
        for name in names:
            found = importlib.util.find_spec(name) is not None or (REPO / "benchmarks" / f"{name}.py").is_file()
            assert found, f"{where}: no module {name}"


def check_jaxvlm(tokens: list[str]) -> None:
    args, overrides = jaxvlm_args(tokens)
    if getattr(args, "config", None) is not None:  # the config file and every override, as `jaxvlm train` checks them
        from jaxvlm.train import config as train_config

        train_config.load(REPO / args.config, overrides)


def check_make(tokens: list[str]) -> None:
    subprocess.run(["make", "-n", "-C", str(REPO), *tokens[1:]], check=True, capture_output=True)


def check_pip(tokens: list[str]) -> None:
    from packaging.requirements import Requirement

    assert tokens[1] == "install", tokens
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in (t for t in tokens[2:] if not t.startswith("-")):
        if spec.startswith("."):
            extras = set(re.findall(r"[\w-]+", spec.partition("[")[2]))
        else:
            requirement = Requirement(spec)
            assert requirement.name == project["name"] and requirement.url == f"git+{project['urls']['Repository']}"
            extras = requirement.extras
        assert extras <= set(project["optional-dependencies"]), f"no such extras: {extras}"


@functools.cache
def hf_download_help() -> str:
    return subprocess.run(
        [str(Path(sys.executable).parent / "hf"), "download", "--help"], check=True, capture_output=True, text=True
    ).stdout


def check_hf(tokens: list[str]) -> None:
    assert tokens[1] == "download", tokens
    for option in (t.partition("=")[0] for t in tokens[2:] if t.startswith("--")):
        assert option in hf_download_help(), f"hf download has no option {option}"


def check_python_command(tokens: list[str]) -> None:
    if tokens[1] == "-c":
        check_python(tokens[2], "python -c")
    else:
        assert (REPO / tokens[1]).is_file(), f"no script {tokens[1]}"


PARSE_CHECKS = {
    "jaxvlm": check_jaxvlm,
    "make": check_make,
    "pip": check_pip,
    "hf": check_hf,
    "python": check_python_command,
}


# ---------------------------------------------------------------- the stand-ins and running


@pytest.fixture(scope="module")
def world(tmp_path_factory, spm_model_file):
    """{path in a page's scratch directory: the stand-in it links to}."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from skimage import data

    from jaxvlm.data.builders import build_digits
    from jaxvlm.data.tar import write_tar_shard
    from tests.convert.big_vision_models import SMALL, hf_siglip, to_big_vision, write_npz
    from tests.convert.open_clip_models import tiny_open_clip_state
    from tests.data.records import tar_records
    from tests.eval.model_dirs import random_model_dir
    from tests.stand_ins import hf_clip_dir, open_clip_coca_state

    root = tmp_path_factory.mktemp("world")
    build_digits(root / "tfds")
    (root / "coca").mkdir()
    torch.save(open_clip_coca_state(), root / "coca" / "open_clip_pytorch_model.bin")
    save_file(tiny_open_clip_state(), root / "open_clip_model.safetensors")
    write_npz(root / "webli.npz", to_big_vision(hf_siglip(SMALL), stacked=False))
    (root / "laion").mkdir()
    for shard in range(2):
        write_tar_shard(root / "laion" / f"{shard:05d}.tar", tar_records(8, start=8 * shard))
    (root / "pets").mkdir()
    for name in ["chelsea", "coffee", "astronaut"]:
        Image.fromarray(getattr(data, name)()).save(root / "pets" / f"{name}.jpg")
    (root / "pets" / "captions.jsonl").write_text(
        "".join(
            json.dumps({"image": f"{name}.jpg", "caption": f"a photo: {name}", "label": i}) + "\n"
            for i, name in enumerate(["chelsea", "coffee", "astronaut"])
        )
    )
    for name, photo in [("cat.jpg", data.chelsea), ("a.jpg", data.astronaut), ("b.jpg", data.coffee)]:
        Image.fromarray(photo()).save(root / name)
    for name, architecture, seed in [
        ("tiny-clip", "tiny-clip", 0),
        ("tiny-clip-1", "tiny-clip", 1),
        ("tiny-coca", "tiny-coca", 0),
    ]:
        random_model_dir(root / name, architecture, seed)
    venv = root / "venv"  # `make`'s .venv: its activate script puts this test's environment on PATH
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    return {
        "configs": REPO / "configs",
        ".venv": venv,
        "out/demo/model": root / "tiny-clip",
        "cat.jpg": root / "cat.jpg",
        "a.jpg": root / "a.jpg",
        "b.jpg": root / "b.jpg",
        "data/tfds": root / "tfds",
        "out/tfds": root / "tfds",
        "data/laion": root / "laion",
        "data/pets": root / "pets",
        "clip-vit-base-patch32": hf_clip_dir(root / "clip-vit-base-patch32"),
        "coca/open_clip_pytorch_model.bin": root / "coca" / "open_clip_pytorch_model.bin",
        "open_clip_model.safetensors": root / "open_clip_model.safetensors",
        "webli_en_b16_224_63724782.npz": root / "webli.npz",
        "c4_en.model": spm_model_file,
        "models/vit-b-32": root / "tiny-clip",
        "models/tiny-clip": root / "tiny-clip",
        "models/zero-shot": root / "tiny-clip",
        "out/finetune/model": root / "tiny-clip-1",
        "models/coca": root / "tiny-coca",
        "models/coca-b-32": root / "tiny-coca",
    }


def block_env(directory: Path) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
            "TFDS_DATA_DIR": str(directory / "data" / "tfds"),
            "JAX_COMPILATION_CACHE_DIR": str(REPO / ".pytest_cache" / "jax-compilation-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_block(block: Block, directory: Path) -> None:
    text = substituted(block.text, free_port()) if block.how == "substitute" else block.text
    if block.language == "python":
        if TORCH_IMPORTS.search(text):
            text = f"import sys; sys.path.insert(0, {str(REPO)!r}); import tests.conftest  # torchvision\n{text}"
        script = directory / f"block_{block.line}.py"
        script.write_text(text)
        argv = [sys.executable, str(script)]
    else:
        if block.language == "console":
            text = "\n".join(line[2:] for line in text.splitlines() if line.startswith("$ "))
        argv = ["bash", "-e", "-o", "pipefail", "-c", text]
    start = time.perf_counter()
    # a session of its own, so that a block running over its time is stopped with its background jobs
    with subprocess.Popen(
        argv,
        cwd=directory,
        env=block_env(directory),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
    print(f"{block.where} ({block.how}, {time.perf_counter() - start:.1f} s)\n{stdout[-1500:]}")
    assert process.returncode == 0, (
        f"{block.where} failed (exit {process.returncode}"
        f"{f', killed after {BLOCK_TIMEOUT_S} s' if process.returncode == -9 else ''}"
        f"):\n{text}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"
    )


def documents_with_code() -> list[Path]:
    return [d for d in DOCUMENTS if any(b.language in CODE for b in read_blocks(d))]


@pytest.mark.slow
@pytest.mark.parametrize("document", documents_with_code(), ids=doc_id)
def test_document_runs(document, world, tmp_path):
    blocks = [b for b in read_blocks(document) if b.language in CODE and b.how in HOW]
    created = created_paths(blocks)
    for name, target in world.items():
        if not any(name == c or name.startswith(c.rstrip("/") + "/") for c in created):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).symlink_to(target)
    for block in blocks:
        if block.how == "parse-only":
            check_parse_only(block)
        else:
            run_block(block, tmp_path)
    shutil.rmtree(tmp_path, ignore_errors=True)
