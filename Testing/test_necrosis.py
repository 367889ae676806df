"""Necrotic cores: found in a tumor's image, made from a mask's shape, and carried in the denoiser's condition."""
import numpy as np
import pytest
import torch

from SynBTLib import labels as L
from SynBTLib.conditioning import denoiser_condition, mask_condition_channels
from SynBTLib.errors import SynBTError
from SynBTLib.necrosis import core_from_mask, equivalent_diameter_mm, necrosis_statistics, necrotic_core
from SynBTLib.phantom import make_phantom


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("seed", [3, 8])
def test_the_core_found_in_the_image_is_the_phantoms_necrosis(seed):
    ph = make_phantom(seed=seed, shape=(128, 128, 48), tumors=1, tumor_diameters_mm=30.0, necrotic=True)
    truth = ph.tissue_labels == L.NECROSIS
    found = necrotic_core(ph.case.phases, ph.tumor_labels)
    assert truth.sum() >= 10 and dice(found, truth) > 0.9
    assert not np.any(found & (ph.tumor_labels == 0))


def test_a_tumor_without_necrosis_has_no_core_and_units_do_not_matter():
    ph = make_phantom(seed=5, shape=(128, 128, 48), tumors=1, tumor_diameters_mm=30.0, necrotic=False)
    assert not necrotic_core(ph.case.phases, ph.tumor_labels).any()
    necrotic = make_phantom(seed=3, shape=(128, 128, 48), tumors=1, tumor_diameters_mm=30.0, necrotic=True)
    scaled = necrotic.case.phases * 7.5 + 100.0  # another scanner's scale and offset
    core = necrotic_core(necrotic.case.phases, necrotic.tumor_labels)
    assert core.any() and np.array_equal(necrotic_core(scaled, necrotic.tumor_labels), core)


def test_necrotic_core_refuses_mismatched_inputs():
    with pytest.raises(SynBTError, match="necrotic_core needs"):
        necrotic_core(np.zeros((1, 4, 4, 4)), np.zeros((4, 4, 4)))
    with pytest.raises(SynBTError, match="necrotic_core needs"):
        necrotic_core(np.zeros((3, 4, 4, 4)), np.zeros((4, 4, 5)))


def test_core_from_mask_takes_the_deepest_share_of_each_tumor():
    z, y, x = np.indices((30, 40, 60))
    ball = lambda cx, r: (z - 15) ** 2 + (y - 20) ** 2 + (x - cx) ** 2 <= r * r  # noqa: E731
    mask = ball(15, 9) | ball(45, 6)
    core = core_from_mask(mask, 0.1)
    assert not np.any(core & ~mask)
    for cx in (15, 45):  # each tumor gets its own core around its centre, about a tenth of its volume
        part = mask & (np.abs(x - cx) < 12)
        share = np.count_nonzero(core & part) / np.count_nonzero(part)
        assert 0.08 <= share <= 0.14 and core[15, 20, cx]
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True  # 27 voxels, 26 of them at the same depth as one another
    assert np.count_nonzero(core_from_mask(cube, 0.1)) == 3 and core_from_mask(cube, 0.1)[2, 2, 2]
    tiny = np.zeros((5, 5, 5), bool)
    tiny[2, 2, 2] = True
    assert np.array_equal(core_from_mask(tiny, 0.05), tiny)  # at least the deepest voxel
    with pytest.raises(SynBTError, match="volume fraction"):
        core_from_mask(mask, 1.0)


def test_necrosis_statistics_of_training_tumors():
    records = [(10.0, 0.0), (18.0, 0.05), (20.0, 0.0), (25.0, 0.15), (30.0, 0.0)]
    stats = necrosis_statistics(records)
    assert stats["tumors"] == 5 and stats["necrotic"] == 2 and stats["min_diameter_mm"] == 18.0
    assert stats["frequency"] == 0.5  # 2 of the 4 tumors of 18 mm or more
    assert stats["core_fraction"] == [0.06, 0.14]
    assert necrosis_statistics([(10.0, 0.0)]) == {"tumors": 1, "necrotic": 0}
    assert equivalent_diameter_mm(1000, (1.0, 1.0, 1.0)) == pytest.approx((6000 / np.pi) ** (1 / 3))


def test_the_core_is_the_last_channels_of_the_mask_condition():
    mask = torch.zeros(1, 1, 8, 8, 8)
    mask[..., 2:6, 2:6, 2:6] = 1
    core = torch.zeros_like(mask)
    core[..., 3:5, 3:5, 3:5] = 1
    core[..., 0, 0, 0] = 1  # outside the tumor: not a core
    plain, erased = denoiser_condition(mask, 2, 1, "voxels")
    with_core, erased_too = denoiser_condition(mask, 2, 1, "voxels", core)
    assert with_core.shape[1] == mask_condition_channels("voxels", 2, necrosis=True) == 17
    assert torch.equal(with_core[:, :9], plain) and torch.equal(erased, erased_too)
    assert with_core[:, 9:].sum() == 8 and with_core[:, 9:, 0, 0, 0].sum() == 0
    none, _ = denoiser_condition(mask, 2, 1, "cells", torch.zeros_like(mask))
    assert none.shape[1] == mask_condition_channels("cells", 2, necrosis=True) == 9 and none[:, 1:].sum() == 0
    with pytest.raises(SynBTError, match="necrotic core"):
        denoiser_condition(mask, 2, 1, "voxels", core[..., :4])
