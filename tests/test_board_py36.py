"""atlas/board/ runs on the board's Python (3.6 or 3.7.5) with the standard library, numpy and acl only."""
from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BOARD = Path(__file__).resolve().parents[1] / "atlas" / "board"
BOARD_FILES = sorted(BOARD.glob("*.py"))
SIBLINGS = {path.stem for path in BOARD_FILES}
ALLOWED_THIRD_PARTY = {"numpy", "acl"}
# standard-library modules the board's Python does not have yet (added in 3.7 or later)
NEWER_STDLIB = {"dataclasses", "contextvars", "graphlib", "zoneinfo", "tomllib", "_pydecimal"}
NEWER_SUBMODULES = {"importlib.resources", "importlib.metadata"}
# ast.parse's oldest accepted feature_version moved to (3, 7) in Python 3.13
FEATURE_VERSION = (3, 6) if sys.version_info < (3, 13) else (3, 7)
RUNTIME_GENERIC_NAMES = {"list", "dict", "set", "tuple", "frozenset", "type"}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=FEATURE_VERSION)


def old_interpreters() -> list[str]:
    """Real Python 3.6 / 3.7 interpreters on this machine (PATH or pyenv), to compile with their own parser."""
    found = [shutil.which(name) for name in ("python3.6", "python3.7")]
    found = [path for path in found if path and "/shims/" not in path]  # pyenv shims fail unless selected
    found += glob.glob(os.path.expanduser("~/.pyenv/versions/3.[67].*/bin/python3.[67]"))
    return sorted(set(found))


def test_board_folder_has_the_app_at_most_three_helpers_and_the_preflight():
    assert (BOARD / "infer.py").exists() and (BOARD / "preflight.py").exists()
    tools = ("__init__.py", "preflight.py", "delta.py")  # delta.py: deploy's model-update tool, not the app's
    assert len([path for path in BOARD_FILES if path.name not in tools]) <= 5  # + dvpp_images.py: --images; profiling.py: --profile


@pytest.mark.parametrize("path", BOARD_FILES, ids=lambda p: p.name)
def test_parses_with_the_python_36_grammar(path):
    parse(path)


@pytest.mark.parametrize("path", BOARD_FILES, ids=lambda p: p.name)
def test_uses_nothing_newer_than_python_36(path):
    tree = parse(path)
    for node in ast.walk(tree):
        assert not isinstance(node, ast.NamedExpr), f"{path.name}:{node.lineno}: walrus (3.8)"
        assert not isinstance(node, ast.Match), f"{path.name}:{node.lineno}: match (3.10)"
        if isinstance(node, ast.ImportFrom):
            assert node.module != "__future__" or all(a.name != "annotations" for a in node.names), \
                f"{path.name}:{node.lineno}: from __future__ import annotations (3.7)"
        if isinstance(node, (ast.FunctionDef, ast.arg, ast.AnnAssign)):
            annotations = [getattr(node, "returns", None), getattr(node, "annotation", None)]
            for annotation in filter(None, annotations):
                for part in ast.walk(annotation):
                    assert not (isinstance(part, ast.Subscript) and isinstance(part.value, ast.Name)
                                and part.value.id in RUNTIME_GENERIC_NAMES), \
                        f"{path.name}:{node.lineno}: {part.value.id}[...] annotation fails at run time before 3.9"
                    assert not (isinstance(part, ast.BinOp) and isinstance(part.op, ast.BitOr)), \
                        f"{path.name}:{node.lineno}: X | Y annotation fails at run time before 3.10"
        if isinstance(node, ast.FunctionDef):
            assert not node.args.posonlyargs, f"{path.name}:{node.lineno}: positional-only parameters (3.8)"
    source = path.read_text(encoding="utf-8")
    assert "=}" not in source, f"{path.name}: f-string '=' specifier (3.8), which the 3.6 grammar check misses"


@pytest.mark.parametrize("path", BOARD_FILES, ids=lambda p: p.name)
def test_imports_only_stdlib_numpy_acl_and_siblings(path):
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}:{node.lineno}: relative import (the app runs as a script)"
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert name not in NEWER_SUBMODULES and top not in NEWER_STDLIB, \
                f"{path.name}:{node.lineno}: {name} is not in Python 3.6"
            assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY or top in SIBLINGS, \
                f"{path.name}:{node.lineno}: imports {name}: the board has only the stdlib, numpy and acl"
            assert top != "atlas", f"{path.name}:{node.lineno}: the board has no atlas package"


def test_a_forbidden_import_would_be_caught(tmp_path, monkeypatch):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n")
    with pytest.raises(AssertionError, match="the board has only"):
        test_imports_only_stdlib_numpy_acl_and_siblings(bad)
    bad.write_text("from dataclasses import dataclass\n")
    with pytest.raises(AssertionError, match="not in Python 3.6"):
        test_imports_only_stdlib_numpy_acl_and_siblings(bad)
    bad.write_text("def f(x: list[int]):\n    return x\n")
    with pytest.raises(AssertionError, match="fails at run time"):
        test_uses_nothing_newer_than_python_36(bad)


@pytest.mark.parametrize("interpreter", old_interpreters() or [None])
def test_compiles_with_a_real_old_interpreter(interpreter, tmp_path):
    if interpreter is None:
        pytest.skip("no Python 3.6/3.7 interpreter on this machine (PATH or ~/.pyenv); the AST checks still ran")
    script = ("import sys\n"
              "for path in sys.argv[1:]:\n"
              "    compile(open(path, encoding='utf-8').read(), path, 'exec')\n")
    proc = subprocess.run([interpreter, "-c", script, *map(str, BOARD_FILES)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
