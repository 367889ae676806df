"""Independent realism suite: its features on volumes of known structure, its judge on feature sets of
known separability, and the coherence map that makes a tumor's post-contrast phases agree."""
import numpy as np
import pytest
from scipy import ndimage

from SynBTLib.calibration import CoherenceMap, ImageCalibration, TextureMap, coherence_targets, mean_correlation, pulled_together
from SynBTLib.errors import SynBTError
from SynBTLib.realism_suite import autocorrelation, cross_validated_auc, glcm_features, quantize, tumor_features


def ball(shape=(20, 24, 24), radius=8.0):
    z, y, x = np.indices(shape)
    centre = (np.asarray(shape) - 1) / 2
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


def tumor_phases(rng, coherent: bool, shape=(20, 24, 24)):
    """pre flat with noise; post1 a smooth enhancement pattern; post2 the same pattern 10 % higher
    (coherent) or an independent pattern of the same spread."""
    pattern = lambda: ndimage.gaussian_filter(rng.normal(size=shape), 2) * 300  # noqa: E731
    enhancement = pattern()
    pre = 100 + rng.normal(size=shape)
    post1 = pre + 200 + enhancement
    post2 = pre + 220 + (1.1 * enhancement if coherent else 1.1 * pattern())
    return np.stack([pre, post1, post2])


def test_cross_phase_features_tell_coherent_from_incoherent_phases():
    rng = np.random.default_rng(0)
    mask = ball()
    coherent = tumor_features(tumor_phases(rng, True), mask, reference=100.0)
    incoherent = tumor_features(tumor_phases(rng, False), mask, reference=100.0)
    assert coherent["xc_post1_post2"] > 0.99 and abs(incoherent["xc_post1_post2"]) < 0.5
    assert coherent["late_spread"] < 0.2 < incoherent["late_spread"]
    # the late change of the coherent tumor rises everywhere: its map is uniform
    assert coherent["kin_rising"] == 1.0 and coherent["kin_uniformity"] == 1.0
    assert incoherent["kin_uniformity"] < 0.9
    assert len(coherent) == len(incoherent) > 150 and all(np.isfinite(v) for v in coherent.values())
    # intensities are over the reference: scaling the case and its reference changes nothing
    scaled = tumor_features(tumor_phases(np.random.default_rng(0), True) * 3, mask, reference=300.0)
    again = tumor_features(tumor_phases(np.random.default_rng(0), True), mask, reference=100.0)
    np.testing.assert_allclose([scaled[k] for k in again], list(again.values()), rtol=1e-6, atol=1e-9)
    with pytest.raises(SynBTError, match="at least 8"):
        tumor_features(tumor_phases(rng, True), np.zeros(mask.shape, bool), reference=1.0)
    with pytest.raises(SynBTError, match="reference"):
        tumor_features(tumor_phases(rng, True), mask, reference=0.0)


def test_autocorrelation_and_glcm_see_the_texture_axis_by_axis():
    rng = np.random.default_rng(1)
    mask = np.ones((16, 16, 16), bool)
    # constant along z, white along y and x
    image = np.broadcast_to(rng.normal(size=(1, 16, 16)), (16, 16, 16))
    assert autocorrelation(image, mask, 0, 1) == pytest.approx(1.0)
    assert abs(autocorrelation(image, mask, 2, 1)) < 0.15 and abs(autocorrelation(image, mask, 1, 3)) < 0.15
    assert np.isnan(autocorrelation(np.ones((16, 16, 16)), mask, 0, 1))  # no spread
    smooth = ndimage.gaussian_filter(rng.normal(size=(16, 16, 16)), 3)
    noise = rng.normal(size=(16, 16, 16))
    glcm = {name: glcm_features(quantize(im, mask), mask, 1) for name, im in (("smooth", smooth), ("noise", noise))}
    assert glcm["smooth"]["contrast"] < glcm["noise"]["contrast"] / 5
    assert glcm["smooth"]["homogeneity"] > glcm["noise"]["homogeneity"]
    assert glcm["smooth"]["correlation"] > 0.8 > 0.2 > glcm["noise"]["correlation"]
    assert glcm["noise"]["entropy"] > glcm["smooth"]["entropy"]
    lone = np.zeros((5, 5, 5), bool)
    lone[2, 2, 2] = True  # no pair of voxels inside
    assert all(np.isnan(v) for v in glcm_features(np.zeros((5, 5, 5), int), lone, 1).values())


