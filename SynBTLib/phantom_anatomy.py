"""Phantom-2 breast anatomy: a retroareolar cone of power-law fibroglandular tissue, Cooper's
ligaments, nipples, intramammary vessels, and non-mass enhancement lesions.

The fibroglandular tissue (FGT) fills a cone whose apex is the nipple and whose base lies on
the chest wall (the lobes and ducts converge on the nipple); inside it, a 1/f^beta field
(phantom_texture) is thresholded so that the requested share of the breast is FGT, which
gives dendritic, fractal margins instead of speckle. The subcutaneous and retromammary fat
is never FGT. Cooper's ligaments are thin sheets on the zero set of a smooth field.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from . import labels as L
from . import phantom_base as P
from .phantom_texture import power_law_field, sheets

FGT_BETA = 1.8  # target 2-D slice exponent (Chen et al. 2012: 1.79 +- 0.40 axial breast CT)
FGT_SOFTNESS = 0.3  # width of the FGT / fat transition (partial volume), in standard deviations of the score
LIGAMENT_STRENGTH = 0.8


def _spacing_zyx(sub: "P._Axes") -> tuple:
    return (P._step(sub.z), P._step(sub.y), P._step(sub.x))


def build_breasts(axes, p: dict, rng: np.random.Generator, material, labels, depth2d, fat_end):
    """Carve both breasts into the maps; returns the breast box, FGT partial-volume fraction and nipples."""
    shell = P._breast_shell(axes, p, material, labels, depth2d, fat_end)
    sub, breast, mat, lab = shell.sub, shell.breast, shell.mat, shell.lab
    spacing = _spacing_zyx(sub)
    shape = breast.shape

    envelope = P._smoothstep((shell.breast_depth - p["breast_subcutaneous_fat"]) / 8.0)
    envelope *= P._smoothstep((shell.to_muscle - p["retromammary_fat"]) / 8.0)
    candidates = breast & (envelope > 0)

    # the cone: lateral distance to the nipple-chest axis against a radius growing from the nipple
    cone = np.zeros(shape, np.float32)
    for frame in shell.frames:
        along = np.clip((sub.y - (frame.base_y - frame.ry)) / frame.ry, 0.0, 1.0)  # 0 at the nipple, 1 at the base
        dx, dz = sub.x - frame.cx, sub.z - frame.cz
        radius = 10.0 + p["fgt_cone_spread"] * along * np.sqrt(frame.rx * frame.rz)
        lateral2 = (dx * dx + dz * dz) / (radius * radius)
        side = (sub.x < 0) if frame.cx < 0 else (sub.x >= 0)
        cone = np.where(side, np.exp(-lateral2).astype(np.float32), cone)
    texture = power_law_field(rng, shape, spacing, FGT_BETA + 1.0 + p["fgt_beta_offset"], largest_mm=60.0)
    score = p["fgt_cone_weight"] * cone + texture
    score = np.where(candidates, score, -np.inf).astype(np.float32)
    n_breast = int(breast.sum())
    threshold = P._fgt_threshold(score[breast], candidates[breast], p["fgt_fraction_target"])
    softness = FGT_SOFTNESS * float(score[candidates].std()) + 1e-6 if candidates.any() else 1.0
    fraction = np.zeros(shape, np.float32)
    fraction[breast] = special.expit((score[breast] - threshold) / softness)
    del score, texture

    # Cooper's ligaments: thin fibrous sheets through the fat, reaching the skin
    ligament_field = power_law_field(rng, shape, spacing, 4.0, largest_mm=40.0)
    ligaments = sheets(ligament_field, spacing, thickness_mm=0.7) * LIGAMENT_STRENGTH
    del ligament_field
    ligaments[~breast] = 0.0
    np.maximum(fraction, ligaments, out=fraction)
    del ligaments

    fgt = breast & (fraction >= 0.5)
    mat[fgt] = P.FGT
    lab[fgt] = L.FIBROGLANDULAR
    mat[shell.skin_zone] = P.SKIN
    lab[shell.skin_zone] = L.SKIN
    fraction[shell.skin_zone | ~breast] = 0.0
    _nipples(sub, shell, p, mat, lab, fraction)
    vessels = _vessels(sub, shell, p, rng, mat, lab, fraction)
    p["fgt_fraction_of_breast"] = float(fgt.sum() / max(n_breast, 1))
    p["breast_vessels"] = vessels
    return shell.box, fraction, shell.nipples


def _nipples(sub, shell, p, mat, lab, fraction):
    """A short skin-covered cylinder in front of each breast's tip (the nipple-areola complex)."""
    for frame in shell.frames:
        length, radius = p["nipple_length"], p["nipple_radius"]
        tip_y = frame.base_y - frame.ry
        r2 = (sub.x - frame.cx) ** 2 + (sub.z - frame.cz) ** 2
        ahead = np.maximum(tip_y - sub.y, 0.0)  # a rounded cap in front of the tip
        nipple = (r2 / (radius * radius) + (ahead / length) ** 2 <= 1.0) & (sub.y <= tip_y + 3.0)
        nipple = np.broadcast_to(nipple, mat.shape) & (mat != P.FGT)
        mat[nipple] = P.SKIN
        lab[nipple] = L.SKIN
        fraction[nipple] = 0.0


