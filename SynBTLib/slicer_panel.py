"""Everything the SynBT Slicer panel and its Segment Editor effect decide, without Qt.

SynBTSlicer/SynBT.py and the effect only make widgets and connect them to what is here: the
panel's parameters (one spec that the parameter node wrapper is built from), which loaded volumes
are the DCE phases, whether Generate can run and why not, which widgets are enabled, the job
requests, the synthesis run (worker process, progress, Cancel, loading the result as nodes), the
effect's click-to-place shape, and the "SynBT phantom" sample data. It runs on real MRML nodes in
the Slicer application and with slicer-core, where the tests run it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import mrml
from .errors import SynBTError
from .slicer_worker import (ExportRequest, SynthesisJob, SynthesisRequest, TrainRequest, auto_tumor_mask,
                            default_method)
from .synthesizers import DEFAULT_STEPS, METHODS

DRAWN = "drawn"  # a choice left to the seed
KINETICS_CHOICES = (DRAWN, "persistent", "plateau", "washout", "any")
NECROSIS_CHOICES = (DRAWN, "yes", "no")
EXPORT_FORMATS = ("nnunet", "monai")
SYNTHETIC_MODES = ("none", "offline", "on-the-fly")
SEED_RANGE = (0, 2**31 - 1)
PHASE_FIELDS = ("prePhase", "postPhase1", "postPhase2", "postPhase3")
OUTPUT_ATTRIBUTE = "SynBT.Output"  # set on every node SynBT adds, so it is never guessed as an input phase


@dataclass(frozen=True)
class Parameter:
    """One panel parameter: kind is "volume", "segmentation", "str", "int", "float" or "bool"."""

    kind: str
    default: object = None
    choices: tuple | None = None
    range: tuple | None = None
    label: str = ""  # what the panel and the web page call it, for error messages

    def title(self, name: str) -> str:
        """How an error names the parameter: its label with the scripting name, or the name alone."""
        return f"{self.label} [{name}]" if self.label else name


PARAMETERS: dict[str, Parameter] = {
    **{name: Parameter("volume") for name in PHASE_FIELDS},
    "segmentationNode": Parameter("segmentation"),
    "segmentId": Parameter("str", ""),
    "useAutoTumor": Parameter("bool", False),
    "autoSizeMm": Parameter("float", 15.0, range=(3.0, 60.0), label="Tumor diameter (mm)"),
    "method": Parameter("str", "handcrafted", choices=METHODS, label="Method"),
    "bundlePath": Parameter("str", ""),
    "seed": Parameter("int", 0, range=SEED_RANGE, label="Seed"),
    "steps": Parameter("int", DEFAULT_STEPS, range=(1, 1000), label="Sampling steps"),
    "kinetics": Parameter("str", DRAWN, choices=KINETICS_CHOICES, label="Kinetic curve"),
    "necrosis": Parameter("str", DRAWN, choices=NECROSIS_CHOICES, label="Necrotic core"),
    "outputSuffix": Parameter("str", mrml.OUTPUT_SUFFIX),
    "exportSource": Parameter("str", ""),
    "exportOutput": Parameter("str", ""),
    "exportNumCases": Parameter("int", 10, range=(1, 100000), label="Number of cases"),
    "exportFormat": Parameter("str", "nnunet", choices=EXPORT_FORMATS, label="Export format"),
    "exportMethod": Parameter("str", "handcrafted", choices=METHODS, label="Export method"),
    "exportSizeMinMm": Parameter("float", 10.0, range=(5.0, 80.0), label="Smallest tumor (mm)"),
    "exportSizeMaxMm": Parameter("float", 30.0, range=(5.0, 80.0), label="Largest tumor (mm)"),
    "exportSeed": Parameter("int", 0, range=SEED_RANGE, label="Export seed"),
    "exportNecrosis": Parameter("str", DRAWN, choices=NECROSIS_CHOICES, label="Export necrotic core"),
    "trainData": Parameter("str", ""),
    "trainOutput": Parameter("str", ""),
    "trainConfig": Parameter("str", ""),
    "trainSynthetic": Parameter("str", "none", choices=SYNTHETIC_MODES, label="Synthetic tumors"),
    "trainSyntheticDir": Parameter("str", ""),
    "trainMethod": Parameter("str", "handcrafted", choices=METHODS, label="Training synthesis method"),
    "trainRatio": Parameter("float", 0.5, range=(0.0, 1.0), label="Synthetic ratio"),
    "trainEpochs": Parameter("int", 20, range=(1, 100000), label="Epochs"),
    "trainSeed": Parameter("int", 0, range=SEED_RANGE, label="Training seed"),
    "trainResume": Parameter("bool", False),
    "segmentModel": Parameter("str", ""),
}

# ctkPathLineEdit widget -> str parameter, synced by the panel itself: parameterNodeWrapper binds a
# ctkPathLineEdit only to pathlib.Path, whose empty value reads back as ".", while empty means "not chosen".
PATH_PARAMETERS = {
    "bundlePathLineEdit": "bundlePath",
    "exportSourcePathLineEdit": "exportSource",
    "exportOutputPathLineEdit": "exportOutput",
    "trainDataPathLineEdit": "trainData",
    "trainOutputPathLineEdit": "trainOutput",
    "trainConfigPathLineEdit": "trainConfig",
    "trainSyntheticPathLineEdit": "trainSyntheticDir",
    "segmentModelPathLineEdit": "segmentModel",
}


def parameter_value(name: str, value):
    """`value` for parameter `name` converted to its kind and checked against its choices and range in
    PARAMETERS (the Slicer panel's widgets keep values inside these; a web page's fields do not). A
    SynBTError names the parameter and what it allows. Volume and segmentation values pass unchanged."""
    spec = PARAMETERS[name]
    if spec.kind in ("volume", "segmentation"):
        return value
    if spec.kind == "bool":
        return bool(value)
    if spec.kind == "str":
        value = "" if value is None else str(value)
        if spec.choices and value not in spec.choices:
            raise SynBTError(f"{spec.title(name)} must be one of {', '.join(spec.choices)}; got '{value}'")
        return value
    allowed = f"{spec.range[0]} and {spec.range[1]}" if spec.range else None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
        if isinstance(value, bool) or (spec.kind == "int" and not number.is_integer()):
            raise ValueError
        number = int(number) if spec.kind == "int" else number
    except (TypeError, ValueError, OverflowError):
        kind = "a whole number" if spec.kind == "int" else "a number"
        raise SynBTError(f"{spec.title(name)} must be {kind}{f' between {allowed}' if allowed else ''}; got '{value}'") from None
    if spec.range and not spec.range[0] <= number <= spec.range[1]:  # NaN fails this too
        raise SynBTError(f"{spec.title(name)} must be between {allowed}; got {value}")
    return number


def check_parameters(parameters, names) -> dict:
    """The named parameters' values, each checked by parameter_value (the first bad one raises)."""
    return {name: parameter_value(name, getattr(parameters, name)) for name in names}


