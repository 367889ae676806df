"""SynBT's Python requirements, checked by installed version (no import), for pip and the Slicer panel.

``requirements.txt`` next to this file is the one list: pyproject.toml reads it for ``pip install``,
and the Slicer panel installs from it into Slicer's Python. ``check()`` compares every requirement
with what is installed (``importlib.metadata``), so a missing package and one too old or too new
(an older MONAI left by another extension, say) are both found before any work starts.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare Python: pip always vendors packaging
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

REQUIREMENTS_FILE = Path(__file__).with_name("requirements.txt")
TORCH = "torch"
# Distributions whose import name differs from the distribution name (for the "restart Slicer" check).
IMPORT_NAMES = {"pynrrd": "nrrd"}


def runtime_requirements(path: str | Path = REQUIREMENTS_FILE) -> list[Requirement]:
    """The requirements in ``path`` (one per line; ``#`` starts a comment)."""
    requirements = []
    for line in Path(path).read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            requirements.append(Requirement(text))
    return requirements


@dataclass
class Problem:
    """One requirement that is not met: ``installed`` is None when the package is missing."""

    requirement: Requirement
    installed: str | None

    @property
    def name(self) -> str:
        return self.requirement.name

    def describe(self) -> str:
        state = "not installed" if self.installed is None else f"{self.installed} installed"
        return f"{self.requirement} ({state})"


@dataclass
class DependencyReport:
    """What ``check`` found: the requirements that are missing or installed at a version they exclude."""

    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def torch(self) -> Problem | None:
        """The torch problem, if any (inside Slicer torch is installed through the PyTorch extension)."""
        return next((p for p in self.problems if p.name == TORCH), None)

    def pip_requirements(self) -> list[str]:
        """The requirement strings to give pip for everything but torch."""
        return [str(p.requirement) for p in self.problems if p.name != TORCH]

    def needs_restart(self, loaded_modules=None) -> bool:
        """True when a package to be replaced is already imported in this process: its new version is
        only used after a restart (of Slicer)."""
        loaded = sys.modules if loaded_modules is None else loaded_modules
        return any(
            p.installed is not None and IMPORT_NAMES.get(p.name, p.name.replace("-", "_")) in loaded
            for p in self.problems
        )

    def message(self) -> str:
        """One paragraph for the install prompt."""
        lines = ", ".join(p.describe() for p in self.problems)
        return f"SynBT needs these Python packages: {lines}."


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check(requirements: list[Requirement] | None = None,
          version_of: Callable[[str], str | None] = installed_version) -> DependencyReport:
    """Every requirement that is missing or whose installed version it excludes (pre-releases and local
    builds such as ``2.13.0+cpu`` count as their release)."""
    problems = []
    for requirement in runtime_requirements() if requirements is None else requirements:
        version = version_of(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            problems.append(Problem(requirement, version))
    return DependencyReport(problems)


def torch_pip_arguments(requirement: Requirement, backend: str | None) -> list[str]:
    """pip arguments that install torch alone (no torchvision) for a computation backend such as "cpu"
    or "cu126" from the PyTorch wheel index; backend None: the default index."""
    arguments = [str(requirement)]
    if backend:
        arguments += ["--index-url", f"https://download.pytorch.org/whl/{backend}"]
    return arguments


def pick_backend(backends) -> str | None:
    """The computation backend to install torch for, from those light-the-torch reports as compatible:
    the newest CUDA ("cu126" over "cu118"), else "cpu"; None when nothing is reported (pip's default)."""
    cuda = [b for b in backends if re.fullmatch(r"cu\d+", b)]
    if cuda:
        return max(cuda, key=lambda b: int(b[2:]))
    return "cpu" if "cpu" in backends else None


def ensure(confirm: Callable[[str], bool], pip_install: Callable[[list[str]], object],
           torch_backends: Callable[[], list[str]], restart: Callable[[], None],
           requirements: list[Requirement] | None = None) -> bool:
    """Check, then after one confirmation install or upgrade what is missing or incompatible; True when all
    requirements are met and usable now. The host (Slicer) gives its own dialogs and installers:
    ``confirm(question)``, ``pip_install(arguments)``, ``torch_backends()`` (compatible computation backends,
    e.g. from the PyTorch extension) and ``restart()``."""
    report = check(requirements)
    if report.ok:
        return True
    replacing_loaded = report.needs_restart()
    question = report.message() + " Install them now (a few minutes)?"
    if not confirm(question + (" Slicer must then restart." if replacing_loaded else "")):
        return False
    if report.torch is not None:
        pip_install(torch_pip_arguments(report.torch.requirement, pick_backend(torch_backends())))
    if report.pip_requirements():
        pip_install(report.pip_requirements())
    if replacing_loaded:
        if confirm("SynBT's packages were updated. Restart now to use them?"):
            restart()
        return False
    return check(requirements).ok
