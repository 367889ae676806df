"""The procedural breast DCE-MRI phantom, its montage and the `synbt phantom` commands."""
import json

import numpy as np
import pytest

from SynBTLib import SynBTError
from SynBTLib import labels as L
from SynBTLib.cli import main
from SynBTLib.io import read_case, read_image
from SynBTLib.phantom import RESOLUTION_RANGE, make_phantom, write_phantom

SMALL = (64, 64, 24)


@pytest.fixture(scope="module")
def washout_phantom():
    return make_phantom(seed=5, shape=SMALL, phases=4, tumors=1, density="b", tumor_kinetics="washout",
                        tumor_diameters_mm=30.0, necrotic=False)


def _relative_enhancement(phases, where):
    curve = phases[:, where].mean(axis=1)
    return (curve - curve[0]) / curve[0]


def test_same_seed_same_case_and_other_seed_differs():
    a = make_phantom(seed=11, shape=SMALL, tumors=1, tumor_diameters_mm=20.0)
    b = make_phantom(seed=11, shape=SMALL, tumors=1, tumor_diameters_mm=20.0)
    c = make_phantom(seed=12, shape=SMALL, tumors=1, tumor_diameters_mm=20.0)
    np.testing.assert_array_equal(a.case.phases, b.case.phases)
    np.testing.assert_array_equal(a.tissue_labels, b.tissue_labels)
    assert a.meta == b.meta
    assert not np.array_equal(a.case.phases, c.case.phases)
    assert not np.array_equal(a.tissue_labels, c.tissue_labels)


def test_anatomy_is_in_place_and_labelled(washout_phantom):
    ph = washout_phantom
    tissue, tumor = ph.tissue_labels, ph.tumor_labels
    assert ph.case.phases.shape == (4, 24, 64, 64) and ph.case.phases.dtype == np.float32
    assert tissue.dtype == np.uint8 and tumor.dtype == np.uint8
    assert set(np.unique(tissue)) >= {L.AIR, L.SKIN, L.FAT, L.FIBROGLANDULAR, L.MUSCLE, L.CHEST_WALL, L.THORAX, L.HEART, L.TUMOR}
    rows = lambda label: np.argwhere(tissue == label)[:, 1].mean()  # noqa: E731
    # breasts anterior (low Y) of the pectoralis, the heart behind the chest wall
    assert rows(L.FIBROGLANDULAR) < rows(L.MUSCLE) < rows(L.HEART)
    breast = np.isin(tissue, L.BREAST_TISSUE)
    columns = np.argwhere(breast)[:, 2]
    assert (columns < 28).sum() > 0.3 * len(columns) and (columns > 36).sum() > 0.3 * len(columns)  # two breasts
    np.testing.assert_array_equal(tumor > 0, np.isin(tissue, (L.TUMOR, L.NECROSIS)))
    assert np.all(breast[tumor > 0])


def test_enhancement_order_tumor_fgt_fat_and_washout(washout_phantom):
    ph = washout_phantom
    phases, tissue = ph.case.phases.astype(np.float64), ph.tissue_labels
    tumor = _relative_enhancement(phases, ph.tumor_labels > 0)
    fgt = _relative_enhancement(phases, tissue == L.FIBROGLANDULAR)
    fat = _relative_enhancement(phases, tissue == L.FAT)
    assert tumor.max() > 2 * fgt.max() > 0
    assert fgt.max() > fat.max() + 0.05
    assert tumor[1] > 0.8  # fast wash-in
    curve = phases[:, ph.tumor_labels > 0].mean(axis=1)
    assert curve[-1] < 0.95 * curve[1:].max()  # washout
    assert ph.meta["tumors"][0]["measured_curve_type"] == "washout"
    assert ph.meta["phase_times_s"] == [0.0, 90.0, 180.0, 270.0]


