"""How the tests are laid out: helpers live in helper modules, conftest.py files hold only
fixtures, hooks and the environment set-up, and no test module imports from a conftest or from
another test module (importing one runs its module-level set-up and couples the two files)."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def conftest_imports(path: Path, is_forbidden=lambda part: part == "conftest") -> list[str]:
    """The imports of ``path`` that name a conftest module (or a module part ``is_forbidden``
    accepts), as "line: statement"."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # `from . import conftest` names it among the imported names
            modules = [node.module or "", *(alias.name for alias in node.names)]
        else:
            continue
        if any(is_forbidden(part) for module in modules for part in module.split(".")):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_test_file_imports_from_a_conftest_module():
    offenders = {
        str(path.relative_to(TESTS)): found
        for path in sorted(TESTS.rglob("*.py"))
        if "__pycache__" not in path.parts and (found := conftest_imports(path))
    }
    assert not offenders, f"import helpers from helper modules, not conftest.py: {offenders}"


def test_the_check_finds_conftest_imports(tmp_path):
    path = tmp_path / "test_x.py"
    path.write_text(
        "import tests.conftest\nfrom tests.train.conftest import tiny_config\nfrom . import conftest\n"
        "def f():\n    from tests.data.conftest import tar_records\n"
        "from tests.train.runs import tiny_config\nimport conftest_like\n"
    )
    assert [line.split(":")[0] for line in conftest_imports(path)] == ["1", "2", "3", "5"]


def test_no_test_file_imports_from_another_test_module():
    is_test_module = lambda part: part.startswith("test_")
    offenders = {
        str(path.relative_to(TESTS)): found
        for path in sorted(TESTS.rglob("*.py"))
        if "__pycache__" not in path.parts and (found := conftest_imports(path, is_test_module))
    }
    assert not offenders, f"import helpers from helper modules, not test modules: {offenders}"
