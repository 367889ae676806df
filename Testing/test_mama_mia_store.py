"""MAMA-MIA-ready training: phase policies from the clinical table, unusable cases skipped and counted,
and the `synbt prepare` store (resumable, parallel, the same patches as from the NIfTI files)."""
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from SynBTLib import cli
from SynBTLib.bundle_meta import phase_policy_of
from SynBTLib.datasets import PhasePolicy, apply_policy, read_clinical_times, read_dataset
from SynBTLib.errors import SynBTError
from SynBTLib.store import is_store, open_store, prepare_store
from SynBTLib.training.data import PatchSampler, load_cases

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("train_throughput", REPO / "bench" / "train_throughput.py")
train_throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_throughput)

POLICY = "pre,first,closest:150s"
GOOD = ["PHANTOM_001", "PHANTOM_002", "PHANTOM_003", "PHANTOM_004"]  # 3, 4, 5, 6 phases


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four usable cases (3-6 phases, two fat-suppressed) and three unusable ones: two phases only,
    an unreadable phase file, and no expert segmentation."""
    root = tmp_path_factory.mktemp("mama-mia")
    train_throughput.write_mama_mia_cohort(root, 4, shape=(40, 40, 16))
    extra = tmp_path_factory.mktemp("extra")
    train_throughput.write_mama_mia_cohort(extra, 3, shape=(40, 40, 16), seed=10, phase_counts=(2, 4, 3))
    table = (root / "clinical_and_imaging_info.csv").read_text().splitlines()
    for k, (case_id, new_id) in enumerate([("PHANTOM_001", "TWO_PHASES"), ("PHANTOM_002", "BROKEN"),
                                            ("PHANTOM_003", "NO_LABEL")]):
        (extra / "images" / case_id).rename(root / "images" / new_id)
        for path in (root / "images" / new_id).iterdir():
            path.rename(path.with_name(path.name.replace(case_id.lower(), new_id.lower())))
        if new_id != "NO_LABEL":
            (extra / "segmentations" / "expert" / f"{case_id.lower()}.nii.gz").rename(
                root / "segmentations" / "expert" / f"{new_id.lower()}.nii.gz")
        row = (extra / "clinical_and_imaging_info.csv").read_text().splitlines()[k + 1]
        table.append(row.replace(case_id, new_id))
    (root / "clinical_and_imaging_info.csv").write_text("\n".join(table) + "\n")
    (root / "images" / "BROKEN" / "broken_0002.nii.gz").write_bytes(b"not a NIfTI file")
    return root


def test_clinical_table_gives_each_case_its_acquisition_times(cohort):
    times = read_clinical_times(cohort)
    assert times["PHANTOM_001"] == (0.0, 90.0, 180.0)
    assert times["PHANTOM_004"] == (0.0, 30.0, 60.0, 90.0, 120.0, 150.0)
    refs = {ref.case_id: ref for ref in read_dataset(cohort)}
    assert [len(refs[c].phase_paths) for c in GOOD] == [3, 4, 5, 6]
    assert refs["PHANTOM_003"].acquisition_times == (0.0, 45.0, 90.0, 135.0, 180.0)


def test_policy_picks_pre_first_and_the_phase_closest_to_150s(cohort):
    kept, skipped = apply_policy(read_dataset(cohort), POLICY)
    picked = {ref.case_id: ref.phase_indices for ref in kept}
    # 3 phases at 90 s: 0,1,2; 60 s: 120 and 180 s tie, the earlier; 45 s: 135 s is index 3; 30 s: 150 s is index 5
    assert picked["PHANTOM_001"] == (0, 1, 2)
    assert picked["PHANTOM_002"] == (0, 1, 2)
    assert picked["PHANTOM_003"] == (0, 1, 3)
    assert picked["PHANTOM_004"] == (0, 1, 5)
    assert {r.case_id: r for r in kept}["PHANTOM_003"].phase_paths[2].name == "phantom_003_0003.nii.gz"
    assert dict(skipped).keys() == {"TWO_PHASES"}
    by_index = dict(apply_policy(read_dataset(cohort), "0,1,3")[1])
    assert {"PHANTOM_001", "TWO_PHASES"} <= by_index.keys() and "PHANTOM_002" not in by_index


def test_policy_specs_are_checked_and_closest_needs_times():
    with pytest.raises(SynBTError, match="unknown token"):
        PhasePolicy("pre,peak")
    with pytest.raises(SynBTError, match="at least two"):
        PhasePolicy("pre")
    assert PhasePolicy("pre,first,last").select(5) == (0, 1, 4)
    with pytest.raises(SynBTError, match="acquisition times"):
        PhasePolicy(POLICY).select(4, None)
    with pytest.raises(SynBTError, match="time order"):
        PhasePolicy("2,1").select(4)


def test_training_skips_unusable_cases_with_one_line_each_and_a_count(cohort, capsys):
    cases = load_cases(cohort, need_tumors=True, progress=False, policy=POLICY)
    assert [c.case_id for c in cases] == GOOD
    assert {c.image.shape[0] for c in cases} == {3}
    err = capsys.readouterr().err
    for case_id in ("TWO_PHASES", "BROKEN", "NO_LABEL"):
        assert sum(case_id in line for line in err.splitlines()) == 1
    assert "3 of 7" in err
    with pytest.raises(SynBTError, match="different numbers of phases"):
        load_cases(cohort, progress=False)  # every phase of 3-6-phase cases: no common protocol


def digest(store: Path) -> dict:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file() and p.name != "store.json"}


@pytest.fixture(scope="module")
def store(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "full"
    report = prepare_store(cohort, out, policy=POLICY, dtype="float32", progress=False)
    assert sorted(report.prepared) == sorted(GOOD + ["NO_LABEL"])
    assert {case for case, _ in report.skipped} == {"TWO_PHASES", "BROKEN"}
    return out


def test_prepare_again_does_nothing(cohort, store):
    before = {p: p.stat().st_mtime_ns for p in (store / "cases").rglob("*")}
    report = prepare_store(cohort, store, policy=POLICY, dtype="float32", progress=False)
    assert report.prepared == [] and report.skipped == []
    assert sorted(report.reused) == sorted(GOOD + ["NO_LABEL"])
    assert {p: p.stat().st_mtime_ns for p in (store / "cases").rglob("*")} == before


class Stop(Exception):
    pass


def test_interrupted_prepare_resumes_to_the_same_store(cohort, store, tmp_path):
    out = tmp_path / "resumed"
    seen = []

    def stop_after_two(case_id, reason):
        seen.extend([case_id] if reason is None else [])
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        prepare_store(cohort, out, policy=POLICY, dtype="float32", progress=False, on_case=stop_after_two)
    # what a kill inside a case leaves: a half-written temporary folder
    (out / "cases" / ".tmp-PHANTOM_004-999").mkdir()
    (out / "cases" / ".tmp-PHANTOM_004-999" / "image.npy").write_bytes(b"partial")
    assert sorted(p.name for p in (out / "cases").iterdir() if not p.name.startswith(".")) == sorted(seen)
    prepare_store(cohort, out, policy=POLICY, dtype="float32", progress=False)
    assert digest(out) == digest(store)


def test_parallel_prepare_writes_the_same_store(cohort, store, tmp_path):
    out = tmp_path / "parallel"
    prepare_store(cohort, out, workers=2, policy=POLICY, dtype="float32", progress=False)
    assert digest(out) == digest(store)


def test_store_refuses_other_settings_and_foreign_folders(cohort, store, tmp_path):
    with pytest.raises(SynBTError, match="phase_policy"):
        prepare_store(cohort, store, policy="pre,first,last", dtype="float32", progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SynBTError, match="not empty"):
        prepare_store(cohort, tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(SynBTError, match="pre,first,last"):
        load_cases(store, progress=False, policy="pre,first,last")


def test_store_gives_the_same_patches_as_the_nifti_files(cohort, store):
    from_files = load_cases(cohort, progress=False, with_tumors=True, policy=POLICY)
    from_store = load_cases(store, progress=False, with_tumors=True)
    assert is_store(store) and [c.case_id for c in from_store] == [c.case_id for c in from_files]
    assert isinstance(from_store[0].image, np.memmap)
    for a, b in zip(from_files, from_store):
        assert a.phase_names == b.phase_names and a.intensity_range == b.intensity_range
        np.testing.assert_array_equal(a.tumor_centers if a.tumor_centers is not None else [],
                                      b.tumor_centers if b.tumor_centers is not None else [])
    samplers = [PatchSampler(cases, (8, 16, 16), seed=3, tumor_fraction=0.3) for cases in (from_files, from_store)]
    for step in range(4):
        np.testing.assert_array_equal(samplers[0].sample(step, 3), samplers[1].sample(step, 3))


def test_float16_store_is_close_to_the_nifti_patches(cohort, tmp_path):
    out = tmp_path / "half"
    prepare_store(cohort, out, policy=POLICY, progress=False)  # float16, the default
    assert np.load(out / "cases" / "PHANTOM_001" / "image.npy", mmap_mode="r").dtype == np.float16
    a = PatchSampler(load_cases(cohort, progress=False, policy=POLICY), (8, 16, 16), seed=1).sample(0, 4)
    b = PatchSampler(load_cases(out, progress=False), (8, 16, 16), seed=1).sample(0, 4)
    assert b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=2e-3 * max(1.0, float(np.abs(a).max())))


def test_cli_prepare_is_resumable_and_refuses_bad_input(cohort, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["prepare", "--data", str(cohort), "--out", str(out), "--policy", POLICY]) == 0
    assert "5 cases prepared" in capsys.readouterr().out
    assert cli.main(["prepare", "--data", str(cohort), "--out", str(out), "--policy", POLICY]) == 0
    assert "0 cases prepared, 5 already there" in capsys.readouterr().out
    assert cli.main(["prepare", "--data", str(cohort), "--out", str(tmp_path / "x"), "--policy", "pre,peak"]) == 2
    assert "peak" in capsys.readouterr().err
    assert len(open_store(out)[1]) == 5


def test_bundles_record_their_phase_policy_and_old_bundles_mean_every_phase(cohort, store, tmp_path):
    from SynBTLib.bundle import load_bundle
    from SynBTLib.training.autoencoder import train_autoencoder
    from SynBTLib.training.diffusion import train_diffusion

    shipped = json.loads((REPO / "SynBTLib" / "bundles" / "phantom" / "config.json").read_text())
    assert phase_policy_of(shipped) == "pre,first,last"  # 2.0, trained on Phantom 2's 3-6-phase cases
    assert phase_policy_of({k: v for k, v in shipped.items() if k != "phase_policy"}) is None  # trained before policies
    with pytest.raises(SynBTError, match="phase_policy"):
        phase_policy_of({"phase_policy": [0, 1]})
    ae_config = {"autoencoder": {"channels": [8, 16, 16], "latent_channels": 4},
                 "training": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "warmup_steps": 1},
                 "data": {"patch_size": [16, 16, 16]}, "latent_scale_patches": 2}
    ae = train_autoencoder(store, tmp_path / "ae", ae_config, verbose=False)
    config = load_bundle(ae.bundle).config
    assert config["phase_policy"] == POLICY and config["phases"] == 3
    diffusion_config = {"denoiser": {"channels": [8, 16, 16], "attention_levels": [False, False, True],
                                     "num_head_channels": 8},
                        "training": {"steps": 1, "batch_size": 2, "checkpoint_every": 1, "warmup_steps": 1},
                        "data": {"roi_size": [16, 16, 16]}, "latent_scale_patches": 2}
    # the NIfTI folder with the autoencoder's policy: the diffusion model takes it over
    run = train_diffusion(cohort, ae.bundle, tmp_path / "diffusion", diffusion_config, verbose=False)
    assert load_bundle(run.bundle).config["phase_policy"] == POLICY


def test_throughput_bench_runs_every_stage_and_projects_to_mama_mia(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(REPO / "bench" / "train_throughput.py"), "--quick", "--steps", "2",
                             "--cases", "2", "--json", str(tmp_path / "rows.json")],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["stage"]: row for row in json.loads((tmp_path / "rows.json").read_text())["rows"]}
    assert rows.keys() == {"write cohort", "prepare", "autoencoder", "diffusion", "segmentation"}
    assert rows["prepare"]["cases"] == 2 and rows["prepare"]["store_gb_per_case"] > 0
    for name in ("autoencoder", "diffusion", "segmentation"):
        row = rows[name]
        assert row["s_per_step"] > 0 and row["samples_per_s"] == pytest.approx(row["batch"] / row["s_per_step"])
        assert row["projected_h"] == pytest.approx(
            (row["configured_steps"] * row["s_per_step"] + row["per_case_s"] * 1506) / 3600)
        assert row["peak_rss_mb"] > 0
    # diffusion's per-case work (reading + encoding every case) is timed apart from its steps
    diffusion = rows["diffusion"]
    assert diffusion["encode_per_case_s"] > 0 and diffusion["latent_gb_1506"] > 0
    assert diffusion["per_case_s"] == pytest.approx(diffusion["load_per_case_s"] + diffusion["encode_per_case_s"])
    assert "projections for 1506 cases" in result.stdout
