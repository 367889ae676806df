"""The patch-to-volume autoencoder: locality, exact tiling, shapes, losses and input errors."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from SynBTLib.errors import SynBTError
from SynBTLib.nets.autoencoder import (
    AutoencoderConfig,
    PatchVolumeAutoencoder,
    VoxelGroupNorm,
    ChannelAffine,
    consistency_loss,
    kl_loss,
    receptive_halos,
)
from SynBTLib.nets.tiling import plan_tiles

TINY = dict(channels=(8, 16, 16))


def make_model(seed=0, **config):
    torch.manual_seed(seed)
    return PatchVolumeAutoencoder(AutoencoderConfig(**{**TINY, **config})).eval()


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    peak = float(reference.max() - reference.min())
    mse = float(F.mse_loss(test, reference))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def pad_to_cells(x, f):
    pad = [v for n in reversed(x.shape[2:]) for v in (0, -n % f)]
    return F.pad(x, pad, mode="replicate")


@pytest.fixture(scope="module")
def model():
    return make_model()


def test_network_is_local_with_the_same_parameter_names(model):
    modules = list(model.net.modules())
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in modules)
    assert any(isinstance(m, ChannelAffine) for m in modules)  # the default norm
    voxel = PatchVolumeAutoencoder(AutoencoderConfig(channels=(8, 16, 16), norm="voxel"))
    assert any(isinstance(m, VoxelGroupNorm) for m in voxel.net.modules())
    assert not any("attn" in type(m).__name__.lower() for m in modules)
    assert "net.encoder.blocks.1.norm1.weight" in model.state_dict()


def test_voxel_group_norm_normalizes_each_voxel_over_its_group():
    norm = VoxelGroupNorm(num_groups=2, num_channels=8)
    x = torch.randn(2, 8, 3, 4, 5) * 5 + 3
    y = norm(x).reshape(2, 2, 4, 3, 4, 5)
    assert torch.allclose(y.mean(dim=2), torch.zeros(()), atol=1e-5)
    assert torch.allclose(y.var(dim=2, correction=0), torch.ones(()), atol=1e-3)
    assert torch.equal(norm(x[..., :2, :2, :2]), norm(x)[..., :2, :2, :2])


def _support(grad: torch.Tensor, axis: int) -> tuple[int, int]:
    other = tuple(d for d in range(grad.ndim) if d != axis)
    nonzero = torch.nonzero(grad.abs().sum(dim=other)).flatten()
    return int(nonzero.min()), int(nonzero.max())


@pytest.mark.parametrize("config", [dict(channels=(4, 8, 8)), dict(channels=(4, 8, 8), num_res_blocks=(1, 2, 0))])
def test_halos_cover_the_measured_receptive_field_tightly(config):
    """Gradient of one output cell w.r.t. the input: its support along X gives the true halo."""
    m = make_model(**config)
    f = m.compression
    x = torch.randn(1, 3, 4, 4, 96, requires_grad=True)
    mu, _ = m.encode(x)
    mu[0, :, 0, 0, 12].sum().backward()
    lo, hi = _support(x.grad[0], axis=3)
    encoder_halo = max(-(-(12 * f - lo) // f), -(-(hi - 13 * f + 1) // f))

    z = torch.randn(1, m.config.latent_channels, 1, 1, 24, requires_grad=True)
    m.decode(z)[0, :, :, :, 12 * f : 13 * f].sum().backward()
    lo, hi = _support(z.grad[0], axis=3)
    decoder_halo = max(12 - lo, hi - 12)

    assert receptive_halos(m.config) == (encoder_halo, decoder_halo) == (m.encoder_halo, m.decoder_halo)


@pytest.mark.parametrize("size", [(13, 97, 58), (16, 96, 64)])
def test_tiled_volume_equals_whole_volume(model, size):
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        whole_mu = model.net.encode(pad_to_cells(x, model.compression))[0]
        whole_image = model.net.decode(whole_mu)
    budget = 68_000  # forces 4 or 5 tiles, of unequal sizes for the first volume
    spans = plan_tiles(whole_mu.shape[2:], model.encoder_halo, budget // model.compression**3)
    assert np.prod([len(axis) for axis in spans]) >= 4

    tiled_mu = model.encode_volume(x, max_tile_voxels=budget)
    tiled_image = model.decode_volume(whole_mu, max_tile_voxels=budget)

    assert tiled_mu.shape == whole_mu.shape == (1, 4, *[-(-n // 4) for n in size])
    assert tiled_image.shape == whole_image.shape
    assert (tiled_mu - whole_mu).abs().max() < 1e-4
    assert (tiled_image - whole_image).abs().max() < 1e-4
    assert psnr(whole_mu, tiled_mu) >= 45 and psnr(whole_image, tiled_image) >= 45


def test_decode_volume_crops_to_the_original_size_and_accepts_numpy(model):
    x = np.random.default_rng(0).random((1, 3, 9, 21, 14), dtype=np.float32)
    mu = model.encode_volume(x)
    assert mu.shape == (1, 4, 3, 6, 4) and mu.dtype == torch.float32
    assert torch.equal(mu, model.encode_volume(torch.from_numpy(x)))
    image = model.decode_volume(mu, shape=(9, 21, 14))
    assert image.shape == (1, 3, 9, 21, 14)
    assert torch.equal(image, model.decode_volume(mu)[..., :9, :21, :14])


def test_volume_paths_are_deterministic_and_report_progress(model):
    x = torch.rand(1, 3, 8, 64, 64)
    calls = []
    first = model.encode_volume(x, progress=lambda done, total, message: calls.append((done, total)), max_tile_voxels=30_000)
    assert len(calls) > 1 and calls[-1][0] == calls[-1][1] == len(calls)
    assert [done for done, _ in calls] == list(range(1, len(calls) + 1))
    assert torch.equal(first, model.encode_volume(x, max_tile_voxels=30_000))
    assert torch.equal(make_model(seed=0).encode_volume(x), make_model(seed=0).encode_volume(x))


def test_progress_can_cancel(model):
    def cancel(done, total, message):
        raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        model.decode_volume(torch.zeros(1, 4, 2, 2, 2), progress=cancel)


def test_patch_level_forward_shapes_and_seeded_sampling(model):
    x = torch.rand(2, 3, 8, 16, 12)
    recon, mu, sigma = model(x)
    assert recon.shape == x.shape and mu.shape == sigma.shape == (2, 4, 2, 4, 3)
    assert (sigma > 0).all()
    draw = lambda: model.sample(mu, sigma, generator=torch.Generator().manual_seed(7))  # noqa: E731
    assert torch.equal(draw(), draw())
    assert not torch.equal(draw(), model.sample(mu, sigma, generator=torch.Generator().manual_seed(8)))


def test_kl_loss():
    mu, sigma = torch.zeros(2, 4, 2, 2, 2), torch.ones(2, 4, 2, 2, 2)
    assert float(kl_loss(mu, sigma)) == 0.0
    # one voxel with mu=1 in each sample: KL = 0.5 * 1
    mu[:, 0, 0, 0, 0] = 1.0
    assert float(kl_loss(mu, sigma)) == pytest.approx(0.5)


def test_consistency_loss_trains_crop_borders_and_is_seeded():
    m = make_model().train()
    x = torch.rand(1, 3, 16, 16, 16)
    loss = consistency_loss(m, x, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    again = consistency_loss(m, x, generator=torch.Generator().manual_seed(3))
    assert again.item() == pytest.approx(loss.item())


def test_config_round_trips_through_json():
    config = AutoencoderConfig(in_channels=2, channels=(8, 16), num_res_blocks=(1, 2), latent_channels=3)
    again = AutoencoderConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.compression == 2
    assert PatchVolumeAutoencoder(again).encode(torch.rand(1, 2, 4, 4, 4))[0].shape == (1, 3, 2, 2, 2)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.encode(torch.rand(1, 3, 8, 10, 8)), "not a multiple of 4"),
        (lambda m: m.encode_volume(torch.rand(1, 2, 8, 8, 8)), "one channel per DCE phase"),
        (lambda m: m.encode_volume(np.zeros((3, 8, 8, 8), np.float32)), r"\(B, 3, Z, Y, X\)"),
        (lambda m: m.decode_volume(torch.rand(1, 3, 2, 2, 2)), r"latent \(B, 4"),
        (lambda m: m.decode_volume(torch.rand(1, 4, 2, 2, 2), shape=(3, 8, 8)), "cannot crop"),
        (lambda m: AutoencoderConfig(channels=(16, 32, 32), norm_num_groups=8), "groups of at least 4"),
        (lambda m: AutoencoderConfig(channels=(8, 16), num_res_blocks=(1, 1, 1)), "does not match"),
        (lambda m: AutoencoderConfig.from_dict({"channels": [8, 8], "attention": True}), "unknown"),
    ],
)
def test_bad_input_raises_one_clear_error(model, call, message):
    with pytest.raises(SynBTError, match=message):
        call(model)


def test_plan_tiles_covers_every_cell_once_within_budget():
    size, halo, budget = (7, 40, 23), 3, 2000
    spans = plan_tiles(size, halo, budget)
    for n, axis in zip(size, spans):
        cores = [c for s in axis for c in range(s.core_start, s.core_stop)]
        assert cores == list(range(n))
        for s in axis:
            assert s.read_start == max(0, s.core_start - halo) and s.read_stop == min(n, s.core_stop + halo)
    assert np.prod([max(s.read_stop - s.read_start for s in axis) for axis in spans]) <= budget
    assert [len(axis) for axis in plan_tiles(size, halo, 10**6)] == [1, 1, 1]


def smooth_patches(seed=0, shape=(3, 3, 16, 16, 16)):
    """Correlated phases with spatial structure: a block code has something to compress."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool3d(torch.randn(shape[0], shape[1], *(n + 4 for n in shape[2:]), generator=g), 5, 1)
    x[:, 1] += 0.5 * x[:, 0]
    x[:, 2] += 0.3 * x[:, 1]
    return x


