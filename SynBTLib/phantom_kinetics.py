"""Phantom-2 contrast kinetics: relaxation at 1.5 / 3 T, and Tofts parameters in published ranges.

A malignant lesion of a requested BI-RADS curve type gets Ktrans from a lognormal with median
0.2 /min (malignant breast tumors: median ~0.1-0.3 /min with a population AIF), ve 0.15-0.8,
vp 0.02-0.1, drawn until the mean curve at this protocol's phase times is of that type: with
phases out to 6-7 min, washout needs only kep ~0.4-2 /min, not the Ktrans 0.9-1.4 /min the
legacy 3-phase / 180 s protocol forced. Native T1 (s) at 1.5 T and 3 T after Rakow-Penner et
al. 2006 (JMRI 23:87: fat 0.30 / 0.37, FGT 1.27 / 1.44) and the usual blood and muscle values;
gadolinium r1 4.5 / 4.0 /mM/s (gadobutrol-like, smaller at 3 T).
"""
from __future__ import annotations

import numpy as np

from . import kinetics as kin

R1 = {1.5: 4.5, 3.0: 4.0}
# native T1 (s) per material name at 1.5 T and 3 T
T1 = {
    1.5: {"skin": 0.9, "fat": 0.30, "fibroglandular": 1.27, "muscle": 1.0, "marrow": 0.36, "lung": 1.2, "blood": 1.45,
          "myocardium": 1.0, "soft_tissue": 1.0, "necrosis": 2.0, "tumor": 1.2},
    3.0: {"skin": 1.1, "fat": 0.37, "fibroglandular": 1.44, "muscle": 1.4, "marrow": 0.40, "lung": 1.3, "blood": 1.65,
          "myocardium": 1.4, "soft_tissue": 1.3, "necrosis": 2.6, "tumor": 1.45},
}


def signal(conc, t10_s, m0, field_t: float) -> np.ndarray:
    """SPGR signal (units of M0) of tissue with native T1 t10_s holding gadolinium conc (mM) at this field."""
    return kin.concentration_to_signal(conc, t10_s, m0, r1=R1[field_t])


def lesion_kinetics(curve_type: str, times_s, field_t: float, rng: np.random.Generator, tries: int = 48) -> dict:
    """Ktrans (/min), ve, vp, t10 of a malignant lesion whose curve at times_s is of curve_type.

    Draws `tries` candidates at once and keeps the first clearly of the right type (the most
    typical one otherwise: persistent = largest late rise, washout = largest fall)."""
    t10 = T1[field_t]["tumor"] * rng.uniform(0.92, 1.08)
    ktrans = np.clip(rng.lognormal(np.log(0.2), 0.55, tries), 0.04, 1.2)
    ve = rng.uniform(0.15, 0.8, tries)
    vp = rng.uniform(0.02, 0.1, tries)
    times = np.asarray(times_s, dtype=np.float64)
    curves = signal(kin.extended_tofts(times, ktrans, ve, vp), t10, 0.85, field_t)  # (tries, K)
    if len(times) >= 3:
        change = (curves[:, -1] - curves[:, 1]) / curves[:, 1]
        # a margin beyond the +-10 % classification threshold: heterogeneity and partial volume
        # blur the lesion's mean curve, which should stay of the drawn type
        typical = {"persistent": change > 0.16, "plateau": np.abs(change) < 0.05, "washout": change < -0.16}[curve_type]
        hits = np.nonzero(typical)[0]
        if hits.size:
            pick = int(hits[0])
        else:
            pick = int(np.argmax(change) if curve_type == "persistent" else np.argmin(change) if curve_type == "washout"
                       else np.argmin(np.abs(change)))
    else:
        pick = 0
    return {"ktrans": float(ktrans[pick]), "ve": float(ve[pick]), "vp": float(vp[pick]), "t10_s": float(t10), "m0": 0.85}


# ------------------------------------------------------------------------------ rendering


