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

POLL_MS = 200
LOG_BLOCKS = 2000  # lines kept in an Export/Train log box


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


class JobSection:
    """An Export or Train section: its button starts a CommandJob and turns into Stop; a timer shows the
    job's log lines and progress until it ends."""

    def __init__(self, button, progressBar, logBox, idleText, resumeHint, startJob, onStateChanged):
        self.button, self.progressBar, self.logBox, self.idleText = button, progressBar, logBox, idleText
        self.resumeHint, self.startJob, self.onStateChanged = resumeHint, startJob, onStateChanged
        self.job = None
        self.logBox.maximumBlockCount = LOG_BLOCKS
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        button.connect("clicked(bool)", self.onButton)

    @property
    def running(self):
        return self.job is not None

    def updateButton(self, ready):
        stopping = bool(self.job and self.job.stopping)
        self.button.text = "Stopping..." if stopping else ("Stop" if self.job else self.idleText)
        self.button.enabled = (self.job is not None and not stopping) or (self.job is None and ready)

    def onButton(self):
        if self.job is not None:
            self.job.request_stop()
            self.logBox.appendPlainText("Stopping...")
        else:
            with slicer.util.tryWithErrorDisplay("SynBT could not start.", waitCursor=True):
                self.job = self.startJob()
                if self.job is not None:
                    self.logBox.clear()
                    self.logBox.appendPlainText("$ " + " ".join(self.job.command))
                    self.progressBar.value = 0
                    self.timer.start()
        self.onStateChanged()

    def poll(self):
        job = self.job
        self._show(job)
        if job.running:
            return
        self.timer.stop()
        job.wait(timeout=10)
        self._show(job)
        self.job = None
        if job.stopping:
            self.logBox.appendPlainText(f"Stopped. {self.resumeHint}")
        elif job.succeeded:
            self.logBox.appendPlainText("Finished.")
        else:
            self.logBox.appendPlainText(f"Failed: {job.error_message()}")
            slicer.util.errorDisplay(f"SynBT {job.kind} failed: {job.error_message()}")
        self.onStateChanged()

    def _show(self, job):
        for line in job.read_log():
            self.logBox.appendPlainText(line)
        progress = job.progress()
        self.progressBar.value = progress.percent
        self.progressBar.format = f"%p%  {progress.message}" if progress.message else "%p%"
        self.progressBar.toolTip = job.bar

    def stop(self):
        self.timer.stop()
        if self.job is not None:
            job, self.job = self.job, None
            job.stop()


class SynBTWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._guiTag = None
        self._run = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self.onPoll)

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
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        for widgetName, field in panel.PATH_PARAMETERS.items():
            getattr(self.ui, widgetName).connect(
                "currentPathChanged(QString)", lambda path, field=field: self.onPathChanged(field, path))
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        self.cancelRun()
        self.exportSection.stop()
        self.trainSection.stop()
        self.removeObservers()
        if self._parameterNode and self._guiTag:
            self._parameterNode.disconnectGui(self._guiTag)

    def enter(self):
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event):
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.prePhase:
            guessed = panel.guess_phases(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))
            for field, node in zip(panel.PHASE_FIELDS, guessed):
                setattr(self._parameterNode, field, node)

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
        state = panel.generate_button(p, self._run is not None)
        self.ui.applyButton.text, self.ui.applyButton.enabled, self.ui.applyButton.toolTip = state.text, state.enabled, state.tooltip
        enabled = panel.enabled_widgets(p, self._run is not None, self.exportSection.running, self.trainSection.running)
        for widgetName, value in enabled.items():
            getattr(self.ui, widgetName).enabled = value
        for widgetName, field in panel.PATH_PARAMETERS.items():
            widget, value = getattr(self.ui, widgetName), getattr(p, field) if p else ""
            if widget.currentPath != value:
                widget.currentPath = value
        self.exportSection.updateButton(panel.export_ready(p))
        self.trainSection.updateButton(panel.train_ready(p))

    def onApplyButton(self):
        if self._run is not None:
            self.cancelRun()
            self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
            return
        if not self.logic.ensureDependencies():
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("SynBT could not start.", waitCursor=True):
            self._run = self.logic.startSynthesis(panel.phase_nodes(p), p.segmentationNode, p.segmentId,
                                                  panel.synthesis_request(p), p.outputSuffix)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Starting..."
            self._timer.start()
        self.updateGui()

    def onPoll(self):
        status = self._run.poll()
        self.ui.progressBar.value = status.percent
        self.ui.statusLabel.text = status.message
        if not status.finished:
            return
        self._timer.stop()
        run, self._run = self._run, None
        self.updateGui()
        with slicer.util.tryWithErrorDisplay("SynBT synthesis failed.", waitCursor=True):
            result = run.finish()
            self.ui.statusLabel.text = panel.result_summary(result)
            self.logic.showResult(result)

    def startExport(self):
        return self.logic.startExport(panel.export_request(self._parameterNode)) if self.logic.ensureDependencies() else None

    def startTraining(self):
        return self.logic.startTraining(panel.train_request(self._parameterNode)) if self.logic.ensureDependencies() else None

    def cancelRun(self):
        self._timer.stop()
        if self._run is not None:
            run, self._run = self._run, None
            run.cancel()
            self.updateGui()


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

        report = dependencies.check()
        if report.ok:
            return True
        restart = report.needs_restart()
        question = report.message() + " Install them now (a few minutes)?"
        if not slicer.util.confirmOkCancelDisplay(question + (" Slicer must then restart." if restart else "")):
            return False
        with slicer.util.tryWithErrorDisplay("Installing SynBT's dependencies failed.", waitCursor=True):
            if report.torch is not None:
                import PyTorchUtils

                backends = PyTorchUtils.PyTorchUtilsLogic.getCompatibleComputationBackends()
                slicer.util.pip_install(dependencies.torch_pip_arguments(report.torch.requirement,
                                                                         dependencies.pick_backend(backends)))
            if report.pip_requirements():
                slicer.util.pip_install(report.pip_requirements())
        if restart:
            if slicer.util.confirmOkCancelDisplay("SynBT's packages were updated. Restart Slicer now?"):
                slicer.util.restart()
            return False
        return dependencies.check().ok

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
