"""Typed training configs: the shipped config files load, bad fields are named, older records migrate."""
import json
from pathlib import Path

import pytest
import torch

from SynBTLib.errors import SynBTError
from SynBTLib.training.common import CHECKPOINT_FILE, read_checkpoint
from SynBTLib.training.config import (
    AutoencoderTrainingConfig,
    DiffusionTrainingConfig,
    SegmentationTrainingConfig,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KINDS = {"autoencoder": AutoencoderTrainingConfig, "diffusion": DiffusionTrainingConfig,
         "segmentation": SegmentationTrainingConfig}


def kind_of(path: Path):
    return next(cls for name, cls in KINDS.items() if name in path.stem)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_file_loads_and_keeps_its_values(path):
    raw = json.loads(path.read_text())
    full = kind_of(path).from_dict(raw).to_dict()
    for section, values in raw.items():
        if isinstance(values, dict) and section in full and isinstance(full[section], dict) and section != "finetune":
            for key, value in values.items():
                if value is not None:
                    assert full[section][key] == value, f"{section}.{key}"
        elif not isinstance(values, dict):
            assert full[section] == values
    assert kind_of(path).from_dict(full).to_dict() == full  # the recorded form reads back as itself


@pytest.mark.parametrize("cls, raw, field", [
    (AutoencoderTrainingConfig, {"loss": {"kl_weight": -1}}, "loss.kl_weight"),
    (AutoencoderTrainingConfig, {"loss": {"kl_wieght": 1e-6}}, "kl_wieght"),
    (AutoencoderTrainingConfig, {"trainig": {"steps": 3}}, "trainig"),
    (AutoencoderTrainingConfig, {"data": {"patch_size": [16, 16]}}, "data.patch_size"),
    (AutoencoderTrainingConfig, {"data": {"tumor_fraction": 2}}, "data.tumor_fraction"),
    (AutoencoderTrainingConfig, {"training": {"amp": "fp8"}}, "training.amp"),
    (AutoencoderTrainingConfig, {"training": {"steps": 0}}, "training.steps"),
    (AutoencoderTrainingConfig, {"loss": {"decoder_latent_noise": 0.1}}, "loss.decoder_latent_noise"),
    (AutoencoderTrainingConfig, {"finetune": {"bundle": "b", "part": "encoder"}}, "finetune.part"),
    (DiffusionTrainingConfig, {"mask_loss_balanced": "yes"}, "mask_loss_balanced"),
    (DiffusionTrainingConfig, {"mask_loss_weight": 0.0, "mask_loss_balanced": True}, "mask_loss_balanced"),
    (DiffusionTrainingConfig, {"mask_loss_weight": -1}, "mask_loss_weight"),
    (DiffusionTrainingConfig, {"mask_dilation_cells": 1.5}, "mask_dilation_cells"),
    (DiffusionTrainingConfig, {"mask_encoding": "pixels"}, "mask_encoding"),
    (DiffusionTrainingConfig, {"latent_normalization": "batch"}, "latent_normalization"),
    (DiffusionTrainingConfig, {"context_margin_mm": 0}, "context_margin_mm"),
    (DiffusionTrainingConfig, {"kinetics_dropout": 1.0}, "kinetics_dropout"),
    (DiffusionTrainingConfig, {"necrosis_conditioning": "yes"}, "necrosis_conditioning"),
    (DiffusionTrainingConfig, {"data": {"roi_size": "64"}}, "data.roi_size"),
    (SegmentationTrainingConfig, {"synthetic": {"ratio": 1.5}}, "synthetic.ratio"),
    (SegmentationTrainingConfig, {"synthetic": {"mode": "offline"}}, "synthetic.dir"),
    (SegmentationTrainingConfig, {"synthetic": {"mode": "sometimes"}}, "synthetic.mode"),
    (SegmentationTrainingConfig, {"training": {"epochs": 0}}, "training.epochs"),
    (SegmentationTrainingConfig, {"data": {"pos_fraction": -0.1}}, "data.pos_fraction"),
    (SegmentationTrainingConfig, {"data": {"patch_size": [30, 64, 64]}}, "data.patch_size"),
    (SegmentationTrainingConfig, {"model": {"name": "vnet"}}, "model.name"),
])
def test_a_bad_field_is_refused_with_one_line_naming_it(cls, raw, field):
    with pytest.raises(SynBTError) as info:
        cls.from_dict(raw)
    message = str(info.value)
    assert field in message and "\n" not in message


def test_epochs_become_steps_and_intervals_default_to_one_epoch():
    config = SegmentationTrainingConfig.from_dict({"training": {"epochs": 3}, "data": {"steps_per_epoch": 7}})
    assert config.training.steps == 21
    assert config.training.checkpoint_every == 7 and config.validation.every == 7


def test_a_section_given_replaces_only_the_keys_it_names():
    config = AutoencoderTrainingConfig.from_dict({"training": {"steps": 5}})
    assert config.training.steps == 5
    assert config.training.checkpoint_every == AutoencoderTrainingConfig().training.checkpoint_every


def test_a_run_recorded_before_typed_configs_resumes_and_other_settings_are_still_refused(tmp_path):
    """Checkpoints written before the typed configs recorded only the keys that were given."""
    from test_training import AE_CONFIG, write_case

    from SynBTLib.training.autoencoder import train_autoencoder

    for k in range(2):
        write_case(tmp_path / "data" / f"case{k}", seed=k)
    config = {**AE_CONFIG, "training": {**AE_CONFIG["training"], "steps": 2}}
    out = tmp_path / "run"
    train_autoencoder(tmp_path / "data", out, config, verbose=False)
    state = read_checkpoint(out / CHECKPOINT_FILE)
    recorded = json.loads(state["config"])
    old = {key: value for key, value in recorded.items() if key in config or key in ("autoencoder", "data")}
    old["training"] = dict(config["training"])  # the old record: the given keys only
    old["data"] = {**config["data"], "phase_policy": None}
    assert old != recorded
    state["config"] = json.dumps(old, sort_keys=True)
    torch.save(state, out / CHECKPOINT_FILE)

    resumed = train_autoencoder(tmp_path / "data", out, {**config, "training": {**config["training"], "steps": 3}},
                                resume=True, verbose=False)
    assert read_checkpoint(out / CHECKPOINT_FILE)["step"] == 3 and resumed.bundle is not None
    other = {**config, "training": {**config["training"], "steps": 4}, "loss": {"kl_weight": 1e-3}}
    with pytest.raises(SynBTError, match="loss.kl_weight"):
        train_autoencoder(tmp_path / "data", out, other, resume=True, verbose=False)
