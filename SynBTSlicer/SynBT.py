"""SynBT: synthesize realistic breast tumors in DCE-MRI (3D Slicer module over SynBTLib)."""
import functools
import logging
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

POLL_MS = 200
LOG_BLOCKS = 2000  # lines kept in an Export/Train log box
# ctkPathLineEdit widget -> str parameter. Synced by hand: parameterNodeWrapper binds a ctkPathLineEdit only
# to pathlib.Path, whose empty value reads back as ".", while an empty field here means "not chosen".
PATH_PARAMETERS = {
    "bundlePathLineEdit": "bundlePath",
    "exportSourcePathLineEdit": "exportSource",
    "exportOutputPathLineEdit": "exportOutput",
    "trainDataPathLineEdit": "trainData",
    "trainOutputPathLineEdit": "trainOutput",
    "trainConfigPathLineEdit": "trainConfig",
    "trainSyntheticPathLineEdit": "trainSyntheticDir",
}

# SynBTLib ships next to this file in an installed extension; from a source checkout it is one level up.
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "SynBTLib")) and _SOURCE_ROOT not in sys.path:
    sys.path.append(_SOURCE_ROOT)

from SynBTLib.capabilities import DEFAULT_STEPS  # noqa: E402  (light: no torch)


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
            "Train segmentation trains a tumor segmentation model on real and synthetic tumors. Both run in a "
            "separate process and resume where Stop left them. Method: arXiv 2509.03267."
        )
        self.parent.acknowledgementText = "SynBT is released under the Apache-2.0 license."


@parameterNodeWrapper
class SynBTParameterNode:
    prePhase: vtkMRMLScalarVolumeNode
    postPhase1: vtkMRMLScalarVolumeNode
    postPhase2: vtkMRMLScalarVolumeNode
    postPhase3: vtkMRMLScalarVolumeNode
    segmentationNode: vtkMRMLSegmentationNode
    segmentId: str = ""
    useAutoTumor: bool = False
    autoSizeMm: Annotated[float, WithinRange(3.0, 60.0)] = 15.0
    method: Annotated[str, Choice(["diffusion", "handcrafted"])] = "handcrafted"
    bundlePath: str = ""
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    steps: Annotated[int, WithinRange(1, 1000)] = DEFAULT_STEPS
    # the tumor's curve type, for bundles trained with kinetic classes ("drawn": by the seed)
    kinetics: Annotated[str, Choice(["drawn", "persistent", "plateau", "washout", "any"])] = "drawn"
    # a necrotic core, for bundles trained with cores ("drawn": by the seed)
    necrosis: Annotated[str, Choice(["drawn", "yes", "no"])] = "drawn"
    outputSuffix: str = " SynBT"
    # Export synthetic cases (`synbt export`); the diffusion method uses bundlePath and steps above.
    exportSource: str = ""
    exportOutput: str = ""
    exportNumCases: Annotated[int, WithinRange(1, 100000)] = 10
    exportFormat: Annotated[str, Choice(["nnunet", "monai"])] = "nnunet"
    exportMethod: Annotated[str, Choice(["diffusion", "handcrafted"])] = "handcrafted"
    exportSizeMinMm: Annotated[float, WithinRange(5.0, 80.0)] = 10.0
    exportSizeMaxMm: Annotated[float, WithinRange(5.0, 80.0)] = 30.0
    exportSeed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    exportNecrosis: Annotated[str, Choice(["drawn", "yes", "no"])] = "drawn"
    # Train segmentation (`synbt train-seg`).
    trainData: str = ""
    trainOutput: str = ""
    trainConfig: str = ""
    trainSynthetic: Annotated[str, Choice(["none", "offline", "on-the-fly"])] = "none"
    trainSyntheticDir: str = ""
    trainMethod: Annotated[str, Choice(["diffusion", "handcrafted"])] = "handcrafted"
    trainRatio: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    trainEpochs: Annotated[int, WithinRange(1, 100000)] = 20
    trainSeed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    trainResume: bool = False

    def phaseNodes(self):
        return [n for n in (self.prePhase, self.postPhase1, self.postPhase2, self.postPhase3) if n is not None]

    def request(self):
        from SynBTLib.slicer_worker import SynthesisRequest

        diffusion = self.method == "diffusion"
        return SynthesisRequest(
            method=self.method,
            seed=self.seed,
            steps=self.steps if diffusion else None,
            bundle=(self.bundlePath or None) if diffusion else None,
            auto_size_mm=self.autoSizeMm if self.useAutoTumor else None,
            kinetics=self.kinetics if diffusion and self.kinetics != "drawn" else None,
            necrosis=self.necrosis if diffusion and self.necrosis != "drawn" else None,
        )

    def exportRequest(self):
        from SynBTLib.slicer_worker import ExportRequest

        diffusion = self.exportMethod == "diffusion"
        return ExportRequest(
            source=self.exportSource, out=self.exportOutput, num_cases=self.exportNumCases, format=self.exportFormat,
            method=self.exportMethod, size_mm=(self.exportSizeMinMm, self.exportSizeMaxMm), seed=self.exportSeed,
            bundle=(self.bundlePath or None) if diffusion else None, steps=self.steps if diffusion else None,
            necrosis=self.exportNecrosis if diffusion and self.exportNecrosis != "drawn" else None,
        )

    def trainRequest(self):
        from SynBTLib.slicer_worker import TrainRequest

        return TrainRequest(
            data=self.trainData, out=self.trainOutput, synthetic=self.trainSynthetic,
            synthetic_dir=self.trainSyntheticDir or None, method=self.trainMethod, ratio=self.trainRatio,
            epochs=self.trainEpochs, seed=self.trainSeed, resume=self.trainResume, config=self.trainConfig or None,
        )


