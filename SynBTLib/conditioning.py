"""Inpainting conditions and the region of interest around a tumor mask.

The diffusion model sees the tissue around the tumor with the tumor region erased, and the mask
downsampled to the latent grid. Only a box around the mask (plus a context margin) is processed,
so the cost grows with the tumor, not with the field of view.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SynBTError

Box = tuple[slice, slice, slice]


def erase_mask(image, mask):
    """The image with the masked region set to 0 (normalized units); a new array/tensor.

    image (..., C, Z, Y, X) and mask broadcastable to it, e.g. (B, 1, Z, Y, X) or (Z, Y, X);
    works for numpy arrays and torch tensors alike.
    """
    if isinstance(image, torch.Tensor):
        return torch.where(torch.as_tensor(mask, device=image.device) > 0, torch.zeros((), dtype=image.dtype), image)
    return np.where(np.asarray(mask) > 0, np.zeros((), dtype=image.dtype), image)


def mask_to_latent(mask: torch.Tensor, compression: int) -> torch.Tensor:
    """(B, 1, Z, Y, X) mask -> (B, 1, Z/c, Y/c, X/c) float in {0, 1}: a latent cell is 1 if any voxel in it is tumor."""
    if mask.ndim != 5 or mask.shape[1] != 1:
        raise SynBTError(f"mask must be (B, 1, Z, Y, X), got {tuple(mask.shape)}")
    pooled = F.max_pool3d((mask > 0).float(), kernel_size=compression, stride=compression, ceil_mode=True)
    return (pooled > 0).float()


def dilate_latent_mask(mask_latent: torch.Tensor, cells: int) -> torch.Tensor:
    """(B, 1, z, y, x) latent mask grown by `cells` latent cells in every direction (a cube), 0/1 float.

    The generated region then takes in the tumor's rim: in an acquired image a tumor's enhancement
    spreads a few mm past its outline (partial volume, the point-spread of the scan), so a context
    erased only inside the outline still shows how bright the tumor was, and a denoiser trained on
    it makes dim tumors in tumor-free tissue (measured: 0-2 mm outside the phantom tumors, +30-80 %
    post-contrast signal)."""
    cells = int(cells)
    if cells < 0:
        raise SynBTError(f"mask dilation must be 0 or more latent cells, got {cells}")
    if cells == 0:
        return mask_latent
    return F.max_pool3d(mask_latent.float(), kernel_size=2 * cells + 1, stride=1, padding=cells)


def latent_mask_to_voxels(mask_latent: torch.Tensor, compression: int, shape) -> torch.Tensor:
    """(B, 1, z, y, x) latent mask -> (B, 1, *shape) voxel mask: every voxel of a marked cell."""
    up = mask_latent
    for axis in (2, 3, 4):
        up = up.repeat_interleave(compression, dim=axis)
    return up[..., : shape[0], : shape[1], : shape[2]]


def generation_region(mask: torch.Tensor, compression: int, dilation_cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent mask the denoiser generates, voxel mask erased from its context) for a (B, 1, Z, Y, X) tumor mask.

    Without dilation the context is erased exactly under the tumor (what older bundles were trained on)."""
    latent = dilate_latent_mask(mask_to_latent(mask, compression), dilation_cells)
    if dilation_cells == 0:
        return latent, (mask > 0).float()
    return latent, latent_mask_to_voxels(latent, compression, mask.shape[2:])


def voxel_outline_channels(mask: torch.Tensor, compression: int) -> torch.Tensor:
    """(B, 1, Z, Y, X) mask -> (B, c**3, Z/c, Y/c, X/c) 0/1 float: every latent cell's c x c x c voxels
    as channels (a 3D space-to-depth), so a denoiser at latent resolution sees the tumor's outline to
    the voxel. Sizes that are not multiples of c are padded with 0 at their end."""
    if mask.ndim != 5 or mask.shape[1] != 1:
        raise SynBTError(f"mask must be (B, 1, Z, Y, X), got {tuple(mask.shape)}")
    c = int(compression)
    pad = [0, (-mask.shape[4]) % c, 0, (-mask.shape[3]) % c, 0, (-mask.shape[2]) % c]
    voxels = F.pad((mask > 0).float(), pad)
    b, _, z, y, x = voxels.shape
    cells = voxels.reshape(b, z // c, c, y // c, c, x // c, c).permute(0, 2, 4, 6, 1, 3, 5)
    return cells.reshape(b, c**3, z // c, y // c, x // c)


MASK_ENCODINGS = ("cells", "voxels")


def mask_condition_channels(encoding: str, compression: int, necrosis: bool = False) -> int:
    """Channels of the denoiser's mask condition: the generated region, plus the tumor's voxel outline
    for "voxels", plus the necrotic core's voxels with ``necrosis``."""
    if encoding not in MASK_ENCODINGS:
        raise SynBTError(f"mask_encoding must be one of {MASK_ENCODINGS}, got {encoding!r}")
    cell = int(compression) ** 3
    return (1 if encoding == "cells" else 1 + cell) + (cell if necrosis else 0)


def denoiser_condition(mask: torch.Tensor, compression: int, dilation_cells: int, encoding: str = "cells",
                       core: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask condition for the denoiser, voxel mask erased from its context) for a (B, 1, Z, Y, X) tumor mask.

    Channel 0 of the condition is the latent region that is generated (generation_region); with
    "voxels" the tumor's outline at voxel resolution follows (voxel_outline_channels). With "cells"
    the denoiser knows only which latent cells to fill (with a dilation, a blocky region around the
    tumor), not where in them the tumor's edge lies, while the mask the result is pasted under is
    the voxel outline. With ``core`` ((B, 1, Z, Y, X), for a denoiser trained with necrosis) the
    necrotic core's voxels follow the same way (all 0: a tumor without one)."""
    region, erased = generation_region(mask, compression, dilation_cells)
    mask_condition_channels(encoding, compression)
    parts = [region] if encoding == "cells" else [region, voxel_outline_channels(mask, compression)]
    if core is not None:
        if core.shape != mask.shape:
            raise SynBTError(f"the necrotic core {tuple(core.shape)} must have the tumor mask's shape {tuple(mask.shape)}")
        parts.append(voxel_outline_channels(core * (mask > 0), compression))
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)), erased


def _per_axis(value, name: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in value) if isinstance(value, Sequence) else (int(value),) * 3
    if len(values) != 3:
        raise SynBTError(f"{name} needs one value per axis (z, y, x), got {value}")
    return values


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
