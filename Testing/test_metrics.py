"""Metrics against hand-computed values, and `synbt evaluate` end to end on real label files."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from SynBTLib import metrics
from SynBTLib.case import Case, Geometry
from SynBTLib.cli import main
from SynBTLib.errors import SynBTError

SPACING = (0.7, 1.1, 3.0)  # (x, y, z) mm, anisotropic
SHAPE = (20, 24, 28)  # (Z, Y, X)


def cube(z=5, y=5, x=5, side=10):
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[z : z + side, y : y + side, x : x + side] = 1
    return mask


def reference_hd95(a, b, spacing_xyz):
    """Independent HD95: surface = mask minus its erosion, KD-tree distances in mm, 95th percentile each way."""
    scale = np.asarray(spacing_xyz)[::-1]
    surfaces = [np.argwhere(m & ~ndimage.binary_erosion(m, border_value=0)) * scale for m in (a > 0, b > 0)]
    forward = cKDTree(surfaces[1]).query(surfaces[0])[0]
    backward = cKDTree(surfaces[0]).query(surfaces[1])[0]
    return max(np.percentile(forward, 95), np.percentile(backward, 95))


def test_cubes_offset_along_x_and_z_match_hand_values():
    # Shift by d voxels along one axis: overlap (side - d)/side, so Dice = (side - d)/side. The whole
    # leading face (20% of the surface voxels) lies d voxels from the other cube's surface and nothing
    # lies farther, so the 95th percentile distance is d times that axis' spacing.
    a = cube()
    assert metrics.dice(a, cube(x=7)) == pytest.approx(0.8)
    assert metrics.hd95(a, cube(x=7), SPACING) == pytest.approx(2 * 0.7, rel=1e-5)
    assert metrics.dice(a, cube(z=6)) == pytest.approx(0.9)
    assert metrics.hd95(a, cube(z=6), SPACING) == pytest.approx(3.0, rel=1e-5)
    assert metrics.hd95(a, cube(y=8), Geometry(SHAPE[::-1], SPACING, (0, 0, 0))) == pytest.approx(3 * 1.1, rel=1e-5)


def test_hd95_matches_an_independent_computation_on_irregular_shapes():
    rng = np.random.default_rng(3)
    a = ndimage.gaussian_filter(rng.random(SHAPE), 2.0) > 0.52
    b = ndimage.gaussian_filter(rng.random(SHAPE), 2.0) > 0.52
    assert a.any() and b.any()
    assert metrics.hd95(a, b, SPACING) == pytest.approx(reference_hd95(a, b, SPACING), rel=1e-4)
    expected_dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert metrics.dice(a, b) == pytest.approx(expected_dice, rel=1e-6)


def test_empty_masks_follow_the_documented_conventions():
    empty, full = np.zeros(SHAPE, np.uint8), cube()
    assert metrics.dice(empty, empty) == 1.0 and metrics.hd95(empty, empty, SPACING) == 0.0
    assert metrics.dice(full, empty) == 0.0 and metrics.hd95(full, empty, SPACING) == np.inf
    assert metrics.dice(empty, full) == 0.0 and metrics.hd95(empty, full, SPACING) == np.inf
    with pytest.raises(SynBTError, match="same grid"):
        metrics.dice(full, full[:-1])


def test_volume_error_in_millilitres():
    voxel_ml = 0.7 * 1.1 * 3.0 / 1000
    assert metrics.volume_ml(cube(), SPACING) == pytest.approx(1000 * voxel_ml)
    small = cube(side=5)
    assert metrics.volume_error_ml(small, cube(), SPACING) == pytest.approx((125 - 1000) * voxel_ml)


def test_psnr_and_ssim_against_hand_values():
    rng = np.random.default_rng(0)
    reference = rng.random(SHAPE)
    offset = reference + 0.1  # mse = 0.01 everywhere
    assert metrics.psnr(offset, reference, data_range=1.0) == pytest.approx(20.0, abs=1e-6)
    inside = cube().astype(bool)
    partly = reference + 0.1 * inside  # error only inside the cube
    assert metrics.psnr(partly, reference, mask=inside, data_range=1.0) == pytest.approx(20.0, abs=1e-6)
    assert metrics.psnr(partly, reference, mask=~inside, data_range=1.0) == np.inf
    assert metrics.ssim(reference, reference) == pytest.approx(1.0, abs=1e-6)
    noisy = reference + 0.3 * rng.standard_normal(SHAPE) * inside
    # SSIM windows (7 voxels wide) centred 4+ voxels (chessboard) from the cube never see the noise
    far = ~ndimage.binary_dilation(inside, structure=np.ones((3, 3, 3)), iterations=3)
    assert metrics.ssim(noisy, reference, mask=far) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ssim(noisy, reference, mask=inside) < 0.8
    with pytest.raises(SynBTError, match="window"):
        metrics.ssim(reference[:5], reference[:5])


def test_tumor_features_recover_a_known_enhancement_curve_and_texture():
    geometry = Geometry(SHAPE[::-1], SPACING, (0, 0, 0))
    inside = cube().astype(bool)
    levels = [100.0, 200.0, 170.0]  # +100% wash-in, then 15% wash-out
    phases = np.stack([np.where(inside, v, 50.0) for v in levels]).astype(np.float32)
    features = metrics.tumor_features(Case(phases, geometry), inside)
    assert features["voxels"] == 1000
    assert features["relative_enhancement"] == pytest.approx([0.0, 1.0, 0.7])
    assert features["wash_in_slope"] == pytest.approx(1.0) and features["wash_out_slope"] == pytest.approx(-0.3)
    assert features["curve_type"] == "washout" and features["time_to_peak_phase"] == 1
    assert features["glcm_contrast"] == 0.0 and features["glcm_homogeneity"] == 1.0
    assert features["phases"][1]["mean"] == pytest.approx(200.0)

    checker = (np.indices(SHAPE).sum(axis=0) % 2).astype(np.float32)
    textured = phases.copy()
    textured[1] += 50.0 * checker * inside
    rough = metrics.tumor_features(Case(textured, geometry), inside)
    assert rough["glcm_contrast"] > 100 and rough["glcm_homogeneity"] < 0.1
    # gradients (central differences, inside the mask only): 2-voxel blocks, which they can see
    blocks = ((np.indices(SHAPE) // 2).sum(axis=0) % 2).astype(np.float32)
    blocky = phases.copy()
    blocky[1] += 50.0 * blocks * inside
    assert features["gradient_mean"] == 0.0  # the flat tumor's edge against the background does not count
    assert metrics.tumor_features(Case(blocky, geometry), inside)["gradient_mean"] > 5.0
    with pytest.raises(SynBTError, match="empty"):
        metrics.tumor_features(Case(phases, geometry), np.zeros(SHAPE, np.uint8))


# ------------------------------------------------------------------------------ synbt evaluate


def write_label(mask, path, spacing=SPACING):
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 5.0, 2.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture
def label_folders(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir(), truth.mkdir()
    write_label(cube(x=7), pred / "case_a.nii.gz")
    write_label(cube(), truth / "case_a.nii.gz")
    write_label(cube(z=6), pred / "case_b.nrrd")  # extensions may differ: matched by case id
    write_label(cube() * 2, truth / "case_b.nii.gz")  # any nonzero value is tumor
    return pred, truth


def test_evaluate_writes_per_case_metrics_summary_and_plot(label_folders, tmp_path, capsys):
    pred, truth = label_folders
    out = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(out)]) == 0
    with open(out / "metrics.csv") as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert float(rows["case_a"]["dice"]) == pytest.approx(0.8)
    assert float(rows["case_a"]["hd95_mm"]) == pytest.approx(1.4, rel=1e-5)
    assert float(rows["case_b"]["dice"]) == pytest.approx(0.9)
    assert float(rows["case_b"]["hd95_mm"]) == pytest.approx(3.0, rel=1e-5)
    assert float(rows["case_b"]["volume_error_ml"]) == pytest.approx(0.0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 2
    assert summary["dice"]["mean"] == pytest.approx(0.85) and summary["dice"]["std"] == pytest.approx(0.05)
    assert summary["hd95_mm"]["mean"] == pytest.approx(2.2, rel=1e-5)
    assert (out / "metrics.png").stat().st_size > 1000
    assert "dice" in capsys.readouterr().out


def test_evaluate_refuses_missing_counterparts_and_other_grids(label_folders, tmp_path, capsys):
    pred, truth = label_folders
    write_label(cube(), truth / "case_c.nii.gz")
    write_label(cube(), pred / "case_z.nii.gz")
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "r1")]) == 2
    error = capsys.readouterr().err
    assert "no prediction for case_c" in error and "no truth for case_z" in error and error.count("\n") == 1

    (truth / "case_c.nii.gz").unlink(), (pred / "case_z.nii.gz").unlink()
    write_label(cube(), pred / "case_a.nii.gz", spacing=(1.0, 1.0, 1.0))
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "r2")]) == 2
    error = capsys.readouterr().err
    assert "different grids" in error and "case_a" in error and "case_b" not in error
