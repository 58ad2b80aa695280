"""From a name to a model directory: ``hf-hub:ORG/NAME[@REVISION]`` is downloaded with
huggingface_hub (which honours HF_ENDPOINT, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE), and a
transformers or open_clip checkpoint (downloaded, or a local folder) is converted once into the
conversion cache, ``$JAXVLM_CACHE`` (default ``~/.cache/jaxvlm``).

A cached conversion is keyed by what it was made from (the hub repo and commit, or the file names,
sizes and modification times of a local folder) and by the model-directory format, so a second
load converts nothing and needs no network. Conversions are written whole or not at all
(`jaxvlm.model_dir.save`), under a file lock: processes loading one name at once (the hosts of one
job) convert it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from jaxvlm import model_dir
from jaxvlm.errors import InputError
from jaxvlm.pretrained import Pretrained, get_pretrained

HUB_PREFIX = "hf-hub:"
HUB_NAME = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?")
LAYOUTS = ("jaxvlm", "hf", "open_clip")


def cache_root() -> Path:
    return Path(os.environ.get("JAXVLM_CACHE") or Path.home() / ".cache" / "jaxvlm").expanduser()


def model_directory(name: str | os.PathLike) -> Path:
    """The jaxvlm model directory that ``name`` (a model directory, a transformers or open_clip
    checkpoint folder, or ``hf-hub:ORG/NAME[@REVISION]``) stands for, converted if need be."""
    text = os.fspath(name)
    if text.startswith(HUB_PREFIX):
        repo, revision = parse_hub_name(text)
        snapshot = download(repo, revision)
        key = f"hub/{repo.replace('/', '--')}/{snapshot.name}"  # snapshot folders are named by commit
        return converted(snapshot, key, f"{text} (commit {snapshot.name})")
    directory = Path(text)
    if not directory.is_dir() or layout(directory) in (None, "jaxvlm"):
        return directory  # model_dir.load names what is wrong with it
    return converted(directory, f"local/{_digest(directory)}", str(directory))


def parse_hub_name(name: str) -> tuple[str, str | None]:
    match = HUB_NAME.fullmatch(name[len(HUB_PREFIX) :])
    if not match:
        raise InputError(f"{name!r} is not a hub name: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    return match["repo"], match["revision"]


def check_repo_id(repo: str) -> None:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise InputError(f"{repo!r} is not a hub repo name: expected ORG/NAME")


def upload(folder: Path, repo: str) -> str:
    """Uploads ``folder`` to the hub model repo ``repo`` (created if missing) as one commit; returns
    the commit's URL. Authenticates with HF_TOKEN or the stored login."""
    import huggingface_hub

    api = huggingface_hub.HfApi()
    try:
        api.create_repo(repo, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=folder, commit_message=f"Upload {folder.name} from jaxvlm")
    except Exception as e:  # HTTP errors (no token, no write access) and the transport's own
        raise InputError(f"uploading {folder} to hf-hub:{repo} failed: {' '.join(str(e).split())[:200]}") from None
    return info.commit_url


def pretrained_directory(arch: str, tag: str) -> Path:
    """The model directory of a pretrained pair (`jaxvlm.pretrained`), converted once."""
    from jaxvlm.convert import convert
    from jaxvlm.models.registry import ARCHITECTURES

    entry = get_pretrained(arch, tag)
    name = entry.architecture
    if not entry.loads:
        missing = f"build the architecture {name}" if name not in ARCHITECTURES else f"convert big_vision's {name}"
        raise InputError(f"{arch} / {tag}: jaxvlm does not {missing} yet (`jaxvlm list` shows what it builds)")
    if entry.weights_url:
        return _converted_once(f"gcs/{entry.weights_url.removeprefix('gs://')}/{name}", lambda t: _big_vision(entry, t))
    snapshot = download(entry.hub_repo, None, [entry.hub_file] if entry.hub_file else [])
    key = f"hub/{entry.hub_repo.replace('/', '--')}/{snapshot.name}"
    what = f"{arch} / {tag} ({entry.source}, commit {snapshot.name})"
    if layout(snapshot) is not None:
        directory = converted(snapshot, key, what)
    else:  # weights alone: open_clip builds them as its architecture (with quick GELU where trained so)
        files = [entry.hub_file] if entry.hub_file else [n for n in OPEN_CLIP_WEIGHTS if (snapshot / n).is_file()]
        if not files:
            raise InputError(f"{what} holds no open_clip weights ({', '.join(OPEN_CLIP_WEIGHTS)})")
        convert_weights = lambda target: convert("open_clip", snapshot / files[0], target, model_name=name)
        directory = _converted_once(f"{key}/{name}", convert_weights)  # the same weights may be another arch's
    if not entry.from_open_clip:
        return directory
    return _as_open_clip_builds(directory, entry, f"{key}/pretrained/{name}", what)


