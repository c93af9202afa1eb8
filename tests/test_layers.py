"""The package's layering, read from the code (AST), so that a change that breaks it fails here.

Layers, lowest first; a module imports only from its own layer or below (imports inside functions count too):

    registry, distributed < config < audio < data < encoders < runs < methods < training < evaluation
    < pseudo_labels < inference, export < cli

`sslsv.distributed` (process groups, the device resolver) and `sslsv.runs` (the run-directory layout) are the
top-level helpers that several layers share; each sits just below the lowest layer that uses it.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sslsv"

RANKS = {
    "registry": 0, "distributed": 0, "config": 1, "audio": 2, "data": 3, "encoders": 4, "runs": 5, "methods": 6,
    "training": 7, "evaluation": 8, "pseudo_labels": 9, "inference": 10, "export": 10, "cli": 11, "__main__": 11,
}


def package_modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imported_modules(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Package modules imported anywhere in the file (`from a import b` counts a.b when b is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            candidates = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                          for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None  # the package root itself (lazy `sslsv.load`) is not layered


def import_graph() -> dict[str, set[str]]:
    known = package_modules()
    return {name: imported_modules(path, name, known) for name, path in known.items()}


def test_every_package_module_has_a_layer():
    unknown = sorted(name for name in package_modules() if layer(name) is not None and layer(name) not in RANKS)
    assert not unknown, f"modules outside the layer order (add them to RANKS and to docs/design.md): {unknown}"


def test_imports_only_look_down():
    upward = []
    for name, imports in import_graph().items():
        if layer(name) is None:
            continue
        for target in imports:
            if layer(target) is not None and RANKS[layer(target)] > RANKS[layer(name)]:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = import_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_library_never_imports_the_command_line():
    offenders = [f"{name} -> {target}" for name, imports in import_graph().items()
                 if layer(name) not in ("cli", "__main__", None) for target in imports if layer(target) == "cli"]
    assert not offenders, offenders


def test_argparse_only_in_the_command_line():
    files = [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts[:1]]
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            if "argparse" in names:
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"argparse outside sslsv/cli/, train.py and evaluate.py: {offenders}"


RUN_FILE_NAMES = {"config.yml", "checkpoints", "model.pt", "model_avg.pt", "model_best.pt", "metrics.jsonl",
                  "tensorboard", "training_summary.json"}


def node_is_tracker_name(path: Path, node: ast.AST) -> bool:
    """"tensorboard" is also the name of a `trainer.loggers` choice, spelled where the loggers are declared."""
    declared_in = {PACKAGE / "config.py", PACKAGE / "training" / "loggers.py"}
    return path in declared_in and isinstance(node, ast.Constant) and node.value == "tensorboard"


def test_run_file_names_are_spelled_in_one_place():
    """A string that IS a run-file name (not prose mentioning one), or an f-string building a checkpoint name,
    appears only in sslsv/runs.py; everything else asks a RunLayout."""
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "runs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            tracker_name = node_is_tracker_name(path, node)
            if isinstance(node, ast.Constant) and node.value in RUN_FILE_NAMES and not tracker_name:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
            elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                    and str(node.values[0].value).startswith(("weights_e", "checkpoint_e")):
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.values[0].value!r}")
    assert not spelled, "run-file names outside sslsv/runs.py (use RunLayout):\n" + "\n".join(sorted(spelled))
