"""A bundle's synthesis settings: typed, checked, versioned, older bundles migrated."""
import json

import pytest

from SynBTLib.bundle import save_bundle
from SynBTLib.bundle_meta import DEFAULT_CONTEXT_MARGIN_MM, SETTINGS_VERSION, SynthesisSettings, migrate
from SynBTLib.errors import SynBTError
from SynBTLib.nets.scheduler import SchedulerConfig
from SynBTLib.paths import default_bundle_path
from SynBTLib.pipeline import SynthesisPipeline

from test_pipeline import MARGINS, pipeline  # noqa: F401  (pipeline is a fixture)

AE_2X = {"channels": [8, 8]}  # compression 2: a latent cell has 8 voxels


def test_a_version_1_config_is_migrated():
    config = json.loads((default_bundle_path() / "config.json").read_text())
    assert config["settings_version"] == SETTINGS_VERSION  # 2.0 was written with versioned settings
    # bundles 1.x were written before the settings had a version, without margin and guidance
    config = {k: v for k, v in config.items() if k not in ("settings_version", "context_margin_mm", "guidance_scale")}
    settings = SynthesisSettings.from_config(config)
    assert settings.spacing == tuple(config["spacing"])
    assert settings.mask_dilation_cells == config["mask_dilation_cells"]
    assert settings.mask_encoding == config["mask_encoding"]
    assert settings.kinetic_frequencies == config["kinetic_frequencies"] and settings.necrosis == config["necrosis"]
    assert settings.context_margin_mm == DEFAULT_CONTEXT_MARGIN_MM and settings.guidance_scale == 1.0  # absent keys


def test_settings_round_trip_with_their_version():
    settings = SynthesisSettings(spacing=(1, 1, 2), context_margin_mm=10, mask_dilation_cells=1, mask_encoding="voxels",
                                 kinetic_frequencies={"plateau": 2, "washout": 1}, necrosis={"frequency": 0.5})
    config = settings.to_config()
    assert config["settings_version"] == SETTINGS_VERSION
    assert SynthesisSettings.from_config(json.loads(json.dumps(config))) == settings


@pytest.mark.parametrize("denoiser, expected", [
    ({"mask_channels": 1}, "cells"), ({"mask_channels": 9}, "voxels"),
    ({"mask_channels": 9, "necrosis": True}, "cells"),  # the necrotic core's 8 channels, not the outline's
    (None, None),
])
def test_a_version_1_bundle_without_mask_encoding_gets_the_one_its_denoiser_implies(denoiser, expected):
    assert migrate({"autoencoder": AE_2X, "denoiser": denoiser})["mask_encoding"] == expected


@pytest.mark.parametrize("config, field", [
    ({"settings_version": 2, "guidance_scale": 0.5}, "guidance_scale"),
    ({"spacing": [1, -1, 2]}, "spacing"),
    ({"mask_dilation_cells": 1.5}, "mask_dilation_cells"),
    ({"mask_encoding": "pixels"}, "mask_encoding"),
    ({"kinetic_frequencies": {"fast": 1}}, "kinetic_frequencies"),
    ({"settings_version": 3}, "settings_version"),
    ({"autoencoder": AE_2X, "denoiser": {"mask_channels": 5}}, "mask channels"),
])
def test_bad_settings_are_refused_naming_the_field(config, field):
    full = {**SynthesisSettings().to_config(), **config} if config.get("settings_version") == 2 else config
    with pytest.raises(SynBTError, match=field):
        SynthesisSettings.from_config(full)


def test_a_bundle_whose_mask_encoding_contradicts_its_denoiser_is_refused(pipeline, tmp_path):
    meta = {"phases": 3, **MARGINS, "mask_encoding": "voxels"}  # the tiny denoiser takes 1 mask channel: cells
    path = save_bundle(tmp_path / "b", pipeline.autoencoder, pipeline.denoiser, SchedulerConfig(),
                       pipeline.latent_scale, meta=meta, card_text="# tiny\n")
    with pytest.raises(SynBTError, match="mask_encoding"):
        SynthesisPipeline.from_bundle(path)
