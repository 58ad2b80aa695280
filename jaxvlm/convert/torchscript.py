"""The weights of a TorchScript archive (what ``torch.jit.save`` writes, e.g. OpenAI's original CLIP
``ViT-B-32.pt``), read without running anything in it and without PyTorch.

Such an archive is a zip: ``<root>/data.pkl`` pickles the module tree, each module an object of a
``__torch__.*`` class whose state is its attributes (sub-modules, parameters, buffers, plain
values); ``<root>/data/<key>`` holds the raw bytes of the storage with persistent id ``key``;
``<root>/code/`` holds the classes' TorchScript source, ``<root>/constants.pkl`` its constants.

``torch.jit.load`` compiles and runs that source. Here data.pkl goes through a restricted
unpickler instead: it resolves only the functions torch uses to rebuild tensors (as inert
functions of its own), the ``torch.*Storage`` dtype markers and a few identity helpers, and makes
every ``__torch__.*`` class an inert record of the state it is given. Any other global is refused
before anything is called. The source files are read as text only, for each module class's
``__parameters__`` / ``__buffers__`` lists, so that the tree flattens to the names
``module.state_dict()`` gives.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jaxvlm.errors import InputError

# torch storage class -> numpy dtype of its bytes (little-endian; big-endian archives say so in
# <root>/byteorder). bfloat16 is read as its 16 bits and widened below.
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "BFloat16Storage": "u2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "b1",
}


class _Refused(Exception):
    """data.pkl names a global outside the allowed set."""


class _Malformed(Exception):
    """The archive is not laid out as torch.jit.save lays it out."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """What a ``torch.<Type>Storage`` global resolves to: the dtype of its bytes, or None if it
    holds no float or integer values (complex, quantized, float8, ...)."""

    name: str
    dtype: str | None


@dataclasses.dataclass(frozen=True)
class _Storage:
    name: str  # its zip entry, for messages
    type: _StorageType
    values: np.ndarray | None  # 1-d, None for an unsupported type


@dataclasses.dataclass(frozen=True)
class _Tensor:
    type: _StorageType
    array: np.ndarray | None  # None for an unsupported type


class _ScriptObject:
    """An instance of a ``__torch__.*`` class: records what the pickle gives it, runs nothing."""

    qualname = "__torch__"

    def __new__(cls, *args: Any) -> _ScriptObject:
        obj = object.__new__(cls)
        obj.state = None
        obj.args = args
        return obj

    def __init__(self, *args: Any) -> None:  # REDUCE on a class (an enum's value) calls it
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _Tensor:
    """Stands for torch._utils._rebuild_tensor_v2: a strided view of a storage, copied out."""
    if not isinstance(storage, _Storage):
        raise _Malformed(f"a tensor is rebuilt from {type(storage).__name__}, not from a storage")
    if storage.values is None:
        return _Tensor(storage.type, None)
    if not (_is_ints(size) and _is_ints(stride) and len(size) == len(stride) and _is_int(storage_offset)):
        raise _Malformed(f"a tensor of storage {storage.name} has a malformed size {size!r} / stride {stride!r}")
    if storage_offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise _Malformed(f"a tensor of storage {storage.name} has negative sizes, strides or offset")
    values = storage.values
    if any(n == 0 for n in size):
        return _Tensor(storage.type, np.zeros(tuple(size), values.dtype))
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= values.size:
        raise _Malformed(
            f"a tensor reaches element {last} of storage {storage.name}, which holds {values.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        values[storage_offset:], shape=tuple(size), strides=tuple(s * values.itemsize for s in stride), writeable=False
    )
    return _Tensor(storage.type, np.array(view))


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """Stands for torch._utils._rebuild_parameter: a parameter is its tensor."""
    if not isinstance(data, _Tensor):
        raise _Malformed(f"a parameter is rebuilt from {type(data).__name__}, not from a tensor")
    return data


def _first(value: Any, *_: Any) -> Any:
    """Stands for torch.jit._pickle's list builders and restore_type_tag: the value itself."""
    return value


def _device(name: Any) -> Any:
    return name


