"""Segment Editor effect "SynBT tumor": synthesize a tumor inside the selected segment, or place one
of a chosen diameter where the user clicks (the placed shape is added to the segment, undoable)."""
import logging
import os

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

MODE_SEGMENT = "Synthesize inside the selected segment"
MODE_CLICK = "Click in a slice view to place a tumor"


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "SynBT tumor"
        scriptedEffect.perSegment = True  # works on the selected segment
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return (
            "<html>Synthesize a realistic breast tumor (SynBT) into the DCE phases.<br>"
            "Check the phase volumes (pre-contrast first). Either synthesize inside the selected segment, or click "
            "in a slice view to place a tumor of the chosen diameter there (the shape is added to the selected "
            "segment; Undo removes it). Results are new volumes; the inputs are not modified.</html>"
        )

    def setupOptionsFrame(self):
        self.phasesSelector = slicer.qMRMLCheckableNodeComboBox()
        self.phasesSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.phasesSelector.setMRMLScene(slicer.mrmlScene)
        self.phasesSelector.toolTip = "DCE phases in scene order, pre-contrast first"
        self.scriptedEffect.addLabeledOptionsWidget("Phases:", self.phasesSelector)

        self.modeComboBox = qt.QComboBox()
        self.modeComboBox.addItems([MODE_SEGMENT, MODE_CLICK])
        self.scriptedEffect.addLabeledOptionsWidget("Mode:", self.modeComboBox)

        self.diameterSpinBox = qt.QDoubleSpinBox()
        self.diameterSpinBox.setRange(3.0, 60.0)
        self.diameterSpinBox.value = 15.0
        self.diameterSpinBox.suffix = " mm"
        self.scriptedEffect.addLabeledOptionsWidget("Diameter:", self.diameterSpinBox)

        self.methodComboBox = qt.QComboBox()
        self.methodComboBox.addItems(["handcrafted", "diffusion"])
        self.scriptedEffect.addLabeledOptionsWidget("Method:", self.methodComboBox)

        self.seedSpinBox = qt.QSpinBox()
        self.seedSpinBox.setRange(0, 2**31 - 1)
        self.scriptedEffect.addLabeledOptionsWidget("Seed:", self.seedSpinBox)

        self.applyButton = qt.QPushButton("Synthesize")
        self.applyButton.toolTip = "Synthesize a tumor inside the selected segment"
        self.applyButton.connect("clicked()", self.onApply)
        self.scriptedEffect.addOptionsWidget(self.applyButton)
        self.modeComboBox.connect("currentIndexChanged(int)", self.updateGUIFromMRML)

    def updateGUIFromMRML(self, *_):
        self.applyButton.enabled = self.modeComboBox.currentText == MODE_SEGMENT

    def activate(self):
        source = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        if source is not None and not self.phasesSelector.checkedNodes():
            self.phasesSelector.setCheckState(source, qt.Qt.Checked)

    def phaseNodes(self):
        """Checked phase volumes in scene order (the scene order is the acquisition order)."""
        checked = self.phasesSelector.checkedNodes()
        return [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if n in checked]

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if (self.modeComboBox.currentText != MODE_CLICK or eventId != vtk.vtkCommand.LeftButtonPressEvent
                or viewWidget.className() != "qMRMLSliceWidget"):
            return False
        ras = self.scriptedEffect.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
        self.placeTumorAt(ras)
        return True

    def placeTumorAt(self, ras):
        """Add a tumor shape centred at `ras` to the selected segment (undoable), then synthesize."""
        from SynBTLib import mrml
        from SynBTLib.errors import SynBTError
        from SynBTLib.shapes import tumor_mask

        with slicer.util.tryWithErrorDisplay("SynBT could not place the tumor.", waitCursor=True):
            geometry = mrml.case_from_volume_nodes(self.phaseNodes()).geometry
            center_lps = (-ras[0], -ras[1], ras[2])
            shape = tumor_mask(geometry, center_lps, self.diameterSpinBox.value, seed=self.seedSpinBox.value)
            if not shape.mask.any():
                raise SynBTError("the click is outside the phase volumes")
            self.scriptedEffect.saveStateForUndo()
            self.scriptedEffect.modifySelectedSegmentByLabelmap(
                mrml.oriented_image_from_mask(shape.mask, geometry),
                slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd,
            )
        self.onApply()

    def onApply(self):
        from SynBT import SynBTLogic

        parameters = self.scriptedEffect.parameterSetNode()
        dialog = slicer.util.createProgressDialog(labelText="SynBT: synthesizing...", maximum=100)

        def progress(done, total, message):
            dialog.value = int(100 * done / max(total, 1))
            dialog.labelText = message
            slicer.app.processEvents()
            if dialog.wasCanceled:
                raise KeyboardInterrupt("cancelled")

        try:
            with slicer.util.tryWithErrorDisplay("SynBT synthesis failed.", waitCursor=True):
                logic = SynBTLogic()
                if not logic.ensureDependencies():
                    return
                result = logic.synthesize(
                    self.phaseNodes(), parameters.GetSegmentationNode(), parameters.GetSelectedSegmentID(),
                    seed=self.seedSpinBox.value, method=self.methodComboBox.currentText, progress=progress,
                )
                logic.showResult(result)
        except KeyboardInterrupt:
            logging.info("SynBT synthesis cancelled; no nodes were added")
        finally:
            dialog.close()
