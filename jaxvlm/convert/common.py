"""What every converter shares: safe reading of source weights, key accounting, the tensor
transforms from PyTorch layouts, and the check of a finished parameter tree against the model.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import tokenize
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import flax
import numpy as np

from jaxvlm.errors import InputError
from jaxvlm.models.config import ModelConfig
from jaxvlm.models.towers.base import TowerConfig
from jaxvlm.preprocess import PreprocessConfig
from jaxvlm.tokenizers import TokenizerConfig


@dataclasses.dataclass
class Converted:
    """A converted model, complete in memory, before anything is written."""

    config: ModelConfig
    params: dict  # nested tree of float32 numpy arrays, as the model expects
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig
    tokenizer_source: Path  # the file copied into the model dir as tokenizer.file
    provenance: dict
    batch_stats: dict = dataclasses.field(default_factory=dict)  # BatchNorm statistics, as params (none: {})


# ---------------------------------------------------------------- reading source weights


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Reads .safetensors, .npz, or (with torch installed) .bin / .pt / .pth state dicts."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such weights file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix == ".npz":
        return _read_npz(path)
    if suffix in (".bin", ".pt", ".pth"):
        return _read_torch(path)
    raise InputError(f"unsupported weights file type '{suffix}': {path} (expected .safetensors, .npz, .bin, .pt)")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="flax") as f:
            return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for every kind of damage
        raise InputError(f"not a valid safetensors file: {path} ({_one_line(e)})") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise InputError(f"refusing {path}: it holds pickled objects, not plain arrays") from None
        raise InputError(f"not a valid .npz file: {path} ({_one_line(e)})") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, SyntaxError, tokenize.TokenError) as e:
        # numpy parses each member's header as a Python literal: damaged header bytes fail in the tokenizer
        raise InputError(f"not a valid .npz file: {path} ({_one_line(e)})") from None


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    from jaxvlm.convert import torchscript

    if torchscript.is_torchscript_archive(path):  # e.g. OpenAI's CLIP .pt files: read, never run, no torch needed
        return torchscript.read_torchscript_weights(path)
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    if is_zip and not zipfile.is_zipfile(path):
        raise InputError(
            f"cannot read {path}: a zip archive (torch.save or TorchScript) whose directory at the end is missing "
            "— is the file truncated?"
        )
    try:
        import torch
    except ImportError:
        raise InputError(
            f"reading {path.suffix} files needs PyTorch (pip install torch); safetensors and npz files do not"
        ) from None
    try:
        # weights_only: the unpickler only rebuilds tensors and plain containers, never runs code
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(f"refusing {path}: it is not a plain weights file ({_one_line(e)})") from None
    except Exception as e:
        raise InputError(f"cannot read {path} as a PyTorch state dict ({_one_line(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # open_clip training checkpoints
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path} does not hold a state dict of tensors")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in obj.items()}


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def strip_prefix(weights: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Drops a prefix that every key has (e.g. DDP's 'module.')."""
    if weights and all(k.startswith(prefix) for k in weights):
        return {k[len(prefix) :]: v for k, v in weights.items()}
    return weights


# ---------------------------------------------------------------- key accounting

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class SourceKeys:
    """A source state dict whose keys must all be used exactly once."""

    def __init__(self, weights: dict[str, np.ndarray], what: str, ignore: Iterable[str] = ()):
        self.weights = weights
        self.what = what
        self.used: set[str] = set(k for k in ignore if k in weights)

    def __contains__(self, key: str) -> bool:
        return key in self.weights

    def take(self, key: str) -> np.ndarray:
        if key not in self.weights:
            raise InputError(f"{self.what}: missing key '{key}' — is this the architecture you named?")
        if key in self.used:
            raise AssertionError(f"converter bug: '{key}' used twice")
        self.used.add(key)
        value = np.asarray(self.weights[key])
        if value.dtype.name not in FLOAT_DTYPES:  # integers, booleans, complex numbers: not weights
            raise InputError(
                f"{self.what}: '{key}' holds {value.dtype.name} values; weights are floating point "
                f"({', '.join(FLOAT_DTYPES)})"
            )
        return value.astype(np.float32, copy=False)  # float32 sources are not copied: a gopt holds 7 GB

    def check_all_used(self) -> None:
        unused = sorted(set(self.weights) - self.used)
        if unused:
            raise InputError(
                f"{self.what}: {len(unused)} unused source keys, e.g. {', '.join(unused[:5])}"
                " — the weights are of another architecture"
            )


