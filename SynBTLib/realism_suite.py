"""Independent realism suite: features the calibration was never fitted to, a gradient-boosting judge.

``synbt calibrate`` maps the 24 features of realism.realism_features one for one, so that study
cannot judge it. This one describes a tumor by ~180 numbers taken inside its mask that no
calibration stage targets (``tumor_features``):

- first order (mean, spread, skewness, kurtosis, p10/p50/p90) of every phase and of the
  subtractions post1 - pre, post2 - pre and post2 - post1 ("late"), over the case's reference tissue;
- 3D grey-level co-occurrence (13 directions, distances 1 and 2, 16 levels over the tumor's own
  p1-p99 range): contrast, homogeneity, energy, correlation, entropy;
- per-axis autocorrelation at lags 1-3 (pairs inside the tumor, around the tumor's mean);
- radial profile: mean in four shells of depth (distance to the border over its maximum);
- per-voxel kinetics: early enhancement and late change per voxel, their spread, and how uniform
  the late-change map is (fractions rising, flat, falling);
- cross-phase coupling: voxel correlations between phases and between their 3x3x3 high-pass
  residuals, and the spread of post2 - post1 over the spread of post1 (``late_spread``).

``cross_validated_auc`` scores real against synthetic with scikit-learn's HistGradientBoosting
(or an L2 logistic regression), folds grouped by case, repeated over fold shuffles; the AUC of
the averaged out-of-fold scores gets a 95 % interval by bootstrapping cases. scikit-learn is the
optional ``eval`` extra: imported only here, when a suite runs.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, stats

from .errors import SynBTError

PHASES = ("pre", "post1", "post2")
GLCM_LEVELS = 16
GLCM_DISTANCES = (1, 2)
AUTOCORRELATION_LAGS = (1, 2, 3)
RADIAL_SHELLS = 4
LATE_FLAT = 0.05  # |post2 - post1| / post1 below this is a flat late change (the curve-type threshold)
# the 13 directions of a 3D neighbourhood, one of each opposite pair
DIRECTIONS = tuple(d for d in itertools.product((-1, 0, 1), repeat=3) if d > (0, 0, 0))


def tumor_images(phases: np.ndarray, reference: float) -> dict[str, np.ndarray]:
    """The phases (pre, post1, post2, ...) over ``reference`` and their subtractions by name."""
    if phases.ndim != 4 or phases.shape[0] < 3:
        raise SynBTError(f"the suite needs (P >= 3, Z, Y, X) phases, got {phases.shape}")
    if not reference > 0:
        raise SynBTError(f"the reference intensity must be positive, got {reference}")
    scaled = np.asarray(phases, np.float64) / float(reference)
    images = {name: scaled[k] for k, name in enumerate(PHASES)}
    images["sub1"] = scaled[1] - scaled[0]
    images["sub2"] = scaled[2] - scaled[0]
    images["late"] = scaled[2] - scaled[1]
    return images


def first_order(values: np.ndarray) -> dict[str, float]:
    spread = float(values.std())
    return {"mean": float(values.mean()), "std": spread,
            "skew": float(stats.skew(values)) if spread > 0 else 0.0,
            "kurt": float(stats.kurtosis(values)) if spread > 0 else 0.0,
            **{f"p{q}": float(v) for q, v in zip((10, 50, 90), np.percentile(values, (10, 50, 90)))}}


def quantize(image: np.ndarray, inside: np.ndarray, levels: int = GLCM_LEVELS) -> np.ndarray:
    """Integer levels 0..levels-1 of ``image`` over the tumor's own p1-p99 range (scale-free)."""
    low, high = np.percentile(image[inside], (1, 99))
    if not high > low:
        return np.zeros(image.shape, np.int64)
    return np.clip(((image - low) / (high - low) * levels).astype(np.int64), 0, levels - 1)


def _pairs(inside: np.ndarray, offset) -> tuple[tuple[slice, ...], tuple[slice, ...], np.ndarray]:
    """Slices of the first and second voxel of every pair ``offset`` apart, and where both are inside."""
    first, second = [], []
    for d, n in zip(offset, inside.shape):
        first.append(slice(max(0, -d), n - max(0, d)))
        second.append(slice(max(0, d), n - max(0, -d)))
    first, second = tuple(first), tuple(second)
    return first, second, inside[first] & inside[second]


def glcm_features(levels: np.ndarray, inside: np.ndarray, distance: int, count: int = GLCM_LEVELS) -> dict[str, float]:
    """Symmetric 3D co-occurrence at ``distance`` over the 13 directions (pairs inside the tumor),
    averaged over the directions with pairs: contrast, homogeneity, energy, correlation, entropy."""
    i, j = np.meshgrid(np.arange(count), np.arange(count), indexing="ij")
    totals = []
    for direction in DIRECTIONS:
        first, second, both = _pairs(inside, tuple(distance * d for d in direction))
        if not both.any():
            continue
        codes = levels[first][both] * count + levels[second][both]
        matrix = np.bincount(codes, minlength=count * count).reshape(count, count).astype(np.float64)
        matrix = matrix + matrix.T
        p = matrix / matrix.sum()
        mu = (i * p).sum()
        var = ((i - mu) ** 2 * p).sum()
        totals.append([
            ((i - j) ** 2 * p).sum(),
            (p / (1.0 + np.abs(i - j))).sum(),
            (p ** 2).sum(),
            ((i - mu) * (j - mu) * p).sum() / var if var > 0 else 1.0,
            -(p[p > 0] * np.log2(p[p > 0])).sum(),
        ])
    names = ("contrast", "homogeneity", "energy", "correlation", "entropy")
    if not totals:
        return {name: np.nan for name in names}
    return dict(zip(names, np.mean(totals, axis=0).tolist()))


def autocorrelation(image: np.ndarray, inside: np.ndarray, axis: int, lag: int) -> float:
    """Correlation of voxel pairs ``lag`` apart along ``axis``, both inside, around the tumor's mean
    and variance (nan without a pair or a spread)."""
    values = image[inside]
    variance = values.var()
    offset = [0, 0, 0]
    offset[axis] = lag
    first, second, both = _pairs(inside, offset)
    if not both.any() or not variance > 0:
        return np.nan
    mean = values.mean()
    return float(((image[first][both] - mean) * (image[second][both] - mean)).mean() / variance)


def radial_profile(image: np.ndarray, inside: np.ndarray, depth: np.ndarray, shells: int = RADIAL_SHELLS) -> list[float]:
    """Mean of ``image`` in ``shells`` shells of relative depth (0 at the border, 1 at the deepest
    voxel) less the tumor's mean; nan for an empty shell."""
    values, where = image[inside], np.minimum((depth[inside] * shells).astype(int), shells - 1)
    mean = values.mean()
    return [float(values[where == k].mean() - mean) if (where == k).any() else np.nan for k in range(shells)]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() > 0 and b.std() > 0:
        return float(np.corrcoef(a, b)[0, 1])
    return np.nan


def tumor_features(phases: np.ndarray, mask: np.ndarray, reference: float, margin: int = 3) -> dict[str, float]:
    """The suite's features (name -> value) of the tumor ``mask`` in (P >= 3, Z, Y, X) ``phases``, the
    intensities over the case's ``reference`` tissue intensity (see the module doc). nan where a
    feature is undefined for this tumor (an empty shell, a constant image)."""
    mask = np.asarray(mask) > 0
    if mask.shape != phases.shape[1:]:
        raise SynBTError(f"mask {mask.shape} and phases {phases.shape} are not on one grid")
    if mask.sum() < 8:
        raise SynBTError(f"the tumor has {int(mask.sum())} voxels; the suite needs at least 8")
    low = np.maximum(np.argwhere(mask).min(axis=0) - margin, 0)
    high = np.argwhere(mask).max(axis=0) + 1 + margin
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    inside = mask[box]
    images = tumor_images(np.asarray(phases)[(slice(None), *box)], reference)
    out: dict[str, float] = {}
    for name, image in images.items():
        out.update({f"fo_{name}_{k}": v for k, v in first_order(image[inside]).items()})
    textured = ("pre", "post1", "post2", "sub1", "late")
    for name in textured:
        levels = quantize(images[name], inside)
        for distance in GLCM_DISTANCES:
            out.update({f"glcm{distance}_{name}_{k}": v for k, v in glcm_features(levels, inside, distance).items()})
        for axis, lag in itertools.product(range(3), AUTOCORRELATION_LAGS):
            out[f"ac_{name}_{'zyx'[axis]}{lag}"] = autocorrelation(images[name], inside, axis, lag)
    depth = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1, 1:-1]
    depth = depth / depth[inside].max()
    for name in ("pre", "post1", "sub1", "late"):
        out.update({f"radial_{name}_{k}": v for k, v in enumerate(radial_profile(images[name], inside, depth))})
    pre, post1, post2 = (images[name][inside] for name in PHASES)
    early = (post1 - pre) / max(abs(pre.mean()), 1e-6)
    late = (post2 - post1) / np.maximum(np.abs(post1), max(abs(post1.mean()), 1e-6) * 0.1)
    for name, values in (("early", early), ("latechange", late)):
        out.update({f"kin_{name}_{k}": v for k, v in first_order(values).items() if k in ("std", "p10", "p90", "skew")})
    rising, falling = float((late > LATE_FLAT).mean()), float((late < -LATE_FLAT).mean())
    out.update(kin_rising=rising, kin_falling=falling, kin_flat=1.0 - rising - falling,
               kin_uniformity=max(rising, falling, 1.0 - rising - falling))
    residual = {name: (images[name] - ndimage.uniform_filter(images[name], 3))[inside] for name in PHASES}
    for a, b in itertools.combinations(PHASES, 2):
        out[f"xc_{a}_{b}"] = correlation(images[a][inside], images[b][inside])
        out[f"xc_hp_{a}_{b}"] = correlation(residual[a], residual[b])
    out["xc_sub1_late"] = correlation(images["sub1"][inside], images["late"][inside])
    out["late_spread"] = float(images["late"][inside].std() / max(post1.std(), 1e-12))
    out["late_over_early_spread"] = float(images["late"][inside].std() / max(images["sub1"][inside].std(), 1e-12))
    return out


