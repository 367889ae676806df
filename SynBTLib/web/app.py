"""The SynBT page: a trame-slicer axial view over a real MRML scene, and the panel's widgets wired to
SynBTLib.slicer_panel (the same Qt-free logic as the Slicer panel: phase guess, missing input, enabled
widgets, requests, SynthesisRun, click-placed tumor, result nodes)."""
from __future__ import annotations

import asyncio
import base64
import io as _io
from pathlib import Path

import numpy as np

from .. import mrml, slicer_panel as panel
from ..errors import SynBTError
from .files import list_cases, resolve_inside

POLL_S = 0.25
SUBTRACTION_OF = "SynBT.SubtractionOf"  # on a subtraction node: "<pre id>|<post 1 id>" it was made from
TOOLS = ("none", "place", "paint", "draw", "erase")


class StateParameters:
    """The panel's parameters (slicer_panel.PARAMETERS) read from the page's state ("p_<name>"), with
    node ids turned into the scene's nodes: what slicer_panel's functions take, as in the Slicer panel.
    A page's fields hold anything (text, out of range): a value is converted and checked as it is read
    (slicer_panel.parameter_value), so a bad one is a SynBTError naming the parameter and its range."""

    def __init__(self, state, scene):
        self._state, self._scene = state, scene

    def __getattr__(self, name):
        spec = panel.PARAMETERS.get(name)
        if spec is None:
            raise AttributeError(name)
        value = self._state[f"p_{name}"]
        if spec.kind in ("volume", "segmentation"):
            return self._scene.GetNodeByID(value) if value else None
        return panel.parameter_value(name, value)


