"""SynBTLib.io: every format round-trips with oblique anisotropic geometry; bad inputs get clear messages."""
import contextlib
import hashlib
import locale
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from SynBTLib import Case, Geometry, SynBTError
from SynBTLib.io import (
    prepare_output_dir,
    read_case,
    read_image,
    read_mask,
    resample_to,
    to_sitk,
    write_case,
    write_image,
    write_label,
)

FORMATS = [".nii.gz", ".nii", ".nrrd", ".mha"]


def oblique_geometry(size=(9, 8, 6), origin=(-10.25, 5.5, 30.75)):
    """Rotated 20 degrees about z and tilted 10 degrees about x, anisotropic spacing."""
    a, b = np.deg2rad(20), np.deg2rad(10)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return Geometry(size=size, spacing=(0.8, 0.7, 2.5), origin=origin, direction=(rot @ tilt).ravel())


def assert_same_geometry(actual: Geometry, expected: Geometry):
    # NIfTI stores geometry as float32: allow its relative precision on top of 1e-6.
    assert actual.size == expected.size
    for field in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(actual, field), getattr(expected, field), rtol=1e-7, atol=1e-6)


def sha256(path: Path) -> str:
    if path.is_dir():
        return "".join(sha256(p) for p in sorted(path.iterdir()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def phase_arrays(geometry, count=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(100 * (k + 1), 10, size=geometry.shape).astype(np.float32) for k in range(count)]


def write_dicom_series(array_zyx: np.ndarray, geometry: Geometry, folder: Path, series_uid: str):
    """A DICOM series, one file per slice, as in SimpleITK's DicomSeriesFromArray example."""
    folder.mkdir(parents=True)
    volume = to_sitk(array_zyx.astype(np.int16), geometry)
    d = geometry.direction
    orientation = "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with keep_locale():
        _write_slices(volume, writer, folder, series_uid, orientation, geometry)


@contextlib.contextmanager
def keep_locale():
    """Restore the locale after writing DICOM: GDCM's writer sets the C locale for the whole process,
    which would make later tests' text files ASCII-only."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(volume, writer, folder, series_uid, orientation, geometry):
    for k in range(volume.GetDepth()):
        image = volume[:, :, k]
        position = "\\".join(f"{v:.10f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k)))
        tags = {
            "0008|0060": "MR",
            "0008|0021": time.strftime("%Y%m%d"),
            "0020|000e": series_uid,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0037": orientation,
            "0020|0032": position,
            "0020|0013": str(k + 1),
            "0018|0050": f"{geometry.spacing[2]:.10f}",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(image)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", FORMATS)
def test_phase_files_round_trip_with_oblique_geometry(tmp_path, ext):
    geometry = oblique_geometry()
    arrays = phase_arrays(geometry)
    paths = [write_image(a, geometry, tmp_path / f"p{k}{ext}") for k, a in enumerate(arrays)]
    hashes = [sha256(p) for p in paths]

    case = read_case(paths)

    np.testing.assert_array_equal(case.phases, np.stack(arrays))
    assert case.phases.dtype == np.float32
    assert_same_geometry(case.geometry, geometry)
    assert "oblique" in case.geometry.describe()
    assert case.phase_names == ["p0", "p1", "p2"]
    assert [sha256(p) for p in paths] == hashes  # inputs unchanged byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp files left


def test_case_folder_round_trip_and_numeric_phase_order(tmp_path):
    geometry = oblique_geometry(size=(4, 3, 3))
    arrays = [np.full(geometry.shape, k, np.float32) for k in range(11)]
    written = write_case(Case(np.stack(arrays), geometry), tmp_path / "case")
    assert [p.name for p in written] == [f"phase_{k}.nii.gz" for k in range(11)]

    case = read_case(tmp_path / "case")
    # phase_10 comes after phase_9, not after phase_1
    assert [float(p[0, 0, 0]) for p in case.phases] == list(range(11))
    assert_same_geometry(case.geometry, geometry)


def test_case_folder_with_channel_naming_and_case_json_names(tmp_path):
    geometry = oblique_geometry(size=(4, 3, 3))
    folder = tmp_path / "DUKE_001"
    for k in (2, 0, 1):
        write_image(np.full(geometry.shape, k, np.float32), geometry, folder / f"duke_001_{k:04d}.nii.gz")
    case = read_case(folder)
    assert [float(p.mean()) for p in case.phases] == [0.0, 1.0, 2.0]
    assert case.phase_names == ["duke_001_0000", "duke_001_0001", "duke_001_0002"]

    (folder / "case.json").write_text('{"phase_names": ["pre", "early", "late"]}')
    assert read_case(folder).phase_names == ["pre", "early", "late"]


def test_4d_nifti_phases_on_fourth_axis(tmp_path):
    geometry = oblique_geometry()
    arrays = phase_arrays(geometry, count=4)
    path = tmp_path / "dce.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([to_sitk(a, geometry) for a in arrays]), str(path))
    digest = sha256(path)

    case = read_case(path)

    assert case.num_phases == 4
    np.testing.assert_array_equal(case.phases, np.stack(arrays))
    assert_same_geometry(case.geometry, geometry)
    assert sha256(path) == digest


def test_dicom_series_folders_read_with_oblique_geometry(tmp_path):
    geometry = oblique_geometry()
    arrays = [np.round(a) for a in phase_arrays(geometry, count=2)]
    folders = [tmp_path / f"series{k}" for k in range(2)]
    for k, (array, folder) in enumerate(zip(arrays, folders)):
        write_dicom_series(array, geometry, folder, f"1.2.826.0.1.3680043.2.1125.{k + 2}")
    digests = [sha256(f) for f in folders]

    case = read_case(folders)

    np.testing.assert_array_equal(case.phases, np.stack(arrays))
    assert_same_geometry(case.geometry, geometry)
    assert [sha256(f) for f in folders] == digests
    with pytest.raises(SynBTError, match="holds one 3D volume"):
        read_case(folders[0])


def test_write_label_is_uint8_and_keeps_geometry(tmp_path):
    geometry = oblique_geometry()
    labels = np.zeros(geometry.shape, np.int64)
    labels[2:4, 3:5, 1:6] = 3
    path = write_label(labels, geometry, tmp_path / "labels.nrrd")
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkUInt8
    array, read_geometry = read_image(path)
    np.testing.assert_array_equal(array, labels)
    assert_same_geometry(read_geometry, geometry)
    with pytest.raises(SynBTError, match="integers in 0..255"):
        write_label(labels + 300, geometry, tmp_path / "bad.nrrd")


def test_failed_write_leaves_no_temp_file_and_keeps_old_file(tmp_path):
    geometry = oblique_geometry()
    target = write_image(np.zeros(geometry.shape, np.float32), geometry, tmp_path / "a.nii.gz")
    before = sha256(target)
    write_image(np.ones(geometry.shape, np.float32), geometry, target)  # replace works
    assert sha256(target) != before
    with pytest.raises(SynBTError, match="cannot write"):
        write_image(np.zeros(geometry.shape, np.float32), geometry, tmp_path / "a.unknownformat")
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]


# ---------------------------------------------------------------- bad cases


def test_phases_on_different_grids_are_refused_then_resampled(tmp_path):
    geometry = oblique_geometry()
    other = Geometry(geometry.size, (0.8, 0.7, 3.0), geometry.origin, geometry.direction)
    first = write_image(np.full(geometry.shape, 5, np.float32), geometry, tmp_path / "a.nii.gz")
    second = write_image(np.full(other.shape, 7, np.float32), other, tmp_path / "b.nrrd")

    with pytest.raises(SynBTError) as err:
        read_case([first, second])
    message = str(err.value)
    assert "different grids" in message and geometry.describe() in message and other.describe() in message

    case = read_case([first, second], resample=True)
    assert case.shape == geometry.shape
    assert_same_geometry(case.geometry, geometry)
    # linear resampling of a constant volume: 7 where the second grid covers the first, 0 outside
    assert set(np.unique(case.phases[1])) <= {0.0, 7.0} and (case.phases[1] == 7).any()


def test_bad_inputs_get_one_clear_line(tmp_path):
    geometry = oblique_geometry()
    good = write_image(np.ones(geometry.shape, np.float32), geometry, tmp_path / "good.nii.gz")

    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(SynBTError, match=r"flat.nii.gz is not a 3D volume"):
        read_case([good, tmp_path / "flat.nii.gz"])

    with pytest.raises(SynBTError, match="at least two phases"):
        read_case(good)
    with pytest.raises(SynBTError, match="at least two phases"):
        read_case([good])

    with pytest.raises(SynBTError, match=r"file not found: .*missing.nii.gz"):
        read_case([good, tmp_path / "missing.nii.gz"])

    nan = np.ones(geometry.shape, np.float32)
    nan[1, 2, 3] = np.nan
    nan[0, 0, 0] = np.inf
    write_image(nan, geometry, tmp_path / "nan.mha")
    with pytest.raises(SynBTError, match=r"phase nan .*has 2 NaN/Inf voxels"):
        read_case([good, tmp_path / "nan.mha"])

    (tmp_path / "garbage.nii.gz").write_bytes(b"this is not an image" * 10)
    with pytest.raises(SynBTError, match=r"cannot read .*garbage.nii.gz"):
        read_case([good, tmp_path / "garbage.nii.gz"])

    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SynBTError, match="holds no DICOM series and no phase files"):
        read_case(tmp_path / "empty_dir")

    four_d = sitk.JoinSeries([to_sitk(np.ones(geometry.shape, np.float32), geometry)] * 2)
    sitk.WriteImage(four_d, str(tmp_path / "4d.nii"))
    with pytest.raises(SynBTError, match="is 4D"):
        read_case([good, tmp_path / "4d.nii"])


@pytest.mark.parametrize("keep", ["half", "first 200 bytes", "first 400 bytes"])
@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha", ".nii"])
def test_truncated_file_is_refused_naming_the_file(tmp_path, ext, keep):
    geometry = oblique_geometry(size=(32, 32, 8))
    good = write_image(np.ones(geometry.shape, np.float32), geometry, tmp_path / f"good{ext}")
    noise = np.random.default_rng(1).normal(size=geometry.shape).astype(np.float32)
    full = write_image(noise, geometry, tmp_path / f"full{ext}").read_bytes()
    truncated = tmp_path / f"truncated{ext}"
    # a cut inside or just after a gzipped header: nibabel cannot parse it, ITK read zeros for the rest
    truncated.write_bytes(full[: len(full) // 2 if keep == "half" else int(keep.split()[1])])
    with pytest.raises(SynBTError, match=rf"cannot read .*truncated{ext}"):
        read_case([good, truncated])


# ---------------------------------------------------------------- masks


def test_label_image_masks(tmp_path):
    geometry = oblique_geometry()
    labels = np.zeros(geometry.shape, np.uint8)
    labels[1:3, 2:4, 2:5] = 1
    labels[4, 5, 6] = 2
    path = write_label(labels, geometry, tmp_path / "labels.nii.gz")
    digest = sha256(path)

    any_label = read_mask(path, geometry)
    assert any_label.dtype == np.uint8 and any_label.shape == geometry.shape
    np.testing.assert_array_equal(any_label, (labels > 0).astype(np.uint8))
    np.testing.assert_array_equal(read_mask(path, geometry, label=2), (labels == 2).astype(np.uint8))
    with pytest.raises(SynBTError, match=r"labels.nii.gz is empty for label 7"):
        read_mask(path, geometry, label=7)
    with pytest.raises(SynBTError, match="not a Slicer .seg.nrrd"):
        read_mask(path, geometry, segment="tumor")
    assert sha256(path) == digest


def test_mask_on_another_grid_is_refused_unless_resampled(tmp_path):
    geometry = oblique_geometry()
    fine = Geometry((18, 16, 12), (0.4, 0.35, 1.25), geometry.origin, geometry.direction)
    mask = np.zeros(fine.shape, np.uint8)
    mask[4:8, 6:10, 6:12] = 1
    path = write_label(mask, fine, tmp_path / "fine.nrrd")
    with pytest.raises(SynBTError) as err:
        read_mask(path, geometry)
    assert "fine.nrrd" in str(err.value) and fine.describe() in str(err.value) and geometry.describe() in str(err.value)

    resampled = read_mask(path, geometry, resample=True)
    expected = resample_to(mask, fine, geometry, nearest=True)
    np.testing.assert_array_equal(resampled, expected)
    assert resampled.dtype == np.uint8 and 0 < resampled.sum() < mask.sum()


def test_empty_mask_is_refused(tmp_path):
    geometry = oblique_geometry()
    path = write_label(np.zeros(geometry.shape, np.uint8), geometry, tmp_path / "empty.nii.gz")
    with pytest.raises(SynBTError, match=r"mask .*empty.nii.gz is empty"):
        read_mask(path, geometry)


def _ijk_to_lps(geometry: Geometry, start_xyz=(0, 0, 0)) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = geometry.direction_matrix * np.asarray(geometry.spacing)
    matrix[:3, 3] = geometry.index_to_physical(np.asarray([start_xyz], float))[0]
    return matrix


def test_slicer_segmentation_with_smaller_extent_is_placed_on_the_case_grid(tmp_path):
    geometry = oblique_geometry(size=(12, 10, 8))
    start_xyz, extent_xyz = (3, 2, 1), (5, 4, 3)
    segmentation = slicerio.create_segmentation(extent_xyz, _ijk_to_lps(geometry, start_xyz))
    tumor_ijk = np.zeros(extent_xyz, bool)
    tumor_ijk[1:4, 0:2, 1:3] = True
    vessel_ijk = np.zeros(extent_xyz, bool)
    vessel_ijk[2:5, 1:4, 0:2] = True  # overlaps the tumor: slicerio stores a second layer
    slicerio.add_segment(segmentation, tumor_ijk, {"id": "tumor", "name": "tumor"})
    slicerio.add_segment(segmentation, vessel_ijk, {"id": "vessel", "name": "vessel"})
    path = tmp_path / "Segmentation.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)
    digest = sha256(path)

    mask = read_mask(path, geometry, segment="tumor")

    expected = np.zeros(geometry.shape, np.uint8)
    x0, y0, z0 = start_xyz
    ex, ey, ez = extent_xyz
    expected[z0 : z0 + ez, y0 : y0 + ey, x0 : x0 + ex] = tumor_ijk.transpose(2, 1, 0)
    np.testing.assert_array_equal(mask, expected)
    assert sha256(path) == digest

    with pytest.raises(SynBTError, match=r"segment 'lesion' not found in .*Segmentation.seg.nrrd; available segments: tumor, vessel"):
        read_mask(path, geometry, segment="lesion")
    with pytest.raises(SynBTError, match=r"holds 2 segments; choose one with --segment \(available: tumor, vessel\)"):
        read_mask(path, geometry)

    shifted_origin = np.asarray(geometry.origin) + (0.3, 0.0, 0.0)
    shifted = Geometry(geometry.size, geometry.spacing, shifted_origin, geometry.direction)
    with pytest.raises(SynBTError, match="segment 'tumor'.* is on grid"):
        read_mask(path, shifted, segment="tumor")
    resampled = read_mask(path, shifted, segment="tumor", resample=True)
    assert resampled.dtype == np.uint8
    np.testing.assert_array_equal(resampled, resample_to(expected, geometry, shifted, nearest=True))


def test_empty_segment_is_refused(tmp_path):
    geometry = oblique_geometry()
    segmentation = slicerio.create_segmentation(geometry.size, _ijk_to_lps(geometry))
    slicerio.add_segment(segmentation, np.zeros(geometry.size, bool), {"name": "tumor"})
    path = tmp_path / "empty.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)
    with pytest.raises(SynBTError, match=r"mask .*empty.seg.nrrd \(segment 'tumor'\) is empty"):
        read_mask(path, geometry, segment="tumor")


# ---------------------------------------------------------------- output folders


def test_prepare_output_dir_refuses_to_overwrite_inputs_or_results(tmp_path):
    geometry = oblique_geometry(size=(3, 3, 3))
    case_dir = tmp_path / "data" / "case1"
    inputs = write_case(Case(np.zeros((2, 3, 3, 3), np.float32), geometry), case_dir)

    fresh = prepare_output_dir(tmp_path / "out" / "nested", inputs=inputs)
    assert fresh.is_dir()

    for out, why in [
        (inputs[0], "is or contains the input"),  # the input file itself
        (case_dir, "is or contains the input"),  # an input file's folder
        (tmp_path / "data", "is or contains the input"),  # an ancestor of the inputs
    ]:
        with pytest.raises(SynBTError, match=why):
            prepare_output_dir(out, overwrite=True, inputs=inputs)
    with pytest.raises(SynBTError, match="inside the input folder"):
        prepare_output_dir(case_dir / "synthetic", inputs=[case_dir])

    (fresh / "result.txt").write_text("previous run")
    with pytest.raises(SynBTError, match="exists and is not empty; pass --overwrite"):
        prepare_output_dir(fresh)
    assert prepare_output_dir(fresh, overwrite=True) == fresh.resolve()
    with pytest.raises(SynBTError, match="exists and is not a folder"):
        prepare_output_dir(fresh / "result.txt", overwrite=True)


# ---------------------------------------------------------------- one decode, faster gzip, the input's own format


def _nibabel_file(path: Path, array_xyz: np.ndarray, affine: np.ndarray, slope=None, inter=None, big_endian=False):
    import nibabel

    header = nibabel.Nifti1Header(endianness=">" if big_endian else "<")
    header.set_data_dtype(array_xyz.dtype)
    image = nibabel.Nifti1Image(array_xyz, affine, header)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nibabel.save(image, str(path))
    return path


@pytest.mark.parametrize("name", ["int16.nii.gz", "flipped.nii", "bigendian.nii.gz", "scaled.nii.gz", "float64.nii"])
def test_nifti_read_once_gives_what_itk_gives(tmp_path, name):
    """Files written by another tool (nibabel): flipped and oblique affines, int16, big-endian, scaled
    values (read through ITK), float64. read_image returns ITK's voxels and geometry exactly."""
    import nibabel

    rng = np.random.default_rng(3)
    rotation = oblique_geometry().direction_matrix @ np.diag([-1.0, 1.0, 1.0])  # oblique, x flipped
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.8, 2.5])
    affine[:3, 3] = (90.5, -12.0, 31.0)
    array = rng.integers(-300, 3000, size=(11, 9, 7)).astype(np.int16)
    kind = name.split(".")[0]
    if kind == "float64":
        array = rng.normal(size=(11, 9, 7))
    path = _nibabel_file(tmp_path / name, array, affine, *((0.5, 10.0) if kind == "scaled" else (None, None)),
                         big_endian=kind == "bigendian")
    assert nibabel.load(str(path)).get_data_dtype() == array.dtype.newbyteorder(">" if kind == "bigendian" else "<")
    values, geometry = read_image(path)
    expected = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(values, sitk.GetArrayFromImage(expected))
    assert values.dtype == sitk.GetArrayViewFromImage(expected).dtype
    assert values.flags.writeable
    assert geometry == Geometry(expected.GetSize(), expected.GetSpacing(), expected.GetOrigin(), expected.GetDirection())


