"""Latent and image moment calibration (calibration.py, `synbt calibrate`) with a tiny real pipeline and real files."""
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from SynBTLib.bundle import bundle_sha256, load_bundle, save_bundle, write_checksums
from SynBTLib.calibration import (
    MIN_SPREAD_CELLS,
    CurveMap,
    ImageCalibration,
    LatentCalibration,
    ShapeMap,
    TextureMap,
    _texture_map,
    cell_excess,
    channel_moments,
    fit_calibration,
    fit_image_calibration,
    lag_ratio,
    latent_notch,
    mean_correlation,
    standardized_quantiles,
    tumor_cells,
)
from SynBTLib.calibrated_bundle import calibrate_bundle
from SynBTLib.cli import main as cli_main
from SynBTLib.errors import SynBTError
from SynBTLib.io import write_case, write_label
from SynBTLib.nets.scheduler import SchedulerConfig
from SynBTLib.pipeline import SynthesisPipeline
from SynBTLib.preprocess import fit_normalization, normalize

from test_pipeline import MARGINS, STEPS, make_case, pipeline, tumor  # noqa: F401  (pipeline is a fixture)

CHANNELS = 4  # the tiny pipeline's latent channels


def test_tumor_cells_take_cells_at_least_half_tumor_or_the_best_covered_ones():
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[0, 0, 0:2, 0:2, 0:2] = 1  # cell (0, 0, 0) full
    mask[0, 0, 2:4, 0:2, 0] = 1  # cell (1, 0, 0) half
    mask[0, 0, 0, 2, 2] = 1  # cell (0, 1, 1) one voxel of eight
    cells = tumor_cells(mask, 2)[0, 0]
    assert cells.shape == (2, 2, 2)
    assert set(map(tuple, torch.nonzero(cells).tolist())) == {(0, 0, 0), (1, 0, 0)}
    small = torch.zeros(1, 1, 5, 4, 4)
    small[0, 0, 4, 3, 3] = 1  # one voxel, in the padded last cell
    assert torch.nonzero(tumor_cells(small, 2)[0, 0]).tolist() == [[2, 1, 1]]
    with pytest.raises(SynBTError, match="mask must be"):
        tumor_cells(torch.zeros(4, 4, 4), 2)


def test_apply_sets_the_tumor_moments_and_leaves_every_other_cell_alone():
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, CHANNELS, 6, 6, 6, generator=generator) * torch.tensor([1.0, 2.0, 0.5, 1.0]).reshape(1, -1, 1, 1, 1)
    cells = torch.zeros(1, 1, 6, 6, 6, dtype=torch.bool)
    cells[..., 1:4, 2:5, 1:5] = True
    calibration = LatentCalibration(shift=(0.5, -1.0, 0.0, 0.0), factor=(0.5, 1.0, 3.0, 1.0))
    out = calibration.apply(latent, cells)
    assert torch.equal(out[:, :, ~cells[0, 0]], latent[:, :, ~cells[0, 0]])
    mean_before, std_before = channel_moments(latent, cells)
    mean_after, std_after = channel_moments(out, cells)
    np.testing.assert_allclose(mean_after, mean_before + np.array(calibration.shift), atol=1e-5)
    np.testing.assert_allclose(std_after, std_before * np.array(calibration.factor), rtol=1e-5)
    assert torch.equal(calibration.apply(latent, torch.zeros_like(cells)), latent)
    identity = LatentCalibration(shift=(0.0,) * CHANNELS, factor=(1.0,) * CHANNELS)
    torch.testing.assert_close(identity.apply(latent, cells), latent)


@pytest.mark.parametrize("entry, message", [
    ({"shift": [0.0, 0.0], "factor": [1.0, 1.0]}, "has 2 channels, the latent 4"),
    ({"shift": [0.0] * 4, "factor": [1.0, 0.0, 1.0, 1.0]}, "factors positive"),
    ({"shift": [0.0, float("nan"), 0.0, 0.0], "factor": [1.0] * 4}, "finite"),
    ({"shift": [0.0] * 4}, "'shift' and 'factor'"),
    ({"shift": ["a"] * 4, "factor": [1.0] * 4}, "shift must be a list of numbers"),
    ({"shift": "0000", "factor": [1.0] * 4}, "shift must be a list of numbers"),
    ({"shift": [0.0] * 4, "factor": [1.0] * 4, "kinetic_shifts": {}}, "unknown key"),
    ({"shift": [0.0] * 4, "factor": [1.0] * 4, "necrotic_factor": [1.0, 1.0, 0.0, 1.0]}, "necrotic_factor needs"),
    ({"shift": [0.0] * 4, "factor": [1.0] * 4, "necrotic_factor": [1.0] * 3}, "necrotic_factor needs"),
])
def test_a_bad_calibration_config_is_refused(entry, message):
    with pytest.raises(SynBTError, match=message):
        LatentCalibration.from_config({"latent_calibration": entry}, CHANNELS)
    assert LatentCalibration.from_config({}, CHANNELS) is None


def test_the_pipeline_applies_its_calibration_only_to_the_generated_tumor(pipeline):  # noqa: F811
    case = make_case(seed=4)
    mask = tumor(case.shape, (10, 20, 20), radius_mm=5.0)
    plain = pipeline(case, mask, seed=1, steps=STEPS).phases
    identity = LatentCalibration(shift=(0.0,) * CHANNELS, factor=(1.0,) * CHANNELS)
    calibrated = SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, pipeline.latent_scale,
                                   calibration=LatentCalibration(shift=(2.0, 0.0, -2.0, 0.0), factor=(0.2, 1.0, 1.0, 0.2)), **MARGINS)
    same = SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, pipeline.latent_scale,
                             calibration=identity, **MARGINS)
    np.testing.assert_allclose(same(case, mask, seed=1, steps=STEPS).phases, plain, rtol=1e-5, atol=1e-3)
    moved = calibrated(case, mask, seed=1, steps=STEPS).phases
    assert np.abs(moved - plain)[:, mask > 0].mean() > 10 * max(np.abs(moved - plain)[:, mask == 0].mean(), 1e-6)
    reconstructed = calibrated.reconstruct(case, mask, seed=1).phases  # reconstruct never calibrates
    assert np.array_equal(reconstructed, pipeline.reconstruct(case, mask, seed=1).phases)
    with pytest.raises(SynBTError, match="calibration has 2 channels"):
        SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, pipeline.latent_scale,
                          calibration=LatentCalibration((0.0, 0.0), (1.0, 1.0)), **MARGINS)


