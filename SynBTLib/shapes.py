"""Tumor masks in millimetres on any grid, and their placement inside breast tissue.

A shape is an implicit function of physical position around its centre: a canonical
solid of mean radius ~1 (union of deformed lobes, optional tapering spicules) that is
rotated, elastically deformed by a smooth random displacement and scaled so that its
volume equals the sphere of the requested diameter. Because it is defined in physical
space, the same seed gives the same tumor (same mm^3) on an isotropic, anisotropic or
oblique grid; only the voxels within its bounding box are ever evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .case import Geometry
from .errors import SynBTError

KINDS = ("ellipsoid", "lobulated", "spiculated")
MIN_DIAMETER_MM = 5.0
MAX_DIAMETER_MM = 80.0
EXISTING_TUMOR_CLEARANCE_MM = 5.0  # a placed tumor keeps this far from any tumor already in the case
_CANONICAL_SAMPLES = 96  # per axis, for the canonical volume and extent
_SLAB_POINTS = 1 << 20  # voxels evaluated at once (bounds memory for big tumors on fine grids)


@dataclass
class TumorShape:
    """A voxelized tumor: mask uint8 (Z,Y,X) 0/1, and the necrotic core (bool) or None."""

    mask: np.ndarray
    core: np.ndarray | None


@dataclass
class Placement:
    """A placed tumor: its mask, its centre (LPS mm) and its necrotic core (or None)."""

    mask: np.ndarray
    center_mm: tuple[float, float, float]
    core: np.ndarray | None


@dataclass(frozen=True)
class _Solid:
    """Random parameters of one canonical solid (unit scale, before volume matching)."""

    rotation: np.ndarray  # 3x3, canonical -> physical
    lobe_centers: np.ndarray  # (L, 3)
    lobe_inverse_axes: np.ndarray  # (L, 3, 3): |A (q - c)| <= 1 inside lobe
    spicule_dirs: np.ndarray  # (S, 3) unit vectors
    spicule_starts: np.ndarray  # (S,)
    spicule_lengths: np.ndarray  # (S,)
    spicule_radii: np.ndarray  # (S,) base radius, tapering to 0
    warp_amplitudes: np.ndarray  # (W, 3)
    warp_frequencies: np.ndarray  # (W, 3)
    warp_phases: np.ndarray  # (W,)
    core_radius: float  # necrotic core, fraction of the mean radius

    def warp(self, q: np.ndarray) -> np.ndarray:
        """Smooth random displacement (elastic deformation), analytic so it is grid-independent."""
        angles = q @ self.warp_frequencies.T + self.warp_phases  # (N, W)
        return q + np.sin(angles) @ self.warp_amplitudes

    def level(self, q: np.ndarray) -> np.ndarray:
        """Implicit function of canonical points (N, 3): inside where <= 1."""
        w = self.warp(q)
        level = np.full(len(q), np.inf)
        for center, inverse_axes in zip(self.lobe_centers, self.lobe_inverse_axes):
            level = np.minimum(level, np.linalg.norm((w - center) @ inverse_axes.T, axis=1))
        for direction, start, length, radius in zip(
            self.spicule_dirs, self.spicule_starts, self.spicule_lengths, self.spicule_radii
        ):
            base = start * direction
            along = np.clip((w - base) @ direction / length, 0.0, 1.0)
            distance = np.linalg.norm(w - base - along[:, None] * length * direction, axis=1)
            level = np.minimum(level, distance / np.maximum(radius * (1.0 - along), 1e-9))
        return level

    def core_level(self, q: np.ndarray, equivalent_radius: float) -> np.ndarray:
        """Necrotic core: a deformed sphere of core_radius times the volume-equivalent radius."""
        return np.linalg.norm(self.warp(q), axis=1) / (self.core_radius * equivalent_radius)

    def reach(self) -> float:
        """A radius that surely contains the canonical solid (for the sampling box)."""
        lobes = max(
            np.linalg.norm(c) + 1.0 / np.linalg.svd(a, compute_uv=False).min()
            for c, a in zip(self.lobe_centers, self.lobe_inverse_axes)
        )
        spicules = float(np.max(self.spicule_starts + self.spicule_lengths, initial=0.0))
        return max(lobes, spicules) + float(np.abs(self.warp_amplitudes).sum(axis=0).max())


def _random_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _ellipsoid_inverse_axes(rng: np.random.Generator, radii: np.ndarray) -> np.ndarray:
    rotation = Rotation.random(random_state=rng).as_matrix()
    return np.diag(1.0 / radii) @ rotation.T


def _make_solid(kind: str, seed: int) -> _Solid:
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    rotation = Rotation.random(random_state=rng).as_matrix()
    centers = [np.zeros(3)]
    inverse_axes = [np.diag(1.0 / np.array([1.0, rng.uniform(0.7, 0.95), rng.uniform(0.6, 0.9)]))]
    if kind in ("lobulated", "spiculated"):
        inverse_axes[0] = inverse_axes[0] / 0.8
        n_lobes = int(rng.integers(3, 7))
        for direction in _random_directions(rng, n_lobes):
            centers.append(direction * rng.uniform(0.45, 0.7))
            inverse_axes.append(_ellipsoid_inverse_axes(rng, rng.uniform(0.35, 0.6, size=3)))
    n_spicules = int(rng.integers(8, 15)) if kind == "spiculated" else 0
    warp_count = 4
    return _Solid(
        rotation=rotation,
        lobe_centers=np.array(centers),
        lobe_inverse_axes=np.array(inverse_axes),
        spicule_dirs=_random_directions(rng, n_spicules),
        spicule_starts=rng.uniform(0.5, 0.7, size=n_spicules),
        spicule_lengths=rng.uniform(0.6, 1.3, size=n_spicules),
        spicule_radii=rng.uniform(0.1, 0.16, size=n_spicules),
        warp_amplitudes=rng.normal(scale=0.05, size=(warp_count, 3)),
        warp_frequencies=_random_directions(rng, warp_count) * rng.uniform(1.5, 3.0, size=(warp_count, 1)),
        warp_phases=rng.uniform(0, 2 * np.pi, size=warp_count),
        core_radius=float(rng.uniform(0.3, 0.5)),
    )


@lru_cache(maxsize=64)
def _solid_and_measures(kind: str, seed: int) -> tuple[_Solid, float, float]:
    """The solid of (kind, seed), its canonical volume and the radius of its farthest point."""
    solid = _make_solid(kind, seed)
    reach = solid.reach()
    axis = (np.arange(_CANONICAL_SAMPLES) + 0.5) / _CANONICAL_SAMPLES * 2 * reach - reach
    step = axis[1] - axis[0]
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = solid.level(points) <= 1.0
    volume = inside.sum() * step**3
    extent = np.linalg.norm(points[inside], axis=1).max() + step * np.sqrt(3) / 2
    return solid, float(volume), float(extent)


def _check_request(diameter_mm: float, kind: str) -> None:
    if kind not in KINDS:
        raise SynBTError(f"unknown tumor kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not MIN_DIAMETER_MM <= float(diameter_mm) <= MAX_DIAMETER_MM:
        raise SynBTError(
            f"tumor diameter {diameter_mm:g} mm is outside {MIN_DIAMETER_MM:g}-{MAX_DIAMETER_MM:g} mm"
        )


def _scale_and_extent(diameter_mm: float, kind: str, seed: int) -> tuple[_Solid, float, float]:
    """Solid, mm per canonical unit (volume-matched to the sphere of diameter_mm), extent in mm."""
    _check_request(diameter_mm, kind)
    solid, volume, extent = _solid_and_measures(kind, int(seed))
    target = np.pi / 6.0 * float(diameter_mm) ** 3
    scale = (target / volume) ** (1.0 / 3.0)
    return solid, scale, extent * scale


def tumor_extent_mm(diameter_mm: float, kind: str = "lobulated", seed: int = 0) -> float:
    """Distance (mm) from the centre to the farthest point of the tumor of this kind and seed."""
    return _scale_and_extent(diameter_mm, kind, seed)[2]


def tumor_mask(
    geometry: Geometry,
    center_mm,
    diameter_mm: float,
    kind: str = "lobulated",
    seed: int = 0,
    necrotic: bool = False,
) -> TumorShape:
    """Voxelize a tumor of volume-equivalent diameter `diameter_mm` centred at `center_mm` (LPS).

    kind: "ellipsoid" (deformed ellipsoid), "lobulated" (union of deformed lobes) or
    "spiculated" (lobulated core with thin tapering spicules). necrotic=True adds an inner
    core of 30-50% of the radius. Parts beyond the grid are cut off; a tumor wholly outside
    the grid is refused.
    """
    solid, scale, extent = _scale_and_extent(diameter_mm, kind, seed)
    center = np.asarray(center_mm, dtype=np.float64).reshape(3)
    corners = center + extent * np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij")).reshape(3, -1).T
    corner_ijk = geometry.physical_to_index(corners)
    low = np.maximum(np.floor(corner_ijk.min(axis=0)).astype(int), 0)
    high = np.minimum(np.ceil(corner_ijk.max(axis=0)).astype(int) + 1, geometry.size)
    mask = np.zeros(geometry.shape, dtype=np.uint8)
    core = np.zeros(geometry.shape, dtype=bool) if necrotic else None
    if np.any(high <= low):
        raise SynBTError(f"tumor centre {tuple(round(v, 1) for v in center)} mm lies outside the image {geometry.describe()}")
    box = tuple(slice(lo, hi) for lo, hi in zip(low[::-1], high[::-1]))
    inside, core_box, nearest = _evaluate_box(geometry, low, high, center, solid, scale, float(diameter_mm), necrotic)
    if not inside.any():
        raise SynBTError(f"tumor at {tuple(round(v, 1) for v in center)} mm has no voxel inside the image")
    mask[box] = inside
    if necrotic:
        core_box &= inside
        if not core_box.any():  # tiny tumor on a coarse grid: keep at least its central voxel
            core_box[nearest] = inside[nearest]
        core[box] = core_box
    return TumorShape(mask=mask, core=core)


def _evaluate_box(geometry, low, high, center, solid: _Solid, scale: float, diameter_mm: float, necrotic: bool):
    """Inside/core flags (Z,Y,X) for the index box [low, high) (x, y, z), in slabs of bounded memory.

    Also returns the (Z,Y,X) box index of the voxel nearest the centre.
    """
    nx, ny, nz = (int(v) for v in high - low)
    inside = np.zeros((nz, ny, nx), dtype=bool)
    core = np.zeros((nz, ny, nx), dtype=bool) if necrotic else None
    jj, ii = np.meshgrid(np.arange(low[1], high[1]), np.arange(low[0], high[0]), indexing="ij")  # (Y, X)
    slab = max(1, _SLAB_POINTS // (nx * ny))
    core_unit = diameter_mm / 2.0 / scale  # the volume-equivalent radius in canonical units
    best = (np.inf, (0, 0, 0))
    for z0 in range(0, nz, slab):
        kk = np.arange(low[2] + z0, low[2] + min(z0 + slab, nz))
        ijk = np.stack(np.broadcast_arrays(ii[None], jj[None], kk[:, None, None]), axis=-1).reshape(-1, 3)
        canonical = (geometry.index_to_physical(ijk) - center) @ solid.rotation / scale
        shape = (len(kk), ny, nx)
        inside[z0 : z0 + len(kk)] = (solid.level(canonical) <= 1.0).reshape(shape)
        if necrotic:
            core[z0 : z0 + len(kk)] = (solid.core_level(canonical, core_unit) <= 1.0).reshape(shape)
        radius = np.linalg.norm(canonical, axis=1)
        if radius.min() < best[0]:
            z, y, x = np.unravel_index(int(radius.argmin()), shape)
            best = (radius.min(), (z + z0, y, x))
    return inside, core, best[1]


def _distance_inside_mm(allowed: np.ndarray, spacing_zyx) -> np.ndarray:
    """Distance (mm) from each allowed voxel to the nearest voxel that is not allowed or off-grid."""
    padded = np.pad(allowed, 1, constant_values=False)
    return ndimage.distance_transform_edt(padded, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]


def _protrusion_mm(mask: np.ndarray, allowed: np.ndarray, distance_in: np.ndarray, margin_mm: float, spacing_zyx) -> float:
    """How far (mm) the mask, grown by margin_mm, reaches beyond the allowed region (<= 0: fits)."""
    voxels = mask.astype(bool)
    worst = float(np.max(margin_mm - distance_in[voxels & allowed], initial=-np.inf))
    outside = voxels & ~allowed
    if outside.any():
        distance_out = ndimage.distance_transform_edt(~allowed, sampling=spacing_zyx)
        worst = max(worst, float(distance_out[outside].max()) + margin_mm)
    return worst


def near(mask: np.ndarray, spacing_zyx, distance_mm: float) -> np.ndarray:
    """Voxels within distance_mm of the mask (the mask included)."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    return ndimage.distance_transform_edt(mask == 0, sampling=spacing_zyx) <= distance_mm


