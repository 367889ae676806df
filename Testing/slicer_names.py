"""The Slicer, Qt, CTK and VTK names that SynBTSlicer/ uses, collected from its source (AST).

Used by test_slicer_names.py (the list must equal the committed SynBTSlicer/slicer_names.txt) and by
tools/verify_slicer_names.py (each Slicer name is looked up in a Slicer source checkout). Not a test file.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SynBTSlicer"
NAMES_FILE = MODULE_DIR / "slicer_names.txt"
# roots whose attribute chains are API of Slicer or of the toolkits it embeds
ROOTS = {"slicer", "qt", "ctk", "vtk", "SampleData", "PyTorchUtils", "effects"}
# objects of Slicer classes the module holds: "self.<attribute>.<method>" is that class's API
HELD = {
    "scriptedEffect": "qSlicerSegmentEditorScriptedEffect",
    "clonedEffect": "qSlicerSegmentEditorScriptedEffect",
    "instance": "qSlicerSegmentEditorScriptedEffect",
    "parameters": "vtkMRMLSegmentEditorNode",
    "callerInteractor": "vtkRenderWindowInteractor",
    "viewWidget": "qMRMLSliceWidget",
    "parameterNode": "parameterNodeWrapper",
    "_parameterNode": "parameterNodeWrapper",
    "segmentSelector": "qMRMLSegmentSelectorWidget",
    "phasesSelector": "qMRMLCheckableNodeComboBox",
}
_SIGNAL = re.compile(r"^[a-z]\w*\([\w*, ]*\)$")


def _chain(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _mark_parents(tree: ast.AST) -> None:
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            child._parent = parent


def collect() -> set[str]:
    """Every name the Slicer module and its effect use (outermost attribute chains only)."""
    found = set()
    for path in sorted(MODULE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text())
        _mark_parents(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(getattr(node, "_parent", None), ast.Attribute):
                continue  # only the whole chain: slicer.util.pip_install, not slicer.util
            found |= _one(node)
        found |= _inherited(tree)
    from SynBTLib.slicer_panel import PARAMETERS  # the panel's own parameter fields are not Slicer API

    return {n for n in found if not (n.startswith("parameterNodeWrapper.") and n.split(".", 1)[1] in PARAMETERS)}


def _inherited(tree: ast.AST) -> set[str]:
    """``self.X`` that a class neither defines nor assigns: API of its Slicer base class."""
    found = set()
    for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.bases]:
        base = _chain(cls.bases[0])
        if not base or base[-1] == "object":
            continue
        defined = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _chain(node) == ["self", node.attr]:
                defined.add(node.attr)
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and _chain(node) == ["self", node.attr] and node.attr not in defined:
                found.add(f"{base[-1]}.{node.attr}")
    return found


def _one(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Attribute):
        chain = _chain(node)
        if not chain:
            return set()
        if chain[0] in ROOTS:
            return {".".join(chain)}
        if chain[0] in HELD and len(chain) >= 2:
            return {f"{HELD[chain[0]]}.{chain[1]}"}
        if chain[0] == "self" and len(chain) >= 3 and chain[1] in HELD:
            return {f"{HELD[chain[1]]}.{chain[2]}"}
        if chain[:2] == ["self", "ui"] and len(chain) >= 4 and chain[2] in HELD:
            return {f"{HELD[chain[2]]}.{chain[3]}"}
        return set()
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ROOTS | {"SegmentEditorEffects", "slicer"}:
        return {f"{node.module}.{alias.name}" for alias in node.names}
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names
                if alias.name.split(".")[0] in ROOTS | {"qSlicerSegmentationsEditorEffectsPythonQt"}}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if _SIGNAL.match(node.value):
            return {f"signal {node.value}"}
        if re.fullmatch(r"vtkMRML\w+|q(MRML|Slicer)\w+", node.value):
            return {node.value}
    return set()


def committed() -> dict[str, str]:
    """name -> where it was verified, from SynBTSlicer/slicer_names.txt ("name  # source")."""
    names = {}
    for line in NAMES_FILE.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, _, where = text.partition("#")
        names[name.strip()] = where.strip()
    return names