def synthesis_parameters(parameters) -> tuple[str, ...]:
    """The parameters a Generate uses (the diffusion-only ones for diffusion, the size for an automatic tumor)."""
    names = ["method", "seed", "outputSuffix"]
    if parameter_value("method", parameters.method) == "diffusion":
        names += ["bundlePath", "steps", "kinetics", "necrosis"]
    if parameters.useAutoTumor:
        names.append("autoSizeMm")
    return tuple(names)


def initial_values(method: str | None = None) -> dict:
    """Defaults for a fresh parameter node: the method is diffusion when the shipped bundle and torch are there."""
    method = method or default_method()
    return {"method": method, "exportMethod": method, "trainMethod": method}


# ---------------------------------------------------------------- inputs

_SKIP_NAME = re.compile(r"(?i)\b(sub|subtract\w*|mip|label|seg\w*|mask)\b|_sub\b")
_PRE_NAME = re.compile(r"(?i)(\bpre\b|pre[-_ ]?contrast|precontrast|\bnative\b|\bt1[-_ ]?pre\b)")
_INDEX_NAME = re.compile(r"(?i)(?:_|\b)(?:post|phase|ph|dyn)?[-_ ]?0*(\d{1,2})(?:\.nii(?:\.gz)?|\.nrrd)?$")


def _phase_rank(name: str) -> float | None:
    """Order key from a volume's name: pre-contrast 0, "post 2" / "phase_0002" / "case_0002" 2; None unknown."""
    if _PRE_NAME.search(name):
        return 0.0
    match = _INDEX_NAME.search(name.strip())
    return float(match.group(1)) if match else None


