"""`synbt calibrate` says which tumors it measures and which it skips, and counts its progress from the data."""
import inspect

import numpy as np

from SynBTLib.calibration import tumor_samples
from SynBTLib.cli import main
from SynBTLib.commands.calibrate import MIN_TUMOR_VOXELS, survey
from SynBTLib.io import write_case, write_label
from test_handcrafted import make_case, sphere_mask


def _cohort(root, tiny_in: tuple[int, ...]):
    """Two cases with one 7 mm tumor each; the cases in ``tiny_in`` get an 8-voxel one too (labelled first)."""
    for k in range(2):
        case = make_case(seed=5 + k)
        label = sphere_mask(centre=(10, 20, 20), radius_mm=7.0).astype(np.uint8)
        if k in tiny_in:
            label[2:4, 2:4, 2:4] = 1
        write_case(case, root / f"case_{k}")
        write_label(label, case.geometry, root / f"case_{k}" / "tumor_labels.nii.gz")
    return root


def test_survey_lists_the_measured_and_the_skipped_tumors_as_calibration_reads_them(tmp_path):
    assert MIN_TUMOR_VOXELS == inspect.signature(tumor_samples).parameters["min_voxels"].default
    data = _cohort(tmp_path / "data", tiny_in=(1,))
    used, small = survey(data, max_tumors=24)
    assert used == [name for name, _, _ in tumor_samples(data)] == ["case_0 tumor 1", "case_1 tumor 2"]
    assert len(small) == 1 and small[0].startswith("case_1 tumor 1") and "8 voxels" in small[0]
    assert survey(data, max_tumors=1)[0] == ["case_0 tumor 1"]  # the progress total follows --max-tumors and the data


def test_too_few_tumors_left_is_refused_naming_the_skipped_ones_before_the_bundle_loads(tmp_path, capsys):
    data = tmp_path / "data"
    _cohort(data, tiny_in=(0,))
    (data / "case_1" / "tumor_labels.nii.gz").unlink()  # one measurable tumor is left, and a tiny one
    code = main(["calibrate", "--bundle", str(tmp_path / "no_bundle"), "--data", str(data), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "found 1" in err and "case_0 tumor 1 (8 voxels)" in err and "no_bundle" not in err
    assert not (tmp_path / "o").exists()


def test_many_small_fragments_are_counted_on_one_short_line():
    from SynBTLib.commands.calibrate import SKIPPED_NAMED, _skipped_text

    few = [f"case_{k} tumor 1 (3 voxels)" for k in range(SKIPPED_NAMED)]
    assert all(name in _skipped_text(few) for name in few)  # a few: every one named
    many = [f"case_{k // 10} tumor {k % 10 + 1} (2 voxels)" for k in range(40)]  # 40 fragments in 4 cases
    text = _skipped_text(many)
    assert "40 parts" in text and "4 cases" in text and many[0] in text and many[-1] not in text
    assert len(text) < 200 and _skipped_text([]) == ""
