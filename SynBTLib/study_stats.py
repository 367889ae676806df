"""Statistics of the segmentation study: paired per-lesion differences with a two-way bootstrap.

The data of one arm is a table of lesion-wise Dice, one row per (training seed, test lesion);
test lesions are grouped in test cases. Two arms are compared on the (seed, lesion) pairs they
share: d = Dice_A - Dice_B. The 95 % interval of the mean of d resamples both sources of
variation at once (a crossed bootstrap): the training seeds with replacement, and the test
cases with replacement (a case's lesions travel together, since they share one image). Its
standard error gives the smallest difference the study can detect at 80 % power and a two-sided
5 % level: (1.96 + 0.84) x SE.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z_975, Z_80 = 1.959964, 0.841621
MDD_FACTOR = Z_975 + Z_80  # ~2.80: detectable difference = 2.8 x standard error


@dataclass(frozen=True)
class Interval:
    """A bootstrap estimate: point value (the plain mean), 95 % percentile interval, bootstrap SE."""

    mean: float
    low: float
    high: float
    se: float
    n_seeds: int
    n_cases: int
    n_lesions: int

    @property
    def mdd(self) -> float:
        """Smallest true difference detected with 80 % power at a two-sided 5 % level."""
        return MDD_FACTOR * self.se

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": [self.low, self.high], "se": self.se, "mdd80": self.mdd,
                "excludes_zero": self.excludes_zero, "seeds": self.n_seeds, "cases": self.n_cases,
                "lesions": self.n_lesions}


def table(rows: list[dict], arm: str, key: str = "dice") -> tuple[list[int], list[tuple[str, str]], np.ndarray]:
    """(seeds, lesion keys (case, lesion), matrix seeds x lesions) of one arm; NaN where missing."""
    mine = [r for r in rows if r["arm"] == arm]
    seeds = sorted({int(r["seed"]) for r in mine})
    lesions = sorted({(str(r["case"]), str(r["lesion"])) for r in mine})
    col = {k: j for j, k in enumerate(lesions)}
    row = {s: i for i, s in enumerate(seeds)}
    values = np.full((len(seeds), len(lesions)), np.nan)
    for r in mine:
        values[row[int(r["seed"])], col[(str(r["case"]), str(r["lesion"]))]] = float(r[key])
    return seeds, lesions, values


def bootstrap_mean(values: np.ndarray, case_of_lesion, n_boot: int = 2000, seed: int = 0,
                   resample_seeds: bool = True) -> Interval:
    """Mean of a (seeds x lesions) matrix with a crossed bootstrap over seeds and cases.

    ``case_of_lesion``: the case each column belongs to (lesions of a case are resampled together).
    With one seed (or ``resample_seeds=False``) only the cases are resampled.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise ValueError("bootstrap_mean needs a non-empty seeds x lesions matrix")
    if np.isnan(values).any():
        raise ValueError("bootstrap_mean needs a complete matrix (every seed on every lesion)")
    cases, case_index = np.unique(np.asarray(case_of_lesion).astype(str), return_inverse=True)
    n_seeds, n_lesions = values.shape
    rng = np.random.default_rng(seed)
    # multinomial counts are the same as drawing indices with replacement, and keep memory at B x S + B x J
    case_w = rng.multinomial(len(cases), np.full(len(cases), 1.0 / len(cases)), size=n_boot).astype(np.float64)
    if resample_seeds and n_seeds > 1:
        seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot).astype(np.float64)
    else:
        seed_w = np.ones((n_boot, n_seeds))
    lesion_w = case_w[:, case_index]  # B x L
    stats = np.einsum("bs,sl,bl->b", seed_w, values, lesion_w) / (seed_w.sum(1) * lesion_w.sum(1))
    low, high = np.percentile(stats, [2.5, 97.5])
    return Interval(float(values.mean()), float(low), float(high), float(stats.std(ddof=1)), n_seeds, len(cases),
                    n_lesions)


def paired_difference(rows: list[dict], arm_a: str, arm_b: str, lesions=None, key: str = "dice",
                      n_boot: int = 2000, seed: int = 0) -> Interval | None:
    """Mean of Dice_A - Dice_B over the (seed, lesion) pairs both arms have, with its bootstrap interval.

    ``lesions``: restrict to these (case, lesion) keys (a size bin). None when nothing is shared."""
    seeds_a, lesions_a, a = table(rows, arm_a, key)
    seeds_b, lesions_b, b = table(rows, arm_b, key)
    seeds = sorted(set(seeds_a) & set(seeds_b))
    shared = sorted(set(lesions_a) & set(lesions_b) & (set(lesions) if lesions is not None else set(lesions_a)))
    if not seeds or not shared:
        return None
    pick = lambda keys, ss, m: m[np.ix_([ss.index(s) for s in seeds], [keys.index(k) for k in shared])]  # noqa: E731
    diff = pick(lesions_a, seeds_a, a) - pick(lesions_b, seeds_b, b)
    complete = ~np.isnan(diff).any(axis=0)
    if not complete.any():
        return None
    shared = [k for k, c in zip(shared, complete) if c]
    return bootstrap_mean(diff[:, complete], [k[0] for k in shared], n_boot, seed)


