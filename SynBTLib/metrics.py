"""Segmentation and image-similarity metrics (MONAI's where it has them) and tumor features.

Masks are (Z, Y, X) arrays, nonzero = foreground; spacing is (x, y, z) millimetres as in
`Geometry.spacing` (a Geometry may be passed instead). Empty-mask conventions:

=====================  ======  =======
pred / truth           dice    hd95
=====================  ======  =======
both empty             1.0     0.0
exactly one empty      0.0     inf
=====================  ======  =======
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy import ndimage
import torch

from .boxes import bounding_box
from .case import Case, Geometry
from .errors import SynBTError
from .kinetics import classify_curve

GLCM_LEVELS = 16  # grey levels of the quantized enhancement map for the GLCM-like texture features


def _as_mask(mask, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise SynBTError(f"{what} must be a 3D (Z, Y, X) mask, got {mask.ndim} dimensions")
    return mask != 0


def _mask_pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_mask(pred, "prediction"), _as_mask(truth, "truth")
    if p.shape != t.shape:
        raise SynBTError(f"prediction of shape {p.shape} and truth of shape {t.shape} are not on the same grid")
    return p, t


def _spacing_zyx(spacing) -> np.ndarray:
    spacing = spacing.spacing if isinstance(spacing, Geometry) else spacing
    values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if values.shape != (3,) or np.any(values <= 0):
        raise SynBTError(f"spacing must be three positive values (x, y, z) in mm, got {spacing}")
    return values[::-1]


def _batch(mask: np.ndarray) -> torch.Tensor:
    """(Z, Y, X) bool -> (1, 1, Z, Y, X) float tensor, MONAI's batch-first, channel-first layout."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float64))[None, None]


def dice(pred, truth) -> float:
    """Dice overlap of two masks (monai.metrics.compute_dice); 1.0 when both are empty, 0.0 when one is."""
    from monai.metrics import compute_dice

    p, t = _mask_pair(pred, truth)
    if not p.any() or not t.any():
        return 1.0 if not (p.any() or t.any()) else 0.0
    return float(compute_dice(_batch(p), _batch(t), include_background=True, ignore_empty=False))


def hd95(pred, truth, spacing: Sequence[float] | Geometry) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm between the surfaces of two masks.

    monai.metrics.compute_hausdorff_distance(percentile=95) with the voxel spacing; surfaces are
    the mask voxels removed by one binary erosion. Both empty -> 0.0; exactly one empty -> inf.
    """
    from monai.metrics import compute_hausdorff_distance

    p, t = _mask_pair(pred, truth)
    spacing_zyx = _spacing_zyx(spacing)
    if not p.any() or not t.any():
        return 0.0 if not (p.any() or t.any()) else float("inf")
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(
            _batch(p), _batch(t), include_background=True, percentile=95, spacing=spacing_zyx.tolist()
        )
    return float(value)


def volume_ml(mask, spacing: Sequence[float] | Geometry) -> float:
    """Volume of a mask in millilitres."""
    return float(_as_mask(mask, "mask").sum() * np.prod(_spacing_zyx(spacing)) / 1000.0)


def volume_error_ml(pred, truth, spacing: Sequence[float] | Geometry) -> float:
    """Signed volume error (prediction minus truth) in millilitres."""
    p, t = _mask_pair(pred, truth)
    return volume_ml(p, spacing) - volume_ml(t, spacing)


def _image_pair(a, b, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise SynBTError(f"images of shapes {a.shape} and {b.shape} cannot be compared")
    region = np.ones(a.shape, dtype=bool) if mask is None else np.asarray(mask) != 0
    if region.shape != a.shape:
        raise SynBTError(f"mask of shape {region.shape} does not match the images of shape {a.shape}")
    if not region.any():
        raise SynBTError("the comparison mask is empty")
    return a, b, region


def _data_range(reference: np.ndarray, region: np.ndarray, data_range: float | None) -> float:
    if data_range is None:
        data_range = float(reference[region].max() - reference[region].min())
    if not data_range > 0:
        raise SynBTError(f"data_range must be positive, got {data_range:g} (constant reference image?)")
    return float(data_range)


def psnr(a, b, mask=None, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio (dB) of image `a` against reference `b`, over `mask` if given.

    data_range defaults to the reference's range inside the mask; identical images give inf.
    """
    from monai.metrics import PSNRMetric

    a, b, region = _image_pair(a, b, mask)
    data_range = _data_range(b, region, data_range)
    # MONAI's PSNR averages over every non-batch axis: a (1, 1, N) vector of the masked voxels is a masked PSNR.
    vector = lambda x: torch.from_numpy(x[region])[None, None]  # noqa: E731
    return float(PSNRMetric(max_val=data_range)(vector(a), vector(b)).item())