# (module, name) -> what it resolves to. Nothing here runs code of the archive's choosing.
_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "device"): _device,
    **{
        ("torch.jit._pickle", name): _first
        for name in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag")
    },
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, byteorder: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._root = root
        self._byteorder = byteorder
        self._classes: dict[str, type[_ScriptObject]] = {}
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return self._classes[qualname]
        if module == "torch" and re.fullmatch(r"[A-Za-z0-9_]+Storage", name):
            return _StorageType(name, _STORAGE_DTYPES.get(name))
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and _is_int(pid[4])
            and pid[4] >= 0
        ):
            raise _Malformed(f"data.pkl has a persistent id {_short(pid)}, not ('storage', type, key, device, size)")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        entry = f"{self._root}data/{key}"
        if entry not in self._storages:
            self._storages[entry] = self._read_storage(entry, storage_type, numel)
        storage = self._storages[entry]
        if storage.type != storage_type or (storage.values is not None and storage.values.size < numel):
            raise _Malformed(f"storage {entry} is named with two types or sizes")
        return storage

    def _read_storage(self, entry: str, storage_type: _StorageType, numel: int) -> _Storage:
        if storage_type.dtype is None:
            return _Storage(entry, storage_type, None)
        try:
            data = self._archive.read(entry)
        except KeyError:
            raise _Malformed(f"data.pkl names storage {entry}, which the archive lacks") from None
        dtype = np.dtype(storage_type.dtype).newbyteorder("<" if self._byteorder == "little" else ">")
        if len(data) < numel * dtype.itemsize:
            raise _Malformed(
                f"storage {entry} holds {len(data)} bytes; data.pkl says {numel} {storage_type.name} elements "
                f"({numel * dtype.itemsize} bytes)"
            )
        return _Storage(entry, storage_type, np.frombuffer(data, dtype, count=numel))


@dataclasses.dataclass(frozen=True)
class _Declaration:
    """A module class's state-dict attributes, as its TorchScript source declares them."""

    parameters: tuple[str, ...]
    buffers: tuple[str, ...]


_CLASS_LINE = re.compile(r"class\s+([A-Za-z_][A-Za-z0-9_]*)\s*[(:]")
_LIST_LINE = re.compile(r"\s+__(parameters|buffers)__\s*=\s*\[(.*)\]\s*")
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")


def _declarations(archive: zipfile.ZipFile, root: str) -> dict[str, _Declaration | None]:
    """qualname -> the class's parameters and buffers (None: a class that is not a module), read
    as text from <root>/code/**.py: the file code/__torch__/a/b.py defines the classes
    __torch__.a.b.<Name>. Classes without source are not in the result."""
    found: dict[str, _Declaration | None] = {}
    prefix = f"{root}code/"
    for entry in archive.namelist():
        if not (entry.startswith(prefix) and entry.endswith(".py")):
            continue
        module = entry[len(prefix) : -len(".py")].replace("/", ".")
        lists: dict[str, dict[str, tuple[str, ...]]] = {}
        current = None
        for line in archive.read(entry).decode("utf-8", errors="replace").splitlines():
            if match := _CLASS_LINE.match(line):
                current = f"{module}.{match.group(1)}"
                lists[current] = {}
            elif current is not None and (match := _LIST_LINE.fullmatch(line)):
                lists[current][match.group(1)] = tuple(a or b for a, b in _QUOTED.findall(match.group(2)))
        for qualname, declared in lists.items():
            is_module = "parameters" in declared or "buffers" in declared
            found[qualname] = (
                _Declaration(declared.get("parameters", ()), declared.get("buffers", ())) if is_module else None
            )
    return found


