"""The Slicer panel's and effect's decisions (SynBTLib.slicer_panel) on real MRML nodes from slicer-core:
phase guessing, readiness, requests, the worker run with Cancel, click-to-place, the phantom sample."""
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("slicer")
from slicer_env import headless_slicer  # noqa: E402

from SynBTLib import mrml  # noqa: E402
from SynBTLib import slicer_panel as panel  # noqa: E402
from SynBTLib.case import Geometry  # noqa: E402
from SynBTLib.errors import SynBTError  # noqa: E402
from SynBTLib.slicer_worker import SynthesisRequest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRID = Geometry((12, 10, 6), (1.5, 1.5, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
OTHER_GRID = Geometry((12, 10, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


@pytest.fixture(scope="module")
def env():
    return headless_slicer()


@pytest.fixture
def scene(env):
    return env.new_scene()


def volume(scene, name, geometry=GRID):
    return mrml.add_volume_from_array(scene, np.zeros(geometry.shape, np.float32), geometry, name)


def defaults(**changes):
    values = {name: spec.default for name, spec in panel.PARAMETERS.items()}
    values.update(changes)
    return SimpleNamespace(**values)


# ---------------------------------------------------------------- which volumes are the phases

def test_phases_are_ordered_by_their_names_and_other_volumes_left_out(scene):
    post2, pre, post1 = (volume(scene, n) for n in ("case_0002", "case_0000", "case_0001"))
    volume(scene, "case_sub")  # a subtraction
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "case_0003")
    label.SetAndObserveImageData(mrml._image_data(np.zeros(GRID.shape, np.uint8)))
    mrml.set_volume_geometry(label, GRID)
    old_output = volume(scene, "case_0004 SynBT")
    old_output.SetAttribute(panel.OUTPUT_ATTRIBUTE, "1")
    volume(scene, "case_0005", OTHER_GRID)  # another series
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    assert panel.guess_phases(nodes) == [pre, post1, post2]


def test_pre_and_post_names_and_scene_order_when_names_say_nothing(scene):
    post, pre = volume(scene, "Post 1"), volume(scene, "T1 pre-contrast")
    assert panel.guess_phases([post, pre]) == [pre, post]
    first, second = volume(scene, "Breast DCE"), volume(scene, "Dynamic series")
    assert panel.guess_phases([first, second]) == [first, second]
    assert panel.guess_phases([]) == []


def test_more_phases_than_the_bundle_models_follow_its_phase_policy(scene):
    """Five DCE volumes and a 3-phase bundle: the policy picks them as `synbt synthesize` does."""
    from SynBTLib.phase_choice import BundlePhases

    nodes = [volume(scene, f"case_000{k}") for k in (3, 0, 4, 1, 2)]
    ordered = sorted(nodes, key=lambda node: node.GetName())
    assert panel.guess_phases(nodes, bundle=BundlePhases(3, "pre,first,last")) == [ordered[k] for k in (0, 1, 4)]
    assert panel.guess_phases(nodes, bundle=BundlePhases(3, "0,2,3")) == [ordered[k] for k in (0, 2, 3)]
    assert panel.phase_guess_note(nodes, bundle=BundlePhases(3, "pre,first,last")) is None
    # what synthesize would refuse (times needed, no policy): the first phases, and a note saying why
    timed = BundlePhases(3, "pre,first,closest:300s")
    assert panel.guess_phases(nodes, bundle=timed) == ordered[:3]
    assert "closest:300s" in panel.phase_guess_note(nodes, bundle=timed)
    assert panel.guess_phases(nodes, bundle=BundlePhases(3, None)) == ordered[:3]
    assert panel.guess_phases(nodes, bundle=False) == ordered[:len(panel.PHASE_FIELDS)]  # no bundle: as many as fit


# ---------------------------------------------------------------- readiness and requests

def test_generate_needs_two_different_phases_and_a_tumor_region(scene):
    pre, post = volume(scene, "pre"), volume(scene, "post 1")
    assert "phase" in panel.missing_input(defaults(prePhase=pre))
    assert "different" in panel.missing_input(defaults(prePhase=pre, postPhase1=pre, useAutoTumor=True))
    assert "segment" in panel.missing_input(defaults(prePhase=pre, postPhase1=post))
    assert panel.missing_input(defaults(prePhase=pre, postPhase1=post, useAutoTumor=True)) is None
    assert not panel.segment_ready(defaults(prePhase=pre, postPhase1=post))
    assert panel.segment_ready(defaults(prePhase=pre, postPhase1=post, segmentModel="/models/run"))


def test_widgets_follow_the_method_and_the_jobs():
    handcrafted = panel.enabled_widgets(defaults(), running=False, export_running=False, train_running=False)
    assert not handcrafted["stepsSpinBox"] and handcrafted["segmentSelector"] and not handcrafted["autoSizeSpinBox"]
    diffusion = panel.enabled_widgets(defaults(method="diffusion", useAutoTumor=True, trainSynthetic="offline"),
                                      running=True, export_running=True, train_running=False)
    assert diffusion["stepsSpinBox"] and diffusion["autoSizeSpinBox"] and not diffusion["segmentSelector"]
    assert not diffusion["inputsCollapsibleButton"] and not diffusion["exportSettingsWidget"]
    assert diffusion["trainSettingsWidget"] and diffusion["trainSyntheticPathLineEdit"]


def test_requests_drop_diffusion_options_for_the_handcrafted_method():
    request = panel.synthesis_request(defaults(method="handcrafted", kinetics="washout", necrosis="yes", seed=5))
    assert (request.method, request.seed, request.steps, request.kinetics, request.necrosis) == ("handcrafted", 5, None, None, None)
    diffusion = panel.synthesis_request(defaults(method="diffusion", kinetics="washout", necrosis="drawn",
                                                 useAutoTumor=True, autoSizeMm=22.0, bundlePath="/b"))
    assert (diffusion.steps, diffusion.kinetics, diffusion.necrosis) == (panel.PARAMETERS["steps"].default, "washout", None)
    assert diffusion.auto_size_mm == 22.0 and diffusion.bundle == "/b"
    export = panel.export_request(defaults(exportSource="s", exportOutput="o", exportNecrosis="no", exportMethod="diffusion"))
    assert export.necrosis == "no" and export.size_mm == (10.0, 30.0)
    train = panel.train_request(defaults(trainData="d", trainOutput="o", trainSyntheticDir=""))
    assert train.synthetic_dir is None and train.config is None


def test_parameter_values_are_converted_and_checked_against_their_spec():
    assert panel.parameter_value("seed", "7") == 7 and panel.parameter_value("seed", 7.0) == 7
    assert panel.parameter_value("autoSizeMm", " 22.5 ") == 22.5 and panel.parameter_value("method", "diffusion") == "diffusion"
    for name, bad, allowed in (("seed", -1, "2147483647"), ("seed", 2**31, "2147483647"), ("seed", "7.5", "2147483647"),
                               ("seed", True, "2147483647"), ("steps", 0, "1000"), ("autoSizeMm", float("nan"), "60.0"),
                               ("autoSizeMm", "inf", "60.0"), ("autoSizeMm", None, "60.0"), ("trainRatio", 1.5, "1.0"),
                               ("kinetics", "fast", "washout"), ("exportFormat", "dicom", "nnunet")):
        with pytest.raises(SynBTError) as error:
            panel.parameter_value(name, bad)
        assert name in str(error.value) and allowed in str(error.value), (name, bad)
        assert str(error.value).startswith(panel.PARAMETERS[name].label)  # what the page and the panel show
    with pytest.raises(SynBTError, match=r"^Tumor diameter.*autoSizeMm.*60"):
        panel.parameter_value("autoSizeMm", 100)


def test_requests_check_the_values_they_use():
    with pytest.raises(SynBTError, match="seed"):
        panel.synthesis_request(defaults(method="handcrafted", seed=-3))
    with pytest.raises(SynBTError, match="steps"):
        panel.synthesis_request(defaults(method="diffusion", steps=0))
    with pytest.raises(SynBTError, match="autoSizeMm"):
        panel.synthesis_request(defaults(method="handcrafted", useAutoTumor=True, autoSizeMm=200.0))
    # values a request does not use are not its business: steps of a handcrafted run, the size of a drawn tumor
    request = panel.synthesis_request(defaults(method="handcrafted", steps=0, autoSizeMm=200.0))
    assert request.steps is None and request.auto_size_mm is None
    with pytest.raises(SynBTError, match="exportNumCases"):
        panel.export_request(defaults(exportSource="s", exportOutput="o", exportNumCases=0))
    with pytest.raises(SynBTError, match="exportSizeMaxMm"):
        panel.export_request(defaults(exportSource="s", exportOutput="o", exportSizeMaxMm=500.0))


def test_every_default_is_one_of_its_choices_and_inside_its_range():
    for name, spec in panel.PARAMETERS.items():
        if spec.choices:
            assert spec.default in spec.choices, name
        if spec.range:
            assert spec.range[0] <= spec.default <= spec.range[1], name


# ---------------------------------------------------------------- the phantom sample and a synthesis run

def test_phantom_sample_is_made_locally_as_nodes(scene):
    phases, segmentation = panel.add_phantom_nodes(scene, seed=1, shape=(48, 48, 20))
    assert len(phases) == 3 and segmentation is not None
    assert panel.guess_phases(phases[::-1]) == phases  # pre-contrast first whatever the order given
    geometry = mrml.geometry_from_volume_node(phases[0])
    region = mrml.mask_from_segment(segmentation, segmentation.GetSegmentation().GetNthSegmentID(0), geometry)
    assert region.sum() > 0
    from SynBTLib.preprocess import breast_tissue_mask

    breast = breast_tissue_mask(mrml.case_from_volume_nodes(phases)).breast
    assert breast[region > 0].mean() > 0.9  # the region lies in breast tissue


def test_synthesis_run_in_a_worker_adds_tagged_nodes_and_cancel_adds_nothing(scene):
    phases, segmentation = panel.add_phantom_nodes(scene, seed=0, shape=(48, 48, 20))
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    before = [mrml.array_from_volume_node(n).copy() for n in phases]
    count = scene.GetNumberOfNodes()
    request = SynthesisRequest(method="handcrafted", seed=2)
    cancelled = panel.SynthesisRun(scene, phases, segmentation, segment_id, request, python=sys.executable)
    cancelled.cancel()
    assert scene.GetNumberOfNodes() == count and not cancelled.job.work_dir.exists()
    run = panel.SynthesisRun(scene, phases, segmentation, segment_id, request, python=sys.executable)
    percents = []
    while not (status := run.poll()).finished:
        percents.append(status.percent)
        time.sleep(0.05)
    result = run.finish()
    assert [n.GetName() for n in result.volume_nodes] == [n.GetName() + " SynBT" for n in phases]
    assert all(n.GetAttribute(panel.OUTPUT_ATTRIBUTE) for n in [*result.volume_nodes, result.segmentation_node])
    assert panel.guess_phases([*phases, *result.volume_nodes]) == phases  # outputs are never taken for inputs
    for node, original in zip(phases, before):
        np.testing.assert_array_equal(mrml.array_from_volume_node(node), original)
    assert (mrml.array_from_volume_node(result.volume_nodes[1]) != before[1]).any()
    assert percents == sorted(percents)


def test_a_run_without_a_segment_is_refused_before_any_process_starts(scene):
    phases, _ = panel.add_phantom_nodes(scene, seed=0, shape=(48, 48, 20))
    with pytest.raises(SynBTError, match="segment"):
        panel.SynthesisRun(scene, phases, None, "", SynthesisRequest(), python=sys.executable)


def test_click_to_place_inside_the_breast_and_refused_in_air(scene):
    phases, segmentation = panel.add_phantom_nodes(scene, seed=0, shape=(48, 48, 20))
    geometry = mrml.geometry_from_volume_node(phases[0])
    tumor = mrml.mask_from_segment(segmentation, segmentation.GetSegmentation().GetNthSegmentID(0), geometry)
    center_ijk = np.argwhere(tumor).mean(axis=0)[::-1]  # (x, y, z) voxel
    ras = mrml.ijk_to_ras(geometry) @ np.append(center_ijk, 1.0)
    mask, grid = panel.tumor_shape_at(phases, ras[:3], 8.0, seed=1)
    assert grid == geometry and mask.sum() > 0
    corner = mrml.ijk_to_ras(geometry) @ np.array([1.0, 1.0, 1.0, 1.0])  # air in front of the body
    with pytest.raises(SynBTError, match="breast"):
        panel.tumor_shape_at(phases, corner[:3], 8.0, seed=1)
    with pytest.raises(SynBTError, match="outside"):
        panel.tumor_shape_at(phases, corner[:3] - 1000.0, 8.0, seed=1)


def test_in_process_handcrafted_path_needs_only_what_a_fresh_slicer_ships(tmp_path):
    """A fresh Slicer has numpy, scipy and SimpleITK: the self-test's first part must run with nothing else."""
    script = textwrap.dedent(f"""
        import sys
        ABSENT = {{"torch", "monai", "nibabel", "nrrd", "slicerio", "tqdm", "matplotlib", "safetensors", "einops"}}

        class Absent:  # as if not installed: importing any of these raises ModuleNotFoundError
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ABSENT:
                    raise ModuleNotFoundError(f"No module named {{name!r}}")

        sys.meta_path.insert(0, Absent())
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "Testing")!r}]
        from slicer_env import headless_slicer
        from SynBTLib import slicer_panel as panel
        from SynBTLib.slicer_worker import SynthesisRequest
        scene = headless_slicer().new_scene()
        phases, segmentation = panel.add_phantom_nodes(scene, seed=0, shape=(48, 48, 20))
        segment = segmentation.GetSegmentation().GetNthSegmentID(0)
        result = panel.synthesize_in_process(scene, phases, segmentation, segment, SynthesisRequest(method="handcrafted", seed=1))
        auto = panel.synthesize_in_process(scene, phases, None, None, SynthesisRequest(method="handcrafted", auto_size_mm=10.0))
        print("OK", len(result.volume_nodes), len(auto.volume_nodes))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["OK", "3", "3"]


def test_segment_with_a_trained_model_adds_a_segmentation_and_cancel_adds_nothing(scene, tmp_path):
    """The panel's "Segment with a trained model": phases -> `synbt segment` in a worker -> a segmentation node
    that matches what the engine's segment_case predicts in this process."""
    from SynBTLib.phantom import make_phantom, write_phantom
    from SynBTLib.segment import segment_case
    from SynBTLib.training.segmentation import train_segmentation

    for k in range(2):
        write_phantom(make_phantom(seed=30 + k, shape=(48, 48, 20), tumors=1, tumor_diameters_mm=16.0),
                      tmp_path / "data" / f"case_{k}", montage=False)
    tiny = {"model": {"channels": [4, 8], "num_res_units": 0}, "training": {"steps": 2, "batch_size": 1},
            "data": {"patch_size": [8, 16, 16], "steps_per_epoch": 2}}
    train_segmentation(tmp_path / "data", tmp_path / "run", tiny, verbose=False)
    phases, _ = panel.add_phantom_nodes(scene, seed=0, shape=(48, 48, 20))
    count = scene.GetNumberOfNodes()
    panel.SegmentRun(scene, phases, str(tmp_path / "run"), python=sys.executable).cancel()
    assert scene.GetNumberOfNodes() == count
    run = panel.SegmentRun(scene, phases, str(tmp_path / "run"), python=sys.executable)
    while not run.poll().finished:
        time.sleep(0.05)
    node, voxels = run.finish()
    assert node.GetAttribute(panel.OUTPUT_ATTRIBUTE) and "predicted" in node.GetName()
    geometry = mrml.geometry_from_volume_node(phases[0])
    expected = segment_case(str(tmp_path / "run"), mrml.case_from_volume_nodes(phases))
    assert voxels == int(expected.sum())
    if voxels:
        got = mrml.mask_from_segment(node, node.GetSegmentation().GetNthSegmentID(0), geometry)
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(SynBTError, match="model"):
        panel.SegmentRun(scene, phases, str(tmp_path / "no-such-run"), python=sys.executable)