def test_linear_path_starts_as_the_pca_of_the_blocks():
    model = make_model(channels=(8, 16), latent_channels=6, linear_path=True)
    x = smooth_patches()
    info = model.init_linear_path(x, sigma=0.05)  # any start of the posterior
    with torch.no_grad():
        mu, sigma = model.encode(x)
        recon = model.decode(mu)

    # the reference: PCA by SVD of the 2x2x2 x 3-phase blocks, 6 components
    blocks = x.reshape(3, 3, 8, 2, 8, 2, 8, 2).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(-1, 24).double()
    mean = blocks.mean(0)
    _, s, v = torch.linalg.svd(blocks - mean, full_matrices=False)
    projected = (blocks - mean) @ v[:6].T @ v[:6] + mean
    recon_blocks = recon.reshape(3, 3, 8, 2, 8, 2, 8, 2).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(-1, 24).double()
    pca_error = float(((projected - blocks) ** 2).mean())
    error = float(((recon_blocks - blocks) ** 2).mean())
    assert error == pytest.approx(pca_error, rel=0.02)  # the bias is one mean per phase, not per block voxel
    assert error < 0.2 * float(blocks.var(0).sum() / 24)
    assert info["variance_kept"] == pytest.approx(float((s[:6] ** 2).sum() / (s**2).sum()), rel=1e-6)
    # orthonormal: the latent channels are the centred PCA coefficients, variances = eigenvalues
    per_channel = mu.transpose(0, 1).reshape(6, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(6), atol=1e-4)
    eigenvalues = (s[:6] ** 2 / (blocks.shape[0] - 1)).float()
    assert torch.allclose(per_channel.var(1), eigenvalues, rtol=1e-3)
    assert torch.allclose(torch.tensor(info["eigenvalues"]), eigenvalues, rtol=1e-3)
    assert torch.allclose(sigma, torch.full_like(sigma, 0.05))


