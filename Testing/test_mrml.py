"""SynBTLib.mrml against the real Slicer MRML libraries (slicer-core, headless)."""
import numpy as np
import pytest

pytest.importorskip("slicer")
import vtk  # noqa: E402
from scipy.ndimage import distance_transform_edt  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402
from slicer_env import headless_slicer  # noqa: E402

from SynBTLib import mrml  # noqa: E402
from SynBTLib.case import Case, Geometry  # noqa: E402
from SynBTLib.errors import SynBTError  # noqa: E402

OBLIQUE = Geometry(
    size=(24, 20, 12),
    spacing=(0.7, 0.9, 2.5),
    origin=(-30.5, 12.25, -40.0),
    direction=tuple(Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix().ravel()),
)


@pytest.fixture()
def env():
    session = headless_slicer()
    session.new_scene()
    return session


def add_phases(scene, geometry, count=3, dtype=np.int16, seed=0, prefix="phase"):
    rng = np.random.default_rng(seed)
    nodes = []
    for k in range(count):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{prefix}{k}")
        values = rng.normal(300 + 100 * k, 40, geometry.shape).astype(dtype)
        node.SetAndObserveImageData(mrml._image_data(values))
        mrml.set_volume_geometry(node, geometry)
        node.CreateDefaultDisplayNodes()
        nodes.append(node)
    return nodes


