"""The package's shape: imports point one way (no cycle, counting imports inside functions),
the library never imports the command line, and importing it changes no process-wide state."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "stylejax"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set) -> set:
    """The stylejax modules ``path`` imports anywhere (top level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # `from stylejax.cpu import kernels` imports the package stylejax.cpu (its
            # __init__ runs first) and the submodule stylejax.cpu.kernels.
            targets = [base] + [f"{base}.{a.name}" for a in node.names
                                if f"{base}.{a.name}" in modules]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = _imports(path, set(files))
    return graph


def _cycle(graph: dict):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def is_cli(module: str) -> bool:
    """``stylejax.cli`` or a module in it (not ``stylejax.clip``)."""
    return module == "stylejax.cli" or module.startswith("stylejax.cli.")


def test_the_cycle_finder_finds_a_cycle():
    """The check below can fail: a made-up graph with a cycle through a function-local
    import (a -> b -> c -> a) is caught."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package():
    """The top-level `stylejax/__init__` re-exports the API and is left out (every module
    is imported through it by Python, but none imports it)."""
    graph = {k: v - {"stylejax"} for k, v in _graph().items() if k != "stylejax"}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_library_never_imports_the_command_line():
    graph = _graph()
    library = [m for m in graph if not is_cli(m)]
    offenders = {m: sorted(d for d in graph[m] if is_cli(d))
                 for m in library}
    assert not {m: d for m, d in offenders.items() if d}
    for m in library:  # nor argparse, signal handling or progress bars
        tree = ast.parse((PACKAGE.parent / (m.replace(".", "/") + ".py")).read_text()
                         if (PACKAGE.parent / (m.replace(".", "/") + ".py")).exists() else
                         (PACKAGE.parent / m.replace(".", "/") / "__init__.py").read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"argparse", "signal", "tqdm"}, (m, names)


def test_importing_stylejax_changes_no_process_wide_state():
    """`import stylejax` loads no CLI module and no tqdm, installs no warning filter, and
    leaves JAX's configuration alone; a stylize() call leaves glibc's malloc settings alone
    (`cpu.hostmem.keep_step_heap` is the command line's choice)."""
    code = (
        "import sys, warnings, jax\n"
        "filters = list(warnings.filters)\n"
        "cache = jax.config.jax_compilation_cache_dir\n"
        "import stylejax, stylejax.cpu.hostmem as h\n"
        "assert warnings.filters == filters, 'a warning filter was installed'\n"
        "assert jax.config.jax_compilation_cache_dir == cache\n"
        "assert not [m for m in sys.modules if m == 'stylejax.cli' or m.startswith(('stylejax.cli.', 'tqdm'))]\n"
        "assert h.keep_step_heap.cache_info().currsize == 0\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_no_function_local_stylejax_imports():
    """An import inside a function to dodge a cycle means the layering is wrong."""
    local = []
    for path in PACKAGE.rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                            "stylejax") or isinstance(node, ast.Import) and any(
                            a.name.startswith("stylejax") for a in node.names):
                        local.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not local, local
