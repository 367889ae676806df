"""Normalization, body mask and breast-tissue masks, scored against the phantom's ground truth."""
import numpy as np
import pytest
from scipy import ndimage

from SynBTLib import labels
from SynBTLib.case import Case, Geometry
from SynBTLib.errors import SynBTError
from SynBTLib.phantom import make_phantom
from SynBTLib.preprocess import (
    Normalization,
    body_mask,
    breast_tissue_mask,
    denormalize,
    fit_normalization,
    normalize,
)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=0, phases=3)


def test_normalization_is_exactly_inverted_and_keeps_enhancement(phantom):
    case = phantom.case
    norm = fit_normalization(case)
    x = normalize(case.phases, norm)
    assert x.dtype == np.float32
    back = denormalize(x, norm)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, case.phases, rtol=2e-7, atol=4 * np.finfo(np.float32).eps * (norm.high - norm.low))
    body = body_mask(case)
    inside = x[:, body]
    assert 0.97 <= np.mean((inside >= 0) & (inside <= 1)) <= 0.995
    fgt = phantom.tissue_labels == labels.FIBROGLANDULAR
    assert np.median(x[-1][fgt]) > np.median(x[0][fgt])  # one map for all phases keeps the enhancement


def test_normalization_round_trips_through_a_dict_and_refuses_bad_values():
    norm = Normalization(12.5, 830.0)
    assert Normalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(SynBTError, match="below high"):
        Normalization(5.0, 5.0)
    with pytest.raises(SynBTError, match="'low'.*'high'"):
        Normalization.from_dict({"low": 1.0})