def ras_of_voxels(node) -> np.ndarray:
    """RAS of every voxel centre, (Z, Y, X, 3), from the node's own IJK-to-RAS matrix (not mrml's)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    dims = node.GetImageData().GetDimensions()
    k, j, i = np.meshgrid(*[np.arange(n) for n in dims[::-1]], indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk1 @ m.T)[..., :3]


def sphere_in_ras(node, center_ras, radius_mm) -> np.ndarray:
    return (np.linalg.norm(ras_of_voxels(node) - center_ras, axis=-1) <= radius_mm).astype(np.uint8)


def segment_from_array(env, mask, reference_node, name="tumor"):
    """A segment written with Slicer's own helper (independent of mrml's writer)."""
    node = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segment_id = node.GetSegmentation().AddEmptySegment(name)
    env.slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, segment_id, reference_node)
    return node, segment_id


def add_constant(case, mask, seed, steps=None, progress=None):
    phases = case.phases.copy()
    phases[:, mask > 0] += 50.0
    return case.with_phases(phases)


def test_oblique_anisotropic_case_round_trips_exactly(env):
    rng = np.random.default_rng(1)
    case = Case(rng.normal(size=(2, *OBLIQUE.shape)).astype(np.float32), OBLIQUE)
    nodes = []
    for k in range(case.num_phases):
        node = env.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"p{k}")
        node.SetAndObserveImageData(mrml._image_data(case.phases[k]))
        mrml.set_volume_geometry(node, case.geometry)
        nodes.append(node)
    back = mrml.case_from_volume_nodes(nodes)
    assert back.geometry == OBLIQUE
    np.testing.assert_array_equal(back.phases, case.phases)
    # RAS = diag(-1, -1, 1) LPS: the node's matrix maps voxel (i, j, k) where the LPS geometry says
    ijk = np.array([3.0, 5.0, 7.0])
    lps = OBLIQUE.index_to_physical(ijk)
    matrix = vtk.vtkMatrix4x4()
    nodes[0].GetIJKToRASMatrix(matrix)
    ras = np.array(matrix.MultiplyPoint((*ijk, 1.0))[:3])
    np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-9)


def test_sphere_drawn_in_ras_arrives_as_the_same_mask(env):
    nodes = add_phases(env.scene, OBLIQUE)
    center_ras = ras_of_voxels(nodes[0])[6, 10, 12]
    drawn = sphere_in_ras(nodes[0], center_ras, 4.0)
    segmentation, segment_id = segment_from_array(env, drawn, nodes[0])
    mask = mrml.mask_from_segment(segmentation, segment_id, mrml.geometry_from_volume_node(nodes[0]))
    assert mask.dtype == np.uint8 and mask.shape == OBLIQUE.shape
    np.testing.assert_array_equal(mask, drawn)
    # the same sphere computed in the engine's LPS space
    center_lps = np.array([-center_ras[0], -center_ras[1], center_ras[2]])
    k, j, i = np.meshgrid(*[np.arange(n) for n in OBLIQUE.shape], indexing="ij")
    lps = OBLIQUE.index_to_physical(np.stack([i, j, k], axis=-1))
    np.testing.assert_array_equal(mask, (np.linalg.norm(lps - center_lps, axis=-1) <= 4.0).astype(np.uint8))


def test_segment_sharing_a_layer_and_cropped_extent_is_placed_exactly(env):
    nodes = add_phases(env.scene, OBLIQUE)
    first = np.zeros(OBLIQUE.shape, np.uint8)
    first[2:5, 3:8, 4:9] = 1
    second = np.zeros(OBLIQUE.shape, np.uint8)
    second[7:9, 12:15, 15:20] = 1
    segmentation, first_id = segment_from_array(env, first, nodes[0], "a")
    second_id = segmentation.GetSegmentation().AddEmptySegment("b")
    env.slicer.util.updateSegmentBinaryLabelmapFromArray(second, segmentation, second_id, nodes[0])
    geometry = mrml.geometry_from_volume_node(nodes[0])
    np.testing.assert_array_equal(mrml.mask_from_segment(segmentation, first_id, geometry), first)
    np.testing.assert_array_equal(mrml.mask_from_segment(segmentation, second_id, geometry), second)


def test_closed_surface_segment_is_converted_without_touching_the_node(env):
    geometry = Geometry((24, 24, 16), (1.0, 1.0, 1.5), (0.0, 0.0, 0.0))
    nodes = add_phases(env.scene, geometry)
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(-12.0, -12.0, 12.0)  # RAS of LPS (12, 12, 12)
    sphere.SetRadius(5.0)
    sphere.SetThetaResolution(48)
    sphere.SetPhiResolution(48)
    sphere.Update()
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surface")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(nodes[0])
    converter = env.slicer.vtkSegmentationConverter
    segmentation.GetSegmentation().SetSourceRepresentationName(converter.GetClosedSurfaceRepresentationName())
    segment_id = segmentation.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "ball")
    binary = converter.GetBinaryLabelmapRepresentationName()
    assert not segmentation.GetSegmentation().ContainsRepresentation(binary)
    mask = mrml.mask_from_segment(segmentation, segment_id, geometry)
    assert not segmentation.GetSegmentation().ContainsRepresentation(binary)
    k, j, i = np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij")
    lps = geometry.index_to_physical(np.stack([i, j, k], axis=-1))
    expected = np.linalg.norm(lps - 12.0, axis=-1) <= 5.0
    dice = 2 * np.sum(expected & (mask > 0)) / (expected.sum() + mask.sum())
    assert dice > 0.9


def test_segment_on_another_grid_is_refused_or_resampled(env):
    nodes = add_phases(env.scene, OBLIQUE)
    coarse = Geometry((12, 10, 6), (1.4, 1.8, 5.0), OBLIQUE.origin, OBLIQUE.direction)
    [other] = add_phases(env.scene, coarse, count=1, prefix="coarse")
    center_ras = ras_of_voxels(nodes[0])[6, 10, 12]
    segmentation, segment_id = segment_from_array(env, sphere_in_ras(other, center_ras, 6.0), other)
    geometry = mrml.geometry_from_volume_node(nodes[0])
    with pytest.raises(SynBTError, match="not on the phases' voxel grid"):
        mrml.mask_from_segment(segmentation, segment_id, geometry)
    mask = mrml.mask_from_segment(segmentation, segment_id, geometry, resample=True)
    expected = sphere_in_ras(nodes[0], center_ras, 6.0) > 0
    dice = 2 * np.sum(expected & (mask > 0)) / (expected.sum() + mask.sum())
    assert set(np.unique(mask)) == {0, 1} and dice > 0.7


def test_empty_or_missing_segment_and_transformed_nodes_are_refused(env):
    nodes = add_phases(env.scene, OBLIQUE)
    geometry = mrml.geometry_from_volume_node(nodes[0])
    segmentation, segment_id = segment_from_array(env, np.zeros(OBLIQUE.shape, np.uint8), nodes[0])
    with pytest.raises(SynBTError, match="empty"):
        mrml.mask_from_segment(segmentation, segment_id, geometry)
    with pytest.raises(SynBTError, match="'nope'"):
        mrml.mask_from_segment(segmentation, "nope", geometry)
    transform = env.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    nodes[1].SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(SynBTError, match="under a transform"):
        mrml.case_from_volume_nodes(nodes)
    with pytest.raises(SynBTError, match="at least two"):
        mrml.case_from_volume_nodes(nodes[:1])


def test_phases_on_different_grids_are_refused_unless_resampled(env):
    nodes = add_phases(env.scene, OBLIQUE, count=2, dtype=np.float32)
    shifted = Geometry(OBLIQUE.size, OBLIQUE.spacing, (-30.0, 12.25, -40.0), OBLIQUE.direction)
    [moved] = add_phases(env.scene, shifted, count=1, dtype=np.float32, prefix="moved")
    with pytest.raises(SynBTError, match="is not on the grid"):
        mrml.case_from_volume_nodes([nodes[0], moved])
    case = mrml.case_from_volume_nodes([nodes[0], moved], resample=True)
    assert case.geometry == OBLIQUE and case.phase_names == ["phase0", "moved0"]


def synthesizers():
    """The handcrafted baseline when it is there, and a trivial constant-in-the-mask synthesizer."""
    found = [add_constant]
    try:
        from SynBTLib.handcrafted import HandcraftedSynthesizer

        found.append(HandcraftedSynthesizer())
    except ImportError:
        pass
    return found


@pytest.mark.parametrize("synthesizer", synthesizers(), ids=lambda s: type(s).__name__)
def test_synthesis_lands_as_new_nodes_with_the_source_geometry(env, synthesizer):
    nodes = add_phases(env.scene, OBLIQUE)
    before = [env.slicer.util.arrayFromVolume(node).copy() for node in nodes]
    drawn = sphere_in_ras(nodes[0], ras_of_voxels(nodes[0])[6, 10, 12], 4.0)
    segmentation, segment_id = segment_from_array(env, drawn, nodes[0])
    count = env.scene.GetNumberOfNodes()

    result = mrml.synthesize_nodes(env.scene, nodes, segmentation, segment_id, synthesizer, seed=3)

    assert [n.GetName() for n in result.volume_nodes] == [f"phase{k} SynBT" for k in range(3)]
    assert env.scene.GetNumberOfNodes() > count
    for node, source, original in zip(result.volume_nodes, nodes, before):
        assert mrml.geometry_from_volume_node(node) == OBLIQUE
        assert node.GetImageData().GetScalarType() == source.GetImageData().GetScalarType()
        np.testing.assert_array_equal(env.slicer.util.arrayFromVolume(source), original)
    changed = [env.slicer.util.arrayFromVolume(n) != b for n, b in zip(result.volume_nodes, before)]
    assert any(c[drawn > 0].any() for c in changed)
    far = distance_transform_edt(drawn == 0, sampling=OBLIQUE.spacing[::-1]) > 4.0  # beyond any blend margin
    assert not any(c[far].any() for c in changed)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    segment = result.segmentation_node.GetSegmentation().GetSegment(result.segment_id)
    assert segment.GetName() == "SynBT tumor"
    back = mrml.mask_from_segment(result.segmentation_node, result.segment_id, OBLIQUE)
    np.testing.assert_array_equal(back, drawn)


def test_cancel_leaves_the_scene_unchanged(env):
    nodes = add_phases(env.scene, OBLIQUE)
    segmentation, segment_id = segment_from_array(env, sphere_in_ras(nodes[0], ras_of_voxels(nodes[0])[6, 10, 12], 4.0), nodes[0])
    count = env.scene.GetNumberOfNodes()
    calls = []

    def cancel(done, total, message):
        calls.append(done)
        raise KeyboardInterrupt("cancelled")

    def reporting(case, mask, seed, steps=None, progress=None):
        progress(0, 2, "starting")
        return add_constant(case, mask, seed)

    for synthesizer in [reporting] + synthesizers()[1:]:
        with pytest.raises(KeyboardInterrupt):
            mrml.synthesize_nodes(env.scene, nodes, segmentation, segment_id, synthesizer, seed=0, progress=cancel)
    assert calls and env.scene.GetNumberOfNodes() == count


def test_mismatched_results_are_refused_before_anything_is_added(env):
    nodes = add_phases(env.scene, OBLIQUE)
    case = mrml.case_from_volume_nodes(nodes)
    count = env.scene.GetNumberOfNodes()
    with pytest.raises(SynBTError, match="3 input volumes"):
        mrml.add_result_nodes(env.scene, nodes, Case(case.phases[:2], case.geometry), np.ones(OBLIQUE.shape, np.uint8))
    bad_mask = np.ones((2, 2, 2), np.uint8)
    with pytest.raises(SynBTError, match="not on the grid"):
        mrml.add_result_nodes(env.scene, nodes, case, bad_mask)
    assert env.scene.GetNumberOfNodes() == count