def guess_phases(volume_nodes, limit: int = len(PHASE_FIELDS), bundle=None) -> list:
    """The volumes that look like one DCE series, pre-contrast first.

    Left out: label maps, SynBT's own outputs, subtractions / MIPs / masks by name, and volumes not on
    the grid of the first candidate. Order: by the phase index in the names (pre = 0, "post1", "_0002");
    where names say nothing, the scene order (the order in which they were loaded).

    bundle (a folder or a phase_choice.BundlePhases; default: the shipped bundle when there is one):
    when the series has more volumes than the bundle models, its phase policy picks them in that order,
    as `synbt synthesize` and `synbt export` do (phase_choice.choose_phases). Where those would refuse
    (no policy, or a policy that needs acquisition times, which the scene does not give), the guess is
    the first phases in that order, for the user to check (phase_guess_note says why)."""
    candidates = []
    for position, node in enumerate(volume_nodes):
        if node is None or node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute(OUTPUT_ATTRIBUTE):
            continue
        if node.GetImageData() is None or _SKIP_NAME.search(node.GetName() or ""):
            continue
        candidates.append((position, node))
    ranks = [_phase_rank(node.GetName() or "") for _, node in candidates]
    if candidates and all(rank is not None for rank in ranks):
        candidates = [c for _, c in sorted(zip(ranks, candidates), key=lambda item: (item[0], item[1][0]))]
    if not candidates:
        return []
    grid = mrml.geometry_from_volume_node(candidates[0][1])
    same_grid = [node for _, node in candidates if mrml.geometry_from_volume_node(node).matches(grid)]
    bundle = _bundle_phases(bundle)
    if bundle is not None and len(same_grid) > bundle.count:
        from .phase_choice import choose_phases

        try:
            same_grid = [same_grid[k] for k in choose_phases(len(same_grid), bundle).indices]
        except SynBTError:
            same_grid = same_grid[:bundle.count]
    return same_grid[:limit]


def phase_guess_note(volume_nodes, bundle=None) -> str | None:
    """Why guess_phases could not follow the bundle's phase policy on these volumes (None when it could,
    or had no choice to make): a line for the panel, so that the user checks the phases."""
    from .phase_choice import choose_phases

    bundle = _bundle_phases(bundle)
    if bundle is None:
        return None
    count = len(guess_phases(volume_nodes, limit=10**6, bundle=False))
    if count <= bundle.count:
        return None
    try:
        choose_phases(count, bundle, what="the scene's DCE series")
    except SynBTError as exc:
        return f"{exc}; check the phases chosen"
    return None


def _bundle_phases(bundle):
    """A phase_choice.BundlePhases for guess_phases' bundle argument (False: none)."""
    from .phase_choice import BundlePhases

    if bundle is False or isinstance(bundle, BundlePhases):
        return bundle or None
    if bundle is None:
        from .paths import default_bundle_path

        bundle = default_bundle_path()
        if not (bundle / "config.json").is_file():
            return None
    try:
        return BundlePhases.of_bundle(bundle)
    except SynBTError:
        return None  # an unreadable bundle is reported where it is loaded, not while guessing


def phase_nodes(parameters) -> list:
    """The chosen phase volumes, pre-contrast first (empty choices left out)."""
    return [n for n in (getattr(parameters, name) for name in PHASE_FIELDS) if n is not None]


def missing_input(parameters) -> str | None:
    """What the user still has to choose before Generate (None when nothing is missing)."""
    if parameters is None:
        return "no parameter node"
    nodes = phase_nodes(parameters)
    if len(nodes) < 2:
        return "Select the pre-contrast phase and at least one post-contrast phase."
    if len({node.GetID() for node in nodes}) < len(nodes):
        return "Each phase must be a different volume."
    if not parameters.useAutoTumor and not (parameters.segmentationNode and parameters.segmentId):
        return "Select a tumor segment, or tick the automatic tumor and choose its size."
    return None


def enabled_widgets(parameters, running: bool, export_running: bool, train_running: bool) -> dict[str, bool]:
    """Widget name (SynBT.ui) -> enabled, for the current parameters and jobs."""
    p = parameters
    diffusion = bool(p and p.method == "diffusion")
    offline = bool(p and p.trainSynthetic == "offline")
    return {
        "inputsCollapsibleButton": not running,
        "methodCollapsibleButton": not running,
        "bundlePathLineEdit": diffusion,
        "stepsSpinBox": diffusion,
        "kineticsComboBox": diffusion,
        "necrosisComboBox": diffusion,
        "segmentSelector": bool(p and not p.useAutoTumor),
        "autoSizeSpinBox": bool(p and p.useAutoTumor),
        "exportSettingsWidget": not export_running,
        "trainSettingsWidget": not train_running,
        "trainSyntheticPathLineEdit": offline,
        "trainRatioSpinBox": bool(p and p.trainSynthetic != "none"),
        "trainMethodComboBox": bool(p and p.trainSynthetic == "on-the-fly"),
        "exportNecrosisComboBox": bool(p and p.exportMethod == "diffusion"),
    }


