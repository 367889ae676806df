"""Contrast kinetics for DCE-MRI: Parker population AIF, extended Tofts model, SPGR signal.

Times are in seconds at the API; the pharmacokinetic rate constants (Ktrans, kep) are per
minute, as they are usually quoted. Concentrations are in mM.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import SynBTError

HEMATOCRIT = 0.42
R1_PER_MM_S = 4.5  # gadolinium relaxivity at 1.5 T (s^-1 mM^-1)
TR_S = 0.0045  # 3D spoiled gradient echo, as in clinical breast DCE protocols
FLIP_DEG = 12.0
CURVE_TYPES = ("persistent", "plateau", "washout")
PLATEAU_BAND = 0.10  # BI-RADS: a late change within +-10 % of the initial post-contrast signal is a plateau
_DT_S = 0.5  # integration step of the Tofts convolution


def phase_times(num_phases: int, interval_s: float = 90.0) -> np.ndarray:
    """Acquisition times (s) of the phases: pre-contrast at 0, then one every interval_s."""
    if num_phases < 2:
        raise SynBTError(f"a DCE series needs at least 2 phases, got {num_phases}")
    if interval_s <= 0:
        raise SynBTError(f"the phase interval must be positive, got {interval_s:g} s")
    return np.arange(num_phases, dtype=np.float64) * float(interval_s)


def parker_aif(t_s) -> np.ndarray:
    """Whole-blood gadolinium concentration (mM) of the Parker 2006 population AIF at times t_s (s)."""
    t = np.asarray(t_s, dtype=np.float64) / 60.0  # the published parameters are in minutes
    a1, a2, t1, t2, s1, s2 = 0.809, 0.330, 0.17046, 0.365, 0.0563, 0.132
    alpha, beta, s, tau = 1.050, 0.1685, 38.078, 0.483
    gauss = a1 / (s1 * np.sqrt(2 * np.pi)) * np.exp(-((t - t1) ** 2) / (2 * s1**2))
    gauss += a2 / (s2 * np.sqrt(2 * np.pi)) * np.exp(-((t - t2) ** 2) / (2 * s2**2))
    tail = alpha * np.exp(-beta * t) / (1.0 + np.exp(-s * (t - tau)))
    return np.where(t > 0, gauss + tail, 0.0)  # injection at t = 0: none before, nor at the pre-contrast phase


def extended_tofts(t_s, ktrans, ve, vp, hematocrit: float = HEMATOCRIT) -> np.ndarray:
    """Tissue concentration (mM) of the extended Tofts model at times t_s (s).

    C(t) = vp Cp(t) + Ktrans * integral Cp(u) exp(-kep (t - u)) du, kep = Ktrans / ve, with the
    plasma concentration Cp = AIF / (1 - hematocrit). ktrans (1/min), ve, vp broadcast
    together to shape P; the result has shape P + (len(t_s),).
    """
    t_s = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
    ktrans, ve, vp = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (ktrans, ve, vp)))
    if np.any(ve <= 0) or np.any(ktrans < 0) or np.any(vp < 0):
        raise SynBTError("Tofts parameters need ve > 0, Ktrans >= 0 and vp >= 0")
    grid = np.arange(0.0, t_s.max() + _DT_S, _DT_S)
    plasma = parker_aif(grid) / (1.0 - hematocrit)
    kep = (ktrans / ve)[..., None] / 60.0  # 1/s
    kernel = np.exp(-kep * grid)  # P + (G,)
    # discrete convolution on the fine grid, one row per parameter set
    flat_kernel = kernel.reshape(-1, grid.size)
    conv = np.stack([np.convolve(plasma, k)[: grid.size] * _DT_S for k in flat_kernel]).reshape(kernel.shape)
    tissue = vp[..., None] * plasma + (ktrans[..., None] / 60.0) * conv
    index = np.clip(np.round(t_s / _DT_S).astype(int), 0, grid.size - 1)
    return tissue[..., index]


def spgr_signal(t1_s, m0=1.0, tr_s: float = TR_S, flip_deg: float = FLIP_DEG) -> np.ndarray:
    """Steady-state spoiled gradient echo signal for longitudinal relaxation time t1_s (s)."""
    e1 = np.exp(-tr_s / np.asarray(t1_s, dtype=np.float64))
    a = np.deg2rad(flip_deg)
    return np.asarray(m0) * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1)


def concentration_to_signal(conc, t10_s, m0=1.0, r1: float = R1_PER_MM_S, tr_s: float = TR_S, flip_deg: float = FLIP_DEG):
    """SPGR signal of tissue with native T1 t10_s holding gadolinium concentration conc (mM)."""
    r1_total = 1.0 / np.asarray(t10_s, dtype=np.float64) + r1 * np.asarray(conc, dtype=np.float64)
    return spgr_signal(1.0 / r1_total, m0, tr_s, flip_deg)


@dataclass(frozen=True)
class TissueKinetics:
    """Relaxation and perfusion parameters of one tissue (Ktrans in 1/min)."""

    t10_s: float
    m0: float
    ktrans: float = 0.0
    ve: float = 0.2
    vp: float = 0.0

    def concentration(self, t_s) -> np.ndarray:
        return extended_tofts(t_s, self.ktrans, self.ve, self.vp)

    def signal(self, t_s) -> np.ndarray:
        """SPGR signal at times t_s (s), in units of M0."""
        return concentration_to_signal(self.concentration(t_s), self.t10_s, self.m0)

    def to_dict(self) -> dict:
        return asdict(self)


def tumor_kinetics(curve_type: str, rng: np.random.Generator) -> TissueKinetics:
    """Random malignant-looking tumor kinetics of a BI-RADS curve type (fast wash-in in all three)."""
    if curve_type not in CURVE_TYPES:
        raise SynBTError(f"unknown kinetic curve type {curve_type!r}; choose one of {', '.join(CURVE_TYPES)}")
    # (Ktrans range 1/min, ve range): a large ve (slow kep) keeps the tumor filling up
    ktrans_range, ve_range = {
        "persistent": ((0.07, 0.12), (0.75, 0.9)),
        "plateau": ((0.18, 0.25), (0.45, 0.55)),
        "washout": ((0.9, 1.4), (0.3, 0.45)),
    }[curve_type]
    ktrans = rng.uniform(*ktrans_range)
    ve = rng.uniform(*ve_range)
    vp = rng.uniform(0.02, 0.04) if curve_type == "persistent" else rng.uniform(0.04, 0.08)
    return TissueKinetics(t10_s=rng.uniform(1.1, 1.3), m0=0.85, ktrans=ktrans, ve=ve, vp=vp)


def classify_curve(signal, threshold: float = PLATEAU_BAND) -> str:
    """BI-RADS delayed-phase type of a signal curve (pre, initial post, ..., delayed).

    The change from the initial post-contrast phase to the last one, relative to the initial
    signal's magnitude: above +threshold persistent, below -threshold washout, plateau in between
    (a curve rising from a zero initial signal is persistent).
    """
    s = np.asarray(signal, dtype=np.float64)
    if s.size < 3:
        raise SynBTError("a curve type needs a pre-contrast and at least two post-contrast phases")
    early, late = s[1], s[-1]
    if early != 0:
        change = (late - early) / abs(early)
    else:  # from a zero initial signal any change is infinitely large
        change = np.inf if late > 0 else -np.inf if late < 0 else 0.0
    if change > threshold:
        return "persistent"
    if change < -threshold:
        return "washout"
    return "plateau"


def tumor_curve_type(phases, mask) -> str | None:
    """classify_curve of the mean signal of (P, Z, Y, X) ``phases`` over ``mask``; None for an empty
    mask or fewer than three phases."""
    inside = np.asarray(mask) > 0
    if not inside.any() or len(phases) < 3:
        return None
    return classify_curve(np.asarray(phases)[:, inside].astype(np.float64).mean(axis=1))


def relative_enhancement(signal) -> np.ndarray:
    """(S_k - S_0) / S_0 along the last axis."""
    s = np.asarray(signal, dtype=np.float64)
    return (s - s[..., :1]) / np.maximum(s[..., :1], 1e-12)