def _three_tumors(radius_mm: float) -> list[tuple]:
    """(name, case, one-tumor mask) of three tiny cases, for the fits."""
    samples = []
    for seed, center in ((5, (10, 20, 20)), (6, (9, 17, 22)), (7, (11, 22, 18))):
        case = make_case(seed=seed)
        samples.append((f"case {seed}", case, tumor(case.shape, center, radius_mm=radius_mm)))
    return samples


def test_the_fitted_calibration_maps_the_generated_moments_onto_the_real_ones(pipeline):  # noqa: F811
    samples = _three_tumors(radius_mm=8.0)
    fit = fit_calibration(pipeline, samples, seed=3, steps=STEPS)
    assert fit.tumors == 3 and len(fit.table()) == CHANNELS
    real, generated = [], []
    for index, (_, case, mask) in enumerate(samples):
        known, raw, cells = pipeline.latent_pair(case, mask, seed=3 + index, steps=STEPS)
        real.append(channel_moments(known, cells))
        generated.append(channel_moments(fit.calibration.apply(raw, cells), cells))
    np.testing.assert_allclose(np.mean([m for m, _ in generated], 0), np.mean([m for m, _ in real], 0), atol=1e-4)
    assert all(int(tumor_cells(torch.from_numpy(m)[None, None], 4).sum()) >= MIN_SPREAD_CELLS for _, _, m in samples)
    geometric = lambda moments: np.exp(np.mean([np.log(s) for _, s in moments], 0))  # noqa: E731
    np.testing.assert_allclose(geometric(generated), geometric(real), rtol=1e-3)
    assert not np.allclose(fit.calibration.factor, 1.0)  # the random tiny denoiser is far from the encoder
    with pytest.raises(SynBTError, match="at least 2 tumors"):
        fit_calibration(pipeline, samples[:1], steps=STEPS)
    small = [(name, case, tumor(case.shape, (10, 20, 20), radius_mm=3.0)) for name, case, _ in samples]
    with pytest.raises(SynBTError, match=f"no calibration tumor covers {MIN_SPREAD_CELLS} latent cells"):
        fit_calibration(pipeline, small, steps=STEPS)
    with pytest.raises(SynBTError, match="odd case"):
        fit_calibration(pipeline, [samples[0], ("odd case", samples[1][1], samples[1][2][:-1])], steps=STEPS)


def test_apply_maps_every_separate_tumor_around_its_own_mean():
    latent = torch.zeros(1, CHANNELS, 8, 8, 8)
    latent[..., 0:2, 0:2, 0:3] = torch.arange(1.0, 13.0).reshape(2, 2, 3)
    latent[..., 5:7, 5:7, 4:7] = 100.0 + torch.arange(1.0, 13.0).reshape(2, 2, 3)
    cells = latent[:, :1] != 0
    out = LatentCalibration((1.0,) * CHANNELS, (0.5,) * CHANNELS).apply(latent, cells)
    for box, mean in (((slice(0, 2), slice(0, 2), slice(0, 3)), 6.5), ((slice(5, 7), slice(5, 7), slice(4, 7)), 106.5)):
        expected = mean + 1.0 + (latent[(0, 0, *box)] - mean) * 0.5
        torch.testing.assert_close(out[(0, 0, *box)], expected)


def _dataset(root, seeds=(5, 6)):
    for seed in seeds:
        case = make_case(seed=seed)
        mask = tumor(case.shape, (10, 20, 11), radius_mm=7.0) | tumor(case.shape, (10, 20, 29), radius_mm=7.0)
        write_case(case, root / f"case_{seed}")
        write_label(mask, case.geometry, root / f"case_{seed}" / "tumor_labels.nii.gz")
    return root


def test_calibrate_writes_a_new_bundle_and_never_touches_the_input(pipeline, tmp_path):  # noqa: F811
    bundle = save_bundle(tmp_path / "bundle", pipeline.autoencoder, pipeline.denoiser, SchedulerConfig(),
                         pipeline.latent_scale, meta={"phases": 3, **MARGINS}, card_text="# tiny\n")
    before = bundle_sha256(bundle)
    data = _dataset(tmp_path / "data")
    done = []
    out, fit, image_fit = calibrate_bundle(bundle, data, tmp_path / "calibrated", seed=0, steps=STEPS, max_tumors=3,
                                           progress=done.append)
    assert fit.tumors == 3 and image_fit.tumors == 3  # two cases with two tumors each, capped
    assert done == [1, 2, 3, 4, 5, 6]  # both passes
    assert bundle_sha256(bundle) == before
    loaded = load_bundle(out)
    assert loaded.calibration == fit.calibration and load_bundle(bundle).calibration is None
    assert loaded.image_calibration == image_fit.calibration and load_bundle(bundle).image_calibration is None
    assert loaded.config["latent_calibration_source"]["tumors"] == 3
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Latent calibration" in card  # the card describes the fit (its wording is not pinned)
    # three tumors without a core: their shape map, none for necrotic ones
    assert image_fit.calibration.shape is not None and image_fit.calibration.necrotic_shape is None
    assert image_fit.calibration.texture is not None
    built = SynthesisPipeline.from_bundle(out)
    assert built.calibration == fit.calibration and built.image_calibration == image_fit.calibration
    # recalibrating a calibrated bundle latent-only drops the old image calibration
    again, _, none = calibrate_bundle(out, data, tmp_path / "latent_only", steps=STEPS, max_tumors=2, image=False)
    assert none is None and load_bundle(again).image_calibration is None and load_bundle(again).calibration is not None
    for target, message in ((bundle, "inside the input bundle"), (bundle / "sub", "inside the input bundle"),
                            (data / "sub", "inside the calibration data"), (out, "not empty")):
        with pytest.raises(SynBTError, match=message):
            calibrate_bundle(bundle, data, target, steps=STEPS)
    # a calibration edited by hand into something meaningless is refused at load, by name
    config = json.loads((out / "config.json").read_text())
    config["latent_calibration"]["factor"][0] = -1.0
    (out / "config.json").write_text(json.dumps(config))
    write_checksums(out)
    with pytest.raises(SynBTError, match="latent_calibration"):
        load_bundle(out)