def segment_ready(parameters) -> bool:
    return bool(parameters and len(phase_nodes(parameters)) >= 2 and parameters.segmentModel)


def export_ready(parameters) -> bool:
    return bool(parameters and parameters.exportSource and parameters.exportOutput)


def train_ready(parameters) -> bool:
    return bool(parameters and parameters.trainData and parameters.trainOutput)


# ---------------------------------------------------------------- requests

def _drawn_or(value: str) -> str | None:
    return None if value == DRAWN else value


def synthesis_request(parameters) -> SynthesisRequest:
    """The Generate request from the panel's parameters (diffusion-only options dropped for handcrafted);
    every value it uses is checked against PARAMETERS first (SynBTError naming the parameter)."""
    v = check_parameters(parameters, synthesis_parameters(parameters))
    diffusion = v["method"] == "diffusion"
    return SynthesisRequest(
        method=v["method"],
        seed=v["seed"],
        steps=v["steps"] if diffusion else None,
        bundle=(v["bundlePath"] or None) if diffusion else None,
        auto_size_mm=v.get("autoSizeMm"),
        kinetics=_drawn_or(v["kinetics"]) if diffusion else None,
        necrosis=_drawn_or(v["necrosis"]) if diffusion else None,
    )


EXPORT_PARAMETERS = ("exportSource", "exportOutput", "exportNumCases", "exportFormat", "exportMethod",
                     "exportSizeMinMm", "exportSizeMaxMm", "exportSeed")


def export_request(parameters) -> ExportRequest:
    """The export request; its values are checked against PARAMETERS first, as synthesis_request's."""
    p = check_parameters(parameters, EXPORT_PARAMETERS)
    diffusion = p["exportMethod"] == "diffusion"
    if diffusion:
        p.update(check_parameters(parameters, ("bundlePath", "steps", "exportNecrosis")))
    return ExportRequest(
        source=p["exportSource"], out=p["exportOutput"], num_cases=p["exportNumCases"], format=p["exportFormat"],
        method=p["exportMethod"], size_mm=(p["exportSizeMinMm"], p["exportSizeMaxMm"]), seed=p["exportSeed"],
        bundle=(p["bundlePath"] or None) if diffusion else None, steps=p["steps"] if diffusion else None,
        necrosis=_drawn_or(p["exportNecrosis"]) if diffusion else None,
    )


def train_request(parameters) -> TrainRequest:
    p = parameters
    return TrainRequest(
        data=p.trainData, out=p.trainOutput, synthetic=p.trainSynthetic,
        synthetic_dir=p.trainSyntheticDir or None, method=p.trainMethod, ratio=float(p.trainRatio),
        epochs=int(p.trainEpochs), seed=int(p.trainSeed), resume=bool(p.trainResume), config=p.trainConfig or None,
    )


# ---------------------------------------------------------------- synthesis

def mark_output(result: mrml.SynthesisResult) -> mrml.SynthesisResult:
    """Tag the nodes SynBT added, so they are never taken for input phases."""
    for node in [*result.volume_nodes, result.segmentation_node]:
        node.SetAttribute(OUTPUT_ATTRIBUTE, "1")
    return result


def _segment_mask(segmentation_node, segment_id, case) -> np.ndarray:
    if segmentation_node is None or not segment_id:
        raise SynBTError("select a tumor segment, or choose an automatic tumor size")
    return mrml.mask_from_segment(segmentation_node, segment_id, case.geometry)


@dataclass
class RunStatus:
    percent: int
    message: str
    finished: bool


