"""Necrotic cores: measured on a tumor's image for training, made from a mask's shape for synthesis.

A necrotic (or cystic) core does not enhance: after contrast it stays at its pre-contrast signal
while the viable rim lights up. A tumor label (MAMA-MIA, a Segment Editor mask) covers both, so
the core is found in the image, like a tumor's curve type: voxels of the tumor, away from its
edge, whose first post-contrast enhancement is a small fraction of the tumor's strong enhancement.
A denoiser trained with these cores as a condition (``"necrosis_conditioning"``) can be asked for
a necrotic tumor, whose core is then the deepest part of the mask (``core_from_mask``).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import SynBTError

CORE_ENHANCEMENT_RATIO = 0.35  # core voxels enhance less than this share of the tumor's 90th percentile
MIN_CORE_VOXELS = 6  # fewer voxels are partial-volume speckle, not a core


def necrotic_core(phases: np.ndarray, tumor: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool: the non-enhancing core of every tumor component of ``tumor`` in ``phases``
    (C >= 2, Z, Y, X; any units in which phase 1 - phase 0 is the enhancement).

    Per connected component: voxels at least one voxel inside the outline (its partial-volume rim
    enhances little too) whose enhancement is under CORE_ENHANCEMENT_RATIO of the component's 90th
    percentile, the largest connected part kept if it has MIN_CORE_VOXELS or more, then grown back by
    one voxel into the tumor's low-enhancing voxels (the erosion took that much off the core's edge too)."""
    phases, tumor = np.asarray(phases), np.asarray(tumor) > 0
    if phases.ndim != 4 or phases.shape[0] < 2 or phases.shape[1:] != tumor.shape:
        raise SynBTError(f"necrotic_core needs (C >= 2, Z, Y, X) phases matching the (Z, Y, X) tumor mask, "
                         f"got {phases.shape} and {tumor.shape}")
    full = np.zeros(tumor.shape, dtype=bool)
    if not tumor.any():
        return full
    # only the tumors' box (and one voxel around it) is looked at, not a 512x512x160 grid
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in ndimage.find_objects(tumor.astype(np.uint8))[0])
    tumor = tumor[box]
    roi = phases[(slice(None), *box)]
    enhancement = roi[1].astype(np.float64) - roi[0]
    inner = ndimage.binary_erosion(tumor)
    components, count = ndimage.label(tumor)
    core = np.zeros(tumor.shape, dtype=bool)
    for k in range(1, count + 1):
        component = components == k
        strong = np.percentile(enhancement[component], 90)
        if not strong > 0:  # a tumor that does not enhance has no core to tell apart
            continue
        candidates = component & inner & (enhancement < CORE_ENHANCEMENT_RATIO * strong)
        parts, n = ndimage.label(candidates)
        if n == 0:
            continue
        sizes = np.bincount(parts.ravel())[1:]
        if sizes.max() < MIN_CORE_VOXELS:
            continue
        largest = parts == (int(sizes.argmax()) + 1)
        grown = ndimage.binary_dilation(largest) & component & (enhancement < CORE_ENHANCEMENT_RATIO * strong)
        core |= largest | grown
    full[box] = core
    return full


def core_from_mask(mask: np.ndarray, volume_fraction: float, spacing_zyx=(1.0, 1.0, 1.0)) -> np.ndarray:
    """(Z, Y, X) bool: the deepest ``volume_fraction`` of every component of ``mask`` (its round(f * n)
    voxels farthest from its outline, in mm; ties go to those nearer the component's centre), at least
    its deepest voxel: the core a necrotic tumor gets."""
    mask = np.asarray(mask) > 0
    if not 0 < volume_fraction < 1:
        raise SynBTError(f"a necrotic core's volume fraction must be between 0 and 1, got {volume_fraction}")
    core = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return core
    box = ndimage.find_objects(mask.astype(np.uint8))[0]  # the distance map of a 512x512x160 grid is not needed
    inside = mask[box]
    depth = ndimage.distance_transform_edt(np.pad(inside, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    components, count = ndimage.label(inside)
    local = np.zeros(inside.shape, dtype=bool)
    for k in range(1, count + 1):
        voxels = np.argwhere(components == k)
        depths = depth[tuple(voxels.T)]
        off_centre = np.linalg.norm((voxels - voxels.mean(axis=0)) * np.asarray(spacing_zyx, dtype=float), axis=1)
        order = np.lexsort((off_centre, -depths))  # deepest first, then nearest the centre
        chosen = voxels[order[: max(1, int(round(volume_fraction * len(voxels))))]]
        local[tuple(chosen.T)] = True
    core[box] = local
    return core


def equivalent_diameter_mm(voxels: int, spacing_zyx) -> float:
    """Diameter (mm) of the sphere with the volume of ``voxels`` voxels of this spacing."""
    volume = float(voxels) * float(np.prod(spacing_zyx))
    return float((6.0 * volume / np.pi) ** (1.0 / 3.0))


def necrosis_statistics(records) -> dict:
    """Bundle metadata from (equivalent diameter mm, core volume fraction or 0) per training tumor:
    how often tumors at least as large as the smallest necrotic one had a core, and the range
    (10th-90th percentile) of the core's volume fraction. The pipeline draws from these."""
    records = [(float(d), float(f)) for d, f in records]
    necrotic = [(d, f) for d, f in records if f > 0]
    if not necrotic:
        return {"tumors": len(records), "necrotic": 0}
    smallest = min(d for d, _ in necrotic)
    eligible = [r for r in records if r[0] >= smallest]
    fractions = np.asarray([f for _, f in necrotic])
    return {"tumors": len(records), "necrotic": len(necrotic), "min_diameter_mm": round(smallest, 2),
            "frequency": round(len(necrotic) / len(eligible), 4),
            "core_fraction": [round(float(np.percentile(fractions, 10)), 4), round(float(np.percentile(fractions, 90)), 4)]}