def test_the_judge_scores_known_separations_with_intervals():
    rng = np.random.default_rng(2)
    n = 40
    groups = np.concatenate([np.arange(n), np.arange(n)])
    labels = np.repeat([0, 1], n)
    same = rng.normal(size=(2 * n, 6))
    apart = same.copy()
    apart[n:, :2] += 3.0
    apart[:5, 3] = np.nan  # undefined features are allowed
    for kind in ("boosting", "logistic"):
        separated = cross_validated_auc(apart, labels, groups, kind=kind, repeats=1, resamples=300)
        assert separated.auc > 0.9 and separated.low > 0.8 and separated.low <= separated.auc <= separated.high
        chance = cross_validated_auc(same, labels, groups, kind=kind, repeats=1, resamples=300)
        assert chance.low < 0.5 < chance.high and chance.auc < 0.75
        assert chance.scores.shape == (2 * n,)
    with pytest.raises(SynBTError, match="both classes"):
        cross_validated_auc(same, np.zeros(2 * n, int), groups)
    with pytest.raises(SynBTError, match="unknown classifier"):
        cross_validated_auc(same, labels, groups, kind="forest", repeats=1)


def test_the_coherence_map_pulls_post_phases_together_and_keeps_their_moments():
    rng = np.random.default_rng(3)
    image = tumor_phases(rng, False).astype(np.float32)
    mask = ball()
    core = ball(radius=3.0)
    before = mean_correlation(image[1:, mask & ~core])
    out = CoherenceMap(0.95).apply(image, mask, core)
    assert before < 0.5 and mean_correlation(out[1:, mask & ~core]) == pytest.approx(0.95, abs=1e-3)
    region = mask & ~core
    np.testing.assert_allclose(out[:, region].mean(1), image[:, region].mean(1), rtol=1e-5)
    np.testing.assert_allclose(out[:, region].std(1), image[:, region].std(1), rtol=1e-4)
    assert np.array_equal(out[0], image[0])  # pre-contrast untouched
    assert np.array_equal(out[:, core], image[:, core])  # no core target: the core is left alone
    assert np.array_equal(out[:, ~mask], image[:, ~mask])
    cored = CoherenceMap(0.95, core_target=0.2).apply(image, mask, core)
    assert mean_correlation(cored[1:, core]) == pytest.approx(max(0.2, mean_correlation(image[1:, core])), abs=1e-3)
    # phases that already agree as much are left as they are; the target is reached from any start
    coherent = tumor_phases(rng, True)
    z = (coherent[1:, mask] - coherent[1:, mask].mean(1, keepdims=True)) / coherent[1:, mask].std(1, keepdims=True)
    assert np.array_equal(pulled_together(z, 0.5), z)
    # in the image calibration it comes first, and it round-trips through the bundle config
    calibration = ImageCalibration((0.0,) * 3, (1.0,) * 3, coherence=CoherenceMap(0.95, 0.3))
    np.testing.assert_allclose(calibration.apply(image, mask, core=core), CoherenceMap(0.95, 0.3).apply(image, mask, core),
                               rtol=1e-5, atol=1e-4)
    assert ImageCalibration.from_config(calibration.to_config(), 3) == calibration
    for entry, message in (({"target": 1.5}, "must be a correlation"), ({"core_target": 0.2}, "must hold target"),
                           ({"target": "high"}, "must be numbers")):
        with pytest.raises(SynBTError, match=message):
            ImageCalibration.from_config({"image_calibration": {"shift": [0.0] * 3, "factor": [1.0] * 3,
                                                                "coherence": entry}}, 3)


