"""Tumor shapes in millimetres on any grid, and their placement inside an allowed region."""
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from SynBTLib.case import Geometry
from SynBTLib.errors import SynBTError
from SynBTLib.shapes import KINDS, place_tumor, tumor_extent_mm, tumor_mask


def centred_grid(size, spacing, direction=np.eye(3), center=(10.0, -20.0, 5.0)) -> Geometry:
    """A grid whose middle voxel lies at `center` (LPS mm)."""
    size, spacing, direction = np.asarray(size), np.asarray(spacing, float), np.asarray(direction, float)
    origin = np.asarray(center) - direction @ (spacing * (size - 1) / 2)
    return Geometry(tuple(size), tuple(spacing), tuple(origin), tuple(direction.ravel()))


CENTER = (10.0, -20.0, 5.0)
ISOTROPIC = centred_grid((72, 72, 72), (0.7, 0.7, 0.7))
ANISOTROPIC = centred_grid((80, 56, 22), (0.6, 0.9, 2.5))
OBLIQUE = centred_grid(
    (60, 60, 40), (0.8, 0.9, 1.4), Rotation.from_euler("xyz", [25, -35, 50], degrees=True).as_matrix()
)


def volume_mm3(mask: np.ndarray, geometry: Geometry) -> float:
    return float(mask.sum() * np.prod(geometry.spacing))


def ellipsoid_region(geometry: Geometry, center_mm, radii_mm) -> np.ndarray:
    zyx = np.indices(geometry.shape).reshape(3, -1).T
    xyz = geometry.index_to_physical(zyx[:, ::-1].astype(float))
    inside = (((xyz - np.asarray(center_mm)) / np.asarray(radii_mm)) ** 2).sum(axis=1) <= 1.0
    return inside.reshape(geometry.shape)


@pytest.mark.parametrize("kind", KINDS)
def test_volume_matches_the_sphere_on_any_grid(kind):
    diameter = 22.0
    target = np.pi / 6 * diameter**3
    volumes = [volume_mm3(tumor_mask(g, CENTER, diameter, kind, seed=3).mask, g) for g in (ISOTROPIC, ANISOTROPIC, OBLIQUE)]
    assert np.allclose(volumes, target, rtol=0.04), [v / target for v in volumes]


def test_same_seed_same_mask_other_seed_or_kind_differs():
    first = tumor_mask(ANISOTROPIC, CENTER, 20.0, "lobulated", seed=5).mask
    again = tumor_mask(ANISOTROPIC, CENTER, 20.0, "lobulated", seed=5).mask
    other_seed = tumor_mask(ANISOTROPIC, CENTER, 20.0, "lobulated", seed=6).mask
    assert first.dtype == np.uint8 and set(np.unique(first)) == {0, 1}
    assert np.array_equal(first, again)
    masks = [first, other_seed] + [tumor_mask(ANISOTROPIC, CENTER, 20.0, k, seed=5).mask for k in ("ellipsoid", "spiculated")]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            dice = 2 * (masks[i] & masks[j]).sum() / (masks[i].sum() + masks[j].sum())
            assert dice < 0.97, (i, j, dice)


def test_tumor_is_centred_and_kinds_differ_in_compactness():
    def compactness(kind):  # volume over the volume of the enclosing sphere of its extent
        mask = tumor_mask(ISOTROPIC, CENTER, 20.0, kind, seed=1).mask
        return volume_mm3(mask, ISOTROPIC) / (4 / 3 * np.pi * tumor_extent_mm(20.0, kind, 1) ** 3)

    mask = tumor_mask(ISOTROPIC, CENTER, 20.0, "ellipsoid", seed=1).mask
    centroid_xyz = ISOTROPIC.index_to_physical(np.array(ndimage.center_of_mass(mask))[::-1])
    assert np.linalg.norm(centroid_xyz - CENTER) < 2.0
    assert compactness("ellipsoid") > compactness("lobulated") > compactness("spiculated")


