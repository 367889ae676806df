"""Segmentation training: on-the-fly synthetic tumors, exact resume, the model it writes, the CLI."""
import csv
import importlib.util

import numpy as np
import pytest
import torch

from SynBTLib import cli
from SynBTLib.handcrafted import HandcraftedSynthesizer
from SynBTLib.io import read_case
from SynBTLib.phantom import make_phantom, write_phantom
from SynBTLib.training.common import CHECKPOINT_FILE, LOG_FILE, read_checkpoint
from SynBTLib.training.onthefly import OnTheFlyTumors, synthetic_loader
from SynBTLib.training.segmentation import (
    NNUNET_MISSING,
    TumorPatchSampler,
    load_model,
    load_segmentation_cases,
    predict_case,
    synthetic_count,
    train_segmentation,
)

TINY = {
    "model": {"channels": [8, 16, 32], "num_res_units": 1},
    "training": {"epochs": 2, "batch_size": 2, "lr": 2e-3, "warmup_steps": 1},
    "data": {"patch_size": [8, 32, 32], "steps_per_epoch": 2},
    "validation": {"sw_batch_size": 8},
    "synthetic": {"mode": "on-the-fly", "method": "handcrafted", "ratio": 0.5, "workers": 0, "size_mm": [12, 20],
                  "kinds": ["ellipsoid"], "shape_pool": 2},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two small phantoms (64x64x24, one tumor each) in SynBT case folders."""
    root = tmp_path_factory.mktemp("seg_data")
    for k in range(2):
        phantom = make_phantom(seed=10 + k, shape=(64, 64, 24), tumors=1, tumor_diameters_mm=14.0)
        write_phantom(phantom, root / f"case_{k}", montage=False)
    return root


@pytest.fixture(scope="module")
def cases(dataset):
    return load_segmentation_cases(dataset, progress=False)


def _samples(cases, seed, workers, keys):
    dataset = OnTheFlyTumors(cases, HandcraftedSynthesizer(), seed=seed, patch_size=(8, 16, 16), size_mm=(12, 20),
                             shape_pool=2, kinds=("ellipsoid",))
    return list(synthetic_loader(dataset, keys, workers))


def test_onthefly_samples_depend_only_on_the_seed_not_the_workers(cases):
    keys = [(step, slot) for step in range(3) for slot in range(2)]
    single = _samples(cases, 0, 0, keys)
    assert all(image.shape == (3, 8, 16, 16) and image.dtype == np.float32 for image, _ in single)
    assert all(label.shape == (8, 16, 16) and label.any() for _, label in single)  # every patch holds its new tumor
    again = _samples(cases, 0, 0, keys)
    workers = _samples(cases, 0, 2, keys)
    for (a_img, a_lab), (b_img, b_lab), (c_img, c_lab) in zip(single, again, workers):
        assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
        assert np.array_equal(a_img, c_img) and np.array_equal(a_lab, c_lab)
    other = _samples(cases, 1, 0, keys[:2])
    assert not np.array_equal(other[0][0], single[0][0])


def test_onthefly_tumor_is_synthesized_into_the_real_tissue(cases):
    dataset = OnTheFlyTumors(cases, HandcraftedSynthesizer(), seed=3, patch_size=(8, 16, 16), size_mm=(12, 20),
                             shape_pool=2, kinds=("ellipsoid",), flip_x=False)
    image, label = dataset[(0, 0)]
    # the new tumor enhances: post-contrast minus pre-contrast is larger inside the label than around it
    enhancement = image[1] - image[0]
    assert enhancement[label > 0].mean() > enhancement[label == 0].mean()


def test_patch_sampler_and_synthetic_count(cases):
    sampler = TumorPatchSampler(cases, (8, 16, 16), seed=0, pos_fraction=0.0, flip_x=False)
    images, labels = sampler.sample(5, 4, stream=1, positive_only=True)
    assert images.shape == (4, 3, 8, 16, 16) and labels.shape == (4, 1, 8, 16, 16)
    assert all(labels[k, 0, 4, 8, 8] == 1 for k in range(4))  # centred on a tumor voxel
    again = sampler.sample(5, 4, stream=1, positive_only=True)
    assert np.array_equal(images, again[0])
    counts = [synthetic_count(0, step, 0, 4, 0.3) for step in range(2000)]
    assert set(counts) == {1, 2} and abs(np.mean(counts) / 4 - 0.3) < 0.02


class Stop(Exception):
    pass


def _stop_after(steps):
    def progress(done, total, message):
        if done == steps:
            raise Stop

    return progress


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_resume_gives_the_uninterrupted_run(dataset, tmp_path):
    straight = train_segmentation(dataset, tmp_path / "straight", TINY, val=dataset, verbose=False)
    with pytest.raises(Stop):
        train_segmentation(dataset, tmp_path / "resumed", TINY, val=dataset, verbose=False, progress=_stop_after(2))
    assert read_checkpoint(tmp_path / "resumed" / CHECKPOINT_FILE)["step"] == 2
    assert len(_rows(tmp_path / "resumed" / LOG_FILE)) == 2
    # the CLI resumes from the run's own config.json (and its --val folder)
    assert cli.main(["train-seg", "--data", str(dataset), "--out", str(tmp_path / "resumed"), "--resume"]) == 0

    rows, expected = _rows(tmp_path / "resumed" / LOG_FILE), _rows(tmp_path / "straight" / LOG_FILE)
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert rows == expected
    assert [bool(r["val_dice"]) for r in rows] == [False, True, False, True]  # validated every epoch
    assert {r["synthetic"] for r in rows} <= {"1"}  # ratio 0.5 of a batch of 2
    a = read_checkpoint(tmp_path / "straight" / CHECKPOINT_FILE)["models"]["segmentation"]
    b = read_checkpoint(tmp_path / "resumed" / CHECKPOINT_FILE)["models"]["segmentation"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    model = load_model(tmp_path / "resumed" / "model")
    assert model.config["step"] == straight.best_step and model.config["phases"] == 3
    case = read_case(dataset / "case_0")
    mask = predict_case(tmp_path / "resumed", case)
    assert mask.dtype == np.uint8 and mask.shape == case.shape and set(np.unique(mask)) <= {0, 1}
    assert np.array_equal(mask, predict_case(tmp_path / "straight" / "model", case))


def test_offline_synthetic_run_and_refusals(dataset, tmp_path, capsys):
    out = tmp_path / "offline"
    args = ["train-seg", "--data", str(dataset), "--out", str(out), "--steps", "2", "--batch-size", "2"]
    tiny = tmp_path / "tiny.json"
    tiny.write_text('{"model": {"channels": [8, 16, 32], "num_res_units": 1}, "data": {"patch_size": [8, 16, 16]}}')
    assert cli.main(args + ["--config", str(tiny), "--synthetic", "offline", str(dataset), "--ratio", "1.0"]) == 0
    assert [r["synthetic"] for r in _rows(out / LOG_FILE)] == ["2", "2"]
    assert (out / "model" / "model.safetensors").is_file()  # no --val: the final model

    capsys.readouterr()  # the run's progress
    for bad, named in ((["--synthetic", "offline"], "--synthetic"), (["--synthetic", "sometimes"], "sometimes"),
                       (["--config", str(tiny), "--ratio", "1.5"], "--ratio")):
        assert cli.main(args + bad) == 2
        err = capsys.readouterr().err
        assert named in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is not None, reason="nnunetv2 is installed here")
def test_nnunet_engine_without_nnunet_says_how_to_install(dataset, tmp_path, capsys):
    code = cli.main(["train-seg", "--data", str(dataset), "--out", str(tmp_path / "nn"), "--engine", "nnunet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(NNUNET_MISSING) and len(err.splitlines()) == 1
    assert not (tmp_path / "nn").exists()


def test_on_the_fly_run_says_which_synthesizer_makes_its_tumors(dataset, tmp_path, capsys):
    import json

    synthetic = {k: v for k, v in TINY["synthetic"].items() if k != "method"}  # the method left to the default
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({**TINY, "training": {"batch_size": 2, "warmup_steps": 1}, "synthetic": synthetic}))
    assert cli.main(["train-seg", "--data", str(dataset), "--out", str(tmp_path / "otf"), "--steps", "1",
                     "--config", str(tiny), "--synthetic", "on-the-fly"]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("on-the-fly synthesis")]
    assert len(said) == 1 and "handcrafted" in said[0] and "default" in said[0]
