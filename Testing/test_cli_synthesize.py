"""`synbt synthesize` end to end on small NIfTI files, its JSON progress, and its one-line errors."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SynBTLib.cli import main
from SynBTLib.io import write_image, write_label
from test_handcrafted import make_case, sphere_mask


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inputs(tmp_path):
    """Three phase files and a label mask (tumor value 1, a second lesion value 2) on disk."""
    case = make_case()
    folder = tmp_path / "in"
    phases = [write_image(phase, case.geometry, folder / f"p{k}.nii.gz") for k, phase in enumerate(case.phases)]
    labels = sphere_mask() + 2 * sphere_mask(centre=(10, 20, 38), radius_mm=3.0)
    mask = write_label(labels, case.geometry, folder / "mask.nii.gz")
    return case, [str(p) for p in phases], mask


def run_cli(*args) -> int:
    args = [str(a) for a in args]
    if "--method" not in args:
        args += ["--method", "handcrafted"]
    return main(["synthesize", *args])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("synbt synthesize: error:")
    return err[0]


def test_end_to_end_writes_outputs_and_keeps_inputs(inputs, tmp_path, capsys):
    case, phases, mask = inputs
    before = {p: sha256(p) for p in [*map(Path, phases), mask]}
    out = tmp_path / "out"
    assert run_cli("--phases", *phases, "--mask", mask, "--label", 1, "--seed", 4, "--out", out) == 0
    assert "written to" in capsys.readouterr().out

    assert {p: sha256(p) for p in before} == before
    names = sorted(p.name for p in out.iterdir())
    assert names == ["phase_0.nii.gz", "phase_1.nii.gz", "phase_2.nii.gz", "preview.png", "provenance.json",
                     "tumor_labels.nii.gz"]
    tumor = sphere_mask()
    label = sitk.ReadImage(str(out / "tumor_labels.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(label), tumor)
    assert np.allclose(label.GetSpacing(), case.geometry.spacing) and np.allclose(label.GetOrigin(), case.geometry.origin)
    result = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"phase_{k}.nii.gz"))) for k in range(3)])
    untouched = np.all(result == case.phases, axis=0)
    assert untouched[sphere_mask(radius_mm=8.0) == 0].all()
    assert not untouched[tumor > 0].any()

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["method"] == "handcrafted" and provenance["seed"] == 4
    assert {entry["sha256"] for entry in provenance["inputs"]} == set(before.values())
    assert provenance["versions"]["torch"] and provenance["versions"]["monai"]
    assert provenance["tumor"]["voxels"] == int(tumor.sum())
    assert provenance["details"]["synthesizer"]["appearance"]["kinetics"] in ("plateau", "washout")
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_output_and_json_progress(inputs, tmp_path, capsys):
    _, phases, mask = inputs
    for name in ("a", "b"):
        assert run_cli("--phases", *phases, "--mask", mask, "--label", 2, "--progress", "json", "--out", tmp_path / name) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    events = [json.loads(line) for line in lines]
    assert all(set(e) == {"event", "done", "total", "message"} for e in events if e["event"] == "progress")
    first_run = events[: len(events) // 2]
    done = [e["done"] for e in first_run if e["event"] == "progress"]
    assert done == sorted(done) and done[-1] == first_run[-2]["total"]
    assert events[-1] == {"event": "done", "out": str((tmp_path / "b").resolve())}
    for k in range(3):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / d / f"phase_{k}.nii.gz"))) for d in "ab")
        assert np.array_equal(a, b)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / "tumor_labels.nii.gz")))
    assert label.sum() == (sphere_mask(centre=(10, 20, 38), radius_mm=3.0)).sum()


def test_missing_mask_is_one_line_exit_2(inputs, tmp_path, capsys):
    _, phases, _ = inputs
    assert run_cli("--phases", *phases, "--mask", tmp_path / "nope.nii.gz", "--out", tmp_path / "out") == 2
    assert "nope.nii.gz" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_empty_mask_is_one_line_exit_2(inputs, tmp_path, capsys):
    case, phases, _ = inputs
    empty = write_label(np.zeros(case.shape, np.uint8), case.geometry, tmp_path / "empty.nii.gz")
    assert run_cli("--phases", *phases, "--mask", empty, "--out", tmp_path / "out") == 2
    assert "empty" in error_line(capsys)
    assert run_cli("--phases", *phases, "--mask", empty.parent / "in" / "mask.nii.gz", "--label", 5,
                   "--out", tmp_path / "out") == 2
    assert "empty" in error_line(capsys)


def test_existing_output_folder_is_refused(inputs, tmp_path, capsys):
    _, phases, mask = inputs
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_cli("--phases", *phases, "--mask", mask, "--out", out) == 2
    assert "not empty" in error_line(capsys)
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    assert run_cli("--phases", *phases, "--mask", mask, "--out", out, "--overwrite", "--label", 1) == 0
    assert (out / "keep.txt").exists() and (out / "tumor_labels.nii.gz").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--auto"], "--size-mm"),
        (["--mask", "m.nii.gz", "--size-mm", "10"], "--auto"),
        (["--mask", "m.nii.gz", "--seed", "-3"], "seed"),
        (["--mask", "m.nii.gz", "--kinetics", "washout"], "--kinetics applies to the diffusion method"),
    ],
)
def test_option_errors(inputs, tmp_path, capsys, extra, message):
    _, phases, mask = inputs
    extra = [str(mask) if e == "m.nii.gz" else e for e in extra]
    assert run_cli("--phases", *phases, *extra, "--out", tmp_path / "out") == 2
    assert message in error_line(capsys)


def test_auto_places_the_tumor_in_breast_tissue(tmp_path, capsys):
    from SynBTLib.phantom import make_phantom, write_phantom
    from SynBTLib.preprocess import breast_tissue_mask

    phantom = make_phantom(seed=2, shape=(128, 128, 40))
    write_phantom(phantom, tmp_path / "case", montage=False)
    common = ["--phases", tmp_path / "case", "--auto", "--size-mm", 10, "--seed", 5, "--progress", "json"]
    assert run_cli(*common, "--out", tmp_path / "auto") == 0
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "auto" / "tumor_labels.nii.gz")))
    assert label.any() and breast_tissue_mask(phantom.case).breast[label > 0].all()
    placement = json.loads((tmp_path / "auto" / "provenance.json").read_text())["details"]["auto_placement"]

    # the drawn centre, given back explicitly with the same seed, gives the same tumor
    assert run_cli(*common, "--center", *placement["center_mm"], "--out", tmp_path / "centred") == 0
    again = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "centred" / "tumor_labels.nii.gz")))
    assert np.array_equal(label, again)
    capsys.readouterr()
    assert run_cli(*common, "--center", 1e4, 0, 0, "--out", tmp_path / "outside") == 2
    assert "outside" in error_line(capsys)


def test_diffusion_without_a_bundle_is_one_clear_line(inputs, tmp_path, capsys):
    _, phases, mask = inputs
    code = run_cli("--phases", *phases, "--mask", mask, "--method", "diffusion", "--bundle", tmp_path / "nope",
                   "--out", tmp_path / "out")
    assert code == 2
    line = error_line(capsys)
    assert "no model bundle" in line and "nope" in line
    assert not (tmp_path / "out").exists()


def kinetic_bundle(folder, frequencies, kinetic=True, necrosis=False, necrosis_frequency=1.0):
    """A tiny bundle (random real networks) whose denoiser takes a kinetic curve type (or not), and a
    necrotic core (drawn with ``necrosis_frequency`` for every tumor of 1 mm or more)."""
    import torch

    from SynBTLib.bundle import save_bundle
    from SynBTLib.nets.autoencoder import AutoencoderConfig, PatchVolumeAutoencoder
    from SynBTLib.nets.denoiser import DenoiserConfig, MaskConditionedDenoiser
    from SynBTLib.nets.scheduler import SchedulerConfig

    torch.manual_seed(0)
    autoencoder = PatchVolumeAutoencoder(AutoencoderConfig(channels=(8, 8, 8), norm_num_groups=1))
    denoiser = MaskConditionedDenoiser(DenoiserConfig(channels=(8, 16, 16), attention_levels=(False, False, True),
                                                      num_head_channels=8, norm_num_groups=4, kinetic_classes=kinetic,
                                                      mask_channels=1 + 4**3 if necrosis else 1, necrosis=necrosis))
    meta = {"phases": 3, **({"kinetic_frequencies": frequencies} if kinetic else {})}
    if necrosis:
        meta["necrosis"] = {"tumors": 4, "necrotic": 4, "min_diameter_mm": 1.0, "frequency": necrosis_frequency,
                             "core_fraction": [0.1, 0.2]}
    return save_bundle(folder, autoencoder, denoiser, SchedulerConfig(), 1.0, meta=meta, card_text="# tiny\n")


def test_kinetics_is_obeyed_recorded_and_refused_where_it_does_not_apply(inputs, tmp_path, capsys):
    _, phases, mask = inputs
    bundle = kinetic_bundle(tmp_path / "bundle", {"unspecified": 0, "persistent": 0, "plateau": 0, "washout": 5})
    common = ["--phases", *phases, "--mask", mask, "--label", 1, "--method", "diffusion", "--bundle", bundle, "--steps", 2]
    assert run_cli(*common, "--kinetics", "plateau", "--out", tmp_path / "plateau") == 0
    assert json.loads((tmp_path / "plateau" / "provenance.json").read_text())["details"]["kinetics"] == "plateau"
    assert run_cli(*common, "--out", tmp_path / "drawn") == 0  # drawn from the bundle's training frequencies
    assert json.loads((tmp_path / "drawn" / "provenance.json").read_text())["details"]["kinetics"] == "washout"
    capsys.readouterr()
    plain = kinetic_bundle(tmp_path / "plain", None, kinetic=False)
    assert run_cli("--phases", *phases, "--mask", mask, "--label", 1, "--method", "diffusion", "--bundle", plain,
                   "--kinetics", "washout", "--out", tmp_path / "plain_out") == 2
    assert "takes no kinetic curve type" in error_line(capsys) and not (tmp_path / "plain_out").exists()


def test_necrosis_is_obeyed_recorded_and_refused_where_it_does_not_apply(inputs, tmp_path, capsys):
    _, phases, mask = inputs
    bundle = kinetic_bundle(tmp_path / "bundle", None, kinetic=False, necrosis=True)
    common = ["--phases", *phases, "--mask", mask, "--label", 1, "--method", "diffusion", "--bundle", bundle, "--steps", 2]
    cores = {}
    for option in ("yes", "no", None):
        out = tmp_path / f"n_{option}"
        assert run_cli(*common, *(["--necrosis", option] if option else []), "--out", out) == 0
        cores[option] = json.loads((out / "provenance.json").read_text())["details"]["necrotic_core_voxels"]
    assert cores["yes"] > 0 and cores["no"] == 0 and cores[None] > 0  # drawn: every training tumor was necrotic
    capsys.readouterr()
    plain = kinetic_bundle(tmp_path / "plain", None, kinetic=False)
    for extra, message in ((["--method", "diffusion", "--bundle", plain], "trained without necrotic cores"),
                           (["--method", "handcrafted"], "--necrosis applies to the diffusion method")):
        out = tmp_path / "refused"
        assert run_cli("--phases", *phases, "--mask", mask, "--label", 1, *extra, "--necrosis", "yes", "--out", out) == 2
        assert message in error_line(capsys) and not out.exists()


def test_overwrite_leaves_no_phase_of_an_earlier_result(inputs, tmp_path):
    _, phases, mask = inputs
    out = tmp_path / "out"
    assert run_cli("--phases", *phases, "--mask", mask, "--out", out) == 0
    assert (out / "phase_2.nii.gz").is_file()
    assert run_cli("--phases", *phases[:2], "--mask", mask, "--overwrite", "--out", out) == 0
    assert sorted(p.name for p in out.glob("phase_*.nii.gz")) == ["phase_0.nii.gz", "phase_1.nii.gz"]


def test_auto_keeps_away_from_the_tumors_the_case_has_and_the_label_keeps_them(tmp_path, capsys):
    from SynBTLib.labels import EXISTING_TUMOR_LABEL, TUMOR_LABEL
    from SynBTLib.phantom import make_phantom, write_phantom
    from SynBTLib.shapes import EXISTING_TUMOR_CLEARANCE_MM, near

    phantom = make_phantom(seed=3, shape=(128, 128, 40), tumors=2)
    write_phantom(phantom, tmp_path / "case", montage=False)
    existing = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case" / "tumor_labels.nii.gz"))) > 0
    assert existing.any()
    spacing_zyx = phantom.case.geometry.spacing[::-1]
    keep_out = near(existing, spacing_zyx, EXISTING_TUMOR_CLEARANCE_MM)
    for seed in (7, 8):
        out = tmp_path / f"r{seed}"
        assert run_cli("--phases", tmp_path / "case", "--auto", "--size-mm", 20, "--seed", seed, "--out", out) == 0
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "tumor_labels.nii.gz")))
        new = label == TUMOR_LABEL
        assert new.any() and not (new & keep_out).any()
        assert np.array_equal(label == EXISTING_TUMOR_LABEL, existing)  # every existing tumor voxel kept
        recorded = json.loads((out / "provenance.json").read_text())["details"]["existing_tumors"]
        assert recorded["voxels"] == int(existing.sum()) and recorded["label_value"] == EXISTING_TUMOR_LABEL
    # a centre given on an existing tumor is refused; with --existing-tumors none the label holds the new tumor only
    centre = phantom.case.geometry.index_to_physical(np.argwhere(existing)[0][::-1].astype(float))
    capsys.readouterr()
    assert run_cli("--phases", tmp_path / "case", "--auto", "--size-mm", 10, "--center", *centre,
                   "--out", tmp_path / "on_top") == 2
    assert "allowed region" in error_line(capsys)
    assert run_cli("--phases", tmp_path / "case", "--auto", "--size-mm", 20, "--seed", 7, "--existing-tumors", "none",
                   "--out", tmp_path / "ignored") == 0
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ignored" / "tumor_labels.nii.gz")))
    assert set(np.unique(label)) == {0, TUMOR_LABEL}


def test_a_refused_output_folder_comes_before_any_model_is_loaded(inputs, tmp_path, capsys):
    _, phases, mask = inputs
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # the bundle does not exist: were it loaded first, the error would name it
    assert run_cli("--phases", *phases, "--mask", mask, "--method", "diffusion", "--bundle", tmp_path / "nope",
                   "--out", out) == 2
    line = error_line(capsys)
    assert "--overwrite" in line and "overwrite=True" not in line and "bundle" not in line
    assert run_cli("--phases", *phases, "--mask", tmp_path / "no_mask.nii.gz", "--out", tmp_path / "o2") == 2
    assert "no_mask.nii.gz" in error_line(capsys) and not (tmp_path / "o2").exists()
