"""The import rules of the design card, checked on the source: scripts -> mtrl ->
(agents, aggregators, envs); an agent imports no aggregator and nothing of mtrl; an
aggregator imports no training, networks or environments; envs import none of them.
Inside the supervised driver, by role: data readers, tasks and models import no benchmark,
and no part of the runtime imports the test-data writers (``mtrl.supervised.testing``)."""

import ast
from pathlib import Path

import pytest
from helpers import ROOT

FORBIDDEN = {
    "agents": {"aggregators", "mtrl", "scripts"},
    "aggregators": {"mtrl", "agents", "envs", "scripts"},
    "envs": {"mtrl", "agents", "aggregators", "scripts"},
    "mtrl": {"scripts"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports, anywhere in it (function bodies included);
    relative imports stay inside the package and are left out."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


SUPERVISED = "mtrl.supervised"
#: a role of the supervised driver -> the parts of it its modules may not import
SUPERVISED_FORBIDDEN = {
    "data": {"benchmarks", "models", "trainer", "tables", "registry", "testing"},
    "tasks": {"benchmarks", "models", "data", "trainer", "tables", "registry", "testing"},
    "models": {"benchmarks", "data", "trainer", "tables", "registry", "testing"},
    "benchmarks": {"trainer", "tables", "testing"},
    "trainer.py": {"testing"},
    "tables.py": {"testing"},
    "registry.py": {"testing"},
}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules a module imports, anywhere in it, with its relative
    imports resolved against its own package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def supervised_part(module: str) -> str | None:
    """The part of the supervised driver a module name is in (``data``, ``trainer.py``, ...)."""
    if not module.startswith(SUPERVISED + "."):
        return None
    head = module[len(SUPERVISED) + 1:].split(".")[0]
    return head if (ROOT / "mtrl" / "supervised" / head).is_dir() else f"{head}.py"


@pytest.mark.parametrize("part", sorted(SUPERVISED_FORBIDDEN))
def test_supervised_roles_import_one_way(part):
    where = ROOT / "mtrl" / "supervised" / part
    files = sorted(where.rglob("*.py")) if where.is_dir() else [where]
    assert files and all(f.exists() for f in files)
    bad = {str(f.relative_to(ROOT)): sorted({m for m in imported_modules(f)
                                             if supervised_part(m) in SUPERVISED_FORBIDDEN[part]})
           for f in files}
    assert {f: v for f, v in bad.items() if v} == {}


def test_the_role_checker_resolves_relative_imports():
    f = ROOT / "mtrl" / "supervised" / "benchmarks" / "nyuv2.py"
    mods = imported_modules(f)
    assert "mtrl.supervised.benchmarks.scene.SceneBenchmark" in mods
    assert supervised_part("mtrl.supervised.tasks.dense.DepthTask") == "tasks"
    assert supervised_part("mtrl.supervised.trainer.SupervisedTrainer") == "trainer.py"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_layering(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = {str(f.relative_to(ROOT)): sorted(imported_packages(f) & FORBIDDEN[package]) for f in files}
    assert {f: v for f, v in bad.items() if v} == {}


def test_the_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import torch\n\ndef g():\n    from mtrl.trainer import Trainer\n    import aggregators.base\n"
                 "from . import sibling\n")
    assert imported_packages(f) == {"torch", "mtrl", "aggregators"}
