"""SynBT: synthesize realistic breast tumors in DCE-MRI (3D Slicer module over SynBTLib)."""
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

# SynBTLib ships next to this file in an installed extension; from a source checkout it is one level up.
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "SynBTLib")) and _SOURCE_ROOT not in sys.path:
    sys.path.append(_SOURCE_ROOT)


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
            "segmentation; inputs are never modified. Method: arXiv 2509.03267."
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
    steps: Annotated[int, WithinRange(1, 1000)] = 30
    outputSuffix: str = " SynBT"

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
        )


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
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        self.cancelJob()
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
        self.ui.segmentSelector.enabled = bool(p and not p.useAutoTumor)
        self.ui.autoSizeSpinBox.enabled = bool(p and p.useAutoTumor)

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

    def cancelJob(self):
        self._timer.stop()
        if self._job is not None:
            job, self._job = self._job, None
            job.cancel()
            self.updateGui()


class SynBTLogic(ScriptedLoadableModuleLogic):
    """Console use: ``SynBTLogic().synthesize(phaseNodes, segmentationNode, segmentId, seed=0)``."""

    def getParameterNode(self):
        return SynBTParameterNode(super().getParameterNode())

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

    def synthesize(self, phaseNodes, segmentationNode=None, segmentId=None, seed=0, method="handcrafted",
                   steps=None, bundle=None, autoSizeMm=None, suffix=" SynBT", progress=None):
        """Synthesize in this process; returns SynBTLib.mrml.SynthesisResult (new nodes)."""
        from SynBTLib import mrml
        from SynBTLib.slicer_worker import auto_tumor_mask
        from SynBTLib.synthesizers import make_synthesizer

        synthesizer, _, steps = make_synthesizer(method, bundle=bundle, steps=steps)
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
