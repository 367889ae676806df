"""Moment calibration of a denoiser's samples against the autoencoder's own latents (opt-in).

A denoiser trained briefly on a small cohort (a CPU run on the phantom) gets the tumors' latent
statistics wrong in a systematic way: re-encoded, its tumors' pre-contrast channels spread up to
4x as much as real tumors' (speckle where a real tumor is flat) and its curve-type label barely
moves the late phase. ``synbt calibrate`` measures that per latent channel on tumors
of a calibration cohort, in the denoiser's (standardized) space: for every tumor, the mean and
spread over its cells of the encoded real tumor and of a tumor the pipeline generates into the
same mask. From them it fits, per channel,

    factor = geometric mean of (real spread / generated spread)
    shift  = mean of (real mean - generated mean)

(the spread ratio over tumors of at least MIN_SPREAD_CELLS cells, each tumor weighted alike: an
RMS ratio lets a few large heterogeneous tumors set it; on the phantom both scored the same
realism, the geometric mean left less pre-contrast speckle: std 0.167 vs 0.189, real 0.109)

and stores them in a new bundle. For a denoiser with curve-type labels every tumor is generated with
the curve type of the real one (measured on its voxels), and the shift is also fitted per type
(types with at least two tumors; the others use the pooled shift): a denoiser that moves the
late-phase level far less than the label asks is moved by its type's shift (on the phantom, about
half of the way to the real tumors' late change). The pipeline then maps every generated tumor's cells as
``mean + shift + (latent - mean) * factor`` (per channel, the mean over that tumor's cells), so a
tumor keeps its own structure and level relative to its context and only the systematic error of
the sampler is removed. Cells outside the tumor (the generated rim and the context) are untouched.
Use a cohort the denoiser was not trained on, so what is measured is the sampler's error on new
tumors, not its memory of the training ones.

A second, per-phase stage (``ImageCalibration``, on by default) is then fitted the same way on
whole syntheses that carry the latent calibration: per DCE phase, the mean and spread over the
mask's voxels of the real tumor and of the synthetic one, in the case's normalized units, and
the pipeline maps every generated tumor's voxels after decoding. It corrects what the latent
stage cannot reach: the decoder is not linear, and a tumor's edge voxels lie in cells that are
mostly context (on the phantom the latent stage left the pre-contrast spread 1.5x the real one).

The image stage also carries a shape map (``ShapeMap``): a moment map cannot change the form of
a tumor's intensity histogram, and on the phantom a real tumor's post-contrast voxels are skewed
to the right (a few bright voxels; (p90 - median) / (median - p10) = 1.19) where the generated
ones lean left (0.94). Per phase, every tumor's voxel values are standardized over the tumor
(z = (value - mean) / std) and their quantiles at SHAPE_LEVELS averaged over the calibration
tumors, real and generated apart; the pipeline maps a generated tumor's z monotonically from the
generated quantiles onto the real ones, then restores the tumor's mean and spread, so only the
histogram's form changes, never a voxel's rank. Tumors generated with a necrotic core (whose
histogram the core shapes) get a map of their own, or none.

Two more parts of the image stage, fitted on the same syntheses. A texture map (``TextureMap``,
first): a denoiser's latents decode into tumors whose voxel-scale texture is not the real one. On
the phantom their neighbouring voxels are too alike (mean squared difference over the variance,
``lag_ratio``, 1.25 vs 1.46 pre-contrast) and voxels one latent cell (2 voxels) apart too unlike
for their distance (``cell_excess``, the bump of the ratio there over its neighbours: 0.29-0.31 vs
0.04-0.19): a pattern whose period is two latent cells, which gives the subtraction image a tiled
look and its GLCM homogeneity away. Per phase, a fraction of the image is replaced by the mean of
the voxels one latent cell before and after along each axis (``latent_notch``: it shrinks that
period and keeps the mean), then seeded white detail brings the lag-1 ratio to the real tumors',
each tumor's mean and spread kept; the fraction is fitted so that the excess matches too. A necrotic
core is a region of its own there, with its own mean, spread and target (``core_target``, the real
cores' ratio): the core's contrast with the rim would otherwise inflate the tumor's variance and with
it the detail and speckle the core with voxels as bright as the rim (the real cores' own ratio is
near white noise, ~1.8 post-contrast, at their own small spread).
Curve maps (``CurveMap``, last): per curve type, the tumor-level log ratios of the mean signal from
one phase to the next, the generated ones mapped onto the real tumors' mean and spread: the
curve-type label moves a tumor's late phase too little and too unevenly (asked for washout, most
came out plateau).
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .boxes import bounding_box
from .errors import SynBTError
from .kinetics import CURVE_TYPES, tumor_curve_type

CONFIG_KEY = "latent_calibration"
IMAGE_CONFIG_KEY = "image_calibration"
# a tumor's spread over fewer latent cells says little; such tumors count for the shift only
MIN_SPREAD_CELLS = 8
# the quantile levels of a ShapeMap, and the calibration tumors (of a kind: with or without a core) it needs
SHAPE_LEVELS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
MIN_SHAPE_TUMORS = 3
MIN_CURVE_TUMORS = 3  # real tumors of a curve type for its own CurveMap
NOTCH_GRID = tuple(round(0.05 * k, 2) for k in range(11))  # the latent_notch strengths a texture fit tries


def tumor_cells(mask: torch.Tensor, compression: int) -> torch.Tensor:
    """(B, 1, Z, Y, X) voxel mask -> (B, 1, Z/c, Y/c, X/c) bool: latent cells at least half tumor.

    A tumor smaller than half a cell keeps the cells it covers most."""
    if mask.ndim != 5 or mask.shape[1] != 1:
        raise SynBTError(f"mask must be (B, 1, Z, Y, X), got {tuple(mask.shape)}")
    c = int(compression)
    pad = [0, (-mask.shape[4]) % c, 0, (-mask.shape[3]) % c, 0, (-mask.shape[2]) % c]
    fraction = F.avg_pool3d(F.pad((mask > 0).float(), pad), kernel_size=c, stride=c)
    cells = fraction >= 0.5
    peak = fraction.amax(dim=(2, 3, 4), keepdim=True)
    return cells | ((fraction == peak) & (peak > 0))


def channel_moments(latent: torch.Tensor, cells: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of a (1, C, z, y, x) latent over the True ``cells``."""
    values = latent[0][:, cells[0, 0]].double()
    if values.shape[1] == 0:
        raise SynBTError("the tumor covers no latent cell")
    return values.mean(dim=1).cpu().numpy(), values.std(dim=1, unbiased=False).cpu().numpy()


