"""SynthesisPipeline: ROI, compositing, determinism, progress/cancel and the RePaint sampler (tiny real nets)."""
import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt, gaussian_filter

from SynBTLib.case import Case, Geometry
from SynBTLib.boxes import crop_padded
from SynBTLib.errors import SynBTError
from SynBTLib.bundle import save_bundle
from SynBTLib.nets.autoencoder import AutoencoderConfig, PatchVolumeAutoencoder
from SynBTLib.nets.denoiser import DenoiserConfig, MaskConditionedDenoiser
from SynBTLib.nets.scheduler import SchedulerConfig, make_scheduler
from SynBTLib.pipeline import SynthesisPipeline, inpaint_latent
from SynBTLib.preprocess import denormalize, fit_normalization, normalize

from test_denoiser import randomize_zero_parameters

SPACING = (1.0, 1.0, 2.0)  # (x, y, z) mm: anisotropic, as in DCE-MRI
STEPS = 3
BLEND_MM = 3.0
MARGINS = dict(context_margin_mm=6.0, blend_mm=BLEND_MM)


@pytest.fixture(scope="module")
def pipeline():
    torch.manual_seed(0)
    denoiser = MaskConditionedDenoiser(DenoiserConfig(channels=(8, 16, 16), attention_levels=(False, False, True),
                                                      num_head_channels=8, norm_num_groups=4))
    autoencoder = PatchVolumeAutoencoder(AutoencoderConfig(channels=(8, 8, 8), norm_num_groups=1))
    return SynthesisPipeline(autoencoder, randomize_zero_parameters(denoiser), make_scheduler(SchedulerConfig()),
                             latent_scale=1.5, **MARGINS)


def make_case(shape=(20, 40, 40), seed=0) -> Case:
    rng = np.random.default_rng(seed)
    tissue = gaussian_filter(rng.random(shape), 2.0) * 400.0 + 100.0
    phases = np.stack([tissue, tissue * 1.4, tissue * 1.2]).astype(np.float32)
    return Case(phases, Geometry(size=shape[::-1], spacing=SPACING, origin=(0.0, 0.0, 0.0)))


def tumor(shape, center_zyx, radius_mm=3.5) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    spacing_zyx = SPACING[::-1]
    dist2 = sum(((grid[a] - center_zyx[a]) * spacing_zyx[a]) ** 2 for a in range(3))
    return (dist2 <= radius_mm**2).astype(np.uint8)


def distance_mm(mask):
    return distance_transform_edt(mask == 0, sampling=SPACING[::-1])


def test_roi_surrounds_the_mask_and_its_size_does_not_depend_on_the_fov(pipeline):
    small, big = make_case((20, 40, 40)), make_case((48, 120, 100))
    box_small = pipeline.region_of_interest(small, tumor(small.shape, (10, 20, 20)))
    box_big = pipeline.region_of_interest(big, tumor(big.shape, (10, 20, 20)))
    shape_small = [s.stop - s.start for s in box_small]
    assert shape_small == [s.stop - s.start for s in box_big] == [16, 32, 32]
    assert all(n % pipeline.roi_multiple == 0 for n in shape_small)
    # bounding box (z 9..11, y/x 17..23) plus the 6 mm context margin (3 slices, 6 voxels) fits inside
    assert box_small[0].start <= 9 - 3 and box_small[0].stop >= 12 + 3
    assert box_small[1].start <= 17 - 6 and box_small[1].stop >= 24 + 6


def test_only_the_blend_region_changes_and_inputs_are_untouched(pipeline):
    case = make_case()
    mask = tumor(case.shape, (10, 18, 22))
    phases_before, mask_before = case.phases.copy(), mask.copy()
    result = pipeline(case, mask, seed=0, steps=STEPS)

    assert result is not case and result.phases is not case.phases
    assert result.geometry == case.geometry and result.phase_names == case.phase_names
    assert np.array_equal(case.phases, phases_before) and np.array_equal(mask, mask_before)
    far = distance_mm(mask) >= BLEND_MM
    assert np.array_equal(result.phases[:, far], case.phases[:, far])  # bit-identical
    changed = (result.phases != case.phases).any(axis=0)
    assert changed[mask > 0].all()
    assert np.isfinite(result.phases).all() and result.phases.dtype == np.float32