def _vessels(sub, shell, p, rng, mat, lab, fraction) -> int:
    """Intramammary vessels: smooth tubes from the chest wall towards the nipple, stamped as blood."""
    spacing = np.array(_spacing_zyx(sub))
    origin = np.array([sub.z.flat[0], sub.y.flat[0], sub.x.flat[0]])
    count = 0
    for frame in shell.frames:
        for _ in range(int(rng.integers(2, 5))):
            side = 1.0 if frame.cx > 0 else -1.0
            start = np.array([frame.cz + rng.uniform(-0.5, 0.7) * frame.rz, frame.base_y + 5.0,
                              frame.cx + side * rng.uniform(0.2, 0.8) * frame.rx])  # lateral / upper chest wall
            end = np.array([frame.cz + rng.uniform(-0.3, 0.3) * frame.rz, frame.base_y - frame.ry * rng.uniform(0.5, 0.85),
                            frame.cx + rng.uniform(-0.3, 0.3) * frame.rx])
            radius = max(rng.uniform(0.8, 1.6), 0.5 * float(spacing.min()))  # at least a voxel wide on coarse grids
            inside = stamp_tube(mat.shape, origin, spacing, start, end, start / 2 + end / 2 + rng.normal(0, 12.0, 3),
                                (radius, radius), lambda box: (lab[box] == L.FAT) | (lab[box] == L.FIBROGLANDULAR))
            for box, where in inside:
                mat[box][where] = P.BLOOD
                lab[box][where] = L.VESSEL
                fraction[box][where] = 0.0
            count += 1
    return count


