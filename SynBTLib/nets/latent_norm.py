"""Per-channel standardization of the autoencoder's latents for the diffusion model (opt-in).

A global latent scale leaves each channel with its own offset and spread; with a lightly
KL-regularized autoencoder these differ a lot (phantom autoencoder at kl_weight 1e-7: channel
means -1.0..+1.9 and stds 0.3..1.6 after the global scale), while the denoiser's noise is
N(0, 1) in every channel. ``latent_normalization: "channel"`` in a diffusion config standardizes
every channel to mean 0 / std 1 over the training latents and stores the statistics in the
bundle. On that autoencoder it did not cure the denoiser's black/white blobs (AUC 1.0 either
way): the latent itself was the problem, not its scale.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SynBTError


@dataclass(frozen=True)
class ChannelStandardizer:
    """model latent = (latent - shift) * scale, per channel; ``None`` fields mean identity."""

    shift: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None

    @classmethod
    def fit(cls, latents: Sequence[np.ndarray]) -> "ChannelStandardizer":
        """Mean and 1/std per channel over (C, ...) arrays (float64 sums, so large sets stay exact)."""
        if not latents:
            raise SynBTError("no latents to standardize")
        channels = latents[0].shape[0]
        count, total, squares = 0, np.zeros(channels), np.zeros(channels)
        for latent in latents:
            flat = np.asarray(latent, dtype=np.float64).reshape(channels, -1)
            count += flat.shape[1]
            total += flat.sum(1)
            squares += (flat**2).sum(1)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        if not (std > 0).all():
            raise SynBTError("a latent channel is constant on the training data; cannot standardize it")
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in 1.0 / std))

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
        return cls(tuple(float(v) for v in shift), tuple(float(v) for v in scale))

    def to_config(self) -> dict:
        return {} if self.shift is None else {"latent_shift": list(self.shift), "latent_channel_scale": list(self.scale)}

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
        return (latent - shift) * scale

    def restore(self, latent, channel_axis: int = 1):
        """Inverse of standardize."""
        if self.shift is None:
            return latent
        shift, scale = self._params(latent, channel_axis)
        return latent / scale + shift
