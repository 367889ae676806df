"""Per-channel standardization of the autoencoder's latents for the diffusion model (opt-in).

A global latent scale leaves each channel with its own offset and spread, while the denoiser's
noise is N(0, 1) in every channel. ``latent_normalization: "channel"`` in a diffusion config
standardizes every channel to mean 0 / std 1 over the training latents and stores the statistics
in the bundle.

``latent_normalization: "phase"`` (autoencoders with a linear path) first rotates the latent so that
its channels fall into groups by the first DCE phase they change through the linear decoder: the
channels that set the pre-contrast voxels, then those that leave the pre-contrast phase alone and
set the first post-contrast one, and so on (``phase_separating_rotation``). In the PCA-like latent
every channel mixes the phases, so a flat pre-contrast tumor needs the denoiser's errors in several
large channels to cancel; after the rotation an error in an enhancement channel cannot reach the
pre-contrast phase through the linear path (the non-linear decoder still sees every channel).
Channels are then standardized as with "channel". It separates something only where the latent
has more channels than a cell has voxels (16 channels at 2x: 8 + 8); with 8 channels at 2x the
first phase alone takes all of them, and training refuses it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SynBTError


@dataclass(frozen=True)
class ChannelStandardizer:
    """model latent = (rotation @ latent - shift) * scale, per cell; ``None`` fields mean identity.

    ``rotation`` (optional, orthogonal C x C) mixes the channels before the per-channel shift and scale."""

    shift: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    rotation: tuple[tuple[float, ...], ...] | None = None

    @classmethod
    def fit(cls, latents: Sequence[np.ndarray], rotation: np.ndarray | None = None) -> "ChannelStandardizer":
        """Mean and 1/std per channel over (C, ...) arrays (float64 sums, so large sets stay exact),
        after ``rotation`` (C x C orthogonal) when given."""
        if not latents:
            raise SynBTError("no latents to standardize")
        channels = latents[0].shape[0]
        matrix = None if rotation is None else _checked_rotation(rotation, channels)
        count, total, squares = 0, np.zeros(channels), np.zeros(channels)
        for latent in latents:
            flat = np.asarray(latent, dtype=np.float64).reshape(channels, -1)
            if matrix is not None:
                flat = matrix @ flat
            count += flat.shape[1]
            total += flat.sum(1)
            squares += (flat**2).sum(1)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        if not (std > 0).all():
            raise SynBTError("a latent channel is constant on the training data; cannot standardize it")
        rows = None if matrix is None else tuple(tuple(float(v) for v in row) for row in matrix)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in 1.0 / std), rows)

    @classmethod
    def from_config(cls, config: dict, channels: int) -> "ChannelStandardizer":
        """From a bundle config's latent_shift / latent_channel_scale (absent: identity); checked."""
        shift, scale = config.get("latent_shift"), config.get("latent_channel_scale")
        if (shift is None) != (scale is None):
            raise SynBTError("a bundle config needs both latent_shift and latent_channel_scale, or neither")
        if shift is None:
            return cls()
        values = np.asarray([shift, scale], dtype=np.float64) if len(shift) == len(scale) else None
        if values is None or values.shape != (2, channels):
            raise SynBTError(f"latent_shift and latent_channel_scale must have one value per latent channel ({channels})")
        if not np.isfinite(values).all() or not (values[1] > 0).all():
            raise SynBTError("latent_channel_scale must be positive and both lists finite")
        rotation = config.get("latent_rotation")
        if rotation is not None:
            rotation = tuple(tuple(float(v) for v in row) for row in _checked_rotation(rotation, channels))
        return cls(tuple(float(v) for v in shift), tuple(float(v) for v in scale), rotation)

    def to_config(self) -> dict:
        if self.shift is None:
            return {}
        config = {"latent_shift": list(self.shift), "latent_channel_scale": list(self.scale)}
        if self.rotation is not None:
            config["latent_rotation"] = [list(row) for row in self.rotation]
        return config

    def _rotate(self, latent, channel_axis: int, inverse: bool):
        if self.rotation is None:
            return latent
        if isinstance(latent, np.ndarray):
            matrix = np.asarray(self.rotation, dtype=latent.dtype)
            moved = np.moveaxis(latent, channel_axis, -1)
            return np.moveaxis(moved @ (matrix if inverse else matrix.T), -1, channel_axis)
        import torch

        matrix = torch.tensor(self.rotation, dtype=latent.dtype, device=latent.device)
        moved = torch.movedim(latent, channel_axis, -1)
        return torch.movedim(moved @ (matrix if inverse else matrix.T), -1, channel_axis)

    def _params(self, like, channel_axis: int):
        shape = [1] * like.ndim
        shape[channel_axis] = -1
        if isinstance(like, np.ndarray):
            return (np.asarray(self.shift, like.dtype).reshape(shape), np.asarray(self.scale, like.dtype).reshape(shape))
        import torch

        return (torch.tensor(self.shift, dtype=like.dtype, device=like.device).reshape(shape),
                torch.tensor(self.scale, dtype=like.dtype, device=like.device).reshape(shape))

    def standardize(self, latent, channel_axis: int = 1):
        """Autoencoder latent (already times the global latent scale) -> the denoiser's space."""
        if self.shift is None:
            return latent
        shift, scale = self._params(latent, channel_axis)
        return (self._rotate(latent, channel_axis, inverse=False) - shift) * scale

    def restore(self, latent, channel_axis: int = 1):
        """Inverse of standardize."""
        if self.shift is None:
            return latent
        shift, scale = self._params(latent, channel_axis)
        return self._rotate(latent / scale + shift, channel_axis, inverse=True)