def lag_ratio(image: np.ndarray, mask: np.ndarray, lag=1) -> np.ndarray:
    """Per phase of a (P, Z, Y, X) ``image``: the mean squared difference of the voxel pairs ``lag`` apart
    (voxels, or one number per (z, y, x) axis) along any axis, both inside ``mask``, over the variance
    inside the mask (2 for white noise, near 0 for a smooth image; nan without a pair or a spread)."""
    inside = np.asarray(mask) > 0
    total, pairs = np.zeros(image.shape[0]), 0
    for axis, lag in enumerate(np.broadcast_to(np.asarray(lag, int), 3)):
        n = inside.shape[axis]
        if n <= lag:
            continue
        both = np.take(inside, range(n - lag), axis=axis) & np.take(inside, range(lag, n), axis=axis)
        steps = np.take(image, range(lag, n), axis=axis + 1) - np.take(image, range(n - lag), axis=axis + 1)
        total += (steps[:, both].astype(np.float64) ** 2).sum(axis=1)
        pairs += int(both.sum())
    variance = image[:, inside].astype(np.float64).var(axis=1) if inside.any() else np.zeros(image.shape[0])
    if pairs == 0 or not (variance > 0).all():
        return np.full(image.shape[0], np.nan)
    return total / pairs / variance


def cell_excess(image: np.ndarray, mask: np.ndarray, lags) -> np.ndarray:
    """Per phase: the ``lag_ratio`` one latent cell apart (``lags`` voxels per axis, each 2 or more) less
    the mean of those a voxel nearer and a voxel farther: a texture with a period of two latent cells
    has a bump there, the real tumors' smooth ratios hardly one (on the phantom 0.02-0.18 vs 0.33)."""
    lags = np.asarray(lags, int)
    return lag_ratio(image, mask, lags) - (lag_ratio(image, mask, lags - 1) + lag_ratio(image, mask, lags + 1)) / 2


def latent_notch(image: np.ndarray, strength, lags) -> np.ndarray:
    """(P, Z, Y, X) ``image`` with, along each axis in turn, the fraction ``strength`` (one per phase,
    0..0.5) of every voxel replaced by the mean of the voxels ``lags[axis]`` (a latent cell) before and
    after it (edge values beyond the border): the pattern whose period is two latent cells shrinks by
    1 - 2 * strength per axis, the mean and patterns of one cell's period stay; a new array."""
    out = np.asarray(image, np.float32)
    strength = np.asarray(strength, np.float32).reshape(-1, 1, 1, 1)
    for axis, lag in enumerate(lags):
        n = out.shape[axis + 1]
        index = np.arange(n)
        before = np.take(out, np.clip(index - lag, 0, n - 1), axis=axis + 1)
        after = np.take(out, np.clip(index + lag, 0, n - 1), axis=axis + 1)
        out = (1 - strength) * out + strength * (before + after) / 2
    return out


@dataclass(frozen=True)
class TextureMap:
    """Per phase, ``notch``: the strength of ``latent_notch``, and ``target``: the real tumors' lag-1
    ``lag_ratio`` (outside any necrotic core) that seeded white detail restores, ``core_target`` that of
    the real necrotic cores (None: a core gets no detail); see the module doc. Each tumor, and each
    core apart, keeps its mean and spread."""

    notch: tuple[float, ...]
    target: tuple[float, ...]
    core_target: tuple[float, ...] | None = None
    # one detail pattern for every post-contrast phase (each scaled to its own target): detail drawn
    # apart per phase decorrelates the phases a real tumor's perfusion couples
    shared_detail: bool = False

    def __post_init__(self):
        notch, target = np.asarray(self.notch, np.float64), np.asarray(self.target, np.float64)
        if notch.ndim != 1 or notch.shape != target.shape or not notch.size:
            raise SynBTError(f"{IMAGE_CONFIG_KEY} texture needs one notch and one target per phase")
        if not (np.isfinite(notch).all() and (notch >= 0).all() and (notch <= 0.5).all()):
            raise SynBTError(f"{IMAGE_CONFIG_KEY} texture notch strengths must lie from 0 to 0.5")
        for name, values in (("targets", target), ("core targets", self.core_target)):
            if values is None:
                continue
            values = np.asarray(values, np.float64)
            if values.shape != notch.shape:
                raise SynBTError(f"{IMAGE_CONFIG_KEY} texture needs one of its {name} per phase")
            if not (np.isfinite(values).all() and (values > 0).all() and (values < 2).all()):
                raise SynBTError(f"{IMAGE_CONFIG_KEY} texture {name} must lie between 0 and 2 (white noise)")

    @property
    def channels(self) -> int:
        return len(self.notch)

    def apply(self, image: np.ndarray, mask: np.ndarray, lags, seed: int = 0,
              core: np.ndarray | None = None) -> np.ndarray:
        """(P, Z, Y, X) ``image`` with the texture of each connected tumor of ``mask`` mapped, the part of
        it in the necrotic ``core`` (Z, Y, X; optional) apart (``lags``: a latent cell in voxels per
        axis; ``seed``: of the detail); a new array, other voxels unchanged."""
        mask = np.asarray(mask) > 0
        core = np.zeros_like(mask) if core is None else mask & (np.asarray(core) > 0)
        notched = latent_notch(image, self.notch, lags)
        rng = np.random.default_rng([int(seed), 13])
        out = np.array(image, copy=True)
        for region, target in ((mask & ~core, self.target), (core, self.core_target)):
            components, count = ndimage.label(region, structure=np.ones((3, 3, 3)))
            for label in range(1, count + 1):
                inside = components == label
                original = image[:, inside].astype(np.float64)
                values = _standardized(notched[:, inside].astype(np.float64))
                if target is not None:
                    ratio = lag_ratio(notched, inside, 1)
                    goal = np.asarray(target, np.float64)
                    # white detail of variance s (over the region's) moves the ratio to (ratio + 2 s) / (1 + s)
                    detail = np.clip(np.nan_to_num((goal - ratio) / (2 - goal)), 0.0, None)[:, None]
                    noise = rng.standard_normal(values.shape)
                    if self.shared_detail:
                        noise[2:] = noise[1]
                    values = _standardized(values + np.sqrt(detail) * noise)
                out[:, inside] = (original.mean(axis=1, keepdims=True)
                                  + original.std(axis=1, keepdims=True) * values).astype(out.dtype)
        return out

    def to_config(self) -> dict:
        entry = {"notch": list(self.notch), "target": list(self.target)}
        if self.core_target is not None:
            entry["core_target"] = list(self.core_target)
        if self.shared_detail:
            entry["shared_detail"] = True
        return entry

    @classmethod
    def from_config(cls, entry) -> "TextureMap":
        keys = {"notch", "target", "core_target", "shared_detail"}
        if not isinstance(entry, dict) or not {"notch", "target"} <= set(entry) <= keys:
            raise SynBTError(f"{IMAGE_CONFIG_KEY} texture must hold notch and target (and optionally core_target, "
                             "shared_detail)")
        if not isinstance(entry.get("shared_detail", False), bool):
            raise SynBTError(f"{IMAGE_CONFIG_KEY} texture shared_detail must be true or false")
        return cls(*(_numbers(entry[k], f"texture {k}", IMAGE_CONFIG_KEY) if k in entry else None
                     for k in ("notch", "target", "core_target")), shared_detail=entry.get("shared_detail", False))


