"""Realism study: the AUC, the folds, the logistic classifier on feature sets of known separability,
and scale-free tumor features on a real (small) phantom."""
import itertools

import numpy as np
import pytest

from SynBTLib.errors import SynBTError
from SynBTLib.realism import (
    auc,
    cross_validated_auc,
    feature_matrix,
    fit_logistic,
    phantom_study_case,
    realism_features,
    stratified_folds,
)


def pairwise_auc(scores, labels):
    """The definition: the fraction of (positive, negative) pairs ranked correctly, ties counting 1/2."""
    positive = [s for s, y in zip(scores, labels) if y == 1]
    negative = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positive, negative))
    return wins / (len(positive) * len(negative))


def two_classes(rng, n, dims, shift):
    """n samples per class in `dims` dimensions; class 1 is shifted by `shift` along the first 3 axes."""
    negative = rng.normal(size=(n, dims))
    positive = rng.normal(size=(n, dims))
    positive[:, :3] += shift
    return np.vstack([positive, negative]), np.repeat([1, 0], n)


def test_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=30).astype(float)  # many ties
    labels = rng.integers(0, 2, size=30)
    assert auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels))
    assert auc([3, 4, 1, 2], [1, 1, 0, 0]) == 1.0
    assert auc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    assert auc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5
    with pytest.raises(SynBTError, match="each class"):
        auc([1, 2], [1, 1])


def test_folds_are_stratified_and_keep_groups_together():
    labels = np.array([1] * 12 + [0] * 20)
    folds = stratified_folds(labels, 4, seed=3)
    for fold in range(4):
        assert np.sum(labels[folds == fold] == 1) == 3
        assert np.sum(labels[folds == fold] == 0) == 5
    # paired samples (real and synthetic of one phantom) share their fold
    groups = np.tile(np.arange(10), 2)
    paired = stratified_folds(np.repeat([1, 0], 10), 5, seed=1, groups=groups)
    assert all(len(set(paired[groups == g])) == 1 for g in range(10))
    assert sorted(np.bincount(paired)) == [4] * 5
    with pytest.raises(SynBTError, match="fewer than 4"):
        stratified_folds(np.array([1, 1, 1, 0, 0, 0, 0, 0]), 4)


def test_logistic_fit_learns_the_separating_direction():
    rng = np.random.default_rng(1)
    x, y = two_classes(rng, 100, 6, shift=2.0)
    model = fit_logistic(x * 50.0 + 7.0, y, l2=1.0)  # standardization makes the units irrelevant
    assert np.all(model.weights[:3] > 0.5)
    assert np.all(np.abs(model.weights[3:]) < 0.5 * model.weights[:3].min())
    assert auc(model.scores(x * 50.0 + 7.0), y) > 0.95


def test_identical_distributions_give_chance_auc():
    rng = np.random.default_rng(2)
    x, y = two_classes(rng, 150, 8, shift=0.0)
    result = cross_validated_auc(x, y, folds=5, seed=0, repeats=3)
    assert len(result.fold_aucs) == 15
    assert abs(result.auc - 0.5) < 0.08
    assert abs(result.pooled_auc - 0.5) < 0.08


def test_separated_distributions_give_auc_near_one():
    rng = np.random.default_rng(3)
    x, y = two_classes(rng, 30, 20, shift=3.0)  # few samples, many features: the L2 term matters
    result = cross_validated_auc(x, y, folds=4, seed=0, repeats=2)
    assert result.auc > 0.97
    assert result.pooled_auc > 0.97


def test_partly_separated_distributions_fall_in_between():
    rng = np.random.default_rng(4)
    x, y = two_classes(rng, 150, 5, shift=0.4)  # best linear score: AUC = Phi(0.4 * sqrt(3) / sqrt(2)) ~ 0.69
    result = cross_validated_auc(x, y, folds=5, seed=0)
    assert 0.62 < result.auc < 0.88


def test_feature_matrix_refuses_mismatched_rows():
    matrix, names = feature_matrix([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}])
    assert names == ["a", "b"] and matrix.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(SynBTError, match="different features"):
        feature_matrix([{"a": 1.0}, {"b": 1.0}])
    with pytest.raises(SynBTError, match="non-finite"):
        feature_matrix([{"a": float("nan")}])


@pytest.fixture(scope="module")
def study_case():
    return phantom_study_case(seed=7, shape=(64, 64, 24), tumor_diameters_mm=30.0)


def test_study_pair_shares_the_mask_and_the_anatomy(study_case):
    assert study_case.mask.dtype == np.uint8 and study_case.mask.any()
    assert study_case.real.shape == study_case.background.shape == study_case.mask.shape
    assert study_case.meta["mask_in_background_breast"] > 0.9
    assert not (study_case.real_reference & (study_case.mask > 0)).any()
    inside = study_case.mask > 0
    # the real case has an enhancing tumor there, the background does not
    real_gain = study_case.real.phases[1][inside].mean() / study_case.real.phases[0][inside].mean()
    background_gain = study_case.background.phases[1][inside].mean() / study_case.background.phases[0][inside].mean()
    assert real_gain > background_gain + 0.3


def test_realism_features_do_not_depend_on_the_intensity_scale(study_case):
    case, mask, reference = study_case.real, study_case.mask, study_case.real_reference
    features = realism_features(case, mask, reference)
    scaled = realism_features(case.with_phases(case.phases * 7.5), mask, reference)
    assert set(features) >= {"mean_pre", "p90_post2", "enhancement_post1", "wash_out_slope", "glcm_contrast"}
    for name, value in features.items():
        assert scaled[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert features["enhancement_post1"] > 0.3  # a phantom tumor enhances
    with pytest.raises(SynBTError, match="reference tissue mask is empty"):
        realism_features(case, mask, np.zeros_like(reference))
