"""Phase coherence around and inside a generated tumor: the blend zone keeps the original's late
change, the air-noise estimate, and the shared-pattern phase model (tiny real nets)."""
import numpy as np
import pytest

from SynBTLib.compositing import air_noise_sigma, keep_late_change, shared_post_phases
from SynBTLib.errors import SynBTError
from SynBTLib.pipeline import SynthesisPipeline

from test_pipeline import BLEND_MM, STEPS, distance_mm, make_case, pipeline, tumor  # noqa: F401 (fixture)


def rician(signal: np.ndarray, sigma: float, rng) -> np.ndarray:
    return np.hypot(signal + sigma * rng.standard_normal(signal.shape), sigma * rng.standard_normal(signal.shape))


def test_air_noise_sigma_measures_the_rician_noise_of_the_air_not_the_tissue_texture():
    rng = np.random.default_rng(0)
    shape = (24, 64, 64)
    body = np.zeros(shape, bool)
    body[:, 16:48, 12:52] = True
    texture = 300.0 + 120.0 * rng.standard_normal(shape)  # strong tissue texture: no effect on the estimate
    for sigma in (4.0, 12.0):
        phases = np.stack([rician(np.where(body, texture * f, 0.0), sigma, rng) for f in (1.0, 1.5, 1.3)])
        estimate = air_noise_sigma(phases.astype(np.float32))
        assert estimate.shape == (3,)
        assert np.allclose(estimate, sigma, rtol=0.1), (sigma, estimate)


def test_air_noise_sigma_is_zero_without_air_or_with_zeroed_air():
    rng = np.random.default_rng(1)
    tissue = (300.0 + 50.0 * rng.standard_normal((3, 8, 32, 32))).astype(np.float32)
    assert np.array_equal(air_noise_sigma(tissue), np.zeros(3))  # all body: nothing to measure
    tissue[:, :, :, :12] = 0.0  # a scanner that zeroes the background
    assert np.array_equal(air_noise_sigma(tissue), np.zeros(3))


def test_shared_post_phases_keep_each_phase_s_moments_and_agree_as_the_noise_allows():
    rng = np.random.default_rng(2)
    shape = (12, 24, 24)
    mask = np.zeros(shape, bool)
    mask[3:9, 6:18, 6:18] = True
    image = rng.standard_normal((3, *shape)).astype(np.float32)  # three unrelated phases
    image[1] = image[1] * 0.3 + 2.0
    image[2] = image[2] * 0.25 + 1.8
    for sigma, lowest, highest in ((0.0, 0.999, 1.0), (0.1, 0.7, 0.95)):
        out = shared_post_phases(image, mask, None, np.array([0.0, sigma, sigma]), seed=0)
        assert np.array_equal(out[0], image[0]) and np.array_equal(out[:, ~mask], image[:, ~mask])
        for k in (1, 2):
            assert out[k][mask].mean() == pytest.approx(image[k][mask].mean(), abs=0.02)
            assert out[k][mask].std() == pytest.approx(image[k][mask].std(), rel=0.05)
        agreement = np.corrcoef(out[1][mask], out[2][mask])[0, 1]
        assert lowest <= agreement <= highest, (sigma, agreement)
    assert np.array_equal(shared_post_phases(image, mask, None, np.zeros(3), seed=3),
                          shared_post_phases(image, mask, None, np.zeros(3), seed=3))


def test_keep_late_change_only_touches_later_phases_outside_the_mask():
    rng = np.random.default_rng(3)
    generated, original = rng.random((2, 4, 6, 8, 8)).astype(np.float32)
    mask = np.zeros((6, 8, 8), np.uint8)
    mask[2:4, 2:6, 2:6] = 1
    out = keep_late_change(generated, original, mask)
    assert np.array_equal(out[:2], generated[:2]) and np.array_equal(out[:, mask > 0], generated[:, mask > 0])
    outside = mask == 0
    for k in (2, 3):
        assert np.allclose((out[k] - out[1])[outside], (original[k] - original[1])[outside], atol=1e-6)


@pytest.mark.parametrize("phase_model", ["calibrated", "shared"])
def test_around_a_synthesized_tumor_the_late_change_is_the_original_s(pipeline, phase_model):
    case = make_case()
    mask = tumor(case.shape, (10, 18, 22))
    pipeline.phase_model = phase_model
    try:
        result = pipeline(case, mask, seed=4, steps=STEPS)
    finally:
        pipeline.phase_model = "calibrated"
    ring = (mask == 0) & (distance_mm(mask) < BLEND_MM)
    assert (result.phases[1][ring] != case.phases[1][ring]).any()  # the blend zone did change
    late_out = (result.phases[2] - result.phases[1])[mask == 0]
    late_in = (case.phases[2] - case.phases[1])[mask == 0]
    assert np.allclose(late_out, late_in, atol=1e-3 * float(np.abs(case.phases).max()))


def test_an_unknown_phase_model_or_grain_is_refused(pipeline):
    with pytest.raises(SynBTError, match="phase_model"):
        SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, 1.5, phase_model="own")
    with pytest.raises(SynBTError, match="noise_grain_vox"):
        SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, 1.5, noise_grain_vox=-1)