def test_same_seed_is_identical_and_another_seed_differs_inside(pipeline):
    case = make_case(seed=1)
    mask = tumor(case.shape, (10, 20, 20))
    first = pipeline(case, mask, seed=7, steps=STEPS).phases
    again = pipeline(case, mask, seed=7, steps=STEPS).phases
    other = pipeline(case, mask, seed=8, steps=STEPS).phases
    assert np.array_equal(first, again)
    inside = mask > 0
    assert (first[:, inside] != other[:, inside]).mean() > 0.9
    far = distance_mm(mask) >= BLEND_MM
    assert np.array_equal(first[:, far], other[:, far])


def test_a_roi_larger_than_the_volume_is_padded_and_cropped_back(pipeline):
    case = make_case((6, 24, 40))  # 6 slices: the 16-slice ROI reaches outside the volume
    mask = tumor(case.shape, (3, 12, 20))
    box = pipeline.region_of_interest(case, mask)
    assert box[0].start < 0 and box[0].stop > 6
    result = pipeline(case, mask, seed=0, steps=2)
    assert result.phases.shape == case.phases.shape
    far = distance_mm(mask) >= BLEND_MM
    assert np.array_equal(result.phases[:, far], case.phases[:, far])
    assert (result.phases[:, mask > 0] != case.phases[:, mask > 0]).all()


def test_progress_is_reported_per_step_and_raising_cancels(pipeline):
    case = make_case()
    mask = tumor(case.shape, (10, 20, 20))
    calls = []
    pipeline(case, mask, seed=0, steps=STEPS, progress=lambda done, total, msg: calls.append((done, total)))
    assert calls == [(k, STEPS) for k in range(1, STEPS + 1)]

    class Cancelled(Exception):
        pass

    def cancel_on_second(done, total, message):
        if done == 2:
            raise Cancelled(message)

    before = case.phases.copy()
    with pytest.raises(Cancelled, match="denoising step 2/3"):
        pipeline(case, mask, seed=0, steps=STEPS, progress=cancel_on_second)
    assert np.array_equal(case.phases, before)


@pytest.mark.parametrize(
    "make_mask, message",
    [
        (lambda shape: np.zeros(shape, np.uint8), "empty"),
        (lambda shape: np.ones((shape[0], shape[1], shape[2] + 1), np.uint8), "resample the mask onto the case grid"),
        (lambda shape: np.where(tumor(shape, (10, 20, 20)) > 0, np.nan, 0.0), "NaN"),
        (lambda shape: np.full(shape, "a"), "numeric"),
    ],
)
def test_bad_masks_are_refused(pipeline, make_mask, message):
    case = make_case()
    with pytest.raises(SynBTError, match=message):
        pipeline(case, make_mask(case.shape), seed=0, steps=1)


def test_wrong_phase_count_bad_steps_and_bad_margins_are_refused(pipeline):
    case = make_case()
    mask = tumor(case.shape, (10, 20, 20))
    with pytest.raises(SynBTError, match="expects 3 phases"):
        pipeline(Case(case.phases[:2], case.geometry), mask, steps=1)
    with pytest.raises(SynBTError, match="steps must be between"):
        pipeline(case, mask, steps=0)
    with pytest.raises(SynBTError, match="blend_mm"):
        SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, 1.0,
                          context_margin_mm=2.0, blend_mm=4.0)


def _latents(pipeline, mask_latent):
    g = torch.Generator().manual_seed(5)
    known = torch.randn((1, 4, 4, 8, 8), generator=g)
    context = torch.randn((1, 4, 4, 8, 8), generator=g)
    return known, context, mask_latent


def test_sampler_keeps_the_known_latent_outside_the_mask(pipeline):
    with torch.no_grad():
        known, context, empty = _latents(pipeline, torch.zeros((1, 1, 4, 8, 8)))
        result = inpaint_latent(pipeline.denoiser, pipeline.scheduler, known, context, empty, 3,
                                torch.Generator().manual_seed(0))
        assert torch.equal(result, known)

        mask = torch.zeros((1, 1, 4, 8, 8))
        mask[..., 1:3, 2:6, 2:6] = 1
        result = inpaint_latent(pipeline.denoiser, pipeline.scheduler, known, context, mask, 3,
                                torch.Generator().manual_seed(0))
        inside = mask.expand_as(known) > 0
        assert torch.equal(result[~inside], known[~inside])
        assert (result[inside] != known[inside]).all()
        assert torch.isfinite(result).all()