class JobSection:
    """An Export or Train section: its button starts a CommandJob (SynBTLib.slicer_worker) and turns into
    Stop; a timer appends the job's log lines and shows its progress until it ends."""

    def __init__(self, button, progressBar, logBox, idleText, resumeHint, startJob, onStateChanged):
        self.button, self.progressBar, self.logBox, self.idleText = button, progressBar, logBox, idleText
        self.resumeHint = resumeHint
        self.startJob, self.onStateChanged = startJob, onStateChanged
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
            self.onStateChanged()
            return
        with slicer.util.tryWithErrorDisplay("SynBT could not start.", waitCursor=True):
            job = self.startJob()
            if job is None:
                return
            self.job = job
            self.logBox.clear()
            self.logBox.appendPlainText("$ " + " ".join(job.command))
            self.progressBar.value = 0
            self.progressBar.format = "%p%"
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
        """Stop the job and wait for it (module cleanup)."""
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
        self._job = None
        self._jobPhases, self._jobSuffix = [], " SynBT"
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
        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentSelectionChanged)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentSelectionChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        for widgetName, field in PATH_PARAMETERS.items():
            getattr(self.ui, widgetName).connect(
                "currentPathChanged(QString)", lambda path, field=field: self.onPathChanged(field, path))
        self.exportSection = JobSection(self.ui.exportButton, self.ui.exportProgressBar, self.ui.exportLogTextEdit,
                                        "Export", "Export again with the same settings to finish it.",
                                        self.startExport, self.updateGui)
        self.trainSection = JobSection(self.ui.trainButton, self.ui.trainProgressBar, self.ui.trainLogTextEdit,
                                       "Train", "Tick Resume and press Train to continue from the last checkpoint.",
                                       self.startTraining, self.updateGui)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        self.cancelJob()
        self.exportSection.stop()
        self.trainSection.stop()
        self.removeObservers()
        if self._parameterNode and self._guiTag:
            self._parameterNode.disconnectGui(self._guiTag)

    def onSceneStartClose(self, caller, event):
        self.cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def enter(self):
        self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.prePhase:
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            volumes = [v for v in volumes if not v.IsA("vtkMRMLLabelMapVolumeNode")]
            for name, node in zip(("prePhase", "postPhase1"), volumes):
                setattr(self._parameterNode, name, node)

    def setParameterNode(self, parameterNode):
        if self._parameterNode and self._guiTag:
            self._parameterNode.disconnectGui(self._guiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = parameterNode
        if parameterNode:
            self._guiTag = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            self.ui.segmentSelector.setCurrentNode(parameterNode.segmentationNode)
            if parameterNode.segmentId:
                self.ui.segmentSelector.setCurrentSegmentID(parameterNode.segmentId)
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
        running = self._job is not None
        ready = bool(p and len(p.phaseNodes()) >= 2 and (p.useAutoTumor or (p.segmentationNode and p.segmentId)))
        self.ui.applyButton.text = "Cancel" if running else "Generate"
        self.ui.applyButton.enabled = running or ready
        self.ui.applyButton.toolTip = "" if (running or ready) else "Select two or more phases and a tumor segment (or an automatic size)."
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.methodCollapsibleButton.enabled = not running
        diffusion = bool(p and p.method == "diffusion")
        self.ui.bundlePathLineEdit.enabled = diffusion
        self.ui.stepsSpinBox.enabled = diffusion
        self.ui.kineticsComboBox.enabled = diffusion
        self.ui.necrosisComboBox.enabled = diffusion
        self.ui.segmentSelector.enabled = bool(p and not p.useAutoTumor)
        self.ui.autoSizeSpinBox.enabled = bool(p and p.useAutoTumor)
        if not hasattr(self, "exportSection"):  # before setup() has finished
            return
        for widgetName, field in PATH_PARAMETERS.items():
            widget, value = getattr(self.ui, widgetName), getattr(p, field) if p else ""
            if widget.currentPath != value:
                widget.currentPath = value
        self.ui.exportSettingsWidget.enabled = not self.exportSection.running
        self.exportSection.updateButton(bool(p and p.exportSource and p.exportOutput))
        self.ui.trainSettingsWidget.enabled = not self.trainSection.running
        self.trainSection.updateButton(bool(p and p.trainData and p.trainOutput))
        self.ui.trainSyntheticPathLineEdit.enabled = bool(p and p.trainSynthetic == "offline")
        self.ui.trainRatioSpinBox.enabled = bool(p and p.trainSynthetic != "none")
        self.ui.trainMethodComboBox.enabled = bool(p and p.trainSynthetic == "on-the-fly")
        self.ui.exportNecrosisComboBox.enabled = bool(p and p.exportMethod == "diffusion")

    def onApplyButton(self):
        if self._job is not None:
            self.cancelJob()
            self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
            return
        if not self.logic.ensureDependencies():
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("SynBT could not start.", waitCursor=True):
            self._job = self.logic.startSynthesis(p.phaseNodes(), p.segmentationNode, p.segmentId, p.request())
            self._jobPhases, self._jobSuffix = p.phaseNodes(), p.outputSuffix
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Starting..."
            self._timer.start()
        self.updateGui()

    def onPoll(self):
        for event in self._job.poll():
            self.ui.progressBar.value = event.percent
            self.ui.statusLabel.text = event.message or event.event
        if self._job.running:
            return
        self._timer.stop()
        job, self._job = self._job, None
        self.updateGui()
        with slicer.util.tryWithErrorDisplay("SynBT synthesis failed.", waitCursor=True):
            result = self.logic.loadSynthesis(job, self._jobPhases, self._jobSuffix)
            self.ui.statusLabel.text = f"Added {len(result.volume_nodes)} volumes and '{result.segmentation_node.GetName()}'."
            self.logic.showResult(result)

    def startExport(self):
        if not self.logic.ensureDependencies():
            return None
        return self.logic.startExport(self._parameterNode.exportRequest())

    def startTraining(self):
        if not self.logic.ensureDependencies():
            return None
        return self.logic.startTraining(self._parameterNode.trainRequest())

    def cancelJob(self):
        self._timer.stop()
        if self._job is not None:
            job, self._job = self._job, None
            job.cancel()
            self.updateGui()


class SynBTLogic(ScriptedLoadableModuleLogic):
    """Console use: ``SynBTLogic().synthesize(phaseNodes, segmentationNode, segmentId, seed=0)``."""

    def getParameterNode(self):
        node = super().getParameterNode()
        fresh = not node.GetParameterNames()
        wrapped = SynBTParameterNode(node)
        if fresh:
            wrapped.method = wrapped.exportMethod = wrapped.trainMethod = self.defaultMethod()
        return wrapped

    def defaultMethod(self):
        """"diffusion" when the model bundle shipped with SynBT is there, else "handcrafted"."""
        from SynBTLib.slicer_worker import default_method

        return default_method()

    def ensureDependencies(self) -> bool:
        """Install missing Python packages after one confirmation; True when everything imports."""
        from SynBTLib.slicer_worker import PIP_REQUIREMENTS, TORCH_VERSION, missing_modules

        missing = missing_modules()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
            f"SynBT needs these Python packages: {', '.join(missing)}. Install them now (a few minutes)?"
        ):
            return False
        with slicer.util.tryWithErrorDisplay("Installing SynBT's dependencies failed.", waitCursor=True):
            if "torch" in missing:
                import PyTorchUtils

                torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                if not torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=f"=={TORCH_VERSION}"):
                    raise RuntimeError("PyTorch could not be installed (PyTorch extension)")
            others = [PIP_REQUIREMENTS[name] for name in missing if name != "torch"]
            if others:
                slicer.util.pip_install(others)
        return not missing_modules()

    def synthesize(self, phaseNodes, segmentationNode=None, segmentId=None, seed=0, method=None,
                   steps=None, bundle=None, autoSizeMm=None, suffix=" SynBT", progress=None, kinetics=None,
                   necrosis=None):
        """Synthesize in this process; returns SynBTLib.mrml.SynthesisResult (new nodes).
        method None: diffusion with the shipped bundle when it is there, else handcrafted.
        kinetics: the curve type for a bundle trained with kinetic classes (None: drawn by the seed).
        necrosis: "yes"/"no" (or True/False): a necrotic core, for a bundle trained with cores (None: drawn)."""
        from SynBTLib import mrml
        from SynBTLib.slicer_worker import auto_tumor_mask
        from SynBTLib.synthesizers import check_request, make_synthesizer

        method = method or self.defaultMethod()
        synthesizer, _, steps = make_synthesizer(method, bundle=bundle, steps=steps)
        request = check_request(method, steps, kinetics, necrosis, bundle, synthesizer=synthesizer, prefix="")
        if request.options:
            synthesizer = functools.partial(synthesizer, **request.options)
        if autoSizeMm is None:
            return mrml.synthesize_nodes(slicer.mrmlScene, phaseNodes, segmentationNode, segmentId, synthesizer,
                                         seed=seed, steps=steps, progress=progress, suffix=suffix)
        case = mrml.case_from_volume_nodes(phaseNodes)
        mask = auto_tumor_mask(case, autoSizeMm, seed)
        result = synthesizer(case, mask, seed=seed, steps=steps, progress=progress)
        return mrml.add_result_nodes(slicer.mrmlScene, phaseNodes, result, mask, suffix=suffix)

    def startSynthesis(self, phaseNodes, segmentationNode, segmentId, request):
        """Start a worker process (`PythonSlicer -m SynBTLib synthesize`); returns the SynthesisJob."""
        from SynBTLib import mrml
        from SynBTLib.slicer_worker import SynthesisJob

        case = mrml.case_from_volume_nodes(phaseNodes)
        mask = None
        if request.auto_size_mm is None:
            mask = mrml.mask_from_segment(segmentationNode, segmentId, case.geometry)
        return SynthesisJob.start(case, mask, request)

    def loadSynthesis(self, job, phaseNodes, suffix=" SynBT"):
        """The finished job's outputs as new nodes (raises with the worker's error line if it failed)."""
        from SynBTLib import mrml

        result, mask = job.result()
        return mrml.add_result_nodes(slicer.mrmlScene, phaseNodes, result, mask, suffix=suffix)

    def startExport(self, request):
        """Start `PythonSlicer -m SynBTLib export` for a SynBTLib.slicer_worker.ExportRequest; returns the
        CommandJob (progress(), read_log(), request_stop()/stop(), wait())."""
        from SynBTLib.slicer_worker import CommandJob

        return CommandJob.export(request)

    def startTraining(self, request):
        """Start `PythonSlicer -m SynBTLib train-seg` for a SynBTLib.slicer_worker.TrainRequest; returns the
        CommandJob."""
        from SynBTLib.slicer_worker import CommandJob

        return CommandJob.train(request)

    def showResult(self, result):
        shown = result.volume_nodes[1] if len(result.volume_nodes) > 1 else result.volume_nodes[0]
        slicer.util.setSliceViewerLayers(background=shown, fit=True)


