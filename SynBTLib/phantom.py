"""Procedural breast DCE-MRI phantom with ground-truth tissue and tumor labels.

The anatomy is defined in millimetres (LPS, centred on the field of view), so any grid samples
the same body: array axes (Z, Y, X) run inferior->superior, anterior->posterior and
right->left; the breasts hang anteriorly (low Y) in front of the pectoralis, the ribs and the
thorax (lungs, heart, aorta, internal mammary vessels). Fibroglandular tissue is thresholded
band-passed noise plus ducts radiating from the nipple, at a per-case ACR density. Each tissue
(and each tumor, voxel by voxel) gets extended-Tofts contrast kinetics with the Parker AIF,
turned into spoiled gradient echo signal, then a smooth bias field, the scanner's point-spread
function (k-space sampled over a fraction of the grid's band, as when a 358-line acquisition is
zero-filled to 512) and Rician noise.
Textures are sums of random plane waves (exact at any point, evaluated only where needed);
the slow bias field lives on a fixed millimetre lattice and is interpolated onto the grid.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, special

from . import kinetics as kin
from . import labels as L
from .case import Case, Geometry
from .errors import SynBTError
from .phantom_base import (  # noqa: F401  (the building blocks phantom_* modules share)
    FOV_MM, SIGNAL_SCALE, AIR, SKIN, FAT, FGT, MUSCLE, BONE, MARROW, LUNG, BLOOD, MYOCARDIUM, SOFT, NECROSIS, _MATERIAL_NAMES, _Axes, _NoiseLattice, _WaveNoise, _step, _smoothstep, _BreastFrame, _BreastShell, _breast_shell, _fgt_threshold, _points_mm,
)

DEFAULT_SHAPE = (128, 128, 48)  # (x, y, z)
DENSITY_FRACTIONS = {"a": (0.06, 0.15), "b": (0.2, 0.32), "c": (0.4, 0.52), "d": (0.6, 0.72)}
BPE_KTRANS = {"minimal": (0.004, 0.008), "mild": (0.008, 0.015), "moderate": (0.015, 0.025), "marked": (0.025, 0.04)}
TUMOR_KINDS = ("ellipsoid", "lobulated", "spiculated")
_PARAM_KEYS = {
    "density", "bpe", "tumor_kinetics", "tumor_diameters_mm", "tumor_kinds", "necrotic",
    "phase_interval_s", "fat_suppressed", "noise", "bias", "resolution",
}
RESOLUTION_RANGE = (0.7, 0.9)  # acquired fraction of the reconstructed k-space band, per axis


@dataclass
class Phantom:
    """A synthetic case with its ground truth: tissue labels (labels.py values) and a 0/1 tumor label."""

    case: Case
    tissue_labels: np.ndarray
    tumor_labels: np.ndarray
    meta: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ grid




def phantom_geometry(shape=DEFAULT_SHAPE, spacing=None) -> Geometry:
    """The axial grid (identity direction) of shape (x, y, z) centred on the body; spacing defaults to FOV/shape."""
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise SynBTError(f"phantom shape must be three sizes (x y z) of at least 8 voxels, got {shape}")
    if max(shape) > 1024:
        raise SynBTError(f"phantom shape {shape} is too large (at most 1024 voxels per axis)")
    if spacing is None:
        spacing = tuple(f / n for f, n in zip(FOV_MM, shape))
    spacing = tuple(float(v) for v in spacing)
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(shape, spacing))
    return Geometry(size=shape, spacing=spacing, origin=origin)










# ------------------------------------------------------------------------------- parameters


def _choose(rng, value, options, what):
    if value is None:
        return options[int(rng.integers(len(options)))]
    if value not in options:
        raise SynBTError(f"unknown {what} {value!r}; choose one of {', '.join(options)}")
    return value


def _per_tumor(value, count, what):
    """A per-tumor list from None, one value or a list of `count` values."""
    if value is None:
        return [None] * count
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise SynBTError(f"{what} has {len(value)} values for {count} tumors")
        return list(value)
    return [value] * count


def _resolution(value) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SynBTError(f"resolution must be a number in [0.1, 1] (fraction of k-space sampled), got {value!r}") from None
    if not 0.1 <= value <= 1.0:
        raise SynBTError(f"resolution must be in [0.1, 1] (fraction of k-space sampled), got {value:g}")
    return value


def _draw_body(rng: np.random.Generator) -> dict:
    """Body and breast shape (mm)."""
    return {
        "torso_half_width": float(rng.uniform(135, 160)),
        "torso_half_depth": float(rng.uniform(85, 100)),
        "chest_front_y": float(rng.uniform(-60, -48)),
        "subcutaneous_fat": float(rng.uniform(6, 14)),
        "skin": float(rng.uniform(1.6, 2.4)),
        "pectoralis": float(rng.uniform(9, 16)),
        "chest_wall": float(rng.uniform(9, 13)),
        "rib_period": float(rng.uniform(24, 32)),
        "heart_z": float(rng.uniform(-75, -45)),
        # breasts (mm)
        "breast_x": float(rng.uniform(72, 88)),
        "breast_z": float(rng.uniform(-8, 8)),
        "breast_radius_x": float(rng.uniform(55, 72)),
        "breast_radius_z": float(rng.uniform(48, 62)),
        "breast_depth": float(rng.uniform(55, 105)),
        "breast_pointiness": float(rng.uniform(1.3, 1.9)),
        "breast_asymmetry": float(rng.uniform(-0.06, 0.06)),
        "breast_subcutaneous_fat": float(rng.uniform(3, 9)),
        "retromammary_fat": float(rng.uniform(3, 8)),
    }


def _draw_parameters(rng: np.random.Generator, tumors: int, params: dict) -> dict:
    unknown = set(params) - _PARAM_KEYS
    if unknown:
        raise SynBTError(f"unknown phantom parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_PARAM_KEYS))}")
    density = _choose(rng, params.get("density"), tuple(DENSITY_FRACTIONS), "breast density (ACR)")
    bpe = _choose(rng, params.get("bpe"), tuple(BPE_KTRANS), "background enhancement level")
    p = {
        "density": density,
        "fgt_fraction_target": float(rng.uniform(*DENSITY_FRACTIONS[density])),
        "bpe": bpe,
        "fgt_ktrans": float(rng.uniform(*BPE_KTRANS[bpe])),
        "phase_interval_s": float(params.get("phase_interval_s") or 90.0),
        "fat_suppressed": bool(params.get("fat_suppressed", True)),
        "noise": float(params["noise"]) if params.get("noise") is not None else float(rng.uniform(0.02, 0.04)),
        "bias": float(params["bias"]) if params.get("bias") is not None else float(rng.uniform(0.1, 0.25)),
        "resolution": _resolution(params.get("resolution")),  # None: drawn in _acquire
    }
    p.update(_draw_body(rng))
    if p["phase_interval_s"] <= 0:
        raise SynBTError(f"phase_interval_s must be positive, got {p['phase_interval_s']:g}")
    for key in ("noise", "bias"):
        if not 0 <= p[key] < 1:
            raise SynBTError(f"{key} must be in [0, 1), got {p[key]:g}")
    diameters = _per_tumor(params.get("tumor_diameters_mm"), tumors, "tumor_diameters_mm")
    kinds = _per_tumor(params.get("tumor_kinds"), tumors, "tumor_kinds")
    curves = _per_tumor(params.get("tumor_kinetics"), tumors, "tumor_kinetics")
    necrotic = _per_tumor(params.get("necrotic"), tumors, "necrotic")
    p["tumors"] = []
    for k in range(tumors):
        diameter = diameters[k] if diameters[k] is not None else float(np.clip(rng.lognormal(np.log(16), 0.55), 5, 60))
        p["tumors"].append({
            "diameter_mm": float(diameter),
            "kind": _choose(rng, kinds[k], TUMOR_KINDS, "tumor kind"),
            "kinetics": _choose(rng, curves[k], kin.CURVE_TYPES, "tumor kinetics type"),
            "necrotic": bool(necrotic[k]) if necrotic[k] is not None else bool(diameter >= 15 and rng.random() < 0.35),
            "seed": int(rng.integers(2**31)),
        })
    return p


# --------------------------------------------------------------------------------- materials



def _material_kinetics(p: dict) -> list[kin.TissueKinetics]:
    fat_m0 = 0.9 * (0.12 if p["fat_suppressed"] else 1.0)
    tk = kin.TissueKinetics
    return [
        tk(t10_s=1.0, m0=0.0),  # air
        tk(t10_s=0.9, m0=0.7, ktrans=0.04, ve=0.2, vp=0.02),  # skin
        tk(t10_s=0.29, m0=fat_m0, ktrans=0.003, ve=0.1, vp=0.002),  # fat
        tk(t10_s=1.25, m0=0.8, ktrans=p["fgt_ktrans"], ve=0.3, vp=0.003),  # fibroglandular
        tk(t10_s=1.0, m0=0.6, ktrans=0.07, ve=0.12, vp=0.02),  # muscle
        tk(t10_s=1.0, m0=0.05),  # cortical bone
        tk(t10_s=0.35, m0=fat_m0 * 0.8, ktrans=0.02, ve=0.1, vp=0.01),  # marrow
        tk(t10_s=1.2, m0=0.06, ktrans=0.0, ve=0.1, vp=0.1),  # lung
        tk(t10_s=1.45, m0=0.85, ktrans=0.0, ve=0.1, vp=1.0 - kin.HEMATOCRIT),  # blood
        tk(t10_s=1.0, m0=0.75, ktrans=0.45, ve=0.25, vp=0.1),  # myocardium
        tk(t10_s=1.0, m0=0.55, ktrans=0.05, ve=0.2, vp=0.02),  # mediastinal soft tissue
        tk(t10_s=2.0, m0=0.85),  # necrosis: fluid, no enhancement
    ]


# ----------------------------------------------------------------------------------- anatomy


def _torso_depth(axes: _Axes, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """Signed depth (mm) below the torso surface on the (Y, X) cross-section, and the torso mask."""
    a, b = p["torso_half_width"], p["torso_half_depth"]
    yc = p["chest_front_y"] + b
    x, y = axes.x[0], axes.y[0]
    inside = (x / a) ** 2 + ((y - yc) / b) ** 2 <= 1.0
    sampling = (_step(axes.y), _step(axes.x))
    depth = ndimage.distance_transform_edt(inside, sampling=sampling) - ndimage.distance_transform_edt(~inside, sampling=sampling)
    return depth.astype(np.float32), inside




@dataclass
class _Anatomy:
    material: np.ndarray  # uint8 (Z, Y, X)
    labels: np.ndarray  # uint8 (Z, Y, X)
    breast_box: tuple  # slices of the breast region
    fgt_fraction: np.ndarray  # float32 on breast_box: partial volume of FGT (0..1)
    nipples: list


def _build_torso(axes: _Axes, p: dict):
    """Material and label maps of the torso (everything but the breasts)."""
    nz = axes.z.size
    depth2d, inside2d = _torso_depth(axes, p)
    a, b = p["torso_half_width"], p["torso_half_depth"]
    yc = p["chest_front_y"] + b
    x2, y2 = axes.x[0], axes.y[0]
    anterior = _smoothstep((yc - 0.15 * b - y2) / (0.35 * b))
    pect = p["pectoralis"] * anterior * (0.3 + 0.7 * np.exp(-(((np.abs(x2) - p["breast_x"]) / 55.0) ** 2)))
    fat_end = p["subcutaneous_fat"]
    muscle_end = fat_end + pect
    wall_end = muscle_end + p["chest_wall"]

    material2d = np.full(depth2d.shape, AIR, np.uint8)
    labels2d = np.full(depth2d.shape, L.AIR, np.uint8)
    layers = [
        (depth2d > 0, FAT, L.OTHER),
        (depth2d >= fat_end, MUSCLE, L.MUSCLE),
        (depth2d >= muscle_end, MUSCLE, L.CHEST_WALL),
        (depth2d >= wall_end, LUNG, L.THORAX),
    ]
    for where, mat, lab in layers:
        material2d[where] = mat
        labels2d[where] = lab
    # mediastinum, spine and vessels that run along z
    spine_y = yc + b - 38.0
    inner = depth2d >= wall_end
    mediastinum = inner & (((x2 - 10.0) / 34.0) ** 2 + ((y2 - yc - 0.1 * b) / (0.8 * b)) ** 2 <= 1.0)  # mostly fat
    material2d[mediastinum] = FAT
    material2d[mediastinum & (np.abs(x2 - 10.0) < 8.0) & (y2 > spine_y - 45.0)] = SOFT  # oesophagus, airway walls
    spine = (x2**2 + (y2 - spine_y) ** 2) <= 19.0**2
    material2d[spine] = MARROW
    labels2d[spine] = L.CHEST_WALL
    vessels2d = ((x2 - 24.0) ** 2 + (y2 - (spine_y - 26.0)) ** 2) <= 11.0**2  # descending aorta
    for side in (-1, 1):  # internal mammary vessels, just behind the anterior chest wall
        xi = side * 30.0
        pect_at = p["pectoralis"] * (0.3 + 0.7 * np.exp(-(((30.0 - p["breast_x"]) / 55.0) ** 2)))
        yi = yc - b * np.sqrt(1 - (xi / a) ** 2) + fat_end + pect_at + p["chest_wall"] + 4.0
        vessels2d |= ((x2 - xi) ** 2 + (y2 - yi) ** 2) <= 2.6**2
    material2d[vessels2d & inside2d] = BLOOD
    labels2d[vessels2d & inside2d] = L.VESSEL

    material = np.repeat(material2d[None], nz, axis=0)
    labels = np.repeat(labels2d[None], nz, axis=0)

    # ribs: oblique bars through the chest-wall band, descending anteriorly
    band = (depth2d >= muscle_end + 2.0) & (depth2d < wall_end - 2.0)
    rib_phase = (axes.z + 0.22 * (yc - axes.y) + 0.15 * np.abs(axes.x)) / p["rib_period"]
    rib = band[None] & (np.cos(2 * np.pi * rib_phase) > 0.35)
    material[rib] = MARROW
    rib_cortex = band[None] & (np.abs(np.cos(2 * np.pi * rib_phase) - 0.35) < 0.08)
    material[rib_cortex] = BONE

    # heart (blood pool in a myocardial shell), with the ascending aorta above it
    heart_level = ((axes.x - 30.0) / 62.0) ** 2 + ((axes.y - (yc + 0.05 * b)) / 48.0) ** 2 + ((axes.z - p["heart_z"]) / 55.0) ** 2
    heart = (heart_level <= 1.0) & inner[None]
    material[heart] = MYOCARDIUM
    if p.get("version", 1) >= 2:
        from .phantom_anatomy import heart_chambers

        heart_chambers(axes, p, yc + 0.05 * b, material, labels, heart, inner)
        if "lung_vessel_seed" in p:
            from .phantom_anatomy import lung_vessels

            lung_vessels(axes, p, np.random.default_rng(p["lung_vessel_seed"]), material, labels, yc + 0.1 * b)
    else:
        material[heart & (heart_level <= 0.6)] = BLOOD
    labels[heart] = L.HEART
    ascending = (((axes.x - 4.0) ** 2 + (axes.y - (yc + 0.1 * b)) ** 2) <= 14.0**2) & (axes.z > p["heart_z"] + 40.0) & inner[None]
    material[ascending] = BLOOD
    labels[ascending] = L.VESSEL
    return material, labels, depth2d, fat_end






def _build_breasts(axes: _Axes, p: dict, rng: np.random.Generator, material, labels, depth2d, fat_end):
    """Carve both breasts (skin, fat, fibroglandular tissue) into the maps; returns the box and FGT fraction."""
    shell = _breast_shell(axes, p, material, labels, depth2d, fat_end)
    box, sub, breast, breast_depth, to_muscle = shell.box, shell.sub, shell.breast, shell.breast_depth, shell.to_muscle
    skin_zone, nipples, mat, lab = shell.skin_zone, shell.nipples, shell.mat, shell.lab

    # fibroglandular tissue: envelope (no FGT under the skin or on the muscle) x texture
    points = np.argwhere(breast)
    zyx = np.stack([sub.z.ravel()[points[:, 0]], sub.y.ravel()[points[:, 1]], sub.x.ravel()[points[:, 2]]], axis=1)
    envelope = _smoothstep((breast_depth[breast] - p["breast_subcutaneous_fat"]) / 10.0)
    envelope *= _smoothstep((to_muscle[breast] - p["retromammary_fat"]) / 10.0)
    # central (retro-areolar, towards the axis) concentration
    nearest = np.where(zyx[:, 2:3] < 0, nipples[0], nipples[1])
    offset = zyx - nearest
    radial = np.linalg.norm(offset, axis=1) + 1e-3
    lateral = np.linalg.norm(offset[:, [0, 2]], axis=1)
    central = np.exp(-((lateral / (0.9 * p["breast_radius_x"])) ** 2))
    texture = _WaveNoise(rng, (4.0, 16.0)).at_points(zyx)
    lobes = _WaveNoise(rng, (15.0, 45.0), waves=24).at_points(zyx)
    # ducts: noise on directions from the nipple, barely varying along the radius -> radial streaks
    duct_points = nearest + offset / radial[:, None] * (60.0 + 0.25 * radial[:, None])
    ducts = _WaveNoise(rng, (4.0, 10.0)).at_points(duct_points)
    score = envelope * (0.5 + 0.3 * central + 0.35 * lobes + 0.45 * ducts + 0.55 * texture)
    score[envelope <= 0] = -np.inf  # (the noise terms make candidates' scores negative too)
    threshold = _fgt_threshold(score, envelope > 0, p["fgt_fraction_target"])
    softness = 0.04 * float(score[envelope > 0].std()) + 1e-6
    fraction = np.zeros(breast.shape, np.float32)
    fraction[breast] = special.expit((score - threshold) / softness)
    fgt = breast & (fraction >= 0.5)
    mat[fgt] = FGT
    lab[fgt] = L.FIBROGLANDULAR
    mat[skin_zone] = SKIN
    lab[skin_zone] = L.SKIN
    fraction[skin_zone | ~breast] = 0.0
    return box, fraction, nipples




def _build_anatomy(geometry: Geometry, p: dict, rng: np.random.Generator) -> _Anatomy:
    axes = _Axes.of(geometry)
    material, labels, depth2d, fat_end = _build_torso(axes, p)
    box, fraction, nipples = _build_breasts(axes, p, rng, material, labels, depth2d, fat_end)
    return _Anatomy(material=material, labels=labels, breast_box=box, fgt_fraction=fraction, nipples=nipples)


# ------------------------------------------------------------------------------------- tumors


def _crop_geometry(geometry: Geometry, box) -> Geometry:
    start_xyz = [box[2].start, box[1].start, box[0].start]
    size_xyz = [box[2].stop - box[2].start, box[1].stop - box[1].start, box[0].stop - box[0].start]
    origin = geometry.index_to_physical(np.asarray(start_xyz, dtype=np.float64))
    return Geometry(size=size_xyz, spacing=geometry.spacing, origin=origin, direction=geometry.direction)


def _place_tumors(geometry: Geometry, labels: np.ndarray, specs: list[dict]) -> list[dict]:
    """Place each tumor inside breast fat/FGT (apart from the others); adds mask, core, center_mm."""
    from .shapes import MIN_DIAMETER_MM, place_tumor

    if not specs:
        return []
    allowed = np.isin(labels, (L.FAT, L.FIBROGLANDULAR))
    if not allowed.any():
        raise SynBTError("this phantom has no breast tissue to place tumors in")
    # work on the bounding box of the breasts only (distance maps there are cheap)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(np.argwhere(allowed).min(0), np.argwhere(allowed).max(0)))
    crop = _crop_geometry(geometry, box)
    free = allowed[box].copy()
    placed = []
    for spec in specs:
        diameter = spec["diameter_mm"]
        while True:
            try:
                found = place_tumor(free, crop, diameter, seed=spec["seed"], kind=spec["kind"], margin_mm=2.0,
                                    necrotic=spec["necrotic"])
                break
            except SynBTError:
                if diameter * 0.8 < MIN_DIAMETER_MM:
                    raise SynBTError(
                        f"cannot fit tumor {len(placed) + 1} of {len(specs)} in these breasts; ask for fewer or smaller tumors"
                    ) from None
                diameter *= 0.8  # too big for these breasts: a smaller one
        mask = np.zeros(labels.shape, bool)
        mask[box] = found.mask.astype(bool)
        core = None
        if found.core is not None:
            core = np.zeros(labels.shape, bool)
            core[box] = found.core & mask[box]
        free &= ~mask[box]
        placed.append({**spec, "diameter_mm": float(diameter), "center_mm": [float(v) for v in found.center_mm],
                       "mask": mask, "core": core})
    return placed


# ------------------------------------------------------------------------------------- signal


def _render(geometry, anatomy: _Anatomy, p: dict, tumors: list[dict], times, rng) -> np.ndarray:
    """Noise-free signal (K, Z, Y, X) of every voxel, from its material, FGT fraction and tumor kinetics."""
    materials = _material_kinetics(p)
    table = np.stack([m.signal(times) for m in materials]).astype(np.float32) * SIGNAL_SCALE  # (M, K)
    phases = np.stack([table[:, k][anatomy.material] for k in range(len(times))])

    # breast: partial volume of FGT in fat, with patchy background enhancement
    region = phases[(slice(None),) + anatomy.breast_box]
    fraction = anatomy.fgt_fraction
    where = np.nonzero(fraction > 1e-3)
    zyx = _points_mm(geometry, where, anatomy.breast_box)
    patchy = np.exp(0.5 * _WaveNoise(rng, (30.0, 90.0), waves=16).at_points(zyx))
    fgt = materials[FGT]
    fgt_signal = kin.concentration_to_signal(patchy[:, None] * fgt.concentration(times)[None], fgt.t10_s, fgt.m0)
    share = fraction[where][:, None]
    mixed = share * fgt_signal * SIGNAL_SCALE + (1 - share) * table[FAT][None]
    region[(slice(None),) + where] = mixed.T

    texture = _WaveNoise(rng, (4.0, 14.0))
    for tumor in tumors:
        tissue = kin.tumor_kinetics(tumor["kinetics"], np.random.default_rng(tumor["seed"]))
        tumor.update(ktrans=tissue.ktrans, ve=tissue.ve, vp=tissue.vp, t10_s=tissue.t10_s)
        enhancing = tumor["mask"] & ~tumor["core"] if tumor["core"] is not None else tumor["mask"]
        where = np.nonzero(enhancing)
        zyx = _points_mm(geometry, where)
        radius = np.linalg.norm(zyx - np.asarray(tumor["center_mm"])[::-1], axis=1) / (tumor["diameter_mm"] / 2)
        # textured Ktrans, stronger at the rim, as in most invasive cancers
        gain = np.exp(0.3 * texture.at_points(zyx)) * (0.75 + 0.45 * np.clip(radius, 0, 1))
        conc = gain[:, None] * tissue.concentration(times)[None]
        signal = kin.concentration_to_signal(conc, tissue.t10_s, tissue.m0) * SIGNAL_SCALE
        phases[(slice(None),) + where] = signal.T
        if tumor["core"] is not None:
            phases[:, tumor["core"]] = table[NECROSIS][:, None]
    return phases




def _point_spread(image: np.ndarray, resolution: float, shift=None) -> np.ndarray:
    """The image a scanner reconstructs from k-space sampled over `resolution` of each axis' band.

    A point-sampled object holds detail finer than a voxel (thresholded texture aliases into
    voxel-scale speckle); a scanner records only the k-space it samples, and clinical breast
    DCE is usually zero-filled to a larger matrix. Box truncation softened by a raised-cosine
    taper over the outer fifth of the sampled band (Gibbs ringing remains, as in real images);
    the volume is mirror-padded first so the FFT's wrap-around does not join opposite faces.
    float32 / complex64 throughout: about 4x the volume's memory at the peak. shift: an optional
    rigid (z, y, x) displacement in voxels (patient motion), applied as a linear phase ramp.
    """
    if resolution >= 1.0 and shift is None:
        return image
    from scipy import fft

    pad = [(min(8, n - 1), min(8, n - 1)) for n in image.shape]
    padded_shape = tuple(n + a + b for n, (a, b) in zip(image.shape, pad))
    spectrum = fft.rfftn(np.pad(image, pad, mode="reflect"), overwrite_x=True)
    for axis, n in enumerate(padded_shape):
        last = axis == len(padded_shape) - 1
        k = np.abs(fft.rfftfreq(n) if last else fft.fftfreq(n)) / 0.5  # 1.0 = the grid's Nyquist
        taper = np.clip((resolution - k) / (0.2 * resolution), 0.0, 1.0) if resolution < 1.0 else np.ones_like(k)
        window = (0.5 - 0.5 * np.cos(np.pi * taper)).astype(np.complex64)
        if shift is not None and shift[axis]:
            cycles = fft.rfftfreq(n) if last else fft.fftfreq(n)
            window *= np.exp(-2j * np.pi * cycles * shift[axis]).astype(np.complex64)
        shape = [1] * len(padded_shape)
        shape[axis] = window.size
        spectrum *= window.reshape(shape)
    out = fft.irfftn(spectrum, s=padded_shape, overwrite_x=True)
    del spectrum
    crop = out[tuple(slice(a, a + n) for (a, _), n in zip(pad, image.shape))]
    return np.maximum(crop, 0.0, out=image)  # magnitude images are not negative (clips the ringing)


def _acquire(phases: np.ndarray, geometry: Geometry, p: dict, reference: float, rng, anatomy=None) -> np.ndarray:
    """Coil bias field, the scanner's point-spread function, then Rician noise (in place).

    The noise stays white (per-voxel std = noise x FGT signal): the PSF acts on the object.
    """
    axes = _Axes.of(geometry)
    smooth = _NoiseLattice(rng, 20.0, 60.0).on_grid(axes)
    coil = -axes.y / (FOV_MM[1] / 2)  # prone breast coil: brighter anteriorly
    bias = np.exp(p["bias"] * (0.7 * smooth + 0.6 * coil)).astype(np.float32)
    # drawn here, after the anatomy, so each seed keeps its body; drawn even when given, so that
    # make_phantom(seed, resolution=<the drawn value>) reproduces the case, noise included
    drawn = float(rng.uniform(*RESOLUTION_RANGE))
    p["resolution"] = drawn if p.get("resolution") is None else p["resolution"]
    sigma = np.float32(p["noise"] * reference)
    real = np.empty(bias.shape, np.float32)
    imag = np.empty(bias.shape, np.float32)
    shifts = [None] * phases.shape[0]
    if p.get("version", 1) >= 2:
        from . import phantom_acquisition as acq

        if anatomy is not None:
            acq.ghosts(phases, anatomy, p, rng)
        shifts = acq.motion_shifts(rng, phases.shape[0], p["motion_mm"], geometry.spacing[::-1])
    for k in range(phases.shape[0]):  # in place, in two reused buffers: these arrays can be large
        phases[k] *= bias
        _point_spread(phases[k], p["resolution"], shifts[k])  # in place
        rng.standard_normal(dtype=np.float32, out=real)
        real *= sigma
        real += phases[k]
        real *= real
        rng.standard_normal(dtype=np.float32, out=imag)
        imag *= sigma
        imag *= imag
        real += imag
        np.sqrt(real, out=phases[k])
    return phases


# ----------------------------------------------------------------------------------- public


def make_phantom(seed: int = 0, shape=None, spacing=None, phases: int | None = None, tumors: int = 0, preset=None,
                 place_lesions: bool = True, **params) -> Phantom:
    """A synthetic breast DCE-MRI case with ground truth, fully determined by its arguments.

    preset: None (or "legacy") is the original phantom (uniform density / BPE / curve-type
    draws, 3 phases 90 s apart, 128 x 128 x 48 by default); "small", "bundle" or "clinical" is
    phantom 2 (published population mixes, power-law FGT cone, clinical protocols and
    artefacts; see phantom_population / phantom_acquisition) on that preset's grid.
    shape and spacing are (x, y, z); spacing defaults to a 340 x 340 x 150 mm field of view.
    phases: number of DCE phases (legacy: 3, every phase_interval_s; phantom 2: 3-6 at clinical
    times unless given). tumors: number of tumors placed in the breasts. Optional params (random
    per seed when left out): density ("a".."d", ACR), bpe ("minimal".."marked"), tumor_kinetics,
    tumor_kinds, tumor_diameters_mm, necrotic (one value or one per tumor), phase_interval_s,
    fat_suppressed, noise (fraction of FGT signal), bias (field amplitude), resolution (fraction
    of each axis' k-space band the scanner samples, 0.7-0.9 by default; 1 = none). Phantom 2
    also takes menopause ("pre"/"post"), field_strength_t (1.5/3), lesion_types ("mass"/"nme"),
    phase_times_s, ghosting (ghost amplitude) and motion_mm.
    place_lesions=False (phantom 2): the lesions are drawn but left out, so the case is the tumor-free
    twin of the one with them: every later random draw (texture, ghosts, motion, noise) is the same,
    where tumors=0 would draw them afresh.
    """
    if int(seed) != seed or seed < 0:
        raise SynBTError(f"seed must be a non-negative integer, got {seed}")
    if int(tumors) != tumors or tumors < 0 or tumors > 10:
        raise SynBTError(f"tumors must be an integer in 0..10, got {tumors}")
    if preset not in (None, "legacy"):
        return _make_phantom_v2(int(seed), shape, spacing, phases, int(tumors), preset, params, place_lesions)
    if not place_lesions:
        raise SynBTError("place_lesions=False needs a phantom-2 preset; the legacy phantom's twin is tumors=0")
    geometry = phantom_geometry(DEFAULT_SHAPE if shape is None else shape, spacing)
    times = kin.phase_times(3 if phases is None else int(phases), float(params.get("phase_interval_s") or 90.0))
    rng = np.random.default_rng(int(seed))
    p = _draw_parameters(rng, int(tumors), params)
    anatomy = _build_anatomy(geometry, p, rng)
    placed = _place_tumors(geometry, anatomy.labels, p["tumors"])
    tumor_labels = _label_tumors(anatomy, placed, geometry)
    signal = _render(geometry, anatomy, p, placed, times, rng)
    reference = float(_material_kinetics(p)[FGT].signal(times)[0]) * SIGNAL_SCALE
    signal = _acquire(signal, geometry, p, reference, rng)
    names = ["pre"] + [f"post{k}" for k in range(1, len(times))]
    case = Case(phases=signal, geometry=geometry, phase_names=names)
    meta = _describe(int(seed), p, times, case, anatomy, placed, tumor_labels)
    return Phantom(case=case, tissue_labels=anatomy.labels, tumor_labels=tumor_labels, meta=meta)


def _label_tumors(anatomy: _Anatomy, placed: list[dict], geometry: Geometry) -> np.ndarray:
    tumor_labels = np.zeros(geometry.shape, np.uint8)
    for tumor in placed:
        anatomy.labels[tumor["mask"]] = L.TUMOR
        if tumor["core"] is not None:
            anatomy.labels[tumor["core"]] = L.NECROSIS
        tumor_labels[tumor["mask"]] = L.TUMOR_LABEL
    return tumor_labels


# ------------------------------------------------------------------------------- phantom 2

_PARAM_KEYS_V2 = _PARAM_KEYS | {"menopause", "field_strength_t", "lesion_types", "phase_times_s", "ghosting", "motion_mm"}


def _draw_parameters_v2(rng: np.random.Generator, tumors: int, params: dict, phases) -> tuple[dict, np.ndarray]:
    from . import phantom_acquisition as acq
    from . import phantom_population as pop

    unknown = set(params) - _PARAM_KEYS_V2
    if unknown:
        raise SynBTError(f"unknown phantom parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_PARAM_KEYS_V2))}")
    p = {"version": 2, **pop.draw_population(rng, params)}
    p["fgt_fraction_target"] = float(rng.uniform(*DENSITY_FRACTIONS[p["density"]]))
    if params.get("phase_times_s") is not None:
        times = np.asarray(params["phase_times_s"], dtype=np.float64)
        if times.ndim != 1 or times.size < 2 or times[0] != 0 or np.any(np.diff(times) <= 0):
            raise SynBTError("phase_times_s must start at 0 and increase, with at least 2 phases")
    elif params.get("phase_interval_s") is not None:
        times = kin.phase_times(3 if phases is None else int(phases), float(params["phase_interval_s"]))
    else:
        times = pop.clinical_phase_times(rng, None if phases is None else int(phases))
    p["phase_interval_s"] = float(np.diff(times[1:]).mean()) if times.size > 2 else float(times[-1])
    p["noise"] = float(params["noise"]) if params.get("noise") is not None else float(rng.uniform(0.02, 0.04))
    p["noise"] *= 1.0 if params.get("noise") is not None or p["field_strength_t"] == 1.5 else 0.75
    p["bias"] = float(params["bias"]) if params.get("bias") is not None else float(rng.uniform(0.1, 0.25))
    p["resolution"] = _resolution(params.get("resolution"))
    for key in ("noise", "bias"):
        if not 0 <= p[key] < 1:
            raise SynBTError(f"{key} must be in [0, 1), got {p[key]:g}")
    p.update(_draw_body(rng))
    p.update(fgt_cone_spread=float(rng.uniform(0.45, 0.8)), fgt_cone_weight=float(rng.uniform(1.8, 3.0)),
             fgt_beta_offset=float(rng.normal(0.0, 0.15)), nipple_length=float(rng.uniform(4, 9)),
             nipple_radius=float(rng.uniform(4, 6.5)), lung_vessel_seed=int(rng.integers(2**31)))
    p.update(acq.draw_acquisition(rng, params, p["fat_suppressed"]))
    diameters = _per_tumor(params.get("tumor_diameters_mm"), tumors, "tumor_diameters_mm")
    kinds = _per_tumor(params.get("tumor_kinds"), tumors, "tumor_kinds")
    curves = _per_tumor(params.get("tumor_kinetics"), tumors, "tumor_kinetics")
    necrotic = _per_tumor(params.get("necrotic"), tumors, "necrotic")
    types = _per_tumor(params.get("lesion_types"), tumors, "lesion_types")
    p["tumors"] = [pop.draw_lesion(rng, diameters[k], kinds[k], curves[k], necrotic[k], types[k]) for k in range(tumors)]
    return p, times


def _make_phantom_v2(seed, shape, spacing, phases, tumors, preset, params, place_lesions=True) -> Phantom:
    from . import phantom_acquisition as acq
    from . import phantom_anatomy as anat
    from . import phantom_kinetics as pk

    if preset not in acq.PRESETS:
        raise SynBTError(f"unknown phantom preset {preset!r}; choose one of legacy, {', '.join(acq.PRESETS)}")
    geometry = phantom_geometry(acq.PRESETS[preset] if shape is None else shape, spacing)
    rng = np.random.default_rng(seed)
    p, times = _draw_parameters_v2(rng, tumors, params, phases)
    p["preset"] = preset
    axes = _Axes.of(geometry)
    material, labels, depth2d, fat_end = _build_torso(axes, p)
    box, fraction, nipples = anat.build_breasts(axes, p, rng, material, labels, depth2d, fat_end)
    anatomy = _Anatomy(material=material, labels=labels, breast_box=box, fgt_fraction=fraction, nipples=nipples)
    # the lesions' own rendering draws from their own seeds: leaving them out changes no other draw
    placed = _place_lesions_v2(geometry, anatomy, p["tumors"]) if place_lesions else []
    tumor_labels = _label_tumors(anatomy, placed, geometry)
    signal = pk.render(geometry, anatomy, p, placed, times, rng)
    acq.uneven_fat_suppression(signal, anatomy, geometry, p, pk.material_table(p, times)[FAT] * SIGNAL_SCALE, rng)
    reference = float(pk.signal(0.0, pk.T1[p["field_strength_t"]]["fibroglandular"], 0.8, p["field_strength_t"])) * SIGNAL_SCALE
    signal = _acquire(signal, geometry, p, reference, rng, anatomy=anatomy)
    names = ["pre"] + [f"post{k}" for k in range(1, len(times))]
    case = Case(phases=signal, geometry=geometry, phase_names=names)
    meta = _describe(seed, p, times, case, anatomy, placed, tumor_labels)
    return Phantom(case=case, tissue_labels=anatomy.labels, tumor_labels=tumor_labels, meta=meta)


def _place_lesions_v2(geometry: Geometry, anatomy: _Anatomy, specs: list[dict]) -> list[dict]:
    """Masses through shapes.place_tumor, then non-mass lesions (phantom_anatomy.nme_mask) in what is left."""
    from . import phantom_anatomy as anat

    order = [k for k, s in enumerate(specs) if s["lesion_type"] == "mass"] + \
            [k for k, s in enumerate(specs) if s["lesion_type"] != "mass"]
    labels = anatomy.labels.copy()
    placed = {}
    for k in order:
        spec = specs[k]
        if spec["lesion_type"] == "nme":
            found = anat.nme_mask(geometry, labels, anatomy.nipples, spec)
            if found is not None:
                mask, center = found
                placed[k] = {**spec, "center_mm": center, "mask": mask, "core": None}
                labels[mask] = L.TUMOR
                continue
            spec = {**spec, "lesion_type": "mass", "kind": "lobulated"}  # no FGT to grow along: a mass instead
        tumor = _place_tumors(geometry, labels, [spec])[0]
        labels[tumor["mask"]] = L.TUMOR
        placed[k] = tumor
    return [placed[k] for k in range(len(specs))]


def _describe(seed, p, times, case: Case, anatomy: _Anatomy, tumors, tumor_labels) -> dict:
    labels = anatomy.labels
    breast = np.isin(labels, L.BREAST_TISSUE)
    curves = {}
    flat = case.phases.reshape(case.num_phases, -1)
    counts = np.bincount(labels.ravel(), minlength=len(L.TISSUE_NAMES))
    sums = np.stack([np.bincount(labels.ravel(), weights=flat[k], minlength=counts.size) for k in range(case.num_phases)])
    for value, name in L.TISSUE_NAMES.items():
        if counts[value]:
            curves[name] = [round(float(v), 2) for v in sums[:, value] / counts[value]]
    if p.get("version", 1) >= 2:
        from .phantom_kinetics import material_table

        model = {name: [round(float(v) * SIGNAL_SCALE, 2) for v in row] for name, row in zip(_MATERIAL_NAMES, material_table(p, times))}
    else:
        model = {name: [round(float(v) * SIGNAL_SCALE, 2) for v in m.signal(times)]
                 for name, m in zip(_MATERIAL_NAMES, _material_kinetics(p))}
    tumor_meta = []
    for tumor in tumors:
        enhancing = tumor["mask"] & ~tumor["core"] if tumor["core"] is not None else tumor["mask"]
        curve = case.phases[:, enhancing].mean(axis=1)
        tumor_meta.append({
            "center_mm": [round(v, 2) for v in tumor["center_mm"]],
            "diameter_mm": round(tumor["diameter_mm"], 2),
            "kind": tumor["kind"],
            "kinetics": tumor["kinetics"],
            "measured_curve_type": kin.classify_curve(curve) if case.num_phases >= 3 else None,
            "necrotic": tumor["core"] is not None,
            **({"lesion_type": tumor["lesion_type"], "rim": tumor["rim"], "heterogeneity": round(tumor["heterogeneity"], 3)}
               if "lesion_type" in tumor else {}),
            "ktrans_per_min": round(tumor["ktrans"], 4),
            "ve": round(tumor["ve"], 4),
            "vp": round(tumor["vp"], 4),
            "voxels": int(tumor["mask"].sum()),
            "signal": [round(float(v), 2) for v in curve],
            "shape_seed": tumor["seed"],
        })
    params = {k: v for k, v in p.items() if k != "tumors"}
    return {
        "generator": "SynBTLib.phantom",
        **({"preset": p["preset"]} if "preset" in p else {}),
        "seed": seed,
        "shape": list(case.geometry.size),
        "spacing": list(case.geometry.spacing),
        "origin": list(case.geometry.origin),
        "phase_names": list(case.phase_names),
        "phase_times_s": [float(t) for t in times],
        "density": p["density"],
        "fgt_fraction": round(float((labels == L.FIBROGLANDULAR).sum() / max(breast.sum(), 1)), 4),
        "parameters": params,
        "tissue_signal": curves,
        "model_signal": model,
        "tumors": tumor_meta,
        "tumor_voxels": int(tumor_labels.sum()),
    }


def write_phantom(phantom: Phantom, out_dir, overwrite: bool = False, montage: bool = True) -> list[Path]:
    """Write a SynBT case folder: phase_<k>.nii.gz, tissue/tumor labels, case.json and montage.png."""
    from . import io

    out = io.prepare_output_dir(out_dir, overwrite=overwrite)
    geometry = phantom.case.geometry
    written = list(io.write_case(phantom.case, out))
    written.append(io.write_label(phantom.tissue_labels, geometry, out / "tissue_labels.nii.gz"))
    written.append(io.write_label(phantom.tumor_labels, geometry, out / "tumor_labels.nii.gz"))
    meta_path = out / "case.json"
    meta_path.write_text(json.dumps(phantom.meta, indent=1))
    written.append(meta_path)
    if montage:
        from .montage import phantom_montage

        written.append(phantom_montage(phantom, out / "montage.png"))
    return written