def ssim(a, b, mask=None, data_range: float | None = None, win_size: int = 7) -> float:
    """Mean structural similarity of two 3D images (MONAI's Gaussian-window SSIM), over `mask` if given.

    The SSIM map is only defined where the whole window fits in the image; the mean is taken over
    the mask voxels there. data_range defaults to the reference `b`'s range inside the mask.
    """
    from monai.metrics.regression import compute_ssim_and_cs

    a, b, region = _image_pair(a, b, mask)
    if a.ndim != 3:
        raise SynBTError(f"ssim needs 3D (Z, Y, X) images, got {a.ndim} dimensions")
    if min(a.shape) < win_size:
        raise SynBTError(f"images of shape {a.shape} are smaller than the {win_size}-voxel SSIM window")
    data_range = _data_range(b, region, data_range)
    ssim_map, _ = compute_ssim_and_cs(
        torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], spatial_dims=3,
        kernel_size=[win_size] * 3, kernel_sigma=[1.5] * 3, data_range=data_range,
    )
    half = (win_size - 1) // 2
    valid = region[tuple(slice(half, n - half) for n in region.shape)]
    if not valid.any():
        raise SynBTError(f"the comparison mask lies within {half} voxels of the image border, where SSIM is undefined")
    return float(ssim_map[0, 0].numpy()[valid].mean())


# ------------------------------------------------------------------------------- tumor features


def _glcm_texture(values: np.ndarray, inside: np.ndarray) -> tuple[float, float]:
    """GLCM-like contrast and homogeneity of `values` inside the mask, offset 1 voxel along each axis.

    Values are quantized to GLCM_LEVELS grey levels over their range inside the mask; the statistics
    average over every pair of face-neighbouring voxels that are both inside the mask.
    """
    low, high = float(values[inside].min()), float(values[inside].max())
    if high <= low:
        return 0.0, 1.0
    levels = np.clip(((values - low) / (high - low) * GLCM_LEVELS).astype(int), 0, GLCM_LEVELS - 1)
    differences = []
    for axis in range(3):
        n = levels.shape[axis]
        head, tail = range(n - 1), range(1, n)
        both = np.take(inside, head, axis=axis) & np.take(inside, tail, axis=axis)
        step = np.take(levels, head, axis=axis) - np.take(levels, tail, axis=axis)
        differences.append(step[both].astype(np.float64))
    diff = np.concatenate(differences)
    if diff.size == 0:
        return 0.0, 1.0
    return float(np.mean(diff**2)), float(np.mean(1.0 / (1.0 + diff**2)))


def tumor_features(case: Case, mask) -> dict:
    """Intensity, kinetic and texture statistics of the tumor `mask` in `case`, for the realism study.

    Per phase: mean, std, median, 10th/90th percentiles inside the mask. Kinetics (phase 0 is
    pre-contrast): relative enhancement (S_k - S_0) / S_0 of the mean signal, its peak, wash-in
    slope (phase 0 -> 1, per phase interval), wash-out slope (phase 1 -> last, per interval) and
    the BI-RADS curve type. Texture on the first subtraction image (phase 1 - phase 0): gradient
    magnitude (per mm) mean/std over the voxels whose neighbours all lie inside the mask (so the
    surrounding tissue does not enter; all mask voxels when none is that deep) and GLCM-like
    contrast/homogeneity.
    """
    inside = _as_mask(mask, "tumor mask")
    if inside.shape != case.shape:
        raise SynBTError(f"tumor mask of shape {inside.shape} does not match the case grid {case.shape}")
    if not inside.any():
        raise SynBTError("the tumor mask is empty")
    box = bounding_box(inside, 1)
    inside_box = inside[box]
    phases = case.phases[(slice(None), *box)].astype(np.float64)

    per_phase = []
    for name, phase in zip(case.phase_names, phases):
        values = phase[inside_box]
        p10, median, p90 = np.percentile(values, [10, 50, 90])
        per_phase.append({
            "phase": name, "mean": float(values.mean()), "std": float(values.std()),
            "median": float(median), "p10": float(p10), "p90": float(p90),
        })
    means = [entry["mean"] for entry in per_phase]
    baseline = means[0]
    relative = [(m - baseline) / abs(baseline) if baseline else float("nan") for m in means]
    num = len(relative)

    subtraction = phases[1] - phases[0]
    spacing_zyx = case.geometry.spacing[::-1]
    # edge padding keeps np.gradient defined on boxes one voxel thick
    padded = np.pad(subtraction, 1, mode="edge")
    interior = ndimage.binary_erosion(inside_box, border_value=0)
    gradient = np.linalg.norm(np.stack(np.gradient(padded, *spacing_zyx)), axis=0)[1:-1, 1:-1, 1:-1]
    gradient = gradient[interior if interior.any() else inside_box]
    contrast, homogeneity = _glcm_texture(subtraction, inside_box)
    return {
        "voxels": int(inside.sum()),
        "volume_ml": volume_ml(inside, case.geometry),
        "phases": per_phase,
        "relative_enhancement": relative,
        "peak_enhancement": float(np.max(relative)),
        "time_to_peak_phase": int(np.argmax(relative)),
        "wash_in_slope": relative[1] - relative[0],
        "wash_out_slope": (relative[-1] - relative[1]) / (num - 2) if num >= 3 else None,
        "curve_type": classify_curve(means) if len(means) >= 3 else None,
        "gradient_mean": float(gradient.mean()),
        "gradient_std": float(gradient.std()),
        "glcm_contrast": contrast,
        "glcm_homogeneity": homogeneity,
    }
