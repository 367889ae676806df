"""Trainers: exact resume, the loss log, distributed runs (2 gloo processes) and the bundles they write."""
import csv
import hashlib
import json
import os
import re
import socket

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.multiprocessing as mp
from scipy import ndimage

from SynBTLib import cli
from SynBTLib.bundle import load_bundle
from SynBTLib.errors import SynBTError
from SynBTLib.training.autoencoder import train_autoencoder
from SynBTLib.training.common import CHECKPOINT_FILE, LOG_FILE, read_checkpoint
from SynBTLib.training.data import PatchSampler, load_cases
from SynBTLib.training.diffusion import train_diffusion

AE_CONFIG = {
    "autoencoder": {"channels": [8, 16, 16], "latent_channels": 4},
    "training": {"steps": 6, "batch_size": 2, "checkpoint_every": 2, "warmup_steps": 2, "lr": 1e-3},
    "data": {"patch_size": [16, 16, 16]},
    "latent_scale_patches": 4,
}
DIFFUSION_CONFIG = {
    "denoiser": {"channels": [8, 16, 16], "attention_levels": [False, False, True], "num_head_channels": 8},
    "training": {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "warmup_steps": 1, "lr": 1e-3},
    "data": {"roi_size": [16, 16, 16]},
}


def write_case(folder, seed, shape=(20, 32, 36), core_radius=0.0):
    """A 3-phase case on a 1x1x2 mm grid: an ellipsoidal body with an enhancing spherical tumor
    (with a non-enhancing core of ``core_radius`` voxels)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    half = np.array(shape) / 2
    body = ((z - half[0]) / (0.45 * shape[0])) ** 2 + ((y - half[1]) / (0.4 * shape[1])) ** 2 + (
        (x - half[2]) / (0.4 * shape[2])
    ) ** 2 < 1
    center = np.array(shape) // 2 + rng.integers(-3, 4, 3)
    distance2 = (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2
    tumor = distance2 < 9 + 16 * (core_radius > 0)  # room for a core: radius 5 instead of 3
    enhancing = tumor & (distance2 >= core_radius**2)
    folder.mkdir(parents=True)

    def write(array, name):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(image, str(folder / name))

    for phase in range(3):
        values = body * (100 + 20 * np.sin(x / 3.0 + seed)) + enhancing * 80 * phase + rng.normal(0, 5, shape)
        write(values.astype(np.float32), f"phase_{phase}.nii.gz")
    write(tumor.astype(np.uint8), "tumor_labels.nii.gz")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for k in range(2):
        write_case(root / f"case{k}", seed=k)
    return root


@pytest.fixture(scope="module")
def autoencoder_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "run"
    return train_autoencoder(dataset, out, AE_CONFIG, verbose=False)


def weights_of(path):
    return read_checkpoint(path)["models"]


def log_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class Stop(Exception):
    pass


def stop_after(step):
    def progress(done, total, message):
        if done == step:
            raise Stop

    return progress


def test_autoencoder_resume_is_bitwise_identical_and_log_has_one_row_per_step(dataset, autoencoder_run, tmp_path):
    out = tmp_path / "interrupted"
    with pytest.raises(Stop):  # stops after step 3; the last checkpoint is at step 2
        train_autoencoder(dataset, out, AE_CONFIG, verbose=False, progress=stop_after(3))
    assert read_checkpoint(out / CHECKPOINT_FILE)["step"] == 2
    assert [r["step"] for r in log_rows(out / LOG_FILE)] == ["1", "2", "3"]

    resumed = train_autoencoder(dataset, out, AE_CONFIG, resume=True, verbose=False)

    reference = weights_of(autoencoder_run.out / CHECKPOINT_FILE)["autoencoder"]
    final = weights_of(out / CHECKPOINT_FILE)["autoencoder"]
    assert all(torch.equal(reference[k], final[k]) for k in reference)
    assert resumed.latent_scale == autoencoder_run.latent_scale
    rows, reference_rows = log_rows(out / LOG_FILE), log_rows(autoencoder_run.out / LOG_FILE)
    assert [r["step"] for r in rows] == [str(s) for s in range(1, 7)]
    assert rows == reference_rows
    assert float(rows[-1]["l1"]) < float(rows[0]["l1"])  # it learns


@pytest.mark.slow  # torch.compile builds C++ kernels on the CPU: about a minute
def test_compiled_training_matches_the_plain_run_and_resumes_without_compiling(dataset, autoencoder_run, tmp_path):
    config = {**AE_CONFIG, "training": {**AE_CONFIG["training"], "compile": True}}
    from torch._dynamo.utils import counters

    out = tmp_path / "compiled"
    counters.clear()
    with pytest.raises(Stop):  # 3 compiled steps, checkpoint at step 2
        train_autoencoder(dataset, out, config, verbose=False, progress=stop_after(3))
    assert counters["stats"]["unique_graphs"] > 0  # the forward did go through torch.compile
    train_autoencoder(dataset, out, AE_CONFIG, resume=True, verbose=False)  # the rest without compiling
    reference = weights_of(autoencoder_run.out / CHECKPOINT_FILE)["autoencoder"]
    final = weights_of(out / CHECKPOINT_FILE)["autoencoder"]
    assert set(final) == set(reference)  # plain parameter names: the checkpoint loads into an uncompiled network
    for key in reference:  # the same training up to the compiled kernels' float rounding
        torch.testing.assert_close(final[key], reference[key], rtol=1e-3, atol=1e-4)
    assert json.loads((out / "config.json").read_text())["training"]["compile"] is False
    with pytest.raises(SynBTError, match="training.compile"):
        train_autoencoder(dataset, tmp_path / "bad", {**AE_CONFIG, "training": {**AE_CONFIG["training"],
                                                                                "compile": "yes"}}, verbose=False)


def test_autoencoder_run_writes_a_loadable_partial_bundle(autoencoder_run):
    bundle = load_bundle(autoencoder_run.out / "bundle")
    assert bundle.denoiser is None
    assert bundle.latent_scale == pytest.approx(autoencoder_run.latent_scale)
    assert bundle.config["phase_names"] == ["phase_0", "phase_1", "phase_2"]
    assert bundle.config["spacing"] == [1.0, 1.0, 2.0]
    card = (autoencoder_run.out / "bundle" / "MODEL_CARD.md").read_text()
    assert "steps: 6" in card and "| l1 |" in card
    # the checkpoint is plain tensors and containers: loadable with weights_only=True
    state = torch.load(autoencoder_run.out / CHECKPOINT_FILE, weights_only=True)
    assert state["step"] == 6 and "autoencoder" in state["optimizers"]


def test_adversarial_term_trains_a_discriminator(dataset, tmp_path):
    config = {**AE_CONFIG, "training": {**AE_CONFIG["training"], "steps": 2}, "loss": {"adversarial_weight": 0.1}}
    train_autoencoder(dataset, tmp_path / "gan", config, verbose=False)
    rows = log_rows(tmp_path / "gan" / LOG_FILE)
    assert len(rows) == 2 and all(np.isfinite(float(r["discriminator"])) for r in rows)
    assert "discriminator" in read_checkpoint(tmp_path / "gan" / CHECKPOINT_FILE)["models"]


def test_diffusion_resume_is_exact_and_writes_the_full_bundle(dataset, autoencoder_run, tmp_path):
    from SynBTLib.pipeline import SynthesisPipeline

    reference = train_diffusion(dataset, autoencoder_run.out, tmp_path / "a", DIFFUSION_CONFIG, verbose=False, command="synbt x")
    with pytest.raises(Stop):
        train_diffusion(dataset, autoencoder_run.out, tmp_path / "b", DIFFUSION_CONFIG, verbose=False, progress=stop_after(3))
    train_diffusion(dataset, autoencoder_run.out / "bundle", tmp_path / "b", DIFFUSION_CONFIG, resume=True, verbose=False)
    a, b = weights_of(tmp_path / "a" / CHECKPOINT_FILE)["denoiser"], weights_of(tmp_path / "b" / CHECKPOINT_FILE)["denoiser"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert log_rows(tmp_path / "a" / LOG_FILE) == log_rows(tmp_path / "b" / LOG_FILE)

    bundle = load_bundle(reference.bundle)
    assert bundle.denoiser is not None and bundle.latent_scale == pytest.approx(autoencoder_run.latent_scale)
    assert "synbt x" in (reference.bundle / "MODEL_CARD.md").read_text()
    pipeline = SynthesisPipeline.from_bundle(reference.bundle)
    assert pipeline.denoiser.config.channels == (8, 16, 16)


def test_diffusion_accepts_an_autoencoder_checkpoint(dataset, autoencoder_run, tmp_path):
    config = {**DIFFUSION_CONFIG, "training": {**DIFFUSION_CONFIG["training"], "steps": 1}, "latent_scale_patches": 2}
    run = train_diffusion(dataset, autoencoder_run.out / CHECKPOINT_FILE, tmp_path / "d", config, verbose=False)
    assert load_bundle(run.bundle).latent_scale > 0


def test_samplers_depend_only_on_seed_step_and_rank(dataset):
    cases = load_cases(dataset, progress=False)
    first, again = PatchSampler(cases, (16, 16, 16), seed=3), PatchSampler(cases, (16, 16, 16), seed=3)
    other_rank = PatchSampler(cases, (16, 16, 16), seed=3, rank=1)
    assert np.array_equal(first.sample(5, 2), again.sample(5, 2))
    assert not np.array_equal(first.sample(5, 2), other_rank.sample(5, 2))
    assert not np.array_equal(first.sample(5, 2), first.sample(6, 2))


def test_tumor_fraction_centres_that_share_of_patches_on_tumors(dataset, tmp_path):
    cases = load_cases(dataset, progress=False, with_tumors=True)
    tumors = {case.case_id: case.tumor_centers for case in cases}
    assert all(centers is not None and len(centers) > 0 for centers in tumors.values())
    size = (8, 8, 8)
    uniform = PatchSampler(cases, size, seed=3, flip_x=False)
    assert np.array_equal(uniform.sample(5, 2), PatchSampler(load_cases(dataset, progress=False), size, seed=3,
                                                              flip_x=False).sample(5, 2))  # default stream unchanged
    all_tumor = PatchSampler(cases, size, seed=3, flip_x=False, tumor_fraction=1.0)
    # the tumor enhances by 80 per phase: a tumor-centred patch has its bright core in the middle
    centres = all_tumor.sample(0, 16)[:, 2, 4, 4, 4]
    background = uniform.sample(0, 16)[:, 2, 4, 4, 4]
    assert centres.min() > np.percentile(background, 90)

    with pytest.raises(SynBTError, match="tumor_fraction"):
        PatchSampler(load_cases(dataset, progress=False), size, seed=3, tumor_fraction=0.5)  # no labels read
    with pytest.raises(SynBTError, match="tumor_fraction"):
        train_autoencoder(dataset, tmp_path / "bad", {**AE_CONFIG, "data": {**AE_CONFIG["data"], "tumor_fraction": 2}},
                          verbose=False)
    assert not (tmp_path / "bad").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, dataset, out, report):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    config = {**AE_CONFIG, "training": {**AE_CONFIG["training"], "steps": 2}}
    run = train_autoencoder(dataset, out, config, verbose=False, device="cpu")
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in run.autoencoder.parameters())).hexdigest()
    with open(os.path.join(report, f"rank{rank}.txt"), "w") as handle:
        handle.write(f"{digest} {run.bundle is not None}")


def test_two_gloo_processes_end_with_identical_weights_and_only_rank0_writes(dataset, tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(dataset), str(out), str(report)), nprocs=2, join=True)
    digest0, wrote0 = (report / "rank0.txt").read_text().split()
    digest1, wrote1 = (report / "rank1.txt").read_text().split()
    assert digest0 == digest1
    assert (wrote0, wrote1) == ("True", "False")
    assert [r["step"] for r in log_rows(out / LOG_FILE)] == ["1", "2"]
    assert read_checkpoint(out / CHECKPOINT_FILE)["step"] == 2


def test_cli_refuses_bad_runs_with_one_line(dataset, tmp_path, capsys):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x.txt").write_text("x")
    assert cli.main(["train-autoencoder", "--data", str(dataset), "--out", str(occupied)]) == 2
    err = capsys.readouterr().err
    assert str(occupied) in err and "--resume" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["train-autoencoder", "--data", str(dataset), "--out", str(tmp_path / "new"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert CHECKPOINT_FILE in err and len(err.strip().splitlines()) == 1
    assert cli.main(["train-diffusion", "--data", str(dataset), "--out", str(tmp_path / "d"), "--autoencoder", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "none") in err and len(err.strip().splitlines()) == 1


def test_cli_trains_with_overrides(dataset, tmp_path):
    import json

    config = tmp_path / "ae.json"
    config.write_text(json.dumps(AE_CONFIG))
    out = tmp_path / "cli"
    assert cli.main(["train-autoencoder", "--data", str(dataset), "--out", str(out), "--config", str(config), "--steps", "1", "--seed", "4"]) == 0
    assert len(log_rows(out / LOG_FILE)) == 1
    assert "--steps 1 --seed 4" in (out / "bundle" / "MODEL_CARD.md").read_text()
    assert json.loads((out / "config.json").read_text())["training"]["seed"] == 4


def test_resume_with_other_settings_is_refused_and_changes_nothing(dataset, tmp_path):
    from SynBTLib.errors import SynBTError

    out = tmp_path / "run"
    with pytest.raises(Stop):
        train_autoencoder(dataset, out, AE_CONFIG, verbose=False, progress=stop_after(3))
    config_before = (out / "config.json").read_text()
    other_seed = {**AE_CONFIG, "training": {**AE_CONFIG["training"], "seed": AE_CONFIG["training"].get("seed", 0) + 5}}
    with pytest.raises(SynBTError, match="training.seed"):
        train_autoencoder(dataset, out, other_seed, resume=True, verbose=False)
    assert (out / "config.json").read_text() == config_before
    assert read_checkpoint(out / CHECKPOINT_FILE)["step"] == 2


def test_a_run_folder_inside_the_data_set_or_on_a_file_is_refused(dataset, tmp_path):
    from SynBTLib.errors import SynBTError

    with pytest.raises(SynBTError, match=re.escape(str(dataset))):
        train_autoencoder(dataset, dataset / "runs", AE_CONFIG, verbose=False)
    assert not (dataset / "runs").exists()
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(SynBTError, match="--out"):
        train_autoencoder(dataset, blocker, AE_CONFIG, verbose=False)


def test_diffusion_with_channel_normalization_stores_and_uses_the_statistics(dataset, autoencoder_run, tmp_path):
    from SynBTLib.errors import SynBTError
    from SynBTLib.nets.latent_norm import ChannelStandardizer
    from SynBTLib.pipeline import SynthesisPipeline

    config = {**DIFFUSION_CONFIG, "training": {**DIFFUSION_CONFIG["training"], "steps": 1},
              "latent_normalization": "channel"}
    run = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "d", config, verbose=False)
    bundle = load_bundle(run.bundle)
    channels = bundle.autoencoder.config.latent_channels
    assert len(bundle.config["latent_shift"]) == len(bundle.config["latent_channel_scale"]) == channels
    assert bundle.channels != ChannelStandardizer()
    assert SynthesisPipeline.from_bundle(run.bundle).channels == bundle.channels
    with pytest.raises(SynBTError, match="latent_normalization"):
        train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "e", {**config, "latent_normalization": "pixel"},
                        verbose=False)
    assert not (tmp_path / "e").exists()  # refused before anything is written


def test_diffusion_phase_normalization_rotates_the_linear_latent_by_phase(dataset, autoencoder_run, tmp_path):
    from SynBTLib.errors import SynBTError
    from SynBTLib.io import read_case, read_mask
    from SynBTLib.pipeline import SynthesisPipeline

    ae_config = {**AE_CONFIG, "autoencoder": {"channels": [8, 16], "latent_channels": 16, "linear_path": True},
                 "training": {**AE_CONFIG["training"], "steps": 1}, "pca_patches": 8}
    linear = train_autoencoder(dataset, tmp_path / "ae", ae_config, verbose=False)
    config = {**DIFFUSION_CONFIG, "training": {**DIFFUSION_CONFIG["training"], "steps": 1},
              "latent_normalization": "phase"}
    with pytest.raises(SynBTError, match="latent_normalization"):
        train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "plain", config, verbose=False)
    assert not (tmp_path / "plain").exists()
    run = train_diffusion(dataset, linear.bundle, tmp_path / "d", config, verbose=False)
    bundle = load_bundle(run.bundle)
    assert bundle.config["training"]["config"]["latent_phase_groups"][0] == 8  # 2x2x2 pre-contrast voxels
    rotation = np.asarray(bundle.config["latent_rotation"])
    decoder = bundle.autoencoder.linear_decoder.weight.detach().numpy()
    effect = np.abs(decoder[:, 0].reshape(16, -1).T @ rotation.T)  # (pre-contrast voxel, rotated channel)
    first = int((effect.max(0) > 1e-6).sum())  # the channels that reach the pre-contrast phase come first
    assert 0 < first < 16 and np.allclose(effect[:, first:], 0, atol=1e-5)
    pipeline = SynthesisPipeline.from_bundle(run.bundle)
    assert pipeline.channels == bundle.channels and pipeline.channels.rotation is not None
    case = read_case(sorted((dataset / "case0").glob("phase_*.nii.gz")))
    mask = read_mask(dataset / "case0" / "tumor_labels.nii.gz", case.geometry)
    out = pipeline(case, mask, seed=0, steps=2)
    assert np.isfinite(out.phases).all() and not np.array_equal(out.phases[:, mask > 0], case.phases[:, mask > 0])
    narrow = train_autoencoder(dataset, tmp_path / "ae8", {**ae_config, "autoencoder": {**ae_config["autoencoder"],
                                                                                       "latent_channels": 8}},
                               verbose=False)
    with pytest.raises(SynBTError, match="latent_normalization"):  # 8 channels, 8 pre-contrast voxels per cell
        train_diffusion(dataset, narrow.bundle, tmp_path / "d8", config, verbose=False)


def test_diffusion_v_prediction_trains_on_v_and_the_pipeline_samples_with_it(dataset, autoencoder_run, tmp_path):
    from SynBTLib.pipeline import SynthesisPipeline

    config = {**DIFFUSION_CONFIG, "training": {**DIFFUSION_CONFIG["training"], "steps": 2}}
    plain = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "eps", config, verbose=False)
    velocity = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "v",
                               {**config, "scheduler": {"prediction_type": "v_prediction"}}, verbose=False)
    assert velocity.losses["loss"] != pytest.approx(plain.losses["loss"], rel=1e-6)  # another target
    pipeline = SynthesisPipeline.from_bundle(velocity.bundle)
    assert pipeline.scheduler.prediction_type == "v_prediction"
    from SynBTLib.io import read_case, read_mask

    case = read_case(sorted((dataset / "case0").glob("phase_*.nii.gz")))
    mask = read_mask(dataset / "case0" / "tumor_labels.nii.gz", case.geometry)
    out = pipeline(case, mask, seed=0, steps=3)
    assert np.isfinite(out.phases).all() and not np.array_equal(out.phases[:, mask > 0], case.phases[:, mask > 0])


def test_diffusion_mask_dilation_grows_the_trained_region_and_is_recorded(dataset, autoencoder_run, tmp_path):
    from SynBTLib.pipeline import SynthesisPipeline
    from SynBTLib.training.data import encode_cases

    ae = load_bundle(autoencoder_run.bundle).autoencoder
    cases = load_cases(dataset, need_tumors=True, progress=False)[:1]
    plain, grown = (encode_cases(cases, ae, 1.0, [8, 8, 8], flip_x=False, progress=False, mask_dilation_cells=d,
                                 whole_volume=True)[0].windows[0] for d in (0, 1))
    assert grown.mask.sum() > plain.mask.sum() and (grown.mask >= plain.mask).all()
    assert np.array_equal(grown.latent, plain.latent) and not np.array_equal(grown.context, plain.context)
    plain, grown = (encode_cases(cases, ae, 1.0, [8, 8, 8], flip_x=False, progress=False, mask_dilation_cells=d)[0]
                    for d in (0, 1))
    assert np.array_equal(grown.tumor_centers, plain.tumor_centers)  # ROIs still centred on the tumors

    config = {**DIFFUSION_CONFIG, "training": {**DIFFUSION_CONFIG["training"], "steps": 1}, "mask_dilation_cells": 1}
    run = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "g", config, verbose=False)
    assert load_bundle(run.bundle).config["mask_dilation_cells"] == 1
    assert SynthesisPipeline.from_bundle(run.bundle).mask_dilation_cells == 1
    for bad in (-1, 1.5, True):
        with pytest.raises(SynBTError, match="mask_dilation_cells"):
            train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "bad", {**config, "mask_dilation_cells": bad},
                            verbose=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SynBTError, match="mask_dilation_cells"):
        train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "ft",
                        {**config, "mask_dilation_cells": 0, "finetune": {"bundle": str(run.bundle)}}, verbose=False)


def test_diffusion_mask_encoding_voxels_trains_on_the_outline_and_is_recorded(dataset, autoencoder_run, tmp_path):
    from SynBTLib.pipeline import SynthesisPipeline
    from SynBTLib.training.data import encode_cases

    ae = load_bundle(autoencoder_run.bundle).autoencoder
    c = ae.config.compression
    cases = load_cases(dataset, need_tumors=True, progress=False)[:1]
    cells, voxels = (encode_cases(cases, ae, 1.0, [8, 8, 8], flip_x=False, progress=False, mask_dilation_cells=1,
                                  mask_encoding=e, whole_volume=True)[0].windows[0] for e in ("cells", "voxels"))
    assert cells.mask.shape[0] == 1 and voxels.mask.shape[0] == 1 + c**3 and voxels.mask.dtype == np.uint8
    assert np.array_equal(voxels.mask[:1], cells.mask)
    assert voxels.mask[1:].sum() == (cases[0].tumor > 0).sum()  # every tumor voxel, once

    config = {**DIFFUSION_CONFIG, "training": {**DIFFUSION_CONFIG["training"], "steps": 1}, "mask_encoding": "voxels"}
    run = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "v", config, verbose=False)
    bundle = load_bundle(run.bundle)
    assert bundle.config["mask_encoding"] == "voxels" and bundle.denoiser.config.mask_channels == 1 + c**3
    assert SynthesisPipeline.from_bundle(run.bundle).mask_encoding == "voxels"
    with pytest.raises(SynBTError, match="mask_encoding"):
        train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "bad", {**config, "mask_encoding": "outline"},
                        verbose=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SynBTError, match="mask_encoding"):
        train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "ft",
                        {**config, "mask_encoding": "cells", "finetune": {"bundle": str(run.bundle)}}, verbose=False)


def test_diffusion_encodes_only_the_windows_its_rois_reach_and_samples_the_same_rois(autoencoder_run):
    """Windows around the tumors hold what the whole-volume encoding holds there, and the sampler
    draws the same ROIs from them: at the border, for tumors sharing a window, x-flipped."""
    from SynBTLib.training.data import TrainingCase, TumorRoiSampler, encode_cases

    ae = load_bundle(autoencoder_run.bundle).autoencoder
    assert ae.config.compression == 4
    rng = np.random.default_rng(0)
    shape = (24, 64, 96)
    image = ndimage.gaussian_filter(rng.normal(size=(3, *shape)), (0, 1, 1, 1)).astype(np.float32)
    tumor = np.zeros(shape, np.uint8)
    tumor[10:14, 8:12, 6:10] = 1  # at the y / x start: its ROIs are clamped to the grid
    tumor[10:14, 40:44, 40:44] = 1  # two tumors whose ROIs overlap: one window
    tumor[12:16, 44:48, 50:54] = 1
    tumor[4:8, 30:34, 84:88] = 1  # at the far x end
    case = TrainingCase("c", image, tumor, (1.0, 1.0, 2.0), ["a", "b", "c"], np.zeros((0, 3), int))
    kwargs = dict(flip_x=True, progress=False, jitter=0.5)
    windows = encode_cases([case], ae, 1.0, [16, 16, 16], **kwargs)
    whole = encode_cases([case], ae, 1.0, [16, 16, 16], whole_volume=True, **kwargs)
    for part, full in zip(windows, whole):
        assert len(part.windows) == 3 and part.grid == full.grid == (6, 16, 24)
        assert np.array_equal(part.tumor_centers, full.tumor_centers)
        assert part.nbytes < 0.6 * full.nbytes
        for window in part.windows:
            box = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(window.origin, window.latent.shape[1:]))
            np.testing.assert_allclose(window.latent, full.windows[0].latent[box], atol=1e-5)
            np.testing.assert_allclose(window.context, full.windows[0].context[box], atol=1e-5)
            assert np.array_equal(window.mask, full.windows[0].mask[box])
    a, b = (TumorRoiSampler(c, [4, 4, 4], seed=1, jitter=0.5) for c in (windows, whole))
    for step in range(40):
        for x, y in zip(a.sample(step, 3), b.sample(step, 3)):
            np.testing.assert_allclose(x, y, atol=1e-5)
    wider = TumorRoiSampler(windows, [4, 4, 4], seed=1, jitter=1.0)  # ROIs the windows were not encoded for
    with pytest.raises(SynBTError, match="outside its encoded window"):
        for step in range(40):
            wider.sample(step, 3)


def test_padded_region_reads_what_padding_and_flipping_the_whole_image_gives(tmp_path):
    from SynBTLib.training.data import pad_to_multiple, padded_region

    image = np.random.default_rng(1).normal(size=(3, 5, 7, 9)).astype(np.float16)
    np.save(tmp_path / "image.npy", image)
    mapped = np.load(tmp_path / "image.npy", mmap_mode="r")  # as a prepared store holds it
    whole = pad_to_multiple(image.astype(np.float32), 4, [8, 8, 8], "edge")
    assert whole.shape == (3, 8, 8, 12)
    for flip in (False, True):
        view = whole[..., ::-1] if flip else whole
        for region in [(slice(0, 8), slice(0, 8), slice(0, 12)), (slice(4, 8), slice(2, 6), slice(8, 12)),
                       (slice(1, 3), slice(0, 8), slice(0, 4))]:
            got = padded_region(mapped, whole.shape[1:], region, flip)
            assert got.dtype == np.float32 and np.array_equal(got, view[(slice(None), *region)])


def test_latent_cache_reuses_encodings_only_for_the_same_encoder_and_voxels(dataset, autoencoder_run, tmp_path):
    from SynBTLib.training.data import encode_cases

    ae = load_bundle(autoencoder_run.bundle).autoencoder
    cases = load_cases(dataset, need_tumors=True, progress=False)[:2]
    calls = []
    real_encode = ae.encode_volume

    def counting_encode(image):  # the real encoder, counted
        calls.append(1)
        return real_encode(image)

    ae.encode_volume = counting_encode
    try:
        kwargs = dict(flip_x=False, progress=False, cache_dir=tmp_path / "cache", whole_volume=True)
        plain = encode_cases(cases, ae, 1.0, [8, 8, 8], flip_x=False, progress=False, whole_volume=True)
        assert len(calls) == 4  # latent + context of two cases
        first = encode_cases(cases, ae, 1.0, [8, 8, 8], **kwargs)
        again = encode_cases(cases, ae, 1.0, [8, 8, 8], **kwargs)
        assert len(calls) == 8 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 4  # nothing re-encoded
        for a, b, c in ((x.windows[0], y.windows[0], z.windows[0]) for x, y, z in zip(plain, first, again)):
            assert np.array_equal(a.latent, b.latent) and np.array_equal(a.latent, c.latent)
            assert np.array_equal(a.context, c.context) and np.array_equal(a.mask, c.mask)
        encode_cases(cases, ae, 1.0, [8, 8, 8], mask_dilation_cells=1, **kwargs)
        assert len(calls) == 10  # another erased region: only the contexts are encoded
        encode_cases(cases, ae, 2.0, [8, 8, 8], **kwargs)
        assert len(calls) == 14  # another latent scale misses
        entry = sorted((tmp_path / "cache").glob("*.safetensors"))[0]
        entry.write_bytes(entry.read_bytes()[:40])  # truncated: encoded again, with a warning
        assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 10
        with pytest.warns(UserWarning, match="unreadable"):  # the three settings above ask for all ten again
            encode_cases(cases, ae, 1.0, [8, 8, 8], **kwargs)
            encode_cases(cases, ae, 1.0, [8, 8, 8], mask_dilation_cells=1, **kwargs)
            encode_cases(cases, ae, 2.0, [8, 8, 8], **kwargs)
        assert len(calls) == 15
        with torch.no_grad():
            next(iter(ae.parameters())).add_(0.01)  # another encoder misses
        encode_cases(cases, ae, 1.0, [8, 8, 8], **kwargs)
        assert len(calls) == 19
    finally:
        del ae.encode_volume


def test_tumor_curve_types_are_measured_in_the_original_intensities(dataset):
    from scipy import ndimage

    from SynBTLib.training.data import tumor_curve_classes

    case = load_cases(dataset, need_tumors=True, progress=False)[0]
    components, count = ndimage.label(case.tumor)
    assert tumor_curve_classes(case, case.image, case.tumor, components, count, 1).tolist() == [1]  # rising: persistent
    low, high = case.intensity_range
    raw = case.image * (high - low) + low
    for post2, expected in ((raw[1], 2), (raw[0] + 0.5 * (raw[1] - raw[0]), 3)):  # flat: plateau; falling: washout
        image = (np.stack([raw[0], raw[1], post2]) - low) / (high - low)
        assert tumor_curve_classes(case, image, case.tumor, components, count, 1).tolist() == [expected]
    assert tumor_curve_classes(case, case.image[:2], case.tumor, components, count, 1).tolist() == [0]  # 2 phases


def test_diffusion_kinetic_conditioning_records_frequencies_and_the_pipeline_obeys(dataset, autoencoder_run, tmp_path):
    from SynBTLib.io import read_case, read_mask
    from SynBTLib.pipeline import SynthesisPipeline

    config = {**DIFFUSION_CONFIG, "training": {**DIFFUSION_CONFIG["training"], "steps": 2}, "kinetic_conditioning": True}
    run = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "k", config, verbose=False)
    bundle = load_bundle(run.bundle)
    assert bundle.denoiser.config.kinetic_classes is True
    frequencies = bundle.config["kinetic_frequencies"]
    assert frequencies["persistent"] == 2 and sum(frequencies.values()) == 2  # 2 whole tumors, all rising (flips not counted)
    pipeline = SynthesisPipeline.from_bundle(run.bundle)
    assert pipeline.kinetic_choices == ("persistent", "plateau", "washout")
    assert {pipeline.choose_kinetics(None, seed) for seed in range(20)} == {"persistent"}  # as trained
    assert pipeline.kinetic_frequencies == {"persistent": 2.0, "plateau": 0.0, "washout": 0.0}
    uniform = SynthesisPipeline.from_bundle(run.bundle, kinetic_frequencies=None)  # none given: every type alike
    assert {uniform.choose_kinetics(None, seed) for seed in range(30)} == set(uniform.kinetic_choices)
    with pytest.raises(SynBTError, match="kinetic_frequencies"):
        SynthesisPipeline.from_bundle(run.bundle, kinetic_frequencies={"washout": -1})
    case = read_case(sorted((dataset / "case0").glob("phase_*.nii.gz")))
    mask = read_mask(dataset / "case0" / "tumor_labels.nii.gz", case.geometry)
    washout = pipeline(case, mask, seed=0, steps=2, kinetics="washout")
    assert np.array_equal(washout.phases, pipeline(case, mask, seed=0, steps=2, kinetics="washout").phases)
    assert not np.array_equal(washout.phases, pipeline(case, mask, seed=0, steps=2, kinetics="plateau").phases)
    with pytest.raises(SynBTError, match="'rising'"):
        pipeline(case, mask, seed=0, steps=2, kinetics="rising")
    for bad in (0.0, 1.0, 2):
        with pytest.raises(SynBTError, match="kinetics_dropout"):
            train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "bad", {**config, "kinetics_dropout": bad},
                            verbose=False)
        assert not (tmp_path / "bad").exists()  # refused before a case is read or a folder made
    assert pipeline.describe(3) == {"kinetics": "persistent"} and pipeline.describe(3, "plateau") == {"kinetics": "plateau"}
    with pytest.raises(SynBTError, match="kinetic"):
        train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "ft",
                        {**config, "kinetic_conditioning": False, "finetune": {"bundle": str(run.bundle)}}, verbose=False)


def test_whole_tumor_types_skip_fragments_and_read_the_original_intensities(dataset):
    from SynBTLib.training.data import whole_tumor_types, whole_tumors

    case = load_cases(dataset, need_tumors=True, progress=False)[0]
    tumor = case.tumor.copy()
    tumor[0, 0, 0] = 1  # a one-voxel fragment: not a tumor of its own
    assert whole_tumor_types(case, case.image, whole_tumors(tumor)) == ["persistent"]
    washout = case.image.copy()
    washout[2][case.tumor > 0] = washout[1][case.tumor > 0] - 0.2  # the last phase falls well below the peak
    assert whole_tumor_types(case, washout, whole_tumors(case.tumor)) == ["washout"]


def test_weighted_mse_counts_the_masked_error_by_its_weight():
    from SynBTLib.training.diffusion import weighted_mse

    target = torch.zeros(1, 2, 2, 2, 2)
    prediction = torch.zeros_like(target)
    prediction[:, :, 0, 0, 0] = 1.0  # error in one voxel, both channels
    uniform = torch.ones(1, 1, 2, 2, 2)
    assert weighted_mse(prediction, target, uniform).item() == pytest.approx(
        torch.nn.functional.mse_loss(prediction, target).item())
    heavy = uniform.clone()
    heavy[:, :, 0, 0, 0] = 9.0  # that voxel now counts 9 of 16 weight units
    assert weighted_mse(prediction, target, heavy).item() == pytest.approx(9 / 16)


def test_diffusion_mask_loss_weight_changes_the_training_and_is_validated(dataset, autoencoder_run, tmp_path):
    from SynBTLib.errors import SynBTError

    config = {**DIFFUSION_CONFIG, "training": {**DIFFUSION_CONFIG["training"], "steps": 2}}
    plain = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "plain", config, verbose=False)
    weighted = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "weighted",
                               {**config, "mask_loss_weight": 20.0}, verbose=False)
    assert weighted.losses["loss"] != pytest.approx(plain.losses["loss"], rel=1e-6)
    assert load_bundle(weighted.bundle).config["training"]["config"]["mask_loss_weight"] == 20.0
    with pytest.raises(SynBTError, match="mask_loss_weight"):
        train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "neg", {**config, "mask_loss_weight": -1},
                        verbose=False)
    assert not (tmp_path / "neg").exists()
    with pytest.raises(SynBTError, match="mask_loss_balanced"):
        train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "bal", {**config, "mask_loss_balanced": "yes"},
                        verbose=False)
    assert not (tmp_path / "bal").exists()
    with pytest.raises(SynBTError, match="mask_loss_balanced.*mask_loss_weight"):
        train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "bal0",
                        {**config, "mask_loss_weight": 0.0, "mask_loss_balanced": True}, verbose=False)


def test_diffusion_records_its_context_margin_for_the_pipeline(dataset, autoencoder_run, tmp_path):
    from SynBTLib.pipeline import SynthesisPipeline

    config = {**DIFFUSION_CONFIG, "training": {**DIFFUSION_CONFIG["training"], "steps": 1}, "context_margin_mm": 9.0}
    run = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "m", config, verbose=False)
    assert load_bundle(run.bundle).config["context_margin_mm"] == 9.0
    assert SynthesisPipeline.from_bundle(run.bundle).context_margin_mm == 9.0
    for bad in (0, -3, "wide"):
        with pytest.raises(SynBTError, match="context_margin_mm"):
            train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "bad", {**config, "context_margin_mm": bad},
                            verbose=False)
    assert not (tmp_path / "bad").exists()


def _campaign(tmp_path, jobs, stop_file):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    with open(tmp_path / "campaign.out", "w") as out, open(tmp_path / "campaign.err", "w") as err:  # files: never full
        return subprocess.Popen(
            [sys.executable, str(root / "bench" / "train_campaign.py"), str(tmp_path / "jobs.json"),
             "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), "--stop-file", str(stop_file)],
            stdout=out, stderr=err, text=True,
        )


def _finished(campaign, tmp_path) -> tuple[str, str]:
    campaign.wait(timeout=3600)  # only against a hang
    return (tmp_path / "campaign.out").read_text(), (tmp_path / "campaign.err").read_text()


@pytest.mark.slow  # two training processes end to end: run by CI (pytest -m slow)
def test_train_campaign_runs_jobs_in_parallel_and_a_deadline_still_yields_a_bundle(dataset, autoencoder_run, tmp_path):
    """The deadline is a stop file created once the diffusion job is done and the endless autoencoder job has a
    checkpoint: what happens no longer depends on how fast the machine is."""
    import tarfile
    import time

    long_ae = {**AE_CONFIG, "training": {**AE_CONFIG["training"], "steps": 10**6, "checkpoint_every": 2}}
    jobs = [
        {"name": "ae", "kind": "ae", "data": str(dataset), "config": long_ae},
        {"name": "diffusion", "kind": "diffusion", "data": str(dataset), "autoencoder": str(autoencoder_run.bundle),
         "config": DIFFUSION_CONFIG, "latent_cache": str(tmp_path / "latent_cache")},
    ]
    stop = tmp_path / "stop"
    campaign = _campaign(tmp_path, jobs, stop)
    diffusion_log, ae_checkpoint = tmp_path / "runs" / "diffusion.log", tmp_path / "runs" / "ae" / CHECKPOINT_FILE
    hang_guard = time.monotonic() + 3600  # only against a hang: nothing below depends on speed
    while not (ae_checkpoint.is_file() and diffusion_log.is_file() and "diffusion: complete" in diffusion_log.read_text()):
        assert campaign.poll() is None, (tmp_path / "campaign.err").read_text()[-2000:]
        assert time.monotonic() < hang_guard, "the campaign made no progress"
        time.sleep(0.5)
    stop.touch()
    stdout, stderr = _finished(campaign, tmp_path)
    assert campaign.returncode == 0, stderr[-2000:]
    assert "diffusion: complete" in stdout
    assert "ae: deadline at step" in stdout
    assert any((tmp_path / "latent_cache").glob("*.safetensors"))  # the job's latent cache was used
    for name in ("ae", "diffusion"):
        with tarfile.open(tmp_path / "out" / f"{name}.tar") as tar:
            tar.extractall(tmp_path / "extracted", filter="data")
        bundle = load_bundle(tmp_path / "extracted" / name / "bundle")
        assert (bundle.denoiser is not None) == (name == "diffusion")
    steps = load_bundle(tmp_path / "extracted" / "ae" / "bundle").config["training"]["steps"]
    assert steps > 0 and steps % 2 == 0  # the last checkpoint's step


def test_train_campaign_deadline_before_the_first_checkpoint_reports_no_bundle(dataset, tmp_path):
    import tarfile

    rare = {**AE_CONFIG, "training": {**AE_CONFIG["training"], "steps": 10**6, "checkpoint_every": 10**6}}
    stop = tmp_path / "stop"
    stop.touch()  # the deadline has passed before the first step
    campaign = _campaign(tmp_path, [{"name": "early", "kind": "ae", "data": str(dataset), "config": rare}], stop)
    stdout, stderr = _finished(campaign, tmp_path)
    assert campaign.returncode == 0, stderr[-2000:]
    assert "early: deadline at step" in stdout and "before the first checkpoint: no bundle" in stdout
    with tarfile.open(tmp_path / "out" / "early.tar") as tar:
        assert not any("bundle" in name for name in tar.getnames())


# ---- decoder fine-tuning on a frozen encoder, and putting the decoder under a diffusion bundle


def finetune_config(bundle, steps=4, part="decoder"):
    return {"finetune": {"bundle": str(bundle), "part": part},
            "training": {**AE_CONFIG["training"], "steps": steps, "seed": 9, "lr": 3e-3},
            "data": AE_CONFIG["data"], "latent_scale_patches": 4}


def test_decoder_finetune_keeps_encoder_and_latent_scale_and_resumes_exactly(dataset, autoencoder_run, tmp_path):
    source = load_bundle(autoencoder_run.bundle)
    config = finetune_config(autoencoder_run.bundle)
    run = train_autoencoder(dataset, tmp_path / "ft", config, verbose=False)
    tuned = load_bundle(run.bundle)
    assert all(torch.equal(a, b) for a, b in zip(source.autoencoder.encoder_parameters(), tuned.autoencoder.encoder_parameters()))
    decoder = dict(tuned.autoencoder.net.decoder.named_parameters())
    assert any(not torch.equal(p, decoder[n]) for n, p in source.autoencoder.net.decoder.named_parameters())
    assert tuned.latent_scale == source.latent_scale
    assert tuned.config["finetuned_from"]["sha256"] == source.sha256
    assert tuned.config["finetuned_from"]["part"] == "decoder"
    assert all(float(r["consistency"]) == 0 for r in log_rows(tmp_path / "ft" / LOG_FILE))

    # interrupted after step 3 (checkpoint at 2) and resumed: the same weights as the run above
    with pytest.raises(Stop):
        train_autoencoder(dataset, tmp_path / "cut", config, verbose=False, progress=stop_after(3))
    train_autoencoder(dataset, tmp_path / "cut", config, resume=True, verbose=False)
    a, b = weights_of(tmp_path / "ft" / CHECKPOINT_FILE)["autoencoder"], weights_of(tmp_path / "cut" / CHECKPOINT_FILE)["autoencoder"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_decoder_finetune_lowers_the_reconstruction_error_of_latent_means(dataset, autoencoder_run, tmp_path):
    cases = load_cases(dataset, progress=False)
    patches = torch.from_numpy(PatchSampler(cases, (16, 16, 16), seed=123).sample(0, 4))

    def error(bundle):
        autoencoder = load_bundle(bundle).autoencoder
        with torch.no_grad():
            mu, _ = autoencoder.encode(patches)
            return torch.nn.functional.l1_loss(autoencoder.decode(mu), patches).item()

    run = train_autoencoder(dataset, tmp_path / "ft", finetune_config(autoencoder_run.bundle, steps=20), verbose=False)
    assert error(run.bundle) < error(autoencoder_run.bundle)


def test_decoder_trained_on_noisy_latents_decodes_noisy_latents_better(dataset, autoencoder_run, tmp_path):
    cases = load_cases(dataset, progress=False)
    patches = torch.from_numpy(PatchSampler(cases, (16, 16, 16), seed=123).sample(0, 4))
    with torch.no_grad():
        sigma = 0.5 * load_bundle(autoencoder_run.bundle).autoencoder.encode(patches)[0].std().item()

    def noisy_error(bundle):
        autoencoder = load_bundle(bundle).autoencoder
        generator = torch.Generator().manual_seed(5)
        with torch.no_grad():
            mu, _ = autoencoder.encode(patches)
            noisy = mu + sigma * torch.randn(mu.shape, generator=generator)
            return torch.nn.functional.l1_loss(autoencoder.decode(noisy), patches).item()

    config = finetune_config(autoencoder_run.bundle, steps=20)
    plain = train_autoencoder(dataset, tmp_path / "plain", config, verbose=False)
    robust = train_autoencoder(dataset, tmp_path / "robust", {**config, "loss": {"decoder_latent_noise": sigma}},
                               verbose=False)
    assert noisy_error(robust.bundle) < noisy_error(plain.bundle)


def test_finetune_refuses_bad_settings_before_writing_anything(dataset, autoencoder_run, tmp_path):
    bad = [
        ({**finetune_config(autoencoder_run.bundle), "finetune": {"bundle": str(autoencoder_run.bundle), "part": "encoder"}},
         "finetune.part"),
        ({**finetune_config(autoencoder_run.bundle), "autoencoder": {"channels": [4, 8, 8]}}, "sets channels"),
        (finetune_config(tmp_path / "nowhere"), "does not exist"),
        ({**finetune_config(autoencoder_run.bundle), "finetune": "yes"}, "finetune must be"),
        ({**finetune_config(autoencoder_run.bundle, part="all"), "loss": {"decoder_latent_noise": 0.1}},
         "needs a decoder fine-tune"),
        ({**finetune_config(autoencoder_run.bundle), "loss": {"decoder_latent_noise": -1}}, "decoder_latent_noise"),
    ]
    for config, message in bad:
        with pytest.raises(SynBTError, match=message):
            train_autoencoder(dataset, tmp_path / "out", config, verbose=False)
        assert not (tmp_path / "out").exists()


def test_replace_decoder_keeps_the_denoiser_and_refuses_another_latent_space(dataset, autoencoder_run, tmp_path, capsys):
    from SynBTLib.bundle import replace_decoder
    from SynBTLib.pipeline import SynthesisPipeline

    config = {**DIFFUSION_CONFIG, "training": {**DIFFUSION_CONFIG["training"], "steps": 1}}
    diffusion = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "diff", config, verbose=False).bundle
    tuned = train_autoencoder(dataset, tmp_path / "ft", finetune_config(autoencoder_run.bundle), verbose=False).bundle
    # a calibrated base bundle: the image calibration belongs to its old decoder, the latent one to its latent space
    from SynBTLib.bundle import write_checksums
    from SynBTLib.calibration import ImageCalibration, LatentCalibration

    channels = load_bundle(diffusion).autoencoder.config.latent_channels
    base_config = json.loads((diffusion / "config.json").read_text())
    base_config.update(LatentCalibration((0.1,) * channels, (0.9,) * channels).to_config())
    base_config.update(ImageCalibration((0.0, 0.1, 0.1), (0.5, 1.0, 1.0)).to_config())
    (diffusion / "config.json").write_text(json.dumps(base_config))
    write_checksums(diffusion)
    sums_before = (diffusion / "SHA256SUMS").read_text()

    assert cli.main(["replace-decoder", "--bundle", str(diffusion), "--decoder", str(tuned),
                     "--out", str(tmp_path / "combined")]) == 0
    combined, base, donor = load_bundle(tmp_path / "combined"), load_bundle(diffusion), load_bundle(tuned)
    assert all(torch.equal(a, b) for a, b in zip(combined.denoiser.state_dict().values(), base.denoiser.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(combined.autoencoder.state_dict().values(), donor.autoencoder.state_dict().values()))
    assert combined.latent_scale == base.latent_scale and combined.config["decoder_from"]["sha256"] == donor.sha256
    assert combined.calibration == base.calibration is not None
    assert base.image_calibration is not None and combined.image_calibration is None
    assert (diffusion / "SHA256SUMS").read_text() == sums_before  # the input is untouched
    SynthesisPipeline.from_bundle(tmp_path / "combined")

    # a fully fine-tuned autoencoder has another encoder: its latents would not fit the denoiser
    other = train_autoencoder(dataset, tmp_path / "all", finetune_config(autoencoder_run.bundle, part="all"), verbose=False)
    with pytest.raises(SynBTError, match=re.escape(str(other.bundle))):
        replace_decoder(diffusion, other.bundle, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    capsys.readouterr()
    assert cli.main(["replace-decoder", "--bundle", str(diffusion), "--decoder", str(tuned), "--out", str(diffusion)]) == 2
    err = capsys.readouterr().err
    assert str(diffusion) in err and len(err.strip().splitlines()) == 1


def test_kinetic_term_is_logged_changes_the_training_and_is_validated(dataset, tmp_path):
    config = {**AE_CONFIG, "training": {**AE_CONFIG["training"], "steps": 2}}
    plain = train_autoencoder(dataset, tmp_path / "plain", config, verbose=False)
    kinetic = train_autoencoder(dataset, tmp_path / "kin", {**config, "loss": {"kinetic_weight": 2.0}}, verbose=False)
    rows = log_rows(tmp_path / "kin" / LOG_FILE)
    assert all(float(r["kinetic"]) > 0 for r in rows)
    # step 1's loss is l1 + kl term + consistency term + 2 * kinetic: the kinetic share is there
    assert float(rows[0]["loss"]) > float(log_rows(tmp_path / "plain" / LOG_FILE)[0]["loss"]) + float(rows[0]["kinetic"])
    assert kinetic.losses["loss"] != pytest.approx(plain.losses["loss"], rel=1e-6)
    assert "kinetic" not in log_rows(tmp_path / "plain" / LOG_FILE)[0]
    for bad in (-1, "strong"):
        with pytest.raises(SynBTError, match="kinetic_weight"):
            train_autoencoder(dataset, tmp_path / "bad", {**config, "loss": {"kinetic_weight": bad}}, verbose=False)
    assert not (tmp_path / "bad").exists()


def test_diffusion_finetune_continues_the_denoiser_in_the_same_latent_space_only(dataset, autoencoder_run, tmp_path):
    config = {**DIFFUSION_CONFIG, "training": {**DIFFUSION_CONFIG["training"], "steps": 2}}
    first = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "first", config, verbose=False)
    # a vanishing learning rate: the continued denoiser must end where the first one did
    more = {"training": {**config["training"], "seed": 5, "lr": 1e-12}, "data": config["data"],
            "finetune": {"bundle": str(first.bundle)}}
    continued = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "more", more, verbose=False)
    start = load_bundle(first.bundle).denoiser.state_dict()
    end = load_bundle(continued.bundle).denoiser.state_dict()
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start)
    bundle = load_bundle(continued.bundle)
    assert bundle.config["denoiser"] == load_bundle(first.bundle).config["denoiser"]
    assert bundle.config["finetuned_from"]["sha256"] == load_bundle(first.bundle).sha256

    other_ae = train_autoencoder(dataset, tmp_path / "ae2", {**AE_CONFIG, "training": {**AE_CONFIG["training"], "seed": 3}},
                                 verbose=False)
    refusals = [
        ((other_ae.bundle, more), "another latent space"),
        ((autoencoder_run.bundle, {**more, "denoiser": {"channels": [4, 8, 8]}}), "sets channels"),
        ((autoencoder_run.bundle, {**more, "finetune": {"bundle": str(autoencoder_run.bundle)}}), "no denoiser"),
        ((autoencoder_run.bundle, {**more, "latent_normalization": "channel"}), "latent_normalization"),
    ]
    for (ae, cfg), message in refusals:
        with pytest.raises(SynBTError, match=message):
            train_diffusion(dataset, ae, tmp_path / "refused", cfg, verbose=False)
        assert not (tmp_path / "refused").exists()
    # ... unless a warm start in another latent space is asked for by name
    warm = {**more, "finetune": {"bundle": str(first.bundle), "warm_start": True}}
    run = train_diffusion(dataset, other_ae.bundle, tmp_path / "warm", warm, verbose=False)
    assert load_bundle(run.bundle).latent_scale == pytest.approx(load_bundle(other_ae.bundle).latent_scale)


def test_linear_path_run_starts_from_the_block_pca_and_resumes_exactly(dataset, autoencoder_run, tmp_path):
    config = {**AE_CONFIG, "autoencoder": {"channels": [8, 16], "latent_channels": 16, "linear_path": True},
              "training": {**AE_CONFIG["training"], "steps": 4}, "pca_patches": 8}
    run = train_autoencoder(dataset, tmp_path / "whole", config, verbose=False)
    rows = log_rows(tmp_path / "whole" / LOG_FILE)
    # the first step already reconstructs like the 16-of-24 block code, far better than a random start
    assert float(rows[0]["l1"]) < 0.3 * float(log_rows(autoencoder_run.out / LOG_FILE)[0]["l1"])
    bundle = load_bundle(run.bundle)
    assert bundle.autoencoder.config.linear_path is True
    assert 0.9 < bundle.config["linear_path_init"]["variance_kept"] <= 1.0

    out = tmp_path / "interrupted"  # resuming takes the checkpoint's weights, not a refitted code
    with pytest.raises(Stop):
        train_autoencoder(dataset, out, config, verbose=False, progress=stop_after(3))
    train_autoencoder(dataset, out, config, resume=True, verbose=False)
    reference, final = weights_of(tmp_path / "whole" / CHECKPOINT_FILE)["autoencoder"], weights_of(out / CHECKPOINT_FILE)["autoencoder"]
    assert all(torch.equal(reference[k], final[k]) for k in reference)


def test_a_balanced_mask_loss_gives_every_tumor_the_same_share_whatever_its_size():
    from SynBTLib.training.diffusion import loss_weight

    region = torch.zeros(3, 1, 6, 6, 6)
    region[0, 0, :1, :1, :2] = 1  # 2 cells
    region[1, 0, :2, :2, :2] = 1  # 8 cells
    extra = lambda w: (w - 1.0).sum(dim=(1, 2, 3, 4))  # noqa: E731
    plain, balanced = loss_weight(region, 2.0), loss_weight(region, 2.0, balanced=True)
    assert extra(plain).tolist() == [4.0, 16.0, 0.0]
    torch.testing.assert_close(extra(balanced), torch.tensor([10.0, 10.0, 0.0]))  # same total, shared alike
    assert torch.equal(balanced[region == 0], torch.ones(int((region == 0).sum())))
    assert torch.equal(loss_weight(torch.zeros(2, 1, 3, 3, 3), 5.0, balanced=True), torch.ones(2, 1, 3, 3, 3))


def test_necrosis_conditioning_widens_a_finetuned_denoiser_and_the_pipeline_makes_cores(dataset, autoencoder_run,
                                                                                          tmp_path):
    from SynBTLib.io import read_case, read_mask
    from SynBTLib.necrosis import necrotic_core
    from SynBTLib.pipeline import SynthesisPipeline

    necrotic_data = tmp_path / "necrotic"
    for k in range(2):
        write_case(necrotic_data / f"case{k}", seed=k, core_radius=2.5)
    config = {**DIFFUSION_CONFIG, "training": {**DIFFUSION_CONFIG["training"], "steps": 2}}
    plain = train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "plain", config, verbose=False)
    tuned = train_diffusion(necrotic_data, autoencoder_run.bundle, tmp_path / "tuned",
                            {**config, "necrosis_conditioning": True, "finetune": {"bundle": str(plain.bundle)}},
                            verbose=False)
    source, bundle = load_bundle(plain.bundle), load_bundle(tuned.bundle)
    assert bundle.denoiser.config.necrosis and not source.denoiser.config.necrosis
    assert bundle.denoiser.config.mask_channels == source.denoiser.config.mask_channels + 4**3  # compression 4
    stats = bundle.config["necrosis"]
    assert stats["tumors"] == 2 and stats["necrotic"] == 2 and stats["frequency"] == 1.0  # unflipped tumors
    assert 0 < stats["core_fraction"][0] <= stats["core_fraction"][1] < 0.5

    pipeline = SynthesisPipeline.from_bundle(tuned.bundle)
    case = read_case(sorted((necrotic_data / "case0").glob("phase_*.nii.gz")))
    mask = read_mask(necrotic_data / "case0" / "tumor_labels.nii.gz", case.geometry)
    spacing = case.geometry.spacing[::-1]
    drawn = pipeline.choose_core(None, 0, mask, spacing)
    assert drawn.any() and not np.any(drawn & (mask == 0))  # every training tumor was necrotic
    assert not pipeline.choose_core(False, 0, mask, spacing).any()
    assert pipeline.describe(0, mask=mask, spacing_zyx=spacing)["necrotic_core_voxels"] == int(drawn.sum())
    measured = necrotic_core(case.phases, mask)
    with_core = pipeline(case, mask, seed=1, steps=2, necrosis=measured)
    without = pipeline(case, mask, seed=1, steps=2, necrosis=False)
    assert np.array_equal(with_core.phases, pipeline(case, mask, seed=1, steps=2, necrosis=measured).phases)
    assert not np.array_equal(with_core.phases, without.phases)
    changed = np.any(with_core.phases != without.phases, axis=0)
    assert changed.any() and not changed[case.phases[0] == 0].any()  # only where the tumor is generated
    with pytest.raises(SynBTError, match="necrosis"):
        pipeline(case, mask, seed=1, steps=2, necrosis="yes")
    from SynBTLib.calibration import ImageCalibration

    widened = SynthesisPipeline.from_bundle(  # the image stage's necrotic factor reaches only tumors with a core
        tuned.bundle, image_calibration=ImageCalibration((0.0,) * 3, (1.0,) * 3, necrotic_factor=(2.0,) * 3))
    np.testing.assert_allclose(widened(case, mask, seed=1, steps=2, necrosis=False).phases, without.phases, atol=1e-3)
    spread = widened(case, mask, seed=1, steps=2, necrosis=measured).phases
    assert not np.array_equal(spread, with_core.phases) and np.array_equal(spread[:, mask == 0], with_core.phases[:, mask == 0])
    with pytest.raises(SynBTError, match="without necrotic cores"):
        SynthesisPipeline.from_bundle(plain.bundle)(case, mask, seed=1, steps=2, necrosis=True)
    with pytest.raises(SynBTError, match="necrosis_conditioning"):
        train_diffusion(necrotic_data, autoencoder_run.bundle, tmp_path / "off",
                        {**config, "finetune": {"bundle": str(tuned.bundle)}}, verbose=False)
    plain_pipeline = SynthesisPipeline.from_bundle(plain.bundle)
    with pytest.raises(SynBTError, match="necrosis"):
        plain_pipeline(case, mask, seed=1, steps=2, necrosis="yes")
    with pytest.raises(SynBTError, match="necrotic core"):
        pipeline(case, mask, seed=1, steps=2, necrosis=(mask == 0))
    with pytest.raises(SynBTError, match="necrosis_conditioning"):
        train_diffusion(dataset, autoencoder_run.bundle, tmp_path / "none", {**config, "necrosis_conditioning": True},
                        verbose=False)
    with pytest.raises(SynBTError, match="mask_encoding.*'cells'"):
        train_diffusion(necrotic_data, autoencoder_run.bundle, tmp_path / "enc",
                        {**config, "mask_encoding": "voxels", "finetune": {"bundle": str(tuned.bundle)}}, verbose=False)
    with pytest.raises(SynBTError, match="necrosis_conditioning"):
        train_diffusion(necrotic_data, autoencoder_run.bundle, tmp_path / "bad",
                        {**config, "necrosis_conditioning": "yes"}, verbose=False)


def test_widened_input_starts_as_the_source_denoiser():
    from SynBTLib.nets.denoiser import DenoiserConfig, MaskConditionedDenoiser
    from SynBTLib.training.diffusion import widened_input

    small = dict(latent_channels=2, channels=(8, 8), attention_levels=(False, False), num_head_channels=8)
    torch.manual_seed(0)
    source = MaskConditionedDenoiser(DenoiserConfig(**small, mask_channels=1)).eval()
    wide = MaskConditionedDenoiser(DenoiserConfig(**small, mask_channels=9, necrosis=True)).eval()
    wide.load_state_dict(widened_input(source.state_dict(), wide.state_dict()))
    noisy, context = torch.randn(1, 2, 4, 4, 4), torch.randn(1, 2, 4, 4, 4)
    mask = torch.ones(1, 1, 4, 4, 4)
    with torch.no_grad():
        before = source(noisy, context, mask, 10)
        after = wide(noisy, context, torch.cat([mask, torch.zeros(1, 8, 4, 4, 4)], 1), 10)
        core = wide(noisy, context, torch.cat([mask, torch.ones(1, 8, 4, 4, 4)], 1), 10)
    assert torch.allclose(before, after, atol=1e-6) and torch.equal(before, core)  # new weights start at 0
    with pytest.raises(SynBTError, match="cannot continue"):
        widened_input(wide.state_dict(), source.state_dict())
