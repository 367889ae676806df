"""One requirements list: every third-party module SynBTLib imports is in SynBTLib/requirements.txt, the
file both pip (pyproject.toml) and the Slicer panel install from. A Slicer install ships only numpy,
scipy and SimpleITK: a module missing from that list made every panel action fail after the panel had
said all was installed (nibabel, pynrrd and slicerio were left out once)."""
import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from SynBTLib import dependencies

ROOT = Path(__file__).resolve().parent.parent
# provided by the Slicer application (or slicer-core), imported only in the Slicer bridge modules
SLICER_PROVIDED = {"slicer", "vtk", "qt", "ctk"}


def _imported_top_levels() -> dict[str, set[str]]:
    """Top-level module name -> files of SynBTLib that import it (module and function level alike)."""
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


def _optional_extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normalize(Requirement(r).name) for extra, reqs in project["optional-dependencies"].items()
            if extra != "test" for r in reqs}


def test_every_third_party_import_is_in_the_one_requirements_list():
    required = {_normalize(r.name) for r in dependencies.runtime_requirements()}
    optional = _optional_extras()  # imported lazily behind a clear error when the extra is missing
    distributions = metadata.packages_distributions()
    missing = []
    for module, files in sorted(_imported_top_levels().items()):
        if module in sys.stdlib_module_names or module in ("SynBTLib", "__future__") or module in SLICER_PROVIDED:
            continue
        if module == "pip":  # pip._vendor.packaging: the fallback when packaging itself is absent
            continue
        dists = {_normalize(d) for d in distributions.get(module, [])}
        if not dists and _normalize(module) in optional:
            continue
        assert dists, f"{module} (imported in {sorted(files)}) is not installed in the test environment"
        if not dists & (required | optional):
            missing.append(f"{module} ({sorted(dists)}) in {sorted(files)}")
    assert not missing, "imported but not in SynBTLib/requirements.txt: " + "; ".join(missing)


def test_pip_installs_exactly_the_requirements_file():
    """The installed synbt's metadata (built from pyproject.toml) lists what requirements.txt lists."""
    declared = {str(Requirement(r)) for r in metadata.requires("synbt") if "extra ==" not in r}
    assert declared == {str(r) for r in dependencies.runtime_requirements()}


def test_the_requirements_file_ships_inside_the_package():
    """The Slicer extension installs SynBTLib's folder; the panel reads the list from there."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "requirements.txt" in pyproject["tool"]["setuptools"]["package-data"]["SynBTLib"]
    cmake = (ROOT / "SynBTSlicer" / "CMakeLists.txt").read_text()
    assert "SynBTLib/requirements.txt" in cmake


def test_check_reads_installed_versions_of_this_environment():
    assert dependencies.check().ok, dependencies.check().message()


def test_check_finds_missing_and_incompatible_packages():
    requirements = [Requirement("numpy<1.0"), Requirement("no-such-package-synbt>=1"), Requirement("scipy>=1")]
    report = dependencies.check(requirements)
    assert [p.name for p in report.problems] == ["numpy", "no-such-package-synbt"]
    numpy_problem, absent = report.problems
    assert numpy_problem.installed == metadata.version("numpy") and absent.installed is None
    assert report.pip_requirements() == ["numpy<1.0", "no-such-package-synbt>=1"]
    assert "numpy<1.0" in report.message() and "not installed" in report.message()
    # numpy is imported in this process: replacing it needs a restart; a missing package does not
    assert report.needs_restart()
    assert not dependencies.DependencyReport([absent]).needs_restart()


def test_a_local_build_of_the_pinned_torch_satisfies_the_pin():
    pinned = [r for r in dependencies.runtime_requirements() if r.name == "torch"]
    report = dependencies.check(pinned, version_of=lambda name: str(pinned[0].specifier).lstrip("=") + "+cpu")
    assert report.ok
    older = dependencies.check(pinned, version_of=lambda name: "2.0.1")
    assert older.torch is not None and older.pip_requirements() == []


@pytest.mark.parametrize("backend, expected", [(None, []), ("cu126", ["--index-url", "https://download.pytorch.org/whl/cu126"])])
def test_torch_is_installed_alone_without_torchvision(backend, expected):
    arguments = dependencies.torch_pip_arguments(Requirement("torch==2.13.0"), backend)
    assert arguments == ["torch==2.13.0", *expected]
    assert not any("torchvision" in a for a in arguments)


def test_the_newest_cuda_backend_is_chosen_else_cpu():
    assert dependencies.pick_backend(["cpu", "cu118", "cu126", "cu121"]) == "cu126"
    assert dependencies.pick_backend(["cpu"]) == "cpu"
    assert dependencies.pick_backend([]) is None


def test_ensure_asks_once_installs_what_is_missing_and_asks_to_restart_when_a_loaded_package_changes():
    asked, installed = [], []
    requirements = [Requirement("numpy<1.0"), Requirement("no-such-package-synbt>=1")]

    def confirm(question):
        asked.append(question)
        return True

    ok = dependencies.ensure(confirm, installed.append, lambda: ["cpu"], lambda: asked.append("restart"), requirements)
    assert not ok  # numpy is loaded in this process: usable only after a restart
    assert installed == [["numpy<1.0", "no-such-package-synbt>=1"]]
    assert "numpy<1.0" in asked[0] and asked[-1] == "restart"
    declined = []
    assert not dependencies.ensure(lambda q: declined.append(q) or False, installed.append, lambda: [], lambda: None,
                                   requirements)
    assert len(declined) == 1 and len(installed) == 1  # declined: nothing installed
    assert dependencies.ensure(lambda q: pytest.fail("nothing to ask"), installed.append, lambda: [], lambda: None,
                               [Requirement("numpy>=1")])


def test_ensure_installs_torch_alone_for_the_detected_backend():
    installed = []
    dependencies.ensure(lambda q: True, installed.append, lambda: ["cpu", "cu126"], lambda: None,
                        [Requirement("torch==0.0.1")])
    assert installed == [["torch==0.0.1", "--index-url", "https://download.pytorch.org/whl/cu126"]]
