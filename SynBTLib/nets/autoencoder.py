"""The patch-to-volume autoencoder: MONAI's AutoencoderKL made local, so patches tile a volume exactly.

Every DCE phase is an input channel (kinetics are encoded jointly); the latent grid is the image
grid divided by ``compression`` = 2**(len(channels) - 1).

MONAI's AutoencoderKL normalizes with nn.GroupNorm, whose statistics span the whole input: a tile
would be normalized unlike the whole volume. Here every GroupNorm is replaced by a layer without
spatial statistics (``AutoencoderConfig.norm``): ``ChannelAffine`` (the default: a per-channel
scale and shift) or ``VoxelGroupNorm`` (statistics over a group's channels at each voxel), and
attention is off. Every output voxel then depends only on its receptive field, which
``encoder_halo`` / ``decoder_halo`` compute from the architecture (in latent cells).
``linear_path`` adds a linear block code (a strided convolution and its transpose) beside the network.

``encode_volume`` / ``decode_volume`` cut a volume into tiles whose starts fall on latent cells,
read each with that halo (clipped at the volume border) and keep only the tile's core
(nets/tiling.py): exact up to float rounding, unlike sliding-window blending, and the tile size
(``plan_tiles``, under a voxel budget) bounds the memory whatever the field of view. Sizes that are
not multiples of ``compression`` are edge-padded at the far end; ``decode_volume(z, shape=...)``
crops back. ``consistency_loss`` trains a patch's borders to agree with a larger patch.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SynBTError
from .config import config_from_dict
from .tiling import plan_tiles, run_tiled

Progress = Callable[[int, int, str], None]

# Fewer channels per group than this makes a per-voxel norm nearly binary (2 channels -> +-1) or
# constant (1 channel -> 0), which throws the features away.
MIN_CHANNELS_PER_GROUP = 4
# Image voxels per tile, halo included: about 1.1 GB of activations when decoding at the default
# channels (measured at 128^3), on top of the input and output arrays, whatever the field of view.
DEFAULT_MAX_TILE_VOXELS = 2**21


@dataclass
class AutoencoderConfig:
    """Architecture of the autoencoder (everything needed to rebuild it before loading weights)."""

    in_channels: int = 3
    latent_channels: int = 4
    channels: tuple[int, ...] = (16, 32, 32)
    num_res_blocks: int | tuple[int, ...] = 1
    norm_num_groups: int = 1
    norm_eps: float = 1e-6
    norm: str = "affine"  # "affine": per-channel scale and shift only; "voxel": VoxelGroupNorm
    # a linear block code beside the network: latent mean += conv(f, stride f) of the image, image +=
    # transposed conv of the latent (see ``PatchVolumeAutoencoder.init_linear_path``)
    linear_path: bool = False

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if isinstance(self.num_res_blocks, (list, tuple)):
            self.num_res_blocks = tuple(int(n) for n in self.num_res_blocks)
        if self.in_channels < 1 or self.latent_channels < 1 or not self.channels:
            raise SynBTError(f"autoencoder config needs positive channels, got {self.to_dict()}")
        if len(self.res_blocks_per_level) != len(self.channels) or min(self.res_blocks_per_level) < 0:
            raise SynBTError(f"num_res_blocks={self.num_res_blocks} does not match channels={self.channels}")
        if self.norm not in NORM_KINDS:
            raise SynBTError(f"autoencoder norm must be one of {NORM_KINDS}, got {self.norm!r}")
        for c in self.channels:
            if self.norm == "voxel" and c % self.norm_num_groups or c // self.norm_num_groups < MIN_CHANNELS_PER_GROUP:
                raise SynBTError(
                    f"norm_num_groups={self.norm_num_groups} does not split {c} channels into groups of at least "
                    f"{MIN_CHANNELS_PER_GROUP}; the voxel-local norm needs that (use norm_num_groups=1)"
                )

    @property
    def compression(self) -> int:
        """Image voxels per latent voxel along each axis."""
        return 2 ** (len(self.channels) - 1)

    @property
    def res_blocks_per_level(self) -> tuple[int, ...]:
        if isinstance(self.num_res_blocks, int):
            return (self.num_res_blocks,) * len(self.channels)
        return tuple(self.num_res_blocks)

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "AutoencoderConfig":
        return config_from_dict(cls, data, "autoencoder")


NORM_KINDS = ("affine", "voxel")


class ChannelAffine(nn.Module):
    """Per-channel scale and shift in place of a GroupNorm (same parameter names), no statistics.

    A normalization over a voxel's channels (VoxelGroupNorm) removes the voxel's magnitude, which is
    the image intensity itself; this layer keeps it, and without statistics the network stays local.
    """

    def __init__(self, num_channels: int, affine: bool = True):
        super().__init__()
        self.num_channels = num_channels
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return x
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        return x * self.weight.reshape(shape) + self.bias.reshape(shape)


class VoxelGroupNorm(nn.Module):
    """GroupNorm whose statistics are taken over the channels of each group at each voxel.

    Drop-in for nn.GroupNorm (same parameters and state-dict names) that keeps the network local:
    a voxel's output never depends on voxels outside the convolutions' receptive field.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        grouped = x.reshape(b, self.num_groups, c // self.num_groups, *spatial)
        var, mean = torch.var_mean(grouped, dim=2, keepdim=True, correction=0)
        x = ((grouped - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if self.weight is None:
            return x
        shape = (1, c) + (1,) * len(spatial)
        return x * self.weight.reshape(shape) + self.bias.reshape(shape)


def _localize(module: nn.Module, norm: str = "voxel") -> None:
    """Replace every nn.GroupNorm under `module` by a local layer (VoxelGroupNorm or ChannelAffine)."""
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            local = (
                ChannelAffine(child.num_channels, child.affine)
                if norm == "affine"
                else VoxelGroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
            )
            setattr(module, name, local)
        else:
            _localize(child, norm)


def _architecture_ops(config: AutoencoderConfig) -> tuple[list[str], list[str]]:
    """The spatial operations of encoder and decoder, in order: 'conv' (3x3x3), 'down' or 'up'."""
    blocks = config.res_blocks_per_level
    levels = len(config.channels)
    encoder, decoder = ["conv"], ["conv"]  # the input convolutions
    for level in range(levels):
        last = level == levels - 1
        encoder += ["conv"] * (2 * blocks[level]) + ([] if last else ["down"])
        decoder += ["conv"] * (2 * blocks[levels - 1 - level]) + ([] if last else ["up", "conv"])
    return encoder + ["conv"], decoder + ["conv"]  # the output convolutions


def _input_interval(ops: Sequence[str], lo: int, hi: int) -> tuple[int, int]:
    """Input indices [lo, hi] that output indices [lo, hi] depend on (1D, one axis)."""
    for op in reversed(ops):
        if op == "conv":
            lo, hi = lo - 1, hi + 1
        elif op == "down":  # MONAI pads (0, 1) then convolves 3 with stride 2
            lo, hi = 2 * lo, 2 * hi + 2
        else:  # nearest-neighbour upsampling by 2
            lo, hi = lo // 2, hi // 2
    return lo, hi


def receptive_halos(config: AutoencoderConfig) -> tuple[int, int]:
    """(encoder, decoder) halos in latent cells: the context a tile needs to be exact."""
    f = config.compression
    encoder_ops, decoder_ops = _architecture_ops(config)
    lo, hi = _input_interval(encoder_ops, 0, 0)  # image voxels read by latent cell 0
    encoder_halo = max(math.ceil(-lo / f), math.ceil((hi - f + 1) / f))
    lo, hi = _input_interval(decoder_ops, 0, f - 1)  # latent cells read by the image voxels of cell 0
    return encoder_halo, max(-lo, hi)


def _as_tensor(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


class PatchVolumeAutoencoder(nn.Module):
    """KL autoencoder over (B, C, Z, Y, X) DCE phases with exact tiled encode/decode of any volume."""

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        from monai.networks.nets import AutoencoderKL

        self.config = config or AutoencoderConfig()
        levels = len(self.config.channels)
        self.net = AutoencoderKL(
            spatial_dims=3,
            in_channels=self.config.in_channels,
            out_channels=self.config.in_channels,
            channels=self.config.channels,
            latent_channels=self.config.latent_channels,
            num_res_blocks=self.config.res_blocks_per_level,
            norm_num_groups=self.config.norm_num_groups,
            norm_eps=self.config.norm_eps,
            attention_levels=(False,) * levels,
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        )
        _localize(self.net, self.config.norm)
        self.compression = self.config.compression
        if self.config.linear_path:
            f, c, latent = self.compression, self.config.in_channels, self.config.latent_channels
            self.linear_encoder = nn.Conv3d(c, latent, kernel_size=f, stride=f)
            self.linear_decoder = nn.ConvTranspose3d(latent, c, kernel_size=f, stride=f)
        self.encoder_halo, self.decoder_halo = receptive_halos(self.config)
        self.max_tile_voxels = DEFAULT_MAX_TILE_VOXELS

    def compile_parts(self) -> None:
        """torch.compile the encoder and decoder in place (training.compile): training calls
        ``encode`` / ``decode``, not ``forward``, so compiling the module itself would compile nothing."""
        # static shapes: a patch and the consistency loss's larger patch each get their own kernels (with
        # dynamic shapes inductor 2.13 fails on these convolutions)
        self.net.encoder.compile(dynamic=False)
        self.net.decoder.compile(dynamic=False)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters that map an image to its latent (mu, sigma): what fixes the latent space
        (frozen when only the decoder trains, hashed by the latent cache, compared by replace_decoder)."""
        modules = [self.net.encoder, self.net.quant_conv_mu, self.net.quant_conv_log_sigma]
        if self.config.linear_path:
            modules.append(self.linear_encoder)
        return [p for module in modules for p in module.parameters()]

    # ---- patch level (differentiable) -------------------------------------------------------

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image patch (B, C, Z, Y, X), sizes multiples of `compression` -> latent (mu, sigma)."""
        self._check_image(x, need_multiple=True)
        return self._encode(x)

    def sample(self, mu: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A latent drawn from N(mu, sigma^2); seeded through `generator`."""
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + sigma * noise

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, latent_channels, z, y, x) -> image (B, C, z*f, y*f, x*f)."""
        self._check_latent(z)
        return self._decode(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction of a sampled latent, mu, sigma), for training."""
        mu, sigma = self.encode(x)
        return self.decode(self.sample(mu, sigma)), mu, sigma

    # ---- volume level (no_grad, tiled, bounded memory) ------------------------------------------

    @torch.no_grad()
    def encode_volume(self, x, progress: Progress | None = None, max_tile_voxels: int | None = None) -> torch.Tensor:
        """Latent mean of a whole image (B, C, Z, Y, X) of any size, tile by tile.

        `x` may be a tensor (the result lands on its device) or a numpy array. A size that is not a
        multiple of `compression` is edge-padded at the far end; the latent has ceil(size / f) cells.
        """
        x = _as_tensor(x)
        self._check_image(x, need_multiple=False)
        f = self.compression
        cells = [math.ceil(n / f) for n in x.shape[2:]]
        out = torch.empty((x.shape[0], self.config.latent_channels, *cells), dtype=torch.float32, device=x.device)

        def read(region: tuple[slice, ...]) -> torch.Tensor:
            clipped = tuple(slice(r.start, min(r.stop, n)) for r, n in zip(region, x.shape[2:]))
            tile = x[(slice(None), slice(None)) + clipped].to(self._device, torch.float32)
            shortfall = [r.stop - c.stop for r, c in zip(region, clipped)]
            if any(shortfall):
                pad = [v for s in reversed(shortfall) for v in (0, s)]
                tile = F.pad(tile, pad, mode="replicate")
            return tile

        spans = plan_tiles(cells, self.encoder_halo, self._max_tile_cells(max_tile_voxels))
        return run_tiled(lambda t: self._encode(t)[0], read, out, spans, f, 1, progress, "encoding")

    @torch.no_grad()
    def decode_volume(
        self,
        z,
        progress: Progress | None = None,
        shape: Sequence[int] | None = None,
        max_tile_voxels: int | None = None,
    ) -> torch.Tensor:
        """Image (B, C, z*f, y*f, x*f) of a whole latent, tile by tile; cropped to `shape` (Z, Y, X) if given."""
        z = _as_tensor(z)
        self._check_latent(z)
        f = self.compression
        cells = list(z.shape[2:])
        full = [n * f for n in cells]
        if shape is not None and (len(shape) != 3 or any(not full[i] - f < shape[i] <= full[i] for i in range(3))):
            raise SynBTError(f"cannot crop a decoded image of size {tuple(full)} to {tuple(shape)}")
        out = torch.empty((z.shape[0], self.config.in_channels, *full), dtype=torch.float32, device=z.device)

        def read(region: tuple[slice, ...]) -> torch.Tensor:
            return z[(slice(None), slice(None)) + region].to(self._device, torch.float32)

        spans = plan_tiles(cells, self.decoder_halo, self._max_tile_cells(max_tile_voxels))
        out = run_tiled(self._decode, read, out, spans, 1, f, progress, "decoding")
        if shape is not None and tuple(shape) != tuple(full):
            out = out[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)].clone()
        return out

    # ---- the linear block code -------------------------------------------------------------------

    @torch.no_grad()
    def init_linear_path(self, patches: torch.Tensor, sigma: float = 0.01, max_blocks: int = 2_000_000) -> dict:
        """Set the linear path to the PCA of the f^3-voxel x all-phase blocks of ``patches`` (an
        orthonormal projection) and zero the network's outputs, so the autoencoder starts as the
        best linear code. The posterior starts at ``sigma`` everywhere (the network's random start
        would be ~1, far above the small components).

        Not whitened: latent errors cost what they cost in the image.
        Returns the fraction of the block variance kept and the latent channels' variances.
        """
        if not self.config.linear_path:
            raise SynBTError("init_linear_path needs an autoencoder built with linear_path=True")
        self._check_image(patches, need_multiple=True)
        f, c, k = self.compression, self.config.in_channels, self.config.latent_channels
        blocks = _blocks(patches.double(), f)
        if blocks.shape[0] > max_blocks:  # an even subsample: the statistics need no more
            blocks = blocks[:: -(-blocks.shape[0] // max_blocks)]
        if k > blocks.shape[1] or blocks.shape[0] <= blocks.shape[1]:
            raise SynBTError(f"{blocks.shape[0]} blocks of {blocks.shape[1]} values cannot fit {k} latent channels")
        mean = blocks.mean(0)
        covariance = torch.cov((blocks - mean).T)
        eigenvalues, vectors = torch.linalg.eigh(covariance)  # ascending
        eigenvalues, vectors = eigenvalues.flip(0)[:k], vectors.flip(1)[:, :k]
        if not bool((eigenvalues > 0).all()):
            raise SynBTError("the patches have fewer than latent_channels independent directions; cannot fit the code")
        encoder = decoder = vectors.T  # (k, D), orthonormal rows
        self.linear_encoder.weight.copy_(encoder.reshape(k, c, f, f, f))
        self.linear_encoder.bias.copy_(-(encoder @ mean))
        self.linear_decoder.weight.copy_(decoder.reshape(k, c, f, f, f))
        self.linear_decoder.bias.copy_(mean.reshape(c, -1).mean(1))  # stationary: one mean per phase
        for block in (self.net.quant_conv_mu, self.net.decoder.blocks[-1]):
            nn.init.zeros_(block.conv.weight)
            nn.init.zeros_(block.conv.bias)
        nn.init.zeros_(self.net.quant_conv_log_sigma.conv.weight)
        nn.init.constant_(self.net.quant_conv_log_sigma.conv.bias, 2 * math.log(sigma))  # log variance
        kept = float(eigenvalues.sum() / covariance.diagonal().sum())
        return {"variance_kept": kept, "eigenvalues": [float(v) for v in eigenvalues]}

    # ---- helpers -----------------------------------------------------------------------------------

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, sigma = self.net.encode(x)
        if self.config.linear_path:
            mu = mu + self.linear_encoder(x)
        return mu, sigma

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        image = self.net.decode(z)
        if self.config.linear_path:
            image = image + self.linear_decoder(z)
        return image

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _max_tile_cells(self, max_tile_voxels: int | None) -> int:
        return max(1, int(max_tile_voxels or self.max_tile_voxels) // self.compression**3)

    def _check_image(self, x: torch.Tensor, need_multiple: bool) -> None:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels or min(x.shape) < 1:
            raise SynBTError(
                f"the autoencoder expects an image (B, {self.config.in_channels}, Z, Y, X) with one channel per "
                f"DCE phase, got shape {tuple(x.shape)}"
            )
        f = self.compression
        if need_multiple and any(n % f for n in x.shape[2:]):
            raise SynBTError(
                f"patch size {tuple(x.shape[2:])} is not a multiple of {f} on every axis; pad it or use encode_volume"
            )

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels or min(z.shape) < 1:
            raise SynBTError(
                f"the autoencoder expects a latent (B, {self.config.latent_channels}, z, y, x), got shape {tuple(z.shape)}"
            )


def _blocks(x: torch.Tensor, f: int) -> torch.Tensor:
    """(B, C, Z, Y, X) -> (B * Z/f * Y/f * X/f, C * f^3): the aligned blocks one latent cell stands for,
    each flattened in the (C, f, f, f) order of a Conv3d kernel."""
    b, c, z, y, x_ = x.shape
    grid = x.reshape(b, c, z // f, f, y // f, f, x_ // f, f).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return grid.reshape(-1, c * f**3)


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(mu, sigma^2) from N(0, 1), summed over latent voxels, averaged over the batch."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1)
    return kl.sum(dim=tuple(range(1, kl.ndim))).mean()


def consistency_loss(
    model: PatchVolumeAutoencoder,
    x: torch.Tensor,
    mu: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean squared difference between the latent of a random crop of `x` and the same cells of x's latent.

    The crop is aligned to latent cells and spans half to all-but-one of the cells per axis, so its
    border cells (computed with zero padding) are pulled towards the values the larger patch gives
    them. `mu` is x's latent mean if the caller already has it; it is the target (no gradient).
    The error is relative to the target's variance: an absolute error would grow with the latent's
    scale and, measured here, fed back into a runaway of the latent magnitude (KL 1e7 in 140 steps).
    """
    f = model.compression
    model._check_image(x, need_multiple=True)
    if mu is None:
        mu, _ = model.encode(x)
    device = generator.device if generator is not None else "cpu"
    image_slices, latent_slices = [], []
    for n in mu.shape[2:]:
        size = n if n == 1 else int(torch.randint(-(-n // 2), n, (1,), generator=generator, device=device))
        start = int(torch.randint(0, n - size + 1, (1,), generator=generator, device=device))
        latent_slices.append(slice(start, start + size))
        image_slices.append(slice(start * f, (start + size) * f))
    crop_mu, _ = model.encode(x[(slice(None), slice(None)) + tuple(image_slices)])
    target = mu.detach()[(slice(None), slice(None)) + tuple(latent_slices)]
    return F.mse_loss(crop_mu, target) / (mu.detach().var() + 1e-6)