@dataclass(frozen=True)
class CoherenceMap:
    """The post-contrast phases of a tumor drawn from one shared pattern (see the module doc).

    ``target``: the real tumors' mean voxel correlation between post-contrast phases (outside any
    necrotic core), ``core_target`` that of the real cores (None: a core is left alone). Per
    connected region, each post phase's standardized values ``z_k`` are pulled toward their mean
    ``g``, ``g + a (z_k - g)``, with the one ``a`` in [0, 1] that gives the target mean pairwise
    correlation (``a = 1``, no change, where the phases already agree as much); each phase keeps its
    mean and spread. The pre-contrast phase is untouched."""

    target: float
    core_target: float | None = None
    # what the phases do not share: "own" (the generated tumor's own residual, shrunk) or "white" (the
    # shared pattern plus seeded white noise per phase, like a real scan's acquisition noise)
    residual: str = "own"

    def __post_init__(self):
        for name, value in (("target", self.target), ("core_target", self.core_target)):
            if value is not None and not (np.isfinite(value) and -1.0 < value <= 1.0):
                raise SynBTError(f"{IMAGE_CONFIG_KEY} coherence {name} must be a correlation, got {value}")
        if self.residual not in ("own", "white"):
            raise SynBTError(f"{IMAGE_CONFIG_KEY} coherence residual must be own or white, got {self.residual!r}")

    def apply(self, image: np.ndarray, mask: np.ndarray, core: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        """(P, Z, Y, X) ``image`` with the post phases of each connected tumor of ``mask`` (the part in the
        necrotic ``core`` apart) made as coherent as the target (``seed``: of a white residual); a new
        array, other voxels unchanged."""
        rng = np.random.default_rng([int(seed), 17])
        mask = np.asarray(mask) > 0
        core = np.zeros_like(mask) if core is None else mask & (np.asarray(core) > 0)
        out = np.array(image, copy=True)
        if image.shape[0] < 3:
            return out
        for region, target in ((mask & ~core, self.target), (core, self.core_target)):
            if target is None:
                continue
            components, count = ndimage.label(region, structure=np.ones((3, 3, 3)))
            for label in range(1, count + 1):
                inside = components == label
                values = image[1:, inside].astype(np.float64)
                if values.shape[1] < 3 or not (values.std(axis=1) > 0).all():
                    continue
                z = _standardized(values)
                if self.residual == "white":
                    z = z.mean(axis=0, keepdims=True) + rng.standard_normal(z.shape)
                out[1:, inside] = (values.mean(axis=1, keepdims=True) + values.std(axis=1, keepdims=True)
                                   * pulled_together(z, target)).astype(out.dtype)
        return out

    def to_config(self) -> dict:
        return ({"target": self.target} | ({} if self.core_target is None else {"core_target": self.core_target})
                | ({} if self.residual == "own" else {"residual": self.residual}))

    @classmethod
    def from_config(cls, entry) -> "CoherenceMap":
        if not isinstance(entry, dict) or not {"target"} <= set(entry) <= {"target", "core_target", "residual"}:
            raise SynBTError(f"{IMAGE_CONFIG_KEY} coherence must hold target (and optionally core_target, residual)")
        values = [entry.get(k) for k in ("target", "core_target")]
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            raise SynBTError(f"{IMAGE_CONFIG_KEY} coherence target and core_target must be numbers")
        return cls(*(None if v is None else float(v) for v in values), residual=str(entry.get("residual", "own")))


def mean_correlation(values: np.ndarray) -> float:
    """Mean pairwise correlation of the rows of (K >= 2, N) ``values`` (nan if a row has no spread)."""
    values = np.asarray(values, np.float64)
    if values.shape[0] < 2 or not (values.std(axis=1) > 0).all():
        return np.nan
    matrix = np.corrcoef(values)
    return float(matrix[np.triu_indices(len(matrix), 1)].mean())


def pulled_together(z: np.ndarray, target: float, iterations: int = 40) -> np.ndarray:
    """(K, N) standardized rows moved toward their mean g as ``g + a (z - g)``, re-standardized, with
    ``a`` in [0, 1] found by bisection so the rows' mean pairwise correlation is ``target`` (rows that
    already agree as much are returned as they are)."""
    if mean_correlation(z) >= target:
        return z
    g = z.mean(axis=0, keepdims=True)
    low, high = 0.0, 1.0  # the correlation falls as a grows
    for _ in range(iterations):
        middle = (low + high) / 2
        low, high = (middle, high) if mean_correlation(g + middle * (z - g)) > target else (low, middle)
    return _standardized(g + low * (z - g))


def coherence_targets(tumors: Iterable[tuple]) -> CoherenceMap | None:
    """The CoherenceMap of real ``(phases, inside, core)`` tumors (normalized or raw units alike): the
    mean post-phase correlation over the tumors outside their cores, and inside the cores where
    MIN_SHAPE_TUMORS cores or more have one (None: fewer than 3 phases or no tumor with a spread)."""
    tissue, cores = [], []
    for phases, inside, core in tumors:
        if np.shape(phases)[0] < 3:
            return None
        inside = np.asarray(inside) > 0
        core = np.zeros_like(inside) if core is None else inside & (np.asarray(core) > 0)
        for region, into in ((inside & ~core, tissue), (core, cores)):
            if region.sum() >= 3:
                value = mean_correlation(np.asarray(phases)[1:, region])
                if np.isfinite(value):
                    into.append(value)
    if not tissue:
        return None
    core_target = float(np.mean(cores)) if len(cores) >= MIN_SHAPE_TUMORS else None
    return CoherenceMap(float(np.mean(tissue)), core_target)


def _standardized(values: np.ndarray) -> np.ndarray:
    """(P, N) values with each row moved to mean 0 and spread 1 (a row without spread to 0)."""
    std = values.std(axis=1, keepdims=True)
    return (values - values.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)


def standardized_quantiles(values: np.ndarray) -> np.ndarray:
    """(P, N) values of one tumor -> (P, len(SHAPE_LEVELS)) quantiles of each row standardized over the row."""
    return np.quantile(_standardized(np.asarray(values, np.float64)), SHAPE_LEVELS, axis=1).T


@dataclass(frozen=True)
class ShapeMap:
    """Per phase, a monotone map of a tumor's standardized values from the ``generated`` tumors' average
    quantiles (at SHAPE_LEVELS) onto the ``real`` ones' (see the module doc); linear with slope 1
    beyond the outer levels."""

    generated: tuple[tuple[float, ...], ...]  # (phases, levels)
    real: tuple[tuple[float, ...], ...]

    def __post_init__(self):
        generated, real = np.asarray(self.generated, np.float64), np.asarray(self.real, np.float64)
        if generated.ndim != 2 or generated.shape != real.shape or generated.shape[1] != len(SHAPE_LEVELS):
            raise SynBTError(f"{IMAGE_CONFIG_KEY} shape map needs {len(SHAPE_LEVELS)} generated and real quantiles "
                             f"per phase, got {generated.shape} and {real.shape}")
        if not (np.isfinite(generated).all() and np.isfinite(real).all()):
            raise SynBTError(f"{IMAGE_CONFIG_KEY} shape map quantiles must be finite")
        if not ((np.diff(generated, axis=1) > 0).all() and (np.diff(real, axis=1) >= 0).all()):
            raise SynBTError(f"{IMAGE_CONFIG_KEY} shape map quantiles must increase with the level")

    @property
    def channels(self) -> int:
        return len(self.generated)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """(P, N) voxel values of one tumor, each phase's histogram reshaped, mean and spread kept."""
        values = np.asarray(values)
        mean = values.mean(axis=1, keepdims=True, dtype=np.float64)
        std = values.std(axis=1, keepdims=True, dtype=np.float64)
        out = values.astype(np.float64, copy=True)
        for phase, (generated, real) in enumerate(zip(self.generated, self.real)):
            if std[phase, 0] <= 0 or values.shape[1] < 2:
                continue
            z = (out[phase] - mean[phase]) / std[phase]
            mapped = np.interp(z, generated, real)
            mapped = np.where(z < generated[0], real[0] + (z - generated[0]), mapped)
            mapped = np.where(z > generated[-1], real[-1] + (z - generated[-1]), mapped)
            spread = mapped.std()
            if spread > 0:
                out[phase] = mean[phase] + std[phase] * (mapped - mapped.mean()) / spread
        return out.astype(values.dtype, copy=False)

    def to_config(self) -> dict:
        return {"levels": list(SHAPE_LEVELS), "generated": [list(q) for q in self.generated],
                "real": [list(q) for q in self.real]}

    @classmethod
    def from_config(cls, entry, name: str) -> "ShapeMap":
        if not isinstance(entry, dict) or set(entry) != {"levels", "generated", "real"}:
            raise SynBTError(f"{IMAGE_CONFIG_KEY} {name} must be an object with 'levels', 'generated' and 'real'")
        if _numbers(entry["levels"], f"{name} levels", IMAGE_CONFIG_KEY) != SHAPE_LEVELS:
            raise SynBTError(f"{IMAGE_CONFIG_KEY} {name} was fitted at other quantile levels than this version's "
                             f"{list(SHAPE_LEVELS)}; recalibrate the bundle")
        rows = {}
        for key in ("generated", "real"):
            if not isinstance(entry[key], list):
                raise SynBTError(f"{IMAGE_CONFIG_KEY} {name} {key} must be a list of lists of numbers")
            rows[key] = tuple(_numbers(q, f"{name} {key}", IMAGE_CONFIG_KEY) for q in entry[key])
        return cls(rows["generated"], rows["real"])


@dataclass(frozen=True)
class _MomentMap:
    """Per-channel ``shift`` and ``factor`` (and per-curve-type shifts) that map a tumor's values as
    ``mean + shift + (value - mean) * factor``, the mean taken per channel over that tumor."""

    shift: tuple[float, ...]
    factor: tuple[float, ...]
    kinetic_shift: dict[str, tuple[float, ...]] = field(default_factory=dict)  # curve type -> its own shift
    # the factor of tumors generated with a necrotic core, where one was fitted (``factor`` is then
    # that of the tumors without one): a core spreads a tumor's values far more than its absence does
    necrotic_factor: tuple[float, ...] | None = None

    CONFIG_KEY = CONFIG_KEY
    UNIT = "channel"  # what one entry of shift and factor belongs to, for messages
    TARGET = "the latent"
    EXTRA_KEYS = ()  # a subclass's own config keys (see _extras_from_config)

    def __post_init__(self):
        key = self.CONFIG_KEY
        shift, factor = np.asarray(self.shift, np.float64), np.asarray(self.factor, np.float64)
        if shift.ndim != 1 or shift.shape != factor.shape or shift.size == 0:
            raise SynBTError(f"{key} needs one shift and one factor per {self.UNIT}, got "
                             f"{shift.shape} and {factor.shape}")
        if not (np.isfinite(shift).all() and np.isfinite(factor).all() and (factor > 0).all()):
            raise SynBTError(f"{key}: the shifts must be finite and the factors positive")
        if self.necrotic_factor is not None:
            necrotic = np.asarray(self.necrotic_factor, np.float64)
            if necrotic.shape != factor.shape or not (np.isfinite(necrotic).all() and (necrotic > 0).all()):
                raise SynBTError(f"{key}: necrotic_factor needs one positive factor per {self.UNIT}")
        for name, values in self.kinetic_shift.items():
            values = np.asarray(values, np.float64)
            if name not in CURVE_TYPES or values.shape != shift.shape or not np.isfinite(values).all():
                raise SynBTError(f"{key}: kinetic_shift needs finite shifts, one per {self.UNIT}, for curve "
                                 f"types among {CURVE_TYPES} (got {name!r})")

    @property
    def channels(self) -> int:
        return len(self.shift)

    def shift_for(self, kinetics: str | None) -> tuple[float, ...]:
        """The shift of curve type ``kinetics`` where one was fitted, else the pooled one."""
        return self.kinetic_shift.get(kinetics, self.shift)

    def factor_for(self, necrotic: bool) -> tuple[float, ...]:
        """The factor of a tumor with (``necrotic``) or without a necrotic core."""
        return self.necrotic_factor if necrotic and self.necrotic_factor is not None else self.factor

    def to_config(self) -> dict:
        entry = {"shift": list(self.shift), "factor": list(self.factor)}
        if self.necrotic_factor is not None:
            entry["necrotic_factor"] = list(self.necrotic_factor)
        if self.kinetic_shift:
            entry["kinetic_shift"] = {name: list(values) for name, values in self.kinetic_shift.items()}
        return {self.CONFIG_KEY: entry | self._extras_to_config()}

    def _extras_to_config(self) -> dict:
        return {}

    @classmethod
    def _extras_from_config(cls, entry: dict) -> dict:
        """The subclass's own fields (keyword arguments) from its EXTRA_KEYS in the config ``entry``."""
        return {}

    @classmethod
    def from_config(cls, config: dict, channels: int):
        """The calibration a bundle config records (None if it has none), checked against ``channels``."""
        key = cls.CONFIG_KEY
        entry = config.get(key)
        if entry is None:
            return None
        if not isinstance(entry, dict) or "shift" not in entry or "factor" not in entry:
            raise SynBTError(f"{key} must be an object with 'shift' and 'factor' lists")
        unknown = sorted(set(entry) - {"shift", "factor", "kinetic_shift", "necrotic_factor", *cls.EXTRA_KEYS})
        if unknown:
            raise SynBTError(f"{key} has unknown key(s) {', '.join(map(repr, unknown))}")
        kinetic = entry.get("kinetic_shift", {})
        if not isinstance(kinetic, dict):
            raise SynBTError(f"{key} kinetic_shift must map curve types to lists of numbers")
        necrotic = entry.get("necrotic_factor")
        calibration = cls(_numbers(entry["shift"], "shift", key), _numbers(entry["factor"], "factor", key),
                          {str(k): _numbers(v, f"kinetic_shift {k}", key) for k, v in kinetic.items()},
                          None if necrotic is None else _numbers(necrotic, "necrotic_factor", key),
                          **cls._extras_from_config(entry))
        if calibration.channels != channels:
            raise SynBTError(f"{key} has {calibration.channels} {cls.UNIT}s, {cls.TARGET} {channels}")
        return calibration


class LatentCalibration(_MomentMap):
    """Per latent channel, applied to a generated tumor's latent cells (see the module doc)."""

    def apply(self, latent: torch.Tensor, cells: torch.Tensor, kinetics: str | None = None) -> torch.Tensor:
        """(1, C, z, y, x) latent with its ``cells`` (1, 1, z, y, x bool) mapped; other cells unchanged.
        ``kinetics``: the curve type the tumor was generated with (its shift, if fitted)."""
        if latent.shape[1] != self.channels:
            raise SynBTError(f"the calibration has {self.channels} channels, the latent {latent.shape[1]}")
        if latent.shape[0] != 1 or cells.shape != (1, 1, *latent.shape[2:]):
            raise SynBTError(f"apply takes one latent (1, C, z, y, x) and its cells (1, 1, z, y, x), got "
                             f"{tuple(latent.shape)} and {tuple(cells.shape)}")
        shape = (1, -1, 1, 1, 1)
        shift = torch.tensor(self.shift_for(kinetics), dtype=latent.dtype, device=latent.device).reshape(shape)
        factor = torch.tensor(self.factor, dtype=latent.dtype, device=latent.device).reshape(shape)
        # each separate tumor of a multifocal mask around its own mean, as the fit measured them
        components, count = ndimage.label(cells[0, 0].cpu().numpy(), structure=np.ones((3, 3, 3)))
        components = torch.from_numpy(components).to(latent.device)
        out = latent
        for label in range(1, count + 1):
            inside = components == label
            mean = latent[0][:, inside].mean(dim=1).reshape(shape)
            out = torch.where(inside, mean + shift + (latent - mean) * factor, out)
        return out


@dataclass(frozen=True)
class CurveMap:
    """Tumor-level kinetics of the tumors of one curve type: per step from one DCE phase to the next,
    the log ratio of a tumor's mean signal (in the scanner's units: the ratios are the relative
    enhancement), its mean and spread over the real tumors and over the generated ones. ``apply``
    maps a generated tumor's steps as ``real_mean + (step - generated_mean) * real_std / generated_std``
    and scales each post-contrast phase of the tumor to the mapped mean signal."""

    real_mean: tuple[float, ...]  # one per step (phases - 1)
    real_std: tuple[float, ...]
    generated_mean: tuple[float, ...]
    generated_std: tuple[float, ...]

    def __post_init__(self):
        values = [np.asarray(v, np.float64) for v in (self.real_mean, self.real_std, self.generated_mean,
                                                      self.generated_std)]
        if any(v.ndim != 1 or v.shape != values[0].shape for v in values) or values[0].size == 0:
            raise SynBTError(f"{IMAGE_CONFIG_KEY} curves need one real and generated mean and spread per phase step")
        if not all(np.isfinite(v).all() for v in values) or (values[1] < 0).any() or (values[3] <= 0).any():
            raise SynBTError(f"{IMAGE_CONFIG_KEY} curves must be finite, with positive generated spreads")

    @property
    def channels(self) -> int:
        return len(self.real_mean) + 1

    def apply(self, values: np.ndarray, zero: float = 0.0) -> np.ndarray:
        """(P, N) normalized voxel values of one tumor (``zero``: the scanner's zero in normalized units)
        with its post-contrast phases scaled to the mapped kinetics; unchanged where a phase's mean
        signal is not positive (no ratio to take)."""
        signal = np.asarray(values, np.float64) - zero
        means = signal.mean(axis=1)
        if not (means > 0).all():
            return values
        steps = np.log(means[1:] / means[:-1])
        mapped = np.asarray(self.real_mean) + (steps - np.asarray(self.generated_mean)) * (
            np.asarray(self.real_std) / np.asarray(self.generated_std))
        target = means[0] * np.exp(np.cumsum(mapped))
        out = signal.copy()
        out[1:] *= (target / means[1:])[:, None]
        return (out + zero).astype(np.asarray(values).dtype, copy=False)

    def to_config(self) -> dict:
        return {"real_mean": list(self.real_mean), "real_std": list(self.real_std),
                "generated_mean": list(self.generated_mean), "generated_std": list(self.generated_std)}

    @classmethod
    def from_config(cls, entry, name: str) -> "CurveMap":
        keys = ("real_mean", "real_std", "generated_mean", "generated_std")
        if not isinstance(entry, dict) or set(entry) != set(keys):
            raise SynBTError(f"{IMAGE_CONFIG_KEY} curves {name} must be an object with {', '.join(map(repr, keys))}")
        return cls(*(_numbers(entry[k], f"curves {name} {k}", IMAGE_CONFIG_KEY) for k in keys))


CURVE_KEYS = ("all", *CURVE_TYPES)  # the curve maps a calibration may hold: all tumors pooled, then per type


@dataclass(frozen=True)
class ImageCalibration(_MomentMap):
    """Per DCE phase, in normalized units, applied to a generated tumor's voxels after decoding: the
    voxel-scale texture (``texture``), the level and contrast error the latent calibration
    leaves (the decoder is not linear, and a tumor's edge voxels lie in latent cells that are mostly
    context), the histogram's form (``shape``; ``necrotic_shape`` for tumors generated with a
    necrotic core, which get none without it), and the tumor's kinetics (``curves``: of the curve
    type asked for, else "all"), in this order."""

    shape: ShapeMap | None = None
    necrotic_shape: ShapeMap | None = None
    curves: dict[str, CurveMap] = field(default_factory=dict)
    texture: TextureMap | None = None  # applied first (after the coherence map)
    coherence: CoherenceMap | None = None  # applied before all else

    CONFIG_KEY = IMAGE_CONFIG_KEY
    UNIT = "phase"
    TARGET = "the model"
    EXTRA_KEYS = ("shape", "necrotic_shape", "curves", "texture", "coherence")

    def __post_init__(self):
        super().__post_init__()
        if self.texture is not None and self.texture.channels != self.channels:
            raise SynBTError(f"{IMAGE_CONFIG_KEY} texture has {self.texture.channels} phases, the shifts {self.channels}")
        for name in ("shape", "necrotic_shape"):
            shape = getattr(self, name)
            if shape is not None and shape.channels != self.channels:
                raise SynBTError(f"{IMAGE_CONFIG_KEY} {name} has {shape.channels} phases, the shifts {self.channels}")
        for name, curve in self.curves.items():
            if name not in CURVE_KEYS or curve.channels != self.channels:
                raise SynBTError(f"{IMAGE_CONFIG_KEY} curves: one map per key among {CURVE_KEYS}, each of "
                                 f"{self.channels - 1} phase steps (got {name!r})")

    def shape_for(self, necrotic: bool) -> ShapeMap | None:
        """The shape map of a tumor with (``necrotic``) or without a necrotic core, None if none was fitted."""
        return self.necrotic_shape if necrotic else self.shape

    def curve_for(self, kinetics: str | None) -> CurveMap | None:
        """The curve map of curve type ``kinetics`` where one was fitted, else the pooled one (or None)."""
        return self.curves.get(kinetics, self.curves.get("all"))

    def _extras_to_config(self) -> dict:
        entry = {name: getattr(self, name).to_config() for name in ("shape", "necrotic_shape")
                 if getattr(self, name) is not None}
        if self.curves:
            entry["curves"] = {name: curve.to_config() for name, curve in self.curves.items()}
        if self.texture is not None:
            entry["texture"] = self.texture.to_config()
        if self.coherence is not None:
            entry["coherence"] = self.coherence.to_config()
        return entry

    @classmethod
    def _extras_from_config(cls, entry: dict) -> dict:
        extras = {name: ShapeMap.from_config(entry[name], name) for name in ("shape", "necrotic_shape") if name in entry}
        if "curves" in entry:
            if not isinstance(entry["curves"], dict):
                raise SynBTError(f"{IMAGE_CONFIG_KEY} curves must map curve types to objects")
            extras["curves"] = {str(k): CurveMap.from_config(v, str(k)) for k, v in entry["curves"].items()}
        if "texture" in entry:
            extras["texture"] = TextureMap.from_config(entry["texture"])
        if "coherence" in entry:
            extras["coherence"] = CoherenceMap.from_config(entry["coherence"])
        return extras

    def apply(self, image: np.ndarray, mask: np.ndarray, kinetics: str | None = None,
              core: np.ndarray | None = None, zero: float = 0.0, lags=None, seed: int = 0) -> np.ndarray:
        """(P, Z, Y, X) normalized image with the post phases of ``mask`` (Z, Y, X) made coherent (the
        coherence map, where there is one), its texture mapped where ``lags`` gives
        a latent cell's size in voxels per axis (``seed``: of the texture's detail), then the voxels of the
        mask mapped per phase, each connected tumor around its own mean (with the necrotic factor where it holds part of ``core``,
        the necrotic core it was generated with), then its histogram reshaped by the shape map of its
        kind and its kinetics by the curve map of ``kinetics`` (``zero``: the scanner's zero in
        normalized units); a new array, other voxels unchanged."""
        if image.ndim != 4 or image.shape[0] != self.channels or mask.shape != image.shape[1:]:
            raise SynBTError(f"the image calibration has {self.channels} phases: apply takes a (P, Z, Y, X) image "
                             f"and a (Z, Y, X) mask, got {image.shape} and {mask.shape}")
        shift = np.asarray(self.shift_for(kinetics), np.float32)[:, None]
        curve = self.curve_for(kinetics)
        if self.coherence is not None:
            image = self.coherence.apply(image, mask, core, seed)
        if self.texture is not None and lags is not None:
            image = self.texture.apply(image, mask, lags, seed, core)
        components, count = ndimage.label(mask > 0, structure=np.ones((3, 3, 3)))
        out = image.copy()
        for label in range(1, count + 1):
            inside = components == label
            necrotic = core is not None and bool(np.any(np.asarray(core)[inside]))
            factor = np.asarray(self.factor_for(necrotic), np.float32)[:, None]
            values = image[:, inside]
            mean = values.mean(axis=1, keepdims=True)
            mapped = mean + shift + (values - mean) * factor
            shape = self.shape_for(necrotic)
            mapped = mapped if shape is None else shape.apply(mapped)
            out[:, inside] = mapped if curve is None else curve.apply(mapped, zero)
        return out


def _numbers(values, name: str, key: str = CONFIG_KEY) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise SynBTError(f"{key} {name} must be a list of numbers")
    return tuple(float(v) for v in values)


@dataclass
class CalibrationFit:
    """The fitted calibration and what it was fitted from (per latent channel or DCE phase, over the tumors)."""

    calibration: LatentCalibration | ImageCalibration
    tumors: int
    real_spread: np.ndarray  # geometric mean of the per-tumor spreads (tumors used for the factor)
    generated_spread: np.ndarray
    real_mean: np.ndarray  # mean of the per-tumor means
    generated_mean: np.ndarray
    kinetic_counts: dict[str, int] = field(default_factory=dict)  # tumors per measured curve type
    necrotic_tumors: int = 0  # tumors generated with their measured necrotic core

    def table(self) -> list[dict]:
        """One row per channel, for printing and the model card."""
        return [{"channel": c, "real_spread": round(float(self.real_spread[c]), 3),
                 "generated_spread": round(float(self.generated_spread[c]), 3),
                 "factor": round(self.calibration.factor[c], 3),
                 "real_mean": round(float(self.real_mean[c]), 3),
                 "generated_mean": round(float(self.generated_mean[c]), 3),
                 "shift": round(self.calibration.shift[c], 3)} for c in range(self.calibration.channels)]


def fit_calibration(pipeline, samples: Iterable[tuple], seed: int = 0, steps: int | None = None,
                    progress: Callable[[int], None] | None = None) -> CalibrationFit:
    """Fit a LatentCalibration of ``pipeline``'s samples from ``(name, case, tumor_mask)`` triples.

    Each mask holds one real tumor of its case: the pipeline generates a tumor into it (seed
    ``seed + index``, without any calibration the pipeline carries; with the real tumor's curve
    type and necrotic core where the denoiser takes them) and both latents are compared over the tumor's cells.
    ``progress(done)`` is called after each tumor."""
    real_means, real_stds, generated_means, generated_stds, spread_known, types = [], [], [], [], [], []
    for index, (name, case, mask) in enumerate(samples):
        try:
            kinetics = _curve_type(pipeline, case, mask)
            known, generated, cells = pipeline.latent_pair(case, mask, seed=seed + index, steps=steps,
                                                           kinetics=kinetics, necrosis=_core(pipeline, case, mask))
        except SynBTError as exc:
            raise SynBTError(f"calibration tumor {index + 1} ({name}): {exc}") from None
        types.append(kinetics)
        for latent, means, stds in ((known, real_means, real_stds), (generated, generated_means, generated_stds)):
            mean, std = channel_moments(latent, cells)
            means.append(mean)
            stds.append(std)
        spread_known.append(int(cells.sum()) >= MIN_SPREAD_CELLS)
        if progress is not None:
            progress(index + 1)
    return _fit_moments(LatentCalibration, real_means, real_stds, generated_means, generated_stds, spread_known,
                        types, f"no calibration tumor covers {MIN_SPREAD_CELLS} latent cells or more")


def fit_image_calibration(pipeline, samples: Iterable[tuple], seed: int = 0, steps: int | None = None,
                          progress: Callable[[int], None] | None = None, moments_only: bool = False,
                          texture: bool = True, notch: float | None = None) -> CalibrationFit:
    """Fit an ImageCalibration of ``pipeline``'s syntheses from ``(name, case, tumor_mask)`` triples.

    As fit_calibration, but a whole synthesis (with the latent calibration the pipeline carries)
    is compared with the real tumor per phase over the mask's voxels, in the case's normalized
    units (the pipeline must carry no image calibration). Unless ``moments_only``: first the texture
    map (with ``texture``; ``notch``: its strength for every phase instead of the fitted ones), and
    all else on the syntheses it maps; after the moments, the shape maps
    of the tumors with and without a necrotic core (each with MIN_SHAPE_TUMORS tumors or more) and
    the curve maps: all tumors, and each curve type with MIN_CURVE_TUMORS tumors or more."""
    from .preprocess import fit_normalization, normalize

    if pipeline.image_calibration is not None:
        raise SynBTError("fit the image calibration with a pipeline that carries none")
    tumors, types, necrotic, zeros = [], [], [], []
    for index, (name, case, mask) in enumerate(samples):
        try:
            kinetics = _curve_type(pipeline, case, mask)
            core = _core(pipeline, case, mask)
            synthetic = pipeline(case, mask, seed=seed + index, steps=steps, kinetics=kinetics, necrosis=core)
        except SynBTError as exc:
            raise SynBTError(f"calibration tumor {index + 1} ({name}): {exc}") from None
        types.append(kinetics)
        necrotic.append(core is not None and bool(core.any()))
        norm = fit_normalization(case)
        zeros.append(norm.zero)
        lags = pipeline.latent_cell_voxels(case.geometry)
        box = bounding_box(mask, lags)
        tumors.append((normalize(case.phases[(slice(None), *box)], norm), normalize(synthetic.phases[(slice(None), *box)], norm),
                       mask[box] > 0, lags, None if core is None else core[box] & (mask[box] > 0)))
        if progress is not None:
            progress(index + 1)
    coherence = None if moments_only else coherence_targets((real, inside, core) for real, _, inside, _, core in tumors)
    if coherence is not None:  # all else is fitted on the coherent syntheses
        tumors = [(real, coherence.apply(generated, inside, core), inside, lags, core)
                  for real, generated, inside, lags, core in tumors]
    texture_map = _texture_map(tumors, notch) if texture and not moments_only else None
    real_means, real_stds, generated_means, generated_stds = [], [], [], []
    quantiles = {"real": [], "generated": []}
    for index, (real, generated, inside, lags, core) in enumerate(tumors):
        if texture_map is not None:
            generated = texture_map.apply(generated, inside, lags, seed + index, core)
        for image, means, stds, kind in ((real, real_means, real_stds, "real"),
                                         (generated, generated_means, generated_stds, "generated")):
            values = image[:, inside].astype(np.float64)
            means.append(values.mean(axis=1))
            stds.append(values.std(axis=1))
            quantiles[kind].append(standardized_quantiles(values))
    fit = _fit_moments(ImageCalibration, real_means, real_stds, generated_means, generated_stds,
                       [True] * len(types), types, "no calibration tumor", necrotic)
    if not moments_only:
        flags = np.asarray(necrotic, bool)
        maps = {name: _shape_map(quantiles, which) for name, which in (("shape", ~flags), ("necrotic_shape", flags))}
        # the moment map moves a tumor's mean by its type's shift only (factor and shape keep it)
        moved = [m + np.asarray(fit.calibration.shift_for(t)) for m, t in zip(generated_means, types)]
        curves = _curve_maps(np.asarray(real_means) - np.asarray(zeros)[:, None],
                             np.asarray(moved) - np.asarray(zeros)[:, None], types)
        fit.calibration = dataclasses.replace(fit.calibration, curves=curves, texture=texture_map,
                                              coherence=coherence, **maps)
    return fit


def _texture_map(tumors: list, notch: float | None = None) -> TextureMap | None:
    """The TextureMap of (real, generated, inside, lags, core) tumors: per phase, the target is the real
    tumors' mean lag-1 ratio outside their necrotic cores (``core``: None or a mask), the core target
    the real cores' mean where MIN_SHAPE_TUMORS cores or more have one, and the notch the NOTCH_GRID
    strength whose syntheses, brought to the target, have the mean ``cell_excess`` (outside the cores)
    nearest the real one (computed, not sampled: white detail of relative variance s divides it by
    1 + s). The excess, not the ratio one cell apart itself, because the latter follows the tumors'
    sizes and enhancement patterns (cohorts of phantom tumors differed by 0.05 there, by 0.005 in the
    excess). A given ``notch`` is used for every phase instead. None without a tumor whose ratios are
    defined (cells of 2 voxels or more)."""
    tissue = [inside if core is None else inside & ~core for _, _, inside, _, core in tumors]
    real = [np.concatenate([lag_ratio(r, part, 1), cell_excess(r, part, lags)]) if min(lags) >= 2 else None
            for (r, _, _, lags, _), part in zip(tumors, tissue)]
    usable = [i for i, values in enumerate(real) if values is not None and np.isfinite(values).all()]
    if not usable:
        return None
    real = np.asarray([real[i] for i in usable])
    phases = real.shape[1] // 2
    target, real_excess = real[:, :phases].mean(axis=0), real[:, phases:].mean(axis=0)
    if not (target < 2).all():
        return None
    cores = [lag_ratio(r, core, 1) for r, _, _, _, core in tumors if core is not None and core.any()]
    cores = np.asarray([ratio for ratio in cores if np.isfinite(ratio).all()]).reshape(-1, phases)
    core_target = cores.mean(axis=0) if len(cores) >= MIN_SHAPE_TUMORS else None
    core_target = None if core_target is None or not ((core_target > 0) & (core_target < 2)).all() else \
        tuple(float(v) for v in core_target)
    if notch is not None:
        return TextureMap((float(notch),) * phases, tuple(float(v) for v in target), core_target, shared_detail=True)
    errors = []
    for strength in NOTCH_GRID:
        excess = []
        for i in usable:
            _, generated, _, lags, _ = tumors[i]
            notched = latent_notch(generated, [strength] * phases, lags)
            detail = np.clip((target - lag_ratio(notched, tissue[i], 1)) / (2 - target), 0.0, None)
            excess.append(cell_excess(notched, tissue[i], lags) / (1 + detail))
        errors.append(np.abs(np.nanmean(excess, axis=0) - real_excess))
    notch = tuple(float(NOTCH_GRID[i]) for i in np.nanargmin(np.asarray(errors), axis=0))
    return TextureMap(notch, tuple(float(v) for v in target), core_target, shared_detail=True)


def _curve_maps(real_signal: np.ndarray, generated_signal: np.ndarray, types: list) -> dict[str, CurveMap]:
    """CurveMaps from (tumors, phases) mean signals in the scanner's units: "all" and each curve type with
    MIN_CURVE_TUMORS tumors; none where a tumor's mean signal is not positive or a spread is zero."""
    if real_signal.shape[1] < 2 or not ((real_signal > 0).all() and (generated_signal > 0).all()):
        return {}
    real_steps, generated_steps = (np.diff(np.log(signal), axis=1) for signal in (real_signal, generated_signal))
    groups = {"all": np.ones(len(types), bool)} | {name: np.asarray([t == name for t in types]) for name in CURVE_TYPES}
    maps = {}
    for name, which in groups.items():
        if int(which.sum()) < MIN_CURVE_TUMORS or (generated_steps[which].std(axis=0) <= 0).any():
            continue
        maps[name] = CurveMap(*(tuple(float(v) for v in values) for values in (
            real_steps[which].mean(axis=0), real_steps[which].std(axis=0),
            generated_steps[which].mean(axis=0), generated_steps[which].std(axis=0))))
    return maps


def _shape_map(quantiles: dict, which: np.ndarray) -> ShapeMap | None:
    """The ShapeMap of the tumors ``which`` (their quantiles averaged), None with fewer than MIN_SHAPE_TUMORS
    or where the generated tumors' average quantiles do not increase (too few distinct voxel values)."""
    if int(which.sum()) < MIN_SHAPE_TUMORS:
        return None
    generated, real = (np.asarray(quantiles[kind])[which].mean(axis=0) for kind in ("generated", "real"))
    if not (np.diff(generated, axis=1) > 0).all():
        return None
    return ShapeMap(tuple(tuple(float(v) for v in q) for q in generated), tuple(tuple(float(v) for v in q) for q in real))


def _curve_type(pipeline, case, mask) -> str | None:
    """The real tumor's curve type, for a denoiser that takes one (None otherwise)."""
    return tumor_curve_type(case.phases, mask) if pipeline.kinetic_choices else None


def _core(pipeline, case, mask):
    """The real tumor's necrotic core (necrosis.necrotic_core), for a denoiser that takes one (else None)."""
    if not getattr(pipeline, "takes_necrosis", False):
        return None
    from .necrosis import necrotic_core

    return necrotic_core(case.phases, mask)


def _fit_moments(kind, real_means, real_stds, generated_means, generated_stds, spread_known, types,
                 no_spread: str, necrotic=None) -> CalibrationFit:
    """shift = mean of (real mean - generated mean), factor = geometric mean of the spread ratios over
    the tumors with a known spread; a shift per curve type with at least two tumors. With ``necrotic``
    (a flag per tumor: generated with a core) and at least two tumors with a spread on either side,
    the factor is fitted apart for each: ``necrotic_factor`` and ``factor`` (the other tumors)."""
    if len(real_means) < 2:
        raise SynBTError(f"calibration needs at least 2 tumors, got {len(real_means)}")
    with_spread = np.asarray(spread_known) & (np.min(real_stds, axis=1) > 0) & (np.min(generated_stds, axis=1) > 0)
    if not with_spread.any():
        raise SynBTError(f"{no_spread} (with a spread in every {kind.UNIT}); use larger tumors")
    flags = np.zeros(len(real_means), bool) if necrotic is None else np.asarray(necrotic, bool)
    split = int((with_spread & flags).sum()) >= 2 and int((with_spread & ~flags).sum()) >= 2
    necrotic_factor = None
    if split:
        which = with_spread & flags
        necrotic_factor = tuple(float(v) for v in _geometric_spread(real_stds, which) / _geometric_spread(generated_stds, which))
        with_spread = with_spread & ~flags  # the pooled factor is then that of the tumors without a core
    real_spread = _geometric_spread(real_stds, with_spread)
    generated_spread = _geometric_spread(generated_stds, with_spread)
    real_mean, generated_mean = np.mean(real_means, axis=0), np.mean(generated_means, axis=0)
    differences = np.asarray(real_means) - np.asarray(generated_means)
    counts = {name: types.count(name) for name in CURVE_TYPES if name in types}
    kinetic_shift = {name: tuple(float(v) for v in differences[[t == name for t in types]].mean(axis=0))
                     for name, count in counts.items() if count >= 2}
    calibration = kind(tuple(float(v) for v in differences.mean(axis=0)),
                       tuple(float(v) for v in real_spread / generated_spread), kinetic_shift, necrotic_factor)
    return CalibrationFit(calibration, len(real_means), real_spread, generated_spread, real_mean, generated_mean,
                          counts, int(flags.sum()))


def _geometric_spread(stds, which) -> np.ndarray:
    """Per channel, the geometric mean of the tumors' spreads over the tumors ``which``."""
    return np.exp(np.mean(np.log(np.asarray(stds)[which]), axis=0))


def tumor_samples(data, max_tumors: int | None = None, min_voxels: int = 27, policy=None):
    """(case_id, Case, one-tumor mask) for every connected tumor (26-connected, at least ``min_voxels``)
    of every labelled case in ``data`` (any layout SynBTLib.io reads), at most ``max_tumors``, case by
    case (one case in memory at a time). Cases without a tumor label are skipped; ``policy``
    (datasets.PhasePolicy spec, the bundle's) picks each case's phases, and a case it cannot be applied
    to is skipped with one line on stderr."""
    from .datasets import apply_policy
    from .io import read_case, read_dataset, read_mask

    refs, skipped = apply_policy(read_dataset(data), policy)
    for case_id, why in skipped:
        print(f"calibration: skipping case {case_id}: {why}", file=sys.stderr)
    count = 0
    for ref in refs:
        if ref.label_path is None:
            continue
        case = read_case(list(ref.phase_paths))
        components, n = ndimage.label(read_mask(ref.label_path, case.geometry) > 0, structure=np.ones((3, 3, 3)))
        for label in range(1, n + 1):
            mask = (components == label).astype(np.uint8)
            if mask.sum() < min_voxels:
                continue
            if max_tumors is not None and count >= max_tumors:
                return
            count += 1
            yield f"{ref.case_id} tumor {label}", case, mask
