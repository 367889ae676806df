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
