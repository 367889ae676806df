"""Per-channel latent standardization: exact inverse, fitted statistics, bundle round trip."""
import numpy as np
import pytest
import torch

from SynBTLib import SynBTError
from SynBTLib.nets.latent_norm import ChannelStandardizer


def test_fit_gives_zero_mean_unit_std_per_channel_and_restore_inverts():
    rng = np.random.default_rng(0)
    offsets, spreads = np.array([1.9, -1.0, 0.0]), np.array([0.3, 1.6, 1.0])
    latents = [(rng.standard_normal((3, 4, 5, 6)) * spreads[:, None, None, None] + offsets[:, None, None, None])
               .astype(np.float32) for _ in range(3)]
    norm = ChannelStandardizer.fit(latents)
    standardized = np.concatenate([norm.standardize(x, channel_axis=0).reshape(3, -1) for x in latents], axis=1)
    np.testing.assert_allclose(standardized.mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardized.std(1), 1.0, atol=1e-4)
    batch = torch.from_numpy(np.stack(latents))  # (B, C, ...) torch, channel axis 1
    np.testing.assert_allclose(norm.restore(norm.standardize(batch)).numpy(), batch.numpy(), atol=1e-5)
    assert torch.allclose(norm.standardize(batch)[1], torch.from_numpy(norm.standardize(latents[1], channel_axis=0)))


def test_identity_without_statistics_and_config_checks():
    x = torch.randn(1, 2, 3, 3, 3)
    assert ChannelStandardizer().standardize(x) is x and ChannelStandardizer.from_config({}, 2) == ChannelStandardizer()
    good = {"latent_shift": [0.5, -1.0], "latent_channel_scale": [2.0, 0.5]}
    assert ChannelStandardizer.from_config(good, 2).to_config() == good
    for bad, message in (
        ({"latent_shift": [0.0, 0.0]}, "both"),
        ({**good, "latent_shift": [0.0]}, "one value per latent channel"),
        ({**good, "latent_channel_scale": [1.0, 0.0]}, "positive"),
        ({**good, "latent_shift": [float("nan"), 0.0]}, "finite"),
    ):
        with pytest.raises(SynBTError, match=message):
            ChannelStandardizer.from_config(bad, 2)
    with pytest.raises(SynBTError, match="constant"):
        ChannelStandardizer.fit([np.ones((2, 3, 3, 3), np.float32)])


def test_rotation_is_applied_before_the_statistics_and_inverted_exactly():
    rng = np.random.default_rng(1)
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    latents = [rng.standard_normal((3, 4, 5, 6)).astype(np.float32) * 2 + 1 for _ in range(2)]
    norm = ChannelStandardizer.fit(latents, rotation=rotation)
    rotated = np.einsum("ij,j...->i...", rotation, latents[0])
    np.testing.assert_allclose(norm.standardize(latents[0], channel_axis=0),
                               (rotated - np.asarray(norm.shift)[:, None, None, None]) * np.asarray(norm.scale)[:, None, None, None],
                               rtol=1e-4, atol=1e-4)
    batch = torch.from_numpy(np.stack(latents))
    np.testing.assert_allclose(norm.restore(norm.standardize(batch)).numpy(), batch.numpy(), atol=1e-4)
    assert ChannelStandardizer.from_config(norm.to_config(), 3) == norm
    with pytest.raises(SynBTError, match="orthogonal"):
        ChannelStandardizer.from_config({**norm.to_config(), "latent_rotation": (2 * rotation).tolist()}, 3)
    with pytest.raises(SynBTError, match="3 x 3"):
        ChannelStandardizer.fit(latents, rotation=np.eye(2))


def test_phase_separating_rotation_keeps_enhancement_channels_out_of_the_first_phase():
    from SynBTLib.nets.latent_norm import phase_separating_rotation

    rng = np.random.default_rng(2)
    weight = rng.standard_normal((6, 3, 1, 1, 1))  # 6 latent channels, 3 phases, one voxel per cell
    rotation = phase_separating_rotation(weight)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(6), atol=1e-10)
    effect = np.abs(weight[:, :, 0, 0, 0].T @ rotation.T)  # (phase, new channel): what each new channel changes
    assert effect[0, 0] > 0.1 and np.allclose(effect[0, 1:], 0, atol=1e-10)  # one voxel: one pre-contrast channel
    assert effect[1, 1] > 0.1 and np.allclose(effect[1, 2:], 0, atol=1e-10)  # then one that starts at phase 1
    assert np.allclose(effect[:2, 2:], 0, atol=1e-10)  # the other four change only the last phase
