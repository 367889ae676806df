"""A corpus of bad inputs, generated at test time (small files), each one kind of defect, run through
the commands that read images: every one is refused with its own one-line error, the inputs are left
unchanged and no result is written. Assertions are on the kind of error (a key term), not its wording.

Case-folder defects go through `synthesize --phases FOLDER`, `export --source` and `train-seg --data`;
mask defects through `synthesize --mask`; bundle defects through `synthesize --bundle`.
"""
import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SynBTLib.cli import main
from SynBTLib.io import write_image, write_label
from test_handcrafted import make_case, sphere_mask
from test_io import write_dicom_series

CASE = make_case(shape=(12, 40, 40))
GOOD_MASK = sphere_mask(shape=(12, 40, 40), centre=(6, 26, 20), radius_mm=4.0)


def _write_good(folder: Path, suffix=".nii.gz", skip=()) -> list[Path]:
    paths = [write_image(p, CASE.geometry, folder / f"phase_{k}{suffix}") for k, p in enumerate(CASE.phases) if k not in skip]
    write_label(GOOD_MASK, CASE.geometry, folder / "tumor_labels.nii.gz")
    return paths


def _nan_nifti(folder):
    _write_good(folder)
    bad = CASE.phases[1].copy()
    bad[3, 20, 20], bad[4, 21, 21] = np.nan, -np.inf
    write_image(bad, CASE.geometry, folder / "phase_1.nii.gz")


def _inf_nrrd(folder):
    _write_good(folder, ".nrrd")
    bad = CASE.phases[2].copy()
    bad[5, 25, 25] = np.inf
    write_image(bad, CASE.geometry, folder / "phase_2.nrrd")


