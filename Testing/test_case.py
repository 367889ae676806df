import numpy as np
import pytest

from SynBTLib import Case, Geometry, SynBTError
from SynBTLib.case import check_finite
from SynBTLib.cli import main


def oblique_geometry(size=(6, 5, 4)):
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return Geometry(size=size, spacing=(0.8, 0.7, 2.0), origin=(-10.0, 5.0, 30.0), direction=rot.ravel())


def test_index_physical_round_trip_on_oblique_grid():
    geo = oblique_geometry()
    ijk = np.array([[0, 0, 0], [5, 4, 3], [2.5, 1.0, 0.5]])
    xyz = geo.index_to_physical(ijk)
    np.testing.assert_allclose(xyz[0], geo.origin)
    np.testing.assert_allclose(geo.physical_to_index(xyz), ijk, atol=1e-9)
    # one step along i moves spacing[0] mm along the first direction column
    step = geo.index_to_physical([[1, 0, 0]])[0] - xyz[0]
    np.testing.assert_allclose(step, 0.8 * geo.direction_matrix[:, 0])


def test_geometry_matches_and_describe():
    geo = oblique_geometry()
    assert geo.matches(Geometry(geo.size, geo.spacing, geo.origin, geo.direction))
    assert not geo.matches(Geometry(geo.size, (0.8, 0.7, 2.5), geo.origin, geo.direction))
    assert not geo.matches(Geometry((6, 5, 5), geo.spacing, geo.origin, geo.direction))
    assert "oblique" in geo.describe() and "6x5x4" in geo.describe()


def test_case_validation_messages():
    geo = oblique_geometry()
    with pytest.raises(SynBTError, match="at least two phases"):
        Case(np.zeros((1, 4, 5, 6), np.float32), geo)
    with pytest.raises(SynBTError, match="do not match the grid"):
        Case(np.zeros((2, 4, 5, 7), np.float32), geo)
    with pytest.raises(SynBTError, match="dimensions"):
        Case(np.zeros((4, 5, 6), np.float32), geo)
    case = Case(np.zeros((3, 4, 5, 6)), geo)
    assert case.phases.dtype == np.float32 and case.phase_names == ["phase0", "phase1", "phase2"]


def test_check_finite_names_the_problem():
    data = np.zeros((2, 3, 3, 3), np.float32)
    check_finite(data, "phase 1")
    data[1, 0, 0, 0] = np.nan
    with pytest.raises(SynBTError, match="phase 1 has 1 NaN/Inf"):
        check_finite(data, "phase 1")


def test_cli_without_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: synbt" in capsys.readouterr().out


def test_cli_reports_an_unwritable_output_path_in_one_line(tmp_path, capsys):
    from SynBTLib.phantom import make_phantom, write_phantom

    write_phantom(make_phantom(seed=0, shape=(48, 48, 16)), tmp_path / "case", montage=False)
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    code = main(["synthesize", "--phases", str(tmp_path / "case"), "--mask", str(tmp_path / "case" / "tissue_labels.nii.gz"),
                 "--label", "3", "--method", "handcrafted", "--out", str(blocker / "sub")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "afile" in err[0] and "Traceback" not in err[0]
    assert blocker.read_text() == "not a folder"
