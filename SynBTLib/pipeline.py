"""SynthesisPipeline: put a tumor into a DCE-MRI case with mask-conditioned latent diffusion.

``__call__`` runs the stages in order: check the request and the mask -> normalize -> crop a box
around the mask (resampled to the networks' spacing where the case's differs) -> encode -> sample
(RePaint-style DDIM inpainting of the masked latent, conditioned on the box with the tumor erased)
-> latent calibration -> decode -> correct (acquisition noise, image calibration) -> paste the box
back with a soft margin. Voxels outside the blend region are bit-identical to the input, and the
cost grows with the tumor, not with the field of view.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .boxes import Box, crop_padded, inside_volume, roi_box
from .bundle import load_bundle
from .bundle_meta import DEFAULT_CONTEXT_MARGIN_MM, SynthesisSettings
from .calibration import ImageCalibration, LatentCalibration, tumor_cells
from .capabilities import CURVE_TYPES, DEFAULT_STEPS, Capabilities
from .case import Case, Geometry, check_finite
from .compositing import (air_noise_sigma, blend_weight, detail_noise, keep_late_change, paste_blended, resize,
                          resize_mask, shared_post_phases, smooth_phases)
from .conditioning import denoiser_condition, erase_mask, mask_condition_channels
from .errors import SynBTError
from .necrosis import core_from_mask, equivalent_diameter_mm
from .nets.denoiser import KINETIC_CLASSES, guided_noise
from .nets.latent_norm import ChannelStandardizer
from .nets.scheduler import check_inference_steps
from .preprocess import Normalization, denormalize, fit_normalization, normalize
from .stages import stage

Progress = Callable[[int, int, str], None]
PRECISIONS = ("float32", "bfloat16")
# how the post-contrast phases of a generated tumor relate: as calibrated, or one shared pattern + measured noise
PHASE_MODELS = ("calibrated", "shared")


def resolve_device(device: str | None = None) -> str:
    """The torch device for a --device value: None or "auto" = "cuda" when a GPU is available, else
    "cpu"; an explicit CUDA device is refused (one line) when there is none."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise SynBTError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise SynBTError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
    if kind not in ("cpu", "cuda"):
        raise SynBTError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


