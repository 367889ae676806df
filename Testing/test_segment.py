"""`synbt segment`: a model trained by train-seg, applied to cases; its output feeds `synbt evaluate`."""
import csv
import importlib.util
import json

import numpy as np
import pytest

from SynBTLib import cli
from SynBTLib.errors import SynBTError
from SynBTLib.io import read_case, read_image
from SynBTLib.phantom import make_phantom, write_phantom
from SynBTLib.segment import find_model, load_segmenter, segment_case
from SynBTLib.training.segmentation import train_segmentation

TINY = {
    "model": {"channels": [8, 16, 32], "num_res_units": 1},
    "training": {"steps": 4, "batch_size": 2, "lr": 2e-3, "warmup_steps": 1},
    "data": {"patch_size": [8, 32, 32], "steps_per_epoch": 2},
    "validation": {"sw_batch_size": 4},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment_data")
    for k in range(2):
        phantom = make_phantom(seed=30 + k, shape=(64, 64, 24), tumors=1, tumor_diameters_mm=16.0)
        write_phantom(phantom, root / f"case_{k}", montage=False)
    return root


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("segment_run") / "run"
    train_segmentation(dataset, out, TINY, verbose=False)
    return out


def test_segment_writes_labels_that_evaluate_reads(dataset, run_dir, tmp_path, capsys):
    pred = tmp_path / "pred"
    assert cli.main(["segment", "--model", str(run_dir), "--data", str(dataset), "--out", str(pred)]) == 0
    assert sorted(p.name for p in pred.iterdir()) == ["case_0.nii.gz", "case_1.nii.gz"]
    segmenter = load_segmenter(run_dir / "model")
    for k in range(2):
        case = read_case(dataset / f"case_{k}")
        values, geometry = read_image(pred / f"case_{k}.nii.gz")
        assert geometry.matches(case.geometry) and set(np.unique(values)) <= {0, 1}
        # the CLI and the Qt-free function the Slicer module calls give the same mask
        assert np.array_equal(values, segment_case(segmenter, case))
    # one case by its phases: the file is named after the case folder, or --name
    single = tmp_path / "single"
    assert cli.main(["segment", "--model", str(run_dir / "model"), "--phases", str(dataset / "case_1"),
                     "--out", str(single), "--name", "mine"]) == 0
    assert np.array_equal(read_image(single / "mine.nii.gz")[0], read_image(pred / "case_1.nii.gz")[0])

    # the predictions folder and the data set itself (its case folders' tumor labels) go straight to evaluate
    assert cli.main(["evaluate", "--pred", str(pred), "--truth", str(dataset), "--out", str(tmp_path / "ev")]) == 0
    with open(tmp_path / "ev" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["case_0", "case_1"] and all(0 <= float(r["dice"]) <= 1 for r in rows)
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["cases"] == 2
    capsys.readouterr()


def test_segment_refuses_bad_arguments_before_loading_the_model(dataset, run_dir, tmp_path, capsys):
    # a model whose weights cannot load: every refusal below must come first, naming its own problem
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not weights")
    (broken / "config.json").write_text((run_dir / "model" / "config.json").read_text())
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("user data")
    for argv, named in (
        (["--data", str(dataset), "--out", str(full)], "--overwrite"),
        (["--data", str(dataset), "--out", str(dataset / "case_0" / "pred")], "inside the input"),
        (["--data", str(dataset), "--name", "x", "--out", str(tmp_path / "a")], "--name"),
        (["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")], "nowhere"),
    ):
        assert cli.main(["segment", "--model", str(broken), *argv]) == 2
        err = capsys.readouterr().err
        assert named in err and "safetensors" not in err and len(err.strip().splitlines()) == 1
    assert (full / "keep.txt").read_text() == "user data" and not (tmp_path / "a").exists()
    # then the model itself
    assert cli.main(["segment", "--model", str(broken), "--data", str(dataset), "--out", str(tmp_path / "c")]) == 2
    assert "safetensors" in capsys.readouterr().err
    assert cli.main(["segment", "--model", str(dataset), "--data", str(dataset), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert str(dataset) in err and len(err.strip().splitlines()) == 1


def _fake_nnunet_model(root):
    model = root / "nnUNet_results" / "Dataset502_SynBTSeg" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "pre", "1": "post1", "2": "post2"}}))
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    return model


def test_nnunet_models_are_recognised_from_the_train_seg_run_folder(tmp_path):
    model = _fake_nnunet_model(tmp_path / "nn")
    for given in (tmp_path / "nn", model):
        ref = find_model(given)
        assert ref.engine == "nnunet" and ref.path == model
    (model / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(SynBTError, match="fold"):
        find_model(tmp_path / "nn")


@pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is not None, reason="nnunetv2 is installed here")
def test_nnunet_model_without_nnunet_says_how_to_install(dataset, tmp_path, capsys):
    _fake_nnunet_model(tmp_path / "nn")
    assert cli.main(["segment", "--model", str(tmp_path / "nn"), "--data", str(dataset), "--out", str(tmp_path / "o")]) == 2
    assert "nnunetv2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_evaluate_names_the_layouts_it_accepts_when_truth_holds_no_labels(dataset, tmp_path, capsys):
    unlabelled = tmp_path / "unlabelled"
    write_phantom(make_phantom(seed=30, shape=(64, 64, 24)), unlabelled / "case_0", montage=False)
    (unlabelled / "case_0" / "tumor_labels.nii.gz").unlink()
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "case_0.nii.gz").write_bytes((dataset / "case_0" / "tumor_labels.nii.gz").read_bytes())
    assert cli.main(["evaluate", "--pred", str(pred), "--truth", str(unlabelled), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--truth" in err and "tumor_labels.nii.gz" in err and "labelsTr" in err and len(err.splitlines()) == 1
