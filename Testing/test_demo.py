import json
import re

import numpy as np
import pytest

from SynBTLib import SynBTError
from SynBTLib.cli import main
from SynBTLib.demo import run_demo
from SynBTLib.io import read_case, read_mask


def test_demo_writes_outputs_and_changes_only_the_tumor_region(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, seed=1, method="handcrafted", size_mm=20.0, shape=(96, 96, 32))
    for name in ("demo.png", "demo.json", "phantom/phase_0.nii.gz", "synthetic/phase_2.nii.gz",
                 "synthetic/tumor_labels.nii.gz"):
        assert (out / name).is_file(), name
    before = read_case(out / "phantom")
    after = read_case(sorted((out / "synthetic").glob("phase_*.nii.gz")))
    mask = read_mask(out / "synthetic" / "tumor_labels.nii.gz", before.geometry)
    changed = np.any(after.phases != before.phases, axis=0)
    assert changed[mask > 0].mean() > 0.95
    # the blend margin is a few mm: nothing changes far from the tumor
    zz, yy, xx = np.nonzero(mask)
    far = np.ones_like(changed)
    far[max(zz.min() - 3, 0): zz.max() + 4, max(yy.min() - 5, 0): yy.max() + 6, max(xx.min() - 5, 0): xx.max() + 6] = False
    assert not changed[far].any()
    # the synthetic tumor enhances
    enh = after.phases[1][mask > 0].mean() / max(after.phases[0][mask > 0].mean(), 1e-6)
    assert enh > 1.3
    assert json.loads((out / "demo.json").read_text())["method"] == "handcrafted"
    assert summary["tumor_voxels"] == int(mask.sum())
    (out / "synthetic" / "phase_0.nii.gz").write_bytes(b"stale")
    again = run_demo(out, seed=2, method="handcrafted", size_mm=20.0, shape=(96, 96, 32), overwrite=True)
    assert again["tumor_voxels"] > 0 and read_case(sorted((out / "synthetic").glob("phase_*.nii.gz"))).num_phases == 3


def test_demo_refuses_an_existing_folder(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "keep.txt").write_text("user data")
    assert main(["demo", "--out", str(tmp_path / "demo"), "--method", "handcrafted"]) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "demo" / "keep.txt").read_text() == "user data"


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(SynBTError, match="unknown method"):
        run_demo(tmp_path / "x", method="magic", shape=(64, 64, 24))
    assert not (tmp_path / "x").exists()


def test_the_shipped_bundle_loads_and_synthesizes_a_tumor():
    from SynBTLib.bundle import load_bundle
    from SynBTLib.paths import default_bundle_path
    from SynBTLib.phantom import make_phantom
    from SynBTLib.preprocess import breast_tissue_mask
    from SynBTLib.shapes import place_tumor
    from SynBTLib.synthesizers import make_synthesizer

    path = default_bundle_path()
    bundle = load_bundle(path)  # checks every sha256 and tensor shape
    assert bundle.denoiser is not None and bundle.config["phases"] == 3
    assert bundle.calibration is not None and bundle.image_calibration is not None
    assert bundle.config["phase_policy"] == "pre,first,last"  # 2.0: trained on Phantom 2's 3-6-phase cases
    image = bundle.image_calibration  # with its coherence map (necrotic cores apart)
    assert image.coherence is not None and image.coherence.core_target is not None
    # left out in 2.0: they did not improve the realism suite on its Phantom-2 dev seeds (MODEL_CARD.md)
    assert image.texture is None and image.shape is None and not image.curves
    case = make_phantom(seed=11, shape=(96, 96, 32), preset="small", phases=3).case  # coarser: resampled
    placement = place_tumor(breast_tissue_mask(case).breast, case.geometry, 20.0, seed=2)
    synth, method, steps = make_synthesizer("diffusion", path, steps=4)
    assert method == "diffusion"
    result = synth(case, placement.mask, seed=0, steps=steps)
    inside = placement.mask > 0
    # a contrast-enhancing lesion: brighter on the first post-contrast phase than before
    before = case.phases[1][inside].mean() - case.phases[0][inside].mean()
    after = result.phases[1][inside].mean() - result.phases[0][inside].mean()
    assert after > before
    assert np.isfinite(result.phases).all()


def test_demo_command_log_has_no_idle_progress_bar(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--method", "handcrafted"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("making a")
    # the synthesis bar appears with the synthesis, knowing its total (an idle one reads "synthesis: 0step [00:00")
    assert not re.search(r"synthesis: *0step \[", captured.err) and "synthesis:" in captured.err
