"""Slicer MRML nodes <-> engine arrays: the one module of SynBTLib that knows MRML.

Works inside the Slicer application and with slicer-core (headless MRML). Geometry is exact:
MRML keeps IJK-to-RAS, the engine keeps LPS (SimpleITK), and RAS = diag(-1, -1, 1) * LPS.
Arrays from MRML are (Z, Y, X) (KJI), the engine's order. Input nodes are never modified.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .case import Case, Geometry, check_finite
from .errors import SynBTError

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
OUTPUT_SUFFIX = " SynBT"
TUMOR_SEGMENT_NAME = "SynBT tumor"
TUMOR_SEGMENT_COLOR = (0.95, 0.35, 0.2)
_LATTICE_TOL = 1e-4  # in voxels: how far a segment's grid may be from the phases' and still be "the same"


def _slicer():
    import slicer  # the application's module in Slicer, slicer-core's headless one elsewhere

    return slicer


def _matrix_to_numpy(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _refuse_transformed(node) -> None:
    if node.GetParentTransformNode() is not None:
        raise SynBTError(
            f"'{node.GetName()}' is under a transform; harden or remove the transform (Data module) before synthesis"
        )


def ijk_to_ras(geometry: Geometry) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a grid (MRML's convention for the same voxels)."""
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_FROM_LPS @ geometry.direction_matrix @ np.diag(geometry.spacing)
    matrix[:3, 3] = RAS_FROM_LPS @ np.asarray(geometry.origin)
    return matrix


def geometry_from_volume_node(node) -> Geometry:
    """The engine's LPS grid of a volume node (exact: spacing, origin and directions are copied)."""
    image = node.GetImageData()
    if image is None:
        raise SynBTError(f"volume '{node.GetName()}' has no voxels")
    directions = np.zeros((3, 3))
    node.GetIJKToRASDirections(directions)
    return Geometry(
        size=image.GetDimensions(),
        spacing=node.GetSpacing(),
        origin=RAS_FROM_LPS @ np.asarray(node.GetOrigin()),
        direction=tuple((RAS_FROM_LPS @ directions).ravel()),
    )


def set_volume_geometry(node, geometry: Geometry) -> None:
    """Give a volume node the grid of an engine geometry (the inverse of geometry_from_volume_node)."""
    node.SetSpacing(*geometry.spacing)
    node.SetOrigin(*(RAS_FROM_LPS @ np.asarray(geometry.origin)))
    node.SetIJKToRASDirections(RAS_FROM_LPS @ geometry.direction_matrix)


def array_from_volume_node(node) -> np.ndarray:
    """A copy of a scalar volume's voxels as a (Z, Y, X) array in the node's scalar type."""
    from vtk.util.numpy_support import vtk_to_numpy

    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise SynBTError(f"'{node.GetName()}' is not a scalar (grey-level) volume")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise SynBTError(f"volume '{node.GetName()}' has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise SynBTError(f"volume '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components, expected 1")
    dims = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).copy()


def case_from_volume_nodes(phase_nodes, resample: bool = False) -> Case:
    """A Case from DCE phase volume nodes (pre-contrast first). Phases on other grids than the
    first are refused, or resampled onto it (linear) when resample=True."""
    phase_nodes = [node for node in phase_nodes if node is not None]
    if len(phase_nodes) < 2:
        raise SynBTError(f"select at least two phase volumes (pre-contrast and post-contrast), got {len(phase_nodes)}")
    for node in phase_nodes:
        _refuse_transformed(node)
    reference = geometry_from_volume_node(phase_nodes[0])
    phases = []
    for node in phase_nodes:
        values = array_from_volume_node(node).astype(np.float32)
        geometry = geometry_from_volume_node(node)
        if not geometry.matches(reference):
            if not resample:
                raise SynBTError(
                    f"phase '{node.GetName()}' ({geometry.describe()}) is not on the grid of "
                    f"'{phase_nodes[0].GetName()}' ({reference.describe()}); enable resampling or resample it first"
                )
            from .io import resample_to

            values = np.asarray(resample_to(values, geometry, reference), dtype=np.float32)
        check_finite(values, f"phase '{node.GetName()}'")
        phases.append(values)
    return Case(np.stack(phases), reference, [node.GetName() for node in phase_nodes])