class SynthesisPipeline:
    """Autoencoder + denoiser + scheduler, called as ``pipeline(case, mask, seed, steps, progress) -> Case``.

    context_margin_mm: tissue kept around the mask's bounding box as context for the denoiser (a
        bundle may set its own default: the context its denoiser was trained with).
    blend_mm: width of the soft transition from the generated tumor to the original image.
    guidance_scale: classifier-free guidance (1.0 = off; > 1 needs a denoiser trained with dropout).
    eta: DDIM stochasticity (0 = deterministic DDIM updates; the seed still sets the initial noise).
    working_spacing: (x, y, z) mm the networks were trained at (a bundle's "spacing"). When the case's
        spacing differs by more than 10 %, the region of interest is resampled to it for the networks
        and the result back to the case grid, so a model trained at one resolution serves any scanner.
    restore_noise: add back, inside the tumor, the part of the acquisition noise (measured around the
        tumor) that the decoder leaves out, so the tumor is neither smoother nor noisier than its surroundings.

    mask_dilation_cells: latent cells around the mask that are generated too and erased from the
        context (a bundle records what its denoiser was trained with; 0 for older bundles).
        Whether the denoiser also sees the tumor's voxel outline follows from its mask_channels.
    calibration: per-channel moment correction of every generated tumor's latent cells
        (calibration.py, fitted by ``synbt calibrate``; None: the denoiser's samples as they are).
    image_calibration: per-phase moment correction of every generated tumor's voxels after decoding
        (normalized units; fitted by ``synbt calibrate`` after the latent one; None: none).
    necrosis: for a denoiser trained with necrotic cores, how often and how large its training tumors'
        cores were (a bundle's "necrosis", necrosis.necrosis_statistics): what ``choose_core`` draws from.
    precision: "float32" (default) or "bfloat16": the networks run under bf16 autocast (encode, each
        denoising step, decode); the latent, the scheduler's updates and everything outside the
        networks stay float32.

    With ``denoiser=None`` (an autoencoder-only bundle, ``from_bundle(..., reconstruct_only=True)``)
    the pipeline can only ``reconstruct``: a check of an autoencoder before a denoiser is trained on it.
    """

    def __init__(
        self,
        autoencoder: torch.nn.Module,
        denoiser: torch.nn.Module | None,
        scheduler,
        latent_scale: float,
        context_margin_mm: float = DEFAULT_CONTEXT_MARGIN_MM,
        blend_mm: float = 3.0,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        working_spacing: tuple[float, float, float] | None = None,
        restore_noise: bool = True,
        channels: ChannelStandardizer | None = None,
        mask_dilation_cells: int = 0,
        kinetic_frequencies: dict | None = None,
        calibration: LatentCalibration | None = None,
        image_calibration: ImageCalibration | None = None,
        necrosis: dict | None = None,
        precision: str = "float32",
        noise_grain_vox: float = 0.0,
        phase_model: str = "calibrated",
    ):
        if precision not in PRECISIONS:
            raise SynBTError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        if not 0 <= blend_mm <= context_margin_mm:
            raise SynBTError(f"blend_mm ({blend_mm}) must be between 0 and context_margin_mm ({context_margin_mm})")
        if not latent_scale > 0:
            raise SynBTError(f"latent_scale must be positive, got {latent_scale}")
        if not guidance_scale >= 1.0:
            raise SynBTError(f"guidance_scale must be at least 1 (1 = no classifier-free guidance), got {guidance_scale}")
        if denoiser is not None and autoencoder.config.latent_channels != denoiser.config.latent_channels:
            raise SynBTError(
                f"autoencoder latent channels ({autoencoder.config.latent_channels}) do not match "
                f"the denoiser's ({denoiser.config.latent_channels})"
            )
        self.autoencoder = autoencoder.eval()
        self.denoiser = denoiser.eval() if denoiser is not None else None
        self.scheduler = scheduler
        self.latent_scale = float(latent_scale)
        self.channels = channels if channels is not None else ChannelStandardizer()
        self.context_margin_mm = float(context_margin_mm)
        self.blend_mm = float(blend_mm)
        self.guidance_scale = float(guidance_scale)
        self.eta = float(eta)
        self.restore_noise = bool(restore_noise)
        if not (np.isfinite(noise_grain_vox) and 0 <= noise_grain_vox <= 3):
            raise SynBTError(f"noise_grain_vox must be between 0 and 3 voxels, got {noise_grain_vox}")
        self.noise_grain_vox = float(noise_grain_vox)
        if phase_model not in PHASE_MODELS:
            raise SynBTError(f"phase_model must be one of {', '.join(PHASE_MODELS)}, got {phase_model!r}")
        self.phase_model = phase_model
        if isinstance(mask_dilation_cells, bool) or int(mask_dilation_cells) != mask_dilation_cells or mask_dilation_cells < 0:
            raise SynBTError(f"mask_dilation_cells must be a whole number, 0 or more, got {mask_dilation_cells!r}")
        self.mask_dilation_cells = int(mask_dilation_cells)
        self.mask_encoding = "cells"
        if denoiser is not None:
            compression = int(autoencoder.config.compression)
            known = {mask_condition_channels(e, compression, denoiser.config.necrosis): e for e in ("cells", "voxels")}
            if denoiser.config.mask_channels not in known:
                raise SynBTError(f"the denoiser takes {denoiser.config.mask_channels} mask channels; with this "
                                 f"autoencoder (compression {compression}) it must be one of {sorted(known)}")
            self.mask_encoding = known[denoiser.config.mask_channels]
        if calibration is not None and calibration.channels != autoencoder.config.latent_channels:
            raise SynBTError(f"the latent calibration has {calibration.channels} channels, the autoencoder "
                             f"{autoencoder.config.latent_channels}")
        self.calibration = calibration
        if image_calibration is not None and image_calibration.channels != autoencoder.config.in_channels:
            raise SynBTError(f"the image calibration has {image_calibration.channels} phases, the autoencoder "
                             f"{autoencoder.config.in_channels}")
        self.image_calibration = image_calibration
        self.working_spacing = None if working_spacing is None else tuple(float(v) for v in working_spacing)
        self.kinetic_frequencies = self._checked_frequencies(kinetic_frequencies)
        self.necrosis = dict(necrosis or {})

    @property
    def kinetic_choices(self) -> tuple[str, ...]:
        """Curve types this pipeline's denoiser can be asked for (empty: it takes none)."""
        if self.denoiser is None or not self.denoiser.config.kinetic_classes:
            return ()
        return KINETIC_CLASSES[1:]

    def _checked_frequencies(self, frequencies: dict | None) -> dict[str, float]:
        if not self.kinetic_choices:
            return {}
        if frequencies is None:
            return {name: 1.0 for name in self.kinetic_choices}
        unknown = set(frequencies) - set(KINETIC_CLASSES)
        values = [float(frequencies.get(name, 0)) for name in self.kinetic_choices]
        if unknown or not all(np.isfinite(v) and v >= 0 for v in values) or not sum(values) > 0:
            raise SynBTError(f"kinetic_frequencies must give counts >= 0 of {self.kinetic_choices}, got {frequencies}")
        return dict(zip(self.kinetic_choices, values))

    def choose_kinetics(self, kinetics: str | None, seed: int) -> str | None:
        """The curve type a synthesis with ``kinetics`` and ``seed`` makes: the given one, "any" (the
        denoiser's own choice), or for None one drawn by the seed from the bundle's training
        frequencies. None for a denoiser without kinetic classes (which refuses any other value)."""
        if kinetics not in (None, "any", *CURVE_TYPES):
            raise SynBTError(f"unknown kinetic curve type {kinetics!r}; choose one of {', '.join(CURVE_TYPES)} or any")
        self.capabilities.check("diffusion", kinetics=kinetics, prefix="")
        if not self.kinetic_choices:
            return None
        if kinetics is None:
            weights = np.asarray(list(self.kinetic_frequencies.values()))
            rng = np.random.default_rng([int(seed), 11])
            return self.kinetic_choices[int(rng.choice(len(weights), p=weights / weights.sum()))]
        return kinetics

    @property
    def capabilities(self) -> Capabilities:
        """What this pipeline can be asked for (synthesizers.check_request): steps, its denoiser's
        curve types, necrosis (a core where its bundle records the training cores' sizes)."""
        return Capabilities(steps=True, kinetics=self.kinetic_choices, necrosis=True,
                            core_refusal=self.core_refusal(True))

    @property
    def takes_necrosis(self) -> bool:
        """True when the denoiser was trained with necrotic cores (it can be asked for one)."""
        return self.denoiser is not None and bool(getattr(self.denoiser.config, "necrosis", False))

    def core_refusal(self, necrosis: bool | None) -> str | None:
        """Why ``necrosis`` (True / False / None = drawn) cannot be given to this pipeline, or None."""
        if necrosis and not self.takes_necrosis:
            return "this bundle's denoiser was trained without necrotic cores"
        if necrosis and "core_fraction" not in self.necrosis:
            return "this bundle records no necrotic training tumors (its config's \"necrosis\"), so no core size is known"
        return None

    def choose_core(self, necrosis, seed: int, mask: np.ndarray, spacing_zyx) -> np.ndarray | None:
        """The necrotic core (bool, the mask's shape) a synthesis with ``necrosis`` and ``seed`` gets.

        ``necrosis``: True (a core of the middle of the training cores' volume fraction range, the
        deepest part of the mask), False (none), a core mask (used as given, inside the mask), or None:
        drawn by the seed from the bundle's training tumors: a mask at least as large as the smallest
        necrotic training tumor is necrotic at their frequency, its core's volume fraction uniform in
        their 10th-90th percentile range. None for a denoiser without necrosis (which refuses True or a core)."""
        if isinstance(necrosis, np.bool_):
            necrosis = bool(necrosis)
        if not (necrosis is None or isinstance(necrosis, (bool, np.ndarray))):
            raise SynBTError(f"necrosis must be True, False, None or a core mask, got {necrosis!r}")
        if not isinstance(necrosis, np.ndarray):
            self.capabilities.check("diffusion", necrosis=necrosis, prefix="")
        elif necrosis.any() and not self.takes_necrosis:
            raise SynBTError(f"necrosis (a core mask): {self.core_refusal(True)}")
        if not self.takes_necrosis:
            return None
        mask = np.asarray(mask) > 0
        if isinstance(necrosis, np.ndarray):
            if necrosis.shape != mask.shape:
                raise SynBTError(f"the necrotic core has shape {necrosis.shape}, the tumor mask {mask.shape}")
            core = (necrosis > 0) & mask
            if necrosis.any() and not core.any():
                raise SynBTError("the necrotic core lies wholly outside the tumor mask")
            return core
        if "core_fraction" not in self.necrosis:  # no necrotic training tumor recorded: none drawn, no size known
            return np.zeros(mask.shape, dtype=bool)
        low, high = self.necrosis["core_fraction"]
        if necrosis is None:
            rng = np.random.default_rng([int(seed), 13])
            draw, fraction = rng.random(), rng.uniform(low, high)
            diameter = equivalent_diameter_mm(int(mask.sum()), spacing_zyx)
            necrosis = ("min_diameter_mm" in self.necrosis and diameter >= self.necrosis["min_diameter_mm"]
                        and draw < float(self.necrosis.get("frequency", 0.0)))
        else:
            fraction = (low + high) / 2
        return core_from_mask(mask, fraction, spacing_zyx) if necrosis else np.zeros(mask.shape, dtype=bool)

    def describe(self, seed: int, kinetics: str | None = None, mask: np.ndarray | None = None,
                 spacing_zyx=(1.0, 1.0, 1.0), necrosis=None) -> dict:
        """What a synthesis with ``seed``, ``kinetics`` (and into ``mask``, with ``necrosis``) records in
        provenance: the curve type and the necrotic core's voxels, where the denoiser takes them."""
        chosen = self.choose_kinetics(kinetics, seed)
        record = {} if chosen is None else {"kinetics": chosen}
        if mask is not None and self.takes_necrosis:
            record["necrotic_core_voxels"] = int(np.count_nonzero(self.choose_core(necrosis, seed, mask, spacing_zyx)))
        return record

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu", reconstruct_only: bool = False,
                    **options) -> "SynthesisPipeline":
        """A pipeline from a model bundle folder (hashes and tensor shapes checked by load_bundle).

        An autoencoder-only bundle is refused unless ``reconstruct_only``."""
        bundle = load_bundle(path, device=device)
        if (bundle.denoiser is None or bundle.scheduler is None) and not reconstruct_only:
            raise SynBTError(f"bundle {path} has no denoiser (autoencoder-only); run `synbt train-diffusion` first")
        try:
            settings = SynthesisSettings.from_config(bundle.config)
        except SynBTError as exc:
            raise SynBTError(f"bundle {path}: {exc}") from None
        options.setdefault("working_spacing", settings.spacing)
        options.setdefault("guidance_scale", settings.guidance_scale)
        options.setdefault("context_margin_mm", settings.context_margin_mm)
        options.setdefault("channels", bundle.channels)
        options.setdefault("mask_dilation_cells", settings.mask_dilation_cells)
        options.setdefault("kinetic_frequencies", settings.kinetic_frequencies)
        options.setdefault("calibration", bundle.calibration)
        options.setdefault("image_calibration", bundle.image_calibration)
        options.setdefault("necrosis", settings.necrosis)
        pipeline = cls(bundle.autoencoder, bundle.denoiser, bundle.scheduler, bundle.latent_scale, **options)
        if pipeline.denoiser is not None and settings.mask_encoding != pipeline.mask_encoding:
            raise SynBTError(f"bundle {path} records mask_encoding {settings.mask_encoding!r}, but its denoiser's "
                             f"{pipeline.denoiser.config.mask_channels} mask channels are the {pipeline.mask_encoding!r} encoding")
        return pipeline

    @property
    def compression(self) -> int:
        """Image voxels per latent voxel along each axis."""
        return int(self.autoencoder.config.compression)

    @property
    def roi_multiple(self) -> int:
        """ROI sizes are multiples of this, so the latent fits every UNet level."""
        return self.compression * (self.denoiser.config.downsampling if self.denoiser is not None else 1)

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    @torch.no_grad()
    def __call__(
        self,
        case: Case,
        mask: np.ndarray,
        seed: int = 0,
        steps: int | None = None,
        progress: Progress | None = None,
        kinetics: str | None = None,
        necrosis=None,
    ) -> Case:
        """A new case with a tumor generated inside `mask` (uint8 (Z, Y, X) on the case grid).

        ``kinetics``: the tumor's curve type ("persistent", "plateau", "washout", "any") for a denoiser
        trained with kinetic classes; None draws one by the seed (``choose_kinetics``).
        ``necrosis``: True, False, a necrotic core mask, or None (drawn by the seed) for a denoiser
        trained with necrotic cores (``choose_core``).
        Same case, mask, seed, kinetics, necrosis and weights give the same output. If `progress(done,
        total, message)` raises (e.g. on Cancel), its exception propagates and nothing is returned.
        """
        with stage("check"):
            steps, curve = self.check_sampling(steps, kinetics, seed)
            mask, core = self.check_mask(case, mask, necrosis, seed)
        with stage("crop"):
            norm = fit_normalization(case)
            region = self.crop(case, mask, core, norm)
        with stage("encode"):
            known = self.encode(region.image)
        with stage("denoise"):
            latent = self.sample(region, known, steps, curve, seed, progress)
            latent = self.calibrate_latent(latent, region, curve)
        with stage("decode"):
            decoded = self.decode(latent, region)
        with stage("correct"):
            decoded = self.correct(decoded, region, curve, seed)
        with stage("paste"):
            return self.paste(case, region, decoded)

    @torch.no_grad()
    def latent_pair(self, case: Case, mask: np.ndarray, seed: int = 0, steps: int | None = None,
                    kinetics: str | None = None, necrosis=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(encoded latent of the case, latent generated into `mask` without calibration, the tumor's
        latent cells), all in the denoiser's space over the region of interest: what ``synbt calibrate``
        compares. The case's own tumor under `mask` is what the encoded latent holds there. ``kinetics``
        and ``necrosis`` as for ``__call__``."""
        steps, curve = self.check_sampling(steps, kinetics, seed)
        mask, core = self.check_mask(case, mask, necrosis, seed)
        region = self.crop(case, mask, core, fit_normalization(case))
        known = self.encode(region.image)
        generated = self.sample(region, known, steps, curve, seed)
        return known, generated, tumor_cells(region.mask_t, self.compression)

    @torch.no_grad()
    def reconstruct(self, case: Case, mask: np.ndarray, seed: int = 0) -> Case:
        """The case with the region under `mask` replaced by its own autoencoder reconstruction.

        Same crop, noise restoration and blending as a synthesis, but the latent is the encoded
        image itself instead of a denoised one: the closest any synthesis with these autoencoder
        weights can come to the original, i.e. the autoencoder's share of what a realism study sees.
        """
        mask = validated_mask(case, mask, expected_phases=self.autoencoder.config.in_channels)
        region = self.crop(case, mask, None, fit_normalization(case))
        decoded = self.decode(self.encode(region.image), region)
        decoded = smooth_phases(decoded, self.noise_grain_vox)  # unchanged when noise_grain_vox is 0
        return self.paste(case, region, self.add_detail_noise(decoded, region, seed))

    # -- the stages, in the order __call__ runs them

    def check_sampling(self, steps: int | None, kinetics: str | None, seed: int) -> tuple[int, str | None]:
        """(number of sampling steps, the tumor's curve type or None): the request's defaults filled in
        and checked against the scheduler and the denoiser; refused without a denoiser."""
        if self.denoiser is None:
            raise SynBTError("this pipeline has no denoiser (autoencoder-only bundle): it can only reconstruct")
        steps = check_inference_steps(self.scheduler, DEFAULT_STEPS if steps is None else steps)
        return steps, self.choose_kinetics(kinetics, seed)

    def check_mask(self, case: Case, mask, necrosis, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(the tumor mask as uint8 0/1, the necrotic core ``choose_core`` gives, or None) after checking
        the case and the mask (validated_mask)."""
        mask = validated_mask(case, mask, expected_phases=self.autoencoder.config.in_channels)
        return mask, self.choose_core(necrosis, seed, mask, case.geometry.spacing[::-1])

    def crop(self, case: Case, mask: np.ndarray, core: np.ndarray | None, norm: Normalization) -> Region:
        """The region of interest around `mask` (``region_geometry``) cut from the case in normalized
        units, with the mask and the core, as arrays on the case grid and as tensors on the networks' grid."""
        geometry = self.region_geometry(case, mask)
        box, shape = geometry.box, geometry.working_shape
        original = normalize(crop_padded(case.phases, box, mode="edge"), norm)
        roi_mask = crop_padded(mask, box, mode="constant")
        image, mask_t = self._tensor(original)[None], self._tensor(roi_mask)[None, None]
        roi_core = None if core is None else crop_padded(core, box, mode="constant")
        core_t = None if core is None else self._tensor(crop_padded(core.astype(np.uint8), box, mode="constant"))[None, None]
        if shape is not None:
            image = resize(image, shape)
            mask_t = resize_mask(mask_t, shape)
            core_t = None if core_t is None else resize_mask(core_t, shape, within=mask_t)
        sigma = None
        if self.phase_model == "shared":
            sigma = air_noise_sigma(case.phases) / (norm.high - norm.low)
        return Region(geometry, norm, inside_volume(box, case.shape), original, roi_mask, roi_core, image, mask_t, core_t,
                      sigma)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(1, C, z, y, x) normalized image -> its latent in the denoiser's space (scaled, standardized)."""
        with self.autocast():
            latent = self.autoencoder.encode_volume(image).float()
        return self.channels.standardize(latent * self.latent_scale)

    def autocast(self):
        """The networks' precision context: bf16 autocast for precision "bfloat16", else nothing."""
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def sample(self, region: Region, known: torch.Tensor, steps: int, curve: str | None, seed: int,
               progress: Progress | None = None) -> torch.Tensor:
        """The latent with the tumor generated under the region's mask (``inpaint_latent``), the denoiser
        conditioned on the mask, the core and the encoded region with the generated part erased."""
        mask_latent, erased = denoiser_condition(region.mask_t, self.compression, self.mask_dilation_cells,
                                                 self.mask_encoding, region.core_t)
        context = self.encode(erase_mask(region.image, erased))
        label = None if curve is None else (0 if curve == "any" else KINETIC_CLASSES.index(curve))
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        with self.autocast():
            return inpaint_latent(self.denoiser, self.scheduler, known, context, mask_latent, steps, generator,
                                  guidance_scale=self.guidance_scale, eta=self.eta, progress=progress, kinetics=label)

    def calibrate_latent(self, latent: torch.Tensor, region: Region, curve: str | None) -> torch.Tensor:
        """The latent calibration applied to the tumor's cells (unchanged without one)."""
        if self.calibration is None:
            return latent
        return self.calibration.apply(latent, tumor_cells(region.mask_t, self.compression), curve)

    def decode(self, latent: torch.Tensor, region: Region) -> np.ndarray:
        """(C, Z, Y, X) float32 decoded image of the region, normalized units, on the case grid."""
        with self.autocast():
            decoded = self.autoencoder.decode_volume(self.channels.restore(latent) / self.latent_scale).float()
        if region.geometry.working_shape is not None:
            decoded = resize(decoded, region.mask.shape)
        return decoded[0].float().cpu().numpy()

    def correct(self, decoded: np.ndarray, region: Region, curve: str | None, seed: int) -> np.ndarray:
        """The decoded region after the acquisition-noise and image corrections, its late change outside
        the mask the original's (``keep_late_change``).

        With ``noise_grain_vox`` > 0 the decoder's own correlated grain is smoothed away first and the
        case's measured acquisition noise (white, independent per phase) is added after the image
        calibration, as a scanner adds it to the object; otherwise noise restoration comes first."""
        if self.noise_grain_vox > 0:
            decoded = self.calibrate_image(smooth_phases(decoded, self.noise_grain_vox), region, curve, seed)
            decoded = self.add_detail_noise(decoded, region, seed)
        else:
            decoded = self.calibrate_image(self.add_detail_noise(decoded, region, seed), region, curve, seed)
        if self.phase_model == "shared":
            decoded = shared_post_phases(decoded, region.mask, region.core, region.noise_sigma, seed)
        return keep_late_change(decoded, region.original, region.mask)

    def add_detail_noise(self, decoded: np.ndarray, region: Region, seed: int) -> np.ndarray:
        """With ``restore_noise``: the acquisition noise the decoder left out (``detail_noise``),
        measured outside the tumor and the padding, added to the decoded region."""
        if not self.restore_noise:
            return decoded
        measured = region.mask.copy()
        measured[~region.inside] = 1  # padding has no noise: leave it out
        return decoded + detail_noise(region.original, measured, seed, decoded)

    def calibrate_image(self, decoded: np.ndarray, region: Region, curve: str | None, seed: int) -> np.ndarray:
        """The image calibration applied to the tumor's voxels (unchanged without one)."""
        if self.image_calibration is None:
            return decoded
        return self.image_calibration.apply(decoded, region.mask, curve, region.core, region.norm.zero,
                                            region.geometry.cell_voxels, seed)

    def paste(self, case: Case, region: Region, decoded: np.ndarray) -> Case:
        """The case with the decoded region (normalized units) blended in under the mask, fading out
        over ``blend_mm`` around it; voxels farther away keep their input values bit for bit."""
        generated = denormalize(decoded, region.norm).astype(np.float32)
        weight = blend_weight(region.mask, case.geometry.spacing[::-1], self.blend_mm)
        return case.with_phases(paste_blended(case.phases, generated, weight, region.geometry.box))

    # -- the region's geometry

    def region_geometry(self, case: Case, mask: np.ndarray) -> RegionGeometry:
        """Where a synthesis into `mask` works on `case` (see RegionGeometry)."""
        box = self.region_of_interest(case, mask)
        return RegionGeometry(box, self.working_shape(case.geometry, [s.stop - s.start for s in box]),
                              self.latent_cell_voxels(case.geometry))

    def needs_resampling(self, geometry: Geometry) -> bool:
        """True when the case's spacing differs from the working spacing by more than 10 % on an axis."""
        if self.working_spacing is None:
            return False
        ratio = np.asarray(geometry.spacing) / np.asarray(self.working_spacing)
        return bool(np.any(np.abs(ratio - 1.0) > 0.1))

    def latent_cell_voxels(self, geometry: Geometry) -> tuple[int, int, int]:
        """(Z, Y, X) size of one latent cell in the case's voxels (rounded, at least 1)."""
        if not self.needs_resampling(geometry):
            return (self.compression,) * 3
        return tuple(max(1, int(round(self.compression / r))) for r in self._spacing_ratio(geometry))

    def working_shape(self, geometry: Geometry, roi_shape) -> tuple[int, int, int] | None:
        """(Z, Y, X) size of the region on the working grid (a multiple of roi_multiple), or None."""
        if not self.needs_resampling(geometry):
            return None
        m = self.roi_multiple
        return tuple(int(max(m, round(n * r / m) * m)) for n, r in zip(roi_shape, self._spacing_ratio(geometry)))

    def region_of_interest(self, case: Case, mask: np.ndarray) -> Box:
        """The box processed for this mask: its extent plus the context margin, sized for the networks.

        When the region is resampled, its size on the case grid is chosen so that it maps onto a
        whole number of network multiples at the true spacing ratio on every axis (no stretch)."""
        geometry = case.geometry
        margin = margin_voxels(geometry, self.context_margin_mm)
        if not self.needs_resampling(geometry):
            return roi_box(mask, margin, self.roi_multiple)
        m = self.roi_multiple
        native = [s.stop - s.start for s in roi_box(mask, margin, 1)]
        sizes = [max(n, int(round(max(m, np.ceil(n * r / m) * m) / r)))
                 for n, r in zip(native, self._spacing_ratio(geometry))]
        return roi_box(mask, margin, sizes)

    def _spacing_ratio(self, geometry: Geometry) -> np.ndarray:
        """Case spacing / working spacing per (z, y, x) axis."""
        return np.asarray(geometry.spacing[::-1]) / np.asarray(self.working_spacing[::-1])

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)


@dataclass(frozen=True)
class RegionGeometry:
    """Where a synthesis works. box: (z, y, x) slices on the case grid, sized for the networks (it may
    reach outside the volume); working_shape: the box's size on the networks' grid, None when the
    case is at the working spacing; cell_voxels: one latent cell's size in case voxels per axis."""

    box: Box
    working_shape: tuple[int, int, int] | None
    cell_voxels: tuple[int, int, int]


@dataclass
class Region:
    """The region of interest of one synthesis, cut from the case.

    On the case grid: ``inside`` (the box's voxels inside the volume), ``original`` (the normalized
    phases, edge-padded), ``mask`` (uint8) and ``core`` (bool, or None). On the networks' grid:
    ``image`` (1, C, z, y, x), ``mask_t`` and ``core_t`` (1, 1, z, y, x, 0/1 float). ``noise_sigma``:
    the case's acquisition noise per phase in normalized units, where the pipeline needs it."""

    geometry: RegionGeometry
    norm: Normalization
    inside: np.ndarray
    original: np.ndarray
    mask: np.ndarray
    core: np.ndarray | None
    image: torch.Tensor
    mask_t: torch.Tensor
    core_t: torch.Tensor | None
    noise_sigma: np.ndarray | None = None  # per-phase acquisition noise, normalized units (phase_model "shared")


def validated_mask(case: Case, mask, expected_phases: int | None = None) -> np.ndarray:
    """The mask as uint8 0/1 after checking it is on the case grid, finite and non-empty (and the case finite)."""
    if not isinstance(case, Case):
        raise SynBTError(f"expected a Case, got {type(case).__name__}")
    if expected_phases is not None and case.num_phases != expected_phases:
        raise SynBTError(f"the model expects {expected_phases} phases but the case has {case.num_phases}")
    mask = np.asarray(mask)
    if mask.shape != case.shape:
        raise SynBTError(
            f"the tumor mask has shape {mask.shape} (Z, Y, X) but the case grid is {case.geometry.describe()} "
            f"(shape {case.shape}); resample the mask onto the case grid"
        )
    if not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool):
        raise SynBTError(f"the tumor mask must be numeric, got dtype {mask.dtype}")
    check_finite(mask, "the tumor mask")
    binary = (mask > 0).astype(np.uint8)
    if not binary.any():
        raise SynBTError("the tumor mask is empty; draw or place a tumor first")
    check_finite(case.phases, "the case")
    return binary


