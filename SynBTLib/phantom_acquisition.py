"""Phantom-2 acquisition: grid presets, and the scanner's imperfections.

Presets (make_phantom(preset=...)): "small" 128x128x48 (2.66 x 2.66 x 3.13 mm, for tests and
cohort statistics), "bundle" 192x192x64 (1.77 x 1.77 x 2.34 mm, the shipped bundle's training
grid) and "clinical" 480x480x120 (0.71 x 0.71 x 1.25 mm over 340 x 340 x 150 mm, like the
MAMA-MIA / Duke acquisitions: 0.6-0.8 mm pixels, 1-1.5 mm slices). Imperfections, in order:
uneven fat suppression (a smooth map of the residual fat signal, worse off-centre), the coil's
bias field, mild rigid motion between phases (a linear phase ramp in k-space, so free with the
point-spread function), cardiac ghosts (replicas of the heart and great vessels along the
phase-encoding axis, which pulse from phase to phase) and Rician noise (lower at 3 T).
"""
from __future__ import annotations

import numpy as np

PRESETS = {
    "small": (128, 128, 48),
    "bundle": (192, 192, 64),
    "clinical": (480, 480, 120),
}


def draw_acquisition(rng: np.random.Generator, params: dict, fat_suppressed: bool) -> dict:
    return {
        "fat_residual": float(rng.uniform(0.04, 0.1)) if fat_suppressed else 1.0,
        "fat_unevenness": float(rng.uniform(0.2, 0.6)) if fat_suppressed else 0.0,
        "ghosting": float(params["ghosting"]) if params.get("ghosting") is not None else float(rng.uniform(0.01, 0.04)),
        "ghost_axis": "x" if rng.random() < 0.7 else "y",  # phase encoding left-right (usual) or anterior-posterior
        "motion_mm": float(params["motion_mm"]) if params.get("motion_mm") is not None else float(rng.uniform(0.0, 1.2)),
    }


def uneven_fat_suppression(phases, anatomy, geometry, p, fat_signal, rng) -> None:
    """Adds residual fat signal where suppression fails: a smooth map, growing towards the lateral edges."""
    from . import phantom_base as P

    if not p["fat_suppressed"] or p["fat_unevenness"] <= 0:
        return
    axes = P._Axes.of(geometry)
    smooth = P._NoiseLattice(rng, 20.0, 50.0).on_grid(axes)
    lateral = (np.abs(axes.x) / (P.FOV_MM[0] / 2)) ** 2
    extra = np.clip(p["fat_unevenness"] * (0.5 * np.maximum(smooth, 0) + lateral), 0, 1.5).astype(np.float32)
    fat_share = np.isin(anatomy.material, (P.FAT, P.MARROW)).astype(np.float32)
    box = anatomy.breast_box
    breast_fat = np.isin(anatomy.labels[box], (2,))  # labels.FAT
    fat_share[box][breast_fat] = 1.0 - anatomy.fgt_fraction[breast_fat]
    extra *= fat_share
    for k in range(phases.shape[0]):
        phases[k] += extra * np.float32(fat_signal[k])


def ghosts(phases, anatomy, p, rng) -> None:
    """Cardiac ghosts: the heart and great vessels replicated along the phase-encoding axis (in place)."""
    from . import labels as L

    if p["ghosting"] <= 0:
        return
    source = np.isin(anatomy.labels, (L.HEART,)) | ((anatomy.labels == L.VESSEL) & (anatomy.material == 8))
    axis = 2 if p["ghost_axis"] == "x" else 1
    n = phases.shape[axis + 1]
    step = int(rng.uniform(0.12, 0.25) * n)
    slices = np.nonzero(source.any(axis=(1, 2)))[0]
    if slices.size == 0:
        return
    slab = slice(int(slices[0]), int(slices[-1]) + 1)  # ghosts stay in the slices of their source
    source = source[slab]
    for k in range(phases.shape[0]):
        pulse = p["ghosting"] * rng.uniform(0.5, 1.5)
        heart = np.where(source, phases[k, slab], 0.0).astype(np.float32)
        for m, weight in ((1, 1.0), (-1, 1.0), (2, 0.5), (-2, 0.5)):
            phases[k, slab] += np.float32(pulse * weight) * np.roll(heart, m * step, axis=axis)


def motion_shifts(rng: np.random.Generator, num_phases: int, motion_mm: float, spacing_zyx) -> list:
    """Per-phase rigid shifts in voxels (z, y, x); the pre-contrast phase is the reference."""
    shifts = [None]
    for _ in range(1, num_phases):
        mm = rng.normal(0.0, 1.0, 3) * motion_mm * np.array([0.7, 1.0, 0.4])
        shifts.append(tuple(float(v) for v in mm / np.asarray(spacing_zyx)))
    return shifts
