"""Mask-conditioned latent denoiser: a MONAI DiffusionModelUNet that predicts the noise (epsilon)
or the velocity v (the scheduler config says which).

Conditioning is by channel concatenation, as in latent inpainting: [noisy latent, latent of the
image with the tumor region erased, mask condition at latent resolution (the generated region,
optionally with the tumor's voxel outline as extra channels)]. Classifier-free guidance
is supported by training with condition dropout (``drop_condition``) to a null condition of zeros.

Optionally (``kinetic_classes``) the denoiser also takes the tumor's BI-RADS kinetic curve type as a
class label (MONAI's class embedding, added to the timestep embedding): 0 = unspecified, then
persistent, plateau, washout (``KINETIC_CLASSES``). A tumor's curve type is a property of the
whole tumor that its surroundings do not tell; given as a label, it need not be guessed from noise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from ..errors import SynBTError
from ..kinetics import CURVE_TYPES
from .config import config_from_dict

KINETIC_CLASSES = ("unspecified", *CURVE_TYPES)  # index 0 is the null label


@dataclass
class DenoiserConfig:
    """Denoiser architecture, stored in a bundle's config.json."""

    latent_channels: int = 4
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 16
    norm_num_groups: int = 8
    # channels of the mask condition: 1 = the generated latent region (older bundles); 1 + c**3 adds
    # the tumor's voxel outline (conditioning.denoiser_condition, "mask_encoding": "voxels"); with
    # necrosis c**3 more (so the count alone does not tell the encoding: the bundle records it)
    mask_channels: int = 1
    # a class label for the tumor's kinetic curve type (KINETIC_CLASSES); False in older bundles
    kinetic_classes: bool = False
    # the mask condition ends with the necrotic core's voxels (c**3 channels, counted in mask_channels;
    # necrosis.py); False in older bundles
    necrosis: bool = False

    def __post_init__(self):
        self.mask_channels = int(self.mask_channels)
        if not isinstance(self.necrosis, bool):
            raise SynBTError(f"denoiser necrosis must be true or false, got {self.necrosis!r}")
        if self.mask_channels < 1:
            raise SynBTError(f"denoiser mask_channels must be 1 or more, got {self.mask_channels}")
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if len(self.channels) != len(self.attention_levels):
            raise SynBTError(f"denoiser has {len(self.channels)} levels but {len(self.attention_levels)} attention flags")
        if any(c % self.norm_num_groups for c in self.channels):
            raise SynBTError(f"denoiser channels {self.channels} must be multiples of norm_num_groups={self.norm_num_groups}")

    @property
    def in_channels(self) -> int:
        """Noisy latent + erased-context latent + the mask condition."""
        return 2 * self.latent_channels + self.mask_channels

    @property
    def downsampling(self) -> int:
        """Latent sizes must be multiples of this (one halving per UNet level below the first)."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channels"] = list(self.channels)
        data["attention_levels"] = list(self.attention_levels)
        for key, default in (("mask_channels", 1), ("kinetic_classes", False), ("necrosis", False)):
            if data[key] == default:  # older SynBTLib versions then still read the config
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "DenoiserConfig":
        return config_from_dict(cls, data, "denoiser")


class MaskConditionedDenoiser(nn.Module):
    """Predicts the noise in a latent, given the erased-context latent and the latent-resolution mask."""

    def __init__(self, config: DenoiserConfig | None = None):
        super().__init__()
        self.config = config or DenoiserConfig()
        self.unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=self.config.in_channels,
            out_channels=self.config.latent_channels,
            num_res_blocks=self.config.num_res_blocks,
            channels=self.config.channels,
            attention_levels=self.config.attention_levels,
            norm_num_groups=self.config.norm_num_groups,
            num_head_channels=self.config.num_head_channels,
            num_class_embeds=len(KINETIC_CLASSES) if self.config.kinetic_classes else None,
        )

    def forward(
        self,
        noisy_latent: torch.Tensor,
        context_latent: torch.Tensor,
        mask_latent: torch.Tensor,
        timesteps: torch.Tensor | int,
        kinetics: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """(B, L, z, y, x) noisy latent, (B, L, z, y, x) context, (B, M, z, y, x) mask condition -> predicted noise (or v).

        ``kinetics``: KINETIC_CLASSES indices, one or one per sample (None = 0, unspecified); only for a
        denoiser built with kinetic_classes."""
        self._check_inputs(noisy_latent, context_latent, mask_latent)
        batch = noisy_latent.shape[0]
        timesteps = torch.as_tensor(timesteps, device=noisy_latent.device).long().reshape(-1)
        timesteps = timesteps.expand(batch) if timesteps.numel() == 1 else timesteps
        x = torch.cat([noisy_latent, context_latent, mask_latent.to(noisy_latent.dtype)], dim=1)
        if not self.config.kinetic_classes:
            if kinetics is not None and torch.as_tensor(kinetics).any():
                raise SynBTError("this denoiser was trained without kinetic curve types; it cannot be given one")
            return self.unet(x, timesteps)
        labels = torch.zeros(batch, dtype=torch.long, device=x.device) if kinetics is None else \
            torch.as_tensor(kinetics, device=x.device).long().reshape(-1).expand(batch)
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(KINETIC_CLASSES)):
            raise SynBTError(f"kinetic class labels must be 0..{len(KINETIC_CLASSES) - 1}, got {labels.tolist()}")
        return self.unet(x, timesteps, class_labels=labels)

    def _check_inputs(self, noisy: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> None:
        latent = self.config.latent_channels
        if noisy.ndim != 5 or noisy.shape[1] != latent:
            raise SynBTError(f"noisy latent must be (B, {latent}, z, y, x), got {tuple(noisy.shape)}")
        if context.shape != noisy.shape:
            raise SynBTError(f"context latent {tuple(context.shape)} does not match noisy latent {tuple(noisy.shape)}")
        channels = self.config.mask_channels
        if mask.shape != (noisy.shape[0], channels, *noisy.shape[2:]):
            raise SynBTError(f"mask condition must be (B, {channels}, z, y, x) matching {tuple(noisy.shape)}, "
                             f"got {tuple(mask.shape)}")
        step = self.config.downsampling
        if any(s % step for s in noisy.shape[2:]):
            raise SynBTError(f"latent size {tuple(noisy.shape[2:])} must be a multiple of {step} for this denoiser")


def null_condition(context_latent: torch.Tensor, mask_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 'no condition' input for classifier-free guidance: zero context and zero mask."""
    return torch.zeros_like(context_latent), torch.zeros_like(mask_latent)


