"""The Slicer extension without the Slicer application: UI file, CMake/extension metadata, and the
worker-process path (SynBTLib.slicer_worker) that the module runs, end to end with the real command."""
import ast
import json
import re
import struct
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from SynBTLib.case import Case, Geometry
from SynBTLib.errors import SynBTError
from SynBTLib import slicer_worker as sw

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SynBTSlicer"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SynBT.ui"


def ui_widgets():
    tree = ET.parse(UI_FILE)
    return {w.get("name"): w for w in tree.iter("widget")}


def module_tree():
    return ast.parse((MODULE_DIR / "SynBT.py").read_text())


KIND_TYPES = {"volume": "vtkMRMLScalarVolumeNode", "segmentation": "vtkMRMLSegmentationNode",
              "str": "str", "int": "int", "float": "float", "bool": "bool"}


def parameter_annotations():
    """Parameter field -> (type name, Choice values or None), from the one spec the module's wrapper is built from."""
    from SynBTLib.slicer_panel import PARAMETERS

    return {name: (KIND_TYPES[spec.kind], spec.choices) for name, spec in PARAMETERS.items()}


def parameter_fields():
    return set(parameter_annotations())


def bindings():
    """Widget name -> (widget class, SlicerParameterName) for the widgets bound in the .ui file."""
    found = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                found[name] = (widget.get("class"), prop.find("string").text)
    return found


def test_ui_has_every_widget_the_module_uses():
    widgets = ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE_DIR / "SynBT.py").read_text()))
    assert used and used <= set(widgets), f"missing in SynBT.ui: {sorted(used - set(widgets))}"


def test_ui_parameter_bindings_name_parameter_node_fields():
    bound = {parameter for _, parameter in bindings().values()}
    fields = parameter_fields()
    assert bound <= fields, f"unknown parameters: {sorted(bound - fields)}"
    assert {"prePhase", "postPhase1", "method", "seed", "steps", "autoSizeMm", "outputSuffix"} <= bound
    assert {"exportNumCases", "exportFormat", "exportMethod", "exportSizeMinMm", "exportSizeMaxMm", "exportSeed"} <= bound
    assert {"trainSynthetic", "trainMethod", "trainRatio", "trainEpochs", "trainSeed", "trainResume"} <= bound


# What parameterNodeWrapper's GUI connectors accept (Slicer's guiConnectors.py): widget class -> field types.
CONNECTABLE = {
    "QSpinBox": {"int"}, "QDoubleSpinBox": {"float"}, "QCheckBox": {"bool"}, "QLineEdit": {"str"},
    "QComboBox": {"str", "int", "float", "bool"}, "ctkPathLineEdit": {"pathlib.Path", "Path"},
    "qMRMLNodeComboBox": {"vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"},
}


def test_every_bound_widget_has_a_connector_for_its_field_type():
    fields = parameter_annotations()
    for widget, (cls, parameter) in bindings().items():
        kind, choices = fields[parameter]
        assert kind in CONNECTABLE[cls], f"{widget} ({cls}) cannot bind {parameter}: {kind}"
        if cls == "QComboBox":
            assert choices, f"{widget} binds {parameter}, which needs a Choice annotation"


def test_path_widgets_are_synced_by_hand_with_string_fields():
    """parameterNodeWrapper binds ctkPathLineEdit only to pathlib.Path; the module syncs these itself."""
    widgets, fields = ui_widgets(), parameter_annotations()
    from SynBTLib.slicer_panel import PATH_PARAMETERS as paths

    assert {"bundlePath", "exportSource", "exportOutput", "trainData", "trainOutput", "trainSyntheticDir"} <= set(paths.values())
    for widget, field in paths.items():
        assert widgets[widget].get("class") == "ctkPathLineEdit" and fields[field] == ("str", None)
    unsynced = {n for n, w in widgets.items() if w.get("class") == "ctkPathLineEdit"} - set(paths)
    assert not unsynced, f"path widgets neither bound nor synced: {sorted(unsynced)}"


def test_method_choices_match_the_engine_and_the_commands():
    from SynBTLib.slicer_worker import EXPORT_FORMATS, SYNTHETIC_MODES
    from SynBTLib.synthesizers import METHODS

    fields = parameter_annotations()
    for name in ("method", "exportMethod", "trainMethod"):
        assert tuple(fields[name][1]) == METHODS
    assert tuple(fields["exportFormat"][1]) == EXPORT_FORMATS
    assert tuple(fields["trainSynthetic"][1]) == SYNTHETIC_MODES
    from SynBTLib.nets.denoiser import KINETIC_CLASSES

    assert tuple(fields["kinetics"][1]) == ("drawn", *KINETIC_CLASSES[1:], "any")  # drawn = the CLI's default
    from SynBTLib.slicer_worker import NECROSIS_CHOICES

    for name in ("necrosis", "exportNecrosis"):  # drawn = the commands' default (no --necrosis)
        assert tuple(fields[name][1]) == ("drawn", *NECROSIS_CHOICES)