def test_calibrate_cli_reports_bad_input_in_one_line(pipeline, tmp_path, capsys):  # noqa: F811
    bundle = save_bundle(tmp_path / "bundle", pipeline.autoencoder, pipeline.denoiser, SchedulerConfig(),
                         pipeline.latent_scale, meta={"phases": 3, **MARGINS}, card_text="# tiny\n")
    data = _dataset(tmp_path / "data", seeds=(5,))
    assert cli_main(["calibrate", "--bundle", str(bundle), "--data", str(data), "--out", str(tmp_path / "c"),
                     "--max-tumors", "1"]) == 2
    assert "max_tumors" in capsys.readouterr().err
    assert cli_main(["calibrate", "--bundle", str(bundle), "--data", str(data), "--out", str(tmp_path / "c"),
                     "--steps", str(STEPS), "--latent-only"]) == 0
    printed = capsys.readouterr().out
    assert "calibrated bundle" in printed and "image calibration" not in printed
    assert load_bundle(tmp_path / "c").image_calibration is None
    assert "--latent-only" in load_bundle(tmp_path / "c").path.joinpath("MODEL_CARD.md").read_text()
    assert cli_main(["calibrate", "--bundle", str(bundle), "--data", str(data), "--out", str(tmp_path / "c2"),
                     "--notch", "0.7"]) == 2
    assert "0.7" in capsys.readouterr().err  # the refused value is named
    assert cli_main(["calibrate", "--bundle", str(bundle), "--data", str(data), "--out", str(tmp_path / "both"),
                     "--steps", str(STEPS), "--notch", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert load_bundle(tmp_path / "both").image_calibration.texture is not None
    assert "--notch 0.3" in (tmp_path / "both" / "MODEL_CARD.md").read_text()
    both = load_bundle(tmp_path / "both").image_calibration
    assert both.shape is None and both.necrotic_shape is None  # one case, two tumors: too few for shape maps
    assert cli_main(["calibrate", "--bundle", str(bundle), "--data", str(_dataset(tmp_path / "data2")), "--out",
                     str(tmp_path / "moments"), "--steps", str(STEPS), "--max-tumors", "3", "--moments-only"]) == 0
    printed = capsys.readouterr().out
    moments = load_bundle(tmp_path / "moments")
    assert moments.image_calibration.shape is None and moments.image_calibration.texture is None
    assert "--moments-only" in (moments.path / "MODEL_CARD.md").read_text()
    assert cli_main(["calibrate", "--bundle", str(bundle), "--data", str(_dataset(tmp_path / "data3")), "--out",
                     str(tmp_path / "plain"), "--steps", str(STEPS), "--max-tumors", "3", "--no-texture"]) == 0
    plain = load_bundle(tmp_path / "plain")
    assert plain.image_calibration.texture is None and plain.image_calibration.shape is not None
    card = (plain.path / "MODEL_CARD.md").read_text()
    assert "--no-texture" in card and "Texture map" not in card
    unlabelled = tmp_path / "unlabelled"
    write_case(make_case(seed=5), unlabelled / "case_5")
    assert cli_main(["calibrate", "--bundle", str(bundle), "--data", str(unlabelled), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert str(unlabelled) in err and len(err.strip().splitlines()) == 1


def _case_with_curve(seed, post1, post2):
    base = make_case(seed=seed)
    tissue = base.phases[0]
    return base.with_phases(np.stack([tissue, tissue * post1, tissue * post2]).astype(np.float32))


def test_a_kinetic_denoiser_gets_a_shift_per_curve_type_fitted_on_tumors_of_that_type(pipeline):  # noqa: F811
    from SynBTLib.nets.denoiser import DenoiserConfig, MaskConditionedDenoiser
    from test_denoiser import randomize_zero_parameters

    torch.manual_seed(1)
    denoiser = randomize_zero_parameters(MaskConditionedDenoiser(DenoiserConfig(
        channels=(8, 16, 16), attention_levels=(False, False, True), num_head_channels=8, norm_num_groups=4,
        kinetic_classes=True)))
    kinetic = SynthesisPipeline(pipeline.autoencoder, denoiser, pipeline.scheduler, pipeline.latent_scale, **MARGINS)
    curves = {"washout": (1.6, 1.2), "persistent": (1.3, 1.7), "plateau": (1.4, 1.42)}
    names = ["washout", "persistent", "washout", "persistent", "plateau"]
    samples = []
    for index, name in enumerate(names):
        case = _case_with_curve(10 + index, *curves[name])
        samples.append((name, case, tumor(case.shape, (10, 20, 20), radius_mm=8.0)))
    fit = fit_calibration(kinetic, samples, seed=0, steps=STEPS)
    assert fit.kinetic_counts == {"persistent": 2, "plateau": 1, "washout": 2}
    assert set(fit.calibration.kinetic_shift) == {"persistent", "washout"}  # plateau: one tumor, pooled shift
    assert fit.calibration.shift_for("plateau") == fit.calibration.shift
    for name in ("washout", "persistent"):
        real, made = [], []
        for index, (_, case, mask) in enumerate(samples):
            if names[index] != name:
                continue
            known, raw, cells = kinetic.latent_pair(case, mask, seed=index, steps=STEPS, kinetics=name)
            real.append(channel_moments(known, cells)[0])
            made.append(channel_moments(fit.calibration.apply(raw, cells, name), cells)[0])
        np.testing.assert_allclose(np.mean(made, 0), np.mean(real, 0), atol=1e-4)
    entry = fit.calibration.to_config()
    assert LatentCalibration.from_config(entry, CHANNELS) == fit.calibration
    entry["latent_calibration"]["kinetic_shift"] = {"fast": [0.0] * CHANNELS}
    with pytest.raises(SynBTError, match="curve types among"):
        LatentCalibration.from_config(entry, CHANNELS)
    # the pipeline shifts a tumor by the shift of the curve type it is asked for
    only_washout = LatentCalibration((0.0,) * CHANNELS, (1.0,) * CHANNELS, {"washout": (3.0,) * CHANNELS})
    shifted = SynthesisPipeline(kinetic.autoencoder, denoiser, kinetic.scheduler, kinetic.latent_scale,
                                calibration=only_washout, **MARGINS)
    _, case, mask = samples[0]
    for name, moves in (("washout", True), ("persistent", False)):
        difference = np.abs(shifted(case, mask, seed=0, steps=STEPS, kinetics=name).phases
                            - kinetic(case, mask, seed=0, steps=STEPS, kinetics=name).phases)[:, mask > 0].mean()
        assert (difference > 1.0) == moves, (name, difference)
    # and the image stage by its phase shifts for that type: the seed's own draw when none is asked for
    image_washout = ImageCalibration((0.0,) * 3, (1.0,) * 3, {"washout": (0.0, 0.2, 0.2)})
    imaged = SynthesisPipeline(kinetic.autoencoder, denoiser, kinetic.scheduler, kinetic.latent_scale,
                               image_calibration=image_washout, **MARGINS)
    norm = fit_normalization(case)
    assert {kinetic.choose_kinetics(None, seed) == "washout" for seed in range(8)} == {True, False}
    for seed in range(8):
        drawn = kinetic.choose_kinetics(None, seed)
        moved = normalize(imaged(case, mask, seed=seed, steps=1).phases[:, mask > 0], norm).mean(1) \
            - normalize(kinetic(case, mask, seed=seed, steps=1).phases[:, mask > 0], norm).mean(1)
        expected = [0.0, 0.2, 0.2] if drawn == "washout" else [0.0, 0.0, 0.0]
        np.testing.assert_allclose(moved, expected, atol=1e-3, err_msg=f"seed {seed}, drawn {drawn}")


def test_image_apply_sets_each_tumors_phase_moments_and_leaves_other_voxels_alone():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 10, 12, 12)).astype(np.float32) * np.array([1.0, 2.0, 0.5], np.float32)[:, None, None, None]
    mask = np.zeros((10, 12, 12), bool)
    mask[1:4, 2:6, 2:6] = True
    mask[6:9, 7:11, 7:11] = True  # a second, separate tumor
    calibration = ImageCalibration(shift=(0.1, 0.5, -0.2), factor=(0.5, 1.0, 2.0), kinetic_shift={"washout": (0.0, 1.0, 2.0)})
    out = calibration.apply(image, mask)
    assert np.array_equal(out[:, ~mask], image[:, ~mask]) and out is not image
    for box in ((slice(1, 4), slice(2, 6), slice(2, 6)), (slice(6, 9), slice(7, 11), slice(7, 11))):
        before, after = image[(slice(None), *box)].reshape(3, -1), out[(slice(None), *box)].reshape(3, -1)
        np.testing.assert_allclose(after.mean(1), before.mean(1) + np.array(calibration.shift), atol=1e-5)
        np.testing.assert_allclose(after.std(1), before.std(1) * np.array(calibration.factor), rtol=1e-4)
    washout = calibration.apply(image, mask, "washout")
    np.testing.assert_allclose((washout - out)[:, mask].mean(1), np.array([0.0, 1.0, 2.0]) - calibration.shift, atol=1e-5)
    with pytest.raises(SynBTError, match="has 3 phases"):
        calibration.apply(image[:2], mask)
    with pytest.raises(SynBTError, match="image_calibration"):
        ImageCalibration.from_config({"image_calibration": {"shift": [0.0, 0.0], "factor": [1.0, 1.0]}}, 3)
    with pytest.raises(SynBTError, match="image_calibration"):
        ImageCalibration.from_config({"image_calibration": {"shift": [0.0, 0.0, 0.0], "factor": [1.0, -1.0, 1.0]}}, 3)
    assert ImageCalibration.from_config(calibration.to_config(), 3) == calibration


def _skewed_quantiles(rng, draw, phases=3):
    return tuple(tuple(float(v) for v in q) for q in standardized_quantiles(draw(rng, (phases, 20000))))


def test_the_shape_map_gives_a_tumor_the_real_histogram_form_and_keeps_its_moments_and_ranks():
    from scipy import stats

    rng = np.random.default_rng(2)
    symmetric = _skewed_quantiles(rng, lambda r, s: r.normal(size=s))
    right = _skewed_quantiles(rng, lambda r, s: r.gamma(2.0, size=s))  # the real tumors lean right
    necrotic_real = _skewed_quantiles(rng, lambda r, s: -r.gamma(2.0, size=s))  # a core: a left tail
    calibration = ImageCalibration((0.0,) * 3, (1.0,) * 3, shape=ShapeMap(symmetric, right),
                                   necrotic_shape=ShapeMap(symmetric, necrotic_real))
    image = (rng.normal(size=(3, 12, 14, 14)) * 0.3 + 2.0).astype(np.float32)
    mask = np.zeros((12, 14, 14), bool)
    mask[1:6, 2:8, 2:8] = True
    mask[7:12, 8:14, 8:14] = True  # a second tumor, generated with a core
    core = np.zeros_like(mask)
    core[9, 11, 11] = True
    out = calibration.apply(image, mask, core=core)
    assert np.array_equal(out[:, ~mask], image[:, ~mask])
    first, second = (slice(None), slice(1, 6), slice(2, 8), slice(2, 8)), (slice(None), slice(7, 12), slice(8, 14), slice(8, 14))
    for box, sign in ((first, 1), (second, -1)):
        before, after = image[box].reshape(3, -1).astype(np.float64), out[box].reshape(3, -1).astype(np.float64)
        np.testing.assert_allclose(after.mean(1), before.mean(1), atol=1e-5)
        np.testing.assert_allclose(after.std(1), before.std(1), rtol=1e-4)
        assert (sign * stats.skew(after, axis=1) > 0.5).all() and (np.abs(stats.skew(before, axis=1)) < 0.3).all()
        assert all(np.array_equal(np.argsort(a), np.argsort(b)) for a, b in zip(after, before))  # monotone
    # without a necrotic map a tumor with a core keeps its form; the moments-only calibration is unchanged
    plain_core = ImageCalibration((0.0,) * 3, (1.0,) * 3, shape=ShapeMap(symmetric, right)).apply(image, mask, core=core)
    np.testing.assert_allclose(plain_core[second], image[second], atol=1e-6)
    np.testing.assert_allclose(plain_core[first], out[first])
    assert ImageCalibration.from_config(calibration.to_config(), 3) == calibration


def test_a_shape_map_edited_into_nonsense_is_refused_by_name():
    rng = np.random.default_rng(3)
    good = ImageCalibration((0.0,) * 3, (1.0,) * 3, shape=ShapeMap(_skewed_quantiles(rng, lambda r, s: r.normal(size=s)),
                                                                 _skewed_quantiles(rng, lambda r, s: r.gamma(2.0, size=s))))
    _assert_edits_refused(good, (
            (lambda e: e["shape"]["generated"][1].reverse(), "must increase with the level"),
            (lambda e: e["shape"].update(levels=[0.1, 0.5, 0.9]), "other quantile levels"),
            (lambda e: e["shape"]["real"].pop(), "quantiles per phase"),
            (lambda e: e["shape"].pop("real"), "'levels', 'generated' and 'real'"),
            (lambda e: e["shape"]["real"][0].__setitem__(0, float("nan")), "must be finite"),
            (lambda e: e.update(necrotic_shape={**e["shape"], "generated": e["shape"]["generated"][:2],
                                                "real": e["shape"]["real"][:2]}), "necrotic_shape has 2 phases")))


def _assert_edits_refused(calibration, edits):
    """Each (edit of the image_calibration config entry, message): the edited config is refused with it."""
    for edit, message in edits:
        config = json.loads(json.dumps(calibration.to_config()))
        edit(config["image_calibration"])
        with pytest.raises(SynBTError, match=message):
            ImageCalibration.from_config(config, 3)


def test_shape_maps_are_fitted_per_kind_from_enough_tumors():
    from SynBTLib.calibration import MIN_SHAPE_TUMORS, _shape_map

    rng = np.random.default_rng(4)
    quantiles = {"real": [standardized_quantiles(rng.gamma(2.0, size=(3, 400))) for _ in range(5)],
                 "generated": [standardized_quantiles(rng.normal(size=(3, 400))) for _ in range(5)]}
    which = np.array([True] * MIN_SHAPE_TUMORS + [False] * (5 - MIN_SHAPE_TUMORS))
    shape = _shape_map(quantiles, which)
    np.testing.assert_allclose(shape.real, np.mean(np.asarray(quantiles["real"])[which], 0))
    assert np.asarray(shape.real)[:, -1].mean() > np.asarray(shape.generated)[:, -1].mean()  # the longer right tail
    assert _shape_map(quantiles, ~which) is None  # too few tumors
    quantiles["generated"] = [np.zeros((3, 13))] * 5  # flat tumors: no map rather than a division by nothing
    assert _shape_map(quantiles, which) is None


def test_the_curve_map_sets_a_tumors_kinetics_and_keeps_its_pre_contrast_and_texture():
    rng = np.random.default_rng(5)
    curve = CurveMap(real_mean=(0.7, -0.1), real_std=(0.05, 0.01), generated_mean=(0.6, 0.0), generated_std=(0.2, 0.1))
    zero = -0.1  # the scanner's zero in normalized units
    values = zero + np.stack([rng.normal(1.0, 0.1, 400), rng.normal(2.2, 0.4, 400), rng.normal(2.0, 0.4, 400)])
    out = curve.apply(values, zero)
    signal_before, signal_after = (values - zero).mean(1), (out - zero).mean(1)
    steps_before, steps_after = np.diff(np.log(signal_before)), np.diff(np.log(signal_after))
    np.testing.assert_allclose(steps_after, np.array([0.7, -0.1]) + (steps_before - [0.6, 0.0]) * [0.25, 0.1])
    assert np.array_equal(out[0], values[0])
    cv = lambda v: (v - zero).std(1) / (v - zero).mean(1)  # noqa: E731  (each phase scaled, texture kept)
    np.testing.assert_allclose(cv(out), cv(values))
    dark = values.copy()
    dark[1] = zero - 0.5  # no positive signal: nothing to take a ratio of
    assert curve.apply(dark, zero) is dark
    calibration = ImageCalibration((0.0,) * 3, (1.0,) * 3, curves={"all": curve, "washout": curve})
    assert calibration.curve_for("washout") is curve and calibration.curve_for("plateau") is curve
    assert calibration.curve_for(None) is curve and ImageCalibration((0.0,) * 3, (1.0,) * 3).curve_for("washout") is None
    assert ImageCalibration.from_config(calibration.to_config(), 3) == calibration
    _assert_edits_refused(calibration, (
                          (lambda e: e["curves"].update(fast=e["curves"]["all"]), "one map per key"),
                          (lambda e: e["curves"]["all"]["generated_std"].__setitem__(0, 0.0), "positive generated"),
                          (lambda e: e["curves"]["all"].pop("real_std"), "must be an object with"),
                          (lambda e: e["curves"]["all"]["real_mean"].append(0.0), "one real and generated")))


def test_curve_maps_are_fitted_per_type_and_carry_the_generated_steps_onto_the_real_ones():
    from SynBTLib.calibration import MIN_CURVE_TUMORS, _curve_maps

    rng = np.random.default_rng(6)
    types = ["washout"] * 5 + ["persistent"] * (MIN_CURVE_TUMORS - 1)
    real = np.exp(np.cumsum(rng.normal([0.0, 0.6, -0.1], [0.1, 0.05, 0.01], (len(types), 3)), axis=1))
    generated = np.exp(np.cumsum(rng.normal([0.0, 0.5, 0.0], [0.1, 0.2, 0.1], (len(types), 3)), axis=1))
    maps = _curve_maps(real, generated, types)
    assert set(maps) == {"all", "washout"}  # too few persistent tumors for a map of their own
    washout = np.arange(len(types)) < 5
    mapped = [maps["washout"].apply(g[:, None] * np.ones((3, 4))).mean(1) for g in generated[washout]]
    steps = np.diff(np.log(mapped), axis=1)
    np.testing.assert_allclose(steps.mean(0), np.diff(np.log(real[washout]), axis=1).mean(0), atol=1e-9)
    np.testing.assert_allclose(steps.std(0), np.diff(np.log(real[washout]), axis=1).std(0), rtol=1e-6)
    assert _curve_maps(-real, generated, types) == {}  # no positive signal, no ratios


def test_the_fitted_shape_and_curve_maps_carry_whole_syntheses_to_the_real_kinetics(pipeline):  # noqa: F811
    samples = _three_tumors(radius_mm=6.0)
    fit = fit_image_calibration(pipeline, samples, seed=3, steps=STEPS)
    assert fit.calibration.shape is not None and fit.calibration.necrotic_shape is None
    assert set(fit.calibration.curves) == {"all"}  # a denoiser without curve types: the pooled map only
    # the texture target is the real tumors' mean lag-1 ratio, measured on the case grid around each mask
    real_ratios = [lag_ratio(np.asarray(case.phases, np.float64), mask, 1) for _, case, mask in samples]
    np.testing.assert_allclose(fit.calibration.texture.target, np.mean(real_ratios, 0), rtol=1e-6)
    # the coherence target is the real tumors' mean post-phase correlation; new texture maps share their detail
    real_coherence = [mean_correlation(case.phases[1:, mask > 0]) for _, case, mask in samples]
    assert fit.calibration.coherence.target == pytest.approx(np.mean(real_coherence), rel=1e-6)
    assert fit.calibration.texture.shared_detail
    calibrated = SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, pipeline.latent_scale,
                                   image_calibration=fit.calibration, **MARGINS)
    real_steps, made_steps = [], []
    for index, (_, case, mask) in enumerate(samples):
        synthetic = calibrated(case, mask, seed=3 + index, steps=STEPS)
        for image, steps in ((case, real_steps), (synthetic, made_steps)):
            steps.append(np.diff(np.log(image.phases[:, mask > 0].astype(np.float64).mean(1))))
    np.testing.assert_allclose(np.mean(made_steps, 0), np.mean(real_steps, 0), atol=1e-4)
    np.testing.assert_allclose(np.std(made_steps, 0), np.std(real_steps, 0), rtol=1e-2, atol=1e-4)
    # the pipeline hands the texture map its cell size and seed: tumor voxels only, toward the target, seeded
    _, case, mask = samples[0]
    made = {}
    for name, texture in (("none", None), ("white", TextureMap((0.0,) * 3, (1.9,) * 3))):
        calibration = ImageCalibration((0.0,) * 3, (1.0,) * 3, texture=texture)
        run = SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, pipeline.latent_scale,
                                image_calibration=calibration, **MARGINS)
        made[name] = run(case, mask, seed=3, steps=STEPS).phases
        if texture is not None:
            assert np.array_equal(run(case, mask, seed=3, steps=STEPS).phases, made[name])
            assert not np.array_equal(run(case, mask, seed=4, steps=STEPS).phases[:, mask > 0], made[name][:, mask > 0])
    assert np.array_equal(made["none"][:, mask == 0], made["white"][:, mask == 0])
    before, after = (lag_ratio(made[k].astype(np.float64), mask, 1) for k in ("none", "white"))
    assert (after > before + 0.3).all() and (np.abs(after - 1.9) < 0.15).all()