def drop_condition(
    context_latent: torch.Tensor,
    mask_latent: torch.Tensor,
    probability: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time condition dropout: each sample's condition becomes the null condition with `probability`."""
    if probability <= 0:
        return context_latent, mask_latent
    batch = context_latent.shape[0]
    draw = torch.rand(batch, generator=generator, device=context_latent.device)
    keep = (draw >= probability).view(batch, 1, 1, 1, 1)
    null_context, null_mask = null_condition(context_latent, mask_latent)
    return torch.where(keep, context_latent, null_context), torch.where(keep, mask_latent, null_mask)


def drop_kinetics(kinetics: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time dropout of the kinetic label to 0 (unspecified), drawn independently of the
    condition dropout, so that "unspecified" is learned with a real context too."""
    if probability <= 0:
        return kinetics
    draw = torch.rand(kinetics.shape[0], generator=generator, device=kinetics.device)
    return torch.where(draw >= probability, kinetics, torch.zeros_like(kinetics))


def guided_noise(
    denoiser: MaskConditionedDenoiser,
    noisy_latent: torch.Tensor,
    context_latent: torch.Tensor,
    mask_latent: torch.Tensor,
    timesteps: torch.Tensor | int,
    guidance_scale: float = 1.0,
    kinetics: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Denoiser output (noise or v) with classifier-free guidance; scale 1.0 is the plain conditional prediction."""
    extra = {} if kinetics is None else {"kinetics": kinetics}
    conditional = denoiser(noisy_latent, context_latent, mask_latent, timesteps, **extra)
    if guidance_scale == 1.0:
        return conditional
    unconditional = denoiser(noisy_latent, *null_condition(context_latent, mask_latent), timesteps)
    return unconditional + guidance_scale * (conditional - unconditional)