def test_export_and_train_sections_have_settings_a_button_progress_and_a_log():
    widgets = ui_widgets()
    for prefix, button in (("export", "Export"), ("train", "Train")):
        section = widgets[f"{prefix}CollapsibleButton"]
        assert not [p for p in section.findall("property") if p.get("name") == "enabled"]
        inside = {w.get("name"): w.get("class") for w in section.iter("widget")}
        assert inside[f"{prefix}SettingsWidget"] == "QWidget" and inside[f"{prefix}Button"] == "QPushButton"
        assert inside[f"{prefix}ProgressBar"] == "QProgressBar" and inside[f"{prefix}LogTextEdit"] == "QPlainTextEdit"
        assert widgets[f"{prefix}Button"].find("property[@name='text']/string").text == button
        log = widgets[f"{prefix}LogTextEdit"]
        assert log.find("property[@name='readOnly']/bool").text == "true"
        settings = {w.get("name") for w in widgets[f"{prefix}SettingsWidget"].iter("widget")}
        bound_here = {w for w, (_, parameter) in bindings().items() if parameter.startswith(prefix)}
        assert bound_here and bound_here <= settings  # disabled as one while the job runs


def test_default_method_follows_the_shipped_bundle():
    from SynBTLib.bundle import default_bundle_path
    from SynBTLib.slicer_worker import default_method

    expected = "diffusion" if (default_bundle_path() / "config.json").is_file() else "handcrafted"
    assert default_method() == expected
    synthesize = [n for n in ast.walk(module_tree()) if isinstance(n, ast.FunctionDef) and n.name == "synthesize"][0]
    defaults = dict(zip([a.arg for a in synthesize.args.args][-len(synthesize.args.defaults):], synthesize.args.defaults))
    assert ast.unparse(defaults["method"]) == "None"  # resolved by SynBTLogic.defaultMethod()


def test_module_python_files_parse():
    for path in MODULE_DIR.rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path))


def expand(text: str, folder: Path) -> str:
    name = re.search(r"set\(MODULE_NAME (\w+)\)", text)
    return text.replace("${MODULE_NAME}", name.group(1)) if name else text


def test_every_python_file_and_resource_is_listed_in_its_cmakelists():
    for path in MODULE_DIR.rglob("*"):
        if path.suffix not in (".py", ".png", ".ui") or "Screenshots" in path.parts:
            continue
        folder = path.parent
        while not (folder / "CMakeLists.txt").exists():
            folder = folder.parent
        listed = expand((folder / "CMakeLists.txt").read_text(), folder)
        assert path.relative_to(folder).as_posix() in listed, f"{path} is not listed in {folder / 'CMakeLists.txt'}"
    module_cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "GLOB_RECURSE" in module_cmake and "SynBTLib/*.py" in module_cmake
    assert "add_subdirectory(SegmentEditorSynBT)" in module_cmake


def _synbtlib_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "SynBTLib":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("SynBTLib."):
            names.add(node.module.split(".")[1])
    return names


def test_the_engine_parts_the_module_runs_are_shipped_with_it():
    """SynBTLib ships by the CMake glob SynBTLib/*.py: every module the Slicer files import, and what the
    worker processes run (`python -m SynBTLib synthesize | export | train-seg`), must be .py files under it."""
    imported = set()
    for path in MODULE_DIR.rglob("*.py"):
        imported |= _synbtlib_imports(path)
    assert {"slicer_panel", "slicer_worker", "dependencies", "mrml"} <= imported
    needed = [f"SynBTLib/{name}.py" for name in imported] + [
        "SynBTLib/__main__.py", "SynBTLib/cli.py", "SynBTLib/commands/synthesize.py",
        "SynBTLib/commands/export.py", "SynBTLib/commands/train_seg.py", "SynBTLib/requirements.txt",
    ]
    for rel in needed:
        assert (ROOT / rel).is_file(), f"{rel} is not in the source tree the CMake glob ships"
    for command in ("synthesize", "export", "train-seg"):
        assert f'"{command}"' in (ROOT / "SynBTLib" / "slicer_worker.py").read_text()


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_extension_metadata_is_consistent():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    project = re.search(r"project\((\w+)\)", cmake).group(1)
    entry = json.loads((ROOT / f"{project}.json").read_text())  # the index entry is named after the project
    assert {"$schema", "category", "scm_url", "scm_revision", "build_dependencies", "tier"} <= set(entry)
    assert entry["build_dependencies"] == ["PyTorch"] and entry["category"] == "Segmentation"
    assert "find_package(Slicer REQUIRED)" in cmake and "include(${Slicer_USE_FILE})" in cmake
    assert "add_subdirectory(SynBTSlicer)" in cmake
    s4ext = dict(
        line.split(" ", 1) for line in (ROOT / "SynBT.s4ext").read_text().splitlines() if line and not line.startswith("#")
    )
    assert s4ext["scm"] == "git" and s4ext["depends"] == "PyTorch" and s4ext["category"] == "Segmentation"
    assert s4ext["scmurl"].startswith("https://github.com/synbt/SlicerSynBT")
    for url in (s4ext["iconurl"], s4ext["screenshoturls"]):
        local = ROOT / url.split("/main/", 1)[1]
        assert local.exists(), f"{url} points at {local}, which does not exist"
    assert png_size(MODULE_DIR / "Resources" / "Icons" / "SynBT.png") == (128, 128)
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text and "SynBT contributors" in license_text