def test_a_constant_image_is_refused():
    geometry = Geometry((16, 16, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    case = Case(np.full((2, 8, 16, 16), 100.0, np.float32), geometry)
    with pytest.raises(SynBTError, match="constant"):
        fit_normalization(case)


def test_body_mask_fills_dark_inside_and_ignores_noise_specks():
    rng = np.random.default_rng(0)
    geometry = Geometry((48, 40, 12), (1.0, 1.2, 3.0), (0.0, 0.0, 0.0))
    z, y, x = np.indices(geometry.shape)
    body = ((x - 24) / 18.0) ** 2 + ((y - 20) / 15.0) ** 2 <= 1
    lung = ((x - 24) / 9.0) ** 2 + ((y - 22) / 7.0) ** 2 <= 1
    image = np.where(body & ~lung, 300.0, 5.0) + rng.normal(0, 3, geometry.shape)
    image[3, 2, 2] = 400.0  # a bright speck in the air
    case = Case(np.stack([image, image * 1.1]).astype(np.float32), geometry)
    found = body_mask(case)
    assert np.array_equal(found, body)


@pytest.mark.parametrize(
    "seed, params",
    [(0, {}), (1, {"density": "a"}), (2, {"density": "d"}), (3, {"fat_suppressed": False, "density": "c"})],
)
def test_breast_mask_matches_the_phantom(seed, params, capsys):
    # resolution=1: the algorithm against exact labels; the scanner blur makes the truth ambiguous at edges
    phantom = make_phantom(seed=seed, phases=3, resolution=1.0, **params)
    masks = breast_tissue_mask(phantom.case)
    truth = np.isin(phantom.tissue_labels, labels.BREAST_TISSUE)
    fgt_truth = phantom.tissue_labels == labels.FIBROGLANDULAR
    breast_dice, fgt_dice = dice(masks.breast, truth), dice(masks.fibroglandular, fgt_truth)
    with capsys.disabled():
        print(f"\nphantom seed {seed} {params}: breast Dice {breast_dice:.3f}, FGT Dice {fgt_dice:.3f}")
    assert breast_dice >= 0.90
    assert fgt_dice >= 0.70
    assert np.array_equal(masks.fibroglandular | masks.fat, masks.breast)
    assert not (masks.fibroglandular & masks.fat).any()
    assert not (masks.breast & ~masks.body).any()
    posterior = np.isin(phantom.tissue_labels, (labels.MUSCLE, labels.CHEST_WALL, labels.THORAX, labels.HEART))
    assert (masks.breast & posterior).sum() < 0.01 * masks.breast.sum()


def test_normalization_of_a_large_volume_matches_the_full_measurement():
    import SynBTLib.preprocess as pre
    from SynBTLib.phantom import make_phantom

    case = make_phantom(seed=4, shape=(160, 160, 48)).case
    full = pre.fit_normalization(case)
    limit = pre._SUBSAMPLE_ABOVE_VOXELS
    try:
        pre._SUBSAMPLE_ABOVE_VOXELS = 1000  # force the subsampled path on this small case
        sub = pre.fit_normalization(case)
    finally:
        pre._SUBSAMPLE_ABOVE_VOXELS = limit
    span = full.high - full.low
    assert abs(sub.low - full.low) < 0.02 * span and abs(sub.high - full.high) < 0.02 * span


@pytest.mark.parametrize("block_mm", [4.0, 6.0])
def test_the_sampled_body_mask_matches_the_full_one_and_judges_masks_alike(block_mm):
    """check_mask_in_body judges a large case on blocks (sampled_body_mask): the body mapped back to the
    case grid overlaps the full-resolution one (Dice > 0.98), and masks inside, in the air and across
    the skin get the same decision either way."""
    from SynBTLib.preprocess import check_mask_in_body, sampled_body_mask

    case = make_phantom(seed=5, shape=(192, 192, 64)).case  # 1.8 x 1.8 x 2.3 mm
    full = body_mask(case)
    body, factors = sampled_body_mask(case, block_mm)
    assert factors != (1, 1, 1) and body.size < full.size / 3
    index = np.ix_(*[np.minimum(np.arange(n) // f, m - 1) for n, f, m in zip(case.shape, factors, body.shape)])
    assert dice(body[index], full) > 0.98

    depth = ndimage.distance_transform_edt(full) - ndimage.distance_transform_edt(~full)  # voxels, < 0 in air
    z = np.arange(case.shape[0])[:, None, None]
    verdicts = {}
    for name, band in {"inside": depth > 8, "in air": depth < -8, "mostly in": (depth > -2) & (depth <= 6),
                       "mostly out": (depth > -6) & (depth <= 2)}.items():
        mask = (band & (abs(z - case.shape[0] // 2) <= 2)).astype(np.uint8)
        outside = np.count_nonzero(mask.astype(bool) & ~full) / np.count_nonzero(mask)
        for block in (0.0, block_mm):
            try:
                check_mask_in_body(case, mask, block_mm=block)
                verdicts[name, block] = "accepted"
            except SynBTError:
                verdicts[name, block] = "refused"
        assert verdicts[name, 0.0] == ("refused" if outside > 0.5 else "accepted"), (name, outside)
        assert verdicts[name, block_mm] == verdicts[name, 0.0], name
    assert {v for (name, _), v in verdicts.items() if name in ("inside", "mostly in")} == {"accepted"}
    assert {v for (name, _), v in verdicts.items() if name in ("in air", "mostly out")} == {"refused"}



def test_slice_hole_filling_and_largest_component_match_scipy_per_slice():
    """The whole-volume forms of the two steps every body and breast mask goes through give exactly
    what scipy gives slice by slice / by a plain count (random masks, with holes, of odd shapes)."""
    from SynBTLib.preprocess import _fill_holes_per_slice, _largest_component

    rng = np.random.default_rng(7)
    for trial in range(20):
        mask = rng.random(tuple(rng.integers(1, 24, 3))) < rng.uniform(0.3, 0.8)
        mask = ndimage.binary_closing(mask) if trial % 2 else mask
        expected = np.stack([ndimage.binary_fill_holes(axial) for axial in mask])
        assert np.array_equal(_fill_holes_per_slice(mask), expected)
        labels_, count = ndimage.label(mask)
        if count:
            sizes = np.bincount(labels_.ravel())[1:]
            assert np.array_equal(_largest_component(mask), labels_ == 1 + int(sizes.argmax()))
