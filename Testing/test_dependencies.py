"""Every third-party module the engine imports is a declared dependency (pyproject.toml), so
`pip install .` alone runs it: io once needed nibabel, which only the test extra installed."""
import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# provided by the Slicer application (or slicer-core), imported only inside SynBTLib/mrml.py and
# the Slicer worker, never by the command line
SLICER_PROVIDED = {"slicer", "vtk", "qt", "ctk"}


def _imported_top_levels() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / "SynBTLib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.relative_to(ROOT).as_posix())
    return found


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-")


def test_every_third_party_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set()
    for requirement in project["dependencies"]:
        declared.add(_normalize(requirement.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip()))
    optional = {  # imported lazily behind a clear error when the extra is missing
        _normalize(r.split(">")[0].split("=")[0].strip()) for r in project["optional-dependencies"]["nnunet"]
    }
    distributions = packages_distributions()
    missing = []
    for module, files in sorted(_imported_top_levels().items()):
        if module in sys.stdlib_module_names or module in ("SynBTLib", "__future__") or module in SLICER_PROVIDED:
            continue
        dists = {_normalize(d) for d in distributions.get(module, [])}
        if not dists and _normalize(module) in optional:
            continue  # an optional extra this environment does not install
        if not dists:
            pytest.fail(f"{module} (imported in {sorted(files)}) is not installed in the test environment")
        if not dists & (declared | optional):
            missing.append(f"{module} ({sorted(dists)}) in {sorted(files)}")
    assert not missing, "imported but not declared in pyproject dependencies: " + "; ".join(missing)
