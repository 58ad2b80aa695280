"""`jaxvlm.load("hf-hub:ORG/NAME[@REVISION]")` with the real huggingface_hub client against a
stand-in hub on 127.0.0.1 (`tests/hub_server.py`), in subprocesses that, as a user's would, take
HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE / JAXVLM_CACHE from their environment."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxvlm
import jaxvlm.cli
from tests.hub_server import HubServer
from tests.paths import REPO

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

FIXTURE = Path(__file__).parent / "fixtures" / "model_dir_265f16b"
TEXTS = ["a photo of a cat", "a dog"]

# Loads each name given ("ARCH pretrained=TAG" for a pretrained pair; the pairs in $EXTRA_PRETRAINED are added
# to the table first, as open_clip's unless they say "from_open_clip": false), prints one JSON line per name: its
# directory and embeddings, or its error.
LOADER = """
import json, os, sys
import numpy as np
import jaxvlm
from jaxvlm import pretrained
from jaxvlm.errors import InputError
for row in json.loads(os.environ.get("EXTRA_PRETRAINED", "[]")):
    if row.pop("from_open_clip", True):  # a stand-in for a pair of open_clip's table
        pretrained._open_clip_pairs().add((row["arch"], row["tag"]))
    pretrained._table()[(row["arch"], row["tag"])] = pretrained.Pretrained(**row)
for name in sys.argv[1:]:
    arch, _, tag = name.partition(" pretrained=")
    try:
        model = jaxvlm.load(arch, pretrained=tag or None)
    except InputError as e:
        print(json.dumps({"name": name, "error": str(e)}), flush=True)
        continue
    size = model.config.vision.image_size
    pixels = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
    texts = {json.dumps(TEXTS)}
    print(json.dumps({
        "name": name, "directory": str(model.directory), "image": model.encode_image(pixels).tolist(),
        "text": model.encode_text(model.tokenize(texts)).tolist(),
    }), flush=True)