def test_a_pipeline_from_a_saved_bundle_gives_the_same_tumor(pipeline, tmp_path):
    save_bundle(tmp_path / "bundle", pipeline.autoencoder, pipeline.denoiser, SchedulerConfig(),
                pipeline.latent_scale, meta={"phases": 3}, card_text="# tiny test bundle\n")
    loaded = SynthesisPipeline.from_bundle(tmp_path / "bundle", **MARGINS)
    case = make_case(seed=2)
    mask = tumor(case.shape, (10, 20, 20))
    expected = pipeline(case, mask, seed=3, steps=2).phases
    assert np.array_equal(loaded(case, mask, seed=3, steps=2).phases, expected)


def test_a_bundle_sets_the_default_guidance_scale(pipeline, tmp_path):
    save_bundle(tmp_path / "bundle", pipeline.autoencoder, pipeline.denoiser, SchedulerConfig(),
                pipeline.latent_scale, meta={"phases": 3, "guidance_scale": 2.5}, card_text="# tiny test bundle\n")
    assert SynthesisPipeline.from_bundle(tmp_path / "bundle").guidance_scale == 2.5
    assert SynthesisPipeline.from_bundle(tmp_path / "bundle", guidance_scale=1.0).guidance_scale == 1.0
    guided = SynthesisPipeline.from_bundle(tmp_path / "bundle", **MARGINS)
    plain = SynthesisPipeline.from_bundle(tmp_path / "bundle", guidance_scale=1.0, **MARGINS)
    case = make_case(seed=2)
    mask = tumor(case.shape, (10, 20, 20))
    assert not np.array_equal(guided(case, mask, seed=3, steps=2).phases, plain(case, mask, seed=3, steps=2).phases)
    with pytest.raises(SynBTError, match="guidance_scale"):
        SynthesisPipeline.from_bundle(tmp_path / "bundle", guidance_scale=0.5)


def test_a_bundle_sets_the_default_context_margin(pipeline, tmp_path):
    meta = {"phases": 3, "context_margin_mm": 4.0}
    save_bundle(tmp_path / "bundle", pipeline.autoencoder, pipeline.denoiser, SchedulerConfig(),
                pipeline.latent_scale, meta=meta, card_text="# tiny test bundle\n")
    case = make_case((20, 60, 60))
    mask = tumor(case.shape, (10, 30, 30))
    narrow = SynthesisPipeline.from_bundle(tmp_path / "bundle", blend_mm=2.0)
    wide = SynthesisPipeline.from_bundle(tmp_path / "bundle", blend_mm=2.0, context_margin_mm=12.0)
    assert narrow.context_margin_mm == 4.0 and wide.context_margin_mm == 12.0
    size = lambda p: [s.stop - s.start for s in p.region_of_interest(case, mask)]  # noqa: E731
    assert size(narrow)[1] < size(wide)[1]


def test_an_autoencoder_only_bundle_is_refused(pipeline, tmp_path):
    save_bundle(tmp_path / "ae", pipeline.autoencoder, None, None, 1.0, meta={}, card_text="# ae\n")
    with pytest.raises(SynBTError, match="no denoiser"):
        SynthesisPipeline.from_bundle(tmp_path / "ae")


def test_an_autoencoder_only_bundle_can_reconstruct_but_not_synthesize(pipeline, tmp_path):
    save_bundle(tmp_path / "ae", pipeline.autoencoder, None, None, 1.0, meta={}, card_text="# ae\n")
    checker = SynthesisPipeline.from_bundle(tmp_path / "ae", reconstruct_only=True, **MARGINS)
    assert checker.denoiser is None and checker.roi_multiple == pipeline.compression
    case = make_case(seed=4)
    mask = tumor(case.shape, (10, 20, 20))
    result = checker.reconstruct(case, mask, seed=0)
    far = distance_mm(mask) >= BLEND_MM
    assert np.array_equal(result.phases[:, far], case.phases[:, far])
    assert (result.phases[:, mask > 0] != case.phases[:, mask > 0]).all()
    with pytest.raises(SynBTError, match="can only reconstruct"):
        checker(case, mask, seed=0, steps=STEPS)


