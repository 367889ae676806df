"""A bundle's phase policy applied to new cases with more phases than it models (SynBTLib.phase_choice):
`synbt synthesize` and `synbt export` on a 5-phase phantom written as NIfTI files, with a 3-phase bundle."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt

from SynBTLib import export
from SynBTLib.bundle import default_bundle_path, write_checksums
from SynBTLib.cli import main
from SynBTLib.errors import SynBTError
from SynBTLib.io import read_case, read_image
from SynBTLib.phantom import make_phantom, write_phantom
from SynBTLib.phase_choice import BundlePhases, case_id_of, choose_phases, read_times_table

TIMES = (0.0, 60.0, 120.0, 180.0, 240.0)


def policy_bundle(folder: Path, policy: str | None) -> Path:
    """The shipped 3-phase bundle, its config recording `policy` (as training records it; None: none, as
    bundles trained before policies existed)."""
    bundle = shutil.copytree(default_bundle_path(), folder)
    config = json.loads((bundle / "config.json").read_text())
    config["phase_policy"] = policy
    if policy is None:
        config.pop("phase_policy")
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    write_checksums(bundle)
    return bundle


@pytest.fixture(scope="module")
def five_phases(tmp_path_factory):
    """A 5-phase phantom case folder (phase_0..4.nii.gz, case.json) named P005, and its phantom."""
    phantom = make_phantom(seed=3, shape=(64, 64, 24), phases=5, tumors=0)
    folder = tmp_path_factory.mktemp("cases") / "P005"
    write_phantom(phantom, folder, montage=False)
    return folder, phantom


def test_choice_follows_the_policy_and_says_why_it_cannot():
    bundle = BundlePhases(3, "pre,first,last")
    assert choose_phases(3, bundle).indices == (0, 1, 2) and not choose_phases(3, bundle).is_subset
    assert choose_phases(5, bundle).indices == (0, 1, 4)
    timed = BundlePhases(3, "pre,first,closest:200s")
    assert choose_phases(5, timed, TIMES, "t.csv").indices == (0, 1, 3)
    assert "t.csv" in choose_phases(5, timed, TIMES, "t.csv").describe()
    with pytest.raises(SynBTError, match="closest:200s.*acquisition times"):
        choose_phases(5, timed)
    with pytest.raises(SynBTError, match="2 phases .* takes 3"):
        choose_phases(2, bundle)
    with pytest.raises(SynBTError, match="no phase policy"):
        choose_phases(5, BundlePhases(3, None))
    with pytest.raises(SynBTError, match="4 acquisition times"):
        choose_phases(5, timed, TIMES[:4])
    with pytest.raises(SynBTError, match="picks 2 phases"):
        choose_phases(5, BundlePhases(3, "pre,last"))


def test_times_table_and_case_ids(tmp_path):
    table = tmp_path / "clinical.csv"
    table.write_text("patient_id,field_strength,acquisition_times\nDUKE_001,3,\"[0, 90, 180]\"\nP005,1.5,0;60;120\n")
    assert read_times_table(table) == {"duke_001": (0.0, 90.0, 180.0), "p005": (0.0, 60.0, 120.0)}
    (tmp_path / "bad.csv").write_text("name,times\nx,1\n")
    with pytest.raises(SynBTError, match="acquisition_times"):
        read_times_table(tmp_path / "bad.csv")
    assert case_id_of([tmp_path / "duke_001_0000.nii.gz", tmp_path / "duke_001_0001.nii.gz"]) == "duke_001"
    assert case_id_of(tmp_path) == tmp_path.name


def test_synthesize_uses_the_policy_phases_of_a_five_phase_case(five_phases, tmp_path, capsys):
    folder, phantom = five_phases
    bundle = policy_bundle(tmp_path / "bundle", "pre,first,last")
    out = tmp_path / "out"
    assert main(["synthesize", "--phases", str(folder), "--auto", "--size-mm", "12", "--bundle", str(bundle),
                 "--steps", "2", "--existing-tumors", "none", "--out", str(out), "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert "phases 0, 1, 4 of 5" in said and "phase policy pre,first,last" in said
    assert sorted(p.name for p in out.glob("phase_*")) == ["phase_0.nii.gz", "phase_1.nii.gz", "phase_2.nii.gz"]
    provenance = json.loads((out / "provenance.json").read_text())
    used = provenance["details"]["phases_used"]
    assert (used["indices"], used["of"], used["policy"]) == ([0, 1, 4], 5, "pre,first,last")
    assert provenance["phase_names"] == [phantom.case.phase_names[k] for k in (0, 1, 4)]

    # far from the tumor each output phase is its chosen input phase, voxel for voxel
    tumor = read_image(out / "tumor_labels.nii.gz")[0] > 0
    far = distance_transform_edt(~tumor, sampling=phantom.case.geometry.spacing[::-1]) > 15.0
    for k, source in enumerate((0, 1, 4)):
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"phase_{k}.nii.gz")))
        np.testing.assert_array_equal(written[far], phantom.case.phases[source][far])
    assert not np.array_equal(phantom.case.phases[2][far], phantom.case.phases[4][far])


def test_synthesize_times_from_a_table_and_clear_refusals(five_phases, tmp_path, capsys):
    folder, _ = five_phases
    timed = policy_bundle(tmp_path / "timed", "pre,first,closest:200s")
    table = tmp_path / "clinical.csv"
    table.write_text("patient_id,acquisition_times\nP005,\"[0, 60, 120, 180, 240]\"\n")
    common = ["synthesize", "--phases", str(folder), "--auto", "--size-mm", "12", "--steps", "2",
              "--existing-tumors", "none", "--device", "cpu"]

    assert main([*common, "--bundle", str(timed), "--clinical-times", str(table), "--out", str(tmp_path / "a")]) == 0
    assert "phases 0, 1, 3 of 5" in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / "provenance.json").read_text())["details"]["phases_used"]["indices"] == [0, 1, 3]

    refusals = [
        ([*common, "--bundle", str(timed), "--out", str(tmp_path / "b")], "closest:200s"),  # no times
        ([*common, "--bundle", str(policy_bundle(tmp_path / "nopolicy", None)), "--out", str(tmp_path / "c")],
         "no phase policy"),
    ]
    other = tmp_path / "other.csv"
    other.write_text("patient_id,acquisition_times\nP999,\"[0, 60, 120, 180, 240]\"\n")
    refusals.append(([*common, "--bundle", str(timed), "--clinical-times", str(other), "--out", str(tmp_path / "d")],
                     "P005 is not in"))
    for argv, reason in refusals:
        assert main(argv) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and reason in err[0]
        assert not Path(argv[argv.index("--out") + 1]).exists()  # nothing written
    two = read_case(folder, select=lambda names: [0, 4])
    assert two.phase_names == [read_case(folder).phase_names[k] for k in (0, 4)]


def test_export_applies_the_policy_to_each_source_case(five_phases, tmp_path):
    folder, _ = five_phases
    source = tmp_path / "source"
    shutil.copytree(folder, source / "P005")
    write_phantom(make_phantom(seed=4, shape=(64, 64, 24), phases=2, tumors=0), source / "P002", montage=False)
    bundle = policy_bundle(tmp_path / "bundle", "pre,first,last")
    lines = []
    settings = export.ExportSettings(num_cases=1, tumors_per_case=1, size_mm=(10.0, 14.0), seed=1,
                                     method="diffusion", bundle=str(bundle), steps=2, format="monai")
    export.export_dataset(source, tmp_path / "out", settings, log=lines.append, device="cpu")
    assert any("P002" in line and "skipped" in line for line in lines)
    provenance = json.loads((tmp_path / "out" / "provenance" / "SynBT_000.json").read_text())
    assert provenance["source_case"] == "P005" and provenance["source_phase_indices"] == [0, 1, 4]
    assert [Path(p).name for p in provenance["source_phases"]] == ["phase_0.nii.gz", "phase_1.nii.gz", "phase_4.nii.gz"]
    record = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert len(record["training"][0]["image"]) == 3 and record["synbt"]["phase_policy"] == "pre,first,last"

    timed = policy_bundle(tmp_path / "timed", "pre,first,closest:200s")  # a SynBT folder has no clinical table
    with pytest.raises(SynBTError, match="none of the 2 source cases"):
        export.export_dataset(source, tmp_path / "out2", export.ExportSettings(
            num_cases=1, method="diffusion", bundle=str(timed), steps=2, format="monai"), log=lines.append, device="cpu")
