"""The denoiser's inpainting conditions: the tissue around the tumor with the generated region
erased, and the tumor mask (and necrotic core) carried onto the latent grid."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SynBTError


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

    The generated region then takes in the tumor's rim: an acquired tumor's enhancement spreads a
    few mm past its outline (partial volume), so a context erased only inside the outline still
    shows how bright the tumor was."""
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
