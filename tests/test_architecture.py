"""The project's structure rules, checked on the source with ``ast`` (nothing of ours is
imported, so this runs in well under a second).

1. Layers (README's Layout section): entry scripts on top, then the engine, then the libraries,
   then a ground of utilities. A module imports project modules only of a lower layer or of
   its own folder; the layer-1 folders do not import each other. Entry scripts may use each
   other's command lines (``scripts/benchmark.py`` times what ``train_student.py`` resolves).
2. No function body imports a project module: what a module depends on is in its header.
   (Lazy imports of heavy third-party libraries are allowed.)
3. No function or method longer than 60 lines.
4. No ``getattr(opt, "name", default)``: options are typed data with every field present, so a
   default read this way hides a missing or misspelt option.

Each failure lists every offender as ``file:line name``.
"""
from __future__ import annotations

import ast
import functools
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Top-level folder or module -> layer. Entry scripts 3, engine 2, libraries 1, utilities 0.
ENTRY = 3  # the entry scripts' layer
LAYERS = {
    "train_student": 3, "train_teacher": 3, "convert": 3, "validation": 3, "scripts": 3,
    "engine": 2,
    "models": 1, "distiller_zoo": 1, "dataset": 1,
    "helper": 0,
}
PROJECT = frozenset(LAYERS)
MAX_FUNCTION_LINES = 60
#: ``getattr(<these>, "name", default)`` is rule 4's pattern.
OPTION_OBJECTS = ("opt", "args", "self.opt")


def _unit(path: str) -> str:
    """The top-level folder, or the module name of a top-level file, that ``path`` belongs to."""
    top = path.split("/")[0]
    return top[:-3] if top.endswith(".py") else top


@functools.lru_cache(maxsize=None)
def project_files() -> tuple[str, ...]:
    """Every Python file of the project outside tests/, relative to the root, '/'-separated."""
    out = []
    for name in sorted(os.listdir(ROOT)):
        full = os.path.join(ROOT, name)
        if name.endswith(".py") and os.path.isfile(full):
            out.append(name)
        elif os.path.isdir(full) and name in PROJECT:
            for folder, dirs, files in os.walk(full):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
                rel = os.path.relpath(folder, ROOT).replace(os.sep, "/")
                out += [f"{rel}/{f}" for f in sorted(files) if f.endswith(".py")]
    return tuple(out)


@functools.lru_cache(maxsize=None)
def parse(path: str) -> ast.Module:
    with open(os.path.join(ROOT, path), encoding="utf-8") as fh:
        return ast.parse(fh.read(), filename=path)


def _package(path: str) -> list[str]:
    """The package a file's relative imports start from: ``models/rep_blocks/blocks.py`` ->
    ``['models', 'rep_blocks']``."""
    return path[:-3].split("/")[:-1]


def imported_modules(node: ast.AST, path: str) -> list[str]:
    """The absolute names of the modules an import statement imports (relative imports resolved
    against the file's own package); [] for any other node."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0:
        return [node.module] if node.module else []
    package = _package(path)
    base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
    if not base:  # a relative import from a top-level file (or above the root): its own unit
        base = [_unit(path)]
    return [".".join(base + ([node.module] if node.module else []))]


def _dynamic_import(node: ast.AST) -> str | None:
    """``importlib.import_module("x.y")`` / ``__import__("x")`` with a constant name."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func, first = node.func, node.args[0]
    named = (isinstance(func, ast.Name) and func.id in ("__import__", "import_module")) or \
        (isinstance(func, ast.Attribute) and func.attr == "import_module")
    if named and isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def _project_top(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in PROJECT else None


def _functions(tree: ast.AST):
    return (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _report(rule: str, offenders: list[str]) -> str:
    return f"{rule}: {len(offenders)} offender(s)\n  " + "\n  ".join(offenders)


def test_project_files_found():
    """Guard for the rules below: they see the whole project, every file in a layer."""
    files = project_files()
    assert {_unit(p) for p in files} >= {"train_student", "engine", "models", "helper"}
    unplaced = [p for p in files if _unit(p) not in LAYERS]
    assert not unplaced, _report("top-level modules without a layer (add them to LAYERS)",
                                 unplaced)


def test_imports_go_down_the_layers():
    offenders = []
    for path in project_files():
        unit = _unit(path)
        layer = LAYERS.get(unit)
        if layer is None:
            continue
        for node in ast.walk(parse(path)):
            for module in imported_modules(node, path):
                top = _project_top(module)
                if top is None or top == unit or LAYERS[top] < layer or LAYERS[top] == layer == ENTRY:
                    continue
                offenders.append(f"{path}:{node.lineno} {module} (layer {LAYERS[top]} "
                                 f"imported from layer {layer})")
    assert not offenders, _report("imports of a project module of the same or a higher layer "
                                  "(allowed: lower layers and the own folder)", offenders)


def _in_functions(node: ast.AST, func: str | None = None):
    """``(node, name of the innermost enclosing function or None)`` for every node below."""
    for child in ast.iter_child_nodes(node):
        yield child, func
        inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
        yield from _in_functions(child, inner)


def test_no_project_imports_inside_functions():
    offenders = []
    for path in project_files():
        for node, func in _in_functions(parse(path)):
            if func is None:
                continue
            dynamic = _dynamic_import(node)
            for module in [dynamic] if dynamic is not None else imported_modules(node, path):
                if _project_top(module) is not None:
                    offenders.append(f"{path}:{node.lineno} {module} (in {func})")
    assert not offenders, _report("project modules imported inside a function body "
                                  "(import them at the top of the module)", offenders)


def test_functions_are_short():
    offenders = []
    for path in project_files():
        for func in _functions(parse(path)):
            length = func.end_lineno - func.lineno + 1  # the def line on: decorators excluded
            if length > MAX_FUNCTION_LINES:
                offenders.append(f"{path}:{func.lineno} {func.name} ({length} lines)")
    assert not offenders, _report(f"functions longer than {MAX_FUNCTION_LINES} lines", offenders)


def _option_object(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name) and node.id in OPTION_OBJECTS:
        return node.id
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and f"{node.value.id}.{node.attr}" in OPTION_OBJECTS):
        return f"{node.value.id}.{node.attr}"
    return None


def test_no_getattr_defaults_on_options():
    offenders = []
    for path in project_files():
        for node in ast.walk(parse(path)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "getattr" and len(node.args) == 3):
                continue
            owner = _option_object(node.args[0])
            if owner is None:
                continue
            name = node.args[1]
            label = repr(name.value) if isinstance(name, ast.Constant) else ast.unparse(name)
            offenders.append(f"{path}:{node.lineno} getattr({owner}, {label}, ...)")
    assert not offenders, _report("getattr with a default on the options (read the field; "
                                  "give it a default in the options instead)", offenders)


@pytest.mark.parametrize("source, path, expected", [
    ("import helper.util", "engine/fit.py", ["helper.util"]),
    ("from . import kd", "distiller_zoo/methods/x.py", ["distiller_zoo.methods"]),
    ("from .. import fusion", "models/rep_blocks/blocks.py", ["models"]),
    ("from .fusion import f", "convert.py", ["convert.fusion"]),
    ("from .blocks import A", "models/rep_blocks/__init__.py", ["models.rep_blocks.blocks"]),
    ("from models import x", "scripts/a.py", ["models"]),
])
def test_import_resolution(source, path, expected):
    """The rules' own import resolution: absolute, and relative to the file's package."""
    assert imported_modules(ast.parse(source).body[0], path) == expected