""".replace("{json.dumps(TEXTS)}", json.dumps(TEXTS))


def hf_clip(seed: int):
    """A tiny HF CLIP with CLIP's vocabulary (so the bundled BPE tokenizer applies), perturbed."""
    tower = lambda width, mlp, depth, heads, **extra: dict(
        hidden_size=width, intermediate_size=mlp, num_hidden_layers=depth, num_attention_heads=heads, **extra
    )
    config = transformers.CLIPConfig(
        text_config=tower(32, 64, 1, 2, vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu"),
        vision_config=tower(32, 64, 1, 2, image_size=32, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@dataclasses.dataclass
class Hub:
    server: HubServer
    commits: dict[str, str]  # "first" / "second" commit of openai-ish/clip (main is the second)
    folders: dict[str, Path]  # the files of each


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    with HubServer(root / "repos") as server:
        server.publish("jaxvlm-org/tiny", FIXTURE)
        folders, commits = {"first": root / "clip-1", "second": root / "clip-2"}, {}
        for seed, (which, folder) in enumerate(folders.items()):
            hf_clip(seed).save_pretrained(folder)
            commits[which] = server.publish("openai-ish/clip", folder)
        bert = root / "bert"
        bert.mkdir()
        (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
        server.publish("someone/bert", bert)
        yield Hub(server, commits, folders)


def hub_env(hub: Hub, tmp_path: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.server.endpoint,
        "HF_HOME": str(tmp_path / "hf"),
        "JAXVLM_CACHE": str(tmp_path / "cache"),
    }


def run_loader(names: list[str], env: dict, **popen) -> subprocess.Popen:
    offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # the suite runs offline (tests/conftest.py)
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", *offline)} | env
    return subprocess.Popen(
        [sys.executable, "-c", LOADER, *names],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def results(process: subprocess.Popen) -> dict[str, dict]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return {r["name"]: r for r in map(json.loads, out.splitlines())}


def local(folder: Path, cache: Path, monkeypatch) -> dict:
    """What loading the same files from a local folder gives, in this process."""
    monkeypatch.setenv("JAXVLM_CACHE", str(cache))
    model = jaxvlm.load(folder)
    size = model.config.vision.image_size
    pixels = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
    return {"image": model.encode_image(pixels), "text": model.encode_text(model.tokenize(TEXTS))}


def max_abs(got: dict, expected: dict) -> float:
    assert "error" not in got, got["error"]
    return max(float(np.abs(np.asarray(got[k]) - expected[k]).max()) for k in ("image", "text"))


def test_hub_loads_convert_once_and_reload_offline(hub, tmp_path, monkeypatch):
    env = hub_env(hub, tmp_path)
    first = hub.commits["first"]
    names = [
        "hf-hub:jaxvlm-org/tiny",
        "hf-hub:openai-ish/clip",
        f"hf-hub:openai-ish/clip@{first}",
        "hf-hub:someone/bert",
        "hf-hub:nobody/missing",
        "hf-hub:openai-ish/clip@v9",
    ]
    online = results(run_loader(names, env))
    expected = {
        "hf-hub:jaxvlm-org/tiny": local(FIXTURE, tmp_path / "local", monkeypatch),
        "hf-hub:openai-ish/clip": local(hub.folders["second"], tmp_path / "local", monkeypatch),
        f"hf-hub:openai-ish/clip@{first}": local(hub.folders["first"], tmp_path / "local", monkeypatch),
    }
    for name, want in expected.items():
        error = max_abs(online[name], want)
        print(f"{name}: max abs vs the local conversion of the same files {error:.1e}")
        assert error == 0.0
    assert max_abs(online["hf-hub:openai-ish/clip"], expected[f"hf-hub:openai-ish/clip@{first}"]) > 0.01
    assert "model_type is 'bert'" in online["hf-hub:someone/bert"]["error"]
    assert "hf-hub:nobody/missing not found" in online["hf-hub:nobody/missing"]["error"]
    assert "has no revision 'v9'" in online["hf-hub:openai-ish/clip@v9"]["error"]
    assert all("\n" not in r.get("error", "") for r in online.values())
    converted = Path(online["hf-hub:openai-ish/clip"]["directory"])
    assert converted.is_relative_to(tmp_path / "cache") and hub.commits["second"] in str(converted)
    stamp = (converted / "config.json").stat().st_mtime_ns
    sent = sum(hub.server.sent.values())

    # offline, and no hub where HF_ENDPOINT points (the discard port): nothing is converted or downloaded again
    offline = results(run_loader(names[:3], env | {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}))
    for name in names[:3]:
        assert offline[name]["directory"] == online[name]["directory"]
        assert (
            max_abs(offline[name], {k: np.asarray(v) for k, v in online[name].items() if k in ("image", "text")}) == 0
        )
    assert (converted / "config.json").stat().st_mtime_ns == stamp and sum(hub.server.sent.values()) == sent


@pytest.mark.slow
def test_two_processes_loading_one_name_convert_it_once(hub, tmp_path):
    env = hub_env(hub, tmp_path)
    # a second conversion into the same place would fail (the output exists): both succeeding means one did it
    loads = [run_loader(["hf-hub:openai-ish/clip"], env) for _ in range(2)]
    a, b = (results(p)["hf-hub:openai-ish/clip"] for p in loads)
    assert a["directory"] == b["directory"] and a["image"] == b["image"]
    assert not list((tmp_path / "cache").rglob(".*partial*"))


@pytest.mark.slow
def test_an_interrupted_download_leaves_nothing_that_looks_complete(hub, tmp_path):
    env = hub_env(hub, tmp_path)
    weights = "openai-ish/clip/model.safetensors"
    hub.server.truncate[weights] = 100  # every try the client makes is cut short
    failed = results(run_loader(["hf-hub:openai-ish/clip"], env))["hf-hub:openai-ish/clip"]
    tries, hub.server.truncate[weights] = hub.server.sent[weights], 0
    print(f"weights cut short {tries} times: {failed.get('error')}")
    assert "\n" not in failed["error"] and "openai-ish/clip" in failed["error"]
    assert not list((tmp_path / "cache").rglob("config.json"))  # no conversion, complete or partial
    again = results(run_loader(["hf-hub:openai-ish/clip"], env))["hf-hub:openai-ish/clip"]
    assert "error" not in again and np.isfinite(again["image"]).all()


@pytest.mark.slow
def test_a_pretrained_pair_loads_as_open_clip_computes_it(hub, tmp_path):
    """A pair of the table whose repo holds open_clip's weights file alone: built as the named
    architecture, with quick GELU as the pair says."""
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    reference_cfg = {
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    }
    reference = open_clip.CLIP(embed_dim=32, **reference_cfg, quick_gelu=True).eval()
    with torch.no_grad():
        for value in reference.state_dict().values():
            value.add_(0.02 * torch.randn_like(value))
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(reference.state_dict(), folder / "open_clip_pytorch_model.bin")
    hub.server.publish("laion-ish/tiny-clip", folder)
    # the same weights as an open_clip repo whose config leaves out quick GELU: open_clip builds the pair's own
    # architecture whatever the repo's config says, and so must jaxvlm
    from safetensors.torch import save_file

    repo = tmp_path / "repo"
    repo.mkdir()
    save_file(reference.state_dict(), str(repo / "open_clip_model.safetensors"))
    model_cfg = {"embed_dim": 32, "vision_cfg": reference_cfg["vision_cfg"], "text_cfg": reference_cfg["text_cfg"]}
    (repo / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    hub.server.publish("laion-ish/tiny-clip-repo", repo)
    row = {"arch": "tiny-clip", "tag": "stand-in", "hub_repo": "laion-ish/tiny-clip", "hub_file": None}
    pairs = [
        row | {"quick_gelu": True, "preprocess": {}},
        row | {"tag": "gelu", "quick_gelu": False, "preprocess": {}},
        row | {"tag": "repo", "hub_repo": "laion-ish/tiny-clip-repo", "quick_gelu": True, "preprocess": {}},
    ]
    env = hub_env(hub, tmp_path) | {"EXTRA_PRETRAINED": json.dumps(pairs)}
    names = [
        "tiny-clip pretrained=stand-in",
        "tiny-clip pretrained=gelu",
        "tiny-clip pretrained=repo",
        "RN50 pretrained=x",
    ]
    got = results(run_loader(names, env))
    pixels = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    with torch.no_grad():
        expected = {
            "image": reference.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2), normalize=True).numpy(),
            "text": reference.encode_text(open_clip.tokenize(TEXTS), normalize=True).numpy(),
        }
    error = max_abs(got["tiny-clip pretrained=stand-in"], expected)
    print(f"pretrained pair vs open_clip on the same weights, max abs: {error:.1e}")
    assert error <= 1e-5  # unit vectors through two float32 implementations (tests/convert/test_open_clip.py)
    assert max_abs(got["tiny-clip pretrained=gelu"], expected) > 1e-3  # exact GELU on those weights: another model
    error = max_abs(got["tiny-clip pretrained=repo"], expected)
    print(f"pair from a repo whose config says exact GELU, built as open_clip builds the pair, max abs: {error:.1e}")
    assert error <= 1e-5
    assert "no pretrained weights 'RN50' / 'x'; its tags: openai" in got["RN50 pretrained=x"]["error"]


@pytest.mark.slow
def test_convert_takes_a_hub_name(hub, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = tmp_path / "converted"
    command = [
        sys.executable,
        "-m",
        "jaxvlm.cli",
        "convert",
        f"hf-hub:openai-ish/clip@{hub.commits['first']}",
        str(out),
    ]
    done = subprocess.run(command, env=env | hub_env(hub, tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    local = tmp_path / "local"
    assert jaxvlm.cli.main(["convert", "--from", "hf", str(hub.folders["first"]), str(local)]) == 0
    assert (out / "model.safetensors").read_bytes() == (local / "model.safetensors").read_bytes()
    configs = [json.loads((d / "config.json").read_text()) for d in (out, local)]
    assert all(configs[0][k] == configs[1][k] for k in ("model", "preprocess", "tokenizer"))  # provenance differs
    done = subprocess.run(
        [*command[:-2], "hf-hub:jaxvlm-org/tiny", str(tmp_path / "again")],
        env=env | hub_env(hub, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "already a jaxvlm model" in done.stderr


@pytest.mark.slow
def test_a_big_vision_pair_downloads_from_gcs_converts_once_and_reloads_offline(hub, tmp_path, spm_model_file):
    """A pair whose weights and tokenizer are gs:// files (big_vision's): fetched over HTTPS from
    $JAXVLM_GCS_ENDPOINT, converted as the pair's architecture, equal to the local conversion."""
    from jaxvlm.convert import convert
    from tests.convert.big_vision_models import TINY_SIGLIP, hf_siglip, to_big_vision, write_npz

    npz = write_npz(
        tmp_path / "tiny.npz", to_big_vision(hf_siglip(TINY_SIGLIP, seed=3), stacked=True, prefix="params/")
    )
    hub.server.static |= {"bucket/siglip/tiny.npz": npz, "vocabs/spm.model": spm_model_file}
    url = "gs://bucket/siglip/tiny.npz"
    row = {"arch": "tiny-siglip", "tag": url, "hub_repo": None, "hub_file": None, "quick_gelu": False}
    row |= {"preprocess": {}, "weights_url": url, "tokenizer_url": "gs://vocabs/spm.model", "from_open_clip": False}
    env = hub_env(hub, tmp_path) | {"EXTRA_PRETRAINED": json.dumps([row]), "JAXVLM_GCS_ENDPOINT": hub.server.endpoint}
    name = f"tiny-siglip pretrained={url}"
    hub.server.truncate["bucket/siglip/tiny.npz"] = 1  # the first try is cut short, the second goes through
    process = run_loader([name, name], env)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    failed, loaded = map(json.loads, out.splitlines())
    print(f"cut short: {failed['error']}")
    assert "cut short" in failed["error"] and "\n" not in failed["error"]
    convert("big_vision", npz, tmp_path / "local-dir", model_name="tiny-siglip", tokenizer=spm_model_file)
    error = max_abs(loaded, local(tmp_path / "local-dir", tmp_path / "local", pytest.MonkeyPatch()))
    print(f"big_vision pair vs the local conversion of the same files, max abs: {error:.1e}")
    assert error == 0.0
    assert not [p for p in (tmp_path / "cache").rglob("*.npz*") if p.is_file()]  # downloads go once converted
    offline = env | {"HF_HUB_OFFLINE": "1", "JAXVLM_GCS_ENDPOINT": "http://127.0.0.1:9"}
    again = results(run_loader([name], offline))[name]
    assert again["directory"] == loaded["directory"] and again["image"] == loaded["image"]


@pytest.mark.slow
def test_an_open_clip_repo_without_tokenizer_files_takes_hf_tokenizer_name_from_the_hub(hub, tmp_path):
    """open_clip's hf_tokenizer_name, when the repo holds no tokenizer files, is fetched from the hub:
    the conversion equals one given the same tokenizer file with --tokenizer."""
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<|endoftext|>", "a", "photo", "of", "cat", "dog"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer_repo = tmp_path / "tokenizer"
    tokenizer_repo.mkdir()
    tokenizer.save(str(tokenizer_repo / "tokenizer.json"))
    hub.server.publish("someone/word-tokenizer", tokenizer_repo)
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 1, "layers": 1},
    }
    repo = tmp_path / "repo"
    repo.mkdir()
    save_file(open_clip.CLIP(**model_cfg).state_dict(), str(repo / "open_clip_model.safetensors"))
    model_cfg["text_cfg"]["hf_tokenizer_name"] = "someone/word-tokenizer"
    (repo / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    command = [sys.executable, "-m", "jaxvlm.cli", "convert", "--from", "open_clip", str(repo)]
    done = subprocess.run(
        [*command, str(tmp_path / "fetched")], env=env | hub_env(hub, tmp_path), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    given = tmp_path / "given"
    assert jaxvlm.cli.main([*command[3:], str(given), "--tokenizer", str(tokenizer_repo / "tokenizer.json")]) == 0
    configs = [json.loads((tmp_path / d / "config.json").read_text())["tokenizer"] for d in ("fetched", "given")]
    assert configs[0] == configs[1] and configs[0]["kind"] == "hf_json"
    assert (tmp_path / "fetched" / "tokenizer.json").read_bytes() == (given / "tokenizer.json").read_bytes()
    offline = subprocess.run(
        [*command, str(tmp_path / "offline")], env=env | {"HF_HUB_OFFLINE": "1"}, capture_output=True, text=True
    )
    assert offline.returncode == 2 and "hf-hub:someone/word-tokenizer is not in the local cache" in offline.stderr


def test_a_local_folder_converts_once_until_a_file_is_rewritten(tmp_path, monkeypatch):
    from jaxvlm import hub

    monkeypatch.setenv("JAXVLM_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "clip"
    hf_clip(0).save_pretrained(folder)
    first = hub.model_directory(folder)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert hub.model_directory(folder) == first and (first / "config.json").stat().st_mtime_ns == stamp
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # the same bytes, written again: converted again
    second = hub.model_directory(folder)
    assert second != first and second.parent == first.parent
    assert (second / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