class SynthesisRun:
    """One Generate: the inputs are read from the nodes and checked here, the synthesis runs in a worker
    process (`synbt synthesize`), ``poll()`` reports progress from a GUI timer, ``finish()`` adds the
    result as new nodes (all or nothing), ``cancel()`` kills the worker and adds nothing."""

    def __init__(self, scene, phase_nodes, segmentation_node, segment_id, request: SynthesisRequest,
                 suffix: str = mrml.OUTPUT_SUFFIX, python: str | None = None):
        self.scene, self.phase_nodes, self.suffix = scene, list(phase_nodes), suffix
        case = mrml.case_from_volume_nodes(self.phase_nodes)
        mask = None if request.auto_size_mm is not None else _segment_mask(segmentation_node, segment_id, case)
        self.job = SynthesisJob.start(case, mask, request, python=python)
        self.percent, self.message = 0, "starting"

    def poll(self) -> RunStatus:
        for event in self.job.poll():
            self.percent, self.message = event.percent, event.message or event.event
        return RunStatus(self.percent, self.message, not self.job.running)

    def finish(self) -> mrml.SynthesisResult:
        """The result as new nodes; raises SynBTError with the worker's own error line when it failed."""
        result, mask = self.job.result()
        return mark_output(mrml.add_result_nodes(self.scene, self.phase_nodes, result, mask, suffix=self.suffix))

    def cancel(self) -> None:
        self.job.cancel()


def synthesize_in_process(scene, phase_nodes, segmentation_node=None, segment_id=None, request: SynthesisRequest | None = None,
                          suffix: str = mrml.OUTPUT_SUFFIX, progress: Callable | None = None) -> mrml.SynthesisResult:
    """The same synthesis in this process (for scripts and the Python console; the GUI uses SynthesisRun)."""
    from .synthesizers import check_request, make_synthesizer

    request = request or SynthesisRequest(method=default_method())
    synthesizer, method, steps = make_synthesizer(request.method, bundle=request.bundle, steps=request.steps)
    options = check_request(method, steps, request.kinetics, request.necrosis, request.bundle,
                            synthesizer=synthesizer, prefix="").options
    case = mrml.case_from_volume_nodes(phase_nodes)
    if request.auto_size_mm is None:
        mask = _segment_mask(segmentation_node, segment_id, case)
    else:
        mask = auto_tumor_mask(case, request.auto_size_mm, request.seed, request.center_mm)
    result = synthesizer(case, mask, seed=request.seed, steps=steps, progress=progress, **options)
    return mark_output(mrml.add_result_nodes(scene, list(phase_nodes), result, mask, suffix=suffix))


def result_summary(result: mrml.SynthesisResult) -> str:
    return f"Added {len(result.volume_nodes)} volumes and '{result.segmentation_node.GetName()}'."


def shown_volume(result: mrml.SynthesisResult):
    """The volume to show after a synthesis: the first post-contrast phase, where the tumor is brightest."""
    return result.volume_nodes[1] if len(result.volume_nodes) > 1 else result.volume_nodes[0]


# ---------------------------------------------------------------- Segment Editor effect

def tumor_shape_at(phase_nodes, ras, diameter_mm: float, seed: int) -> tuple[np.ndarray, mrml.Geometry]:
    """A tumor shape of diameter_mm centred at a clicked RAS point, on the phases' grid: (mask, geometry).
    A click outside the volumes, or where the shape would lie mostly outside breast tissue, is refused."""
    from .preprocess import breast_tissue_mask
    from .shapes import tumor_mask

    case = mrml.case_from_volume_nodes(phase_nodes)
    center_lps = (-float(ras[0]), -float(ras[1]), float(ras[2]))
    shape = tumor_mask(case.geometry, center_lps, float(diameter_mm), seed=int(seed))
    if not shape.mask.any():
        raise SynBTError("the click is outside the phase volumes")
    breast = breast_tissue_mask(case).breast
    inside = float(breast[shape.mask > 0].mean())
    if inside < 0.5:
        raise SynBTError(f"only {inside:.0%} of a tumor there would lie in breast tissue; click inside the breast")
    return shape.mask.astype(np.uint8), case.geometry


# ---------------------------------------------------------------- sample data

PHANTOM_SAMPLE_NAME = "SynBT phantom"


def add_phantom_nodes(scene, seed: int = 0, shape=(96, 96, 40), region_mm: float = 15.0):
    """A tumor-free phantom DCE-MRI case made here (no download) as MRML nodes, with a segmentation holding
    one region in its breast tissue where a tumor can be synthesized; returns (phase nodes, segmentation)."""
    from . import labels
    from .phantom import make_phantom
    from .shapes import place_tumor

    phantom = make_phantom(seed=seed, shape=shape, tumors=0)
    breast = np.isin(phantom.tissue_labels, labels.BREAST_TISSUE)
    region = place_tumor(breast, phantom.case.geometry, region_mm, seed=seed).mask.astype(np.uint8)
    nodes = []
    try:
        for k, name in enumerate(phantom.case.phase_names):
            nodes.append(mrml.add_volume_from_array(scene, phantom.case.phases[k].astype(np.float32),
                                                    phantom.case.geometry, f"{PHANTOM_SAMPLE_NAME} {name}"))
        segmentation, _ = mrml.add_segmentation_node(scene, region, nodes[0], f"{PHANTOM_SAMPLE_NAME} region",
                                                     segment_name="tumor region")
    except BaseException:
        for node in nodes:
            scene.RemoveNode(node)
        raise
    return nodes, segmentation


