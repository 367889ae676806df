"""The handcrafted synthesizer: locality, determinism, input safety and realistic enhancement."""
import numpy as np
import pytest
from scipy import ndimage

from SynBTLib.case import Case, Geometry
from SynBTLib.errors import SynBTError
from SynBTLib.handcrafted import HandcraftedSynthesizer, draw_appearance

SPACING = (0.8, 0.8, 1.5)  # (x, y, z) mm, anisotropic like a clinical breast DCE series


def make_case(seed: int = 0, shape=(20, 48, 48), phases: int = 3) -> Case:
    """A small DCE case: air at low Y, then fat (bright pre-contrast, 5% enhancement) with
    fibroglandular stripes (darker, 25% enhancement), with Gaussian noise."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    body = yy > 8
    fibroglandular = body & ((np.sin(xx / 3.0) + np.cos(yy / 4.0)) > 0.3)
    pre = np.where(body, np.where(fibroglandular, 200.0, 400.0), 5.0)
    uptake = np.where(fibroglandular, 0.25, 0.05) * body
    curve = [0.0, 1.0, 1.1, 1.15][:phases]
    data = np.stack([pre * (1.0 + c * uptake) for c in curve]) + rng.normal(0.0, 8.0, (phases, *shape))
    geometry = Geometry(shape[::-1], SPACING, (-20.0, 10.0, 5.0))
    return Case(np.abs(data).astype(np.float32), geometry)


def sphere_mask(shape=(20, 48, 48), centre=(10, 28, 24), radius_mm=5.0) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    sx, sy, sz = SPACING
    r2 = ((zz - centre[0]) * sz) ** 2 + ((yy - centre[1]) * sy) ** 2 + ((xx - centre[2]) * sx) ** 2
    return (r2 <= radius_mm**2).astype(np.uint8)


def distance_outside_mm(mask: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(mask == 0, sampling=SPACING[::-1])


def relative_enhancement(case: Case, region: np.ndarray, phase: int = 1) -> float:
    pre = case.phases[0][region].mean()
    return float((case.phases[phase][region].mean() - pre) / pre)


def test_far_voxels_bit_identical_and_tumor_written():
    case, mask = make_case(), sphere_mask()
    synth = HandcraftedSynthesizer(blend_mm=2.0)
    result = synth(case, mask, seed=3)
    distance = distance_outside_mm(mask)
    far = distance >= synth.blend_mm
    assert np.array_equal(result.phases[:, far], case.phases[:, far])
    assert result.phases.dtype == np.float32 and result.phases.shape == case.phases.shape
    inside = mask > 0
    assert np.all(result.phases[1:, inside] != case.phases[1:, inside])
    # soft edge: the blend ring changes, but less than the tumor itself
    ring = (distance > 0) & (distance < synth.blend_mm)
    change = np.abs(result.phases[1] - case.phases[1])
    assert 0 < change[ring].mean() < change[inside].mean()


def test_deterministic_per_seed():
    case, mask = make_case(), sphere_mask()
    synth = HandcraftedSynthesizer()
    first, again, other = synth(case, mask, seed=7), synth(case, mask, seed=7), synth(case, mask, seed=8)
    assert np.array_equal(first.phases, again.phases)
    assert not np.array_equal(first.phases, other.phases)


def test_inputs_never_modified_and_cancel_propagates():
    case, mask = make_case(), sphere_mask()
    phases_before, mask_before = case.phases.copy(), mask.copy()
    calls = []
    result = HandcraftedSynthesizer()(case, mask, seed=1, progress=lambda d, t, m: calls.append((d, t)))
    assert result.phases is not case.phases
    assert np.array_equal(case.phases, phases_before) and np.array_equal(mask, mask_before)
    assert calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == sorted(d for d, _ in calls)

    def cancel(done, total, message):
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        HandcraftedSynthesizer()(case, mask, seed=1, progress=cancel)
    assert np.array_equal(case.phases, phases_before)


@pytest.mark.parametrize("seed", range(8))
def test_realistic_enhancement(seed):
    case, mask = make_case(seed), sphere_mask()
    result = HandcraftedSynthesizer()(case, mask, seed=seed)
    inside = mask > 0
    surrounding = (distance_outside_mm(mask) > 3.0) & (distance_outside_mm(mask) < 8.0)
    tumor_re = relative_enhancement(result, inside)
    assert 0.8 <= tumor_re <= 2.0
    assert tumor_re > 2 * relative_enhancement(result, surrounding)
    # pre-contrast like fibroglandular tissue (200), not like fat (400)
    assert 150 < result.phases[0][inside].mean() < 260
    appearance = draw_appearance(seed)
    late = relative_enhancement(result, inside, phase=2) / tumor_re - 1.0
    if appearance.kinetics == "washout":
        assert late < -0.1
    else:
        assert abs(late) < 0.1


def test_rim_enhancement_brighter_at_the_periphery():
    seed = next(s for s in range(100) if draw_appearance(s).rim)
    case, mask = make_case(), sphere_mask(radius_mm=7.0)
    result = HandcraftedSynthesizer()(case, mask, seed=seed)
    depth = ndimage.distance_transform_edt(mask, sampling=SPACING[::-1])
    subtraction = result.phases[1] - result.phases[0]
    rim, centre = (mask > 0) & (depth <= 2.0), depth >= 4.5
    assert subtraction[rim].mean() > 1.2 * subtraction[centre].mean()


def test_two_phase_case_and_mask_at_the_border():
    case = make_case(phases=2)
    mask = np.zeros(case.shape, np.uint8)
    mask[0:3, 20:26, 0:4] = 1  # touches the image border in z and x
    result = HandcraftedSynthesizer()(case, mask, seed=0)
    assert relative_enhancement(result, mask > 0) > 0.5


def test_refuses_bad_input():
    case, mask = make_case(), sphere_mask()
    synth = HandcraftedSynthesizer()
    with pytest.raises(SynBTError, match="empty"):
        synth(case, np.zeros_like(mask), seed=0)
    with pytest.raises(SynBTError, match="does not match"):
        synth(case, mask[:-1], seed=0)
    with pytest.raises(SynBTError, match="seed"):
        synth(case, mask, seed=-1)
    broken = case.phases.copy()
    broken[1, 0, 0, 0] = np.nan
    with pytest.raises(SynBTError, match="NaN"):
        synth(case.with_phases(broken), mask, seed=0)