def _state_dict(root: Any, declarations: dict[str, _Declaration | None]) -> dict[str, np.ndarray]:
    """The module tree flattened as ``state_dict()`` flattens it: each module's parameters, then
    its buffers, then its sub-modules' entries under "<attribute>."."""
    if not isinstance(root, _ScriptObject):
        raise _Malformed(f"data.pkl holds {type(root).__name__}, not a TorchScript module")
    out: dict[str, np.ndarray] = {}
    on_path: set[int] = set()

    def visit(obj: _ScriptObject, prefix: str) -> None:
        if id(obj) in on_path:
            raise _Malformed(f"module {prefix[:-1]} contains itself")
        state = obj.state
        if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
            raise _Malformed(
                f"module {prefix[:-1] or '(root)'} of class {obj.qualname} has a custom state "
                f"({type(state).__name__}), not an attribute dict: packed or quantized weights are not supported"
            )
        if obj.qualname in declarations:
            declared = declarations[obj.qualname]
            if declared is None:  # a TorchScript class that is not a module: no state-dict entries
                return
            names = [*declared.parameters, *declared.buffers]
        else:  # no source for the class: every tensor attribute counts
            names = [k for k, v in state.items() if isinstance(v, _Tensor)]
        for name in names:
            value = state.get(name)
            if value is None:  # an Optional parameter (e.g. a bias) that is None: not in state_dict
                continue
            key = prefix + name
            if not (isinstance(value, _Tensor) and isinstance(value.array, np.ndarray | None)):
                raise _Malformed(f"'{key}' is declared a parameter or buffer but holds {type(value).__name__}")
            if value.array is None:
                raise _Malformed(f"'{key}' is a tensor of {value.type.name}; weights are float or integer tensors")
            out[key] = _as_output(value.array, value.type.name)
        on_path.add(id(obj))
        for name, value in state.items():
            if isinstance(value, _ScriptObject):
                visit(value, f"{prefix}{name}.")
        on_path.discard(id(obj))

    visit(root, "")
    return out


def _as_output(array: np.ndarray, type_name: str) -> np.ndarray:
    """Floats as float32 (as the other readers give them), integers and booleans as they are, in
    native byte order."""
    if type_name == "BFloat16Storage":
        return (array.astype(np.uint32) << 16).view(np.float32)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    return array.astype(array.dtype.newbyteorder("="))


def _archive_root(archive: zipfile.ZipFile) -> str:
    roots = [n[: -len("data.pkl")] for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
    if len(roots) != 1:
        raise _Malformed(f"it has {len(roots)} <root>/data.pkl entries, not one")
    return roots[0]


def _is_torchscript_names(names: list[str]) -> bool:
    return any(re.fullmatch(r"[^/]+/(constants\.pkl|code/.*)", n) for n in names)


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a zip laid out as torch.jit.save writes (a <root>/code/ folder or a
    <root>/constants.pkl): reads the zip's directory only. False for anything else, damaged or not."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return _is_torchscript_names(archive.namelist())
    except Exception:  # a damaged zip directory: not recognised here, the torch reader reports it
        return False


def read_torchscript_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The parameters and buffers of the TorchScript module saved at ``path``, under the names its
    ``state_dict()`` gives (e.g. ``visual.conv1.weight``, ``logit_scale``, ``attn_mask``): floats as
    float32, integers as they are. Nothing in the archive runs; anything malformed, or a global
    outside the tensor-rebuilding set, is an InputError naming the file."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            root = _archive_root(archive)
            byteorder = "little"
            if f"{root}byteorder" in archive.namelist():
                byteorder = archive.read(f"{root}byteorder").decode("ascii", errors="replace").strip()
                if byteorder not in ("little", "big"):
                    raise _Malformed(f"its byteorder entry says {byteorder[:20]!r}")
            unpickler = _Unpickler(archive.read(f"{root}data.pkl"), archive, root, byteorder)
            tree = unpickler.load()
            tensors = _state_dict(tree, _declarations(archive, root))
    except _Refused as e:
        raise InputError(
            f"refusing {path}: its data.pkl names the global {e}, which TorchScript weights have no use for "
            "(nothing was run)"
        ) from None
    except _Malformed as e:
        raise InputError(f"cannot read {path} as a TorchScript archive: {e}") from None
    except InputError:
        raise
    except Exception as e:  # damaged zips and pickles raise many kinds of errors; each is one line here
        raise InputError(f"cannot read {path} as a TorchScript archive ({_one_line(e)})") from None
    if not tensors:
        raise InputError(f"{path}: the TorchScript archive holds no parameters or buffers")
    return tensors


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_ints(values: Any) -> bool:
    return isinstance(values, tuple | list) and all(_is_int(v) for v in values)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__
