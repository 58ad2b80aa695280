"""Every public function and method of the jaxvlm package carries complete type annotations."""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _public(name: str) -> bool:
    return not name.startswith("_") or name in ("__init__", "__call__")


def _public_functions(tree: ast.Module) -> Iterator[tuple[Function, bool]]:
    """(function, is it a method): module-level functions and the methods of public module-level
    classes; nested functions and classes are not walked."""
    for node in tree.body:
        if isinstance(node, Function) and _public(node.name):
            yield node, False
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from ((item, True) for item in node.body if isinstance(item, Function) and _public(item.name))


def _missing(fn: Function, is_method: bool) -> list[str]:
    """The unannotated parameters of ``fn`` (self / cls aside), and "->" for a missing return type."""
    args = fn.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if is_method and params and params[0].arg in ("self", "cls"):
        params = params[1:]
    params += [a for a in (args.vararg, args.kwarg) if a is not None]
    missing = [p.arg for p in params if p.annotation is None]
    return missing + ["->"] if fn.returns is None and fn.name != "__init__" else missing


def test_public_functions_are_annotated() -> None:
    root = Path(importlib.util.find_spec("jaxvlm").origin).parent  # located, not imported: only sources are read
    # os.walk, not Path.rglob: before Python 3.13 rglob does not descend into the kernels / launch symlinks
    paths = sorted(Path(d, f) for d, _, files in os.walk(root, followlinks=True) for f in files if f.endswith(".py"))
    seen: set[Path] = set()
    problems = []
    for path in paths:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        for fn, is_method in _public_functions(ast.parse(path.read_text(), filename=str(path))):
            missing = _missing(fn, is_method)
            if missing:
                problems.append(f"{path.relative_to(root.parent)}:{fn.lineno} {fn.name}({', '.join(missing)})")
    assert not problems, f"{len(problems)} public functions lack annotations:\n" + "\n".join(problems)
