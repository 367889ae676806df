"""The realism suite on phantom 2: the twin is the same phantom without the lesion (every random draw
kept), both keep the phases a bundle models by its phase policy, and the bench runs end to end on the
small preset with a tiny real bundle."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from SynBTLib.errors import SynBTError
from SynBTLib.phantom import make_phantom
from SynBTLib.phase_choice import BundlePhases
from SynBTLib.realism import choose_study_phases, phantom_study_case

REPO = Path(__file__).resolve().parent.parent


def test_the_twin_is_the_same_phantom_without_the_lesion():
    # no point spread and no motion: nothing outside the lesion may differ in any phase (but the float
    # rounding of the zero-motion FFT, which sees the lesion)
    exact = phantom_study_case(11, preset="small", resolution=1.0, motion_mm=0.0, tumor_diameters_mm=25.0)
    inside = exact.mask > 0
    assert inside.any() and exact.real.num_phases >= 3
    np.testing.assert_allclose(exact.real.phases[:, ~inside], exact.background.phases[:, ~inside],
                               rtol=0, atol=1e-5 * float(exact.real.phases.max()))
    assert not np.allclose(exact.real.phases[:, inside], exact.background.phases[:, inside])
    # with the drawn motion, ghosts and point spread, the twins differ only around the lesion; a phantom
    # drawn with tumors=0 is another phantom (texture, noise and motion drawn afresh)
    study = phantom_study_case(12, preset="small", tumor_diameters_mm=25.0)
    inside = study.mask > 0
    far = ndimage.distance_transform_edt(~inside, sampling=study.real.geometry.spacing[::-1]) > 15.0
    twin_gap = np.abs(study.real.phases - study.background.phases)[:, far].mean()
    fresh = make_phantom(seed=12, tumors=0, preset="small").case.phases
    fresh_gap = np.abs(study.real.phases - fresh)[:, far].mean()
    assert twin_gap < 0.02 * fresh_gap
    assert np.abs(study.real.phases - study.background.phases)[:, inside].mean() > 20 * twin_gap
    assert study.meta["preset"] == "small" and study.meta["tumor"]["lesion_type"] in ("mass", "nme")
    assert study.meta["mask_in_background_breast"] > 0.9


def test_both_cases_keep_the_phases_the_bundle_models():
    study = phantom_study_case(13, preset="small", phases=5)
    chosen = choose_study_phases(study, BundlePhases(3, "pre,first,last"))
    assert chosen.meta["phases"]["indices"] == [0, 1, 4]
    assert chosen.real.phase_names == chosen.background.phase_names == ["pre", "post1", "post4"]
    np.testing.assert_array_equal(chosen.real.phases, study.real.phases[[0, 1, 4]])
    np.testing.assert_array_equal(chosen.background.phases, study.background.phases[[0, 1, 4]])
    assert chosen.meta["phases"]["times_s"][2] == pytest.approx(study.meta["phase_times_s"][4], abs=0.1)
    with pytest.raises(SynBTError, match="phase policy"):
        choose_study_phases(study, BundlePhases(3, None))
    three = phantom_study_case(13, preset="small", phases=3)
    assert choose_study_phases(three, BundlePhases(3, None)).real.num_phases == 3


def test_the_suite_runs_on_phantom_2_with_a_tiny_bundle(tmp_path):
    sys.path.insert(0, str(REPO / "Testing"))
    from test_cli_synthesize import kinetic_bundle

    bundle = kinetic_bundle(tmp_path / "bundle", None, kinetic=False)
    command = [sys.executable, str(REPO / "bench" / "realism_suite.py"), "--preset", "small", "--set", "dev",
               "--n", "5", "--bundle", str(bundle), "--steps", "2", "--repeats", "1", "--examples", "2",
               "--variants", "all", "--threads", "1", "--out", str(tmp_path / "out")]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--phase-policy" in refused.stderr  # the bundle records no policy
    completed = subprocess.run([*command, "--phase-policy", "pre,first,last"], capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["preset"] == "small" and manifest["phase_policy"] == "pre,first,last"
    assert manifest["seeds"][0] == json.loads((REPO / "bench" / "realism_seeds.json").read_text())["phantom2"]["dev"]["cases"]["first"]
    assert sum(manifest["lesion_types"].values()) == 5
    assert len(manifest["real_rows_sha256"]) == 64
    sources = {row["source"]: row for row in manifest["results"]}
    assert set(sources) == {"oracle", "autoencoder", "all"}
    assert all(0.0 <= row["auc_boosting"] <= 1.0 for row in sources.values())
    assert (tmp_path / "out" / "montage.png").stat().st_size > 0
    other = subprocess.run([*command, "--phase-policy", "pre,first"], capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and "picks 2 phases" in other.stderr


def test_the_real_rows_digest_sees_the_real_tumors_only(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("realism_suite_bench", REPO / "bench" / "realism_suite.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    header = ",".join(bench.META_COLUMNS + ["fo_pre_mean"])

    def digest(real_value, synthetic_value, asked="washout"):
        path = tmp_path / "suite_features.csv"
        meta = "0,6100000,{},812,irregular,False,washout,mass,5,True,1.5,{}"
        path.write_text("\n".join([header, meta.format("real", "washout") + f",{real_value}",
                                    meta.format("all", asked) + f",{synthetic_value}"]) + "\n")
        return bench.real_rows_digest(path)

    assert digest(1.25, 3.0) == digest(1.25, 4.0)  # another bundle's synthesis: the same real tumors
    assert digest(1.25, 3.0) == digest(1.25, 3.0, asked="plateau")  # the type a synthesis drew
    assert digest(1.25, 3.0) != digest(1.26, 3.0)  # another real tumor
    # files written before the asked_kinetics column digest as they did then (the held-out figures compare)
    old = tmp_path / "old.csv"
    old_meta = "0,6100000,real,812,irregular,False,washout,mass,5,True,1.5,1.25"
    old.write_text(",".join([c for c in bench.META_COLUMNS if c != bench.ASKED] + ["fo_pre_mean"]) + "\n" + old_meta + "\n")
    assert bench.real_rows_digest(old) == digest(1.25, 3.0)