@pytest.fixture(params=["zlib", "isal"])
def codec(request, monkeypatch):
    """Each gzip implementation io can use: the standard zlib, and ISA-L when `isal` is installed."""
    from SynBTLib import io

    if request.param == "isal":
        pytest.importorskip("isal")
    monkeypatch.setattr(io, "_CODEC", io._isal_codec() if request.param == "isal" else io._zlib_codec())
    return request.param


def test_nifti_in_several_gzip_members_reads_whole(tmp_path, codec):
    """gzip tools that compress in blocks (pigz --independent, bgzip) write several gzip members;
    a truncated or corrupted stream is refused."""
    import gzip

    geometry = oblique_geometry(size=(16, 12, 8))
    array = np.random.default_rng(4).normal(size=geometry.shape).astype(np.float32)
    plain = write_image(array, geometry, tmp_path / "plain.nii").read_bytes()
    half = len(plain) // 2
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(plain[:half]) + gzip.compress(plain[half:]))
    values, read_geometry = read_image(tmp_path / "members.nii.gz")
    np.testing.assert_array_equal(values, array)
    assert_same_geometry(read_geometry, geometry)
    whole = gzip.compress(plain)
    (tmp_path / "cut.nii.gz").write_bytes(whole[:-100])
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF
    (tmp_path / "flipped.nii.gz").write_bytes(bytes(flipped))
    for name in ("cut.nii.gz", "flipped.nii.gz"):
        with pytest.raises(SynBTError, match=rf"cannot read .*{name}"):
            read_image(tmp_path / name)


