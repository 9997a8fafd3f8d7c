"""The architecture, checked from the source: dependencies run one way, the core runs without
the pipeline's outside systems, and dvc.yaml's deps are the modules each stage runs.

Run it alone to check an edit: ``python -m pytest tests/test_architecture.py``. Every
``ganforge`` import counts, lazy ones inside functions included (a lazy import is still a
dependency: it runs).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

SRC = ROOT / "src"
PKG = SRC / "ganforge"

# Layer of each top-level part of the package, bottom first. A module may import from its
# own layer or below, never above.
LAYERS = {
    "errors": 0,
    "core": 1,
    "models": 2,
    "config": 3,
    "engine": 4,
    "metrics": 4,
    "tracking": 5,  # the MLflow edge
    "deploy": 6,
    "stages": 6,
    "cli": 7,
    "__main__": 8,
    "__init__": 0,
}
# Outside systems the core must run without (the GPU machine has none of them).
PIPELINE_LIBS = {
    "mlflow",
    "prefect",
    "dvc",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "fastapi",
    "uvicorn",
}
CORE_PARTS = ("errors", "core", "models", "config", "engine")
CORE_STAGES = ("ganforge.stages.prepare", "ganforge.stages.featurenet", "ganforge.stages.train")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


@cache
def imports(name: str) -> tuple[set[str], set[str]]:
    """(ganforge modules, top-level third-party packages) that module ``name`` imports."""
    tree = ast.parse(MODULES[name].read_text())
    own, other = set(), set()
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).strip(".")
            # `from pkg import sub` imports the submodule when there is one
            names = [
                f"{base}.{a.name}" if module_path(f"{base}.{a.name}") else base for a in node.names
            ]
        else:
            continue
        for n in names:
            if n.split(".")[0] == "ganforge":
                while n not in MODULES and "." in n:
                    n = n.rpartition(".")[0]
                if n != name:
                    own.add(n)
            else:
                other.add(n.split(".")[0])
    return own, other


def part(name: str) -> str:
    bits = name.split(".")
    return bits[1] if len(bits) > 1 else "__init__"


def closure(name: str, skip=lambda m: False) -> set[str]:
    """Modules ``name`` runs, transitively; ``skip``ped ones are neither kept nor followed."""
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m not in seen and not skip(m):
            seen.add(m)
            todo.extend(imports(m)[0])
    return seen


def test_no_import_cycles():
    """Depth-first search over every module's ganforge imports: no module reaches itself."""
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep in sorted(imports(m)[0]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep] if dep in path else [m, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])


def test_dependencies_run_one_way():
    wrong = []
    for m in MODULES:
        for dep in imports(m)[0]:
            if part(dep) == "__init__":
                continue  # the package docstring and version
            if LAYERS[part(dep)] > LAYERS[part(m)]:
                wrong.append(f"{m} imports {dep} (a layer above it)")
            if part(m) == part(dep) == "stages":
                wrong.append(f"{m} imports another stage, {dep}")
    assert not wrong, "\n".join(wrong)


def test_the_core_needs_no_pipeline_system_and_deploy_no_torch():
    for m in MODULES:
        third = imports(m)[1]
        assert "prefect" not in third, f"{m}: src/ganforge knows nothing of Prefect"
        if part(m) in CORE_PARTS or m in CORE_STAGES:
            assert not third & PIPELINE_LIBS, f"{m} imports {third & PIPELINE_LIBS}"
        if part(m) == "deploy":
            assert "torch" not in third, f"{m}: generate/serve must not import torch"


def test_no_module_is_too_long():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 380}
    assert not long, long


def test_dvc_deps_are_the_modules_each_stage_runs():
    """Every module a stage's code runs is a dep of that stage, and every src dep is one it runs.

    Left out on purpose: ``config.py`` and ``errors.py`` (validation and messages; every
    value a stage reads is a declared param), ``cli.py`` (argument plumbing) and, except
    for promote, ``tracking/`` (what is logged to MLflow, not what the stage writes).
    """
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, spec in stages.items():

        def skip(m: str, stage=stage) -> bool:
            return part(m) in ("config", "errors", "__init__", "cli") or (
                part(m) == "tracking" and stage != "promote"
            )

        runs = {
            MODULES[m].relative_to(ROOT).as_posix()
            for m in closure(f"ganforge.stages.{stage}", skip)
        }
        declared = [d for d in spec["deps"] if str(d).startswith("src/")]
        missing = sorted(
            f for f in runs if not any(f == d or f.startswith(d + "/") for d in declared)
        )
        assert not missing, f"dvc.yaml stage {stage}: runs {missing} but does not depend on them"
        for d in declared:
            assert any(f == d or f.startswith(d + "/") for f in runs), (
                f"dvc.yaml stage {stage}: depends on {d}, which it never runs"
            )
        if any(d.endswith("/") or (ROOT / d).is_dir() for d in declared):
            for d in declared:
                if (ROOT / d).is_dir():
                    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / d).rglob("*.py")}
                    assert files <= runs | {f"{d}/__init__.py"}, (
                        f"dvc.yaml stage {stage}: {d} holds modules it never runs: {sorted(files - runs)}"
                    )
