"""Intensity normalization, body mask and breast-tissue masks of a DCE-MRI case.

Anatomy assumptions (the phantom's and the usual axial breast protocol): arrays are
(Z, Y, X) with Y running anterior -> posterior, so the breasts lie at low Y and the chest
wall and thorax at higher Y; phase 0 is the pre-contrast T1 image without fat saturation,
where fat is bright, fibroglandular tissue and muscle are intermediate and lung is dark.
Oblique grids are handled in index space with the physical spacing of each axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .case import Case, Geometry, check_finite
from .errors import SynBTError

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
_MAX_SAMPLES = 4_000_000  # voxels pooled for the percentiles (deterministic stride beyond)


@dataclass(frozen=True)
class Normalization:
    """One affine map for all phases: x -> (x - low) / (high - low), tissue roughly in [0, 1]."""

    low: float
    high: float

    def __post_init__(self):
        if not (np.isfinite(self.low) and np.isfinite(self.high)) or self.high <= self.low:
            raise SynBTError(f"invalid normalization: low={self.low} must be finite and below high={self.high}")

    @property
    def zero(self) -> float:
        """The scanner's zero signal in normalized units (where ratios of signals are taken from)."""
        return float(normalize(np.zeros(1), self)[0])

    def to_dict(self) -> dict:
        return {"low": float(self.low), "high": float(self.high)}

    @classmethod
    def from_dict(cls, data: dict) -> "Normalization":
        try:
            return cls(low=float(data["low"]), high=float(data["high"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SynBTError(f"a normalization needs numeric 'low' and 'high', got {data!r}") from exc


_SUBSAMPLE_ABOVE_VOXELS = 1 << 23  # 8.4 M voxels: 256x256x128 and larger are subsampled


def fit_normalization(case: Case) -> Normalization:
    """Robust range of the pooled body voxels of all phases (0.5th-99.5th percentiles).

    One map for all phases keeps the enhancement between phases. Refuses a constant image.
    Large volumes are measured on every other voxel along each axis: the percentiles do not
    change measurably, and the body mask then costs an eighth (it was the one step of a synthesis
    whose cost grew with the field of view).
    """
    check_finite(case.phases, "the case")
    if np.prod(case.shape) > _SUBSAMPLE_ABOVE_VOXELS:
        geometry = case.geometry
        sub = Geometry(size=tuple(-(-n // 2) for n in geometry.size), spacing=tuple(2 * v for v in geometry.spacing),
                       origin=geometry.origin, direction=geometry.direction)
        case = Case(np.ascontiguousarray(case.phases[:, ::2, ::2, ::2]), sub, list(case.phase_names))
    body = body_mask(case)
    pooled = case.phases[:, body]
    stride = max(1, pooled.size // _MAX_SAMPLES)
    low, high = np.percentile(pooled.ravel()[::stride].astype(np.float64), [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not high > low:
        raise SynBTError(f"the image is constant inside the body (value {low:g}); cannot normalize it")
    return Normalization(float(low), float(high))


def normalize(phases: np.ndarray, norm: Normalization) -> np.ndarray:
    """Phases in normalized units (float32), computed in float64."""
    x = np.asarray(phases, dtype=np.float64)
    return ((x - norm.low) / (norm.high - norm.low)).astype(np.float32)


def denormalize(x: np.ndarray, norm: Normalization) -> np.ndarray:
    """The exact inverse of normalize (up to float32 rounding), as float32."""
    x = np.asarray(x, dtype=np.float64)
    return (x * (norm.high - norm.low) + norm.low).astype(np.float32)


_COUNT_CHUNK = 1 << 22  # labels counted per chunk: bincount's int64 copy of a whole volume's labels is large


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    flat, sizes = labels.ravel(), np.zeros(count + 1, dtype=np.int64)
    for start in range(0, flat.size, _COUNT_CHUNK):
        sizes += np.bincount(flat[start:start + _COUNT_CHUNK], minlength=count + 1)
    sizes[0] = 0
    return labels == int(sizes.argmax())


_IN_SLICE = np.zeros((3, 3, 3), dtype=bool)
_IN_SLICE[1] = ndimage.generate_binary_structure(2, 1)  # 4-connected within an axial slice, as binary_fill_holes


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """ndimage.binary_fill_holes of each axial slice, all slices labelled at once: background
    connected within its slice to the slice's edge stays background, the rest is filled."""
    background, count = ndimage.label(~np.asarray(mask, dtype=bool), structure=_IN_SLICE)
    at_edge = np.zeros(count + 1, dtype=bool)
    for side in (background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1]):
        at_edge[side] = True
    at_edge[0] = False  # label 0: the mask itself
    return ~at_edge[background]


def _otsu_threshold(values: np.ndarray) -> float:
    image = sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.float32).reshape(1, 1, -1))
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetNumberOfHistogramBins(256)
    otsu.Execute(image)
    return float(otsu.GetThreshold())


def body_mask(case: Case) -> np.ndarray:
    """Body vs air (bool (Z,Y,X)): Otsu on the log of the maximum over phases, largest component,
    holes filled per axial slice.

    The maximum over phases makes both fat (bright before contrast without fat saturation) and
    enhancing tissue count as body; dark structures inside (lung) are recovered by the filling.
    """
    return _body_of_signal(case.phases.max(axis=0))


def _body_of_signal(signal: np.ndarray) -> np.ndarray:
    stride = max(1, signal.size // _MAX_SAMPLES)
    if float(signal.max()) <= float(signal.min()):
        raise SynBTError("the image is constant; there is no body to find")
    # on a log scale, so that dim tissue (fat under fat suppression) stays above air
    log_signal = np.log1p(np.maximum(signal, 0.0) - min(float(signal.min()), 0.0))
    threshold = _otsu_threshold(log_signal.ravel()[::stride])
    body = _fill_holes_per_slice(_largest_component(log_signal > threshold))
    if not body.any():
        raise SynBTError("no body found in the image (nothing above the Otsu threshold)")
    return body


@dataclass
class BreastMasks:
    """Boolean (Z,Y,X) masks: the body, the breast tissue, and the breast split into FGT and fat."""

    body: np.ndarray
    breast: np.ndarray
    fibroglandular: np.ndarray
    fat: np.ndarray


def _depth_mm(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """Depth (mm) of each voxel of mask below its surface (voxel centres lie half a voxel inside)."""
    return ndimage.distance_transform_edt(mask, sampling=spacing_zyx) - 0.5 * min(spacing_zyx)


def _fat_is_bright(log_pre: np.ndarray, post: np.ndarray, tissue: np.ndarray, threshold: float) -> bool:
    """Which Otsu class of the (log) pre-contrast image is fat: the one that enhances less."""
    bright = tissue & (log_pre > threshold)
    dark = tissue & (log_pre <= threshold)
    if not bright.any() or not dark.any():
        return False
    pre = np.expm1(log_pre)
    enhancement = (post - pre) / np.maximum(np.abs(pre), 1e-6)
    return float(np.median(enhancement[bright])) < float(np.median(enhancement[dark]))


def _chest_wall_front(solid: np.ndarray, spacing_zyx, smooth_mm: float) -> np.ndarray:
    """Per (z, x) column, the first row (Y index) of the chest wall; the row count where there is none.

    `solid` is the body tissue, away from the skin, that is dark (lung) or enhances like
    muscle (pectoralis, intercostal muscle, heart, mediastinum). Its largest connected part, after an opening that cuts thin bridges, is the
    chest wall with the thorax behind it. Its front is smoothed with a median filter so that
    fibroglandular tissue touching the muscle here and there does not pull it forward.
    """
    opened = ndimage.binary_opening(solid, structure=ndimage.generate_binary_structure(3, 1))
    wall = _largest_component(opened)
    if not wall.any():
        raise SynBTError("no chest wall found: no muscle-like or dark tissue inside the body")
    ny = solid.shape[1]
    front = np.where(wall.any(axis=1), wall.argmax(axis=1), ny).astype(np.float64)  # (Z, X)
    size = [max(1, int(round(smooth_mm / spacing_zyx[a])) | 1) for a in (0, 2)]
    return ndimage.median_filter(front, size=size, mode="nearest")


def breast_tissue_mask(
    case: Case, skin_mm: float = 2.5, subcutaneous_mm: float = 16.0, smooth_mm: float = 20.0
) -> BreastMasks:
    """Breast tissue of a case, found from the image (no labels needed).

    breast = body, minus a skin rim of skin_mm, minus the chest wall and everything posterior
    to it, minus the thin subcutaneous fat layer over the rest of the torso: a voxel counts
    as breast only where the tissue between the skin and the chest wall through it is thicker
    than subcutaneous_mm (depth below the skin + distance to the chest wall).

    The chest wall is found from the image: body tissue that is dark before contrast (lung)
    or enhances like muscle (Otsu split of the relative enhancement, last phase vs phase 0)
    forms, away from the skin, one large connected block (pectoralis, ribs, thorax); its
    front per (z, x) column, median-filtered over smooth_mm, bounds the breast posteriorly.
    Fat does not enhance, so this holds with and without fat suppression. Inside the breast
    an Otsu split of log phase 0 gives fibroglandular tissue vs fat; the class that enhances
    less is fat. subcutaneous_mm (16) suits a subcutaneous layer up to ~14 mm thick.
    """
    check_finite(case.phases, "the case")
    spacing_zyx = case.geometry.spacing[::-1]
    body = body_mask(case)
    pre, post = case.phases[0].astype(np.float64), case.phases[-1].astype(np.float64)

    log_pre = np.log1p(np.maximum(pre, 0.0))  # MR intensities are skewed: thresholds work better on a log scale
    tissue = body & (log_pre > _otsu_threshold(log_pre[body]))
    # fat does not enhance while muscle does, whatever the fat suppression and the bias field;
    # clipped so that the strongly enhancing heart and vessels do not set the split
    enhancement = ndimage.median_filter((post - pre) / np.maximum(pre, np.expm1(log_pre[tissue].min())), size=3)
    non_enhancing = tissue & (enhancement <= _otsu_threshold(np.clip(enhancement[tissue], -0.5, 1.0)))
    depth = _depth_mm(body, spacing_zyx)
    front = _chest_wall_front(body & ~non_enhancing & (depth > skin_mm + max(spacing_zyx)), spacing_zyx, smooth_mm)
    rows = np.arange(body.shape[1])[None, :, None]
    anterior = body & (rows < front[:, None, :])

    to_wall = ndimage.distance_transform_edt(rows < front[:, None, :], sampling=spacing_zyx)
    breast = anterior & (depth > skin_mm) & (depth + to_wall > subcutaneous_mm)
    breast = _fill_holes_per_slice(breast) & anterior & (depth > skin_mm)

    if breast.sum() < 2:
        raise SynBTError("no breast tissue found in front of the chest wall")
    fgt_split = _otsu_threshold(log_pre[breast])
    fat_bright = _fat_is_bright(log_pre, post, breast, fgt_split)
    fibroglandular = breast & ((log_pre <= fgt_split) if fat_bright else (log_pre > fgt_split))
    return BreastMasks(body=body, breast=breast, fibroglandular=fibroglandular, fat=breast & ~fibroglandular)


BODY_CHECK_MM = 2.0  # block size (mm) a large case's body is judged on by check_mask_in_body


def sampled_body_mask(case: Case, block_mm: float = BODY_CHECK_MM) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(body, factors): body_mask of the case sampled at the centre voxel of each block of about
    block_mm (factors whole voxels along (z, y, x)); body[k] stands for the case's
    voxels factors*k ... factors*(k+1)-1 (voxels of a last, incomplete block without a centre: the
    block before it). Factors (1, 1, 1), e.g. for block_mm 0, give body_mask itself.

    A body is tens of centimetres across: its boundary moves by at most half a block, and the cost
    (the labelling and hole filling of the whole volume) falls with the number of blocks."""
    factors = tuple(max(1, int(block_mm // s)) for s in case.geometry.spacing[::-1])  # as shapes.coarse_factors
    if factors == (1, 1, 1):
        return body_mask(case), factors
    fz, fy, fx = factors
    return _body_of_signal(case.phases[:, fz // 2::fz, fy // 2::fy, fx // 2::fx].max(axis=0)), factors


def check_mask_in_body(case: Case, mask: np.ndarray, what: str = "the tumor mask", max_outside: float = 0.5,
                       block_mm: float | None = None) -> None:
    """Refuse a tumor mask that lies mostly in air (outside the body found by preprocess.body_mask).

    Such a tumor would be painted into the background. Only body vs air is judged: the breast
    tissue heuristics are not reliable enough on every scan to refuse a user's own mask on them.
    A constant image (no body to find) is left to the synthesizer. The body is found on blocks of
    block_mm (sampled_body_mask; default: BODY_CHECK_MM for a case over 8.4 M voxels, whose full
    resolution mask cost seconds, else the full resolution).
    """
    voxels = np.asarray(mask) > 0
    index = np.nonzero(voxels)
    if not len(index[0]):
        return
    if block_mm is None:
        block_mm = BODY_CHECK_MM if np.prod(case.shape) > _SUBSAMPLE_ABOVE_VOXELS else 0.0
    try:
        body, factors = sampled_body_mask(case, block_mm)
    except SynBTError:
        return
    inside = body[tuple(np.minimum(i // f, n - 1) for i, f, n in zip(index, factors, body.shape))]
    outside = 1.0 - float(np.count_nonzero(inside)) / float(inside.size)
    if outside > max_outside:
        raise SynBTError(
            f"{what} lies {100 * outside:.0f}% outside the body (in the air around it); "
            "a tumor there would be painted into the background: place the mask inside the breast"
        )
