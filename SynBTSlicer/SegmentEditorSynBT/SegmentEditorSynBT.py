"""Hidden module that registers the "SynBT tumor" Segment Editor effect when Slicer has started."""
import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest


class SegmentEditorSynBT(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegmentEditorSynBT"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "SynBT"]
        self.parent.contributors = ["SynBT contributors"]
        self.parent.hidden = True
        self.parent.helpText = "Registers the SynBT tumor effect of the Segment Editor."
        self.parent.acknowledgementText = "SynBT is released under the Apache-2.0 license."
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        instance = effects.qSlicerSegmentEditorScriptedEffect(None)
        source = os.path.join(os.path.dirname(__file__), "SegmentEditorSynBTLib", "SegmentEditorEffect.py")
        instance.setPythonSource(source.replace("\\", "/"))
        instance.self().register()


class SegmentEditorSynBTTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        editor = slicer.qMRMLSegmentEditorWidget()
        editor.setMRMLScene(slicer.mrmlScene)
        editor.setMRMLSegmentEditorNode(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
        self.assertIsNotNone(editor.effectByName("SynBT tumor"))
        self.delayDisplay("SynBT tumor effect is registered")
