"""Synthetic tumors made on the fly during segmentation training, inside DataLoader workers.

Sample ``(step, slot)`` is a pure function of (seed, step, rank, slot): it picks a real case, a
tumor size, kind and shape seed, a centre deep enough inside the breast tissue found by
preprocess.breast_tissue_mask (and away from the case's own tumors), places the tumor with
shapes.place_tumor and synthesizes it with the chosen synthesizer. Only a box around the new
tumor (patch + context) is cut out, synthesized and returned as a patch, so memory and time per
sample do not grow with the field of view, and the samples are the same whatever the number of
DataLoader workers (the loader keeps the key order).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from ..case import Case, Geometry
from ..errors import SynBTError
from .common import step_rng
from .data import crop

PLACEMENT_TRIES = 8
TUMOR_CLEARANCE_MM = 5.0  # new tumors keep this far from the case's own tumors
MARGIN_MM = 3.0  # tissue kept between a new tumor and the edge of the breast
MAX_CANDIDATES = 100_000  # breast voxels kept per case as candidate centres
SLOT_STREAM = 100  # step_rng stream of slot k is SLOT_STREAM + k (apart from the trainer's streams)
# Shape seeds come from a pool: shapes.py measures each new (kind, seed) solid once (~1 s) and caches
# 64 of them, so a pool of 20 per kind keeps every sample cheap; size, place and texture stay free.
SHAPE_POOL = 20


@dataclass
class SynthesisSource:
    """Where tumors may go in one case: allowed region and candidate centres with their depth (mm)."""

    allowed: np.ndarray  # bool (Z, Y, X): breast tissue away from existing tumors
    candidates: np.ndarray  # (N, 3) z, y, x
    depth_mm: np.ndarray  # (N,) distance of each candidate to the outside of `allowed`


def synthesis_source(case) -> SynthesisSource:
    """Breast tissue of a SegmentationCase (found from its image) minus a clearance around its tumors."""
    from ..preprocess import breast_tissue_mask, denormalize

    raw = Case(denormalize(case.image, case.norm).astype(np.float32), case.geometry, list(case.phase_names))
    spacing_zyx = case.geometry.spacing[::-1]
    allowed = np.asarray(breast_tissue_mask(raw).breast, dtype=bool)
    if case.tumor.any():
        allowed &= ndimage.distance_transform_edt(case.tumor == 0, sampling=spacing_zyx) > TUMOR_CLEARANCE_MM
    depth = ndimage.distance_transform_edt(allowed, sampling=spacing_zyx)
    candidates = np.argwhere(allowed)
    candidates = candidates[:: max(1, len(candidates) // MAX_CANDIDATES)]
    return SynthesisSource(allowed, candidates, depth[tuple(candidates.T)].astype(np.float32))


def crop_geometry(geometry: Geometry, start_zyx, size_zyx) -> Geometry:
    """The grid of the box starting at voxel ``start_zyx`` (same spacing and direction)."""
    origin = geometry.index_to_physical(np.asarray(start_zyx[::-1], dtype=np.float64))
    return Geometry(size=tuple(int(v) for v in size_zyx[::-1]), spacing=geometry.spacing, origin=tuple(origin),
                    direction=geometry.direction)


class OnTheFlyTumors(Dataset):
    """Map-style dataset keyed by ``(step, slot)``: (image patch (C, z, y, x) float32 normalized,
    label patch (z, y, x) uint8) with a freshly synthesized tumor in it."""

    def __init__(
        self, cases, synth, seed: int, patch_size, size_mm=(10.0, 40.0), rank: int = 0, synthesis_steps=None,
        context_mm: float = 16.0, flip_x: bool = True, kinds=None, shape_pool: int = SHAPE_POOL,
    ):
        from ..shapes import KINDS, MAX_DIAMETER_MM, MIN_DIAMETER_MM

        low, high = (float(v) for v in size_mm)
        if not MIN_DIAMETER_MM <= low <= high <= MAX_DIAMETER_MM:
            raise SynBTError(f"synthetic tumor sizes {low:g}-{high:g} mm must lie in {MIN_DIAMETER_MM:g}-{MAX_DIAMETER_MM:g} mm")
        self.cases, self.synth, self.seed, self.rank = list(cases), synth, int(seed), int(rank)
        self.patch_size = np.asarray(patch_size, dtype=int)
        self.size_mm, self.steps, self.context_mm, self.flip_x = (low, high), synthesis_steps, float(context_mm), flip_x
        self.kinds = tuple(kinds or KINDS)
        if unknown := set(self.kinds) - set(KINDS):
            raise SynBTError(f"unknown synthetic tumor kind(s) {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)}")
        self.shape_pool = int(shape_pool) if shape_pool else 2**31  # 0 or None: every seed
        self.sources = [synthesis_source(c) for c in self.cases]
        self.usable = [k for k, s in enumerate(self.sources) if len(s.candidates)]
        if not self.usable:
            raise SynBTError("no breast tissue found in any training case: cannot place synthetic tumors")

    def __len__(self) -> int:  # keys are (step, slot) pairs; there is no fixed length
        return 0

    def __getitem__(self, key) -> tuple[np.ndarray, np.ndarray]:
        from ..shapes import place_tumor, tumor_extent_mm

        step, slot = (int(v) for v in key)
        rng = step_rng(self.seed, step, self.rank, SLOT_STREAM + slot)
        for _ in range(PLACEMENT_TRIES):
            index = self.usable[rng.integers(len(self.usable))]
            case, source = self.cases[index], self.sources[index]
            diameter = float(rng.uniform(*self.size_mm))
            kind = str(self.kinds[rng.integers(len(self.kinds))])
            shape_seed, synthesis_seed = int(rng.integers(self.shape_pool)), int(rng.integers(2**31))
            needed = tumor_extent_mm(diameter, kind, shape_seed) + MARGIN_MM
            deep = np.flatnonzero(source.depth_mm >= needed + max(case.geometry.spacing))
            if not len(deep):
                continue
            center = source.candidates[deep[rng.integers(len(deep))]]
            start, size = self._work_box(case, center, needed)
            box = tuple(slice(s, s + n) for s, n in zip(start, size))
            geometry = crop_geometry(case.geometry, start, size)
            allowed = source.allowed[box].copy()
            for axis in range(3):  # the box border counts as outside, so the tumor stays whole inside it
                allowed[(slice(None),) * axis + (0,)] = allowed[(slice(None),) * axis + (-1,)] = False
            center_mm = case.geometry.index_to_physical(center[::-1].astype(np.float64))
            try:
                placement = place_tumor(allowed, geometry, diameter, seed=shape_seed, kind=kind, center_mm=center_mm,
                                        margin_mm=MARGIN_MM)
            except SynBTError:
                continue
            return self._synthesize(case, box, geometry, placement.mask, center - start, synthesis_seed, rng)
        raise SynBTError(
            f"could not place a synthetic tumor of {self.size_mm[0]:g}-{self.size_mm[1]:g} mm in the breasts of the "
            f"training cases in {PLACEMENT_TRIES} tries; lower synthetic.size_mm"
        )

    def _work_box(self, case, center, needed_mm: float) -> tuple[list[int], list[int]]:
        """Box around ``center`` holding the tumor with its margin, the patch and context, inside the volume."""
        spacing_zyx = np.asarray(case.geometry.spacing[::-1])
        half = np.maximum(self.patch_size // 2 + np.maximum(self.patch_size // 4, np.ceil(self.context_mm / spacing_zyx)),
                          np.ceil(needed_mm / spacing_zyx) + 2).astype(int)
        shape = np.asarray(case.tumor.shape)
        size = np.minimum(2 * half + 1, shape)
        start = np.clip(center - half, 0, shape - size)
        return [int(v) for v in start], [int(v) for v in size]

    def _synthesize(self, case, box, geometry, mask, center_local, synthesis_seed, rng):
        from ..preprocess import denormalize, normalize

        raw = Case(denormalize(case.image[(slice(None), *box)], case.norm).astype(np.float32), geometry,
                   list(case.phase_names))
        result = self.synth(raw, mask, seed=synthesis_seed, steps=self.steps)
        image = normalize(result.phases, case.norm)
        label = ((case.tumor[box] > 0) | (mask > 0)).astype(np.uint8)
        jitter = rng.integers(-(self.patch_size // 4), self.patch_size // 4 + 1)
        start = center_local + jitter - self.patch_size // 2
        image, label = crop(image, start, self.patch_size), crop(label, start, self.patch_size, "constant")
        if self.flip_x and rng.random() < 0.5:
            image, label = image[..., ::-1], label[..., ::-1]
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label, dtype=np.uint8)


def _single_thread_worker(_worker_id: int, parent_pid: int | None = None) -> None:
    import torch

    from .worker_lifetime import die_with_parent

    die_with_parent(parent_pid)
    torch.set_num_threads(1)  # workers share the cores with the training process


def _as_numpy(item):
    return item


def synthetic_loader(dataset: OnTheFlyTumors, keys, workers: int = 0) -> DataLoader:
    """A DataLoader yielding ``dataset[key]`` for ``keys`` in order, made in ``workers`` processes."""
    if workers < 0:
        raise SynBTError(f"the number of synthesis workers must be >= 0, got {workers}")
    return DataLoader(
        dataset, sampler=list(keys), batch_size=None, num_workers=int(workers), collate_fn=_as_numpy,
        worker_init_fn=partial(_single_thread_worker, parent_pid=os.getpid()) if workers else None,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )
