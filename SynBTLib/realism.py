"""Realism study: can a simple classifier tell synthetic tumors from real ones?

Each tumor becomes a feature vector (``realism_features``: metrics.tumor_features with every
intensity divided by the case's own reference tissue, so the scanner's intensity scale cannot
give the answer away). An L2-regularized logistic regression on standardized features is
cross-validated with stratified (optionally grouped) folds, and scored by the area under the ROC
curve from the Mann-Whitney U statistic: 0.5 means real and synthetic tumors are
indistinguishable to it, 1.0 means perfectly told apart.

``phantom_study_case`` builds the fair pair used by bench/realism.py and bench/realism_suite.py: a
phantom with one real tumor, and its tumor-free twin into whose identical mask a synthesizer
paints, so shape and size are identical and only the appearance differs. With a phantom-2
``preset`` the twin is the same phantom with the lesion drawn but not placed (same anatomy,
texture, fat suppression, ghosts, motion and noise draws); ``choose_study_phases`` then keeps the
phases a bundle models, by its phase policy, as `synbt synthesize` does.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage, optimize, special, stats

from . import labels as L
from .case import Case
from .errors import SynBTError
from .metrics import tumor_features

INTENSITY_STATS = ("mean", "std", "median", "p10", "p90")
# Voxels this close to a tumor (mm) are left out of the reference tissue: the synthesizers blend
# the tumor into its surroundings over a few millimetres.
REFERENCE_EXCLUSION_MM = 6.0


# ------------------------------------------------------------------------------------ features


def reference_intensity(case: Case, reference_mask) -> float:
    """Median pre-contrast (phase 0) intensity inside `reference_mask` (e.g. fibroglandular tissue)."""
    reference = np.asarray(reference_mask) != 0
    if reference.shape != case.shape:
        raise SynBTError(f"reference mask of shape {reference.shape} does not match the case grid {case.shape}")
    if not reference.any():
        raise SynBTError("the reference tissue mask is empty")
    value = float(np.median(case.phases[0][reference]))
    if not value > 0:
        raise SynBTError(f"the reference tissue has a non-positive median intensity ({value:g}); cannot normalize by it")
    return value


def realism_features(case: Case, mask, reference_mask) -> dict[str, float]:
    """Scale-free appearance features of the tumor `mask` (name -> value), for the classifier.

    Per-phase intensity statistics and gradient magnitudes are divided by reference_intensity;
    relative enhancement, slopes and GLCM texture are scale-free already. Size and shape are
    left out on purpose (the study compares tumors of identical masks).
    """
    features = tumor_features(case, mask)
    scale = reference_intensity(case, reference_mask)
    out: dict[str, float] = {}
    for entry in features["phases"]:
        for stat in INTENSITY_STATS:
            out[f"{stat}_{entry['phase']}"] = entry[stat] / scale
    for entry, relative in zip(features["phases"][1:], features["relative_enhancement"][1:]):
        out[f"enhancement_{entry['phase']}"] = relative
    out["peak_enhancement"] = features["peak_enhancement"]  # (the wash-in slope equals the first enhancement)
    if features["wash_out_slope"] is not None:
        out["wash_out_slope"] = features["wash_out_slope"]
    out["gradient_mean"] = features["gradient_mean"] / scale
    out["gradient_std"] = features["gradient_std"] / scale
    out["glcm_contrast"] = features["glcm_contrast"]
    out["glcm_homogeneity"] = features["glcm_homogeneity"]
    return out


def feature_matrix(rows: Sequence[dict[str, float]]) -> tuple[np.ndarray, list[str]]:
    """(samples, features) float64 matrix of feature dicts that share the same names, and the names."""
    if not rows:
        raise SynBTError("no feature rows to stack")
    names = list(rows[0])
    for index, row in enumerate(rows):
        if list(row) != names:
            raise SynBTError(f"feature row {index} has different features than row 0")
    matrix = np.array([[row[name] for name in names] for row in rows], dtype=np.float64)
    if not np.isfinite(matrix).all():
        raise SynBTError("the feature matrix has non-finite values")
    return matrix, names


# ---------------------------------------------------------------------------------- classifier


@dataclass
class LogisticModel:
    """A fitted L2 logistic regression with its standardization: score = w . (x - mean) / scale + b."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Linear scores (log-odds of the positive class) of (samples, features) rows."""
        return ((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.weights + self.bias


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float = 1.0) -> LogisticModel:
    """Fit sum(log-loss) + l2/2 * |w|^2 (intercept not penalized) on standardized features, L-BFGS."""
    x, y = np.asarray(features, np.float64), np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise SynBTError(f"need features (samples, features) and one label per sample, got {x.shape} and {y.shape}")
    if set(np.unique(y)) != {0, 1}:
        raise SynBTError("training labels must contain both classes 0 and 1")
    if not l2 > 0:
        raise SynBTError(f"l2 must be positive, got {l2}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0  # a constant feature carries no information; keep it at zero
    z = (x - mean) / scale
    sign = 2.0 * y - 1.0

    def loss_and_gradient(params):
        w, b = params[:-1], params[-1]
        margin = sign * (z @ w + b)
        loss = np.logaddexp(0.0, -margin).sum() + 0.5 * l2 * (w @ w)
        weight = -sign * special.expit(-margin)  # d loss / d score
        return loss, np.append(z.T @ weight + l2 * w, weight.sum())

    result = optimize.minimize(loss_and_gradient, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B")
    return LogisticModel(mean=mean, scale=scale, weights=result.x[:-1], bias=float(result.x[-1]))


def auc(scores, labels) -> float:
    """Area under the ROC curve (positives = label 1) from the Mann-Whitney U statistic; ties count 1/2."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    positive, negative = scores[labels == 1], scores[labels == 0]
    if positive.size == 0 or negative.size == 0:
        raise SynBTError("AUC needs at least one sample of each class")
    u = stats.mannwhitneyu(positive, negative, alternative="two-sided").statistic
    return float(u / (positive.size * negative.size))


def stratified_folds(labels, folds: int, seed: int = 0, groups=None) -> np.ndarray:
    """Fold index (0..folds-1) of each sample: every class spread evenly over the folds, at random.

    With `groups`, the samples of a group share a fold (e.g. the real and the synthetic tumor of
    one phantom); groups are then dealt out per class of their first sample.
    """
    labels = np.asarray(labels)
    groups = np.arange(labels.size) if groups is None else np.asarray(groups)
    if groups.shape != labels.shape:
        raise SynBTError(f"{groups.size} groups for {labels.size} samples")
    unique, first = np.unique(groups, return_index=True)
    if folds < 2 or unique.size < folds:
        raise SynBTError(f"cannot make {folds} folds of {unique.size} groups (need folds >= 2 and at least one group per fold)")
    group_labels = labels[first]
    rng = np.random.default_rng(seed)
    group_fold = np.empty(unique.size, dtype=int)
    offset = 0  # carried over between classes, so the folds also come out of equal size
    for label in np.unique(group_labels):
        members = rng.permutation(np.flatnonzero(group_labels == label))
        group_fold[members] = (np.arange(members.size) + offset) % folds
        offset += members.size
    assignment = group_fold[np.searchsorted(unique, groups)]
    for fold in range(folds):
        if np.unique(labels[assignment == fold]).size < np.unique(labels).size:
            raise SynBTError(f"cannot make {folds} stratified folds: some class has fewer than {folds} groups")
    return assignment


@dataclass
class CrossValidation:
    """Cross-validated AUC of the logistic classifier: per fold, their mean and std, and pooled."""

    fold_aucs: list[float]
    pooled_auc: float  # AUC of all out-of-fold scores together, averaged over repeats

    @property
    def auc(self) -> float:
        return float(np.mean(self.fold_aucs))

    @property
    def auc_std(self) -> float:
        return float(np.std(self.fold_aucs))


def cross_validated_auc(
    features, labels, folds: int = 4, l2: float = 1.0, seed: int = 0, groups=None, repeats: int = 1
) -> CrossValidation:
    """Stratified k-fold AUC of an L2 logistic regression, repeated with `repeats` fold shuffles.

    Standardization is fitted on each training fold only, so nothing of the test fold leaks in.
    """
    x, y = np.asarray(features, np.float64), np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise SynBTError(f"need features (samples, features) and one label per sample, got {x.shape} and {y.shape}")
    fold_aucs, pooled = [], []
    for repeat in range(repeats):
        assignment = stratified_folds(y, folds, seed=seed + repeat, groups=groups)
        out_of_fold = np.empty(y.size)
        for fold in range(folds):
            test = assignment == fold
            model = fit_logistic(x[~test], y[~test], l2=l2)
            out_of_fold[test] = model.scores(x[test])
            fold_aucs.append(auc(out_of_fold[test], y[test]))
        pooled.append(auc(out_of_fold, y))
    return CrossValidation(fold_aucs=fold_aucs, pooled_auc=float(np.mean(pooled)))


# ------------------------------------------------------------------------------ phantom study


@dataclass
class StudyCase:
    """A real tumor and the tumor-free twin phantom to synthesize into the same mask.

    real: the phantom with one tumor; mask: its tumor label (uint8 (Z, Y, X)); background: the
    tumor-free twin (legacy phantom: same seed and anatomy parameters, its fine fibroglandular
    pattern and noise differ; phantom 2: the same phantom without the lesion); real_reference /
    background_reference: fibroglandular tissue of each, away from the mask, for realism_features.
    """

    seed: int
    real: Case
    mask: np.ndarray
    background: Case
    real_reference: np.ndarray
    background_reference: np.ndarray
    meta: dict


def _reference_tissue(tissue_labels: np.ndarray, mask: np.ndarray, spacing_zyx) -> np.ndarray:
    near = ndimage.distance_transform_edt(mask == 0, sampling=spacing_zyx) <= REFERENCE_EXCLUSION_MM
    return (tissue_labels == L.FIBROGLANDULAR) & ~near


def phantom_study_case(seed: int, shape=None, preset: str | None = None, **params) -> StudyCase:
    """The real/background phantom pair of one seed (one tumor / its tumor-free twin).

    preset None: the legacy phantom on ``shape`` (default 192 x 192 x 64), twin = make_phantom with
    tumors=0 and the real case's point spread. A phantom-2 preset ("small", "bundle", "clinical"):
    the preset's grid unless ``shape`` is given, twin = the same phantom with the lesion left out.
    """
    from .phantom import make_phantom

    if preset in (None, "legacy"):
        shape = (192, 192, 64) if shape is None else shape
        real = make_phantom(seed=seed, shape=shape, tumors=1, **params)
        # the same scanner: the drawn point-spread (resolution) of the real case, not a fresh draw
        background = make_phantom(seed=seed, shape=shape, tumors=0,
                                  **{**params, "resolution": real.meta["parameters"]["resolution"]})
    else:
        real = make_phantom(seed=seed, shape=shape, tumors=1, preset=preset, **params)
        background = make_phantom(seed=seed, shape=shape, tumors=1, preset=preset, place_lesions=False, **params)
    mask = real.tumor_labels.astype(np.uint8)
    spacing_zyx = real.case.geometry.spacing[::-1]
    tumor = {k: v for k, v in real.meta["tumors"][0].items() if k != "signal"}
    tumor.setdefault("lesion_type", "mass")  # the legacy phantom draws masses only
    return StudyCase(
        seed=int(seed),
        real=real.case,
        mask=mask,
        background=background.case,
        real_reference=_reference_tissue(real.tissue_labels, mask, spacing_zyx),
        background_reference=_reference_tissue(background.tissue_labels, mask, spacing_zyx),
        meta={
            "tumor": tumor,
            "mask_in_background_breast": float(np.isin(background.tissue_labels[mask > 0], L.BREAST_TISSUE).mean()),
            "preset": preset or "legacy",
            "phase_times_s": list(real.meta["phase_times_s"]),
            "fat_suppressed": bool(real.meta["parameters"].get("fat_suppressed", True)),
            "field_strength_t": real.meta["parameters"].get("field_strength_t", 1.5),
        },
    )


def choose_study_phases(study: StudyCase, bundle) -> StudyCase:
    """``study`` with only the phases a bundle models (a phase_choice.BundlePhases), picked from both
    cases alike by phase_choice.choose_phases on the phantom's acquisition times; the choice is in
    meta["phases"]. A SynBTError says why the bundle cannot take this case."""
    from .phase_choice import choose_phases

    times = study.meta["phase_times_s"]
    choice = choose_phases(study.real.num_phases, bundle, times, "the phantom's protocol", what=f"phantom {study.seed}")
    picked = list(choice.indices)
    names = [study.real.phase_names[k] for k in picked]

    def keep(case: Case) -> Case:
        return Case(phases=np.ascontiguousarray(case.phases[picked]), geometry=case.geometry, phase_names=names)

    record = choice.record(study.real.phase_names) | {"times_s": [round(float(times[k]), 1) for k in picked]}
    return replace(study, real=keep(study.real), background=keep(study.background),
                   meta={**study.meta, "phases": record})