def paired_matrix(rows: list[dict], arm_a: str, arm_b: str, key: str = "dice") -> tuple[np.ndarray, list[str]]:
    """The (shared seeds x shared lesions) matrix of Dice_A - Dice_B and each column's case."""
    seeds_a, lesions_a, a = table(rows, arm_a, key)
    seeds_b, lesions_b, b = table(rows, arm_b, key)
    seeds = sorted(set(seeds_a) & set(seeds_b))
    shared = sorted(set(lesions_a) & set(lesions_b))
    diff = (a[np.ix_([seeds_a.index(s) for s in seeds], [lesions_a.index(k) for k in shared])]
            - b[np.ix_([seeds_b.index(s) for s in seeds], [lesions_b.index(k) for k in shared])])
    complete = ~np.isnan(diff).any(axis=0)
    return diff[:, complete], [k[0] for k, c in zip(shared, complete) if c]


def arm_mean(rows: list[dict], arm: str, lesions=None, key: str = "dice", n_boot: int = 2000,
             seed: int = 0) -> Interval | None:
    """Mean lesion-wise Dice of one arm (optionally over some lesions) with its bootstrap interval."""
    seeds, keys, values = table(rows, arm, key)
    if lesions is not None:
        wanted = set(lesions)
        columns = [j for j, k in enumerate(keys) if k in wanted]
        keys, values = [keys[j] for j in columns], values[:, columns]
    complete = ~np.isnan(values).any(axis=0) if values.size else np.zeros(0, bool)
    if not seeds or not complete.any():
        return None
    keys = [k for k, c in zip(keys, complete) if c]
    return bootstrap_mean(values[:, complete], [k[0] for k in keys], n_boot, seed)


def size_bin(diameter_mm: float, edges_mm) -> str:
    """Label of the size bin of a lesion: '<15', '15-20', ..., '>=30' for edges (15, 20, 30)."""
    edges = [float(e) for e in edges_mm]
    if diameter_mm < edges[0]:
        return f"<{edges[0]:g}"
    for low, high in zip(edges, edges[1:]):
        if diameter_mm < high:
            return f"{low:g}-{high:g}"
    return f">={edges[-1]:g}"


def bin_labels(edges_mm) -> list[str]:
    edges = [float(e) for e in edges_mm]
    return [f"<{edges[0]:g}", *(f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])), f">={edges[-1]:g}"]


def variance_components(values: np.ndarray, case_of_lesion) -> dict:
    """Seed, case and residual variances of a (seeds x lesions) matrix (two-way ANOVA on case means,
    negative estimates set to 0), to project the standard error to other numbers of seeds and cases."""
    values = np.asarray(values, dtype=np.float64)
    cases, index = np.unique(np.asarray(case_of_lesion).astype(str), return_inverse=True)
    per_case = np.stack([values[:, index == j].mean(axis=1) for j in range(len(cases))], axis=1)  # S x J
    n_seeds, n_cases = per_case.shape
    grand = per_case.mean()
    seed_means, case_means = per_case.mean(axis=1), per_case.mean(axis=0)
    resid = per_case - seed_means[:, None] - case_means[None, :] + grand
    dof = max(1, (n_seeds - 1) * (n_cases - 1))
    ms_res = float((resid**2).sum() / dof) if n_seeds > 1 else 0.0
    ms_seed = float(n_cases * seed_means.var(ddof=1)) if n_seeds > 1 else 0.0
    ms_case = float(n_seeds * case_means.var(ddof=1)) if n_cases > 1 else 0.0
    if n_seeds == 1:  # seed and residual variance cannot be told apart: all of it goes to the cases
        return {"seed": 0.0, "case": ms_case, "residual": 0.0}
    return {"seed": max(0.0, (ms_seed - ms_res) / n_cases), "case": max(0.0, (ms_case - ms_res) / n_seeds),
            "residual": ms_res}


def projected_se(components: dict, seeds: int, cases: int) -> float:
    """Standard error of the grand mean with ``seeds`` training seeds and ``cases`` test cases."""
    return float(np.sqrt(components["seed"] / seeds + components["case"] / cases
                         + components["residual"] / (seeds * cases)))
