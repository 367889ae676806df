"""Contrast kinetics: Parker AIF, extended Tofts, SPGR signal and BI-RADS curve types."""
import numpy as np
import pytest

from SynBTLib import SynBTError
from SynBTLib import kinetics as kin


def test_parker_aif_has_a_first_pass_peak_and_a_slow_tail():
    t = np.arange(-30.0, 600.0, 0.5)
    blood = kin.parker_aif(t)
    assert np.all(blood[t <= 0] == 0)
    peak_time = t[np.argmax(blood)]
    assert 5.0 < peak_time < 15.0  # first pass ~0.17 min after injection
    assert 4.0 < blood.max() < 8.0  # mM, as published
    tail = blood[(t >= 120) & (t <= 600)]
    assert np.all(np.diff(tail) < 0)
    np.testing.assert_allclose(tail[-1], 1.050 * np.exp(-0.1685 * 10), rtol=1e-2)  # alpha exp(-beta t) at 10 min


def test_extended_tofts_limits_and_broadcasting():
    t = kin.phase_times(4)
    plasma = kin.parker_aif(t) / (1 - kin.HEMATOCRIT)
    np.testing.assert_allclose(kin.extended_tofts(t, 0.0, 0.3, 0.05), 0.05 * plasma)
    conc = kin.extended_tofts([0.0, 30.0, 60.0, 90.0], np.array([0.1, 0.5, 1.0]), 0.4, 0.02)
    assert conc.shape == (3, 4)
    assert np.all(conc[:, 0] == 0)  # nothing at injection time (the pre-contrast phase)
    assert np.all(np.diff(conc[:, 1]) > 0)  # more Ktrans, more early uptake
    with pytest.raises(SynBTError):
        kin.extended_tofts(t, 0.1, 0.0, 0.0)


def test_signal_grows_with_concentration_and_saturates():
    conc = np.array([0.0, 0.2, 0.5, 1.0, 2.0, 8.0])
    signal = kin.concentration_to_signal(conc, t10_s=1.2)
    np.testing.assert_allclose(signal[0], kin.spgr_signal(1.2))
    gains = np.diff(signal)
    assert np.all(gains > 0) and gains[-1] / 6.0 < gains[0] / 0.2  # sub-linear at high concentration
    # fat (short T1) starts brighter than fibroglandular tissue (long T1) on T1-weighted images
    assert kin.spgr_signal(0.29) > 2 * kin.spgr_signal(1.25)


@pytest.mark.parametrize("num_phases", [3, 4])
@pytest.mark.parametrize("curve_type", kin.CURVE_TYPES)
def test_tumor_kinetics_give_the_requested_curve_type(curve_type, num_phases):
    t = kin.phase_times(num_phases)
    rng = np.random.default_rng(7)
    for _ in range(20):
        tissue = kin.tumor_kinetics(curve_type, rng)
        signal = tissue.signal(t)
        assert kin.classify_curve(signal) == curve_type
        assert kin.relative_enhancement(signal)[1] > 0.8  # malignant: fast wash-in


def test_classify_curve_and_phase_times_validate_input():
    assert kin.classify_curve([100, 200, 230]) == "persistent"
    assert kin.classify_curve([100, 200, 205]) == "plateau"
    assert kin.classify_curve([100, 200, 170]) == "washout"
    with pytest.raises(SynBTError):
        kin.classify_curve([100, 200])


@pytest.mark.parametrize("signal, expected", [
    ([0.0, -10.0, -9.5], "plateau"),  # +5 % of the initial signal's magnitude
    ([0.0, -10.0, -8.0], "persistent"),  # +20 %
    ([0.0, -10.0, -12.0], "washout"),
    ([0.0, 0.0, 5.0], "persistent"),  # rising from zero: any rise is infinitely large
    ([0.0, 0.0, -5.0], "washout"),
    ([0.0, 0.0, 0.0], "plateau"),
])
def test_a_non_positive_initial_signal_is_classified_against_its_magnitude(signal, expected):
    """The one BI-RADS classifier (metrics' tumor features use it too) when the initial signal is not positive."""
    assert kin.classify_curve(signal) == expected


def test_tumor_features_report_the_same_curve_type_as_the_classifier():
    from SynBTLib.case import Case, Geometry
    from SynBTLib.metrics import tumor_features

    rng = np.random.default_rng(3)
    mask = np.zeros((8, 12, 12), np.uint8)
    mask[2:6, 3:9, 3:9] = 1
    for curve in ([100.0, -50.0, -46.0], [100.0, 200.0, 150.0], [100.0, 0.0, 30.0]):
        phases = np.stack([rng.normal(value, 1.0, mask.shape) for value in curve]).astype(np.float32)
        features = tumor_features(Case(phases, Geometry(size=(12, 12, 8), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))), mask)
        assert features["curve_type"] == kin.classify_curve(phases[:, mask > 0].astype(np.float64).mean(axis=1))
    with pytest.raises(SynBTError):
        kin.tumor_kinetics("benign", np.random.default_rng(0))
    np.testing.assert_allclose(kin.phase_times(4, 60.0), [0, 60, 120, 180])
    with pytest.raises(SynBTError):
        kin.phase_times(1)


def test_tumor_curve_type_measures_the_mean_curve_inside_the_mask():
    from SynBTLib.kinetics import tumor_curve_type

    phases = np.ones((3, 4, 4, 4), np.float32)
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    phases[1][mask > 0], phases[2][mask > 0] = 2.0, 1.5  # -25 % after the peak inside, flat outside
    assert tumor_curve_type(phases, mask) == "washout"
    phases[2][mask > 0] = 2.5
    assert tumor_curve_type(phases, mask) == "persistent"
    assert tumor_curve_type(phases, np.zeros_like(mask)) is None
    assert tumor_curve_type(phases[:2], mask) is None