def _as_open_clip_builds(directory: Path, entry: Pretrained, key: str, what: str) -> Path:
    """``directory``'s weights as open_clip builds the pair: its architecture (the repo's config may
    differ, e.g. timm/ViT-SO400M-14-SigLIP-384 serves ViT-SO400M-14-SigLIP-378) and the pair's
    preprocessing, with the converted tokenizer."""
    from jaxvlm.convert.open_clip_repo import preprocess_from_open_clip
    from jaxvlm.models import param_shapes
    from jaxvlm.models.registry import get_architecture

    arch = get_architecture(entry.architecture)
    have = model_dir.load(directory, weights=False)
    preprocess = preprocess_from_open_clip(entry.preprocess, arch.model.vision.image_size, f"{what} preprocess")
    if (have.config, have.preprocess) == (arch.model, preprocess):
        return directory

    def rebuild(target: Path) -> None:
        import flax

        loaded = model_dir.load(directory)
        shapes = {k: v.shape for k, v in flax.traverse_util.flatten_dict(loaded.params, sep="/").items()}
        if shapes != param_shapes(arch.model):
            raise InputError(f"{what}: the repo's weights do not fit {entry.architecture}, which open_clip builds")
        provenance = {**loaded.provenance, "model": entry.architecture, "pretrained": entry.tag}
        rebuilt = model_dir.ModelDir(
            arch.model, preprocess, loaded.tokenizer, provenance, loaded.params, loaded.batch_stats
        )
        model_dir.save(target, rebuilt, directory / loaded.tokenizer.file)

    return _converted_once(key, rebuild)


def _big_vision(entry: Pretrained, target: Path) -> None:
    """Converts a big_vision checkpoint on GCS into ``target``: its weights and tokenizer are
    downloaded next to the cache (and deleted once converted: the conversion is what is kept)."""
    import tempfile

    from jaxvlm.convert import convert

    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as folder:
        weights = fetch(entry.weights_url, Path(folder))
        tokenizer = fetch(entry.tokenizer_url, Path(folder))
        convert("big_vision", weights, target, model_name=entry.architecture, tokenizer=tokenizer)


def gcs_endpoint() -> str:
    return os.environ.get("JAXVLM_GCS_ENDPOINT", "https://storage.googleapis.com").rstrip("/")


def fetch(url: str, folder: Path) -> Path:
    """Downloads gs://BUCKET/PATH (over HTTPS from `gcs_endpoint`) into ``folder``, with a
    progress bar; the file is there only once all of it arrived."""
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise InputError(f"{url} is not converted yet and HF_HUB_OFFLINE is set: load it once online")
    address = f"{gcs_endpoint()}/{url.removeprefix('gs://')}"
    path = folder / Path(url).name
    partial = path.with_name(path.name + ".partial")
    try:
        with urllib.request.urlopen(address, timeout=60) as response, open(partial, "wb") as f:
            size = int(response.headers.get("Content-Length", 0)) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=path.name) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
                    bar.update(len(block))
        if size is not None and partial.stat().st_size != size:
            raise InputError(f"downloading {url} was cut short ({partial.stat().st_size} of {size} bytes)")
    except urllib.error.HTTPError as e:
        raise InputError(f"downloading {url} failed: HTTP {e.code} from {address}") from None
    except (urllib.error.URLError, OSError) as e:
        raise InputError(f"downloading {url} failed: {' '.join(str(e).split())[:200]}") from None
    partial.rename(path)
    return path