# ---------------------------------------------------------------------------------- judge


def _classifier(kind: str, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "boosting":
        return HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1, max_depth=3, min_samples_leaf=5,
                                              l2_regularization=1.0, random_state=seed)
    if kind == "logistic":
        return make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                             LogisticRegression(C=0.1, max_iter=2000))
    raise SynBTError(f"unknown classifier {kind!r}; choose boosting or logistic")


@dataclass
class SuiteAUC:
    """AUC of the averaged out-of-fold scores, its 95 % bootstrap interval (cases resampled), and the scores."""

    auc: float
    low: float
    high: float
    scores: np.ndarray


def auc_score(scores, labels) -> float:
    """Area under the ROC curve (label 1 positive) from mid-ranks: ties count 1/2 (realism.auc, faster)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    positive = labels == 1
    count, other = int(positive.sum()), int((~positive).sum())
    if count == 0 or other == 0:
        raise SynBTError("AUC needs at least one sample of each class")
    ranks = stats.rankdata(scores)
    return float((ranks[positive].sum() - count * (count + 1) / 2) / (count * other))


def bootstrap_interval(scores, labels, groups, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the AUC over resamples of the groups (cases), with replacement."""
    scores, labels, groups = np.asarray(scores), np.asarray(labels), np.asarray(groups)
    unique = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in unique]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        picked = np.concatenate([members[k] for k in rng.integers(0, unique.size, unique.size)])
        if np.unique(labels[picked]).size == 2:
            values.append(auc_score(scores[picked], labels[picked]))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def cross_validated_auc(features: np.ndarray, labels, groups, kind: str = "boosting", folds: int = 5,
                        repeats: int = 3, seed: int = 0, resamples: int = 2000) -> SuiteAUC:
    """Grouped, stratified ``folds``-fold cross-validation repeated ``repeats`` times (a case's tumors
    share a fold; nothing of a test fold is seen in fitting); the AUC of each sample's out-of-fold
    score averaged over the repeats, with a bootstrap interval over the groups."""
    from sklearn.model_selection import StratifiedGroupKFold

    x, y, g = np.asarray(features, np.float64), np.asarray(labels, int), np.asarray(groups)
    if x.ndim != 2 or y.shape != (x.shape[0],) or g.shape != y.shape:
        raise SynBTError(f"need features (samples, features), one label and one group per sample; got "
                         f"{x.shape}, {y.shape}, {g.shape}")
    if set(np.unique(y)) != {0, 1}:
        raise SynBTError("both classes 0 and 1 are needed")
    defined = np.isfinite(x).any(axis=0)  # a feature undefined for every tumor says nothing
    x = x[:, defined]
    scores = np.zeros(y.size)
    for repeat in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
        for train, test in splitter.split(x, y, g):
            keep = np.isfinite(x[train]).any(axis=0)
            model = _classifier(kind, seed + repeat).fit(x[train][:, keep], y[train])
            scores[test] += model.predict_proba(x[test][:, keep])[:, 1] / repeats
    low, high = bootstrap_interval(scores, y, g, resamples, seed)
    return SuiteAUC(auc_score(scores, y), low, high, scores)