def material_table(p: dict, times_s) -> np.ndarray:
    """(M, K) signal (units of M0) of every phantom material (phantom.py's material order) at this field."""
    from . import phantom_base as P

    field = p["field_strength_t"]
    t1 = T1[field]
    fat_m0 = 0.9 * (p["fat_residual"] if p["fat_suppressed"] else 1.0)
    rows = [  # (name, m0, ktrans, ve, vp)
        ("air", 0.0, 0.0, 0.2, 0.0),
        ("skin", 0.7, 0.04, 0.2, 0.02),
        ("fat", fat_m0, 0.003, 0.1, 0.002),
        ("fibroglandular", 0.8, 0.003, 0.3, 0.004),  # non-enhancing parenchyma; BPE is added per voxel
        ("muscle", 0.6, 0.07, 0.12, 0.02),
        ("bone", 0.05, 0.0, 0.2, 0.0),
        ("marrow", fat_m0 * 0.8, 0.02, 0.1, 0.01),
        ("lung", 0.06, 0.0, 0.1, 0.1),
        ("blood", 0.85, 0.0, 0.1, 1.0 - kin.HEMATOCRIT),
        ("myocardium", 0.75, 0.45, 0.25, 0.1),
        ("soft_tissue", 0.55, 0.05, 0.2, 0.02),
        ("necrosis", 0.85, 0.0, 0.2, 0.0),
    ]
    assert [r[0] for r in rows] == list(P._MATERIAL_NAMES)
    times = np.asarray(times_s, dtype=np.float64)
    out = []
    for name, m0, ktrans, ve, vp in rows:
        t10 = t1.get(name, 1.0)
        out.append(signal(kin.extended_tofts(times, ktrans, ve, vp), t10, m0, field))
    return np.stack(out).astype(np.float32)


def render(geometry, anatomy, p: dict, tumors: list[dict], times, rng) -> np.ndarray:
    """Noise-free signal (K, Z, Y, X): materials, FGT partial volume with patchy BPE, textured lesions."""
    from . import phantom_base as P
    from .phantom_texture import power_law_field

    field = p["field_strength_t"]
    scale = P.SIGNAL_SCALE
    table = material_table(p, times) * scale  # (M, K)
    phases = np.stack([table[:, k][anatomy.material] for k in range(len(times))])

    box = anatomy.breast_box
    region = phases[(slice(None),) + box]
    fraction = anatomy.fgt_fraction
    spacing = tuple(geometry.spacing[::-1])
    sub_shape = fraction.shape
    patches = power_law_field(rng, sub_shape, spacing, 3.0, largest_mm=40.0)
    where = np.nonzero(fraction > 1e-3)
    values = patches[where]
    del patches
    fgt_voxels = fraction[where] >= 0.5
    share = p["bpe_enhancing_share"]
    cut = np.quantile(values[fgt_voxels], 1.0 - share) if fgt_voxels.any() else 0.0
    enhancing = special_expit((values - cut) / 0.15).astype(np.float32)[:, None]
    t1 = T1[field]["fibroglandular"]
    active = kin.extended_tofts(times, p["fgt_ktrans"], 0.3, p["fgt_vp"])
    quiet = kin.extended_tofts(times, 0.003, 0.3, 0.004)
    conc = enhancing * active[None] + (1 - enhancing) * quiet[None]
    fgt_signal = signal(conc, t1, 0.8, field) * scale
    part = fraction[where][:, None]
    region[(slice(None),) + where] = (part * fgt_signal + (1 - part) * table[P.FAT][None]).T

    for tumor in tumors:
        tissue = lesion_kinetics(tumor["kinetics"], times, field, np.random.default_rng(tumor["seed"]))
        tumor.update(tissue)
        enhancing_mask = tumor["mask"] & ~tumor["core"] if tumor.get("core") is not None else tumor["mask"]
        idx = np.nonzero(enhancing_mask)
        lo = [int(i.min()) for i in idx]
        hi = [int(i.max()) + 1 for i in idx]
        local = power_law_field(np.random.default_rng(tumor["seed"] + 1), [b - a for a, b in zip(lo, hi)], spacing, 3.0,
                                largest_mm=max(8.0, tumor["diameter_mm"] / 2))
        h = tumor["heterogeneity"]
        gain = np.exp(h * local[tuple(i - a for i, a in zip(idx, lo))] - h * h / 2)
        if tumor.get("rim"):
            zyx = P._points_mm(geometry, idx)
            radius = np.linalg.norm(zyx - np.asarray(tumor["center_mm"])[::-1], axis=1) / (tumor["diameter_mm"] / 2)
            gain *= 0.25 + 1.1 * np.clip(radius, 0, 1) ** 2
        conc = gain[:, None] * kin.extended_tofts(times, tissue["ktrans"], tissue["ve"], tissue["vp"])[None]
        phases[(slice(None),) + idx] = (signal(conc, tissue["t10_s"], tissue["m0"], field) * scale).T
        if tumor.get("core") is not None:
            phases[:, tumor["core"]] = table[P.NECROSIS][:, None]
    return phases


def special_expit(x):
    from scipy import special

    return special.expit(x)
