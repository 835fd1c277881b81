"""The structure the project promises (docs/architecture.md), checked on the source:

- ``mptcp_proxy/core/`` is sans-I/O: it imports no socket, clock, RNG, OS, threading or
  logging module;
- no module reaches into another object's ``_private`` members;
- modules stay under 700 lines, and functions of the core under 80.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "mptcp_proxy"
CORE = PKG / "core"
IO_MODULES = {"socket", "time", "random", "os", "logging", "threading", "asyncio", "secrets",
              "subprocess", "select", "signal", "datetime", "pathlib", "io", "sys"}
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}  # public despite the underscore
MAX_MODULE_LINES = 700
MAX_CORE_FUNCTION_LINES = 80


def _modules(root: Path):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", _modules(CORE), ids=lambda p: p.name)
def test_core_is_sans_io(path):
    bad = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in IO_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in IO_MODULES:
                bad.append(node.module)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("open", "print", "input", "__import__"):
            bad.append(node.func.id + "()")
    assert not bad, f"{path.name} uses I/O, clock, randomness or logging: {bad}"


def _private_uses(path: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls`` (a dunder is not private)."""
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__") and node.attr not in NAMEDTUPLE_API:
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            out.append(f"{path.name}:{node.lineno} .{node.attr}")
    return out


def test_no_calls_into_other_objects_private_members():
    bad = [u for p in _modules(PKG) for u in _private_uses(p)]
    assert not bad, "reaching into another object's _private members:\n" + "\n".join(bad)


def test_the_private_check_finds_a_violation(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f(driver, t):\n    driver._after()\n    self._ok = t._replace(a=1)\n")
    assert _private_uses(p) == ["m.py:2 ._after"]


@pytest.mark.parametrize("path", _modules(PKG), ids=lambda p: str(p.relative_to(PKG)))
def test_module_size(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.name}: {n} lines (split it by concept)"


@pytest.mark.parametrize("path", _modules(CORE), ids=lambda p: p.name)
def test_core_functions_are_short(path):
    long = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_CORE_FUNCTION_LINES:
                long.append(f"{node.name} ({n} lines)")
    assert not long, f"{path.name}: functions over {MAX_CORE_FUNCTION_LINES} lines: {long}"
