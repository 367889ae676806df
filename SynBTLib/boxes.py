"""Boxes around masks on a (Z, Y, X) grid: the clipped bounding box, the network-sized region of
interest (which may reach outside the volume), and reading and writing such boxes."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import SynBTError

Box = tuple[slice, slice, slice]


def _per_axis(value, name: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in value) if isinstance(value, (Sequence, np.ndarray)) else (int(value),) * 3
    if len(values) != 3:
        raise SynBTError(f"{name} needs one value per axis (z, y, x), got {value}")
    return values


def bounding_box(mask, margin=0) -> tuple[slice, ...]:
    """Slices of the non-zero voxels of `mask` grown by `margin` voxels (one int or one per axis),
    clipped to the array. The mask must not be empty."""
    mask = np.asarray(mask)
    coords = np.argwhere(mask > 0)
    if coords.size == 0:
        raise SynBTError("the mask is empty: it has no bounding box")
    margin = np.broadcast_to(np.asarray(margin, dtype=np.int64), (mask.ndim,))
    low = np.maximum(coords.min(axis=0) - margin, 0)
    high = np.minimum(coords.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high))


def roi_box(mask: np.ndarray, margin_vox, multiple) -> Box:
    """A (z, y, x) box of slices around the mask's non-zero voxels, extended by `margin_vox` on each side.

    Sizes are rounded up to a multiple of `multiple` (per axis or one int) and depend only on the
    mask's extent, never on the volume. The box is shifted to lie inside the volume; along an axis
    where the volume is smaller than the box, it is centred on the volume and reaches outside it
    (read it with `crop_padded`, write back with `box_overlap`).
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise SynBTError(f"mask must be a (Z, Y, X) array, got {mask.ndim} dimensions")
    nonzero = np.argwhere(mask > 0)
    if nonzero.size == 0:
        raise SynBTError("the tumor mask is empty; draw or place a tumor first")
    margins, multiples = _per_axis(margin_vox, "margin_vox"), _per_axis(multiple, "multiple")
    box = []
    for axis, dim in enumerate(mask.shape):
        low, high = int(nonzero[:, axis].min()), int(nonzero[:, axis].max()) + 1
        needed = high - low + 2 * margins[axis]
        size = -(-needed // multiples[axis]) * multiples[axis]
        start = low - margins[axis] - (size - needed) // 2
        start = min(max(start, 0), dim - size) if size <= dim else -((size - dim) // 2)
        box.append(slice(start, start + size))
    return tuple(box)


def box_overlap(box: Box, shape: Sequence[int]) -> tuple[Box, Box]:
    """(volume slices, box-local slices) of the part of `box` that lies inside a volume of `shape`."""
    volume, local = [], []
    for sl, dim in zip(box, shape[-3:]):
        start, stop = max(sl.start, 0), min(sl.stop, dim)
        volume.append(slice(start, stop))
        local.append(slice(start - sl.start, stop - sl.start))
    return tuple(volume), tuple(local)


def inside_volume(box: Box, shape) -> np.ndarray:
    """Boolean (Z, Y, X) map of the box's voxels that lie inside a volume of `shape`."""
    inside = np.zeros([sl.stop - sl.start for sl in box], dtype=bool)
    inside[box_overlap(box, shape)[1]] = True
    return inside


def crop_padded(array: np.ndarray, box: Box, mode: str = "edge") -> np.ndarray:
    """The box of an (..., Z, Y, X) array; parts outside the volume are padded (np.pad `mode`)."""
    volume, local = box_overlap(box, array.shape)
    crop = array[(..., *volume)]
    pad = [(0, 0)] * (array.ndim - 3) + [
        (loc.start, (sl.stop - sl.start) - loc.stop) for sl, loc in zip(box, local)
    ]
    if any(before or after for before, after in pad):
        crop = np.pad(crop, pad, mode=mode)
    return np.ascontiguousarray(crop)


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], mode: str = "edge") -> np.ndarray:
    """The (..., Z, Y, X) box at ``start`` of ``size``; parts outside the volume are padded (np.pad mode)."""
    box = tuple(slice(int(s), int(s) + int(n)) for s, n in zip(start, size))
    return crop_padded(array, box, mode=mode)