def margin_voxels(geometry: Geometry, margin_mm: float) -> tuple[int, int, int]:
    """A margin in millimetres as whole voxels per (z, y, x) axis, rounded up."""
    return tuple(int(np.ceil(margin_mm / s)) for s in geometry.spacing[::-1])


def inpaint_latent(
    denoiser: torch.nn.Module,
    scheduler,
    known_latent: torch.Tensor,
    context_latent: torch.Tensor,
    mask_latent: torch.Tensor,
    steps: int,
    generator: torch.Generator,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    progress: Progress | None = None,
    kinetics: int | None = None,
) -> torch.Tensor:
    """DDIM sampling that generates only where `mask_latent`'s first channel is 1 (RePaint-style
    latent inpainting); all its channels condition the denoiser.

    Before every step the latent outside the mask is replaced by the scheduler's noised version of
    the known latent at that step's timestep; at the end it is replaced by the clean known latent,
    so outside the mask the result is exactly `known_latent`.
    """
    inside = mask_latent[:, :1] > 0
    scheduler.set_timesteps(steps, device=known_latent.device)
    latent = _randn(known_latent, generator)
    for index, timestep in enumerate(scheduler.timesteps):
        noised_known = scheduler.add_noise(known_latent, _randn(known_latent, generator), timestep.reshape(1))
        latent = torch.where(inside, latent, noised_known)
        noise = guided_noise(denoiser, latent, context_latent, mask_latent, timestep, guidance_scale, kinetics).float()
        latent, _ = scheduler.step(noise, int(timestep), latent, eta=eta, generator=generator)
        if progress is not None:
            progress(index + 1, steps, f"denoising step {index + 1}/{steps}")
    return torch.where(inside, latent, known_latent)


def _randn(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
