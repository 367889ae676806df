"""Second judge of the independent realism suite: a small 3D CNN trained from scratch on tumor crops.

The feature judge (realism_suite.py) sees only what its ~180 features describe; this one learns its
own features from tumor-centred crops (``bench/realism_suite.py --save-crops``: channels pre, post1,
post2, post1 - pre, post2 - post1 over the case's reference tissue, and the tumor mask; 32^3 voxels).
``cross_validated_cnn_auc`` trains one network per fold of a case-grouped, stratified split (a case's
crops share a fold), scores the held-out fold, and gives the AUC of the out-of-fold scores with the
95 % interval of realism_suite.bootstrap_interval (cases resampled; it covers the sampling of cases,
not the retraining).

Design, fixed on the tiny 3-case crop file, the synthetic tasks of Testing/test_realism_cnn.py and
timing, before any dev AUC was looked at - except ``MARGIN`` (below), added after the first dev run:

- network (``judge_net``, 46 k parameters): four 3x3x3 conv - batch norm - ReLU blocks of 8, 16, 32,
  32 channels, the first with stride 2 (it still sees every voxel, so voxel-scale texture stays
  visible) and max-pooling after the second and third, then global average pooling and one linear
  output. Batch norm, not instance/group norm, so that absolute intensity levels stay visible.
- only the tumor and ``MARGIN`` = 3 voxels around it (the blend zone) are seen; farther out the
  intensity channels are blanked. Why: a synthetic crop's surroundings are the tumor-free twin
  phantom, not the real case's (on dev, outside the tumor + 4 voxels the 'all' crops differ from the
  real ones by a factor 0.80-1.29 and 0.13 mean absolute difference; the autoencoder's by 0.000), a
  difference of the study's design, not of the synthesis. Chosen from that diagnosis, not from an AUC.
- inputs standardized per channel over the training fold's kept voxels (nothing of the test fold).
- augmentation, the same for both classes so it cannot carry the label: a random 28^3 window of the
  32^3 crop (shifts of up to +-2 voxels), a random in-plane (y, x) rotation by a multiple of 90
  degrees, random flips of each axis. Test: the centre window, logits averaged over the 8 in-plane
  rotations x flips.
- training: AdamW (lr 2e-3, weight decay 1e-3), batch 8, 60 epochs, cosine decay to 0, binary cross
  entropy. ~10 ms per crop and step on one shared core: 2 x 20 crops take ~2 min, 2 x 40 ~4 min.
- deterministic for a seed (fold split, initialisation, batches and augmentation all drawn from it)
  at a given thread count; torch's global random state is left as it was.

Caveat: the interval resamples cases with the out-of-fold scores fixed; it does not cover the
retraining, whose spread at n = 20 per class is large (see docs/realism_suite.md), and a pooled
cross-validated AUC is biased below 0.5 when there is nothing to find. Read a CNN AUC beside its
controls and over several seeds.

torch is the engine's own dependency; scikit-learn (StratifiedGroupKFold) is the optional ``eval``
extra, as for the feature judge.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .errors import SynBTError
from .realism_suite import SuiteAUC, auc_score, bootstrap_interval

WIDTHS = (8, 16, 32, 32)
SHIFT = 2  # voxels a training window may move from the centre
EPOCHS = 60
BATCH = 8
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-3
MARGIN = 3.0  # voxels of context kept around the tumor (the blend zone); farther out is blanked


def judge_net(channels: int, widths=WIDTHS):
    """The CNN judge: conv-BN-ReLU blocks (first stride 2, max-pool after the 2nd and 3rd), global
    average pooling, one logit (synthetic)."""
    from torch import nn

    layers, previous = [], channels
    for k, width in enumerate(widths):
        layers += [nn.Conv3d(previous, width, 3, stride=2 if k == 0 else 1, padding=1, bias=False),
                   nn.BatchNorm3d(width), nn.ReLU(inplace=True)]
        if k in (1, 2):
            layers.append(nn.MaxPool3d(2, ceil_mode=True))
        previous = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(previous, 1))


def case_folds(labels, groups, folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs of a stratified split where every group (case) lies in one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    if np.unique(groups).size < folds:
        raise SynBTError(f"{np.unique(groups).size} cases cannot fill {folds} folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(labels.size), labels, groups))


def _augment(batch: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``size``^3 window of each (C, D, H, W) crop, rotated in-plane by k x 90 degrees and flipped."""
    out = []
    for crop in batch:
        start = [int(rng.integers(0, n - size + 1)) for n in crop.shape[1:]]
        crop = crop[:, start[0]:start[0] + size, start[1]:start[1] + size, start[2]:start[2] + size]
        crop = np.rot90(crop, int(rng.integers(0, 4)), axes=(2, 3))
        for axis in (1, 2, 3):
            if rng.random() < 0.5:
                crop = np.flip(crop, axis)
        out.append(np.ascontiguousarray(crop))
    return np.stack(out)


