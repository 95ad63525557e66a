"""The shape of the code, read from its source with ``ast``: no import circles between the
modules of daemon/ and engines/, and a runtime package (engines/runtime, what the engine worker
runs under another interpreter) that imports nothing from birdd and keeps to Python 3.6.

Every import counts: module level or inside a function, ``import x``, ``from x import y``,
relative imports, and ``__import__("x")`` / ``importlib.import_module("x")`` calls.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"daemon": "birdd.daemon", "engines": "birdd.engines"}
RUNTIME = REPO / "engines" / "runtime"
RUNTIME_LIBRARIES = {
    "numpy",
    "ai_edge_litert",
    "tflite_runtime",
    "onnxruntime",
    "tensorrt",
    "pycuda",
}
DYNAMIC_IMPORTS = {"__import__", "import_module"}

Import = Tuple[str, int, Optional[str]]  # (module or "" for a dynamic one, level, imported name)


def module_files() -> Dict[str, Path]:
    """Every module of daemon/ and engines/ by the name it is imported as."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def imports_in(path: Path) -> Iterator[Tuple[int, Import]]:
    """(line, import) for every import statement and dynamic import call in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, (alias.name, 0, None)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                yield node.lineno, (node.module or "", node.level, alias.name)
        elif isinstance(node, ast.Call) and called_name(node.func) in DYNAMIC_IMPORTS:
            argument = node.args[0] if node.args else None
            literal = isinstance(argument, ast.Constant) and isinstance(argument.value, str)
            yield node.lineno, (argument.value if literal else "", 0, None)


def called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def absolute(module: str, level: int, importer: str, is_package: bool) -> str:
    """The absolute name of a (possibly relative) import made in module ``importer``."""
    if not level:
        return module
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def import_graph() -> Dict[str, Set[str]]:
    modules = module_files()
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for _, (module, level, imported) in imports_in(path):
            target = absolute(module, level, name, path.name == "__init__.py")
            submodule = f"{target}.{imported}" if imported else ""
            if submodule in modules:
                graph[name].add(submodule)
            elif target in modules:
                graph[name].add(target)
        graph[name].discard(name)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_resolves_relative_and_function_level_imports():
    graph = import_graph()
    worker = graph["birdd.engines.runtime.worker_main"]
    assert "birdd.engines.runtime.frames" in worker  # module level, relative
    assert "birdd.engines.runtime.cpu_models" in worker  # inside a method, relative
    assert "birdd.engines.runtime.errors" in graph["birdd.engines.errors"]  # absolute


def test_no_import_circles_in_daemon_and_engines():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" ↔ ".join(c) for c in found)


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text("import second\n")
    second.write_text("def late():\n    __import__('first')\n")
    graph = {"first": {"second"}, "second": set()}
    for _, (module, _, _) in imports_in(second):
        graph["second"].add(module)
    assert cycles(graph) == [["first", "second"]]


def runtime_import_problems(path: Path) -> List[str]:
    allowed = set(sys.stdlib_module_names) | RUNTIME_LIBRARIES
    problems = []
    for line, (module, level, _) in imports_in(path):
        where = f"{path.name}:{line}"
        if level > 1:
            problems.append(f"{where}: relative import outside the runtime package")
        elif level == 0 and not module:
            problems.append(f"{where}: a dynamic import whose module the check cannot read")
        elif level == 0 and (module.split(".")[0] not in allowed or module == "__future__"):
            problems.append(f"{where}: imports {module}")
    return problems


def test_the_runtime_package_imports_nothing_from_birdd():
    files = sorted(RUNTIME.glob("*.py"))
    assert {path.name for path in files} >= {"__main__.py", "worker_main.py", "cpu_models.py"}
    problems = [problem for path in files for problem in runtime_import_problems(path)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("import birdd.engines.base\n", "imports birdd.engines.base"),
        ("from birdd.engines import errors\n", "imports birdd.engines"),
        ("from .. import errors\n", "relative import outside"),
        ("def f():\n    import pydantic\n", "imports pydantic"),
        ("x = __import__('birdd')\n", "imports birdd"),
        ("import importlib\nimportlib.import_module('yaml')\n", "imports yaml"),
        ("name = 'birdd'\n__import__(name)\n", "dynamic import"),
        ("from __future__ import annotations\n", "imports __future__"),
    ],
)
def test_the_runtime_import_check_catches(tmp_path, source, problem):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert any(problem in line for line in runtime_import_problems(path))


def test_the_runtime_package_parses_as_python_3_6():
    for path in sorted(RUNTIME.glob("*.py")):
        ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 6))


def test_the_runtime_package_runs_on_python_3_6():
    pytest.importorskip("vermin")
    vermin = "import sys, vermin; sys.exit(vermin.main())"
    flags = ["--target=3.6-", "--no-tips", "--violations"]
    result = subprocess.run(
        [sys.executable, "-c", vermin, *flags, str(RUNTIME)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