def check_params(cfg: ModelConfig, flat: dict[str, np.ndarray], what: str, collection: str = "params") -> dict:
    """Compares converted params (or another ``collection``'s variables) with the model's own tree;
    returns the nested tree."""
    from jaxvlm.models import param_shapes

    expected = param_shapes(cfg, collection)
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise InputError(f"{what}: target keys missing {missing[:5]} / unexpected {extra[:5]}")
    for key, shape in expected.items():
        if tuple(flat[key].shape) != shape:
            raise InputError(
                f"{what}: '{key}' has shape {tuple(flat[key].shape)}, the model expects {shape}"
                " — the weights are of another architecture"
            )
        if not np.isfinite(flat[key]).all():
            raise InputError(f"{what}: '{key}' holds NaN or infinite values — the checkpoint is damaged")
    return flax.traverse_util.unflatten_dict({k: np.asarray(v, np.float32) for k, v in flat.items()}, sep="/")


def converter_for(table: Mapping[str, Callable], tower: TowerConfig, source: str) -> Callable:
    """The entry of a converter's table (tower kind -> converter) for ``tower``."""
    if tower.kind not in table:
        raise InputError(
            f"{source} weights of {tower.kind!r} towers cannot be converted (known kinds: {', '.join(table)})"
        )
    return table[tower.kind]


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; anything else is one clear error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} does not hold a JSON object")
    return data


def flat_fields(cfg: ModelConfig) -> dict[str, Any]:
    """The config's fields as dotted names ("vision.width"), to compare two configs field by field."""
    out = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------- PyTorch -> flax layouts


def linear(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> flax kernel [in, out]."""
    return w.T


def conv(w: np.ndarray) -> np.ndarray:
    """torch Conv2d weight [out, in, kh, kw] -> flax kernel [kh, kw, in, out]."""
    return w.transpose(2, 3, 1, 0)


def heads_in(w: np.ndarray, heads: int) -> np.ndarray:
    """torch q/k/v weight [out, in] -> flax DenseGeneral kernel [in, heads, head_dim]."""
    return w.T.reshape(w.shape[1], heads, -1)


def heads_out(w: np.ndarray, heads: int) -> np.ndarray:
    """torch out-projection weight [out, in] -> flax kernel [heads, head_dim, out]."""
    return w.T.reshape(heads, -1, w.shape[0])


def attention_params(
    prefix: str, q: tuple, k: tuple, v: tuple, out_w: np.ndarray, out_b: np.ndarray, heads: int
) -> dict[str, np.ndarray]:
    """q/k/v/out as (weight, bias) pairs in torch layout -> flax Attention params (a bias None: none)."""
    params = {}
    for name, (w, b) in (("query", q), ("key", k), ("value", v)):
        params[f"{prefix}/{name}/kernel"] = heads_in(w, heads)
        if b is not None:
            params[f"{prefix}/{name}/bias"] = b.reshape(heads, -1)
    params[f"{prefix}/out/kernel"] = heads_out(out_w, heads)
    params[f"{prefix}/out/bias"] = out_b
    return params


def layer_norm(
    src: SourceKeys, name: str, prefix: str, weight: str = "weight", bias: str = "bias"
) -> dict[str, np.ndarray]:
    return {f"{prefix}/scale": src.take(f"{name}.{weight}"), f"{prefix}/bias": src.take(f"{name}.{bias}")}


def dense(src: SourceKeys, name: str, prefix: str, bias: bool = True) -> dict[str, np.ndarray]:
    out = {f"{prefix}/kernel": linear(src.take(f"{name}.weight"))}
    if bias:
        out[f"{prefix}/bias"] = src.take(f"{name}.bias")
    return out


def stack_layers(depth: int, one_layer: Callable[[int], dict[str, np.ndarray]], prefix: str) -> dict[str, np.ndarray]:
    """Per-layer params -> the scanned layout (a leading "layers" axis) under ``prefix``."""
    layers = [one_layer(i) for i in range(depth)]
    return {f"{prefix}/{k}": np.stack([layer[k] for layer in layers]) for k in layers[0]}