def _segment_labelmap(segmentation_node, segment_id: str):
    """(binary (K, J, I) array, 4x4 IJK-to-RAS of its first voxel) of one segment, without touching the node."""
    from vtk.util.numpy_support import vtk_to_numpy

    slicer = _slicer()
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id) if segment_id else None
    if segment is None:
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        raise SynBTError(f"segmentation '{segmentation_node.GetName()}' has no segment '{segment_id}' (segments: {names})")
    binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if not segment.GetRepresentation(binary):
        # Convert on a copy (e.g. a segment drawn as a closed surface) so the user's node stays as it is.
        copy = slicer.vtkSegmentation()
        copy.DeepCopy(segmentation)
        if not copy.CreateRepresentation(binary):
            raise SynBTError(f"segment '{segment.GetName()}' cannot be converted to a binary labelmap")
        segment = copy.GetSegment(segment_id)
    labelmap = segment.GetRepresentation(binary)
    extent = labelmap.GetExtent()
    if labelmap.GetPointData().GetScalars() is None or extent[1] < extent[0]:
        return np.zeros((0, 0, 0), np.uint8), np.eye(4)
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    values = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims[::-1])
    matrix = _matrix_to_numpy(_image_to_world(labelmap))
    matrix[:3, 3] = matrix[:3, :3] @ np.array(extent[0::2], float) + matrix[:3, 3]  # first voxel of the extent
    return (values == segment.GetLabelValue()).astype(np.uint8), matrix


def _image_to_world(oriented_image):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    oriented_image.GetImageToWorldMatrix(matrix)
    return matrix


def mask_from_segment(segmentation_node, segment_id: str, geometry: Geometry, resample: bool = False) -> np.ndarray:
    """A segment as a uint8 (Z, Y, X) 0/1 mask on the phases' grid.

    A segment on the same voxel lattice (any extent) is placed exactly; on another lattice it is
    refused, or resampled with nearest neighbour when resample=True. An empty result is refused.
    """
    _refuse_transformed(segmentation_node)
    values, source_ijk_to_ras = _segment_labelmap(segmentation_node, segment_id)
    name = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
    if not values.any():
        raise SynBTError(f"segment '{name}' is empty; draw the tumor region first")
    # source voxel index (i, j, k) -> target voxel index
    source_to_target = np.linalg.solve(ijk_to_ras(geometry), source_ijk_to_ras)
    offset = source_to_target[:3, 3]
    aligned = np.allclose(source_to_target[:3, :3], np.eye(3), atol=_LATTICE_TOL) and np.allclose(
        offset, np.round(offset), atol=_LATTICE_TOL
    )
    if aligned:
        mask = _paste(values, np.round(offset).astype(int)[::-1], geometry.shape)
    elif resample:
        from .io import resample_to

        source = geometry_from_ijk_to_ras(source_ijk_to_ras, values.shape[::-1])
        mask = resample_to(values, source, geometry, nearest=True).astype(np.uint8)
    else:
        raise SynBTError(
            f"segment '{name}' is not on the phases' voxel grid ({geometry.describe()}); "
            "enable resampling, or set the segmentation's geometry from the phase volume"
        )
    if not mask.any():
        raise SynBTError(f"segment '{name}' does not overlap the phase volumes")
    return mask