def test_the_sampler_generates_from_the_noised_known_latent_around_the_mask(pipeline):
    """RePaint: the known latent is fed in at every step, so it shapes what is generated inside the mask."""
    mask = torch.zeros((1, 1, 4, 8, 8))
    mask[..., 1:3, 3:5, 3:5] = 1
    with torch.no_grad():
        known, context, mask = _latents(pipeline, mask)
        results = [
            inpaint_latent(pipeline.denoiser, pipeline.scheduler, k, context, mask, 3, torch.Generator().manual_seed(0))
            for k in (known, torch.where(mask > 0, known, known + 2.0))
        ]
    inside = mask.expand_as(known) > 0
    assert not torch.allclose(results[0][inside], results[1][inside])


def test_classifier_free_guidance_changes_only_the_tumor(pipeline):
    guided = SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, pipeline.latent_scale,
                               guidance_scale=3.0, **MARGINS)
    case = make_case(seed=4)
    mask = tumor(case.shape, (10, 20, 20))
    plain, strong = pipeline(case, mask, seed=1, steps=2).phases, guided(case, mask, seed=1, steps=2).phases
    assert (plain[:, mask > 0] != strong[:, mask > 0]).mean() > 0.9
    far = distance_mm(mask) >= BLEND_MM
    assert np.array_equal(strong[:, far], case.phases[:, far])