def test_linear_path_keeps_tiling_exact_and_old_configs_load_without_it():
    model = make_model(seed=3, channels=(8, 16), latent_channels=6, linear_path=True)
    model.init_linear_path(smooth_patches())
    with torch.no_grad():  # a trained network adds its share: make it non-zero again
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(1, 3, 13, 30, 22)
    with torch.no_grad():
        whole_mu = model.encode(pad_to_cells(x, 2))[0]
        whole_image = model.decode(whole_mu)
        linear, network = model.linear_decoder(whole_mu), model.net.decode(whole_mu)
    tiled_mu = model.encode_volume(x, max_tile_voxels=3000)
    tiled_image = model.decode_volume(whole_mu, max_tile_voxels=3000)
    assert (tiled_mu - whole_mu).abs().max() < 1e-4 and (tiled_image - whole_image).abs().max() < 1e-4
    assert float(linear.abs().mean()) > 0 and float(network.abs().mean()) > 0  # both paths contribute

    legacy = {k: v for k, v in model.config.to_dict().items() if k != "linear_path"}
    assert AutoencoderConfig.from_dict(legacy).linear_path is False
    plain = PatchVolumeAutoencoder(AutoencoderConfig.from_dict(legacy))
    assert not any(k.startswith("linear_") for k in plain.state_dict())
    with pytest.raises(SynBTError, match="linear_path=True"):
        plain.init_linear_path(smooth_patches())
    with pytest.raises(SynBTError, match="cannot fit 30 latent channels"):
        make_model(channels=(8, 16), latent_channels=30, linear_path=True).init_linear_path(smooth_patches())
