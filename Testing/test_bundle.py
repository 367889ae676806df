"""Model bundles: round trip, and refusal of every kind of damaged or unsafe bundle (nothing unpickled)."""
import json
import os

import pytest
import torch

from SynBTLib.bundle import (
    AUTOENCODER_FILE,
    CARD_FILE,
    CONFIG_FILE,
    DENOISER_FILE,
    bundle_sha256,
    load_bundle,
    save_bundle,
    write_checksums,
)
from SynBTLib.errors import SynBTError
from SynBTLib.nets.autoencoder import AutoencoderConfig, PatchVolumeAutoencoder
from SynBTLib.nets.denoiser import DenoiserConfig, MaskConditionedDenoiser
from SynBTLib.nets.scheduler import SchedulerConfig

META = {"phases": 2, "phase_names": ["pre", "post1"], "normalization": {"kind": "fit_normalization"}, "spacing": [1, 1, 2]}


def tiny_networks(seed=0):
    torch.manual_seed(seed)
    autoencoder = PatchVolumeAutoencoder(AutoencoderConfig(in_channels=2, channels=(8, 16, 16)))
    denoiser = MaskConditionedDenoiser(
        DenoiserConfig(channels=(8, 16, 16), attention_levels=(False, False, True), num_head_channels=8)
    )
    return autoencoder, denoiser


@pytest.fixture
def bundle_dir(tmp_path):
    autoencoder, denoiser = tiny_networks()
    return save_bundle(tmp_path / "bundle", autoencoder, denoiser, SchedulerConfig(), 0.75, META, "# tiny\n")


def test_round_trip_restores_weights_config_and_hash(bundle_dir):
    autoencoder, denoiser = tiny_networks()
    bundle = load_bundle(bundle_dir)
    for original, loaded in ((autoencoder, bundle.autoencoder), (denoiser, bundle.denoiser)):
        expected, actual = original.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert bundle.latent_scale == 0.75
    assert bundle.phase_names == ["pre", "post1"]
    assert bundle.config["spacing"] == [1, 1, 2]
    assert bundle.sha256 == bundle_sha256(bundle_dir) and len(bundle.sha256) == 64
    assert bundle.scheduler.num_train_timesteps == 1000
    assert not bundle.autoencoder.training and not bundle.denoiser.training
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted(
        [AUTOENCODER_FILE, DENOISER_FILE, CONFIG_FILE, CARD_FILE, "SHA256SUMS"]
    )


def test_autoencoder_only_bundle_loads_without_denoiser(tmp_path):
    autoencoder, _ = tiny_networks()
    path = save_bundle(tmp_path / "ae", autoencoder, None, None, 2.0, META, "# ae")
    bundle = load_bundle(path)
    assert bundle.denoiser is None and bundle.scheduler is None
    assert not (path / DENOISER_FILE).exists()


def test_refuses_to_overwrite_a_bundle_unless_asked(bundle_dir):
    autoencoder, denoiser = tiny_networks(seed=1)
    with pytest.raises(SynBTError, match="already exists"):
        save_bundle(bundle_dir, autoencoder, denoiser, SchedulerConfig(), 1.0, META, "card")
    save_bundle(bundle_dir, autoencoder, denoiser, SchedulerConfig(), 1.0, META, "card", overwrite=True)
    assert load_bundle(bundle_dir).latent_scale == 1.0


def test_refuses_an_edited_byte(bundle_dir):
    data = bytearray((bundle_dir / AUTOENCODER_FILE).read_bytes())
    data[-1] ^= 0xFF
    (bundle_dir / AUTOENCODER_FILE).write_bytes(bytes(data))
    with pytest.raises(SynBTError, match=r"autoencoder\.safetensors.*sha256"):
        load_bundle(bundle_dir)


def test_refuses_a_truncated_safetensors_even_with_matching_sums(bundle_dir):
    path = bundle_dir / DENOISER_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SynBTError, match=r"denoiser\.safetensors.*sha256"):
        load_bundle(bundle_dir)
    write_checksums(bundle_dir)  # someone "fixed" the sums: the file must still be refused
    with pytest.raises(SynBTError, match=r"denoiser\.safetensors"):
        load_bundle(bundle_dir)


def test_refuses_weights_that_do_not_fit_the_configured_network(bundle_dir):
    config = json.loads((bundle_dir / CONFIG_FILE).read_text())
    config["autoencoder"]["latent_channels"] = 8
    (bundle_dir / CONFIG_FILE).write_text(json.dumps(config))
    write_checksums(bundle_dir)
    with pytest.raises(SynBTError, match=r"autoencoder\.safetensors.*shape"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("missing", [DENOISER_FILE, CARD_FILE])
def test_refuses_a_missing_file(bundle_dir, missing):
    (bundle_dir / missing).unlink()
    with pytest.raises(SynBTError, match=f"is missing the file {missing}"):
        load_bundle(bundle_dir)


def test_refuses_a_bundle_without_checksums(bundle_dir):
    (bundle_dir / "SHA256SUMS").unlink()
    with pytest.raises(SynBTError, match="has no SHA256SUMS"):
        load_bundle(bundle_dir)


class _SideEffect:
    """Unpickling this creates a folder: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_refuses_a_pickle_file_in_the_bundle(bundle_dir, tmp_path):
    marker = tmp_path / "unpickled"
    torch.save({"weights": _SideEffect(marker)}, bundle_dir / "extra_weights.pt")
    with pytest.raises(SynBTError, match=r"extra_weights\.pt"):
        load_bundle(bundle_dir)
    assert not marker.exists()


def test_refuses_a_pickle_disguised_as_safetensors(bundle_dir, tmp_path):
    marker = tmp_path / "unpickled"
    torch.save({"weights": _SideEffect(marker)}, bundle_dir / AUTOENCODER_FILE)
    write_checksums(bundle_dir)
    with pytest.raises(SynBTError, match=r"autoencoder\.safetensors"):
        load_bundle(bundle_dir)
    assert not marker.exists()


def test_refuses_an_unlisted_file_and_a_missing_folder(bundle_dir, tmp_path):
    (bundle_dir / "notes.txt").write_text("hello")
    with pytest.raises(SynBTError, match=r"notes\.txt"):
        load_bundle(bundle_dir)
    with pytest.raises(SynBTError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")
