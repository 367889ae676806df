"""SynBT: synthesize realistic breast tumors in DCE-MRI (3D Slicer module over SynBTLib).

Widgets and connections only: every decision (parameters, phase guessing, readiness, requests, jobs,
results) lives in the Qt-free SynBTLib.slicer_panel, which the tests run on real MRML nodes.
"""
import os
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# SynBTLib ships next to this file in an installed extension; from a source checkout it is one level up.
_HERE = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(_HERE, "SynBTLib")) and os.path.dirname(_HERE) not in sys.path:
    sys.path.append(os.path.dirname(_HERE))

from SynBTLib import slicer_panel as panel  # noqa: E402  (numpy only: safe before the dependency check)
from SynBTGuiLib.controls import JobSection, RunControl  # noqa: E402

class SynBT(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SynBT"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SynBT contributors"]
        self.parent.helpText = (
            "Synthesize realistic breast tumors in DCE-MRI: pick the phases (pre-contrast first), a segment as "
            "the tumor region (or an automatic tumor size), and press Generate. Results are new volumes and a "
            "segmentation; inputs are never modified. Export writes a synthetic training set (nnU-Net or MONAI); "
            "Train segmentation trains a tumor segmentation model. All three run in a separate process with "
            "progress and Cancel/Stop. Try it on Sample Data > SynBT phantom. Method: arXiv 2509.03267."
        )
        self.parent.acknowledgementText = "SynBT is released under the Apache-2.0 license."
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Sample Data > SynBT > "SynBT phantom": a phantom case made locally (nothing is downloaded)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SynBT", sampleName=panel.PHANTOM_SAMPLE_NAME, uris="synbt://phantom", fileNames="SynBTPhantom.nrrd",
        thumbnailFileName=os.path.join(_HERE, "Resources", "Icons", "SynBT.png"), customDownloader=loadPhantomSample)


def loadPhantomSample(source=None):
    with slicer.util.tryWithErrorDisplay("SynBT could not make the phantom case.", waitCursor=True):
        nodes, _ = panel.add_phantom_nodes(slicer.mrmlScene)
        slicer.util.setSliceViewerLayers(background=nodes[1], fit=True)
        return nodes


def _annotation(spec):
    base = {"volume": vtkMRMLScalarVolumeNode, "segmentation": vtkMRMLSegmentationNode,
            "str": str, "int": int, "float": float, "bool": bool}[spec.kind]
    extras = ([Choice(list(spec.choices))] if spec.choices else []) + ([WithinRange(*spec.range)] if spec.range else [])
    return Annotated[(base, *extras)] if extras else base


# The parameter node's fields come from the one Qt-free spec (panel.PARAMETERS).
SynBTParameterNode = parameterNodeWrapper(type("SynBTParameterNode", (), {
    "__module__": __name__,
    "__annotations__": {name: _annotation(spec) for name, spec in panel.PARAMETERS.items()},
    **{name: spec.default for name, spec in panel.PARAMETERS.items() if spec.default is not None},
}))


class SynBTWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._guiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SynBT.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SynBTLogic()
        self.exportSection = JobSection(self.ui.exportButton, self.ui.exportProgressBar, self.ui.exportLogTextEdit,
                                        "Export", "Export again with the same settings to finish it.",
                                        self.startExport, self.updateGui)
        self.trainSection = JobSection(self.ui.trainButton, self.ui.trainProgressBar, self.ui.trainLogTextEdit,
                                       "Train", "Tick Resume and press Train to continue from the last checkpoint.",
                                       self.startTraining, self.updateGui)
        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentSelectionChanged)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentSelectionChanged)
        self.generate = RunControl(self.ui.applyButton, self.ui.progressBar, self.ui.statusLabel, "Generate",
                                   self.startSynthesis, self.showSynthesis, self.updateGui)
        self.segment = RunControl(self.ui.segmentButton, self.ui.segmentProgressBar, self.ui.segmentStatusLabel,
                                  "Segment", self.startSegmentation, panel.segment_summary, self.updateGui)
        for widgetName, field in panel.PATH_PARAMETERS.items():
            getattr(self.ui, widgetName).connect(
                "currentPathChanged(QString)", lambda path, field=field: self.onPathChanged(field, path))
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        self.generate.cancel()
        self.segment.cancel()
        self.exportSection.stop()
        self.trainSection.stop()
        self.removeObservers()
        if self._parameterNode and self._guiTag:
            self._parameterNode.disconnectGui(self._guiTag)

    def enter(self):
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event):
        self.generate.cancel()
        self.segment.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.prePhase:
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            bundle = self._parameterNode.bundlePath or None  # its phase policy picks the phases
            for field, node in zip(panel.PHASE_FIELDS, panel.guess_phases(volumes, bundle=bundle)):
                setattr(self._parameterNode, field, node)
            note = panel.phase_guess_note(volumes, bundle=bundle)
            if note:
                print(f"SynBT: {note}")

    def setParameterNode(self, parameterNode):
        if self._parameterNode and self._guiTag:
            self._parameterNode.disconnectGui(self._guiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = parameterNode
        if parameterNode:
            self._guiTag = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            # Signals blocked: setCurrentNode would report a segment change and overwrite the saved segment id.
            wasBlocked = self.ui.segmentSelector.blockSignals(True)
            self.ui.segmentSelector.setCurrentNode(parameterNode.segmentationNode)
            if parameterNode.segmentId:
                self.ui.segmentSelector.setCurrentSegmentID(parameterNode.segmentId)
            self.ui.segmentSelector.blockSignals(wasBlocked)
        self.updateGui()

    def onPathChanged(self, field, path):
        if self._parameterNode and getattr(self._parameterNode, field) != path:
            setattr(self._parameterNode, field, path)

    def onSegmentSelectionChanged(self, *_):
        if self._parameterNode:
            self._parameterNode.segmentationNode = self.ui.segmentSelector.currentNode()
            self._parameterNode.segmentId = self.ui.segmentSelector.currentSegmentID() or ""

    def updateGui(self, caller=None, event=None):
        p = self._parameterNode
        self.generate.updateButton(panel.missing_input(p) is None)
        self.ui.applyButton.toolTip = "" if self.generate.run else (panel.missing_input(p) or "")
        self.segment.updateButton(panel.segment_ready(p))
        enabled = panel.enabled_widgets(p, self.generate.run is not None, self.exportSection.running, self.trainSection.running)
        for widgetName, value in enabled.items():
            getattr(self.ui, widgetName).enabled = value
        for widgetName, field in panel.PATH_PARAMETERS.items():
            widget, value = getattr(self.ui, widgetName), getattr(p, field) if p else ""
            if widget.currentPath != value:
                widget.currentPath = value
        self.exportSection.updateButton(panel.export_ready(p))
        self.trainSection.updateButton(panel.train_ready(p))

    def startSynthesis(self):
        if not self.logic.ensureDependencies():
            return None
        p = self._parameterNode
        return self.logic.startSynthesis(panel.phase_nodes(p), p.segmentationNode, p.segmentId,
                                         panel.synthesis_request(p), p.outputSuffix)

    def showSynthesis(self, result):
        self.logic.showResult(result)
        return panel.result_summary(result)

    def startSegmentation(self):
        if not self.logic.ensureDependencies():
            return None
        p = self._parameterNode
        return panel.SegmentRun(slicer.mrmlScene, panel.phase_nodes(p), p.segmentModel)

    def startExport(self):
        return self.logic.startExport(panel.export_request(self._parameterNode)) if self.logic.ensureDependencies() else None

    def startTraining(self):
        return self.logic.startTraining(panel.train_request(self._parameterNode)) if self.logic.ensureDependencies() else None


class SynBTLogic(ScriptedLoadableModuleLogic):
    """Console use: ``SynBTLogic().synthesize(phaseNodes, segmentationNode, segmentId, seed=0)``."""

    def getParameterNode(self):
        node = super().getParameterNode()
        fresh = not node.GetParameterNames()
        wrapped = SynBTParameterNode(node)
        if fresh:
            for field, value in panel.initial_values().items():
                setattr(wrapped, field, value)
        return wrapped

    def ensureDependencies(self) -> bool:
        """Install or upgrade missing or incompatible packages after one confirmation; True when all are met."""
        from SynBTLib import dependencies

        def torchBackends():
            import PyTorchUtils

            return PyTorchUtils.PyTorchUtilsLogic.getCompatibleComputationBackends()

        with slicer.util.tryWithErrorDisplay("Installing SynBT's dependencies failed.", waitCursor=True):
            return dependencies.ensure(slicer.util.confirmOkCancelDisplay, slicer.util.pip_install, torchBackends,
                                       slicer.util.restart)
        return False

    def synthesize(self, phaseNodes, segmentationNode=None, segmentId=None, seed=0, method=None, steps=None,
                   bundle=None, autoSizeMm=None, suffix=" SynBT", progress=None, kinetics=None, necrosis=None):
        """Synthesize in this process; returns SynBTLib.mrml.SynthesisResult (new nodes). method None: diffusion
        with the shipped bundle when it and torch are there, else handcrafted. kinetics: a curve type; necrosis:
        "yes"/"no" (None: drawn by the seed)."""
        from SynBTLib.slicer_worker import SynthesisRequest

        request = SynthesisRequest(method=method or panel.default_method(), seed=seed, steps=steps, bundle=bundle,
                                   auto_size_mm=autoSizeMm, kinetics=kinetics, necrosis=necrosis)
        return panel.synthesize_in_process(slicer.mrmlScene, phaseNodes, segmentationNode, segmentId, request,
                                           suffix=suffix, progress=progress)

    def startSynthesis(self, phaseNodes, segmentationNode, segmentId, request, suffix=" SynBT"):
        """A SynthesisRun in a worker process: poll() from a timer, then finish() or cancel()."""
        return panel.SynthesisRun(slicer.mrmlScene, phaseNodes, segmentationNode, segmentId, request, suffix)

    def startExport(self, request):
        from SynBTLib.slicer_worker import CommandJob

        return CommandJob.export(request)

    def startTraining(self, request):
        from SynBTLib.slicer_worker import CommandJob

        return CommandJob.train(request)

    def showResult(self, result):
        slicer.util.setSliceViewerLayers(background=panel.shown_volume(result), fit=True)


class SynBTTest(ScriptedLoadableModuleTest):
    """In a fresh Slicer (numpy, scipy, SimpleITK only): the phantom sample and the handcrafted path in
    process. With SynBT's packages installed: the worker process and Cancel; with torch: diffusion too."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantom_and_handcrafted_in_process()
        from SynBTLib import dependencies

        report = dependencies.check()
        if not report.ok:
            self.delayDisplay(f"Worker and diffusion tests skipped: {report.message()}")
            return
        self.setUp()
        self.test_worker_and_cancel()
        self.setUp()
        self.test_diffusion_in_worker()

    def _phantom(self):
        phases, segmentation = panel.add_phantom_nodes(slicer.mrmlScene, seed=0, shape=(64, 64, 24))
        segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
        return phases, segmentation, segmentId

    def test_phantom_and_handcrafted_in_process(self):
        phases, segmentation, segmentId = self._phantom()
        self.assertEqual(panel.guess_phases(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")), phases)
        before = [slicer.util.arrayFromVolume(n).copy() for n in phases]
        result = SynBTLogic().synthesize(phases, segmentation, segmentId, seed=1, method="handcrafted")
        self.assertEqual(len(result.volume_nodes), len(phases))
        for source, original in zip(phases, before):
            self.assertTrue((slicer.util.arrayFromVolume(source) == original).all())
        self.assertTrue((slicer.util.arrayFromVolume(result.volume_nodes[1]) != before[1]).any())
        self.delayDisplay("Phantom sample and handcrafted synthesis passed")

    def _runToEnd(self, run):
        import time

        while not run.poll().finished:
            slicer.app.processEvents()
            time.sleep(0.05)
        return run.finish()

    def test_worker_and_cancel(self):
        from SynBTLib.slicer_worker import SynthesisRequest

        phases, segmentation, segmentId = self._phantom()
        logic, count = SynBTLogic(), slicer.mrmlScene.GetNumberOfNodes()
        logic.startSynthesis(phases, segmentation, segmentId, SynthesisRequest(seed=2)).cancel()
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        result = self._runToEnd(logic.startSynthesis(phases, segmentation, segmentId, SynthesisRequest(seed=2)))
        self.assertEqual([n.GetName() for n in result.volume_nodes], [n.GetName() + " SynBT" for n in phases])
        self.delayDisplay("Worker synthesis and cancel passed")

    def test_diffusion_in_worker(self):
        from SynBTLib.slicer_worker import SynthesisRequest

        if panel.default_method() != "diffusion":
            self.delayDisplay("Diffusion test skipped: no model bundle")
            return
        phases, segmentation, segmentId = self._phantom()
        request = SynthesisRequest(method="diffusion", seed=3, steps=5)
        result = self._runToEnd(SynBTLogic().startSynthesis(phases, segmentation, segmentId, request))
        self.assertEqual(len(result.volume_nodes), len(phases))
        self.delayDisplay("Diffusion synthesis in the worker passed")
