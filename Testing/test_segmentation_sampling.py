"""Synthetic training patches are drawn as the real ones: a share centred on a tumor, the rest background."""
import numpy as np
import pytest

from SynBTLib.export import ExportSettings, export_dataset
from SynBTLib.phantom import make_phantom, write_phantom
from SynBTLib.training.config import SegmentationTrainingConfig
from SynBTLib.training.segmentation import load_segmentation_cases, synthetic_count, synthetic_source

PATCH = (8, 16, 16)
STEPS = 150


@pytest.fixture(scope="module")
def real_and_synthetic(tmp_path_factory):
    """Two small phantoms (one tumor each) and a handcrafted offline set of two cases made from them."""
    root = tmp_path_factory.mktemp("sampling")
    for k in range(2):
        phantom = make_phantom(seed=30 + k, shape=(64, 64, 24), tumors=1, tumor_diameters_mm=12.0)
        write_phantom(phantom, root / "real" / f"case_{k}", montage=False)
    export_dataset(root / "real", root / "synthetic", ExportSettings(num_cases=2, size_mm=(10.0, 14.0), seed=5),
                   log=lambda message: None)
    return root / "real", root / "synthetic"


def _config(synthetic: dict) -> SegmentationTrainingConfig:
    return SegmentationTrainingConfig.from_dict({
        "model": {"channels": [8, 16, 32], "num_res_units": 1},
        "training": {"steps": STEPS, "batch_size": 4, "seed": 3},
        "data": {"patch_size": list(PATCH), "pos_fraction": 0.67, "flip_x": False},
        "synthetic": {"ratio": 0.5, **synthetic},
    })


def _background_share(draw, config) -> tuple[float, int]:
    """The share of the synthetic samples whose centre voxel is background, and how many were drawn."""
    centre = tuple(n // 2 for n in PATCH)
    background = total = 0
    for step in range(STEPS):
        count = synthetic_count(config.training.seed, step, 0, config.training.batch_size, config.synthetic.ratio)
        images, labels = draw(step, count, 0)
        assert images.shape[0] == labels.shape[0] == count
        background += int(sum(labels[k, 0][centre] == 0 for k in range(count)))
        total += count
    return background / total, total


def test_offline_synthetic_cases_give_background_patches_like_real_ones(real_and_synthetic):
    real_dir, synthetic_dir = real_and_synthetic
    real = load_segmentation_cases(real_dir, progress=False)
    config = _config({"mode": "offline", "dir": str(synthetic_dir)})
    draw = synthetic_source(config, real)
    share, total = _background_share(draw, config)
    assert total >= 250
    # 1 - pos_fraction = 0.33 of the synthetic samples are centred on a body voxel of a synthetic case (a binomial
    # SD of 0.03 at this count); the sampling that always centred them on a tumor gave none
    assert 0.22 < share < 0.45
    again = synthetic_source(config, real)  # a resumed run draws the same patches for a step
    for step in (0, 7, STEPS - 1):
        a, b = draw(step, 2, 0), again(step, 2, step)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # the old sampling stays reachable (study folders made with it resume with it): no background at all
    only_tumor = _config({"mode": "offline", "dir": str(synthetic_dir), "pos_fraction": 1.0})
    assert _background_share(synthetic_source(only_tumor, real), only_tumor)[0] == 0.0


def test_on_the_fly_synthetic_share_holds_background_patches_too(real_and_synthetic):
    real_dir, _ = real_and_synthetic
    real = load_segmentation_cases(real_dir, progress=False)
    config = _config({"mode": "on-the-fly", "method": "handcrafted", "workers": 0, "size_mm": [10, 14],
                      "kinds": ["ellipsoid"], "shape_pool": 2})
    draw = synthetic_source(config, real)
    tumor_free = total = 0
    for step in range(40):
        count = synthetic_count(3, step, 0, 4, 0.5)
        _, labels = draw(step, count, 0)
        tumor_free += sum(not labels[k, 0].any() for k in range(count))
        total += count
    # every on-the-fly tumor patch holds its new tumor (tested in test_train_seg); about a third of the synthetic
    # share (1 - pos_fraction, a binomial SD of 0.05 here) are now background patches of the cases instead
    assert 0.15 < tumor_free / total < 0.55