# ------------------------------------------------------------------ worker process (no Qt)

GRID = Geometry((20, 18, 10), (1.2, 1.2, 2.0), (-12.0, -10.0, -9.0), (0, 0, 1, 1, 0, 0, 0, 1, 0))


def small_case():
    rng = np.random.default_rng(0)
    base = rng.normal(400, 30, GRID.shape).round().astype(np.float32)
    phases = np.stack([base, base * 1.2, base * 1.25]).round().astype(np.float32)
    mask = np.zeros(GRID.shape, np.uint8)
    mask[3:7, 6:11, 7:12] = 1
    return Case(phases, GRID), mask


def test_command_line_for_mask_auto_and_diffusion_requests(tmp_path):
    inputs = sw.WorkerInputs([tmp_path / "phase_0.nii.gz", tmp_path / "phase_1.nii.gz"], tmp_path / "m.nii.gz")
    command = sw.build_synthesize_command("py", inputs, tmp_path / "out", sw.SynthesisRequest(seed=4))
    assert command[:4] == ["py", "-m", "SynBTLib", "synthesize"]
    assert command[command.index("--mask") + 1] == str(tmp_path / "m.nii.gz")
    assert command[-2:] == ["--progress", "json"] and "--seed" in command and "--steps" not in command
    auto = sw.build_synthesize_command(
        "py", inputs, tmp_path / "out",
        sw.SynthesisRequest(method="diffusion", steps=20, bundle="b", auto_size_mm=12.5, center_mm=(1, 2, 3)),
    )
    assert "--kinetics" not in auto and "--kinetics" not in command
    washout = sw.build_synthesize_command("py", inputs, "o", sw.SynthesisRequest(method="diffusion", kinetics="washout"))
    assert washout[washout.index("--kinetics") + 1] == "washout"
    assert "--necrosis" not in auto and "--necrosis" not in command
    for value, text in (("yes", "yes"), (True, "yes"), ("no", "no"), (False, "no")):
        core = sw.build_synthesize_command("py", inputs, "o", sw.SynthesisRequest(method="diffusion", necrosis=value))
        assert core[core.index("--necrosis") + 1] == text
    with pytest.raises(SynBTError, match="necrosis"):
        sw.build_synthesize_command("py", inputs, "o", sw.SynthesisRequest(method="diffusion", necrosis="maybe"))
    assert "--mask" not in auto and auto[auto.index("--size-mm") + 1] == "12.5"
    assert auto[auto.index("--steps") + 1] == "20" and auto[auto.index("--bundle") + 1] == "b"
    assert [float(v) for v in auto[auto.index("--center") + 1:auto.index("--center") + 4]] == [1, 2, 3]
    with pytest.raises(SynBTError, match="mask or an automatic"):
        sw.build_synthesize_command("py", sw.WorkerInputs(inputs.phase_paths, None), "o", sw.SynthesisRequest())


def test_progress_lines_are_parsed_and_other_lines_ignored():
    event = sw.parse_progress_line('{"event": "progress", "done": 45, "total": 90, "message": "denoising"}\n')
    assert (event.event, event.percent, event.message) == ("progress", 50, "denoising")
    done = sw.parse_progress_line('{"event": "done", "out": "/tmp/x"}')
    assert done.event == "done" and done.out == "/tmp/x"
    for junk in ("", "UserWarning: something", "[1, 2]", '{"event": "other"}', "{broken"):
        assert sw.parse_progress_line(junk) is None