class SynBTTest(ScriptedLoadableModuleTest):
    """The whole path inside Slicer on a phantom case: in-process and worker process, cancel included."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_synthesis_on_phantom()
        self.setUp()
        self.test_worker_and_cancel()
        self.test_export_and_training_jobs()

    def _phantomNodes(self):
        import numpy as np
        from SynBTLib import labels, mrml
        from SynBTLib.phantom import make_phantom

        phantom = make_phantom(seed=0, shape=(64, 64, 24), phases=3)  # shape is (x, y, z)
        phases = []
        for k in range(phantom.case.num_phases):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"phantom phase {k}")
            slicer.util.updateVolumeFromArray(node, phantom.case.phases[k])
            mrml.set_volume_geometry(node, phantom.case.geometry)
            node.CreateDefaultDisplayNodes()
            phases.append(node)
        breast = np.isin(phantom.tissue_labels, labels.BREAST_TISSUE)
        from scipy.ndimage import distance_transform_edt

        depth = distance_transform_edt(breast)
        center = np.unravel_index(np.argmax(depth), breast.shape)  # deepest breast voxel
        mask = np.zeros(breast.shape, np.uint8)
        z, y, x = center
        mask[z - 2:z + 3, y - 3:y + 4, x - 3:x + 4] = 1
        mask &= breast.astype(np.uint8)
        segmentation, segmentId = mrml.add_segmentation_node(slicer.mrmlScene, mask, phases[0], "drawn")
        return phases, segmentation, segmentId, mask

    def test_synthesis_on_phantom(self):
        from SynBTLib import mrml

        phases, segmentation, segmentId, mask = self._phantomNodes()
        before = [slicer.util.arrayFromVolume(n).copy() for n in phases]
        result = SynBTLogic().synthesize(phases, segmentation, segmentId, seed=1)
        self.assertEqual(len(result.volume_nodes), 3)
        for node, source, original in zip(result.volume_nodes, phases, before):
            self.assertEqual(mrml.geometry_from_volume_node(node), mrml.geometry_from_volume_node(source))
            self.assertTrue((slicer.util.arrayFromVolume(source) == original).all())
        changed = slicer.util.arrayFromVolume(result.volume_nodes[1]) != before[1]
        self.assertTrue(changed[mask > 0].any())
        self.delayDisplay("In-process synthesis passed")

    def test_worker_and_cancel(self):
        from SynBTLib.slicer_worker import SynthesisRequest

        phases, segmentation, segmentId, _ = self._phantomNodes()
        logic = SynBTLogic()
        count = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.startSynthesis(phases, segmentation, segmentId, SynthesisRequest(seed=2))
        job.cancel()
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        job = logic.startSynthesis(phases, segmentation, segmentId, SynthesisRequest(seed=2))
        result = logic.loadSynthesis(job, phases)
        self.assertEqual([n.GetName() for n in result.volume_nodes], [f"phantom phase {k} SynBT" for k in range(3)])
        logging.info("SynBT worker output: %s", result.segmentation_node.GetName())
        self.delayDisplay("Worker synthesis and cancel passed")

    def test_export_and_training_jobs(self):
        import json
        import tempfile
        import time
        from pathlib import Path

        from SynBTLib.phantom import make_phantom, write_phantom
        from SynBTLib.slicer_worker import ExportRequest, TrainRequest

        logic = SynBTLogic()
        with tempfile.TemporaryDirectory(prefix="SynBTTest-") as folder:
            source = Path(folder) / "source"
            for k in range(2):
                write_phantom(make_phantom(seed=k, shape=(48, 48, 20)), source / f"case_{k}", montage=False)
            out = Path(folder) / "export"
            job = logic.startExport(ExportRequest(str(source), str(out), num_cases=2, format="monai",
                                                  method="handcrafted", size_mm=(8, 12)))
            self.assertEqual(job.wait(), 0, job.error_message())
            self.assertEqual(job.progress().percent, 100)
            self.assertTrue((out / "datalist.json").is_file())
            config = Path(folder) / "tiny.json"
            config.write_text(json.dumps({
                "model": {"channels": [4, 8], "num_res_units": 0}, "training": {"batch_size": 1, "checkpoint_every": 2},
                "data": {"patch_size": [8, 16, 16], "steps_per_epoch": 2},
            }))
            run = Path(folder) / "run"
            job = logic.startTraining(TrainRequest(str(source), str(run), synthetic="offline", synthetic_dir=str(out),
                                                   epochs=5000, config=str(config)))
            while job.running and job.progress().done < 4:
                slicer.app.processEvents()
                time.sleep(0.05)
            self.assertTrue(job.running, job.error_message())
            job.stop()
            self.assertFalse(job.running)
            self.assertFalse(list(run.rglob("*.tmp")))
        self.delayDisplay("Export and training jobs passed")
