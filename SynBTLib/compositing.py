"""Pixel operations around a synthesis: resampling a region, measuring and restoring acquisition
noise, and blending a generated box back into the full volume."""
from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from .boxes import Box, box_overlap


def resize(volume: torch.Tensor, shape, mode: str = "trilinear") -> torch.Tensor:
    """(B, C, Z, Y, X) tensor resampled to spatial `shape` (trilinear, cell-centred, or nearest)."""
    if mode == "nearest":
        return torch.nn.functional.interpolate(volume, size=tuple(shape), mode="nearest")
    return torch.nn.functional.interpolate(volume, size=tuple(shape), mode=mode, align_corners=False)


def resize_mask(mask: torch.Tensor, shape, within: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, Z, Y, X) 0/1 mask resampled to `shape` (trilinear, then >= 0.5), kept inside `within`.

    A mask that would vanish (smaller than one voxel of `shape`) keeps its nearest voxels instead."""
    resized = (resize(mask, shape) >= 0.5).float()
    if within is not None:
        resized = resized * within
    if mask.any() and not resized.any():
        resized = resize(mask, shape, mode="nearest")
        if within is not None:
            resized = resized * within
    return resized


def noise_level(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-phase acquisition-noise level of (C, Z, Y, X) `image`, measured where `mask` is 0: the robust
    spread of neighbour differences along x (a Donoho-style estimate: tissue texture barely moves the
    median of the differences)."""
    differences = (image[..., 1:] - image[..., :-1])[:, mask[..., 1:] == 0] / np.sqrt(2.0)
    centred = differences - np.median(differences, axis=1, keepdims=True)
    return 1.4826 * np.median(np.abs(centred), axis=1)


def detail_noise(original: np.ndarray, mask: np.ndarray, seed: int, decoded: np.ndarray | None = None) -> np.ndarray:
    """Seeded Gaussian noise per phase that brings `decoded` up to `original`'s acquisition-noise level:
    of standard deviation sqrt(level(original)^2 - level(decoded)^2) (the part the decoder left out),
    or without `decoded` the full level of `original`. Levels are measured where `mask` is 0."""
    sigma = noise_level(original, mask)
    if decoded is not None:
        sigma = np.sqrt(np.clip(sigma ** 2 - noise_level(decoded, mask) ** 2, 0.0, None))
    rng = np.random.default_rng([int(seed), 7])
    noise = rng.standard_normal(original.shape, dtype=np.float32)
    return noise * sigma.astype(np.float32)[:, None, None, None]


def blend_weight(mask: np.ndarray, spacing_zyx, blend_mm: float) -> np.ndarray:
    """float32 weight of the generated image: 1 inside the mask, falling linearly to 0 at `blend_mm` from it."""
    if blend_mm <= 0:
        return (mask > 0).astype(np.float32)
    distance_mm = distance_transform_edt(mask == 0, sampling=spacing_zyx)
    return np.clip(1.0 - distance_mm / blend_mm, 0.0, 1.0).astype(np.float32)


def paste_blended(phases: np.ndarray, generated: np.ndarray, weight: np.ndarray, box: Box) -> np.ndarray:
    """A copy of (C, Z, Y, X) `phases` with the box-shaped `generated` blended in where `weight` > 0."""
    out = phases.copy()
    volume, local = box_overlap(box, phases.shape)
    w = weight[local]
    region = out[(slice(None), *volume)]  # a view: writing it writes `out`
    blended = w * generated[(slice(None), *local)] + (1.0 - w) * region
    region[...] = np.where(w > 0, blended, region)
    return out
