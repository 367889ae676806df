"""Building blocks the phantom modules share (grid axes, noise, materials, the breast frame and shell), so
that phantom.py and phantom_anatomy / _acquisition / _kinetics import them without importing each other."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import labels as L
from .case import Geometry


FOV_MM = (340.0, 340.0, 150.0)  # (x, y, z)


SIGNAL_SCALE = 12000.0  # SPGR signal (units of M0) -> stored intensity


@dataclass(frozen=True)
class _Axes:
    """1-D physical coordinates (mm) of the grid axes, broadcastable as (Z, Y, X)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @classmethod
    def of(cls, geometry: Geometry) -> "_Axes":
        nx, ny, nz = geometry.size
        sx, sy, sz = geometry.spacing
        ox, oy, oz = geometry.origin
        return cls(
            x=(ox + sx * np.arange(nx, dtype=np.float32))[None, None, :],
            y=(oy + sy * np.arange(ny, dtype=np.float32))[None, :, None],
            z=(oz + sz * np.arange(nz, dtype=np.float32))[:, None, None],
        )


class _NoiseLattice:
    """Seeded smooth Gaussian noise on a fixed millimetre lattice over the field of view (for slow fields)."""

    def __init__(self, rng: np.random.Generator, step_mm: float, sigma_mm: float, extent_mm=FOV_MM):
        self.step = float(step_mm)
        self.origin = -np.asarray(extent_mm, dtype=np.float64)[::-1] / 2.0 - 2 * step_mm  # (z, y, x)
        shape = tuple(int(np.ceil(e / step_mm)) + 4 for e in np.asarray(extent_mm)[::-1])
        values = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_mm / step_mm, mode="wrap")
        self.values = (values / max(float(values.std()), 1e-12)).astype(np.float32)

    def on_grid(self, axes: _Axes) -> np.ndarray:
        """Values on the whole (Z, Y, X) grid (axis-aligned, so an affine resampling)."""
        starts = np.array([axes.z.flat[0], axes.y.flat[0], axes.x.flat[0]], dtype=np.float64)
        steps = np.array([_step(axes.z), _step(axes.y), _step(axes.x)])
        shape = (axes.z.size, axes.y.size, axes.x.size)
        return ndimage.affine_transform(
            self.values, steps / self.step, offset=(starts - self.origin) / self.step,
            output_shape=shape, order=1, mode="nearest",
        )