def _png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def curve_png(curves: dict[str, list[float]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.4, 2.4), dpi=100)
    for name, values in curves.items():
        ax.plot(range(len(values)), [100 * v for v in values], marker="o", label=name)
    count = max(len(v) for v in curves.values())
    ax.set_xticks(range(count), ["pre"] + [f"post {k}" for k in range(1, count)])
    ax.set(ylabel="enhancement (%)", title="kinetic curve (mean)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


class SynBTWeb:
    """One browser page (all clients share its scene, as trame apps do) over --data."""

    def __init__(self, server, data: str | Path):
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        self.server, self.state = server, server.state
        self.data = Path(data).resolve()
        self.server.enable_module(trame_slicer_module)
        self.slicer = SlicerApp()
        self.scene = self.slicer.scene
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layout_manager = LayoutManager(self.scene, self.slicer.view_manager, self.server)
        self.layout_manager.register_layout_dict({"Axial": Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.axial_view()])})
        self.layout_manager.set_layout("Axial")
        self.parameters = StateParameters(self.state, self.scene)
        self.run: panel.SynthesisRun | None = None
        self.result: mrml.SynthesisResult | None = None
        self.export_job = None
        self.phases: list = []
        self._click_observer = None
        self._init_state()
        self._build_ui()
        self.state.change(*[f"p_{n}" for n in panel.PARAMETERS], "tumor_mode")(self._refresh)
        self.state.change("tool")(self._on_tool)
        self.state.change("show_after", "shown_phase")(self._show_current)

    # ------------------------------------------------------------ state

    def _init_state(self):
        s = self.state
        s.trame__title = "SynBT"
        for name, spec in panel.PARAMETERS.items():
            s[f"p_{name}"] = spec.default
        for name, value in panel.initial_values().items():
            s[f"p_{name}"] = value
        s.update(cases=list_cases(self.data), case_name=None, volumes=[], segmentations=[], segments=[],
                 tumor_mode="click", tool="none", status="Choose a case.", error="", missing="", enabled={},
                 running=False, progress=0, progress_message="", has_result=False, show_after=True,
                 shown_phase=1, phase_items=[], curve="", saved="", export_running=False, export_progress=0,
                 export_message="", methods=list(panel.METHODS), kinetics_choices=list(panel.KINETICS_CHOICES),
                 necrosis_choices=list(panel.NECROSIS_CHOICES), export_formats=list(panel.EXPORT_FORMATS))

    def _refresh(self, **_):
        """Derived state from slicer_panel: what is missing before Generate (an input, or a value outside
        its range in PARAMETERS), which widgets are enabled."""
        s = self.state
        s.p_useAutoTumor = s.tumor_mode == "auto"
        try:
            s.missing = panel.missing_input(self.parameters) or ""
            s.enabled = panel.enabled_widgets(self.parameters, bool(self.run), bool(self.export_job), False)
            if not s.missing:
                panel.check_parameters(self.parameters, panel.synthesis_parameters(self.parameters))
        except SynBTError as exc:
            s.missing = str(exc)
        segmentation = self.parameters.segmentationNode
        s.segments = [] if segmentation is None else [
            {"title": seg.GetName(), "value": seg_id} for seg_id, seg in _segments(segmentation)]

    def _error(self, message: str) -> None:
        self.state.error = message
        self.state.status = ""

    # ------------------------------------------------------------ case

    def load_case(self, relative: str | None = None) -> None:
        """Read a case folder under --data with the engine's reader and add its phases as volume nodes."""
        from ..io import read_case

        try:
            folder = resolve_inside(self.data, relative if relative is not None else (self.state.case_name or ""))
            case = read_case(folder)
        except (SynBTError, OSError) as exc:
            return self._error(str(exc))
        self._clear_scene()
        nodes = [mrml.add_volume_from_array(self.scene, case.phases[k], case.geometry, name)
                 for k, name in enumerate(case.phase_names)]
        self._after_load(nodes, f"Loaded {folder.name}: {len(nodes)} phases.")

    def load_phantom(self) -> None:
        """The "SynBT phantom" sample (made here, no download), with a region to synthesize in."""
        self._clear_scene()
        nodes, segmentation = panel.add_phantom_nodes(self.scene)
        self._after_load(nodes, "Loaded the SynBT phantom (a tumor region is drawn).")
        self.state.tumor_mode = "segment"
        self.state.p_segmentationNode = segmentation.GetID()
        self.state.p_segmentId = _segments(segmentation)[0][0]
        self._refresh()

    def _clear_scene(self) -> None:
        if self.run:
            self.run.cancel()
            self.run = None
        for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"):
            for node in list(self.scene.GetNodesByClass(cls)):
                self.scene.RemoveNode(node)
        self.result = None
        self.state.update(has_result=False, curve="", saved="", error="", p_segmentationNode=None, p_segmentId="",
                          running=False)

    def _after_load(self, nodes, message: str) -> None:
        guessed = panel.guess_phases(nodes)
        s = self.state
        s.volumes = [{"title": n.GetName(), "value": n.GetID()} for n in nodes]
        for field in panel.PHASE_FIELDS:
            s[f"p_{field}"] = None
        for field, node in zip(panel.PHASE_FIELDS, guessed):
            s[f"p_{field}"] = node.GetID()
        self._list_segmentations()
        self.phases = guessed
        self._show(guessed[min(1, len(guessed) - 1)] if guessed else nodes[0], reset=True)
        s.status, s.error = message, ""
        self._refresh()

    def _list_segmentations(self):
        self.state.segmentations = [{"title": n.GetName(), "value": n.GetID()}
                                    for n in self.scene.GetNodesByClass("vtkMRMLSegmentationNode")]

    def _show(self, volume_node, reset: bool = False) -> None:
        self.slicer.display_manager.show_volume_in_slice_background(volume_node)
        if reset:
            self.slicer.display_manager.reset_views()
        for view in self.slicer.view_manager.get_views():
            view.schedule_render()

    # ------------------------------------------------------------ tumor region

    def _axial_view(self):
        views = self.slicer.view_manager.get_slice_views()
        return views[0] if views else None

    def _on_tool(self, tool, **_):
        editor = self.slicer.segmentation_editor
        from trame_slicer.segmentation import (SegmentationEffectDraw, SegmentationEffectErase, SegmentationEffectNoTool,
                                               SegmentationEffectPaint)

        if tool in ("paint", "draw", "erase"):
            phases = panel.phase_nodes(self.parameters)
            if not phases:
                self.state.tool = "none"
                return self._error("Load a case first.")
            segmentation = self.parameters.segmentationNode
            if segmentation is None or segmentation.GetAttribute(panel.OUTPUT_ATTRIBUTE):
                segmentation = editor.create_empty_segmentation_node()
                segmentation.SetName("SynBT drawn region")
                editor.set_active_segmentation(segmentation, phases[0])
                editor.add_empty_segment(segment_name="tumor region", segment_color=list(mrml.TUMOR_SEGMENT_COLOR))
            else:
                editor.set_active_segmentation(segmentation, phases[0])
            self._list_segmentations()
            self.state.update(tumor_mode="segment", p_segmentationNode=segmentation.GetID(),
                              p_segmentId=editor.get_active_segment_id())
            effect = {"paint": SegmentationEffectPaint, "draw": SegmentationEffectDraw, "erase": SegmentationEffectErase}[tool]
            editor.set_active_effect_type(effect)
        else:
            editor.set_active_effect_type(SegmentationEffectNoTool)
        self._observe_clicks(tool == "place")

    def _observe_clicks(self, on: bool) -> None:
        view = self._axial_view()
        if view is None:
            return
        interactor = view.interactor()
        if self._click_observer is not None:
            interactor.RemoveObserver(self._click_observer)
            self._click_observer = None
        if on:
            self._click_observer = interactor.AddObserver("LeftButtonPressEvent", self._on_click, 10.0)

    def _on_click(self, interactor, _event) -> None:
        view = self._axial_view()
        x, y = interactor.GetEventPosition()
        ras = np.array(view.get_view_node().GetXYToRAS().MultiplyPoint((float(x), float(y), 0.0, 1.0))[:3])
        self.place_tumor(ras)

    def place_tumor(self, ras) -> None:
        """A tumor of the chosen diameter at a clicked point (slicer_panel.add_placed_tumor, as the Slicer effect)."""
        phases = panel.phase_nodes(self.parameters)
        if len(phases) < 2:
            return self._error("Load a case and choose its phases first.")
        try:
            size = self.parameters.autoSizeMm
            node, segment_id = panel.add_placed_tumor(self.scene, phases, ras, size, self.parameters.seed)
        except SynBTError as exc:
            return self._error(str(exc))
        for old in list(self.scene.GetNodesByClass("vtkMRMLSegmentationNode")):
            if old is not node and old.GetName() == panel.PLACED_TUMOR_NAME:
                self.scene.RemoveNode(old)
        self._list_segmentations()
        with self.state:
            self.state.update(tumor_mode="segment", p_segmentationNode=node.GetID(), p_segmentId=segment_id,
                              error="", status=f"Placed a {size:g} mm tumor at "
                              f"R {ras[0]:.0f}, A {ras[1]:.0f}, S {ras[2]:.0f}.")
            self._refresh()
        self._show(panel.phase_nodes(self.parameters)[1])

    # ------------------------------------------------------------ generate

    def generate(self) -> None:
        """Start a run from the page's values, each checked against slicer_panel.PARAMETERS (a bad one is
        a one-line error naming it, and nothing starts)."""
        if self.run is not None:
            return self._error("A synthesis is already running.")
        try:
            missing = panel.missing_input(self.parameters)
            if missing:
                return self._error(missing)
            request = panel.synthesis_request(self.parameters)
            if request.bundle:
                request.bundle = str(resolve_inside(self.data, request.bundle))
            phases = panel.phase_nodes(self.parameters)
            self.run = panel.SynthesisRun(self.scene, phases, self.parameters.segmentationNode,
                                          self.parameters.segmentId, request, suffix=self.parameters.outputSuffix)
        except (SynBTError, OSError) as exc:
            return self._error(str(exc))
        self.phases = phases
        self.state.update(running=True, progress=0, progress_message="starting", error="", status="Generating...",
                          tool="none")
        self._refresh()
        self.poll_task = asyncio.ensure_future(self._poll_run(self.run))

    async def _poll_run(self, run: panel.SynthesisRun) -> None:
        """Follow the worker until it ends, then add its result. Any failure on the way (the worker, its
        outputs, reading them back, the display) ends the run with the error on the page, the controls
        enabled again and the scene as it was before Generate."""
        result, previous = None, self.result
        try:
            while run is self.run:
                status = run.poll()
                with self.state:
                    self.state.progress, self.state.progress_message = status.percent, status.message
                if status.finished:
                    break
                await asyncio.sleep(POLL_S)
            if run is not self.run:  # cancelled
                return
            result = run.finish()
            self._show_result(result)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the page must leave "Generating..."
            if run is not self.run:
                return  # cancelled meanwhile: cancel() has already reset the page
            self._fail_run(run, result, previous, exc)
        finally:
            if run is self.run:
                self.run = None
                with self.state:
                    self.state.running = False
                    self._refresh()

    def _show_result(self, result: mrml.SynthesisResult) -> None:
        mask = mrml.mask_from_segment(result.segmentation_node, result.segment_id,
                                      mrml.geometry_from_volume_node(result.volume_nodes[0]))
        curve = _png_data_url(curve_png(panel.kinetic_curves(result.volume_nodes, mask)))
        with self.state:
            self.result = result
            self.state.curve = curve
            self.state.phase_items = [{"title": n.GetName(), "value": k} for k, n in enumerate(self.phases)] + [
                {"title": "subtraction (post 1 - pre)", "value": -1}]
            self._outline_only()
            self.state.update(has_result=True, show_after=True, shown_phase=1, progress=100, error="",
                              status=panel.result_summary(result))
            self._show_current()

    def _fail_run(self, run, result, previous, exc: Exception) -> None:
        """A failed run: the worker stopped, whatever it added removed (the previous result, if any, shown
        again), the error on the page in one line."""
        try:
            run.cancel()  # kills a worker still running and removes its temporary folder
        except Exception:  # noqa: BLE001 - the error shown is the first one
            pass
        if result is not None:
            made = {node.GetID() for node in result.volume_nodes}
            for node in list(self.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")):
                if set((node.GetAttribute(SUBTRACTION_OF) or "").split("|")) & made:
                    self.scene.RemoveNode(node)
            for node in [*result.volume_nodes, result.segmentation_node]:
                if node is not None and self.scene.IsNodePresent(node):
                    self.scene.RemoveNode(node)
        message = str(exc) if isinstance(exc, SynBTError) else f"{type(exc).__name__}: {exc}"
        lines = [line for line in message.splitlines() if line.strip()]
        self.run, self.result = None, previous
        with self.state:
            self.state.update(running=False, progress=0, has_result=previous is not None)
            self._error(f"Generate failed: {lines[0] if lines else type(exc).__name__}")
            self._refresh()
        if previous is not None:
            try:
                self._outline_only()
                self._show_current()
            except Exception:  # noqa: BLE001 - the error shown is the first one
                pass

    def _outline_only(self) -> None:
        """After Generate the tumor is the thing to look at: segmentations are drawn as outlines only."""
        for node in self.scene.GetNodesByClass("vtkMRMLSegmentationNode"):
            display = node.GetDisplayNode()
            if display is not None:
                display.SetOpacity2DFill(0.0)
                display.SetOpacity2DOutline(1.0)
                display.SetVisibility(node is self.result.segmentation_node)

    def cancel(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.cancel()
        self.state.update(running=False, progress=0, status="Cancelled: nothing was added.")
        self._refresh()

    def _show_current(self, **_):
        if not self.result:
            return
        nodes = self.result.volume_nodes if self.state.show_after else self.phases
        k = int(self.state.shown_phase)
        if k < 0:
            key = f"{nodes[0].GetID()}|{nodes[1].GetID()}"  # post 1 - pre of these very volumes
            node = next((n for n in self.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
                         if n.GetAttribute(SUBTRACTION_OF) == key), None)
            if node is None:
                node = panel.add_subtraction_node(self.scene, nodes)
                node.SetAttribute(SUBTRACTION_OF, key)
                # window 0 .. high percentile of the enhancement: the auto window centres on zero (grey background)
                values = mrml.array_from_volume_node(node)
                high = float(np.percentile(values[values > 0], 99.5)) if (values > 0).any() else 1.0
                node.GetDisplayNode().SetAutoWindowLevel(False)
                node.GetDisplayNode().SetWindowLevel(high, high / 2)
            self._show(node)
        else:
            self._show(nodes[min(k, len(nodes) - 1)])

    # ------------------------------------------------------------ save / export

    def save(self) -> None:
        if not self.result:
            return self._error("Generate first.")
        base = (self.state.case_name or "phantom").replace("/", "_").strip(".") or "case"
        k, name = 1, f"{base}_synbt"
        while (self.data / name).exists():
            k, name = k + 1, f"{base}_synbt_{k + 1}"
        try:
            folder = resolve_inside(self.data, name)
            panel.save_result_files(self.result, folder)
        except (SynBTError, OSError) as exc:
            return self._error(str(exc))
        self.state.update(saved=name, status=f"Saved to {name}/ in the data folder.", error="",
                          cases=list_cases(self.data))

    def export(self) -> None:
        from ..slicer_worker import CommandJob

        try:
            for field in ("exportSource", "exportOutput"):
                self.state[f"p_{field}"] = str(resolve_inside(self.data, self.state[f"p_{field}"] or ""))
            request = panel.export_request(self.parameters)
            if request.bundle:
                request.bundle = str(resolve_inside(self.data, request.bundle))
            self.export_job = CommandJob.export(request)
        except (SynBTError, OSError) as exc:
            return self._error(str(exc))
        finally:
            for field in ("exportSource", "exportOutput"):
                value = self.state[f"p_{field}"]
                if value and Path(value).is_absolute() and self.data in Path(value).parents:
                    self.state[f"p_{field}"] = Path(value).relative_to(self.data).as_posix()
        self.state.update(export_running=True, export_progress=0, export_message="starting")
        asyncio.ensure_future(self._poll_export())

    async def _poll_export(self) -> None:
        """Follow the export until it ends; a failure of the polling itself ends it with its error on the
        page (the job is stopped) instead of leaving "export running"."""
        job = self.export_job
        try:
            while job is not None and job.running:
                progress = job.progress()
                with self.state:
                    self.state.export_progress, self.state.export_message = progress.percent, progress.message
                await asyncio.sleep(1.0)
            code = job.returncode if job else None
            log = job.read_log() if job else []
            message = "done" if code == 0 else (log[-1] if log else f"stopped ({code})")
        except Exception as exc:  # noqa: BLE001 - whatever failed, the page must leave "export running"
            if job is not None:
                await asyncio.to_thread(job.stop)  # interrupt, then kill after the grace time; never left running
            code, message = None, f"Export failed: {exc}"
        self.export_job = None
        with self.state:
            self.state.export_running = False
            self.state.export_progress = 100 if code == 0 else self.state.export_progress
            self.state.export_message = message

    def stop_export(self) -> None:
        if self.export_job is not None:
            self.export_job.request_stop()

    # ------------------------------------------------------------ page

    def _build_ui(self):
        from trame.ui.vuetify3 import VAppLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v

        s = "enabled"
        with VAppLayout(self.server, full_height=True, theme="dark") as self.ui:
            with v.VNavigationDrawer(width=380, permanent=True, classes="pa-3", id="panel"):
                html.Div("SynBT: synthetic breast tumors", classes="text-h6 mb-2")
                v.VSelect(label="Case (from --data)", v_model=("case_name",), items=("cases",), density="compact", id="case")
                with html.Div(classes="d-flex ga-2 mb-2"):
                    v.VBtn("Load case", click=self.load_case, disabled=("!case_name || running",), size="small", id="load")
                    v.VBtn("Load SynBT phantom", click=self.load_phantom, disabled=("running",), size="small", id="phantom")
                with v.VExpansionPanels(multiple=True, model_value=([0, 1, 2, 3],)):
                    with v.VExpansionPanel(title="Inputs", disabled=("running",)):
                        with v.VExpansionPanelText():
                            for field, label in zip(panel.PHASE_FIELDS, ("Pre-contrast", "Post 1", "Post 2", "Post 3")):
                                v.VSelect(label=label, v_model=(f"p_{field}",), items=("volumes",), clearable=True,
                                          density="compact", hide_details=True, classes="mb-1")
                            with v.VRadioGroup(v_model=("tumor_mode",), inline=True, density="compact", hide_details=True):
                                v.VRadio(label="segment", value="segment")
                                v.VRadio(label="click to place", value="click", id="mode-click")
                                v.VRadio(label="automatic", value="auto")
                            with html.Div(v_if=("tumor_mode === 'segment'",)):
                                v.VSelect(label="Segmentation", v_model=("p_segmentationNode",), items=("segmentations",),
                                          density="compact", hide_details=True)
                                v.VSelect(label="Segment", v_model=("p_segmentId",), items=("segments",),
                                          density="compact", hide_details=True)
                                with v.VBtnToggle(v_model=("tool",), density="compact", classes="mt-1"):
                                    v.VBtn("off", value="none", size="small")
                                    v.VBtn("paint", value="paint", size="small")
                                    v.VBtn("draw", value="draw", size="small")
                                    v.VBtn("erase", value="erase", size="small")
                            with html.Div(v_if=("tumor_mode !== 'segment'",)):
                                v.VTextField(label="Tumor diameter (mm)", v_model=("p_autoSizeMm",), type="number",
                                             density="compact", hide_details=True, id="diameter")
                                v.VBtn("Click in the view to place", v_if=("tumor_mode === 'click'",), size="small",
                                       color=("tool === 'place' ? 'primary' : undefined",), id="place",
                                       click="tool = tool === 'place' ? 'none' : 'place'")
                    with v.VExpansionPanel(title="Method", disabled=("running",)):
                        with v.VExpansionPanelText():
                            v.VSelect(label="Method", v_model=("p_method",), items=("methods",), density="compact",
                                      hide_details=True, id="method")
                            v.VTextField(label="Bundle (folder under --data; empty: shipped)", v_model=("p_bundlePath",),
                                         disabled=(f"!{s}.bundlePathLineEdit",), density="compact", hide_details=True)
                            with html.Div(classes="d-flex ga-2"):
                                v.VTextField(label="Seed", v_model=("p_seed",), type="number", density="compact",
                                             hide_details=True)
                                v.VTextField(label="Steps", v_model=("p_steps",), type="number", density="compact",
                                             hide_details=True, disabled=(f"!{s}.stepsSpinBox",), id="steps")
                            with html.Div(classes="d-flex ga-2"):
                                v.VSelect(label="Kinetic curve", v_model=("p_kinetics",), items=("kinetics_choices",),
                                          density="compact", hide_details=True, disabled=(f"!{s}.kineticsComboBox",))
                                v.VSelect(label="Necrotic core", v_model=("p_necrosis",), items=("necrosis_choices",),
                                          density="compact", hide_details=True, disabled=(f"!{s}.necrosisComboBox",))
                    with v.VExpansionPanel(title="Generate"):
                        with v.VExpansionPanelText():
                            html.Div("{{ missing }}", v_if=("missing",), classes="text-warning text-caption", id="missing")
                            with html.Div(classes="d-flex ga-2"):
                                v.VBtn("Generate", click=self.generate, color="primary", id="generate",
                                       disabled=("!!missing || running",))
                                v.VBtn("Cancel", click=self.cancel, v_if=("running",), id="cancel")
                            v.VProgressLinear(model_value=("progress",), height=14, classes="my-2", id="progress",
                                              color=("running ? 'primary' : 'success'",))
                            html.Div("{{ progress_message }}", classes="text-caption", v_if=("running",))
                            with html.Div(v_if=("has_result",), id="result"):
                                v.VSwitch(label=("show_after ? 'After (synthetic)' : 'Before (input)'",),
                                          v_model=("show_after",), density="compact", hide_details=True, id="after")
                                v.VSelect(label="Show", v_model=("shown_phase",), items=("phase_items",),
                                          density="compact", hide_details=True)
                                html.Img(src=("curve",), style="width: 100%; background: white;", id="curve")
                                v.VBtn("Save result as files", click=self.save, size="small", id="save")
                                html.Div("{{ saved }}", id="saved", classes="text-caption")
                    with v.VExpansionPanel(title="Export a synthetic data set"):
                        with v.VExpansionPanelText():
                            v.VTextField(label="Source data set (under --data)", v_model=("p_exportSource",),
                                         density="compact", hide_details=True)
                            v.VTextField(label="Output folder (under --data)", v_model=("p_exportOutput",),
                                         density="compact", hide_details=True)
                            with html.Div(classes="d-flex ga-2"):
                                v.VTextField(label="Cases", v_model=("p_exportNumCases",), type="number",
                                             density="compact", hide_details=True)
                                v.VSelect(label="Format", v_model=("p_exportFormat",), items=("export_formats",),
                                          density="compact", hide_details=True)
                                v.VSelect(label="Method", v_model=("p_exportMethod",), items=("methods",),
                                          density="compact", hide_details=True)
                            with html.Div(classes="d-flex ga-2"):
                                v.VTextField(label="Min mm", v_model=("p_exportSizeMinMm",), type="number",
                                             density="compact", hide_details=True)
                                v.VTextField(label="Max mm", v_model=("p_exportSizeMaxMm",), type="number",
                                             density="compact", hide_details=True)
                                v.VTextField(label="Seed", v_model=("p_exportSeed",), type="number",
                                             density="compact", hide_details=True)
                            with html.Div(classes="d-flex ga-2 mt-1"):
                                v.VBtn("Export", click=self.export, size="small", id="export",
                                       disabled=("export_running || !p_exportSource || !p_exportOutput",))
                                v.VBtn("Stop", click=self.stop_export, size="small", v_if=("export_running",))
                            v.VProgressLinear(model_value=("export_progress",), height=8, classes="my-1")
                            html.Div("{{ export_message }}", classes="text-caption", id="export-message")
                html.Div("{{ status }}", classes="text-caption mt-2", id="status")
                html.Div("{{ error }}", classes="text-error text-caption", id="error")
            with v.VMain():
                with html.Div(style="position: relative; width: 100%; height: 100vh;", id="views"):
                    self.layout_manager.initialize_layout_grid(self.ui)


def _segments(segmentation_node):
    segmentation = segmentation_node.GetSegmentation()
    return [(segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i)) for i in range(segmentation.GetNumberOfSegments())]


def trame_argv(host: str, port: int, token: str | None) -> list[str]:
    """trame's command line for serve(). The token is joined to its option: a random token may begin with
    "-" (token_urlsafe), which argparse would otherwise take for an option and refuse to start."""
    return ["--server", "--host", host, "--port", str(port), "--timeout", "0", *([f"--authKey={token}"] if token else [])]


def serve(data: str | Path | None = None, study: str | Path | None = None, host: str = "127.0.0.1", port: int = 8080,
          token: str | None = None) -> None:
    """Start the page (blocking): the SynBT panel over --data, or the reader study over --study."""
    import sys

    from trame.app import get_server

    server = get_server("synbt", client_type="vue3")
    if study is not None:
        from .study import StudyPage

        StudyPage(server, study)
    else:
        SynBTWeb(server, data)
    # trame reads its options from sys.argv: give it ours only (the token travels as wslink's authKey).
    sys.argv = [sys.argv[0], *trame_argv(host, port, token)]
    query = f"?secret={token}" if token else ""
    print(f"synbt web: open http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/{query}", flush=True)
    server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0)
