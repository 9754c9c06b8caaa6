"""The package's layers: each module imports alone, and no layer imports one above it.

The layers, bottom first (a unit is a top-level module of ``glimp_graph`` or a subpackage as a whole):

    errors < entropy, prompts < endpoints (the client) < scorers < state, config < nodes < graph < eval < faces

A unit imports itself and the layers below its own, never one above (a cycle needs an edge that points up); the
faces (``cli``, ``router_server``) may also import each other. ``serving`` is a separate leaf: it imports only
``errors``, and only the faces import it. No module imports the package root (``glimp_graph/__init__.py``, the
public names), which sits on top of everything.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = "glimp_graph"
PACKAGE = Path(__file__).resolve().parents[2] / ROOT

LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("entropy", "prompts", "tool_calls"),
    ("endpoints",),
    ("scorers",),
    ("state", "config"),
    ("nodes",),
    ("graph", "persistence"),
    ("eval",),
    ("cli", "router_server", "chat_model", "middleware", "metrics"),  # the faces
]
FACES = LAYERS[-1]
SERVING = "serving"
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    """``glimp_graph/nodes/probe.py`` -> ``glimp_graph.nodes.probe`` (a package's ``__init__`` names the package)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package by its dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def unit_of(module: str) -> str:
    """The layer unit of a module: the first name below the package root (``""`` for the root itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported_modules(module: str, source: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """The ``glimp_graph`` modules that ``source`` imports anywhere (in functions and under TYPE_CHECKING too)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                anchor = module.split(".")[: len(module.split(".")) - node.level + int(is_package)]
                base = ".".join([*anchor, base] if base else anchor)
            if base == ROOT:  # ``from glimp_graph import errors`` imports the unit ``errors``, or a public name
                found += [(node.lineno, f"{ROOT}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == ROOT or name.startswith(ROOT + ".")]


def allowed(source_unit: str, target_unit: str) -> bool:
    """Whether a module of ``source_unit`` may import one of ``target_unit`` (see the module docstring)."""
    if source_unit == target_unit or source_unit == "":
        return True
    if target_unit not in RANK and target_unit != SERVING:
        return False  # the root, or a public name of it: the root sits above everything
    if source_unit not in RANK and source_unit != SERVING:
        return False  # a unit without a layer (test_every_unit_has_a_layer names it)
    if source_unit == SERVING:
        return target_unit == "errors"
    if target_unit == SERVING:
        return source_unit in FACES
    if source_unit in FACES and target_unit in FACES:
        return True
    return RANK[target_unit] < RANK[source_unit]


def violations(module: str, source: str, *, is_package: bool = False) -> list[str]:
    """Each import in ``source`` (the text of ``module``) that breaks the layering, as a readable line."""
    unit = unit_of(module)
    bad = []
    for line, target in imported_modules(module, source, is_package=is_package):
        target_unit = unit_of(target)
        if not allowed(unit, target_unit):
            bad.append(f"{module}:{line} imports {target} ({unit!r} may not import {target_unit or ROOT!r})")
    return bad


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(name) for name in package_modules()} - {""}
    unknown = sorted(units - set(RANK) - {SERVING})
    assert not unknown, f"put {unknown} in a layer of LAYERS in {Path(__file__).name}"


def test_no_layer_imports_a_layer_above_it() -> None:
    bad = [
        line
        for name, path in package_modules().items()
        for line in violations(name, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py")
    ]
    assert not bad, "imports that point up a layer:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        # the layout this test was written against: the client imported the settings and the state above it
        ("glimp_graph.endpoints", "from glimp_graph.state import Role, StepEnd", 1),
        ("glimp_graph.endpoints", "if TYPE_CHECKING:\n    from glimp_graph.config import Endpoint", 1),
        ("glimp_graph.scorers", "def f():\n    from glimp_graph.nodes import common", 1),
        ("glimp_graph.graph", "from glimp_graph import Endpoint", 1),
        ("glimp_graph.nodes.probe", "from . import common\nfrom ..scorers import StepContext", 0),
        ("glimp_graph.nodes.probe", "from ..graph import create_glimp_graph", 1),
        ("glimp_graph.serving.local", "from glimp_graph.config import Endpoint", 1),
        ("glimp_graph.graph", "from glimp_graph.serving import LocalModels", 1),
        ("glimp_graph.cli.ask", "from glimp_graph.serving import LocalModels\nimport glimp_graph.router_server", 0),
        ("glimp_graph.eval.runner", "from glimp_graph.cli import main", 1),
    ],
)
def test_the_checker_sees_an_import_that_points_up(module: str, source: str, expected: int) -> None:
    assert len(violations(module, source)) == expected, violations(module, source)


# Runs in a fresh interpreter: imports the third-party modules the package imports at module level, compiles the
# package's modules to byte code (in a temporary folder: nothing is imported, nothing is written next to the
# sources), then forks one child per module, as many at a time as there are CPUs; each child starts with no
# glimp_graph module loaded and imports its one module alone. (Forking from a warm parent instead of starting an
# interpreter per module keeps the test to seconds; what it checks, the package's own import order, is the same.
# The byte code only spares each child compiling the same sources again.)
_IMPORT_EACH = r"""
import atexit, importlib, importlib.util, os, py_compile, shutil, sys, tempfile, traceback
modules, preload, sources = sys.argv[1].split(","), sys.argv[2].split(","), sys.argv[3].split(",")
for name in preload:
    try:
        importlib.import_module(name)
    except Exception:
        pass
assert not any(m == "glimp_graph" or m.startswith("glimp_graph.") for m in sys.modules)
sys.pycache_prefix = tempfile.mkdtemp(prefix="glimp-layers-")
atexit.register(shutil.rmtree, sys.pycache_prefix, True)
sys.dont_write_bytecode = False
for source in sources:
    try:
        py_compile.compile(source, cfile=importlib.util.cache_from_source(source), doraise=True)
    except (py_compile.PyCompileError, OSError):
        pass  # the child that imports it reports the error
sys.dont_write_bytecode = True
importlib.invalidate_caches()


def child(name):
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            importlib.import_module(name)
        except BaseException:
            os.write(2, f"--- import {name} failed:\n{traceback.format_exc()}".encode())
            code = 1
        os._exit(code)
    return pid


failed, running, waiting = 0, set(), list(reversed(modules))
while waiting or running:
    while waiting and len(running) < (os.cpu_count() or 1):
        running.add(child(waiting.pop()))
    pid, status = os.wait()
    running.discard(pid)
    failed += status != 0
sys.exit(1 if failed else 0)
"""


def _third_party(modules: dict[str, Path]) -> list[str]:
    names = set()
    for path in modules.values():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    return sorted(n for n in names if n != ROOT and not n.startswith(ROOT + ".") and n != "__future__")


def test_each_module_imports_alone_in_a_fresh_interpreter() -> None:
    modules = {name: path for name, path in package_modules().items() if path.stem != "__main__"}
    cwd = PACKAGE.parent
    if hasattr(os, "fork"):
        sources = ",".join(str(path) for path in modules.values())
        run = [sys.executable, "-c", _IMPORT_EACH, ",".join(modules), ",".join(_third_party(modules)), sources]
        done = subprocess.run(run, cwd=cwd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-6000:]
        return
    failed = []
    for name in modules:  # no fork: one interpreter per module
        done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=cwd, capture_output=True, text=True)
        if done.returncode:
            failed.append(f"--- import {name} failed:\n{done.stderr[-2000:]}")
    assert not failed, "\n".join(failed)