def _coarse_setup(pipeline, working_spacing, shape, seed):
    """A pipeline on `working_spacing`, a case of `shape` with a 5 mm tumor at its centre, and its ROI box."""
    coarse = SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, latent_scale=1.5,
                               working_spacing=working_spacing, **MARGINS)
    case = make_case(shape, seed=seed)
    mask = tumor(case.shape, tuple(n // 2 for n in shape), radius_mm=5.0)
    return coarse, case, mask, coarse.region_of_interest(case, mask)


def test_a_case_at_another_resolution_runs_on_the_working_grid_and_returns_on_its_own(pipeline):
    coarse, case, mask, box = _coarse_setup(pipeline, (2.0, 2.0, 4.0), (24, 48, 48), seed=3)
    roi_shape = tuple(s.stop - s.start for s in box)
    work = coarse.working_shape(case.geometry, roi_shape)
    assert work is not None and all(w % coarse.roi_multiple == 0 for w in work)
    assert np.prod(work) < np.prod(roi_shape)  # half the resolution: a smaller problem
    assert pipeline.working_shape(case.geometry, roi_shape) is None  # no working spacing: native grid

    result = coarse(case, mask, seed=0, steps=STEPS)
    assert result.phases.shape == case.phases.shape
    far = distance_mm(mask) >= BLEND_MM
    assert np.array_equal(result.phases[:, far], case.phases[:, far])
    assert (result.phases != case.phases).any(axis=0)[mask > 0].all()
    again = coarse(case, mask, seed=0, steps=STEPS)
    assert np.array_equal(result.phases, again.phases)
    # a latent cell (what the image calibration's texture map works on), in the case's voxels per (z, y, x) axis
    c = coarse.compression
    assert pipeline.latent_cell_voxels(case.geometry) == (c, c, c)
    spacing_zyx = np.asarray(case.geometry.spacing[::-1])
    expected = tuple(max(1, round(c * w / s)) for w, s in zip((4.0, 2.0, 2.0), spacing_zyx))
    assert coarse.latent_cell_voxels(case.geometry) == expected and expected != (c, c, c)


def test_detail_noise_matches_the_acquisition_noise_not_the_texture():
    from SynBTLib.compositing import detail_noise

    rng = np.random.default_rng(0)
    texture = gaussian_filter(rng.random((2, 24, 40, 40)), (0, 3, 3, 3)) * 10.0  # tissue std 0.1, varying slower than the noise
    image = (texture + rng.normal(0.0, [0.02, 0.05], (24, 40, 40, 2)).transpose(3, 0, 1, 2)).astype(np.float32)
    mask = np.zeros((24, 40, 40), np.uint8)
    mask[8:16, 15:25, 15:25] = 1
    noise = detail_noise(image, mask, seed=3)
    assert noise.shape == image.shape
    assert abs(noise[0].std() - 0.02) < 0.006 and abs(noise[1].std() - 0.05) < 0.012
    assert np.array_equal(noise, detail_noise(image, mask, seed=3))


def test_a_resampled_region_keeps_the_true_spacing_ratio_on_every_axis(pipeline):
    coarse, case, mask, box = _coarse_setup(pipeline, (1.43, 1.43, 2.9), (40, 80, 80), seed=5)
    native = np.array([s.stop - s.start for s in box])
    work = np.array(coarse.working_shape(case.geometry, native))
    ratio = np.array(SPACING[::-1]) / np.array((2.9, 1.43, 1.43))
    # the working grid covers the same millimetres as the native box, within half a native voxel per axis
    assert np.all(np.abs(native * ratio - work) <= ratio / 2 + 1e-9)
    assert all(w % coarse.roi_multiple == 0 for w in work)


def test_reconstruct_puts_the_autoencoder_reconstruction_in_the_region_and_nothing_else(pipeline):
    quiet = SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, latent_scale=1.5,
                              restore_noise=False, **MARGINS)
    case = make_case(seed=2)
    mask = tumor(case.shape, (10, 20, 18))
    result = quiet.reconstruct(case, mask, seed=0)

    far = distance_mm(mask) >= BLEND_MM
    assert np.array_equal(result.phases[:, far], case.phases[:, far])
    norm, box = fit_normalization(case), quiet.region_of_interest(case, mask)
    roi = torch.from_numpy(normalize(crop_padded(case.phases, box, mode="edge"), norm))[None]
    expected = denormalize(pipeline.autoencoder.decode_volume(pipeline.autoencoder.encode_volume(roi))[0].numpy(), norm)
    inside = crop_padded(mask, box, mode="constant") > 0
    np.testing.assert_allclose(crop_padded(result.phases, box, mode="edge")[:, inside], expected[:, inside],
                               rtol=1e-4, atol=1e-3)
    # no denoising: a synthesis in the same mask is something else
    assert not np.allclose(quiet(case, mask, seed=0, steps=STEPS).phases[:, mask > 0], result.phases[:, mask > 0])


def test_detail_noise_adds_only_the_noise_the_decoder_left_out():
    from SynBTLib.compositing import detail_noise, noise_level

    rng = np.random.default_rng(1)
    texture = gaussian_filter(rng.random((2, 24, 40, 40)), (0, 3, 3, 3)) * 10.0
    image = (texture + rng.normal(0.0, 0.04, (2, 24, 40, 40))).astype(np.float32)
    mask = np.zeros((24, 40, 40), np.uint8)
    half = (texture + rng.normal(0.0, 0.04 * 0.6, texture.shape)).astype(np.float32)  # keeps 60 % of the level
    added = detail_noise(image, mask, seed=0, decoded=half)
    assert np.allclose(added.std(axis=(1, 2, 3)), 0.04 * 0.8, rtol=0.1)  # sqrt(1 - 0.6^2) = 0.8
    assert np.allclose(noise_level(half + added, mask), noise_level(image, mask), rtol=0.1)
    assert not detail_noise(image, mask, seed=0, decoded=image).any()  # a perfect decoder needs none


class InputRecorder(torch.nn.Module):
    """The real denoiser, keeping the context latents and mask conditions it was given."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser, self.config, self.contexts, self.conditions = denoiser, denoiser.config, [], []

    def forward(self, noisy, context, mask, timesteps):
        self.contexts.append(context.clone())
        self.conditions.append(mask.clone())
        return self.denoiser(noisy, context, mask, timesteps)


def test_a_bundle_sets_the_mask_dilation_and_the_context_then_hides_the_tumor_rim(pipeline, tmp_path):
    save_bundle(tmp_path / "bundle", pipeline.autoencoder, pipeline.denoiser, SchedulerConfig(),
                pipeline.latent_scale, meta={"phases": 3, "mask_dilation_cells": 1}, card_text="# tiny\n")
    grown = SynthesisPipeline.from_bundle(tmp_path / "bundle", **MARGINS)
    assert grown.mask_dilation_cells == 1 and pipeline.mask_dilation_cells == 0
    case = make_case(seed=5)
    mask = tumor(case.shape, (10, 18, 22))
    rim = (distance_mm(mask) > 0) & (distance_mm(mask) <= 1.0)
    shuffled = case.phases.copy()  # the rim's values permuted: same normalization, another rim
    shuffled[:, rim] = shuffled[:, rim][:, np.random.default_rng(0).permutation(int(rim.sum()))]
    other = case.with_phases(shuffled)

    def contexts(dilation):
        recorder = InputRecorder(pipeline.denoiser)
        run = SynthesisPipeline(pipeline.autoencoder, recorder, pipeline.scheduler, pipeline.latent_scale,
                                mask_dilation_cells=dilation, **MARGINS)
        result = run(case, mask, seed=1, steps=STEPS)
        run(other, mask, seed=1, steps=STEPS)
        far = distance_mm(mask) >= BLEND_MM
        assert np.array_equal(result.phases[:, far], case.phases[:, far])
        return recorder.contexts[0], recorder.contexts[STEPS]

    # the rim is erased from the context with the tumor; what is left is the normalization's
    # percentiles moving by ~0.05 % of the range (the permuted rim is sampled in another order)
    change = {d: (lambda a, b: (a - b).abs().max().item())(*contexts(d)) for d in (0, 1)}
    assert change[1] < 0.2 * change[0]  # measured 0.08 with this tiny random autoencoder
    with pytest.raises(SynBTError, match="mask_dilation_cells"):
        SynthesisPipeline.from_bundle(tmp_path / "bundle", mask_dilation_cells=-1)


def test_a_denoiser_with_outline_channels_sees_the_tumor_to_the_voxel(pipeline, tmp_path):
    compression = pipeline.compression
    torch.manual_seed(3)
    config = DenoiserConfig(channels=(8, 16, 16), attention_levels=(False, False, True), num_head_channels=8,
                            norm_num_groups=4, mask_channels=1 + compression**3)
    denoiser = randomize_zero_parameters(MaskConditionedDenoiser(config)).eval()
    save_bundle(tmp_path / "bundle", pipeline.autoencoder, denoiser, SchedulerConfig(), pipeline.latent_scale,
                meta={"phases": 3, "mask_encoding": "voxels"}, card_text="# tiny\n")
    outlined = SynthesisPipeline.from_bundle(tmp_path / "bundle", **MARGINS)
    assert outlined.mask_encoding == "voxels" and pipeline.mask_encoding == "cells"

    case = make_case(seed=2)
    mask = tumor(case.shape, (10, 18, 22))
    recorder = InputRecorder(denoiser)
    run = SynthesisPipeline(pipeline.autoencoder, recorder, pipeline.scheduler, pipeline.latent_scale, **MARGINS)
    result = run(case, mask, seed=0, steps=STEPS)
    condition = recorder.conditions[0]
    assert condition.shape[1] == 1 + compression**3 and condition[:, 1:].sum() == mask.sum()
    assert torch.equal((condition[:, 1:].sum(1) > 0), condition[:, 0] > 0)  # no dilation: the region is the tumor's cells
    far = distance_mm(mask) >= BLEND_MM
    assert np.array_equal(result.phases[:, far], case.phases[:, far])
    assert np.array_equal(result.phases, outlined(case, mask, seed=0, steps=STEPS).phases)  # the bundle runs the same

    wrong = MaskConditionedDenoiser(DenoiserConfig(channels=(8, 16, 16), attention_levels=(False, False, True),
                                                   num_head_channels=8, norm_num_groups=4, mask_channels=5))
    with pytest.raises(SynBTError, match="mask channels"):
        SynthesisPipeline(pipeline.autoencoder, wrong, pipeline.scheduler, pipeline.latent_scale, **MARGINS)


def test_a_denoiser_without_kinetic_classes_refuses_a_curve_type(pipeline):
    case = make_case()
    mask = tumor(case.shape, (10, 18, 22))
    assert pipeline.kinetic_choices == () and pipeline.choose_kinetics(None, 0) is None
    assert np.array_equal(pipeline(case, mask, seed=0, steps=STEPS, kinetics="any").phases,
                          pipeline(case, mask, seed=0, steps=STEPS).phases)
    with pytest.raises(SynBTError, match="takes no kinetic curve type"):
        pipeline(case, mask, seed=0, steps=STEPS, kinetics="washout")