def test_nifti_nan_is_refused_though_itk_would_read_zeros(tmp_path):
    geometry = oblique_geometry()
    array = np.ones(geometry.shape, np.float32)
    array[2, 3, 4] = np.nan
    path = write_image(array, geometry, tmp_path / "nan.nii.gz")
    with pytest.raises(SynBTError, match=r"nan.nii.gz has 1 NaN/Inf"):
        read_image(path)
    good = write_image(np.ones(geometry.shape, np.float32), geometry, tmp_path / "good.nii.gz")
    with pytest.raises(SynBTError, match=r"phase nan .*1 NaN/Inf"):
        read_case([good, path])


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_nii_gz_writer_holds_what_itk_compression_held(tmp_path, dtype, codec):
    """The level-1 zlib writer against the previous writer (ITK's own compression): the decompressed
    files are byte for byte the same NIfTI, so SimpleITK, nibabel and Slicer read the same values and
    geometry; a single gzip member, readable by a plain gzip reader."""
    import gzip

    import nibabel

    geometry = oblique_geometry(size=(40, 30, 12))
    rng = np.random.default_rng(5)
    array = (rng.normal(100, 20, size=geometry.shape) if dtype == np.float32
             else rng.integers(0, 200, size=geometry.shape)).astype(dtype)
    array[:, :5] = 0  # background, which the integer strategy compresses
    new = write_image(array, geometry, tmp_path / "new.nii.gz")
    previous = tmp_path / "previous.nii.gz"
    sitk.WriteImage(to_sitk(array, geometry), str(previous), useCompression=True)

    assert gzip.decompress(new.read_bytes()) == gzip.decompress(previous.read_bytes())
    for path in (new, previous):
        image = sitk.ReadImage(str(path))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
        assert_same_geometry(Geometry(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()),
                             geometry)
    np.testing.assert_array_equal(np.asarray(nibabel.load(str(new)).dataobj), np.asarray(nibabel.load(str(previous)).dataobj))
    np.testing.assert_array_equal(nibabel.load(str(new)).affine, nibabel.load(str(previous)).affine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.nii.gz", "previous.nii.gz"]  # no temp files left


@pytest.mark.parametrize("ext", FORMATS)
def test_outputs_keep_the_input_file_type_and_integer_voxels(tmp_path, ext):
    from SynBTLib.case import StoredFormat

    geometry = oblique_geometry()
    rng = np.random.default_rng(6)
    arrays = [rng.integers(0, 1200, size=geometry.shape).astype(np.int16) for _ in range(3)]
    paths = [write_image(a, geometry, tmp_path / "in" / f"phase_{k}{ext}") for k, a in enumerate(arrays)]
    case = read_case(tmp_path / "in")
    assert case.stored == StoredFormat(ext, "int16")
    assert case.phases.dtype == np.float32

    result = case.with_phases(case.phases + np.float32(0.3))  # what a synthesis gives: float32
    result.phases[0, 1, 2, 3] = -40000.0  # beyond int16: clipped
    written = write_case(result, tmp_path / "out", result.stored)
    assert [p.name for p in written] == [f"phase_{k}{ext}" for k in range(3)]
    back = [sitk.ReadImage(str(p)) for p in written]
    assert all(image.GetPixelID() == sitk.sitkInt16 for image in back)
    expected = np.stack(arrays).astype(np.float32)  # x + 0.3 rounds back to x
    expected[0, 1, 2, 3] = np.iinfo(np.int16).min
    np.testing.assert_array_equal(np.stack([sitk.GetArrayFromImage(b) for b in back]), expected)

    floats = read_case([write_image(a.astype(np.float32) + 0.25, geometry, tmp_path / f"f{k}.nii") for k, a in
                        enumerate(arrays[:2])])
    assert floats.stored == StoredFormat(".nii", "float32")
    assert read_case(paths, select=lambda names: [0, 2]).phase_names == ["phase_0", "phase_2"]


def test_stored_format_refuses_what_it_cannot_write():
    from SynBTLib.case import StoredFormat

    with pytest.raises(SynBTError, match=r"\.dcm"):
        StoredFormat(".dcm")
    with pytest.raises(SynBTError, match="float64"):
        StoredFormat(".nii", "float64")