def test_necrotic_core_is_inside_and_about_a_third_to_half_the_radius():
    shape = tumor_mask(ISOTROPIC, CENTER, 30.0, "lobulated", seed=2, necrotic=True)
    assert shape.core.dtype == bool and shape.core.any()
    assert not (shape.core & (shape.mask == 0)).any()
    radius_ratio = (shape.core.sum() / shape.mask.sum()) ** (1 / 3)
    assert 0.25 <= radius_ratio <= 0.55
    assert tumor_mask(ISOTROPIC, CENTER, 30.0, "lobulated", seed=2).core is None


def test_bad_requests_are_refused():
    with pytest.raises(SynBTError, match="outside 5-80 mm"):
        tumor_mask(ISOTROPIC, CENTER, 120.0)
    with pytest.raises(SynBTError, match="unknown tumor kind"):
        tumor_mask(ISOTROPIC, CENTER, 20.0, kind="round")
    with pytest.raises(SynBTError, match="outside the image"):
        tumor_mask(ISOTROPIC, (500.0, 0.0, 0.0), 20.0)


def test_tumor_at_the_image_edge_is_cut_not_refused():
    corner = ISOTROPIC.index_to_physical(np.zeros(3))
    mask = tumor_mask(ISOTROPIC, corner, 20.0, "ellipsoid", seed=0).mask
    assert 0 < volume_mm3(mask, ISOTROPIC) < np.pi / 6 * 20.0**3 / 4


def test_placed_tumors_lie_inside_the_allowed_region_with_margin():
    allowed = ellipsoid_region(ANISOTROPIC, CENTER, (20.0, 22.0, 24.0))
    distance = ndimage.distance_transform_edt(np.pad(allowed, 1), sampling=ANISOTROPIC.spacing[::-1])[1:-1, 1:-1, 1:-1]
    centers = set()
    for seed in range(4):
        placement = place_tumor(allowed, ANISOTROPIC, 10.0, seed=seed, kind="spiculated", margin_mm=2.0)
        inside = placement.mask.astype(bool)
        assert inside.any() and allowed[inside].all()
        assert distance[inside].min() >= 2.0
        centers.add(placement.center_mm)
    assert len(centers) > 1
    again = place_tumor(allowed, ANISOTROPIC, 10.0, seed=0, kind="spiculated", margin_mm=2.0)
    assert again.center_mm == place_tumor(allowed, ANISOTROPIC, 10.0, seed=0, kind="spiculated", margin_mm=2.0).center_mm


def test_a_size_that_cannot_fit_is_refused_with_the_largest_that_fits():
    allowed = ellipsoid_region(ISOTROPIC, CENTER, (14.0, 14.0, 14.0))
    with pytest.raises(SynBTError, match=r"fits nowhere.*largest that fits is about ([\d.]+) mm") as info:
        place_tumor(allowed, ISOTROPIC, 40.0, seed=0, kind="ellipsoid", margin_mm=3.0)
    largest = float(info.value.args[0].rsplit("about ", 1)[1].split(" mm")[0])
    assert 5.0 <= largest < 40.0
    placement = place_tumor(allowed, ISOTROPIC, largest, seed=0, kind="ellipsoid", margin_mm=3.0)
    assert allowed[placement.mask.astype(bool)].all()


def test_a_user_centre_is_honoured_or_refused_saying_by_how_much():
    allowed = ellipsoid_region(OBLIQUE, CENTER, (20.0, 20.0, 20.0))
    placement = place_tumor(allowed, OBLIQUE, 12.0, seed=4, kind="ellipsoid", center_mm=CENTER, margin_mm=2.0)
    assert placement.center_mm == CENTER
    centroid = OBLIQUE.index_to_physical(np.array(ndimage.center_of_mass(placement.mask))[::-1])
    assert np.linalg.norm(centroid - CENTER) < 2.0
    near_edge = (CENTER[0] + 15.0, CENTER[1], CENTER[2])
    with pytest.raises(SynBTError, match=r"leaves the allowed region by [\d.]+ mm"):
        place_tumor(allowed, OBLIQUE, 12.0, seed=4, kind="ellipsoid", center_mm=near_edge, margin_mm=2.0)
