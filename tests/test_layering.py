"""The import rules of the design card, checked on the source: scripts -> mtrl ->
(agents, aggregators, envs); an agent imports no aggregator and nothing of mtrl; an
aggregator imports no training, networks or environments; envs import none of them."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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
