"""What the browser page asks of slicer_panel (no browser, no trame): the state -> parameters adapter,
the click-placed tumor node, the subtraction, the kinetic curves, saving a result as files."""
import numpy as np
import pytest

pytest.importorskip("slicer")
from slicer_env import headless_slicer  # noqa: E402

from SynBTLib import mrml  # noqa: E402
from SynBTLib import slicer_panel as panel  # noqa: E402
from SynBTLib.errors import SynBTError  # noqa: E402
from SynBTLib.web.app import StateParameters  # noqa: E402


@pytest.fixture
def scene():
    return headless_slicer().new_scene()


def _centre_ras(segmentation, geometry):
    mask = mrml.mask_from_segment(segmentation, segmentation.GetSegmentation().GetNthSegmentID(0), geometry)
    return (mrml.ijk_to_ras(geometry) @ np.append(np.argwhere(mask).mean(axis=0)[::-1], 1.0))[:3]


def test_state_parameters_drive_the_panel_decisions(scene):
    phases, segmentation = panel.add_phantom_nodes(scene, seed=0, shape=(48, 48, 20))
    state = {f"p_{name}": spec.default for name, spec in panel.PARAMETERS.items()}
    params = StateParameters(state, scene)
    assert "pre-contrast" in panel.missing_input(params)
    state.update(p_prePhase=phases[0].GetID(), p_postPhase1=phases[1].GetID())
    assert "segment" in panel.missing_input(params)
    state.update(p_segmentationNode=segmentation.GetID(), p_segmentId=segmentation.GetSegmentation().GetNthSegmentID(0))
    assert panel.missing_input(params) is None
    state.update(p_method="handcrafted", p_seed="7", p_steps="12")  # text fields send strings
    request = panel.synthesis_request(params)
    assert request.seed == 7 and request.method == "handcrafted" and request.steps is None
    assert panel.enabled_widgets(params, False, False, False)["stepsSpinBox"] is False
    state["p_seed"] = "seven"
    with pytest.raises(SynBTError, match="seed"):
        panel.synthesis_request(params)


def test_placed_tumor_subtraction_curves_and_saved_files(scene, tmp_path):
    from SynBTLib.io import read_case, read_image
    from SynBTLib.synthesizers import make_synthesizer

    phases, segmentation = panel.add_phantom_nodes(scene, seed=0, shape=(48, 48, 20))
    geometry = mrml.geometry_from_volume_node(phases[0])
    node, segment_id = panel.add_placed_tumor(scene, phases, _centre_ras(segmentation, geometry), 10.0, seed=2)
    placed = mrml.mask_from_segment(node, segment_id, geometry)
    assert placed.any() and node.GetAttribute(panel.OUTPUT_ATTRIBUTE)
    assert panel.guess_phases(list(scene.GetNodesByClass("vtkMRMLScalarVolumeNode"))) == phases

    subtraction = panel.add_subtraction_node(scene, phases)
    expected = mrml.array_from_volume_node(phases[1]) - mrml.array_from_volume_node(phases[0])
    np.testing.assert_allclose(mrml.array_from_volume_node(subtraction), expected, atol=1e-4)
    assert subtraction not in panel.guess_phases(list(scene.GetNodesByClass("vtkMRMLScalarVolumeNode")))

    synthesizer, _, _ = make_synthesizer("handcrafted")
    case = mrml.case_from_volume_nodes(phases)
    result = panel.mark_output(mrml.add_result_nodes(scene, phases, synthesizer(case, placed, seed=0), placed))
    curves = panel.kinetic_curves(result.volume_nodes, placed)
    assert set(curves) == {"tumor", "fibroglandular"} and curves["tumor"][0] == 0.0
    assert curves["tumor"][1] > curves["fibroglandular"][1]  # the synthetic tumor enhances more than its background

    written = panel.save_result_files(result, tmp_path / "saved")
    assert {p.name for p in written} >= {"phase_0.nii.gz", "tumor_labels.nii.gz"}
    saved = read_case(tmp_path / "saved")
    np.testing.assert_allclose(saved.phases, mrml.case_from_volume_nodes(result.volume_nodes).phases, rtol=1e-6)
    assert (read_image(tmp_path / "saved" / "tumor_labels.nii.gz")[0] > 0).sum() == placed.sum()
    with pytest.raises(SynBTError):
        panel.save_result_files(result, tmp_path / "saved")  # never overwritten