def _checked_rotation(rotation, channels: int) -> np.ndarray:
    matrix = np.asarray(rotation, dtype=np.float64)
    if matrix.shape != (channels, channels) or not np.isfinite(matrix).all():
        raise SynBTError(f"latent_rotation must be a finite {channels} x {channels} matrix, got shape {matrix.shape}")
    if not np.allclose(matrix @ matrix.T, np.eye(channels), atol=1e-5):
        raise SynBTError("latent_rotation must be orthogonal (its rows orthonormal)")
    return matrix


def phase_separating_rotation(decoder_weight: np.ndarray, tolerance: float = 1e-6) -> np.ndarray:
    """Orthogonal (L, L) rotation of a latent whose rows are grouped by the first phase they change.

    ``decoder_weight`` is the linear decoder's (L, phases, f, f, f) transposed-convolution weight. Rows
    0..r0-1 span the latent directions that change the first phase's voxels (ordered by how much);
    the next rows span, among the directions that leave the first phase alone, those that change the
    second phase; and so on; the last group changes none of the phases before the last one."""
    weight = np.asarray(decoder_weight, dtype=np.float64)
    latent = weight.shape[0]
    remaining = np.eye(latent)  # orthonormal rows spanning what is not assigned yet
    rows = []
    for phase in range(weight.shape[1] - 1):
        effect = weight[:, phase].reshape(latent, -1).T @ remaining.T  # (voxels, remaining)
        _, singular, vt = np.linalg.svd(effect, full_matrices=True)
        rank = int((singular > tolerance * max(singular.max(initial=0.0), 1e-30)).sum())
        rows.append(vt[:rank] @ remaining)
        remaining = vt[rank:] @ remaining
        if not len(remaining):
            break
    rows.append(remaining)
    return np.concatenate(rows, axis=0)


def phase_group_sizes(decoder_weight: np.ndarray, rotation: np.ndarray, tolerance: float = 1e-6) -> list[int]:
    """How many rotated channels first change each phase (phase_separating_rotation's groups)."""
    weight = np.asarray(decoder_weight, dtype=np.float64)
    latent, phases = weight.shape[:2]
    # (phase, rotated channel): the largest change a unit of that channel makes to a voxel of that phase
    effect = np.stack([np.abs(weight[:, p].reshape(latent, -1).T @ np.asarray(rotation).T).max(0) for p in range(phases)])
    changes = effect > tolerance * max(effect.max(), 1e-30)
    first = np.where(changes.any(0), changes.argmax(0), phases - 1)
    return [int((first == p).sum()) for p in range(phases)]