def _views(batch: np.ndarray):
    """The 8 in-plane rotations x flips of a batch (test-time averaging)."""
    for k in range(4):
        turned = np.rot90(batch, k, axes=(3, 4))
        yield np.ascontiguousarray(turned)
        yield np.ascontiguousarray(np.flip(turned, 4))


def near_tumor(crops: np.ndarray, margin: float | None = MARGIN) -> np.ndarray:
    """(N, 1, S, S, S) where each crop's voxels lie within ``margin`` voxels of its tumor (the last
    channel); everywhere for ``margin`` None."""
    if margin is None:
        return np.ones((len(crops), 1, *crops.shape[2:]), bool)
    return np.stack([ndimage.distance_transform_edt(crop[-1] <= 0) <= margin for crop in crops])[:, None]


def train_and_score(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int = 0,
                    epochs: int = EPOCHS, margin: float | None = MARGIN) -> np.ndarray:
    """Train a fresh judge_net on (N, C, S, S, S) crops (the last channel the tumor mask) with labels
    0/1; the test crops' logits. Intensities are standardized per channel over the training crops'
    voxels within ``margin`` of the tumor and set to 0 (the mean) farther out."""
    import torch
    from torch.nn import functional

    size = x_train.shape[-1] - 2 * SHIFT
    if size < 8 or len(set(x_train.shape[2:])) != 1:
        raise SynBTError(f"crops must be cubes of at least {8 + 2 * SHIFT} voxels, got {x_train.shape[2:]}")
    keep_train, keep_test = near_tumor(x_train, margin), near_tumor(x_test, margin)
    values = np.moveaxis(x_train, 1, 0)[:, keep_train[:, 0]]  # (C, kept voxels)
    mean = values.mean(axis=1)[:, None, None, None]
    spread = np.maximum(values.std(axis=1), 1e-6)[:, None, None, None]
    x_train = np.where(keep_train, (x_train - mean) / spread, 0).astype(np.float32)
    x_test = np.where(keep_test, (x_test - mean) / spread, 0).astype(np.float32)
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = judge_net(x_train.shape[1])
        optimizer = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        steps_per_epoch = int(np.ceil(len(x_train) / BATCH))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
        net.train()
        for _ in range(epochs):
            order = rng.permutation(len(x_train))
            for start in range(0, len(order), BATCH):
                pick = order[start:start + BATCH]
                if pick.size < 2:  # batch norm needs two samples
                    continue
                inputs = torch.from_numpy(_augment(x_train[pick], size, rng))
                target = torch.from_numpy(y_train[pick].astype(np.float32))
                loss = functional.binary_cross_entropy_with_logits(net(inputs)[:, 0], target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        net.eval()
        low = SHIFT
        centre = x_test[:, :, low:low + size, low:low + size, low:low + size]
        with torch.no_grad():
            return np.mean([net(torch.from_numpy(view))[:, 0].numpy() for view in _views(centre)], axis=0)


@dataclass
class CNNAUC(SuiteAUC):
    """SuiteAUC plus the fold each sample was scored in (its case's fold)."""

    fold: np.ndarray = field(default_factory=lambda: np.zeros(0, int))


def cross_validated_cnn_auc(crops, labels, groups, folds: int = 5, seed: int = 0, epochs: int = EPOCHS,
                            repeats: int = 1, resamples: int = 2000, threads: int | None = None,
                            margin: float | None = MARGIN) -> CNNAUC:
    """Out-of-fold CNN scores of (N, C, S, S, S) ``crops`` (label 1 synthetic, 0 real), folds grouped by
    case (``groups``), averaged over ``repeats`` fold shuffles; their AUC with a 95 % bootstrap interval
    over the cases. ``threads``: torch threads while training (restored after)."""
    import torch

    x, y, g = np.asarray(crops, np.float32), np.asarray(labels, int), np.asarray(groups)
    if x.ndim != 5 or y.shape != (x.shape[0],) or g.shape != y.shape:
        raise SynBTError(f"need crops (N, C, S, S, S), one label and one case per crop; got {x.shape}, "
                         f"{y.shape}, {g.shape}")
    if set(np.unique(y)) != {0, 1}:
        raise SynBTError("both classes 0 (real) and 1 (synthetic) are needed")
    if not np.isfinite(x).all():
        raise SynBTError("the crops contain nan or inf values")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        scores, fold_of = np.zeros(y.size), np.full(y.size, -1)
        for repeat in range(repeats):
            for k, (train, test) in enumerate(case_folds(y, g, folds, seed + repeat)):
                fold_seed = (seed + repeat) * 1000 + k
                scores[test] += train_and_score(x[train], y[train], x[test], fold_seed, epochs, margin) / repeats
                if repeat == 0:
                    fold_of[test] = k
    finally:
        torch.set_num_threads(previous)
    low, high = bootstrap_interval(scores, y, g, resamples, seed)
    return CNNAUC(auc_score(scores, y), low, high, scores, fold_of)