def away_from_tumors(allowed: np.ndarray, tumors: np.ndarray | None, spacing_zyx,
                     clearance_mm: float = EXISTING_TUMOR_CLEARANCE_MM) -> np.ndarray:
    """The allowed region less everything within clearance_mm of the tumors already in the case."""
    allowed = np.asarray(allowed, dtype=bool)
    if tumors is None:
        return allowed
    return allowed & ~near(np.asarray(tumors) > 0, spacing_zyx, clearance_mm)


def _touches_border(mask: np.ndarray) -> bool:
    return any(np.take(mask, index, axis=axis).any() for axis in range(3) for index in (0, -1))


def place_tumor(
    allowed: np.ndarray,
    geometry: Geometry,
    diameter_mm: float,
    seed: int = 0,
    kind: str = "lobulated",
    center_mm=None,
    margin_mm: float = 3.0,
    necrotic: bool = False,
) -> Placement:
    """Place a tumor so that the whole mask, grown by margin_mm, lies inside `allowed`.

    Without center_mm, a centre is drawn (deterministically per seed) among the voxels whose
    distance to the outside of `allowed` is at least the tumor's extent plus the margin; if
    there is none, the error names the largest diameter that would fit. With center_mm, that
    centre is used as is, or refused saying by how many millimetres the tumor leaves `allowed`.
    """
    allowed = np.asarray(allowed).astype(bool)
    if allowed.shape != geometry.shape:
        raise SynBTError(f"allowed region of shape {allowed.shape} does not match the grid {geometry.describe()}")
    if not allowed.any():
        raise SynBTError("the allowed region for the tumor is empty")
    _, _, extent = _scale_and_extent(diameter_mm, kind, seed)
    spacing_zyx = geometry.spacing[::-1]
    distance_in = _distance_inside_mm(allowed, spacing_zyx)

    if center_mm is not None:
        center = tuple(float(v) for v in np.asarray(center_mm, dtype=np.float64).reshape(3))
        ijk = geometry.physical_to_index(np.asarray(center))
        if np.any(ijk < -0.5) or np.any(ijk > np.asarray(geometry.size) - 0.5):
            raise SynBTError(f"tumor centre {tuple(round(v, 1) for v in center)} mm lies outside the image")
        shape = tumor_mask(geometry, center, diameter_mm, kind, seed, necrotic)
        if _touches_border(shape.mask):
            raise SynBTError(f"a {diameter_mm:g} mm tumor at {tuple(round(v, 1) for v in center)} mm is cut by the image border")
        protrusion = _protrusion_mm(shape.mask, allowed, distance_in, margin_mm, spacing_zyx)
        if protrusion > 0:
            raise SynBTError(
                f"a {diameter_mm:g} mm tumor at {tuple(round(v, 1) for v in center)} mm leaves the allowed region "
                f"by {protrusion:.1f} mm (margin {margin_mm:g} mm included)"
            )
        return Placement(mask=shape.mask, center_mm=center, core=shape.core)

    needed = extent + margin_mm
    deepest = float(distance_in.max())
    candidates = np.argwhere(distance_in >= needed)
    if len(candidates) == 0:
        largest = diameter_mm * (deepest - margin_mm) / extent
        hint = (
            f"the largest that fits is about {np.floor(largest * 10) / 10:g} mm"
            if largest >= MIN_DIAMETER_MM
            else f"not even a {MIN_DIAMETER_MM:g} mm tumor fits"
        )
        raise SynBTError(
            f"a {diameter_mm:g} mm {kind} tumor (margin {margin_mm:g} mm) fits nowhere in the allowed region; {hint}"
        )
    rng = np.random.default_rng(seed)
    for pick in rng.choice(len(candidates), size=min(20, len(candidates)), replace=False):
        zyx = candidates[pick]
        center = tuple(float(v) for v in geometry.index_to_physical(zyx[::-1].astype(np.float64)))
        shape = tumor_mask(geometry, center, diameter_mm, kind, seed, necrotic)
        if _protrusion_mm(shape.mask, allowed, distance_in, margin_mm, spacing_zyx) <= 0:
            return Placement(mask=shape.mask, center_mm=center, core=shape.core)
    raise SynBTError(f"could not place a {diameter_mm:g} mm {kind} tumor inside the allowed region in 20 tries")


