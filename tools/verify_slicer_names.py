"""Verify the Slicer names SynBTSlicer/ uses against a Slicer source checkout, and write slicer_names.txt.

    python tools/verify_slicer_names.py /path/to/Slicer.git v5.12.3 [--write]

Each name collected from SynBTSlicer/ (Testing/slicer_names.py) is looked up at the given tag with
`git grep`: a member ("Class.member") must be defined or declared in a file of that class (or in
Slicer's Python utilities for slicer.util / slicer.* names); a signal must be declared as one. Qt and
unittest names cannot be found in Slicer's source and are marked as such. With --write, the verified
list replaces SynBTSlicer/slicer_names.txt (the file Testing/test_slicer_names.py checks against).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))
sys.path.insert(0, str(ROOT))
import slicer_names  # noqa: E402

QT_ROOTS = ("qt.", "signal clicked(")
UNITTEST = ("ScriptedLoadableModuleTest.assert",)
CTK_SIGNALS = {"signal currentPathChanged(QString)": "ctkPathLineEdit (CTK)"}
VTK = ("vtk.vtkCommand.", "vtkRenderWindowInteractor.", "vtk")
# a derived widget's properties live in its base class
BASES = {"qMRMLCheckableNodeComboBox": "qMRMLNodeComboBox"}
# names from the PyTorch extension (fepegar/SlicerPyTorch, PyTorchUtils/PyTorchUtils.py), checked with --pytorch
EXTERNAL = {"PyTorchUtils": "SlicerPyTorch PyTorchUtils/PyTorchUtils.py"}
PYTORCH_REPO = None


def grep_pytorch(member: str) -> bool:
    if PYTORCH_REPO is None:
        return False
    done = subprocess.run(["git", "--git-dir", PYTORCH_REPO, "grep", "-q", "-w", member, "HEAD", "--",
                           "PyTorchUtils/PyTorchUtils.py"], capture_output=True)
    return done.returncode == 0


def grep(repo: str, tag: str, pattern: str, *paths: str) -> list[str]:
    done = subprocess.run(["git", "--git-dir", repo, "grep", "-l", "-E", pattern, tag, "--", *paths],
                          capture_output=True, text=True)
    return [line.split(":", 1)[1] for line in done.stdout.splitlines()]


def locate(repo: str, tag: str, name: str) -> str | None:
    """Where `name` is found at `tag` (a path), or a note for Qt / CTK / VTK / unittest names; None: not found."""
    if name.startswith(QT_ROOTS) or name == "qt":
        return "Qt (PythonQt), not in Slicer's source"
    if name.startswith(UNITTEST):
        return "unittest.TestCase, the base of ScriptedLoadableModuleTest"
    if name in CTK_SIGNALS:
        return CTK_SIGNALS[name]
    if name.startswith(VTK) and not name.startswith("vtkMRML"):
        return "VTK"
    if name.startswith("signal "):
        signal = name.split(" ", 1)[1].split("(")[0]
        hits = grep(repo, tag, rf"void {signal}\(")
        return hits[0] if hits else None
    parts = name.split(".")
    member = parts[-1]
    if parts[0] in ("PyTorchUtils",):
        return EXTERNAL["PyTorchUtils"] if grep_pytorch(member) else None
    if parts[0] == "effects":  # import qSlicerSegmentationsEditorEffectsPythonQt as effects
        hits = grep(repo, tag, rf"class (\w+ )?{member}\b", "*.h")
        return hits[0] if hits else None
    if len(parts) == 1:  # a module or a class name
        if member in EXTERNAL:
            return EXTERNAL[member]
        hits = grep(repo, tag, rf"import {member}\b") or grep(repo, tag, rf"class (\w+ )?{member}\b", "*.h", "*.py")
        return hits[0] if hits else None
    owner = parts[-2]
    if parts[0] == "slicer" and owner == "util":
        hits = grep(repo, tag, rf"^(def|class) {member}\b", "Base/Python/slicer/util.py")
    elif parts[0] == "slicer" and owner in ("ScriptedLoadableModule", "parameterNodeWrapper"):
        hits = grep(repo, tag, rf"^(def|class) {member}\b|^{member} =", f"Base/Python/slicer/{owner}*")
    elif owner == "parameterNodeWrapper":  # methods the wrapper adds to a parameter node class
        hits = grep(repo, tag, rf"def _?{member}\b|\"{member}\"", "Base/Python/slicer/parameterNodeWrapper/*.py")
    elif parts[0] == "SegmentEditorEffects":  # from SegmentEditorEffects import <module>
        hits = grep(repo, tag, ".", f"*/{owner}/{member}.py")
    elif parts[0] == "slicer" and owner == "mrmlScene":
        hits = grep(repo, tag, rf"\b{member}\b", "Libs/MRML/Core/vtkMRMLScene.h")
    elif parts[0] == "slicer" and owner == "app":
        hits = grep(repo, tag, rf"\b{member}\b", "Base/QTCore/qSlicerCoreApplication.h", "Base/QTGUI/qSlicerApplication.h") \
            or ([f"QCoreApplication::{member} (Qt)"] if member in ("processEvents", "connect") else [])
    elif parts[0] == "slicer" and len(parts) == 2:
        hits = grep(repo, tag, rf"class (\w+ )?{member}\b|^def {member}\b|^{member} =|:attr:`{member}`", "*.h", "*.py")
    else:
        # the class's own header / module first, then its base class, then any file declaring it
        files = grep(repo, tag, ".", f"*/{owner}.h", f"*/{owner}.py") + grep(repo, tag, ".", f"*/{BASES.get(owner, owner)}.h")
        files += grep(repo, tag, rf"class (\w+ )?{owner}\b", "*.h", "*.py")
        hits = [f for f in files if grep(repo, tag, rf"\b{member}\b", f)]
        if not hits and owner in ("ScriptedLoadableModuleWidget", "ScriptedLoadableModule"):
            hits = grep(repo, tag, rf"def {member}\b|self\.{member} =", "Base/Python/slicer/ScriptedLoadableModule.py",
                        "Base/Python/slicer/util.py")
        if not hits and owner in ("qSlicerSegmentEditorScriptedEffect", "qMRMLSegmentSelectorWidget",
                                  "qMRMLCheckableNodeComboBox", "qMRMLSliceWidget"):
            hits = grep(repo, tag, rf"\b{member}\b", "Modules/Loadable/Segmentations/EditorEffects/*AbstractEffect.h",
                        "Libs/MRML/Widgets/qMRMLWidget.h") or (
                [f"QWidget/QObject::{member} (Qt)"] if member in ("blockSignals", "connect", "toolTip", "className") else [])
    return hits[0] if hits else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", help="a Slicer git directory (bare or .git)")
    parser.add_argument("tag", help="the Slicer tag to verify against, e.g. v5.12.3")
    parser.add_argument("--pytorch", help="a SlicerPyTorch git directory, for the PyTorchUtils names")
    parser.add_argument("--write", action="store_true", help="write SynBTSlicer/slicer_names.txt")
    args = parser.parse_args()
    global PYTORCH_REPO
    PYTORCH_REPO = args.pytorch
    found, missing = {}, []
    for name in sorted(slicer_names.collect()):
        where = locate(args.repo, args.tag, name)
        if where is None:
            missing.append(name)
        else:
            found[name] = where
    for name in missing:
        print(f"NOT FOUND at {args.tag}: {name}")
    if args.write and not missing:
        lines = [f"# Slicer, Qt, CTK and VTK names used by SynBTSlicer/, verified against Slicer {args.tag}",
                 f"# by tools/verify_slicer_names.py; a new name fails Testing/test_slicer_names.py until verified.",
                 f"# tag: {args.tag}"]
        width = max(len(n) for n in found)
        lines += [f"{name:<{width}}  # {where}" for name, where in found.items()]
        slicer_names.NAMES_FILE.write_text("\n".join(lines) + "\n")
        print(f"wrote {len(found)} names to {slicer_names.NAMES_FILE}")
    print(f"{len(found)} verified, {len(missing)} not found")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
