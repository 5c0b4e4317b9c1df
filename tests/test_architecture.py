"""The shape of the package, checked on every run: imports point down the layer order, modules
stay small enough to have one job, and no shared module asks for a task by its name.

Layer order (an import, a function-level import or a ``"module:name"`` string resolved at run
time may only point down or sideways)::

    cli -> training / export -> tasks / runs -> backbones / heads / layers / data / architectures /
    reports / evaluation / datasets -> registry / recipe / schema / choices / presets / task_configs
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tlmulti"
MAX_LINES = 450

RANKS = {
    # the bottom: data and declarations, no TensorFlow
    "errors": 0, "paths": 0, "registry": 0, "recipe": 0, "overrides": 0, "schema": 0, "choices": 0,
    "presets": 0, "task_configs": 0, "integrity": 0, "progress": 0,
    # what tasks are built from
    "backbones": 1, "heads": 1, "layers": 1, "data": 1, "architectures": 1, "reports": 1, "evaluation": 1,
    "datasets": 1, "synth": 1,
    # tasks declare, runs keep their folders
    "tasks": 2, "runs": 2,
    # the one trainer, and what works on finished runs
    "training": 3, "export": 3, "export_quality": 3,
    "cli": 4, "__main__": 5,
}
IMPORT_STRING = re.compile(r"\btlmulti(?:\.\w+)+(?=:)")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


MODULES = {module for _, module in _modules()}


def _rank(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the package's public API sits above everything
    if parts[1] not in RANKS:
        raise AssertionError(f"module {module} has no place in the layer order: add '{parts[1]}' to RANKS")
    return RANKS[parts[1]]


def _references(tree: ast.AST):
    """``(line, module, is_string)`` of every tlmulti import and import string in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tlmulti":
            submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            if submodules:  # from tlmulti.data import stacks
                for target in submodules:
                    yield node.lineno, target, False
            elif node.module != "tlmulti":
                yield node.lineno, node.module, False
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tlmulti" and alias.name != "tlmulti":
                    yield node.lineno, alias.name, False
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for found in IMPORT_STRING.findall(node.value):
                yield node.lineno, found, True


def test_imports_point_down_the_layer_order():
    upward = []
    for path, module in _modules():
        rank = _rank(module)
        if rank is None:
            continue
        for line, target, is_string in _references(ast.parse(path.read_text())):
            if target.startswith("tlmulti.presets") or (is_string and module.startswith("tlmulti.presets")):
                continue  # presets name implementations as data; their resolvers are checked below
            target_rank = _rank(target)
            if target_rank is not None and target_rank > rank:
                kind = "import string" if is_string else "import"
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} -> {target} ({kind})")
    assert not upward, "imports pointing up the layer order:\n" + "\n".join(upward)


def _resolved_from():
    """Each registry field that holds a ``"module:name"`` string, and the layer that resolves it."""
    from tlmulti import registry

    registry._ensure_builtins()
    for task in registry.list_tasks():
        yield f"task {task.name} implementation", task.implementation, RANKS["tasks"]
        yield f"task {task.name} data_config", task.data_config, RANKS["recipe"]
        yield f"task {task.name} head_config", task.head_config, RANKS["recipe"]
    for spec in registry.list_backbones():
        yield f"backbone {spec.name} builder", spec.builder, RANKS["backbones"]
        for key, value in (spec.options or {}).items():
            yield f"backbone {spec.name} options.{key}", value, RANKS["backbones"]
    for spec in registry.list_datasets():
        yield f"dataset {spec.name} builder", spec.builder, RANKS["datasets"]
    for spec in (registry.get_adaptation(n) for n in registry.adaptation_methods()):
        yield f"adaptation {spec.name} implementation", spec.implementation, RANKS["training"]


def test_registry_strings_point_at_or_below_their_resolver():
    upward = []
    for where, value, resolver in _resolved_from():
        if not isinstance(value, str) or not IMPORT_STRING.match(value):
            continue
        target = value.split(":")[0]
        if _rank(target) > resolver:
            upward.append(f"{where}: {value} is above the layer that resolves it")
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    """No two modules import each other (at module level or inside functions)."""
    edges = {}
    for path, module in _modules():
        edges[module] = {t for _, t, is_string in _references(ast.parse(path.read_text())) if not is_string}
    circles = sorted({tuple(sorted((a, b))) for a, targets in edges.items() for b in targets
                      if a != b and a in edges.get(b, ()) and not a.startswith(b + ".") and not b.startswith(a + ".")})
    assert not circles, f"modules importing each other: {circles}"


def test_modules_stay_small():
    large = [f"{p.relative_to(PACKAGE.parent)} ({n} lines)" for p, _ in _modules()
             if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not large, f"modules over {MAX_LINES} lines (split them along their seams): {large}"


def _task_names() -> set[str]:
    from tlmulti import registry

    registry._ensure_builtins()
    return {t.name for t in registry.list_tasks()}


def _names_task(node: ast.AST) -> bool:
    """True when ``node`` is the task's name or kind (``task``, ``recipe.task``, ``info["task"]``,
    ``(task or "").lower()``), not something asked of a task (``task.output_activation``)."""
    if isinstance(node, ast.Name):
        return "task" in node.id.lower()
    if isinstance(node, ast.Attribute):
        return "task" in node.attr.lower()
    if isinstance(node, ast.Subscript):
        key = node.slice
        return (isinstance(key, ast.Constant) and key.value == "task") or _names_task(node.value)
    if isinstance(node, ast.BoolOp):
        return any(_names_task(v) for v in node.values)
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute):
            return _names_task(node.func.value)
        if isinstance(node.func, ast.Name) and node.func.id in ("str", "repr"):
            return any(_names_task(a) for a in node.args)
    return False


def _strings(node: ast.AST) -> list[str]:
    return [s.value for s in ast.walk(node) if isinstance(s, ast.Constant) and isinstance(s.value, str)]


def _compares_task(node: ast.Compare, names: set[str]) -> bool:
    operands = [node.left, *node.comparators]
    strings = [s for op in operands for s in _strings(op)]
    return any(s in names for s in strings) or bool(strings and any(_names_task(op) for op in operands))


def test_shared_modules_never_compare_a_task_name():
    """Outside ``tasks/`` the task is asked (its methods), never named: no comparison of a task
    (``recipe.task``, ``info["task"]``) with a string, and no comparison with a registered task's name."""
    names = _task_names()
    found = []
    for path, module in _modules():
        if module.startswith("tlmulti.tasks"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and _compares_task(node, names):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "task names compared outside tasks/:\n" + "\n".join(found)


@pytest.mark.parametrize("sample, flagged", [
    ('recipe.task == "segmentation"', True), ('info["task"] in ("a", "b")', True), ('"segment" in task_name', True),
    ('(task or "").lower() == "x"', True), ('kind == "segmentation"', True), ('fmt == "tflite"', False),
    ('len(task.classes) == 2', False), ('getattr(task, "output_activation", "softmax") == "sigmoid"', False)])
def test_the_check_finds_task_comparisons(sample, flagged):
    node = next(n for n in ast.walk(ast.parse(sample)) if isinstance(n, ast.Compare))
    assert _compares_task(node, {"segmentation"}) is flagged
