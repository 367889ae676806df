"""The handcrafted synthesizer: the baseline that learned synthesis must beat.

Inside the mask it paints a tumor from a few explicit ingredients:

- a pre-contrast intensity estimated from the case (fibroglandular-like tissue around the mask),
- a band-passed noise texture (difference of Gaussians in mm) for heterogeneous enhancement,
- a kinetic curve typical of breast cancer: fast wash-in (80-200% relative enhancement at the
  first post-contrast phase), then plateau or washout, chosen by the seed,
- an optional rim enhancement (bright periphery, darker centre),
- image noise at the level measured around the mask,

and blends it into the case over a distance-based margin outside the mask. Phases are taken as
pre-contrast followed by equally spaced post-contrast acquisitions. Only a box around the mask is
computed; voxels farther than the blend margin from the mask are bit-identical to the input.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
from scipy import ndimage

from .boxes import bounding_box
from .capabilities import Capabilities
from .case import Case, check_finite
from .errors import SynBTError

KINETICS = ("plateau", "washout")


@dataclass(frozen=True)
class TumorAppearance:
    """Random appearance parameters of one synthetic tumor (drawn per seed)."""

    kinetics: str  # "plateau" or "washout"
    first_post_enhancement: float  # relative enhancement at the first post-contrast phase (1.0 = +100%)
    late_change: float  # relative change from the first to the last post-contrast phase
    heterogeneity: float  # std of the voxel-wise enhancement factor
    pre_contrast_factor: float  # tumor pre-contrast intensity / surrounding tissue's
    rim: bool
    rim_width_mm: float
    rim_centre_level: float  # enhancement of the centre relative to the rim, for rim tumors

    def enhancement_curve(self, num_phases: int) -> np.ndarray:
        """Mean relative enhancement per phase (0 at the pre-contrast phase)."""
        curve = np.zeros(num_phases)
        posts = num_phases - 1
        late = np.linspace(0.0, 1.0, posts) if posts > 1 else np.zeros(1)
        curve[1:] = self.first_post_enhancement * (1.0 + self.late_change * late)
        return curve

    def to_dict(self) -> dict:
        return asdict(self)


def draw_appearance(seed: int) -> TumorAppearance:
    """The appearance parameters that `HandcraftedSynthesizer` uses for this seed."""
    rng = np.random.default_rng(_seed_sequence(seed).spawn(2)[0])
    kinetics = KINETICS[int(rng.integers(len(KINETICS)))]
    # BI-RADS delayed phase: washout is a drop of more than 10%, plateau stays within +-10%.
    late_change = rng.uniform(-0.35, -0.15) if kinetics == "washout" else rng.uniform(-0.06, 0.06)
    return TumorAppearance(
        kinetics=kinetics,
        first_post_enhancement=float(rng.uniform(0.9, 1.9)),
        late_change=float(late_change),
        heterogeneity=float(rng.uniform(0.15, 0.35)),
        pre_contrast_factor=float(rng.uniform(0.85, 1.05)),
        rim=bool(rng.random() < 0.35),
        rim_width_mm=float(rng.uniform(1.5, 3.0)),
        rim_centre_level=float(rng.uniform(0.3, 0.6)),
    )


def _seed_sequence(seed: int) -> np.random.SeedSequence:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynBTError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.SeedSequence(int(seed))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _band_passed_noise(rng: np.random.Generator, shape, spacing_zyx, fine_mm: float, coarse_mm: float) -> np.ndarray:
    """Zero-mean, unit-std noise keeping structures between fine_mm and coarse_mm (difference of Gaussians)."""
    white = rng.standard_normal(shape)
    spacing = np.asarray(spacing_zyx)
    texture = ndimage.gaussian_filter(white, fine_mm / spacing) - ndimage.gaussian_filter(white, coarse_mm / spacing)
    return np.clip((texture - texture.mean()) / max(float(texture.std()), 1e-12), -2.5, 2.5)


def _noise_sigma(image: np.ndarray, where: np.ndarray) -> float:
    """Robust noise level: MAD of the residual after light smoothing, over `where`."""
    if where.sum() < 20:
        return 0.0
    residual = (image - ndimage.gaussian_filter(image, 1.0))[where]
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


@dataclass
class HandcraftedSynthesizer:
    """A Synthesizer (capabilities.py): ``synth(case, mask, seed, steps=None, progress=None) -> Case``;
    it takes no steps, curve type or necrosis (its curve type is drawn by the seed).

    blend_mm: the tumor fades out over this distance outside the mask (no hard edge).
    context_mm: the ring around the mask from which the tissue intensity and noise are measured.
    """

    capabilities: ClassVar[Capabilities] = Capabilities()
    blend_mm: float = 2.0
    context_mm: float = 8.0
    texture_fine_mm: float = 0.8
    texture_coarse_mm: float = 4.0

    def __call__(self, case: Case, mask: np.ndarray, seed: int, steps: int | None = None, progress=None) -> Case:
        mask = self._check(case, mask)
        appearance = draw_appearance(seed)
        rng = np.random.default_rng(_seed_sequence(seed).spawn(2)[1])
        total = case.num_phases + 2
        report = progress or (lambda done, total, message: None)

        report(0, total, "measuring the tissue around the mask")
        spacing = np.asarray(case.geometry.spacing[::-1], dtype=np.float64)
        margin_vox = np.ceil(max(self.context_mm, self.blend_mm) / spacing).astype(int) + 1
        box = bounding_box(mask, margin_vox)
        inside = mask[box]
        original = case.phases[(slice(None), *box)].astype(np.float64)
        distance_out = ndimage.distance_transform_edt(~inside, sampling=spacing)
        distance_in = ndimage.distance_transform_edt(inside, sampling=spacing)
        weight = np.where(inside, 1.0, _smoothstep(1.0 - distance_out / self.blend_mm))
        baseline, noise = self._surroundings(case, original, distance_out)

        report(1, total, "texturing the tumor")
        pattern = self._enhancement_pattern(rng, appearance, inside, distance_in, spacing)
        pre_texture = _band_passed_noise(rng, inside.shape, spacing, self.texture_fine_mm, self.texture_coarse_mm)
        tumor_pre = baseline * appearance.pre_contrast_factor * (1.0 + 0.06 * pre_texture)

        result = case.phases.copy()
        floor = float(original.min())
        curve = appearance.enhancement_curve(case.num_phases)
        for k in range(case.num_phases):
            report(2 + k, total, f"phase {k + 1}/{case.num_phases}")
            tumor = tumor_pre * (1.0 + curve[k] * pattern) + noise * rng.standard_normal(inside.shape)
            blended = (1.0 - weight) * original[k] + weight * np.maximum(tumor, floor)
            region = result[(k, *box)]
            region[weight > 0] = blended[weight > 0].astype(np.float32)
        report(total, total, "tumor synthesized")
        return case.with_phases(result)

    def describe(self, seed: int, kinetics=None, mask=None, spacing_zyx=None, necrosis=None) -> dict:
        """The settings and the drawn appearance of the tumor for `seed`, for provenance (the other
        arguments of the Synthesizer protocol change nothing here)."""
        return {"blend_mm": self.blend_mm, "context_mm": self.context_mm, "appearance": draw_appearance(seed).to_dict()}

    @staticmethod
    def _check(case: Case, mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.shape != case.shape:
            raise SynBTError(f"mask of shape {mask.shape} does not match the case grid {case.shape} (Z, Y, X)")
        mask = mask > 0
        if not mask.any():
            raise SynBTError("the tumor mask is empty")
        check_finite(case.phases, "the case")
        return mask

    def _surroundings(self, case: Case, original: np.ndarray, distance_out: np.ndarray):
        """Pre-contrast intensity of fibroglandular-like tissue around the mask, and the noise level.

        Fibroglandular tissue enhances more than fat whatever the fat suppression, so it is taken as
        the most-enhancing quarter of the tissue (not air) in a ring around the mask.
        """
        pre = original[0]
        ring = (distance_out > self.blend_mm) & (distance_out <= self.context_mm)
        full_pre = case.phases[0, ::2, ::2, ::2]  # a subsample is enough for a percentile
        air_level = 0.1 * float(np.percentile(full_pre, 99.0))
        tissue = ring & (pre > air_level)
        if tissue.sum() < 20:  # the mask sits in air or at the image edge: fall back on the whole body
            body = full_pre[full_pre > air_level]
            baseline = float(np.median(body)) if body.size else 0.0
        else:
            smooth_pre, smooth_post = (ndimage.gaussian_filter(original[k], 1.0) for k in (0, 1))
            enhancement = (smooth_post - smooth_pre)[tissue] / np.maximum(smooth_pre[tissue], 1e-6)
            fibroglandular = enhancement >= np.percentile(enhancement, 75)
            baseline = float(np.median(pre[tissue][fibroglandular]))
        if baseline <= 0:
            raise SynBTError("the pre-contrast phase has no positive tissue intensity around the mask")
        return baseline, _noise_sigma(pre, tissue)

    def _enhancement_pattern(self, rng, appearance: TumorAppearance, inside, distance_in, spacing) -> np.ndarray:
        """Voxel-wise enhancement factor, mean 1 over the mask: texture, and a rim if drawn."""
        texture = _band_passed_noise(rng, inside.shape, spacing, self.texture_fine_mm, self.texture_coarse_mm)
        pattern = np.maximum(1.0 + appearance.heterogeneity * texture, 0.2)
        if appearance.rim:
            level = appearance.rim_centre_level
            depth = np.maximum(distance_in - spacing.min(), 0.0)
            pattern = pattern * (level + (1.0 - level) * np.exp(-depth / appearance.rim_width_mm))
        return pattern / float(pattern[inside].mean())