# ---------------------------------------------------------------- applying a trained segmentation model

class SegmentRun:
    """"Segment with a trained model": the phases go to `synbt segment` in a worker process; ``finish()``
    adds the predicted tumor as a new segmentation node (empty when the model finds none)."""

    def __init__(self, scene, phase_nodes, model: str, python: str | None = None):
        from .slicer_worker import SegmentationJob

        self.scene, self.phase_nodes = scene, list(phase_nodes)
        self.job = SegmentationJob.start(mrml.case_from_volume_nodes(self.phase_nodes), model, python=python)

    def poll(self) -> RunStatus:
        """Sliding-window inference reports no steps: 0 % while it runs, 100 % when done."""
        finished = not self.job.running
        return RunStatus(100 if finished else 0, "done" if finished else "segmenting", finished)

    def finish(self):
        """(segmentation node, tumor voxel count)."""
        mask = self.job.result()
        node, _ = mrml.add_segmentation_node(self.scene, mask, self.phase_nodes[0],
                                             f"{self.phase_nodes[0].GetName()} predicted tumor", segment_name="predicted tumor")
        node.SetAttribute(OUTPUT_ATTRIBUTE, "1")
        return node, int(mask.sum())

    def cancel(self) -> None:
        self.job.cancel()


def segment_summary(finished) -> str:
    node, voxels = finished
    return f"Added '{node.GetName()}' ({voxels} tumor voxels)."


# ---------------------------------------------------------------- after a synthesis (browser GUI)

PLACED_TUMOR_NAME = "SynBT placed tumor"


def add_placed_tumor(scene, phase_nodes, ras, diameter_mm: float, seed: int):
    """A click-placed tumor (tumor_shape_at) as a new segmentation node; returns (node, segment id)."""
    mask, _ = tumor_shape_at(phase_nodes, ras, diameter_mm, seed)
    node, segment_id = mrml.add_segmentation_node(scene, mask, phase_nodes[0], PLACED_TUMOR_NAME,
                                                  segment_name="placed tumor")
    node.SetAttribute(OUTPUT_ATTRIBUTE, "1")
    return node, segment_id


def add_subtraction_node(scene, phase_nodes, post: int = 1):
    """The subtraction image (post-contrast phase `post` minus pre-contrast) as a new float volume."""
    values = mrml.array_from_volume_node(phase_nodes[post]).astype(np.float32)
    values -= mrml.array_from_volume_node(phase_nodes[0]).astype(np.float32)
    node = mrml.add_volume_from_array(scene, values, mrml.geometry_from_volume_node(phase_nodes[0]),
                                      f"{phase_nodes[post].GetName()} - {phase_nodes[0].GetName()}")
    node.SetAttribute(OUTPUT_ATTRIBUTE, "1")
    return node


def kinetic_curves(phase_nodes, tumor_mask: np.ndarray) -> dict[str, list[float]]:
    """Mean relative enhancement per phase, (S_k - S_0) / S_0, of the tumor and of fibroglandular tissue
    outside it (the reference a reader compares a curve with)."""
    from .preprocess import breast_tissue_mask

    case = mrml.case_from_volume_nodes(phase_nodes)
    tumor = np.asarray(tumor_mask) > 0
    fgt = breast_tissue_mask(case).fibroglandular & ~tumor
    curves = {}
    for name, region in (("tumor", tumor), ("fibroglandular", fgt)):
        if region.any():
            means = case.phases[:, region].mean(axis=1)
            curves[name] = [float((m - means[0]) / max(abs(means[0]), 1e-6)) for m in means]
    return curves


def save_result_files(result: mrml.SynthesisResult, out_dir) -> list:
    """The synthesized phases (phase_<k>.nii.gz) and tumor_labels.nii.gz in a new folder (never overwritten)."""
    from . import io

    out = io.prepare_output_dir(out_dir)
    case = mrml.case_from_volume_nodes(result.volume_nodes)
    mask = mrml.mask_from_segment(result.segmentation_node, result.segment_id, case.geometry)
    return [*io.write_case(case, out), io.write_label(mask, case.geometry, out / "tumor_labels.nii.gz")]
