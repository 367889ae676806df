"""tools/rebuild_bundle.py: the shipped bundle's recipe, run end to end in its tiny form."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SynBTLib.bundle import SUMS_FILE, load_bundle

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("rebuild_bundle", REPO / "tools" / "rebuild_bundle.py")
rebuild_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rebuild_bundle)


def test_an_unknown_stage_to_drop_stops_the_rebuild_before_it_starts(tmp_path):
    with pytest.raises(SystemExit, match="moments"):
        rebuild_bundle.rebuild(tmp_path / "work", "9.9", "x", tiny=True, drop_stages=("texture", "moments"))
    assert not (tmp_path / "work").exists()


@pytest.mark.slow  # about 3 minutes on 2 CPU cores: cohorts, three trainings, calibration, a synthesis
def test_tiny_rebuild_makes_a_versioned_bundle_that_loads_and_synthesizes(tmp_path):
    previous = tmp_path / "previous"
    previous.mkdir()
    earlier = {"version": "1.0", "date": "2026-01-01", "change": "first release", "commit": None}
    (previous / "config.json").write_text(json.dumps({"release": {"version": "1.0", "changelog": [earlier]}}))
    messages = []
    bundle = rebuild_bundle.rebuild(tmp_path / "work", "1.1-test", "tiny rebuild", tiny=True, previous=previous,
                                    log=messages.append, drop_stages=("texture", "shape"), drop_reason="test")

    loaded = load_bundle(bundle)  # checksums verified
    assert loaded.denoiser is not None and loaded.calibration is not None
    assert loaded.denoiser.config.necrosis and loaded.denoiser.config.kinetic_classes  # the necrosis fine-tune ran
    release = loaded.config["release"]
    assert release["version"] == "1.1-test"
    assert [e["version"] for e in release["changelog"]] == ["1.0", "1.1-test"]  # the previous changelog continues
    assert release["changelog"][-1]["change"] == "tiny rebuild"
    commands = release["commands"]
    assert [c.split()[1] for c in commands[:-1]] == ["phantom-cohort"] * 3 + ["train-autoencoder"] \
        + ["train-diffusion"] * 2 + ["calibrate"]
    assert commands[-1].endswith("--drop-stages texture,shape")  # the recipe's last step, so a replay matches
    assert all("--preset" in c for c in commands[:3])  # Phantom 2 cohorts
    assert loaded.config["phase_policy"] == rebuild_bundle.PHASE_POLICY  # recorded for synthesize / export / Slicer
    assert "config.json" in (bundle / SUMS_FILE).read_text() and "1.1-test" in (bundle / "MODEL_CARD.md").read_text()
    # the tiny recipe calibrates --latent-only: --drop-stages finds nothing to leave out, and says so
    assert "image_calibration" not in loaded.config
    assert "left out of the image calibration: nothing (none was fitted)" in messages

    check = tmp_path / "work" / "check"  # the tool's own check: synthesize made a tumor in a held-out case
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(check / "tumor_labels.nii.gz")))
    assert (labels == 1).any()

    # run again: every step is found done and reused, the networks are the same
    weights = (bundle / "denoiser.safetensors").read_bytes()
    messages.clear()
    rebuild_bundle.rebuild(tmp_path / "work", "1.1-test", "tiny rebuild", tiny=True, previous=previous,
                           log=messages.append)
    assert sum(m.startswith("(done") for m in messages) == 6
    assert (bundle / "denoiser.safetensors").read_bytes() == weights
    assert np.isfinite(loaded.latent_scale)