# ------------------------------------------------------------------ placement on a coarse grid

COARSE_PLACEMENT_MM = 2.0  # voxel size the breast is found and the centre drawn at (--auto)


def coarse_factors(spacing_zyx, target_mm: float = COARSE_PLACEMENT_MM) -> tuple[int, int, int]:
    """Whole voxels per coarse voxel along (z, y, x): as many as fit in target_mm (at least 1)."""
    return tuple(max(1, int(target_mm // float(s))) for s in spacing_zyx)


def coarse_geometry(geometry: Geometry, factors_zyx) -> Geometry:
    """The grid of factors-sized blocks of `geometry` (the incomplete blocks at the far edges dropped):
    each coarse voxel's centre is its block's centre."""
    f_xyz = np.asarray(factors_zyx[::-1])
    size = tuple(int(n // f) for n, f in zip(geometry.size, f_xyz))
    if min(size) < 1:
        raise SynBTError(f"the grid {geometry.describe()} is smaller than one {tuple(f_xyz)} block")
    origin = geometry.index_to_physical((f_xyz - 1) / 2.0)
    return Geometry(size=size, spacing=tuple(float(s * f) for s, f in zip(geometry.spacing, f_xyz)),
                    origin=tuple(float(v) for v in origin), direction=tuple(geometry.direction))


def block_mean(volume: np.ndarray, factors_zyx) -> np.ndarray:
    """Mean of each factors-sized block of a (Z, Y, X) array (float32; incomplete edge blocks dropped).

    Sums strided views into the small coarse array, so no full-size copy is made."""
    shape = tuple(n // f for n, f in zip(volume.shape, factors_zyx))
    total = np.zeros(shape, dtype=np.float64)
    fz, fy, fx = factors_zyx
    for dz in range(fz):
        for dy in range(fy):
            for dx in range(fx):
                total += volume[dz::fz, dy::fy, dx::fx][: shape[0], : shape[1], : shape[2]]
    return (total / (fz * fy * fx)).astype(np.float32)


def block_any(mask: np.ndarray, factors_zyx, shape) -> np.ndarray:
    """Coarse voxels (of `shape`) whose block holds a voxel of `mask`; voxels of the dropped edge
    blocks count for their nearest coarse voxel."""
    coarse = np.zeros(shape, dtype=bool)
    index = np.nonzero(mask)
    if len(index[0]):
        coarse[tuple(np.minimum(i // f, n - 1) for i, f, n in zip(index, factors_zyx, shape))] = True
    return coarse


def place_in_breast(case, diameter_mm: float, seed: int = 0, center_mm=None, existing: np.ndarray | None = None,
                    kind: str = "lobulated", margin_mm: float = 3.0,
                    coarse_mm: float = COARSE_PLACEMENT_MM) -> Placement:
    """A tumor placed inside the case's breast tissue (preprocess.breast_tissue_mask), at least
    EXISTING_TUMOR_CLEARANCE_MM from `existing` tumors, deterministic per seed.

    The breast is found and the centre drawn on a grid of about coarse_mm voxels (block means of
    the phases): memory and time grow with the coarse grid, not the case's. The margin there is
    widened by half a coarse voxel's diagonal, so the tumor voxelized on the case grid, grown by
    margin_mm, lies inside the breast region mapped back to the case grid (checked).
    """
    from .case import Case
    from .preprocess import breast_tissue_mask

    geometry = case.geometry
    factors = coarse_factors(geometry.spacing[::-1], coarse_mm)
    if factors == (1, 1, 1):
        allowed = away_from_tumors(breast_tissue_mask(case).breast, existing, geometry.spacing[::-1])
        return place_tumor(allowed, geometry, diameter_mm, seed=seed, kind=kind, center_mm=center_mm, margin_mm=margin_mm)
    coarse = coarse_geometry(geometry, factors)
    phases = np.stack([block_mean(phase, factors) for phase in case.phases])
    allowed = breast_tissue_mask(Case(phases, coarse, list(case.phase_names))).breast
    if existing is not None:
        allowed = away_from_tumors(allowed, block_any(np.asarray(existing) > 0, factors, coarse.shape), coarse.spacing[::-1])
    widened = margin_mm + 0.5 * float(np.linalg.norm(coarse.spacing))
    placed = place_tumor(allowed, coarse, diameter_mm, seed=seed, kind=kind, center_mm=center_mm, margin_mm=widened)
    shape = tumor_mask(geometry, placed.center_mm, diameter_mm, kind, seed)
    if _touches_border(shape.mask):
        raise SynBTError(f"a {diameter_mm:g} mm tumor at {tuple(round(v, 1) for v in placed.center_mm)} mm is cut by the image border")
    voxels = np.nonzero(shape.mask)
    blocks = tuple(i // f for i, f in zip(voxels, factors))
    inside = np.all([b < n for b, n in zip(blocks, coarse.shape)], axis=0)
    if not inside.all() or not allowed[tuple(b[inside] for b in blocks)].all():
        raise SynBTError(f"could not place a {diameter_mm:g} mm {kind} tumor inside the breast tissue")
    return Placement(mask=shape.mask, center_mm=placed.center_mm, core=None)