def _paste(values: np.ndarray, offset_zyx: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Place a (Z, Y, X) block at an integer offset into a zero array of `shape`, cropping what falls outside."""
    mask = np.zeros(shape, np.uint8)
    target = tuple(slice(max(o, 0), min(o + n, s)) for o, n, s in zip(offset_zyx, values.shape, shape))
    source = tuple(slice(t.start - o, t.stop - o) for t, o in zip(target, offset_zyx))
    if all(t.stop > t.start for t in target):
        mask[target] = values[source]
    return mask


def geometry_from_ijk_to_ras(matrix: np.ndarray, size) -> Geometry:
    """The engine grid of `size` (x, y, z) voxels whose 4x4 IJK-to-RAS matrix is `matrix`."""
    lps = RAS_FROM_LPS @ np.asarray(matrix)[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    return Geometry(size, spacing, RAS_FROM_LPS @ np.asarray(matrix)[:3, 3], tuple((lps / spacing).ravel()))


def _to_scalar_type(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _image_data(array_zyx: np.ndarray):
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    image = vtk.vtkImageData()
    image.SetDimensions(*array_zyx.shape[::-1])
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(array_zyx).ravel(), deep=True))
    return image


def add_volume_node(scene, array_zyx: np.ndarray, like_node, name: str, grid_node=None):
    """A new scalar volume node with like_node's scalar type and window/level, on the exact grid of
    grid_node (default like_node)."""
    from vtk.util.numpy_support import get_numpy_array_type

    dtype = get_numpy_array_type(like_node.GetImageData().GetScalarType())
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(_image_data(_to_scalar_type(array_zyx, dtype)))
    set_volume_geometry(node, geometry_from_volume_node(grid_node or like_node))  # exact; CopyOrientation rounds
    node.CreateDefaultDisplayNodes()
    source_display, display = like_node.GetDisplayNode(), node.GetDisplayNode()
    if source_display is not None and display is not None:
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(source_display.GetWindow(), source_display.GetLevel())
    return node


def add_volume_from_array(scene, array_zyx: np.ndarray, geometry: Geometry, name: str):
    """A new scalar volume node holding a (Z, Y, X) array on `geometry` (exact), with default display."""
    if tuple(np.shape(array_zyx)) != geometry.shape:
        raise SynBTError(f"array of shape {np.shape(array_zyx)} does not fit the grid {geometry.describe()}")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(_image_data(np.asarray(array_zyx)))
    set_volume_geometry(node, geometry)
    node.CreateDefaultDisplayNodes()
    return node


def oriented_image_from_mask(mask: np.ndarray, geometry: Geometry):
    """A 0/1 vtkOrientedImageData (a segment's binary labelmap) of a (Z, Y, X) mask on `geometry`."""
    labelmap = _slicer().vtkOrientedImageData()
    labelmap.ShallowCopy(_image_data((np.asarray(mask) > 0).astype(np.uint8)))
    labelmap.SetImageToWorldMatrix(_numpy_to_matrix(ijk_to_ras(geometry)))
    return labelmap


def add_segmentation_node(scene, mask: np.ndarray, reference_node, name: str, segment_name: str = TUMOR_SEGMENT_NAME):
    """A new segmentation node on reference_node's grid holding `mask` as one segment; returns (node, segment id)."""
    slicer = _slicer()
    labelmap = oriented_image_from_mask(mask, geometry_from_volume_node(reference_node))
    segment = slicer.vtkSegment()
    segment.SetName(segment_name)
    segment.SetColor(*TUMOR_SEGMENT_COLOR)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), labelmap)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segment_id = node.GetSegmentation().GenerateUniqueSegmentID("SynBT_tumor")
    node.GetSegmentation().AddSegment(segment, segment_id)
    return node, segment_id


@dataclass
class SynthesisResult:
    """Nodes a synthesis added to the scene."""

    volume_nodes: list
    segmentation_node: object
    segment_id: str


def add_result_nodes(scene, phase_nodes, result: Case, mask: np.ndarray, suffix: str = OUTPUT_SUFFIX) -> SynthesisResult:
    """Add a synthesized case as new volumes "<phase name><suffix>" on the source grid, and its tumor
    mask as a segmentation; all or nothing (a failure removes what was added)."""
    if result.num_phases != len(phase_nodes):
        raise SynBTError(f"the synthesis returned {result.num_phases} phases for {len(phase_nodes)} input volumes")
    source_geometry = geometry_from_volume_node(phase_nodes[0])
    if tuple(result.shape) != source_geometry.shape or np.shape(mask) != source_geometry.shape:
        raise SynBTError(f"the synthesis result is not on the grid of the input phases ({source_geometry.describe()})")
    added = []
    try:
        for node, values in zip(phase_nodes, result.phases):
            added.append(add_volume_node(scene, values, node, f"{node.GetName()}{suffix}", grid_node=phase_nodes[0]))
        segmentation, segment_id = add_segmentation_node(scene, mask, added[0], f"{phase_nodes[0].GetName()}{suffix} tumor")
        added.append(segmentation)
    except BaseException:
        for node in added:
            scene.RemoveNode(node)
        raise
    return SynthesisResult(added[: len(phase_nodes)], segmentation, segment_id)


def synthesize_nodes(
    scene,
    phase_nodes,
    segmentation_node,
    segment_id: str,
    synthesizer: Callable,
    seed: int,
    steps: int | None = None,
    progress: Callable | None = None,
    resample: bool = False,
    suffix: str = OUTPUT_SUFFIX,
) -> SynthesisResult:
    """Run a synthesizer (case, mask, seed, steps, progress) -> Case on MRML nodes.

    The segment is the tumor mask. Results land as new nodes; inputs are never modified, and if the
    synthesizer raises (e.g. progress cancels) nothing is added to the scene.
    """
    case = case_from_volume_nodes(phase_nodes, resample=resample)
    mask = mask_from_segment(segmentation_node, segment_id, case.geometry, resample=resample)
    result = synthesizer(case, mask, seed=seed, steps=steps, progress=progress)
    return add_result_nodes(scene, list(phase_nodes), result, mask, suffix=suffix)