def test_inputs_written_and_outputs_read_back_on_the_exact_grid(tmp_path):
    from SynBTLib.io import write_case, write_label

    case, mask = small_case()
    inputs = sw.write_worker_inputs(case, mask, tmp_path)
    # uncompressed temporary files: compressing them cost ~5 s per phase each way at clinical size
    assert [p.name for p in inputs.phase_paths] == ["phase_0.nii", "phase_1.nii", "phase_2.nii"]
    out = tmp_path / "out"
    out.mkdir()
    write_case(case, out, sw.WORKER_FORMAT)
    write_label(mask, case.geometry, out / sw.OUTPUT_LABEL_FILE)
    result, back = sw.read_worker_outputs(out, case)
    assert result.geometry == case.geometry  # the source grid, not the NIfTI-rounded one
    np.testing.assert_array_equal(result.phases, case.phases)
    np.testing.assert_array_equal(back, mask)
    (out / "phase_2.nii").unlink()
    with pytest.raises(SynBTError, match="phase_2.nii"):
        sw.read_worker_outputs(out, case)


def test_worker_job_cancel_kills_the_process_and_removes_its_files():
    case, mask = small_case()
    job = sw.SynthesisJob.start(case, mask, sw.SynthesisRequest(seed=1), python=sys.executable)
    job.cancel()
    assert job.worker.returncode is not None and job.worker.returncode != 0
    assert job.worker.cancelled and not job.work_dir.exists()


def test_worker_error_comes_back_as_one_line():
    case, _ = small_case()
    job = sw.SynthesisJob.start(case, None, sw.SynthesisRequest(auto_size_mm=55.0), python=sys.executable)
    with pytest.raises(SynBTError) as error:
        job.result()
    assert "synthesize" in str(error.value) and "\n" not in str(error.value)
    assert not job.work_dir.exists()


def test_worker_runs_the_real_command_and_its_result_lands_as_nodes_on_the_source_grid():
    """The module's Apply path without Qt: nodes -> NIfTI -> `python -m SynBTLib synthesize` -> new nodes."""
    pytest.importorskip("slicer")
    from slicer_env import headless_slicer

    from SynBTLib import mrml

    env = headless_slicer()
    scene = env.new_scene()
    case, mask = small_case()
    nodes = []
    for k in range(case.num_phases):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"dce{k}")
        node.SetAndObserveImageData(mrml._image_data(case.phases[k].astype(np.int16)))
        mrml.set_volume_geometry(node, case.geometry)
        nodes.append(node)
    segmentation, segment_id = mrml.add_segmentation_node(scene, mask, nodes[0], "drawn")
    source = mrml.case_from_volume_nodes(nodes)
    job = sw.SynthesisJob.start(
        source, mrml.mask_from_segment(segmentation, segment_id, source.geometry), sw.SynthesisRequest(seed=2),
        python=sys.executable,
    )
    events = []
    while job.running:
        events += job.poll()
        time.sleep(0.05)
    synthesized, back = job.result()
    events += job.poll()
    assert events and events[-1].event == "done" and any(e.event == "progress" for e in events)
    assert not job.work_dir.exists()
    np.testing.assert_array_equal(back, mask)
    count = scene.GetNumberOfNodes()
    result = mrml.add_result_nodes(scene, nodes, synthesized, back)
    assert scene.GetNumberOfNodes() > count
    changed_inside = False
    for node, original in zip(result.volume_nodes, case.phases):
        assert mrml.geometry_from_volume_node(node) == GRID
        out = env.slicer.util.arrayFromVolume(node)
        assert out.dtype == np.int16
        np.testing.assert_array_equal(out[:, :, :3], original[:, :, :3])  # far from the mask (it starts at x = 7)
        changed_inside |= bool((out != original)[mask > 0].any())
    assert changed_inside


def test_the_slicer_files_stay_thin_and_never_interrupt_inside_a_wait_cursor():
    """Decisions live in SynBTLib.slicer_panel (tested here); the Qt files only wire widgets. A
    KeyboardInterrupt inside tryWithErrorDisplay(waitCursor=True) once left Slicer's busy cursor on."""
    module = MODULE_DIR / "SynBT.py"
    effect = MODULE_DIR / "SegmentEditorSynBT" / "SegmentEditorSynBTLib" / "SegmentEditorEffect.py"
    tree = ast.parse(module.read_text())
    [test_class] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SynBTTest"]
    panel_lines = len(module.read_text().splitlines()) - (test_class.end_lineno - test_class.lineno + 1)
    # the self-test stays in the module file: Slicer's "Reload and Test" looks for SynBTTest there
    assert panel_lines <= 300 and len(effect.read_text().splitlines()) <= 160
    for path in (module, effect):
        for node in ast.walk(ast.parse(path.read_text())):
            assert not (isinstance(node, ast.Name) and node.id == "KeyboardInterrupt"), path