def test_necrotic_core_does_not_enhance():
    # resolution=1: the tissue model itself, without the scanner's blur mixing rim into core at 3.5 mm voxels
    ph = make_phantom(seed=3, shape=(96, 96, 32), tumors=1, tumor_diameters_mm=40.0, necrotic=True, density="a",
                      resolution=1.0)
    core = ph.tissue_labels == L.NECROSIS
    rim = ph.tissue_labels == L.TUMOR
    assert core.any() and rim.any() and ph.meta["tumors"][0]["necrotic"]
    assert np.all(ph.tumor_labels[core] == 1)
    phases = ph.case.phases.astype(np.float64)
    assert _relative_enhancement(phases, core).max() < 0.1 < 0.8 < _relative_enhancement(phases, rim).max()


def test_the_same_body_on_any_grid():
    volumes = []
    for shape in [(64, 64, 24), (96, 96, 30)]:
        ph = make_phantom(seed=4, shape=shape)
        voxel = np.prod(ph.case.geometry.spacing)
        volumes.append([np.isin(ph.tissue_labels, L.BREAST_TISSUE).sum() * voxel, (ph.tissue_labels == L.HEART).sum() * voxel])
    np.testing.assert_allclose(volumes[0], volumes[1], rtol=0.1)


def test_density_controls_fibroglandular_fraction_and_bad_params_are_refused():
    fatty = make_phantom(seed=8, shape=SMALL, density="a")
    dense = make_phantom(seed=8, shape=SMALL, density="d")
    assert fatty.meta["fgt_fraction"] < 0.2 < 0.5 < dense.meta["fgt_fraction"]
    with pytest.raises(SynBTError, match="density"):
        make_phantom(shape=SMALL, density="e")
    with pytest.raises(SynBTError, match="unknown phantom parameter"):
        make_phantom(shape=SMALL, colour="pink")
    with pytest.raises(SynBTError, match="tumor_diameters_mm"):
        make_phantom(shape=SMALL, tumors=2, tumor_diameters_mm=[10.0])


def test_dense_breasts_keep_their_fat_envelope():
    """ACR d asks for 60-72 % FGT: the subcutaneous and retromammary fat must stay fat in every breast.

    (The FGT threshold was a quantile over all breast voxels with the envelope scored -1, so about
    half the ACR d breasts became FGT through and through.)"""
    for seed in range(6):
        ph = make_phantom(seed=seed, shape=SMALL, density="d", resolution=1.0)
        tissue = ph.tissue_labels
        half = tissue.shape[2] // 2
        for breast in (tissue[..., :half], tissue[..., half:]):
            fat, fgt = (breast == L.FAT).sum(), (breast == L.FIBROGLANDULAR).sum()
            assert fgt > 0 and fat >= 0.2 * (fat + fgt), (seed, fat, fgt)
        assert 0.5 < ph.meta["fgt_fraction"] < 0.8, (seed, ph.meta["fgt_fraction"])


