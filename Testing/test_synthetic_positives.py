"""An offline synthetic set's positive patches are centred on its synthesized tumors, not on the source's lesions.

A `synbt export` case is a real case plus new tumors; its label holds both. The export writes a mask of only
the new tumors beside the label, and the synthetic sampler centres its positive patches on that mask while
the patches' labels stay the whole label. Sets exported before the masks existed keep the old centring.
"""
import csv
import json
import shutil

import numpy as np
import pytest

from SynBTLib import export
from SynBTLib.io import read_dataset, read_image, read_mask
from SynBTLib.phantom import make_phantom, write_phantom
from SynBTLib.store import prepare_store
from SynBTLib.training.segmentation import TumorPatchSampler, load_segmentation_cases, train_segmentation

PATCH = (8, 16, 16)
NUM_PHASES = 3


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Two phantom cases, each with a real lesion of 20 mm (larger than the synthetic tumors)."""
    root = tmp_path_factory.mktemp("positives")
    for k in range(2):
        phantom = make_phantom(seed=40 + k, shape=(64, 64, 24), phases=NUM_PHASES, tumors=1, tumor_diameters_mm=20.0)
        write_phantom(phantom, root / "real" / f"case_{k}", montage=False)
    return root / "real"


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory):
    """The same two synthetic cases (handcrafted tumors of 10-14 mm) in the nnU-Net and the MONAI layout."""
    root = tmp_path_factory.mktemp("exports")
    sets = {}
    for format in export.FORMATS:
        sets[format] = root / format
        settings = export.ExportSettings(num_cases=2, format=format, size_mm=(10.0, 14.0), seed=11)
        export.export_dataset(source, sets[format], settings, log=lambda message: None)
    return sets


def _label_minus_source(out, name):
    """(label, label voxels that are not the source case's own lesion) of an exported case."""
    provenance = json.loads((out / "provenance" / f"{name}.json").read_text())
    label_rel = next(rel for rel in provenance["files"] if rel.startswith(("labelsTr/", "cases/")) and "label" in rel)
    label, geometry = read_image(out / label_rel)
    source_lesion = read_mask(provenance["source_label"], geometry) > 0
    assert source_lesion.any() and np.all(label[source_lesion] == 1)  # the source's lesion is in the label
    return label, (label > 0) & ~source_lesion


def test_the_mask_beside_each_label_is_the_label_minus_the_source_lesions(exported):
    for format, out in exported.items():
        settings = export.ExportSettings(num_cases=2, format=format)
        refs = read_dataset(out if format == "nnunet" else out / "cases")
        assert [ref.case_id for ref in refs] == ["SynBT_000", "SynBT_001"]
        for ref in refs:
            assert len(ref.phase_paths) == NUM_PHASES  # the readers take the mask for neither a phase nor a label
            rel = export.mask_file(settings, ref.case_id)
            assert export.synthetic_mask_beside(ref.label_path) == out / rel
            assert not rel.startswith(("imagesTr/", "labelsTr/"))  # nnU-Net reads those folders only
            provenance = json.loads((out / "provenance" / f"{ref.case_id}.json").read_text())
            assert provenance["synthetic_tumors"] == rel and rel in provenance["files"]
            mask, geometry = read_image(out / rel)
            label, new = _label_minus_source(out, ref.case_id)
            assert geometry == read_image(ref.label_path)[1]
            assert set(np.unique(mask)) == {0, 1} and np.array_equal(mask > 0, new)
            assert int(mask.sum()) == sum(t["voxels"] for t in provenance["tumors"])
    entries = json.loads((exported["monai"] / "datalist.json").read_text())["training"]
    assert all((exported["monai"] / entry["synthetic_tumors"]).is_file() for entry in entries)


def _centres(cases, steps=40, count=4):
    """(case id, centre voxel) of every positive patch the sampler draws, read back from coded images."""
    for k, case in enumerate(cases):  # channel 0: each voxel's flat index, channel 1: the case's number
        case.image = np.array(case.image, dtype=np.float32)
        case.image[0] = np.arange(case.tumor.size, dtype=np.float32).reshape(case.tumor.shape)
        case.image[1] = k
    sampler = TumorPatchSampler(cases, PATCH, seed=3, pos_fraction=1.0, flip_x=False)
    middle = tuple(n // 2 for n in PATCH)
    found = []
    for step in range(steps):
        images, labels = sampler.sample(step, count, stream=2, positive_only=True)
        for image, label in zip(images, labels):
            case = cases[int(image[1][middle])]
            found.append((case.case_id, np.unravel_index(int(image[0][middle]), case.tumor.shape)))
            assert label[0][middle] == 1  # the label patch is cut from the whole label
    return found


def test_positive_patch_centres_all_fall_in_the_synthetic_tumors(exported):
    out = exported["nnunet"]
    cases = load_segmentation_cases(out, "synthetic", progress=False)
    truth = {c.case_id: _label_minus_source(out, c.case_id) for c in cases}
    for case in cases:
        label, new = truth[case.case_id]
        assert np.array_equal(case.tumor, label)  # the patches' labels still hold the source's lesion
        assert len(case.tumor_voxels) == int(new.sum())
    centres = _centres(cases)
    assert len(centres) == 160 and {name for name, _ in centres} == set(truth)  # both cases give positives
    assert all(truth[name][1][voxel] for name, voxel in centres)  # every centre is in a synthesized tumor
    # training cases (what="training") keep every label voxel, the real lesions included
    as_training = load_segmentation_cases(out, "training", progress=False)
    assert all(len(c.tumor_voxels) == int(c.tumor.sum()) for c in as_training)


def test_a_prepared_store_of_a_synthetic_set_gives_the_same_centres(exported, tmp_path):
    out = exported["nnunet"]
    prepare_store(out, tmp_path / "store", dtype="float32", progress=False)
    stored = load_segmentation_cases(tmp_path / "store", "synthetic", progress=False)
    direct = load_segmentation_cases(out, "synthetic", progress=False)
    for a, b in zip(stored, direct, strict=True):
        assert a.case_id == b.case_id and np.array_equal(np.asarray(a.tumor), b.tumor)
        assert np.array_equal(np.asarray(a.tumor_voxels), b.tumor_voxels)
        assert len(a.tumor_voxels) < int(np.asarray(a.tumor).sum())  # the source lesion is not a centre


def _make_old_style(out, target):
    """A copy of an export as SynBT wrote it before the masks: no masks, no mention of them."""
    shutil.copytree(out, target)
    shutil.rmtree(target / export.SYNTHETIC_MASK_DIR)
    record = json.loads((target / "export.json").read_text())
    record.pop("synthetic_masks")
    (target / "export.json").write_text(json.dumps(record))
    for path in (target / "provenance").glob("*.json"):
        provenance = json.loads(path.read_text())
        rel = provenance.pop("synthetic_tumors")
        provenance["files"].remove(rel)
        path.write_text(json.dumps(provenance))
    return target


def test_an_old_set_without_masks_falls_back_trains_and_resumes_without_masks(source, exported, tmp_path, capsys):
    old = _make_old_style(exported["nnunet"], tmp_path / "old")
    cases = load_segmentation_cases(old, "synthetic", progress=False)
    assert "2 of 2 synthetic cases" in capsys.readouterr().err  # one line says the set falls back
    assert all(len(c.tumor_voxels) == int(c.tumor.sum()) for c in cases)  # today's centring: any label voxel
    assert any(_label_minus_source(old, c.case_id)[0].sum() > _label_minus_source(old, c.case_id)[1].sum()
               for c in cases)

    config = {
        "model": {"channels": [8, 16, 32], "num_res_units": 1},
        "training": {"steps": 3, "batch_size": 2, "lr": 2e-3, "warmup_steps": 1},
        "data": {"patch_size": list(PATCH), "steps_per_epoch": 3},
        "synthetic": {"mode": "offline", "dir": str(old), "ratio": 1.0},
    }
    run = train_segmentation(source, tmp_path / "run", config, verbose=False)
    assert (run.model_dir / "model.safetensors").is_file()
    assert all(np.isfinite(v) for v in run.losses.values())
    with open(tmp_path / "run" / "losses.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and all(float(row["synthetic"]) == 2.0 for row in rows)  # every sample synthetic

    # resuming an export begun before the masks existed completes it without them: one folder, one kind
    (old / "provenance" / "SynBT_001.json").unlink()
    settings = export.ExportSettings(num_cases=2, format="nnunet", size_mm=(10.0, 14.0), seed=11)
    assert export.export_dataset(source, old, settings, log=lambda message: None) == ["SynBT_001"]
    assert not (old / export.SYNTHETIC_MASK_DIR).exists()
    assert "synthetic_tumors" not in json.loads((old / "provenance" / "SynBT_001.json").read_text())
