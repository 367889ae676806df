"""calibrated_bundle.drop_image_stages: the image-calibration maps the realism suite did not keep."""
import json
import shutil

import pytest

from SynBTLib.bundle import default_bundle_path, load_bundle
from SynBTLib.calibrated_bundle import drop_image_stages
from SynBTLib.errors import SynBTError
from SynBTLib.pipeline import SynthesisPipeline


@pytest.fixture
def bundle_copy(tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), path)
    return path


def test_dropped_maps_leave_the_pipeline_and_the_bundle_still_verifies(bundle_copy):
    before = SynthesisPipeline.from_bundle(bundle_copy).image_calibration
    assert before.coherence is not None  # the shipped bundle's coherence map

    removed = drop_image_stages(bundle_copy, ["coherence", "texture"], "test reason")

    assert removed == ["coherence"]  # the shipped bundle has no texture map to remove
    after = SynthesisPipeline.from_bundle(bundle_copy).image_calibration  # load_bundle verifies SHA256SUMS
    assert after.coherence is None
    assert after.factor == before.factor and after.shift == before.shift  # moments untouched
    assert "test reason" in (bundle_copy / "MODEL_CARD.md").read_text()
    assert drop_image_stages(bundle_copy, ["coherence"], "again") == []  # nothing left to drop: no change


def test_unknown_stage_is_refused_and_a_bundle_without_image_calibration_is_left_as_it_is(bundle_copy):
    with pytest.raises(SynBTError, match="unknown calibration stage"):
        drop_image_stages(bundle_copy, ["moments"], "x")
    config = json.loads((bundle_copy / "config.json").read_text())
    config.pop("image_calibration")
    (bundle_copy / "config.json").write_text(json.dumps(config))
    before = (bundle_copy / "config.json").read_bytes()
    assert drop_image_stages(bundle_copy, ["texture"], "x") == []  # calibrate --latent-only: nothing to drop
    assert (bundle_copy / "config.json").read_bytes() == before
    load_bundle(default_bundle_path())  # the shipped bundle was never touched