def test_write_phantom_and_montage(tmp_path, washout_phantom):
    written = write_phantom(washout_phantom, tmp_path / "case")
    names = {p.name for p in written}
    assert {"phase_0.nii.gz", "phase_3.nii.gz", "tissue_labels.nii.gz", "tumor_labels.nii.gz", "case.json", "montage.png"} <= names
    assert (tmp_path / "case" / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    case = read_case(tmp_path / "case")
    assert case.geometry.matches(washout_phantom.case.geometry)
    np.testing.assert_allclose(case.phases, washout_phantom.case.phases)
    assert case.phase_names == ["pre", "post1", "post2", "post3"]
    labels, _ = read_image(tmp_path / "case" / "tumor_labels.nii.gz")
    np.testing.assert_array_equal(labels, washout_phantom.tumor_labels)
    meta = json.loads((tmp_path / "case" / "case.json").read_text())
    assert meta["tumors"][0]["kinetics"] == "washout" and "fibroglandular" in meta["tissue_signal"]


def test_cli_phantom_refuses_existing_folder_without_overwrite(tmp_path, capsys):
    out = tmp_path / "ph"
    args = ["phantom", "--out", str(out), "--seed", "2", "--shape", "48", "48", "16", "--phases", "4", "--tumors", "1"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["case.json", "montage.png", "tissue_labels.nii.gz", "tumor_labels.nii.gz"] + [f"phase_{k}.nii.gz" for k in range(4)]
    )
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(args + ["--overwrite", "--resolution", "0.75"]) == 0
    assert json.loads((out / "case.json").read_text())["parameters"]["resolution"] == 0.75
    assert main(args + ["--overwrite", "--resolution", "1.5"]) == 2
    assert "resolution" in capsys.readouterr().err


def test_cli_cohort_of_two_cases(tmp_path):
    out = tmp_path / "cohort"
    assert main(["phantom-cohort", "--out", str(out), "--n", "2", "--seed", "1", "--shape", "48", "48", "16", "--workers", "2"]) == 0
    index = json.loads((out / "cohort.json").read_text())
    assert [c["case_id"] for c in index["cases"]] == ["case_000", "case_001"]
    assert index["cases"][0]["density"] != index["cases"][1]["density"]
    for entry in index["cases"]:
        assert (out / entry["path"] / "phase_2.nii.gz").is_file()
        assert 1 <= len(entry["tumors"]) <= 3


def test_scanner_point_spread_keeps_the_body_and_removes_voxel_scale_detail():
    """resolution < 1 blurs the object like a zero-filled acquisition; labels and noise level stay."""
    kw = dict(seed=4, shape=(96, 96, 32), tumors=1, noise=0.0, bias=0.0)
    sharp = make_phantom(**kw, resolution=1.0)
    blurred = make_phantom(**kw, resolution=0.6)
    assert np.array_equal(sharp.tissue_labels, blurred.tissue_labels)
    assert blurred.meta["parameters"]["resolution"] == 0.6

    def high_band_energy(volume):
        hann = np.multiply.reduce(np.meshgrid(*[np.hanning(n) for n in volume.shape], indexing="ij"))
        spectrum = np.abs(np.fft.fftn(volume * hann)) ** 2  # windowed: the faces do not wrap onto each other
        k = np.maximum.reduce(np.meshgrid(*[np.abs(np.fft.fftfreq(n)) for n in volume.shape], indexing="ij"))
        return spectrum[k > 0.32].sum() / spectrum.sum()  # beyond the sampled 0.6 x 0.5 cycles/voxel

    post = 1
    assert high_band_energy(blurred.case.phases[post]) < 0.02 * high_band_energy(sharp.case.phases[post])
    # the total signal is preserved (the PSF integrates to one)
    assert abs(blurred.case.phases[post].mean() / sharp.case.phases[post].mean() - 1) < 0.02

    drawn = make_phantom(seed=4, shape=(64, 64, 24))
    low, high = RESOLUTION_RANGE
    resolution = drawn.meta["parameters"]["resolution"]
    assert low <= resolution <= high
    # the recorded value reproduces the case, noise included
    again = make_phantom(seed=4, shape=(64, 64, 24), resolution=resolution)
    assert np.array_equal(again.case.phases, drawn.case.phases)
    for bad in (0.0, float("nan"), "fine"):
        with pytest.raises(SynBTError, match="resolution must be"):
            make_phantom(seed=4, shape=(32, 32, 16), resolution=bad)


# ------------------------------------------------------------------------------ phantom 2


def _bench():
    """bench/phantom_stats.py as a module (bench/ is not a package on the test path)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "phantom_stats.py"
    spec = importlib.util.spec_from_file_location("phantom_stats", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_phantom2_preset_is_reproducible_and_clinical_in_protocol():
    a = make_phantom(seed=21, preset="small", shape=SMALL, tumors=1)
    b = make_phantom(seed=21, preset="small", shape=SMALL, tumors=1)
    np.testing.assert_array_equal(a.case.phases, b.case.phases)
    assert a.meta == b.meta and a.meta["preset"] == "small"
    times = a.meta["phase_times_s"]
    assert 3 <= len(times) <= 6 and times[0] == 0 and 5.5 * 60 <= times[-1] <= 8 * 60
    assert a.case.num_phases == len(times)
    params = a.meta["parameters"]
    assert params["menopause"] in ("pre", "post") and params["field_strength_t"] in (1.5, 3.0)
    tissue = a.tissue_labels
    def breast_vessels(labels):  # vessel voxels touching breast fat or FGT
        from scipy import ndimage

        return (ndimage.binary_dilation(np.isin(labels, (L.FAT, L.FIBROGLANDULAR))) & (labels == L.VESSEL)).sum()

    assert breast_vessels(tissue) > 0 == breast_vessels(make_phantom(seed=21, shape=SMALL).tissue_labels)
    np.testing.assert_array_equal(a.tumor_labels > 0, np.isin(tissue, (L.TUMOR, L.NECROSIS)))
    # the legacy default is untouched by the preset machinery
    assert make_phantom(seed=21, shape=SMALL).meta["phase_times_s"] == [0.0, 90.0, 180.0]
    assert make_phantom(seed=0, preset="small", shape=SMALL, phases=5).case.num_phases == 5


@pytest.mark.parametrize("curve", ["persistent", "plateau", "washout"])
def test_phantom2_curve_types_come_from_malignant_ktrans(curve):
    """At clinical phase times a washout needs no Ktrans of 0.9-1.4 /min (the legacy protocol's)."""
    ph = make_phantom(seed=31, preset="small", shape=SMALL, tumors=1, tumor_kinetics=curve, lesion_types="mass",
                      tumor_diameters_mm=28.0, necrotic=False, resolution=1.0, motion_mm=0.0)
    tumor = ph.meta["tumors"][0]
    assert tumor["measured_curve_type"] == curve
    assert 0.04 <= tumor["ktrans_per_min"] <= 0.6
    enhancement = _relative_enhancement(ph.case.phases.astype(np.float64), ph.tumor_labels > 0)
    fgt = _relative_enhancement(ph.case.phases.astype(np.float64), ph.tissue_labels == L.FIBROGLANDULAR)
    assert enhancement[1] > 0.6 and enhancement.max() > 2 * fgt.max()


def test_phantom2_non_mass_lesion_is_sparse_and_in_the_breast():
    ph = make_phantom(seed=9, preset="small", tumors=1, lesion_types="nme", tumor_kinds="segmental", density="c")
    tumor = ph.tumor_labels > 0
    assert ph.meta["tumors"][0]["lesion_type"] == "nme" and tumor.sum() > 10
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(np.argwhere(tumor).min(0), np.argwhere(tumor).max(0)))
    assert tumor[box].mean() < 0.5  # clumps in a segment, not a solid mass
    assert np.all(np.isin(ph.tissue_labels[tumor], (L.TUMOR, L.NECROSIS)))


def test_phantom2_fat_is_dark_only_when_suppressed():
    def fat_over_fgt(fat_suppressed):
        ph = make_phantom(seed=12, preset="small", shape=SMALL, fat_suppressed=fat_suppressed, density="c")
        pre = ph.case.phases[0]
        return pre[ph.tissue_labels == L.FAT].mean() / pre[ph.tissue_labels == L.FIBROGLANDULAR].mean()

    assert fat_over_fgt(True) < 0.8 < 1.2 < fat_over_fgt(False)


def test_power_law_texture_slices_have_the_requested_exponent():
    from SynBTLib.phantom_texture import power_law_field

    power_law_beta = _bench().power_law_beta

    field = power_law_field(np.random.default_rng(0), (16, 128, 128), (1.0, 0.7, 0.7), beta3=2.8, largest_mm=200.0)
    valid = np.ones(field.shape[1:], bool)
    betas = [b for z in range(0, 16, 4) for b in power_law_beta(field[z], valid, 0.7, rng=np.random.default_rng(z))]
    assert 1.5 < np.mean(betas) < 2.1  # slices of a 3-D f^-2.8 field fall as f^-1.8


def test_phantom2_population_follows_menopausal_status():
    from SynBTLib import phantom_population as pop

    rng = np.random.default_rng(0)
    draws = {m: [pop.draw_population(rng, {"menopause": m}) for _ in range(1500)] for m in pop.MENOPAUSE}
    share = lambda m, key, value: np.mean([d[key] == value for d in draws[m]])  # noqa: E731
    for m in pop.MENOPAUSE:
        for k, level in enumerate(pop.BPE_LEVELS):
            assert abs(share(m, "bpe", level) - pop.BPE_MIX[m][k]) < 0.04
    assert share("post", "density", "a") > 2 * share("pre", "density", "a")
    assert share("pre", "bpe", "marked") > 2 * share("post", "bpe", "marked")


def test_phantom2_bad_preset_and_parameters_are_refused():
    with pytest.raises(SynBTError, match="preset"):
        make_phantom(preset="huge")
    with pytest.raises(SynBTError, match="field_strength_t"):
        make_phantom(preset="small", shape=(32, 32, 16), field_strength_t=2.0)
    with pytest.raises(SynBTError, match="menopausal"):
        make_phantom(preset="small", shape=(32, 32, 16), menopause="peri")
    with pytest.raises(SynBTError, match="phase_times_s"):
        make_phantom(preset="small", shape=(32, 32, 16), phase_times_s=[10.0, 100.0])
    with pytest.raises(SynBTError, match="unknown phantom parameter"):
        make_phantom(preset="small", shape=(32, 32, 16), colour="pink")


def test_phantom_stats_bench_writes_its_table(tmp_path):
    assert _bench().main(["--n", "3", "--clinical", "0", "--workers", "1", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "phantom_stats.md").read_text()
    assert "IMAGINE" in table and "Kuhl" in table and "Chen" in table
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["cases"] == {"phantom2_small": 3, "legacy": 3, "clinical": 0, "clinical_legacy": 0} and len(manifest["git_commit"]) == 40


def test_cli_phantom_and_cohort_take_a_preset(tmp_path):
    out = tmp_path / "ph2"
    assert main(["phantom", "--out", str(out), "--seed", "3", "--preset", "small", "--shape", "48", "48", "16",
                 "--tumors", "1"]) == 0
    meta = json.loads((out / "case.json").read_text())
    assert meta["preset"] == "small" and meta["shape"] == [48, 48, 16]
    assert len(list(out.glob("phase_*.nii.gz"))) == len(meta["phase_times_s"]) >= 3
    cohort = tmp_path / "cohort2"
    assert main(["phantom-cohort", "--out", str(cohort), "--n", "2", "--seed", "4", "--preset", "small",
                 "--shape", "48", "48", "16", "--workers", "1"]) == 0
    index = json.loads((cohort / "cohort.json").read_text())
    assert index["preset"] == "small" and index["shape"] == [48, 48, 16]
    assert all(json.loads((cohort / c["path"] / "case.json").read_text())["preset"] == "small" for c in index["cases"])


def test_place_lesions_false_gives_the_same_phantom_without_its_lesion():
    from scipy import ndimage

    shape = (64, 64, 24)
    real = make_phantom(seed=21, shape=shape, tumors=1, preset="small", motion_mm=0.0, resolution=1.0)
    twin = make_phantom(seed=21, shape=shape, tumors=1, preset="small", motion_mm=0.0, resolution=1.0,
                        place_lesions=False)
    assert real.tumor_labels.any() and not twin.tumor_labels.any()
    far = ~ndimage.binary_dilation(real.tumor_labels > 0, iterations=3)
    np.testing.assert_allclose(twin.case.phases[:, far], real.case.phases[:, far], atol=1e-3)  # every other draw kept
    other = make_phantom(seed=21, shape=shape, tumors=0, preset="small", motion_mm=0.0, resolution=1.0)
    assert np.abs(other.case.phases[:, far] - real.case.phases[:, far]).mean() > 1e-2  # tumors=0 is another phantom
    with pytest.raises(SynBTError, match="phantom-2 preset"):
        make_phantom(seed=21, shape=shape, tumors=1, place_lesions=False)
