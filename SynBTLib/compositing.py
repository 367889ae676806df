"""Pixel operations around a synthesis: resampling a region, measuring and restoring acquisition
noise, and blending a generated box back into the full volume."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from scipy.ndimage import distance_transform_edt, gaussian_filter

from .boxes import Box, box_overlap
from .preprocess import _otsu_threshold


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


AIR_QUANTILE = 0.25
# that quantile / sigma of noise-only (air) voxels, Rayleigh-distributed
RAYLEIGH_QUANTILE = float(np.sqrt(-2.0 * np.log(1.0 - AIR_QUANTILE)))


def air_noise_sigma(phases: np.ndarray, max_samples: int = 1_000_000) -> np.ndarray:
    """Per-phase acquisition-noise sigma of (C, Z, Y, X) magnitude ``phases`` (their own units), from
    the air around the body: there a magnitude image holds noise alone, Rayleigh-distributed, whose
    lower quartile is sigma * sqrt(-2 ln 0.75) (the MRI "background method"). Air is the strided voxels
    whose maximum over phases lies below the Otsu threshold of its logarithm; a low quantile keeps
    partial-volume voxels at the skin and ghosts (which only add bright voxels) from mattering. Zeros where there is no air (under 5 % of the
    voxels, or a dark class brighter than a fifth of the body: dim tissue, not noise) or where the
    scanner zeroed it: nothing to measure, so nothing is added."""
    flat = phases.reshape(phases.shape[0], -1)
    stride = max(1, flat.shape[1] // max_samples)
    sample = np.asarray(flat[:, ::stride], np.float64)
    peak = sample.max(axis=0)
    log_peak = np.log1p(np.maximum(peak, 0.0) - min(float(peak.min()), 0.0))
    if float(log_peak.max()) <= float(log_peak.min()):
        return np.zeros(phases.shape[0])
    air = log_peak <= _otsu_threshold(log_peak)
    # no air: under 5 % of the voxels, or a "dark" class that is dim tissue rather than noise
    if air.mean() < 0.05 or np.median(peak[air]) > 0.2 * np.median(peak[~air]):
        return np.zeros(phases.shape[0])
    return np.maximum(np.quantile(sample[:, air], AIR_QUANTILE, axis=1), 0.0) / RAYLEIGH_QUANTILE


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


def smooth_phases(image: np.ndarray, sigma_vox: float) -> np.ndarray:
    """(C, Z, Y, X) ``image`` with each phase smoothed by a Gaussian of ``sigma_vox`` voxels (a copy;
    ``sigma_vox`` 0 returns it unchanged)."""
    if sigma_vox <= 0:
        return image
    return np.stack([gaussian_filter(phase, sigma_vox, mode="nearest") for phase in image]).astype(image.dtype)


def shared_post_phases(image: np.ndarray, mask: np.ndarray, core: np.ndarray | None, sigma: np.ndarray,
                       seed: int) -> np.ndarray:
    """(C, Z, Y, X) ``image`` whose post-contrast phases, inside each connected region of ``mask`` (a
    necrotic ``core`` a region of its own), are one shared pattern seen through independent
    acquisition noise, as a scanner sees one enhancing tissue at several times.

    Per region and post phase k, with mean m_k and spread s_k of its voxels and g the standardized
    mean over post phases of their standardized values: ``m_k + sqrt(s_k^2 - sigma_k^2) g +
    sigma_k n_k``, n_k seeded white noise. Each phase keeps its mean and spread; how much the phases
    agree then follows from the measured noise ``sigma`` (per phase, the image's units), not from a
    fitted target. The pre-contrast phase and voxels outside ``mask`` are unchanged (a copy)."""
    out = np.array(image, copy=True)
    if image.shape[0] < 3:
        return out
    rng = np.random.default_rng([int(seed), 23])
    mask = np.asarray(mask) > 0
    core = np.zeros_like(mask) if core is None else mask & (np.asarray(core) > 0)
    noise_var = np.square(np.asarray(sigma, np.float64)[1:, None])
    for region in (mask & ~core, core):
        components, count = ndimage.label(region, structure=np.ones((3, 3, 3)))
        for label in range(1, count + 1):
            inside = components == label
            values = image[1:, inside].astype(np.float64)
            spread = values.std(axis=1, keepdims=True)
            if values.shape[1] < 3 or not (spread > 0).all():
                continue
            shared = ((values - values.mean(axis=1, keepdims=True)) / spread).mean(axis=0, keepdims=True)
            shared = (shared - shared.mean()) / max(float(shared.std()), 1e-12)
            signal = np.sqrt(np.clip(spread ** 2 - noise_var, 0.0, None))
            noise = rng.standard_normal(values.shape) * np.sqrt(np.minimum(noise_var, spread ** 2))
            out[1:, inside] = (values.mean(axis=1, keepdims=True) + signal * shared + noise).astype(out.dtype)
    return out


def keep_late_change(generated: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(C, Z, Y, X) ``generated`` whose phases after the first post-contrast one follow ``original``'s
    change from it outside ``mask``: ``gen_k = gen_1 + (orig_k - orig_1)`` for k >= 2 where ``mask`` is 0.

    The blend zone around a tumor mixes generated tissue into the original; the generated tissue's
    late change is not coherent with the original's, which drew a ring in the post2 - post1 map.
    Inside the mask nothing changes (a copy)."""
    out = np.array(generated, copy=True)
    if out.shape[0] < 3:
        return out
    outside = np.asarray(mask) == 0
    for k in range(2, out.shape[0]):
        out[k][outside] = generated[1][outside] + (original[k][outside] - original[1][outside])
    return out


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
