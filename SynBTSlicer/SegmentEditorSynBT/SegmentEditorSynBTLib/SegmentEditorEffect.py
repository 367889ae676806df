"""Segment Editor effect "SynBT tumor": synthesize a tumor inside the selected segment, or place one of a
chosen diameter where the user clicks (one undo step), then synthesize it in a worker process with progress
and Cancel. Widgets only: the decisions are in SynBTLib.slicer_panel."""
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
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.run = None
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.onPoll)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return ("<html>Synthesize a realistic breast tumor (SynBT) into the DCE phases (pre-contrast first).<br>"
                "Synthesize inside the selected segment, or click in a slice view to place a tumor of the chosen "
                "diameter there (added to the selected segment; Undo removes it). Results are new volumes.</html>")

    def setupOptionsFrame(self):
        self.phasesSelector = slicer.qMRMLCheckableNodeComboBox()
        self.phasesSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.phasesSelector.setMRMLScene(slicer.mrmlScene)
        self.phasesSelector.toolTip = "DCE phases, pre-contrast first"
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
        self.applyButton.connect("clicked()", self.onApply)
        self.scriptedEffect.addOptionsWidget(self.applyButton)
        self.progressBar = qt.QProgressBar()
        self.progressBar.visible = False
        self.scriptedEffect.addOptionsWidget(self.progressBar)

    def activate(self):
        from SynBTLib import slicer_panel as panel

        if not self.phasesSelector.checkedNodes():
            for node in panel.guess_phases(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")):
                self.phasesSelector.setCheckState(node, qt.Qt.Checked)

    def phaseNodes(self):
        """Checked volumes in the order guess_phases gives them (pre-contrast first), else scene order."""
        from SynBTLib import slicer_panel as panel

        checked = list(self.phasesSelector.checkedNodes())
        guessed = [n for n in panel.guess_phases(checked, limit=len(checked)) if n in checked]
        return guessed if len(guessed) == len(checked) else checked

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if (self.modeComboBox.currentText != MODE_CLICK or eventId != vtk.vtkCommand.LeftButtonPressEvent
                or viewWidget.className() != "qMRMLSliceWidget" or self.run is not None):
            return False
        self.placeTumorAt(self.xyToRas(callerInteractor.GetEventPosition(), viewWidget))
        return True

    def placeTumorAt(self, ras):
        """Add a tumor shape centred at `ras` to the selected segment (one undo step), then synthesize."""
        from SynBTLib import mrml
        from SynBTLib import slicer_panel as panel

        placed = False
        with slicer.util.tryWithErrorDisplay("SynBT could not place the tumor.", waitCursor=True):
            mask, geometry = panel.tumor_shape_at(self.phaseNodes(), ras, self.diameterSpinBox.value, self.seedSpinBox.value)
            self.scriptedEffect.saveStateForUndo()
            self.scriptedEffect.modifySelectedSegmentByLabelmap(
                mrml.oriented_image_from_mask(mask, geometry), slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd)
            placed = True
        if placed:
            self.onApply()

    def onApply(self):
        from SynBT import SynBTLogic
        from SynBTLib.slicer_worker import SynthesisRequest

        if self.run is not None:
            self.timer.stop()
            run, self.run = self.run, None
            run.cancel()
            self.showRunning(False)
            return
        logic = SynBTLogic()
        if not logic.ensureDependencies():
            return
        parameters = self.scriptedEffect.parameterSetNode()
        with slicer.util.tryWithErrorDisplay("SynBT could not start.", waitCursor=True):
            request = SynthesisRequest(method=self.methodComboBox.currentText, seed=self.seedSpinBox.value)
            self.run = logic.startSynthesis(self.phaseNodes(), parameters.GetSegmentationNode(),
                                            parameters.GetSelectedSegmentID(), request)
            self.showRunning(True)
            self.timer.start()

    def onPoll(self):
        from SynBT import SynBTLogic

        status = self.run.poll()
        self.progressBar.value = status.percent
        self.progressBar.format = f"%p%  {status.message}"
        if not status.finished:
            return
        self.timer.stop()
        run, self.run = self.run, None
        self.showRunning(False)
        with slicer.util.tryWithErrorDisplay("SynBT synthesis failed.", waitCursor=True):
            SynBTLogic().showResult(run.finish())

    def showRunning(self, running):
        self.applyButton.text = "Cancel" if running else "Synthesize"
        self.progressBar.visible = running
        self.progressBar.value = 0
