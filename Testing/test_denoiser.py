"""Mask-conditioned denoiser, DDIM scheduler and inpainting conditions (real MONAI networks, tiny sizes)."""
import json

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from SynBTLib.boxes import box_overlap, crop_padded, roi_box
from SynBTLib.conditioning import erase_mask, mask_to_latent
from SynBTLib.errors import SynBTError
from SynBTLib.nets.denoiser import (
    DenoiserConfig,
    MaskConditionedDenoiser,
    drop_condition,
    guided_noise,
    null_condition,
)
from SynBTLib.nets.scheduler import SchedulerConfig, check_inference_steps, make_scheduler, training_target

TINY = DenoiserConfig(latent_channels=4, channels=(8, 16, 16), attention_levels=(False, False, True),
                      num_head_channels=8, norm_num_groups=4)


def randomize_zero_parameters(module: torch.nn.Module) -> torch.nn.Module:
    """MONAI zero-initialises the UNet's output convs (the untrained prediction is 0): give them weights."""
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.normal_(std=0.1)
    return module


@pytest.fixture(scope="module")
def denoiser():
    torch.manual_seed(0)
    return randomize_zero_parameters(MaskConditionedDenoiser(TINY)).eval()


def _latents(seed=0, shape=(2, 4, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(shape, generator=g)
    context = torch.randn(shape, generator=g)
    mask = (torch.rand((shape[0], 1, *shape[2:]), generator=g) > 0.7).float()
    return noisy, context, mask


# --- configs -----------------------------------------------------------------------------------------

def test_denoiser_config_round_trips_through_json():
    restored = DenoiserConfig.from_dict(json.loads(json.dumps(TINY.to_dict())))
    assert restored == TINY
    assert restored.in_channels == 9 and restored.downsampling == 4


def test_configs_refuse_unknown_keys_and_bad_values():
    with pytest.raises(SynBTError, match="width"):
        DenoiserConfig.from_dict({**TINY.to_dict(), "width": 3})
    with pytest.raises(SynBTError, match="norm_num_groups"):
        DenoiserConfig(channels=(8, 12, 16), norm_num_groups=8)
    with pytest.raises(SynBTError, match="sigma"):
        SchedulerConfig.from_dict({"kind": "ddim", "sigma": 1})
    with pytest.raises(SynBTError, match="unknown scheduler kind"):
        SchedulerConfig(kind="euler")
    with pytest.raises(SynBTError, match="prediction_type"):
        SchedulerConfig(prediction_type="sample")


# --- denoiser ----------------------------------------------------------------------------------------

def test_denoiser_predicts_noise_of_the_latent_shape(denoiser):
    noisy, context, mask = _latents()
    with torch.no_grad():
        by_int = denoiser(noisy, context, mask, 500)
        by_tensor = denoiser(noisy, context, mask, torch.tensor([500, 500]))
    assert by_int.shape == noisy.shape
    assert torch.equal(by_int, by_tensor)


def test_denoiser_output_depends_on_context_mask_and_timestep(denoiser):
    noisy, context, mask = _latents()
    with torch.no_grad():
        base = denoiser(noisy, context, mask, 500)
        assert not torch.allclose(base, denoiser(noisy, context + 1.0, mask, 500))
        assert not torch.allclose(base, denoiser(noisy, context, 1.0 - mask, 500))
        assert not torch.allclose(base, denoiser(noisy, context, mask, 10))


def test_denoiser_refuses_mismatched_inputs(denoiser):
    noisy, context, mask = _latents()
    with pytest.raises(SynBTError, match="context latent"):
        denoiser(noisy, context[:, :3], mask, 1)
    with pytest.raises(SynBTError, match="mask condition"):
        denoiser(noisy, context, mask[:, :, :2], 1)
    noisy, context, mask = _latents(shape=(1, 4, 6, 8, 8))
    with pytest.raises(SynBTError, match="multiple of 4"):
        denoiser(noisy, context, mask, 1)


def test_condition_dropout_is_seeded_and_uses_the_null_condition():
    _, context, mask = _latents(shape=(64, 4, 2, 2, 2))
    null_context, null_mask = null_condition(context, mask)
    assert not null_context.any() and not null_mask.any()
    assert drop_condition(context, mask, 0.0)[0] is context
    dropped_all = drop_condition(context, mask, 1.0, torch.Generator().manual_seed(1))
    assert not dropped_all[0].any() and not dropped_all[1].any()
    first = drop_condition(context, mask, 0.5, torch.Generator().manual_seed(3))
    again = drop_condition(context, mask, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    dropped = (first[0].flatten(1) == 0).all(dim=1)
    assert 0 < int(dropped.sum()) < 64  # some samples dropped, others kept intact
    assert torch.equal(first[0][~dropped], context[~dropped])


def test_guidance_scale_interpolates_between_unconditional_and_conditional(denoiser):
    noisy, context, mask = _latents()
    with torch.no_grad():
        conditional = denoiser(noisy, context, mask, 300)
        unconditional = denoiser(noisy, *null_condition(context, mask), 300)
        assert torch.equal(guided_noise(denoiser, noisy, context, mask, 300, 1.0), conditional)
        assert torch.allclose(guided_noise(denoiser, noisy, context, mask, 300, 0.0), unconditional, atol=1e-6)
        expected = unconditional + 3.0 * (conditional - unconditional)
        assert torch.allclose(guided_noise(denoiser, noisy, context, mask, 300, 3.0), expected, atol=1e-5)


# --- scheduler ---------------------------------------------------------------------------------------

def test_scheduler_is_monai_ddim_with_ddpm_style_noising():
    config = SchedulerConfig.from_dict(json.loads(json.dumps(SchedulerConfig().to_dict())))
    scheduler = make_scheduler(config)
    assert isinstance(scheduler, DDIMScheduler) and not scheduler.clip_sample
    clean, noise = torch.full((1, 4, 2, 2, 2), 2.0), torch.full((1, 4, 2, 2, 2), -1.0)
    t = torch.tensor([700])
    a = scheduler.alphas_cumprod[700]
    assert torch.allclose(scheduler.add_noise(clean, noise, t), a.sqrt() * clean + (1 - a).sqrt() * noise)
    scheduler.set_timesteps(30)
    assert len(scheduler.timesteps) == 30 and scheduler.timesteps[0] > scheduler.timesteps[-1] == 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_target_is_what_the_sampler_inverts(prediction_type):
    """A denoiser that outputs the exact training target lets a DDIM step recover the clean latent."""
    config = SchedulerConfig.from_dict(json.loads(json.dumps(SchedulerConfig(prediction_type=prediction_type).to_dict())))
    scheduler = make_scheduler(config)
    assert scheduler.prediction_type == prediction_type
    generator = torch.Generator().manual_seed(0)
    clean = 3.0 * torch.randn(2, 4, 2, 2, 2, generator=generator) + 1.0
    noise = torch.randn(clean.shape, generator=generator)
    scheduler.set_timesteps(30)
    for t in (int(scheduler.timesteps[0]), int(scheduler.timesteps[15])):
        timesteps = torch.tensor([t, t])
        noisy = scheduler.add_noise(clean, noise, timesteps)
        target = training_target(scheduler, clean, noise, timesteps)
        _, predicted_clean = scheduler.step(target, t, noisy)
        assert torch.allclose(predicted_clean, clean, atol=1e-4)
    if prediction_type == "epsilon":
        assert torch.equal(target, noise)
    else:  # v = sqrt(abar) noise - sqrt(1 - abar) clean: mostly the clean latent (negated) at high noise
        a = scheduler.alphas_cumprod[t]
        assert torch.allclose(target, a.sqrt() * noise - (1 - a).sqrt() * clean, atol=1e-6)


def test_step_count_is_checked():
    scheduler = make_scheduler(SchedulerConfig(num_train_timesteps=100))
    assert check_inference_steps(scheduler, 30) == 30
    for bad in (0, 101):
        with pytest.raises(SynBTError, match="steps must be between 1 and 100"):
            check_inference_steps(scheduler, bad)


# --- conditioning ------------------------------------------------------------------------------------

def test_erase_mask_zeroes_only_the_mask_for_numpy_and_torch():
    image = np.random.default_rng(0).random((3, 4, 5, 6)).astype(np.float32) + 1.0
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 2:4, 1:5] = 1
    erased = erase_mask(image, mask)
    assert erased.dtype == np.float32 and not erased[:, mask > 0].any()
    assert np.array_equal(erased[:, mask == 0], image[:, mask == 0])
    erased_t = erase_mask(torch.from_numpy(image)[None], torch.from_numpy(mask)[None, None])
    assert torch.equal(erased_t[0], torch.from_numpy(erased))
    assert image.min() >= 1.0  # input untouched


def test_mask_to_latent_marks_every_cell_holding_a_tumor_voxel():
    mask = torch.zeros((1, 1, 16, 16, 10))
    mask[0, 0, 5, 9, 9] = 1  # one voxel, in the last (partial) cell along x
    latent = mask_to_latent(mask, 4)
    assert latent.shape == (1, 1, 4, 4, 3)
    assert latent.sum() == 1 and latent[0, 0, 1, 2, 2] == 1
    with pytest.raises(SynBTError, match=r"\(B, 1, Z, Y, X\)"):
        mask_to_latent(mask[0], 4)


def _ball(shape, center, radius):
    z, y, x = np.indices(shape)
    return (((z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2) <= radius**2).astype(np.uint8)


def test_generation_region_grows_the_latent_mask_and_erases_whole_cells():
    from SynBTLib.conditioning import dilate_latent_mask, generation_region

    mask = torch.zeros(1, 1, 8, 12, 12)
    mask[0, 0, 3, 5, 6] = 1  # one voxel: latent cell (1, 2, 3) at compression 2
    latent, erased = generation_region(mask, 2, 0)
    assert torch.equal(latent, mask_to_latent(mask, 2)) and torch.equal(erased, mask)  # older bundles
    latent, erased = generation_region(mask, 2, 1)
    assert latent.shape == (1, 1, 4, 6, 6) and latent.sum() == 27 and latent[0, 0, 0:3, 1:4, 2:5].all()
    assert erased.shape == mask.shape and erased.sum() == 27 * 8  # every voxel of the 27 cells
    assert erased[0, 0, 0:6, 2:8, 4:10].all()
    edge = torch.zeros(1, 1, 2, 2, 2)
    edge[0, 0, 0, 0, 0] = 1
    assert dilate_latent_mask(edge, 1).sum() == 8  # clipped at the border, not wrapped
    with pytest.raises(SynBTError, match="0 or more"):
        dilate_latent_mask(edge, -1)


def test_voxel_outline_channels_hold_every_voxel_of_every_cell():
    from SynBTLib.conditioning import voxel_outline_channels

    rng = np.random.default_rng(4)
    mask = torch.from_numpy((rng.random((2, 1, 7, 8, 10)) > 0.6).astype(np.float32))
    channels = voxel_outline_channels(mask, 2)
    assert channels.shape == (2, 8, 4, 4, 5)  # z padded 7 -> 8 with zeros
    for z, y, x in ((0, 0, 0), (3, 1, 4), (6, 7, 9)):  # voxel -> (channel, cell)
        channel = (z % 2) * 4 + (y % 2) * 2 + x % 2
        assert channels[:, channel, z // 2, y // 2, x // 2].tolist() == mask[:, 0, z, y, x].tolist()
    assert channels.sum() == mask.sum()
    assert torch.equal((channels.sum(1, keepdim=True) > 0).float(), mask_to_latent(mask, 2))


def test_denoiser_condition_adds_the_outline_to_the_generated_region():
    from SynBTLib.conditioning import denoiser_condition, generation_region, mask_condition_channels

    mask = torch.zeros(1, 1, 8, 12, 12)
    mask[0, 0, 2:4, 4:7, 4:6] = 1  # x 4..5: latent cell 2
    for dilation in (0, 1):
        region, erased = generation_region(mask, 2, dilation)
        cells, cells_erased = denoiser_condition(mask, 2, dilation, "cells")
        voxels, voxels_erased = denoiser_condition(mask, 2, dilation, "voxels")
        assert torch.equal(cells, region) and torch.equal(voxels[:, :1], region)
        assert torch.equal(cells_erased, erased) and torch.equal(voxels_erased, erased)
        assert voxels.shape[1] == mask_condition_channels("voxels", 2) == 9 and voxels[:, 1:].sum() == mask.sum()
    thinner = mask.clone()
    thinner[..., 5] = 0  # x 4..5 -> 4: the same latent cells, another outline
    assert torch.equal(denoiser_condition(thinner, 2, 1, "cells")[0], denoiser_condition(mask, 2, 1, "cells")[0])
    assert not torch.equal(denoiser_condition(thinner, 2, 1, "voxels")[0], denoiser_condition(mask, 2, 1, "voxels")[0])
    with pytest.raises(SynBTError, match="mask_encoding"):
        denoiser_condition(mask, 2, 0, "outline")


def test_denoiser_with_an_outline_condition_reads_every_mask_channel():
    torch.manual_seed(0)
    config = DenoiserConfig(**{**TINY.to_dict(), "mask_channels": 9})
    assert config.in_channels == 2 * 4 + 9 and DenoiserConfig.from_dict(config.to_dict()) == config
    assert "mask_channels" not in TINY.to_dict() and "kinetic_classes" not in TINY.to_dict()  # older readers
    net = randomize_zero_parameters(MaskConditionedDenoiser(config)).eval()
    noisy, context, _ = _latents()
    condition = (torch.rand((2, 9, 4, 8, 8), generator=torch.Generator().manual_seed(2)) > 0.5).float()
    other = condition.clone()
    other[:, 5] = 1 - other[:, 5]
    with torch.no_grad():
        assert not torch.allclose(net(noisy, context, condition, 10), net(noisy, context, other, 10))
        with pytest.raises(SynBTError, match=r"mask condition must be \(B, 9"):
            net(noisy, context, condition[:, :1], 10)
    with pytest.raises(SynBTError, match="mask_channels"):
        DenoiserConfig(mask_channels=0)


def test_a_kinetic_denoiser_reads_the_curve_type_and_others_refuse_one():
    from SynBTLib.nets.denoiser import KINETIC_CLASSES, drop_kinetics

    torch.manual_seed(0)
    net = randomize_zero_parameters(MaskConditionedDenoiser(DenoiserConfig(**{**TINY.to_dict(), "kinetic_classes": True}))).eval()
    noisy, context, mask = _latents()
    with torch.no_grad():
        outputs = [net(noisy, context, mask, 10, kinetics=k) for k in range(len(KINETIC_CLASSES))]
        assert all(not torch.allclose(outputs[0], other) for other in outputs[1:])
        assert torch.equal(net(noisy, context, mask, 10), outputs[0])  # None = unspecified
        assert torch.equal(net(noisy, context, mask, 10, kinetics=torch.tensor([3, 3])), outputs[3])
        with pytest.raises(SynBTError, match="kinetic class labels"):
            net(noisy, context, mask, 10, kinetics=4)
    plain = MaskConditionedDenoiser(TINY).eval()
    with torch.no_grad(), pytest.raises(SynBTError, match="without kinetic"):
        plain(noisy, context, mask, 10, kinetics=2)
    labels = torch.tensor([1, 2, 3, 1] * 16)
    dropped = drop_kinetics(labels, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(dropped, drop_kinetics(labels, 0.5, torch.Generator().manual_seed(0)))
    assert 10 < int((dropped == 0).sum()) < 54 and torch.equal(dropped[dropped > 0], labels[dropped > 0])
    assert drop_kinetics(labels, 0.0) is labels


def test_roi_box_surrounds_the_mask_and_its_size_ignores_the_fov():
    small = _ball((40, 50, 60), (20, 25, 30), 4)
    big = _ball((80, 200, 300), (20, 25, 30), 4)
    box_small, box_big = roi_box(small, (3, 5, 5), 8), roi_box(big, (3, 5, 5), 8)
    sizes = [s.stop - s.start for s in box_small]
    assert sizes == [s.stop - s.start for s in box_big] == [16, 24, 24]
    for sl, low, high, margin in zip(box_small, (16, 21, 26), (25, 30, 35), (3, 5, 5)):
        assert sl.start <= low - margin and sl.stop >= high + margin


def test_roi_box_is_shifted_inside_or_padded_when_the_volume_is_small():
    at_edge = _ball((40, 40, 40), (1, 20, 38), 2)
    box = roi_box(at_edge, 4, 16)
    assert all(0 <= s.start and s.stop <= 40 for s in box)
    assert at_edge[box].sum() == at_edge.sum()

    thin = _ball((6, 40, 40), (3, 20, 20), 2)
    box = roi_box(thin, 4, 16)
    assert box[0] == slice(-5, 11)  # 16 slices centred on a 6-slice volume
    volume = np.arange(6 * 40 * 40, dtype=np.float32).reshape(1, 6, 40, 40)
    crop = crop_padded(volume, box, mode="edge")
    assert crop.shape == (1, 16, 16, 16)
    vol_sl, loc_sl = box_overlap(box, volume.shape)
    assert np.array_equal(crop[(slice(None), *loc_sl)], volume[(slice(None), *vol_sl)])
    assert np.array_equal(crop[0, 0], volume[0, 0][box[1:]])  # edge padding repeats the first slice
    assert not crop_padded(thin, box, mode="constant")[:5].any()


def test_roi_box_refuses_an_empty_mask():
    with pytest.raises(SynBTError, match="empty"):
        roi_box(np.zeros((8, 8, 8), np.uint8), 2, 4)