def _truncated_nifti(folder):
    _write_good(folder)
    data = gzip.decompress((folder / "phase_1.nii.gz").read_bytes())
    (folder / "phase_1.nii.gz").write_bytes(gzip.compress(data[: len(data) // 2]))


def _not_an_image(folder):
    _write_good(folder)
    (folder / "phase_1.nii.gz").write_text("this is not an image\n")


def _missing_phase(folder):
    _write_good(folder, skip=(1,))


def _one_phase(folder):
    _write_good(folder, skip=(1, 2))


def _different_grids(folder):
    _write_good(folder)
    g = CASE.geometry
    other = type(g)(g.size, (g.spacing[0] * 1.5, g.spacing[1], g.spacing[2]), g.origin, g.direction)
    write_image(CASE.phases[1], other, folder / "phase_1.nii.gz")


def _two_dimensional(folder):
    _write_good(folder)
    (folder / "phase_1.nii.gz").unlink()
    sitk.WriteImage(sitk.GetImageFromArray(CASE.phases[1][5]), str(folder / "phase_1.nii.gz"))


def _vector_phase(folder):
    _write_good(folder)
    (folder / "phase_1.nii.gz").unlink()
    vector = sitk.GetImageFromArray(np.stack([CASE.phases[1]] * 3, axis=-1), isVector=True)
    vector.CopyInformation(sitk.ReadImage(str(folder / "phase_0.nii.gz")))
    sitk.WriteImage(vector, str(folder / "phase_1.nrrd"))


def _four_d_phase(folder):
    _write_good(folder)
    (folder / "phase_1.nii.gz").unlink()
    sitk.WriteImage(sitk.JoinSeries([sitk.ReadImage(str(folder / "phase_0.nii.gz"))] * 2), str(folder / "phase_1.nii.gz"))


def _dicom_gap(folder):
    for k in range(2):
        write_dicom_series(CASE.phases[k] * 10, CASE.geometry, folder / f"phase_{k}", f"1.2.826.0.1.3680043.2.1125.{k + 40}")
    (folder / "phase_1" / "slice_006.dcm").unlink()
    write_label(GOOD_MASK, CASE.geometry, folder / "tumor_labels.nii.gz")


# name -> (writer of the case folder, the key terms of the kind of error)
CASE_DEFECTS = {
    "nan_nifti": (_nan_nifti, r"NaN/Inf"),
    "inf_nrrd": (_inf_nrrd, r"NaN/Inf"),
    "truncated_nifti": (_truncated_nifti, r"truncated|cannot read"),
    "not_an_image": (_not_an_image, r"cannot read"),
    "missing_phase": (_missing_phase, r"missing phase"),
    "one_phase": (_one_phase, r"only one phase|at least two"),
    "different_grids": (_different_grids, r"different grids"),
    "two_dimensional": (_two_dimensional, r"not a 3D volume"),
    "vector_phase": (_vector_phase, r"not a scalar image"),
    "four_d_phase": (_four_d_phase, r"not a 3D volume|4D"),
    "dicom_gap": (_dicom_gap, r"slices missing"),
}


def _mask_empty(folder):
    return write_label(np.zeros_like(GOOD_MASK), CASE.geometry, folder / "mask.nii.gz")


def _mask_in_air(folder):
    return write_label(sphere_mask(shape=(12, 40, 40), centre=(6, 3, 20), radius_mm=2.0), CASE.geometry, folder / "mask.nii.gz")


def _mask_other_grid(folder):
    g = CASE.geometry
    return write_label(GOOD_MASK, type(g)(g.size, g.spacing, (g.origin[0] + 7.3, *g.origin[1:])), folder / "mask.nii.gz")


def _mask_nan(folder):
    values = GOOD_MASK.astype(np.float32)
    values[0, 0, 0] = np.nan
    return write_image(values, CASE.geometry, folder / "mask.nii.gz")


def _mask_segment_missing(folder):
    import slicerio  # noqa: F401  (a .seg.nrrd is written by SimpleITK with Slicer's segment fields)

    image = sitk.GetImageFromArray(GOOD_MASK)
    image.SetSpacing(CASE.geometry.spacing)
    image.SetOrigin(CASE.geometry.origin)
    for key, value in {"Segment0_ID": "tumor", "Segment0_Name": "tumor", "Segment0_LabelValue": "1",
                       "Segment0_Layer": "0", "Segment0_Extent": "0 39 0 39 0 11"}.items():
        image.SetMetaData(key, value)
    sitk.WriteImage(image, str(folder / "mask.seg.nrrd"))
    return folder / "mask.seg.nrrd", ["--segment", "lesion"]


MASK_DEFECTS = {
    "mask_empty": (_mask_empty, r"empty"),
    "mask_in_air": (_mask_in_air, r"outside the body"),
    "mask_other_grid": (_mask_other_grid, r"grid"),
    "mask_nan": (_mask_nan, r"NaN/Inf"),
    "mask_segment_missing": (_mask_segment_missing, r"segment 'lesion' not found"),
}


def _bundle_edited(bundle: Path):
    card = bundle / "MODEL_CARD.md"
    card.write_text(card.read_text() + "\nedited\n")


def _bundle_escape(bundle: Path):
    (bundle.parent / "outside.txt").write_text("not part of the bundle\n")
    digest = hashlib.sha256(b"not part of the bundle\n").hexdigest()
    with open(bundle / "SHA256SUMS", "a") as sums:
        sums.write(f"{digest}  ../outside.txt\n")


def _bundle_pickle(bundle: Path):
    (bundle / "weights.pt").write_bytes(b"\x80\x04K\x01.")


BUNDLE_DEFECTS = {
    "bundle_edited": (_bundle_edited, r"sha256|does not match"),
    "bundle_escape": (_bundle_escape, r"not a file of the bundle"),
    "bundle_pickle": (_bundle_pickle, r"pickle"),
}


def digest_tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, command: str, args, kind: str, out: Path) -> str:
    assert main([command, *map(str, args)]) == 2
    # progress bars (tqdm, when stderr is not a terminal) are not messages
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]
    # training skips an unusable case with one line naming why (issue 26), then refuses an empty data set
    skips = [line for line in err[:-1] if line.startswith("skipped case")] if command == "train-seg" else []
    counts = [line for line in err[:-1] if " cases in " in line and line.endswith("skipped")] if skips else []
    assert len(err) == 1 + len(skips) + len(counts) and err[-1].startswith(f"synbt {command}: error:"), err
    import re

    assert re.search(kind, skips[0] if skips else err[-1]), err
    # export records its settings (export.json) first, so a rerun resumes; no case may be written
    written = [p for p in out.rglob("*") if p.is_file() and p.name != "export.json"] if out.exists() else []
    assert written == [], f"{command} wrote {written}"
    return err[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    for name, (make, _) in CASE_DEFECTS.items():
        make(root / "cases" / name / "case")
    good = root / "good"
    _write_good(good)
    for name, (make, _) in MASK_DEFECTS.items():
        (root / "masks" / name).mkdir(parents=True)
        make(root / "masks" / name)
    from SynBTLib.bundle import default_bundle_path

    for name, (make, _) in BUNDLE_DEFECTS.items():
        bundle = shutil.copytree(default_bundle_path(), root / "bundles" / name / "bundle")
        make(bundle)
    return root


@pytest.mark.parametrize("defect", sorted(CASE_DEFECTS))
def test_bad_case_is_refused_by_every_command_that_reads_cases(corpus, defect, tmp_path, capsys):
    kind = CASE_DEFECTS[defect][1]
    source = corpus / "cases" / defect
    before = digest_tree(source)
    messages = [
        refused(capsys, "synthesize", ["--phases", source / "case", "--auto", "--size-mm", "6", "--method", "handcrafted",
                                       "--out", tmp_path / "s"], kind, tmp_path / "s"),
        refused(capsys, "export", ["--source", source, "--format", "monai", "--num-cases", "1", "--method", "handcrafted",
                                   "--size-mm", "6", "8", "--out", tmp_path / "e"], kind, tmp_path / "e"),
        refused(capsys, "train-seg", ["--data", source, "--steps", "1", "--batch-size", "1", "--out", tmp_path / "t"],
                kind, tmp_path / "t"),
    ]
    assert all(defect_name_or_file(m, source) for m in messages)
    assert digest_tree(source) == before


def defect_name_or_file(message: str, source: Path) -> bool:
    """The message says where the problem is: the case folder or a file in it."""
    return str(source) in message or "case" in message


@pytest.mark.parametrize("defect", sorted(MASK_DEFECTS))
def test_bad_mask_is_refused_by_synthesize(corpus, defect, tmp_path, capsys):
    kind = MASK_DEFECTS[defect][1]
    folder = corpus / "masks" / defect
    mask = next(p for p in folder.iterdir() if p.name.startswith("mask"))
    extra = ["--segment", "lesion"] if defect == "mask_segment_missing" else []
    before = digest_tree(folder)
    message = refused(capsys, "synthesize", ["--phases", corpus / "good", "--mask", mask, *extra, "--method", "handcrafted",
                                             "--out", tmp_path / "s"], kind, tmp_path / "s")
    assert mask.name in message
    assert digest_tree(folder) == before


@pytest.mark.parametrize("defect", sorted(BUNDLE_DEFECTS))
def test_bad_bundle_is_refused_by_synthesize(corpus, defect, tmp_path, capsys):
    bundle = corpus / "bundles" / defect / "bundle"
    refused(capsys, "synthesize", ["--phases", corpus / "good", "--mask", corpus / "good" / "tumor_labels.nii.gz",
                                   "--bundle", bundle, "--out", tmp_path / "s"], BUNDLE_DEFECTS[defect][1], tmp_path / "s")


def test_the_kinds_are_distinct():
    """Each defect is one kind of bad input: no two case defects share the same key terms."""
    kinds = [kind for _, kind in CASE_DEFECTS.values()]
    assert len(set(kinds)) >= len(kinds) - 1  # NaN in NIfTI and Inf in NRRD are one kind through two readers
