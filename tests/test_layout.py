"""The package layout: imports go one way (tools -> quality -> patching -> ops -> kernels), with no cycle.

The graph is read statically from every ``import`` of every module (function-level imports included; imports under
``if TYPE_CHECKING:`` are annotations only and excluded), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "na_accel"

# layer -> the na_accel subpackages it may import (besides itself); the top level (__init__, errors) is allowed to all
ALLOWED = {
    "kernels": set(),
    "ops": {"kernels"},
    "patching": {"ops"},
    "quality": {"patching", "ops", "tiny"},
    "tiny": {"patching", "ops"},
    "tools": {"quality", "patching", "ops", "kernels", "tiny"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """Absolute names of the na_accel modules ``path`` imports (anywhere but under ``if TYPE_CHECKING``)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("na_accel"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("na_accel"):
                for a in node.names:  # `from . import x` may name a submodule
                    sub = f"{target}.{a.name}"
                    found.add(sub if _exists(sub) else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(module)
    return found


def _exists(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                dfs(dep)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            dfs(node)


def test_layers_import_one_way():
    bad = []
    for module, deps in _graph().items():
        layer = _layer(module)
        if layer is None:
            continue
        for dep in deps:
            dep_layer = _layer(dep)
            if dep_layer is not None and dep_layer != layer and dep_layer not in ALLOWED[layer]:
                bad.append(f"{module} imports {dep}")
    assert not bad, "imports against the layer order: " + "; ".join(sorted(bad))


def test_kernels_import_only_torch_triton_and_themselves():
    for path in (ROOT / "kernels").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for name in names:
                if name.startswith("na_accel.kernels"):
                    continue
                top = name.split(".")[0]
                assert top in {"torch", "triton", "__future__", "copy", "math", "os", "functools", "dataclasses",
                               "typing", "collections", "itertools"}, f"{path.name} imports {name}"  # fmt: skip


def test_graph_sees_lazy_and_relative_imports(tmp_path):
    """The checker must be able to fail: function-level and relative imports are edges, TYPE_CHECKING ones not."""
    graph = _graph()
    assert "na_accel.patching.api" in graph["na_accel.quality.compare"]  # module level, relative
    assert "na_accel.kernels.gna_gluon" in graph["na_accel.ops.triton"] or any(
        d.startswith("na_accel.kernels.") and d != "na_accel.kernels" for d in graph["na_accel.ops.triton"]
    )  # function level, relative
    assert "na_accel.patching.plan" not in graph["na_accel.patching.intercept"]  # TYPE_CHECKING only


@pytest.mark.parametrize("name", ["patch", "unpatch", "patched", "is_patched", "PatchHandle", "na1d", "na2d", "na3d",
                                  "na_flat", "na_joint", "load_config", "list_presets", "NAConfig",
                                  "AlreadyPatchedError", "InputError", "NAAccelError", "ConfigError", "ShapeError",
                                  "UnsupportedModelError", "BackendUnavailableError"])  # fmt: skip
def test_public_names(name):
    import na_accel

    assert getattr(na_accel, name) is not None
    assert name in na_accel.__all__


def test_errors_are_one_hierarchy():
    import na_accel
    from na_accel import errors

    for name in ("AlreadyPatchedError", "InputError", "ConfigError", "ShapeError", "UnsupportedModelError",
                 "BackendUnavailableError"):  # fmt: skip
        cls = getattr(errors, cls_name := name)
        assert issubclass(cls, na_accel.NAAccelError), cls_name
        assert getattr(na_accel, name) is cls
    assert importlib.import_module("na_accel.patching.api").AlreadyPatchedError is errors.AlreadyPatchedError