class _WaveNoise:
    """Band-limited noise as a sum of random plane waves: exact at any point, costs only the points asked for."""

    def __init__(self, rng: np.random.Generator, wavelengths_mm: tuple[float, float], waves: int = 48):
        directions = rng.standard_normal((waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        frequencies = rng.uniform(1.0 / wavelengths_mm[1], 1.0 / wavelengths_mm[0], size=(waves, 1))
        self.k = (2 * np.pi * directions * frequencies).astype(np.float32)  # (W, 3), rad/mm on (z, y, x)
        self.phase = rng.uniform(0, 2 * np.pi, size=waves).astype(np.float32)
        self.gain = np.float32(np.sqrt(2.0 / waves))

    def at_points(self, zyx_mm: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        """Values (unit variance) at physical points (N, 3) given as (z, y, x) mm."""
        points = np.asarray(zyx_mm, dtype=np.float32)
        out = np.empty(len(points), np.float32)
        for start in range(0, len(points), chunk):
            angles = points[start : start + chunk] @ self.k.T + self.phase
            out[start : start + chunk] = np.cos(angles).sum(axis=1) * self.gain
        return out


def _step(axis: np.ndarray) -> float:
    return float(axis.flat[1] - axis.flat[0]) if axis.size > 1 else 1.0


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# Materials carry the signal; several may share a label (e.g. ribs and intercostal muscle).
AIR, SKIN, FAT, FGT, MUSCLE, BONE, MARROW, LUNG, BLOOD, MYOCARDIUM, SOFT, NECROSIS = range(12)
_MATERIAL_NAMES = (
    "air", "skin", "fat", "fibroglandular", "muscle", "bone", "marrow", "lung", "blood", "myocardium", "soft_tissue", "necrosis",
)


@dataclass(frozen=True)
class _BreastFrame:
    """One breast: a superellipsoid hanging anteriorly from its base on the chest (mm)."""

    cx: float
    cz: float
    base_y: float
    rx: float
    ry: float
    rz: float
    power: float

    @classmethod
    def of(cls, p: dict, side: int) -> "_BreastFrame":
        a, b = p["torso_half_width"], p["torso_half_depth"]
        scale = 1.0 + side * p["breast_asymmetry"]
        cx = side * p["breast_x"]
        base_y = p["chest_front_y"] + b - b * np.sqrt(max(1.0 - (cx / a) ** 2, 0.05)) + 15.0
        return cls(cx=cx, cz=p["breast_z"], base_y=base_y, rx=p["breast_radius_x"] * scale,
                   ry=p["breast_depth"] * scale + 15.0, rz=p["breast_radius_z"] * scale, power=p["breast_pointiness"])

    @property
    def nipple(self) -> np.ndarray:
        return np.array([self.cz, self.base_y - self.ry, self.cx])  # (z, y, x)

    def level(self, axes: _Axes):
        """Implicit level F (inside where < 1) and the norm of its gradient (per mm)."""
        u = (axes.x - self.cx) / self.rx
        w = (axes.z - self.cz) / self.rz
        v = np.maximum(self.base_y - axes.y, 0.0) / self.ry  # behind the base (inside the chest): a short cylinder
        vp = v**self.power
        level = u * u + w * w + vp
        grad = np.sqrt((2 * u / self.rx) ** 2 + (2 * w / self.rz) ** 2 + (self.power * vp / np.maximum(v, 1e-6) / self.ry) ** 2)
        return np.where(axes.y > self.base_y + 10.0, np.inf, level), grad


@dataclass
class _BreastShell:
    """Both breasts carved as fat into the maps (views `mat`, `lab` on `box`), before any FGT."""

    box: tuple
    sub: _Axes
    breast: np.ndarray  # bool on box
    breast_depth: np.ndarray  # mm below the breast surface
    to_muscle: np.ndarray  # mm to the pectoralis / chest wall
    skin_zone: np.ndarray
    frames: list
    nipples: list
    mat: np.ndarray
    lab: np.ndarray


def _breast_shell(axes: _Axes, p: dict, material, labels, depth2d, fat_end) -> _BreastShell:
    frames = [_BreastFrame.of(p, side) for side in (-1, 1)]
    nipples = [f.nipple for f in frames]
    # the breasts lie in front of the muscle: restrict all work to that slab of rows
    y_limit = max(f.base_y for f in frames) + 10.0
    rows = np.nonzero(axes.y[0, :, 0] < y_limit)[0]
    box = (slice(None), slice(0, int(rows.max()) + 1 if rows.size else 0), slice(None))
    sub = _Axes(x=axes.x, y=axes.y[:, box[1]], z=axes.z)
    torso_depth = depth2d[None, box[1], :]

    best_level = np.full((axes.z.size, sub.y.size, axes.x.size), np.inf, np.float32)
    breast_depth = np.full_like(best_level, -np.inf)
    for frame in frames:
        level, grad = frame.level(sub)
        depth = (1.0 - level) / np.maximum(grad, 1e-6)  # first-order distance to the surface
        best_level = np.minimum(best_level, level)
        breast_depth = np.maximum(breast_depth, depth)
    if p.get("version", 1) >= 2:
        # smooth junction: the short cylinder behind each base only bridges to the torso (a 45-degree
        # chamfer instead of a flat bottom), then a smooth union of breast and torso fills the fold
        bridge = max(f.base_y for f in frames) + 10.0 - sub.y
        breast_depth = np.minimum(breast_depth, bridge)
        k = 12.0
        body_depth = np.maximum(breast_depth, torso_depth) + np.maximum(k - np.abs(breast_depth - torso_depth), 0) ** 2 / (4 * k)
        breast = (body_depth > 0) & (torso_depth < fat_end) & (breast_depth > -k)
        breast_depth = np.where(breast, body_depth, breast_depth)
    else:
        breast = (best_level < 1.0) & (torso_depth < fat_end)
        body_depth = np.maximum(breast_depth, torso_depth)  # depth below the skin of the whole body
    to_muscle = np.broadcast_to(fat_end - torso_depth, breast.shape)  # distance to the pectoralis / chest wall

    mat, lab = material[box], labels[box]
    mat[breast] = FAT
    lab[breast] = L.FAT
    skin_zone = (body_depth > 0) & (body_depth < p["skin"])
    return _BreastShell(box=box, sub=sub, breast=breast, breast_depth=breast_depth, to_muscle=to_muscle,
                        skin_zone=skin_zone, frames=frames, nipples=nipples, mat=mat, lab=lab)


def _fgt_threshold(score: np.ndarray, candidates: np.ndarray, target: float) -> float:
    """The score above which `target` of all breast voxels are fibroglandular, taken among the candidates only.

    The fat envelope (under the skin, on the muscle) is never a candidate: a quantile over all breast
    voxels, with the envelope scored -1, fell below the envelope's score when the envelope exceeded
    1 - target and turned whole breasts into FGT (half the ACR d breasts had no fat). A target the candidates cannot
    hold gives them all (the envelope stays fat).
    """
    if not candidates.any():
        return float("inf")
    share = target * score.size / candidates.sum()
    return float(np.quantile(score[candidates], float(np.clip(1.0 - share, 0.0, 1.0))))


def _points_mm(geometry: Geometry, where, box=None) -> np.ndarray:
    """(z, y, x) mm of voxel indices `where` (a tuple of Z, Y, X index arrays, relative to box)."""
    offsets = [0, 0, 0] if box is None else [s.start or 0 for s in box]
    zyx_index = np.stack([w + o for w, o in zip(where, offsets)], axis=1).astype(np.float64)
    return geometry.index_to_physical(zyx_index[:, ::-1])[:, ::-1]