def test_coherence_targets_are_the_real_tumors_mean_correlations():
    rng = np.random.default_rng(4)
    mask, core = ball(), ball(radius=3.0)
    tumors = [(tumor_phases(rng, k % 2 == 0), mask, core) for k in range(4)]
    fitted = coherence_targets(tumors)
    expected = np.mean([mean_correlation(p[1:, mask & ~core]) for p, _, _ in tumors])
    assert fitted.target == pytest.approx(expected)
    assert fitted.core_target == pytest.approx(np.mean([mean_correlation(p[1:, core]) for p, _, _ in tumors]))
    assert coherence_targets([(p, mask, None) for p, _, _ in tumors[:2]]).core_target is None
    assert coherence_targets([(p[:2], mask, None) for p, _, _ in tumors]) is None  # no two post phases


def test_shared_texture_detail_keeps_the_post_phases_coupled():
    rng = np.random.default_rng(5)
    image = tumor_phases(rng, True).astype(np.float32)
    mask = ball()
    coupled = {}
    for shared in (False, True):
        texture = TextureMap((0.0,) * 3, (1.9,) * 3, shared_detail=shared)
        out = texture.apply(image, mask, (2, 2, 2), seed=1)
        coupled[shared] = mean_correlation(out[1:, mask])
        assert TextureMap.from_config(texture.to_config()) == texture
    assert coupled[True] > 0.95 > 0.5 > coupled[False]
    with pytest.raises(SynBTError, match="shared_detail"):
        TextureMap.from_config({"notch": [0.0] * 3, "target": [1.5] * 3, "shared_detail": "yes"})


def test_the_fast_auc_is_the_mann_whitney_auc():
    from SynBTLib.realism import auc
    from SynBTLib.realism_suite import auc_score

    rng = np.random.default_rng(6)
    scores = rng.integers(0, 6, size=50).astype(float)  # many ties
    labels = rng.integers(0, 2, size=50)
    assert auc_score(scores, labels) == pytest.approx(auc(scores, labels))


def test_a_white_coherence_residual_is_seeded_noise_around_the_shared_pattern():
    rng = np.random.default_rng(7)
    image = tumor_phases(rng, False).astype(np.float32)
    mask = ball()
    white = CoherenceMap(0.95, residual="white")
    out = white.apply(image, mask, seed=3)
    assert mean_correlation(out[1:, mask]) == pytest.approx(0.95, abs=1e-3)
    np.testing.assert_allclose(out[1:, mask].std(1), image[1:, mask].std(1), rtol=1e-4)
    late = np.where(mask, out[2] - out[1], 0.0)
    own = np.where(mask, CoherenceMap(0.95).apply(image, mask)[2] - CoherenceMap(0.95).apply(image, mask)[1], 0.0)
    # what the phases do not share is white: the late change decorrelates within a voxel, the own residual does not
    assert autocorrelation(late, mask, 2, 1) < 0.2 < autocorrelation(own, mask, 2, 1)
    assert np.array_equal(white.apply(image, mask, seed=3), out) and not np.array_equal(white.apply(image, mask, seed=4), out)
    assert CoherenceMap.from_config(white.to_config()) == white
    with pytest.raises(SynBTError, match="residual"):
        CoherenceMap(0.9, residual="pink")


def test_curve_as_asked_is_the_share_of_tumors_made_with_the_type_asked():
    from bench.realism_suite import as_asked

    def row(kinetics, pre, post1, post2):
        return {"asked_kinetics": kinetics, "fo_pre_mean": pre, "fo_post1_mean": post1, "fo_post2_mean": post2}

    rows = [row("washout", 1.0, 3.0, 2.5),      # -17 %: washout, as asked
            row("persistent", 1.0, 3.0, 3.1),   # +3 %: plateau, not as asked
            row("plateau", 1.0, 3.0, 2.9),      # -3 %: plateau, as asked
            row("persistent", 1.0, 2.0, 2.5),   # +25 %: persistent, as asked
            row(None, 1.0, 3.0, 1.0)]           # no type asked: not counted
    assert as_asked(rows) == 0.75
    assert np.isnan(as_asked([row(None, 1.0, 2.0, 2.0)]))