def download(repo: str, revision: str | None, extra_files: list[str] = (), only: list[str] | None = None) -> Path:
    """The local snapshot of ``repo`` at ``revision`` (default: main), downloaded if not cached:
    its configs and tokenizer files, the one weights file its layout converts from, and
    ``extra_files``; or, with ``only``, the files matching those patterns alone."""
    import huggingface_hub
    from huggingface_hub import errors

    try:
        patterns = only
        if only is None:
            try:
                patterns = [*wanted_files(huggingface_hub.list_repo_files(repo, revision=revision)), *extra_files]
            except (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError):
                patterns = None  # offline: whatever the cached snapshot holds
        return Path(huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except errors.RevisionNotFoundError:
        raise InputError(f"hf-hub:{repo} has no revision {revision!r}") from None
    except errors.RepositoryNotFoundError:
        raise InputError(f"hf-hub:{repo} not found (or private: set HF_TOKEN)") from None
    except errors.LocalEntryNotFoundError:
        raise InputError(f"hf-hub:{repo} is not in the local cache and the hub cannot be reached") from None
    except Exception as e:  # HTTP errors, and the transport's own (a dropped connection, a timeout)
        raise InputError(f"downloading hf-hub:{repo} failed: {' '.join(str(e).split())[:200]}") from None


# configs and tokenizers; the weights files of open_clip and of a transformers repo or jaxvlm model
# directory, most preferred first (repos often hold several formats, and both layouts)
SMALL_FILES = ["*.json", "*.txt", "*.txt.gz", "*.model"]
OPEN_CLIP_WEIGHTS = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
MODEL_WEIGHTS = ["model.safetensors", "pytorch_model.bin"]


def wanted_files(files: list[str]) -> list[str]:
    """What to download of a repo holding ``files``: `SMALL_FILES` and the one weights file that
    `layout` picks (open_clip's when the repo has open_clip's config, or no other config)."""
    open_clip_first = "open_clip_config.json" in files or "config.json" not in files
    order = OPEN_CLIP_WEIGHTS + MODEL_WEIGHTS if open_clip_first else MODEL_WEIGHTS + OPEN_CLIP_WEIGHTS
    weights = next((name for name in order if name in files), None)
    return [*SMALL_FILES, *([weights] if weights else [])]


def layout(directory: Path) -> str | None:
    """Which kind of checkpoint folder ``directory`` is (one of LAYOUTS), or None."""
    if (directory / "open_clip_config.json").is_file():  # open_clip's hub repos often hold a transformers copy too
        return "open_clip"
    config = directory / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if isinstance(data, dict) and data.get("format") == model_dir.FORMAT:
            return "jaxvlm"
        if isinstance(data, dict) and "model_type" in data:
            return "hf"
    return None


def converted(source: Path, key: str, what: str) -> Path:
    """``source`` as a jaxvlm model directory: itself when it is one, else its cached conversion."""
    from jaxvlm.convert import convert

    kind = layout(source)
    if kind == "jaxvlm":
        return source
    if kind is None:
        files = ", ".join(sorted(p.name for p in source.iterdir())[:8])
        raise InputError(
            f"{what} is neither a jaxvlm model directory nor a transformers or open_clip checkpoint ({files})"
        )
    return _converted_once(key, lambda target: convert(kind, source, target))


def _converted_once(key: str, convert: Callable[[Path], None]) -> Path:
    """The cache entry ``key``, written by ``convert(target)`` unless another process or an earlier
    load already did (a model directory appears complete or not at all: `jaxvlm.model_dir.save`)."""
    from filelock import FileLock

    target = cache_root() / f"v{model_dir.FORMAT_VERSION}" / key
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / model_dir.CONFIG_FILE).is_file():
            convert(target)
    return target


def _digest(directory: Path) -> str:
    """A hash of the folder's file names, sizes and modification times: a file rewritten changes it,
    and reading the (often gigabytes of) contents on every load is not needed to tell."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(directory)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:32]
