"""Who the phantom-2 patients are: published frequencies of density, BPE, lesions and protocols.

Every mix below is drawn per case by ``draw_population`` (make_phantom with a ``preset``); the
legacy phantom (no preset) keeps its uniform draws. Sources (what was checked is said so):

- IMAGINE case-control study, Breast Cancer Research 2020, doi 10.1186/s13058-020-01375-7,
  Table 2 (checked): fibroglandular tissue a/b/c/d 4.2/19/51/26 % premenopausal, 13/39/40/8.7 %
  postmenopausal; BPE minimal/mild/moderate/marked 18/46/26/10 % and 44/43/11/2.6 %.
- Kuhl et al. 1999, Radiology 211:101-110: curve types of malignant lesions persistent /
  plateau / washout 8.9 / 33.6 / 57.4 % (as quoted by the issue; the paper itself was not
  found among the stored pages, only secondary pages quoting "about 9 %" for type I).
- Jansen et al. 2011, J Magn Reson Imaging 33:1382, PMC3098464 (checked): of 617 malignant
  lesions 396 masses, 212 non-mass enhancement, 9 foci -> NME 34 %.
- BI-RADS MRI lexicon (ACR 2013): mass shapes oval/round/irregular, margins circumscribed /
  irregular / spiculated, internal enhancement homogeneous / heterogeneous / rim; NME
  distributions focal / linear / segmental / regional / multiple regions / diffuse, internal
  patterns homogeneous / heterogeneous / clumped / clustered ring. The share of irregular
  masses (~85 %), heterogeneous enhancement (~96 %) and rim enhancement (~46 % of
  triple-negative, a quarter overall) are the issue's figures, not checked here.
- MAMA-MIA (Garrucho et al., 1506 pre-treatment cases from I-SPY1, I-SPY2, NACT-Pilot, Duke;
  checked: the cohort and its sources). Tumor size (median ~25-30 mm; I-SPY inclusion
  >= 2.5-3 cm) and the acquisition parameters (0.6-0.8 mm pixels, 1-1.5 mm slices, 3-8
  phases ~100-125 s apart, both field strengths, fat-sat or not) are the issue's figures.
"""
from __future__ import annotations

import numpy as np

from . import kinetics as kin
from .errors import SynBTError

DENSITIES = ("a", "b", "c", "d")
BPE_LEVELS = ("minimal", "mild", "moderate", "marked")
MENOPAUSE = ("pre", "post")
# IMAGINE 2020, Table 2
DENSITY_MIX = {"pre": (0.042, 0.19, 0.51, 0.26), "post": (0.13, 0.39, 0.40, 0.087)}
BPE_MIX = {"pre": (0.18, 0.46, 0.26, 0.10), "post": (0.44, 0.43, 0.11, 0.026)}
PREMENOPAUSAL_SHARE = 0.5  # neoadjuvant cohorts (MAMA-MIA) are about half premenopausal; assumption
# Kuhl 1999, malignant lesions
CURVE_MIX = (0.089, 0.336, 0.574)
# Jansen 2011: malignant mass / non-mass (foci left out: 1.5 %)
NME_SHARE = 212 / (396 + 212)
# masses: oval/round ~15 %, irregular (lobulated) and spiculated the rest (BI-RADS, issue figure)
MASS_KIND_MIX = {"ellipsoid": 0.15, "lobulated": 0.5, "spiculated": 0.35}
NME_DISTRIBUTIONS = ("segmental", "regional", "clumped")
RIM_SHARE = 0.2
TUMOR_SIZE_MEDIAN_MM = 27.0
TUMOR_SIZE_SIGMA = 0.4  # lognormal: 5-95 % about 14-52 mm
# BPE as the share of FGT that enhances (BI-RADS 4th edition: <25, 25-50, 50-75, >75 %)
BPE_ENHANCING_SHARE = {"minimal": (0.05, 0.25), "mild": (0.25, 0.5), "moderate": (0.5, 0.75), "marked": (0.75, 0.95)}
BPE_KTRANS = {"minimal": (0.01, 0.02), "mild": (0.015, 0.03), "moderate": (0.025, 0.045), "marked": (0.035, 0.06)}


def _pick(rng, value, options, weights, what):
    if value is None:
        return options[int(rng.choice(len(options), p=np.asarray(weights) / np.sum(weights)))]
    if value not in options:
        raise SynBTError(f"unknown {what} {value!r}; choose one of {', '.join(options)}")
    return value


