"""Issue 29: bad input is refused, never silently corrupted (NaN in NIfTI, DICOM gaps, masks in air,
bundle paths leaving the bundle), and command-line messages speak command-line."""
import json
from pathlib import Path

import numpy as np
import pytest

from SynBTLib import SynBTError
from SynBTLib.cli import main
from SynBTLib.io import read_case, read_image, read_mask, write_image, write_label
from test_handcrafted import make_case, sphere_mask
from test_io import keep_locale, oblique_geometry, phase_arrays, write_dicom_series


def run_synthesize(*args) -> int:
    return main(["synthesize", *[str(a) for a in args], "--method", "handcrafted"])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("synbt synthesize: error:"), err
    return err[0]


@pytest.fixture
def case_files(tmp_path):
    case = make_case()
    phases = [write_image(p, case.geometry, tmp_path / "in" / f"p{k}.nii.gz") for k, p in enumerate(case.phases)]
    mask = write_label(sphere_mask(), case.geometry, tmp_path / "in" / "mask.nii.gz")
    return case, phases, mask


# ---------------------------------------------------------------- 1. NaN / Inf in NIfTI


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nan_and_inf_in_a_nifti_phase_are_refused(tmp_path, suffix):
    geometry = oblique_geometry()
    arrays = phase_arrays(geometry, count=2)
    arrays[1][1, 2, 3], arrays[1][2, 3, 4], arrays[1][3, 4, 5] = np.nan, np.inf, -np.inf
    paths = [write_image(a, geometry, tmp_path / f"p{k}{suffix}") for k, a in enumerate(arrays)]
    with pytest.raises(SynBTError, match="NaN/Inf") as info:
        read_case(paths)
    assert paths[1].name in str(info.value) and "3 NaN/Inf" in str(info.value)
    with pytest.raises(SynBTError, match="NaN/Inf"):
        read_image(paths[1])


def test_nan_in_a_nifti_phase_is_refused_by_synthesize(case_files, tmp_path, capsys):
    case, phases, mask = case_files
    bad = case.phases[1].copy()
    bad[10, 28, 24] = np.nan
    write_image(bad, case.geometry, phases[1])
    assert run_synthesize("--phases", *phases, "--mask", mask, "--out", tmp_path / "out") == 2
    assert "NaN/Inf" in error_line(capsys)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 2. DICOM series with a gap


def _dicom_phases(tmp_path, missing: dict[int, int]):
    """Two DICOM phase folders of 8 slices; missing[k] = the slice deleted from phase k."""
    geometry = oblique_geometry(size=(9, 8, 8))
    folders = []
    for k, array in enumerate(phase_arrays(geometry, count=2)):
        folder = tmp_path / f"phase_{k}"
        write_dicom_series(array, geometry, folder, f"1.2.826.0.1.3680043.2.1125.{k + 7}")
        if k in missing:
            (folder / f"slice_{missing[k]:03d}.dcm").unlink()
        folders.append(folder)
    return folders


def test_dicom_series_with_a_missing_slice_is_refused_naming_the_gap(tmp_path):
    folders = _dicom_phases(tmp_path, {0: 4, 1: 4})
    with pytest.raises(SynBTError, match="slices missing") as info:
        read_image(folders[0])
    message = str(info.value)
    assert "slice_003.dcm" in message and "slice_005.dcm" in message and str(folders[0]) in message
    with pytest.raises(SynBTError, match="slices missing"):
        read_case(folders)


@pytest.mark.parametrize("resample", [False, True])
def test_dicom_slice_missing_in_one_phase_is_refused_even_with_resample(tmp_path, resample):
    folders = _dicom_phases(tmp_path, {1: 2})
    assert read_image(folders[0])[0].shape == (8, 8, 9)  # the complete phase reads
    with pytest.raises(SynBTError, match="slices missing") as info:
        read_case(folders, resample=resample)
    assert str(folders[1]) in str(info.value) and "slice_001.dcm" in str(info.value)


def test_dicom_series_with_a_duplicated_position_is_refused(tmp_path):
    (folder,) = _dicom_phases(tmp_path, {})[:1]
    import SimpleITK as sitk

    # slice 5 rewritten at the position of slice 4: two slices at one place, a gap after it
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(folder / "slice_004.dcm"))
    image4 = reader.Execute()
    image5 = sitk.ReadImage(str(folder / "slice_005.dcm"))
    image5.SetMetaData("0020|0032", image4.GetMetaData("0020|0032"))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "slice_005.dcm"))
    with keep_locale():
        writer.Execute(image5)
    with pytest.raises(SynBTError, match="uneven slice positions"):
        read_image(folder)


# ---------------------------------------------------------------- 6. SHA256SUMS naming a file outside the bundle


@pytest.mark.parametrize("name", ["../outside.txt", "../../outside.txt", "sub/../../outside.txt", "/etc/hostname"])
def test_sha256sums_line_leaving_the_bundle_is_refused(tmp_path, name):
    from SynBTLib.bundle import SUMS_FILE, file_sha256, save_bundle, verify_bundle
    from SynBTLib.nets.scheduler import SchedulerConfig
    from test_bundle import META, tiny_networks

    bundle = save_bundle(tmp_path / "a" / "b" / "bundle", *tiny_networks(), SchedulerConfig(), 0.75, META, "# tiny\n")
    target = (bundle / name) if not name.startswith("/") else Path(name)
    if not name.startswith("/"):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("not part of the bundle\n")
    digest = file_sha256(target) if target.is_file() else "0" * 64
    with open(bundle / SUMS_FILE, "a") as sums:
        sums.write(f"{digest}  {name}\n")
    with pytest.raises(SynBTError) as info:  # the file and the list that names it:
        verify_bundle(bundle)
    assert SUMS_FILE in str(info.value) and name in str(info.value)