def _two_cell_pattern(shape=(3, 12, 14, 16), cell=2):
    """+1 +1 -1 -1 ... along every axis: the pattern whose period is two latent cells of ``cell`` voxels."""
    signs = [np.where((np.arange(n) // cell) % 2 == 0, 1.0, -1.0) for n in shape[1:]]
    return np.ones(shape[0])[:, None, None, None] * np.einsum("i,j,k->ijk", *signs)


def test_the_latent_notch_removes_the_two_cell_period_and_keeps_the_mean():
    pattern = _two_cell_pattern()
    interior = (slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(latent_notch(pattern, (0.5,) * 3, (2, 2, 2))[interior], 0.0, atol=1e-6)
    np.testing.assert_allclose(latent_notch(pattern, (0.25,) * 3, (2, 2, 2))[interior], pattern[interior] / 8,
                               atol=1e-6)  # (1 - 2 * 0.25) per axis
    flat = np.full(pattern.shape, 3.0)
    np.testing.assert_allclose(latent_notch(flat, (0.5, 0.2, 0.0), (2, 1, 3)), flat)
    assert np.array_equal(latent_notch(pattern, (0.0, 0.5, 0.5), (2, 2, 2))[0], pattern[0])  # per phase
    # the ratios: white noise 2, a smooth ramp near 0, the two-cell pattern high at lag 2
    rng = np.random.default_rng(3)
    mask = np.ones(pattern.shape[1:], bool)
    np.testing.assert_allclose(lag_ratio(rng.normal(size=(3, 30, 30, 30)), np.ones((30, 30, 30)), 1), 2.0, atol=0.05)
    ramp = np.broadcast_to(np.arange(16.0), pattern.shape)
    assert (lag_ratio(ramp, mask, 1) < 0.1).all() and (lag_ratio(pattern, mask, 2) > 2.5).all()
    assert np.isnan(lag_ratio(flat, mask, 1)).all()  # no spread
    # one latent cell apart against a voxel nearer and farther: a bump for the two-cell period, none for noise
    noise = rng.normal(size=(3, 30, 30, 30))
    np.testing.assert_allclose(cell_excess(noise, np.ones((30, 30, 30)), (2, 2, 2)), 0.0, atol=0.05)
    assert (cell_excess(pattern, mask, (2, 2, 2)) > 1.0).all()
    np.testing.assert_allclose(lag_ratio(pattern, mask, (2, 2, 2)), lag_ratio(pattern, mask, 2))


def test_the_texture_map_keeps_each_tumors_moments_and_brings_its_lag1_ratio_to_the_target():
    rng = np.random.default_rng(7)
    smooth = ndimage.gaussian_filter(rng.normal(size=(3, 12, 14, 16)), (0, 2, 2, 2)) * 20
    image = (smooth + 0.5 * _two_cell_pattern() + 0.1 * rng.normal(size=(3, 12, 14, 16))).astype(np.float32)
    mask = np.zeros(image.shape[1:], bool)
    mask[1:11, 2:12, 1:7] = True
    mask[1:11, 2:12, 9:15] = True  # a second tumor
    texture = TextureMap(notch=(0.5, 0.5, 0.0), target=(1.6, 1.6, 1.6))
    out = texture.apply(image, mask, (2, 2, 2), seed=5)
    assert out.dtype == image.dtype and np.array_equal(out[:, ~mask], image[:, ~mask])
    for side in (slice(0, 8), slice(8, 16)):
        part = np.zeros_like(mask)
        part[..., side] = mask[..., side]
        np.testing.assert_allclose(out[:, part].mean(1), image[:, part].mean(1), atol=1e-5)
        np.testing.assert_allclose(out[:, part].std(1), image[:, part].std(1), rtol=1e-5)
        assert (lag_ratio(image, part, 1) < 1.2).all()
        np.testing.assert_allclose(lag_ratio(out, part, 1), 1.6, atol=0.15)
    # the notch took the two-cell period out of phases 0 and 1 (lag 2 like lag 1 or less), phase 2 keeps it
    before, lag1, lag2 = lag_ratio(image, mask, 2), lag_ratio(out, mask, 1), lag_ratio(out, mask, 2)
    assert (before > lag_ratio(image, mask, 1) + 0.3).all()
    assert (lag2[:2] < lag1[:2] + 0.1).all() and lag2[2] > lag1[2] + 0.1
    assert np.array_equal(texture.apply(image, mask, (2, 2, 2), seed=5), out)
    assert not np.array_equal(texture.apply(image, mask, (2, 2, 2), seed=6), out)
    # in the image calibration it comes first; without a cell size (lags) there is none
    calibration = ImageCalibration((0.0,) * 3, (1.0,) * 3, texture=texture)
    np.testing.assert_allclose(calibration.apply(image, mask, lags=(2, 2, 2), seed=5), out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(calibration.apply(image, mask), image, atol=1e-5)
    assert ImageCalibration.from_config(calibration.to_config(), 3) == calibration
    for notch, target, message in (((0.6, 0.5, 0.0), (1.6,) * 3, "notch strengths must lie from 0 to 0.5"),
                                   ((0.5,) * 3, (1.6, 2.5, 1.6), "targets must lie between 0 and 2"),
                                   ((0.5,) * 2, (1.6,) * 3, "one notch and one target per phase")):
        with pytest.raises(SynBTError, match=message):
            TextureMap(notch, target)
    with pytest.raises(SynBTError, match="texture has 2 phases"):
        ImageCalibration((0.0,) * 3, (1.0,) * 3, texture=TextureMap((0.1,) * 2, (1.5,) * 2))


def test_the_texture_fit_matches_the_real_lag_ratios():
    rng = np.random.default_rng(8)
    mask = np.ones((12, 14, 16), bool)
    smooth = lambda: ndimage.gaussian_filter(rng.normal(size=(3, 12, 14, 16)), (0, 2, 2, 2)) * 6  # noqa: E731
    real = [smooth() + rng.normal(size=(3, 12, 14, 16)) for _ in range(4)]
    generated = [smooth() + 0.8 * _two_cell_pattern() for _ in range(4)]
    texture = _texture_map([(r, g, mask, (2, 2, 2), None) for r, g in zip(real, generated)])
    np.testing.assert_allclose(texture.target, np.mean([lag_ratio(r, mask, 1) for r in real], 0))
    assert all(value >= 0.2 for value in texture.notch)  # the two-cell pattern is notched out
    fixed = _texture_map([(r, g, mask, (2, 2, 2), None) for r, g in zip(real, generated)], notch=0.05)
    assert fixed.notch == (0.05,) * 3 and fixed.target == texture.target
    made = [texture.apply(g.astype(np.float32), mask, (2, 2, 2), seed=i) for i, g in enumerate(generated)]
    for lag in (1, 2):
        np.testing.assert_allclose(np.mean([lag_ratio(m, mask, lag) for m in made], 0),
                                   np.mean([lag_ratio(r, mask, lag) for r in real], 0), atol=0.12)
    assert _texture_map([(np.zeros((3, 12, 14, 16)), g, mask, (2, 2, 2), None) for g in generated[:1]]) is None  # no spread


def _necrotic_tumor(rng, core_level=-6.0):
    """A (3, 14, 16, 16) textured tumor whose smooth core is far darker than its rim, and the masks."""
    z, y, x = np.mgrid[:14, :16, :16]
    distance = np.sqrt((z - 7) ** 2 + (y - 8) ** 2 + (x - 8) ** 2)
    mask, core = distance <= 6, distance <= 3
    image = ndimage.gaussian_filter(rng.normal(size=(3, 14, 16, 16)), (0, 1, 1, 1)) * 3
    image = np.where(core, core_level + 0.1 * image, image)  # the core: dark and nearly flat
    return image.astype(np.float32), mask, core


def test_the_texture_map_gives_a_necrotic_core_its_own_detail_not_the_whole_tumors():
    rng = np.random.default_rng(11)
    image, mask, core = _necrotic_tumor(rng)
    rim = mask & ~core
    texture = TextureMap(notch=(0.0,) * 3, target=(1.6,) * 3)
    # the whole tumor's variance (set by the core's contrast) sizes the detail without the core: speckle
    whole = texture.apply(image, mask, (2, 2, 2), seed=1)
    assert (whole[:, core].std(1) > 5 * image[:, core].std(1)).all()
    # with it, the core keeps its own mean and spread; without a core target it gets no detail at all
    apart = texture.apply(image, mask, (2, 2, 2), seed=1, core=core)
    np.testing.assert_allclose(apart[:, core], image[:, core], atol=1e-5)
    for region in (rim, core):
        np.testing.assert_allclose(apart[:, region].mean(1), image[:, region].mean(1), atol=1e-4)
        np.testing.assert_allclose(apart[:, region].std(1), image[:, region].std(1), rtol=1e-4)
    np.testing.assert_allclose(lag_ratio(apart, rim, 1), 1.6, atol=0.15)
    # a core target brings the core's own ratio there, at the core's own scale
    cored = TextureMap((0.0,) * 3, (1.6,) * 3, core_target=(1.0, 0.9, 0.8)).apply(image, mask, (2, 2, 2), 1, core)
    np.testing.assert_allclose(lag_ratio(cored, core, 1), [1.0, 0.9, 0.8], atol=0.15)
    np.testing.assert_allclose(cored[:, core].std(1), image[:, core].std(1), rtol=1e-4)
    np.testing.assert_allclose(cored[:, rim], apart[:, rim])  # the rim's detail is drawn first, the same
    assert not np.array_equal(TextureMap((0.0,) * 3, (1.6,) * 3).apply(image, mask, (2, 2, 2), 1, np.zeros_like(mask)),
                              apart)
    # the image calibration hands its core on
    calibration = ImageCalibration((0.0,) * 3, (1.0,) * 3, texture=texture)
    np.testing.assert_allclose(calibration.apply(image, mask, core=core, lags=(2, 2, 2), seed=1), apart, atol=1e-4)
    # config: the core target round-trips, is optional, and is refused out of range or per phase
    for map_ in (texture, TextureMap((0.0,) * 3, (1.6,) * 3, (1.0, 0.9, 0.8))):
        assert TextureMap.from_config(map_.to_config()) == map_
    assert "core_target" not in texture.to_config()
    with pytest.raises(SynBTError, match="core targets must lie between 0 and 2"):
        TextureMap((0.0,) * 3, (1.6,) * 3, (1.0, 2.0, 0.8))
    with pytest.raises(SynBTError, match="one of its core targets per phase"):
        TextureMap((0.0,) * 3, (1.6,) * 3, (1.0, 0.9))
    with pytest.raises(SynBTError, match="must hold notch and target"):
        TextureMap.from_config({"notch": [0.0] * 3, "target": [1.6] * 3, "core": [1.0] * 3})


def test_the_texture_fit_takes_the_target_outside_the_cores_and_the_core_target_from_them():
    rng = np.random.default_rng(12)
    tumors = []
    for index in range(4):
        real, mask, core = _necrotic_tumor(rng)
        real = real + np.where(mask & ~core, rng.normal(size=real.shape), 0.05 * rng.normal(size=real.shape))
        generated, _, _ = _necrotic_tumor(rng)
        tumors.append((real, generated, mask, (2, 2, 2), core if index < 3 else None))
    texture = _texture_map(tumors, notch=0.1)
    rims = [mask & ~core if core is not None else mask for _, _, mask, _, core in tumors]
    np.testing.assert_allclose(texture.target, np.mean([lag_ratio(t[0], rim, 1) for t, rim in zip(tumors, rims)], 0))
    np.testing.assert_allclose(texture.core_target, np.mean([lag_ratio(t[0], t[4], 1) for t in tumors[:3]], 0))
    assert (np.asarray(texture.core_target) > 1.0).all()  # the cores' own noise, not the rim's scale
    # fewer cores than a shape map needs: none (the cores then get no detail)
    assert _texture_map(tumors[1:], notch=0.1).core_target is None


def test_a_tumor_generated_with_a_necrotic_core_gets_the_necrotic_factor():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, 10, 12, 12)).astype(np.float32)
    mask = np.zeros((10, 12, 12), bool)
    mask[1:4, 2:6, 2:6] = True
    mask[6:9, 7:11, 7:11] = True
    core = np.zeros_like(mask)
    core[7, 8, 8] = True  # only the second tumor has a core
    calibration = ImageCalibration(shift=(0.0,) * 3, factor=(0.5,) * 3, necrotic_factor=(2.0, 3.0, 4.0))
    out = calibration.apply(image, mask, core=core)
    first, second = (slice(None), slice(1, 4), slice(2, 6), slice(2, 6)), (slice(None), slice(6, 9), slice(7, 11), slice(7, 11))
    np.testing.assert_allclose(out[first].reshape(3, -1).std(1), image[first].reshape(3, -1).std(1) * 0.5, rtol=1e-4)
    np.testing.assert_allclose(out[second].reshape(3, -1).std(1), image[second].reshape(3, -1).std(1) * [2.0, 3.0, 4.0],
                               rtol=1e-4)
    np.testing.assert_allclose(calibration.apply(image, mask), calibration.apply(image, mask, core=np.zeros_like(mask)))
    assert ImageCalibration.from_config(calibration.to_config(), 3) == calibration


def test_the_necrotic_factor_is_fitted_apart_only_with_two_tumors_on_either_side():
    from SynBTLib.calibration import _fit_moments

    real_means = [np.zeros(2)] * 5
    real_stds = [np.array([2.0, 2.0])] * 3 + [np.array([1.0, 1.0])] * 2
    generated_stds = [np.array([1.0, 1.0])] * 5
    split = _fit_moments(ImageCalibration, real_means, real_stds, real_means, generated_stds, [True] * 5,
                         [None] * 5, "none", [True, True, True, False, False])
    assert split.calibration.necrotic_factor == (2.0, 2.0) and split.calibration.factor == (1.0, 1.0)
    assert split.necrotic_tumors == 3
    pooled = _fit_moments(ImageCalibration, real_means, real_stds, real_means, generated_stds, [True] * 5,
                          [None] * 5, "none", [True, False, False, False, False])
    assert pooled.calibration.necrotic_factor is None
    np.testing.assert_allclose(pooled.calibration.factor, [2 ** 0.6] * 2)  # geometric mean over all five


def test_the_fitted_image_calibration_maps_whole_syntheses_onto_the_real_tumors(pipeline):  # noqa: F811
    samples = _three_tumors(radius_mm=6.0)
    fit = fit_image_calibration(pipeline, samples, seed=3, steps=STEPS, moments_only=True)
    assert fit.tumors == 3 and len(fit.table()) == 3
    assert fit.calibration.shape is None and not fit.calibration.curves
    calibrated = SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, pipeline.latent_scale,
                                   image_calibration=fit.calibration, **MARGINS)
    real, made = [], []
    for index, (_, case, mask) in enumerate(samples):
        norm = fit_normalization(case)
        synthetic = calibrated(case, mask, seed=3 + index, steps=STEPS)
        plain = pipeline(case, mask, seed=3 + index, steps=STEPS)
        assert np.array_equal(synthetic.phases[:, mask == 0], plain.phases[:, mask == 0])  # only the mask moves
        real.append(normalize(case.phases[:, mask > 0], norm).astype(np.float64))
        made.append(normalize(synthetic.phases[:, mask > 0], norm).astype(np.float64))
    np.testing.assert_allclose(np.mean([v.mean(1) for v in made], 0), np.mean([v.mean(1) for v in real], 0), atol=1e-4)
    geometric = lambda values: np.exp(np.mean([np.log(v.std(1)) for v in values], 0))  # noqa: E731
    np.testing.assert_allclose(geometric(made), geometric(real), rtol=1e-3)
    assert not np.allclose(fit.calibration.shift, 0.0, atol=1e-3)  # the random tiny denoiser is far from real
    _, case, mask = samples[0]  # reconstruct never calibrates
    assert np.array_equal(calibrated.reconstruct(case, mask, seed=1).phases, pipeline.reconstruct(case, mask, seed=1).phases)
    with pytest.raises(SynBTError, match="carries none"):
        fit_image_calibration(calibrated, samples, steps=STEPS)
    with pytest.raises(SynBTError, match="image calibration has 2 phases"):
        SynthesisPipeline(pipeline.autoencoder, pipeline.denoiser, pipeline.scheduler, pipeline.latent_scale,
                          image_calibration=ImageCalibration((0.0, 0.0), (1.0, 1.0)), **MARGINS)


def test_tumor_samples_give_each_case_the_phases_the_bundles_policy_picks(tmp_path, capsys):
    from SynBTLib.calibration import tumor_samples
    from SynBTLib.phantom import make_phantom, write_phantom

    five = make_phantom(seed=3, shape=(48, 48, 16), phases=5, tumors=1, tumor_diameters_mm=[40.0])
    write_phantom(five, tmp_path / "data" / "case_five")
    two = make_phantom(seed=4, shape=(48, 48, 16), phases=2, tumors=1, tumor_diameters_mm=[40.0])
    write_phantom(two, tmp_path / "data" / "case_two")

    samples = list(tumor_samples(tmp_path / "data", policy="pre,first,last"))
    assert samples and {name.split()[0] for name, _, _ in samples} == {"case_five"}  # two phases cannot give three
    for _, case, mask in samples:
        assert case.phases.shape[0] == 3
        np.testing.assert_allclose(case.phases, five.case.phases[[0, 1, 4]], atol=1e-4)  # pre, first post, last
    assert "case_two" in capsys.readouterr().err  # the skipped case is named
