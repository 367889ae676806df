"""The synthesis settings a bundle's config.json carries for its denoiser, typed and checked.

A diffusion bundle records, beside its networks, how its denoiser was trained to be used: the
working spacing, the context margin, the mask dilation and encoding, the curve-type frequencies
and the necrotic cores' statistics. ``SynthesisSettings.from_config`` reads them at the current
SETTINGS_VERSION, migrating older bundles first (``migrate``), so no reader falls back on a
missing key by itself.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .conditioning import MASK_ENCODINGS, mask_condition_channels
from .errors import SynBTError
from .kinetics import CURVE_TYPES
from .nets.autoencoder import AutoencoderConfig

# 1: no "settings_version" key; each setting was added on its own and may be absent or null.
# 2: every setting below is written, with "settings_version".
SETTINGS_VERSION = 2
DEFAULT_CONTEXT_MARGIN_MM = 16.0


@dataclass(frozen=True)
class SynthesisSettings:
    """spacing: (x, y, z) mm the networks were trained at (None: unknown, no resampling).
    guidance_scale: classifier-free guidance to sample with (1 = none).
    context_margin_mm: tissue kept around the mask as the denoiser's context.
    mask_dilation_cells: latent cells around the mask generated too and erased from the context.
    mask_encoding: what the denoiser is told of the mask, "cells" or "voxels" (None: no denoiser).
    kinetic_frequencies: training tumors per curve type (None: the denoiser takes no curve type).
    necrosis: the training tumors' necrotic cores (necrosis.necrosis_statistics; {}: none recorded)."""

    spacing: tuple[float, float, float] | None = None
    guidance_scale: float = 1.0
    context_margin_mm: float = DEFAULT_CONTEXT_MARGIN_MM
    mask_dilation_cells: int = 0
    mask_encoding: str | None = None
    kinetic_frequencies: dict[str, float] | None = None
    necrosis: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.spacing is not None:
            spacing = tuple(float(v) for v in self.spacing)
            if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
                raise SynBTError(f"spacing must be three positive numbers (x, y, z mm), got {self.spacing!r}")
            object.__setattr__(self, "spacing", spacing)
        if not (isinstance(self.guidance_scale, (int, float)) and self.guidance_scale >= 1):
            raise SynBTError(f"guidance_scale must be at least 1, got {self.guidance_scale!r}")
        if not (isinstance(self.context_margin_mm, (int, float)) and self.context_margin_mm > 0):
            raise SynBTError(f"context_margin_mm must be positive, got {self.context_margin_mm!r}")
        if isinstance(self.mask_dilation_cells, bool) or not isinstance(self.mask_dilation_cells, int) \
                or self.mask_dilation_cells < 0:
            raise SynBTError(f"mask_dilation_cells must be a whole number, 0 or more, got {self.mask_dilation_cells!r}")
        if self.mask_encoding is not None and self.mask_encoding not in MASK_ENCODINGS:
            raise SynBTError(f"mask_encoding must be one of {MASK_ENCODINGS}, got {self.mask_encoding!r}")
        if self.kinetic_frequencies is not None and (
                not isinstance(self.kinetic_frequencies, dict)
                or set(self.kinetic_frequencies) - {"unspecified", *CURVE_TYPES}):
            raise SynBTError(f"kinetic_frequencies must map curve types to counts, got {self.kinetic_frequencies!r}")
        if not isinstance(self.necrosis, dict):
            raise SynBTError(f"necrosis must be a table of the training cores' statistics, got {self.necrosis!r}")

    @classmethod
    def from_config(cls, config: dict) -> "SynthesisSettings":
        """The settings of a bundle's config.json (any version; see migrate)."""
        config = migrate(config)
        return cls(**{f.name: config[f.name] for f in fields(cls)})

    def to_config(self) -> dict:
        """The config.json keys of these settings, with their version."""
        values = asdict(self)
        if self.spacing is not None:
            values["spacing"] = list(self.spacing)
        return {"settings_version": SETTINGS_VERSION, **values}


def migrate(config: dict) -> dict:
    """A copy of a bundle's config.json with its synthesis settings at SETTINGS_VERSION.

    From version 1: an absent or null (or 0, as its readers took it) guidance scale, context margin
    or mask dilation is its default; an absent mask encoding is the one the denoiser's mask channels
    imply; absent kinetic frequencies stay None and absent necrosis statistics are {}."""
    config = dict(config)
    version = config.get("settings_version", 1)
    if version == SETTINGS_VERSION:
        return config
    if version != 1:
        raise SynBTError(f"settings_version {version!r} is not supported (this SynBT reads 1 to {SETTINGS_VERSION})")
    for key, default in (("guidance_scale", 1.0), ("context_margin_mm", DEFAULT_CONTEXT_MARGIN_MM),
                         ("mask_dilation_cells", 0)):
        config[key] = config.get(key) or default
    config.setdefault("spacing", None)
    config.setdefault("kinetic_frequencies", None)
    config["necrosis"] = config.get("necrosis") or {}
    if config.get("mask_encoding") is None:
        config["mask_encoding"] = implied_mask_encoding(config)
    config["settings_version"] = SETTINGS_VERSION
    return config


def phase_policy_of(config: dict) -> str | None:
    """Which phases of a case the bundle models (datasets.PhasePolicy spec), recorded as "phase_policy";
    None (bundles trained before it was recorded, or on every phase): all phases in file order."""
    policy = config.get("phase_policy")
    if policy is not None and not isinstance(policy, str):
        raise SynBTError(f"phase_policy must be a phase policy spec such as \"pre,first,last\", got {policy!r}")
    return policy


def implied_mask_encoding(config: dict) -> str | None:
    """The mask encoding that the denoiser's mask channels imply (None without a denoiser)."""
    denoiser = config.get("denoiser")
    if denoiser is None:
        return None
    compression = AutoencoderConfig.from_dict(config.get("autoencoder") or {}).compression
    necrosis = bool(denoiser.get("necrosis", False))
    channels = int(denoiser.get("mask_channels", 1))
    for encoding in MASK_ENCODINGS:
        if mask_condition_channels(encoding, compression, necrosis) == channels:
            return encoding
    raise SynBTError(f"the denoiser takes {channels} mask channels, which no mask encoding gives "
                     f"(compression {compression})")