# ---------------------------------------------------------------- 5. a mask in the air


def test_mask_in_the_air_is_refused_and_a_mask_at_the_skin_is_not(case_files, tmp_path, capsys):
    case, phases, _ = case_files  # make_case: air for y <= 8, body behind it
    in_air = write_label(sphere_mask(centre=(10, 3, 24), radius_mm=2.5), case.geometry, tmp_path / "air.nii.gz")
    assert run_synthesize("--phases", *phases, "--mask", in_air, "--out", tmp_path / "out") == 2
    line = error_line(capsys)
    assert "outside the body" in line and "air.nii.gz" in line
    assert not (tmp_path / "out").exists()

    at_skin = sphere_mask(centre=(10, 10, 24), radius_mm=4.0)  # partly in air, mostly in the body
    assert 0 < at_skin[:, :9].sum() < at_skin.sum() / 2
    at_skin_path = write_label(at_skin, case.geometry, tmp_path / "skin.nii.gz")
    assert run_synthesize("--phases", *phases, "--mask", at_skin_path, "--out", tmp_path / "out") == 0


def test_check_mask_in_body_counts_the_fraction_in_air():
    from SynBTLib.preprocess import check_mask_in_body

    case = make_case()
    mask = np.zeros(case.shape, np.uint8)
    mask[5:8, 2:6, 10:14] = 1  # all in air
    with pytest.raises(SynBTError, match="100% outside the body"):
        check_mask_in_body(case, mask)
    mask[5:8, 12:19, 10:14] = 1  # now most of it in the body
    check_mask_in_body(case, mask)


# ---------------------------------------------------------------- 7. messages


def _jittered_dicom(tmp_path):
    """A DICOM series whose slice 4 is 2% of a slice off its place: accepted (within tolerance),
    and ITK's series reader warns about it ("Non uniform sampling")."""
    import SimpleITK as sitk

    geometry = oblique_geometry(size=(9, 8, 8))
    folder = tmp_path / "jitter"
    write_dicom_series(phase_arrays(geometry, count=1)[0], geometry, folder, "1.2.826.0.1.3680043.2.1125.99")
    image = sitk.ReadImage(str(folder / "slice_004.dcm"))
    normal = np.asarray(geometry.direction).reshape(3, 3)[:, 2]
    position = np.array([float(v) for v in image.GetMetaData("0020|0032").split("\\")]) + 0.02 * 2.5 * normal
    image.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in position))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "slice_004.dcm"))
    with keep_locale():
        writer.Execute(image)
    return folder


def test_itk_warnings_stay_out_of_the_terminal_unless_asked(tmp_path, capfd):
    from SynBTLib.io import show_itk_warnings

    folder = _jittered_dicom(tmp_path)
    capfd.readouterr()
    assert read_image(folder)[0].shape == (8, 8, 9)
    assert "WARNING" not in capfd.readouterr().err
    show_itk_warnings(True)
    try:
        read_image(folder)
        assert "Non uniform sampling" in capfd.readouterr().err  # the case really makes ITK warn
    finally:
        show_itk_warnings(False)


def test_command_line_messages_name_options_not_python_arguments(case_files, tmp_path, capsys):
    case, phases, mask = case_files
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_synthesize("--phases", *phases, "--mask", mask, "--out", out) == 2
    line = error_line(capsys)
    assert "--overwrite" in line and "=True" not in line
    other = case.geometry.__class__(case.geometry.size, (1.0, 1.0, 1.0), case.geometry.origin)
    moved = write_label(sphere_mask(), other, tmp_path / "other_grid.nii.gz")
    assert run_synthesize("--phases", *phases, "--mask", moved, "--out", tmp_path / "o2") == 2
    line = error_line(capsys)
    assert "--resample-mask" in line and "=True" not in line
    shifted = write_image(case.phases[1], other, tmp_path / "p1_other.nii.gz")
    assert run_synthesize("--phases", phases[0], shifted, "--mask", mask, "--out", tmp_path / "o3") == 2
    line = error_line(capsys)
    assert "--resample" in line and "=True" not in line


def test_verbose_shows_itk_warnings(tmp_path, capfd):
    import shutil

    from SynBTLib.io import show_itk_warnings

    folder = _jittered_dicom(tmp_path)
    shutil.copytree(folder, tmp_path / "jitter2")
    args = ["synthesize", "--phases", str(folder), str(tmp_path / "jitter2"), "--auto", "--size-mm", "5",
            "--method", "handcrafted", "--out", str(tmp_path / "out")]
    try:
        main(args)  # what it decides about this tiny case does not matter here, only what ITK says
        assert "WARNING" not in capfd.readouterr().err
        main(["--verbose", *args])
        assert "Non uniform sampling" in capfd.readouterr().err
    finally:
        show_itk_warnings(False)
