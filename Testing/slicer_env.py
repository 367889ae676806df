"""Headless Slicer MRML for tests: slicer-core set up the way the Slicer application does at start.

slicer-core gives the real compiled MRML libraries but no application: no ``slicer.mrmlScene``, no
``slicer.modules``. ``headless_slicer()`` creates a scene, a ``vtkSlicerApplicationLogic`` and the
module logics that ``slicer.util`` and segment conversion rely on, and exposes them under the names
the application uses. Not a conftest: import it from a test (``pytest.importorskip("slicer")`` first).
"""
from __future__ import annotations

import types
from dataclasses import dataclass

_SESSION = None  # the application logic must outlive every scene use (else CreateAndAddLabelVolume segfaults)


@dataclass
class HeadlessSlicer:
    """The objects that make ``import slicer`` behave like the Slicer application's module."""

    slicer: types.ModuleType
    scene: object
    app_logic: object
    logics: dict

    def new_scene(self):
        """Clear the shared scene and return it (one scene per session, as in the application)."""
        self.scene.Clear(0)
        return self.scene


def headless_slicer() -> HeadlessSlicer:
    """Set up slicer-core once per process and return the session (scene, application logic, logics)."""
    global _SESSION
    if _SESSION is not None:
        return _SESSION
    import slicer

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logic_classes = {
        "colors": slicer.vtkSlicerColorLogic,
        "volumes": slicer.vtkSlicerVolumesLogic,
        "segmentations": slicer.vtkSlicerSegmentationsModuleLogic,
        "subjecthierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic,
    }
    logics = {}
    modules = types.SimpleNamespace()
    for name, cls in logic_classes.items():
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)  # registers e.g. the labelmap <-> surface converter rules
        app_logic.SetModuleLogic(name.capitalize() if name != "subjecthierarchy" else "SubjectHierarchy", logic)
        logics[name] = logic
        setattr(modules, name, types.SimpleNamespace(logic=(lambda lg=logic: lg)))
    slicer.mrmlScene = scene
    slicer.modules = modules
    _SESSION = HeadlessSlicer(slicer=slicer, scene=scene, app_logic=app_logic, logics=logics)
    return _SESSION