def clinical_phase_times(rng: np.random.Generator, phases: int | None) -> np.ndarray:
    """Pre-contrast at 0 s, then 2-5 post-contrast phases: 3-6 phases, the last at ~5.5-8 min.

    Two post-contrast phases: an early one at 1.5-2.5 min and a delayed one at 6-7.5 min (I-SPY
    style); more: one every 90-125 s (Duke / NACT style), the last at most 8 min after injection."""
    if phases is None:
        phases = int(rng.choice([3, 4, 5, 6], p=[0.2, 0.3, 0.3, 0.2]))
    if phases < 2:
        raise SynBTError(f"a DCE series needs at least 2 phases, got {phases}")
    posts = phases - 1
    if posts <= 2:
        early = rng.uniform(90.0, 150.0)
        return np.array([0.0, early] + ([rng.uniform(360.0, 450.0)] if posts == 2 else []))
    interval = rng.uniform(max(90.0, 330.0 / posts), max(90.0, min(125.0, 480.0 / posts)))
    return np.arange(phases, dtype=np.float64) * interval


def draw_population(rng: np.random.Generator, params: dict) -> dict:
    """Patient-level draws: menopause, ACR density, BPE level and its kinetics, protocol (field, fat-sat)."""
    menopause = _pick(rng, params.get("menopause"), MENOPAUSE, (PREMENOPAUSAL_SHARE, 1 - PREMENOPAUSAL_SHARE),
                      "menopausal status")
    density = _pick(rng, params.get("density"), DENSITIES, DENSITY_MIX[menopause], "breast density (ACR)")
    bpe = _pick(rng, params.get("bpe"), BPE_LEVELS, BPE_MIX[menopause], "background enhancement level")
    field = params.get("field_strength_t")
    field = float(rng.choice([1.5, 3.0])) if field is None else float(field)
    if field not in (1.5, 3.0):
        raise SynBTError(f"field_strength_t must be 1.5 or 3, got {field:g}")
    fat_suppressed = params.get("fat_suppressed")
    fat_suppressed = bool(rng.random() < 0.75) if fat_suppressed is None else bool(fat_suppressed)
    return {
        "menopause": menopause,
        "density": density,
        "bpe": bpe,
        "bpe_enhancing_share": float(rng.uniform(*BPE_ENHANCING_SHARE[bpe])),
        "fgt_ktrans": float(rng.uniform(*BPE_KTRANS[bpe])),
        "fgt_vp": float(rng.uniform(0.01, 0.03)),
        "field_strength_t": field,
        "fat_suppressed": fat_suppressed,
    }


def draw_lesion(rng: np.random.Generator, diameter, kind, curve, necrotic, lesion_type) -> dict:
    """One malignant lesion: type (mass / non-mass), size, shape or distribution, curve type, rim, necrosis."""
    lesion_type = _pick(rng, lesion_type, ("mass", "nme"), (1 - NME_SHARE, NME_SHARE), "lesion type")
    if diameter is None:
        diameter = float(np.clip(rng.lognormal(np.log(TUMOR_SIZE_MEDIAN_MM), TUMOR_SIZE_SIGMA), 8.0, 70.0))
    if lesion_type == "mass":
        kind = _pick(rng, kind, tuple(MASS_KIND_MIX), tuple(MASS_KIND_MIX.values()), "tumor kind")
    else:
        kind = _pick(rng, kind, NME_DISTRIBUTIONS, (0.4, 0.3, 0.3), "non-mass distribution")
    curve = _pick(rng, curve, kin.CURVE_TYPES, CURVE_MIX, "tumor kinetics type")
    rim = lesion_type == "mass" and rng.random() < RIM_SHARE
    if necrotic is None:
        necrotic = bool(lesion_type == "mass" and diameter >= 20 and rng.random() < 0.2)
    return {
        "lesion_type": lesion_type,
        "diameter_mm": float(diameter),
        "kind": kind,
        "kinetics": curve,
        "rim": bool(rim),
        "heterogeneity": float(rng.uniform(0.3, 0.55)),  # std of log Ktrans gain inside the lesion
        "necrotic": bool(necrotic) and lesion_type == "mass",
        "seed": int(rng.integers(2**31)),
    }