def stamp_tube(shape, origin, spacing, start, end, bend, radii, allowed):
    """Voxels of a quadratic Bezier tube (radius tapering radii[0] -> radii[1]), as (box, mask) pieces where allowed(box)."""
    n = int(np.linalg.norm(end - start) / (0.5 * float(spacing.min()))) + 2
    t = np.linspace(0, 1, n)[:, None]
    path = (1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t**2 * end
    pieces = []
    for point, radius in zip(path, np.linspace(radii[0], radii[1], n)):
        reach = np.ceil(radius / spacing).astype(int) + 1
        center = np.round((point - origin) / spacing).astype(int)
        lo = np.maximum(center - reach, 0)
        hi = np.minimum(center + reach + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grids = np.meshgrid(*[origin[k] + spacing[k] * np.arange(lo[k], hi[k]) for k in range(3)], indexing="ij")
        inside = (sum((g - c) ** 2 for g, c in zip(grids, point)) <= radius * radius) & allowed(box)
        if inside.any():
            pieces.append((box, inside))
    return pieces


# ------------------------------------------------------------------------------ thorax


def _ellipsoid(axes, center_xyz, radii_xyz):
    return (((axes.x - center_xyz[0]) / radii_xyz[0]) ** 2 + ((axes.y - center_xyz[1]) / radii_xyz[1]) ** 2
            + ((axes.z - center_xyz[2]) / radii_xyz[2]) ** 2) <= 1.0


def heart_chambers(axes, p, heart_y, material, labels, heart, inner) -> None:
    """Four blood-filled chambers in the myocardium: a thick-walled left ventricle (patient left, posterior), a
    crescent right ventricle wrapped anteriorly around the septum, and the atria above and behind (in place)."""
    hz = p["heart_z"]
    lv = _ellipsoid(axes, (48.0, heart_y + 8.0, hz - 5.0), (20.0, 18.0, 30.0))
    lv_wall = _ellipsoid(axes, (48.0, heart_y + 8.0, hz - 5.0), (30.0, 28.0, 40.0))
    rv = _ellipsoid(axes, (16.0, heart_y - 16.0, hz), (30.0, 16.0, 34.0)) & ~lv_wall
    atria = (_ellipsoid(axes, (34.0, heart_y + 34.0, hz + 28.0), (22.0, 14.0, 16.0))
             | _ellipsoid(axes, (-2.0, heart_y + 12.0, hz + 24.0), (18.0, 18.0, 20.0)))
    blood = ((lv | rv) & heart) | (atria & inner[None])
    material[blood] = P.BLOOD
    labels[blood] = L.HEART


def lung_vessels(axes, p, rng, material, labels, hilum_y) -> None:
    """Pulmonary vessels: tapering tubes from each hilum out into the lung (blood, labelled VESSEL; in place)."""
    spacing = np.array([P._step(axes.z), P._step(axes.y), P._step(axes.x)])
    origin = np.array([axes.z.flat[0], axes.y.flat[0], axes.x.flat[0]])
    lung = material == P.LUNG
    for side in (-1.0, 1.0):
        hilum = np.array([p["heart_z"] + 45.0, hilum_y, side * 45.0])
        for _ in range(10):
            end = hilum + np.array([rng.uniform(-70, 70), rng.uniform(-50, 50), side * rng.uniform(40, 100)])
            bend = (hilum + end) / 2 + rng.normal(0, 10.0, 3)
            radius = max(rng.uniform(2.0, 3.5), 0.5 * float(spacing.min()))
            for box, where in stamp_tube(material.shape, origin, spacing, hilum, end, bend, (radius, max(0.6, radius / 3)),
                                         lambda box: lung[box]):
                material[box][where] = P.BLOOD
                labels[box][where] = L.VESSEL


# ------------------------------------------------------------------------------ non-mass lesions


def nme_mask(geometry, labels: np.ndarray, nipples, spec: dict) -> tuple[np.ndarray, list] | None:
    """A non-mass enhancement lesion inside breast tissue, or None when it does not fit.

    segmental: a wedge from the nipple along a duct system (a cone of half-angle 15-25 degrees);
    regional: a broad ellipsoidal region not following a duct; clumped: a smaller region. Inside,
    a power-law field is thresholded so that a third to a half of the region enhances (clumps
    and cobblestones, per the BI-RADS internal patterns)."""
    rng = np.random.default_rng(spec["seed"])
    allowed = np.isin(labels, (L.FAT, L.FIBROGLANDULAR))
    fgt = np.argwhere(labels == L.FIBROGLANDULAR)
    if len(fgt) == 0:
        return None
    axes = P._Axes.of(geometry)
    anchor_index = fgt[int(rng.integers(len(fgt)))]
    anchor = np.array([axes.z.flat[anchor_index[0]], axes.y.flat[anchor_index[1]], axes.x.flat[anchor_index[2]]])
    nipple = min(nipples, key=lambda n: abs(n[2] - anchor[2]))
    extent = spec["diameter_mm"] * (1.4 if spec["kind"] == "segmental" else 1.0)
    half = extent / 2 + 4.0
    spacing = np.array(geometry.spacing[::-1])
    origin = np.array([axes.z.flat[0], axes.y.flat[0], axes.x.flat[0]])
    low_mm, high_mm = anchor - half, anchor + half
    if spec["kind"] == "segmental":  # the wedge runs from the nipple: the box must hold both ends
        reach = float(np.linalg.norm(anchor - nipple)) + extent / 2 + 4.0
        low_mm, high_mm = np.minimum(low_mm, nipple - reach), np.maximum(high_mm, nipple + reach)
    lo = np.maximum(np.floor((low_mm - origin) / spacing), 0).astype(int)
    hi = np.minimum(np.ceil((high_mm - origin) / spacing).astype(int) + 1, labels.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    z, y, x = axes.z[box[0]], axes.y[:, box[1]], axes.x[:, :, box[2]]
    if spec["kind"] == "segmental":
        axis = anchor - nipple
        axis /= max(np.linalg.norm(axis), 1e-6)
        dz, dy, dx = z - nipple[0], y - nipple[1], x - nipple[2]
        along = dz * axis[0] + dy * axis[1] + dx * axis[2]
        radial = np.sqrt(np.maximum(dz * dz + dy * dy + dx * dx - along * along, 0.0))
        start = max(float(np.linalg.norm(anchor - nipple)) - extent / 2, 5.0)
        region = (along > start) & (along < start + extent) & (radial < np.tan(np.deg2rad(rng.uniform(15, 25))) * along)
    else:
        radii = extent / 2 * rng.uniform(0.6, 1.0, 3)
        region = ((z - anchor[0]) / radii[0]) ** 2 + ((y - anchor[1]) / radii[1]) ** 2 + ((x - anchor[2]) / radii[2]) ** 2 <= 1
    region = np.broadcast_to(region, allowed[box].shape) & allowed[box]
    if region.sum() < 8:
        return None
    field = power_law_field(rng, region.shape, tuple(spacing), 3.0, largest_mm=12.0 if spec["kind"] == "clumped" else 25.0)
    keep = 0.35 if spec["kind"] == "clumped" else 0.5
    threshold = np.quantile(field[region], 1.0 - keep)
    mask = np.zeros(labels.shape, bool)
    mask[box] = region & (field >= threshold)
    if mask.sum() < 8:
        return None
    center = geometry.index_to_physical(np.argwhere(mask).mean(axis=0)[::-1])
    return mask, [float(v) for v in center]
