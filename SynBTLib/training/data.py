"""Training data: a folder of cases, normalized and cached in memory, and seeded patch/ROI samplers.

Every batch is a deterministic function of (seed, step, rank), so a resumed run sees the same
data as an uninterrupted one and each DDP rank sees its own stream. Augmentation: flips along x
(left/right breast).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from ..boxes import crop
from ..conditioning import denoiser_condition, erase_mask, latent_mask_to_voxels, mask_to_latent
from ..errors import SynBTError
from ..datasets import apply_policy, phase_policy
from ..io import read_case, read_dataset, read_mask
from ..kinetics import classify_curve
from ..necrosis import equivalent_diameter_mm, necrotic_core
from ..preprocess import body_mask, fit_normalization, normalize
from ..store import is_store, log, open_store
from .common import step_rng
from .latent_cache import LatentCache

LOAD_THREADS = 4  # cases read at once by load_cases
MAX_CENTER_CANDIDATES = 200_000  # body voxels kept per case as patch-center candidates


@dataclass
class TrainingCase:
    """One case, normalized: image (C, Z, Y, X) float32, tumor uint8 (Z, Y, X) or None."""

    case_id: str
    image: np.ndarray
    tumor: np.ndarray | None
    spacing: tuple[float, float, float]  # (x, y, z) mm
    phase_names: list[str]
    centers: np.ndarray  # (N, 3) z, y, x voxel indices inside the body, for patch sampling
    tumor_centers: np.ndarray | None = None  # (N, 3) tumor voxel indices, where tumors were read
    intensity_range: tuple[float, float] | None = None  # (low, high) of the normalization: image * (high - low) + low


def load_cases(root: str | Path, need_tumors: bool = False, progress: bool = True,
               with_tumors: bool = False, policy=None) -> list[TrainingCase]:
    """Read, normalize and cache every case of a data set folder (any layout SynBTLib.io reads), or open
    the cases of a store that `synbt prepare` wrote (memory-mapped, not read into memory).

    With ``need_tumors`` the cases without a tumor are skipped, and at least one must remain;
    with ``with_tumors`` every case is kept and the tumor labels that exist are read. ``policy``
    (datasets.PhasePolicy spec) picks each case's phases. A case that cannot be used (too few phases,
    unreadable, no tumor where one is needed) is skipped with one line on stderr, and counted.
    """
    if is_store(root):
        cases = _cases_from_store(root, need_tumors, with_tumors, policy)
    else:
        cases = _cases_from_files(root, need_tumors, with_tumors, policy, progress)
    if not cases:
        what = "cases with a tumor label (tumor_labels.nii.gz)" if need_tumors else "cases"
        raise SynBTError(f"no usable {what} found in {root}")
    phases = {c.image.shape[0] for c in cases}
    if len(phases) > 1:
        raise SynBTError(f"cases in {root} have different numbers of phases {sorted(phases)}; train on one protocol, "
                         "or pick the phases with a phase policy (data.phase_policy, e.g. \"pre,first,last\")")
    return cases


def data_phase_policy(root, policy=None) -> str | None:
    """The phase policy training on ``root`` uses: ``policy``, or a store's own (which ``policy`` must match)."""
    policy = None if policy is None else phase_policy(policy).spec
    if is_store(root):
        stored = open_store(root, policy)[0].get("phase_policy")
        return stored
    return policy


def _cases_from_files(root, need_tumors: bool, with_tumors: bool, policy, progress: bool) -> list[TrainingCase]:
    def load(ref) -> TrainingCase | str:
        try:
            case = read_case(list(ref.phase_paths))
            read_tumor = need_tumors or (with_tumors and ref.label_path is not None)
            tumor = read_mask(ref.label_path, case.geometry) if read_tumor else None
            norm = fit_normalization(case)
        except (SynBTError, OSError, RuntimeError, ValueError) as exc:
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        body = np.argwhere(body_mask(case))
        stride = max(1, len(body) // MAX_CENTER_CANDIDATES)
        tumor_voxels = np.argwhere(tumor > 0) if tumor is not None else None
        return TrainingCase(
            case_id=ref.case_id,
            image=normalize(case.phases, norm),
            intensity_range=(norm.low, norm.high),
            tumor=tumor,
            spacing=case.geometry.spacing,
            phase_names=list(case.phase_names),
            centers=body[::stride] if len(body) else np.argwhere(np.ones(case.shape, bool))[:1],
            tumor_centers=tumor_voxels if tumor_voxels is not None and len(tumor_voxels) else None,
        )

    every = read_dataset(root)
    refs, skipped = apply_policy(every, policy)
    skipped += [(ref.case_id, "no tumor label") for ref in refs if need_tumors and ref.label_path is None]
    refs = [ref for ref in refs if not (need_tumors and ref.label_path is None)]
    # threads: decompression and the numpy work release the GIL; map keeps the folder's order; few, since
    # each case in flight holds its float64 temporaries (about 3 GB for 512 x 512 x 160 x 4)
    with ThreadPoolExecutor(max_workers=min(LOAD_THREADS, os.cpu_count() or 1)) as pool:
        loaded = list(tqdm(pool.map(load, refs), total=len(refs), desc="loading cases", disable=not progress))
    skipped += [(ref.case_id, item) for ref, item in zip(refs, loaded) if isinstance(item, str)]
    report_skipped(skipped, len(every), root)
    return [item for item in loaded if not isinstance(item, str)]


def report_skipped(skipped: list[tuple[str, str]], total: int, root) -> None:
    """One line per skipped case, then the count."""
    for case_id, reason in sorted(skipped):
        log(f"skipped case {case_id}: {reason}")
    if skipped:
        log(f"{len(skipped)} of {total} cases in {root} skipped")


def _cases_from_store(root, need_tumors: bool, with_tumors: bool, policy) -> list[TrainingCase]:
    settings, stored = open_store(root, policy)
    if settings["skipped"]:
        log(f"store {root}: {settings['skipped']} cases were skipped when it was prepared (see its skipped/ folder)")
    cases, skipped = [], []
    for entry in stored:
        meta = entry.meta
        if need_tumors and not meta["has_tumor"]:
            skipped.append((entry.case_id, "no tumor label" if meta["label_file"] is None else "empty tumor label"))
            continue
        read_tumor = need_tumors or with_tumors
        tumor = entry.array("tumor") if read_tumor else None
        tumor_voxels = entry.array("tumor_voxels") if read_tumor and meta["has_tumor"] else None
        norm = meta["normalization"]
        cases.append(TrainingCase(
            case_id=entry.case_id, image=entry.array("image"), tumor=tumor,
            spacing=tuple(meta["geometry"]["spacing"]), phase_names=list(meta["phase_names"]),
            centers=np.asarray(entry.array("centers")),
            tumor_centers=None if tumor_voxels is None else np.asarray(tumor_voxels),
            intensity_range=(norm["low"], norm["high"]),
        ))
    report_skipped(skipped, len(stored), root)
    return cases


def median_spacing(cases: Sequence[TrainingCase]) -> list[float]:
    """The data set's median voxel spacing (x, y, z) in mm, recorded in the bundle."""
    return [float(v) for v in np.median([c.spacing for c in cases], axis=0)]


class PatchSampler:
    """Random image patches (B, C, pz, py, px) for the autoencoder; centers mostly inside the body.

    tumor_fraction: share of patches centred on a tumor voxel (cases loaded with their tumors).
    Tumors are a tiny share of the body, so uniform patches teach the autoencoder little about
    them, and its reconstructions of tumors came out dim and smooth (see bench/realism.py).
    """

    def __init__(
        self,
        cases: Sequence[TrainingCase],
        patch_size: Sequence[int],
        seed: int,
        rank: int = 0,
        flip_x: bool = True,
        body_fraction: float = 0.9,
        tumor_fraction: float = 0.0,
    ):
        if not 0.0 <= tumor_fraction <= 1.0:
            raise SynBTError(f"tumor_fraction must be between 0 and 1, got {tumor_fraction}")
        self.cases, self.patch_size = list(cases), tuple(int(v) for v in patch_size)
        self.seed, self.rank, self.flip_x, self.body_fraction = seed, rank, flip_x, body_fraction
        self.tumor_fraction = float(tumor_fraction)
        self.tumor_cases = [case for case in self.cases if case.tumor_centers is not None]
        if self.tumor_fraction > 0 and not self.tumor_cases:
            raise SynBTError(f"tumor_fraction is {tumor_fraction} but no case has a tumor label with a tumor in it")

    def sample(self, step: int, batch_size: int, stream: int = 0) -> np.ndarray:
        rng = step_rng(self.seed, step, self.rank, stream)
        patches = []
        for _ in range(batch_size):
            # with tumor_fraction 0 no extra number is drawn: the stream of earlier runs is unchanged
            if self.tumor_fraction > 0 and rng.random() < self.tumor_fraction:
                case = self.tumor_cases[rng.integers(len(self.tumor_cases))]
                center = case.tumor_centers[rng.integers(len(case.tumor_centers))]
            else:
                case = self.cases[rng.integers(len(self.cases))]
                if rng.random() < self.body_fraction:
                    center = case.centers[rng.integers(len(case.centers))]
                else:
                    center = [rng.integers(n) for n in case.image.shape[1:]]
            start = [int(c) - n // 2 for c, n in zip(center, self.patch_size)]
            patch = crop(case.image, start, self.patch_size)
            if self.flip_x and rng.random() < 0.5:
                patch = patch[..., ::-1]
            patches.append(patch)
        return np.ascontiguousarray(np.stack(patches), dtype=np.float32)


@dataclass
class LatentWindow:
    """Part of a case's latent grid, encoded: every cell an ROI sampled around its tumors can reach.

    ``origin`` is the window's first cell (z, y, x) in the case's latent grid; ``latent`` and
    ``context`` are (L, z, y, x) float32 (already multiplied by the latent scale), ``mask`` the
    mask condition (M, z, y, x) uint8."""

    origin: tuple[int, int, int]
    latent: np.ndarray
    context: np.ndarray
    mask: np.ndarray


@dataclass
class LatentCase:
    """A case encoded once for diffusion training (per flip variant): the windows of its latent grid
    that ROIs around its tumors can reach (the whole grid with ``encode_cases(whole_volume=True)``)."""

    case_id: str
    grid: tuple[int, int, int]  # the whole latent grid (z, y, x) the windows lie in
    windows: list[LatentWindow]
    tumor_centers: np.ndarray  # (N, 3) latent-grid centers of the tumor components
    tumor_window: np.ndarray  # (N,) index of the window that holds every ROI around each center
    tumor_kinetics: np.ndarray | None = None  # (N,) KINETIC_CLASSES index of each component (0: unknown)
    # (equivalent diameter mm, necrotic core's volume fraction or 0) of each voxel-level tumor
    # component, measured with necrosis conditioning (on the unflipped variant only)
    tumor_necrosis: list[tuple[float, float]] | None = None
    # curve type of each whole tumor (26-connected, >= MIN_TUMOR_VOXELS) on the unflipped variant: what
    # the pipeline's draw follows (the labels above are per latent component, fragments and flips included)
    whole_tumor_types: list[str] | None = None

    @property
    def nbytes(self) -> int:
        return sum(w.latent.nbytes + w.context.nbytes + w.mask.nbytes for w in self.windows)


def roi_starts(center: int, roi: int, jitter_cells: int, dim: int) -> tuple[int, int]:
    """(lowest, highest) start along one axis of an ROI of ``roi`` cells centred on ``center`` shifted
    by at most ``jitter_cells``, kept inside a grid of ``dim`` cells (as TumorRoiSampler places it)."""
    def place(shift: int) -> int:
        return min(max(int(center) + shift - roi // 2, 0), max(dim - roi, 0))
    return place(-jitter_cells), place(jitter_cells)


def roi_windows(centers: np.ndarray, grid: Sequence[int], roi: Sequence[int], jitter: float
                ) -> tuple[list[tuple[slice, slice, slice]], np.ndarray]:
    """The boxes (latent cells) that hold every ROI the sampler can place around ``centers`` (N, 3),
    overlapping boxes merged; and the index of each center's box."""
    boxes = []
    for center in centers:
        box = []
        for c, n, dim in zip(center, roi, grid):
            low, high = roi_starts(c, n, int(n * jitter), dim)
            box.append([low, min(high + n, max(dim, n))])
        boxes.append(box)
    owner = list(range(len(boxes)))
    merged = True
    while merged:  # merge until no two boxes overlap (few tumors per case: quadratic is fine)
        merged = False
        groups = sorted(set(owner))
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                if all(boxes[a][k][0] < boxes[b][k][1] and boxes[b][k][0] < boxes[a][k][1] for k in range(3)):
                    boxes[a] = [[min(boxes[a][k][0], boxes[b][k][0]), max(boxes[a][k][1], boxes[b][k][1])] for k in range(3)]
                    owner = [a if o == b else o for o in owner]
                    merged = True
                    break
            if merged:
                break
    groups = sorted(set(owner))
    index = np.asarray([groups.index(o) for o in owner], dtype=np.int64)
    return [tuple(slice(lo, hi) for lo, hi in boxes[g]) for g in groups], index


def pad_to_multiple(array: np.ndarray, multiple: int, minimum: Sequence[int], mode: str) -> np.ndarray:
    """Pad the trailing (Z, Y, X) axes at their end to a multiple of ``multiple`` and at least ``minimum``."""
    pad = [(0, 0)] * (array.ndim - 3)
    for dim, low in zip(array.shape[-3:], minimum):
        target = max(-(-dim // multiple) * multiple, int(low))
        pad.append((0, target - dim))
    return np.pad(array, pad, mode=mode) if any(after for _, after in pad) else array


def padded_region(image, padded: Sequence[int], region: Sequence[slice], flip: bool = False) -> np.ndarray:
    """float32 (C, z, y, x) ``region`` of ``image`` (C, Z, Y, X; a memory map is fine) edge-padded at the
    far end to ``padded`` (pad_to_multiple) and, with ``flip``, then flipped along x; only the region is read."""
    index = []
    for axis, (sl, n, size) in enumerate(zip(region, image.shape[-3:], padded)):
        positions = np.arange(sl.start, sl.stop)
        if flip and axis == 2:
            positions = size - 1 - positions
        index.append(np.minimum(positions, n - 1))
    low = [int(i.min()) for i in index]
    slab = np.asarray(image[(slice(None),) + tuple(slice(lo, int(i.max()) + 1) for lo, i in zip(low, index))],
                      dtype=np.float32)  # the only read: a box of the image
    if all((np.diff(i) == 1).all() for i in index):  # inside the image, not flipped: the box itself
        return np.ascontiguousarray(slab)
    return np.ascontiguousarray(slab[np.ix_(np.arange(slab.shape[0]), *(i - lo for i, lo in zip(index, low)))])


def _cells_box(tumor_cells: np.ndarray, tumor: np.ndarray, compression: int) -> tuple[slice, slice, slice]:
    """The latent cells around every tumor voxel, with one cell more on each side (clipped)."""
    found = ndimage.find_objects((tumor_cells > 0).astype(np.uint8))
    if not found:
        return tuple(slice(0, n) for n in tumor_cells.shape)
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(found[0], tumor_cells.shape))


def encode_cases(
    cases: Sequence[TrainingCase],
    autoencoder,
    latent_scale: float,
    roi_size: Sequence[int],
    flip_x: bool = True,
    device="cpu",
    progress: bool = True,
    mask_dilation_cells: int = 0,
    mask_encoding: str = "cells",
    cache_dir: str | Path | None = None,
    kinetics: bool = False,
    necrosis: bool = False,
    jitter: float = 0.25,
    whole_volume: bool = False,
) -> list[LatentCase]:
    """Encode, once, every case and its tumor-erased copy (and their x-flipped versions) where ROIs
    around its tumors can reach, for ROI sampling.

    The denoiser trains only on ROIs of ``roi_size`` voxels centred on a tumor and shifted by at most
    ``jitter`` of their size (TumorRoiSampler), so only those windows of the latent grid are encoded
    (``roi_windows``; ``whole_volume``: the whole grid). The autoencoder is local, so a window read
    with the encoder's halo is what encoding the whole volume gives there, up to float rounding.
    The latent mask and the erased region are the tumor grown by ``mask_dilation_cells`` latent
    cells (conditioning.generation_region), as the pipeline does for a bundle trained so; with
    ``mask_encoding="voxels"`` the mask condition also holds the tumor's voxel outline
    (conditioning.denoiser_condition). Masks are kept as uint8. With ``cache_dir`` every window's latent is
    looked up in / added to a latent_cache.LatentCache there (keyed by the encoder and the voxels).
    With ``kinetics`` every tumor component gets its curve type (tumor_curve_classes); with
    ``necrosis`` the mask condition ends with each tumor's necrotic core as measured on its image
    (necrosis.necrotic_core), and every tumor's size and core fraction are kept."""

    compression = 2 ** (len(autoencoder.config.channels) - 1)
    halo = autoencoder.encoder_halo
    cache = None
    if cache_dir is not None:
        cache = LatentCache(cache_dir, autoencoder, latent_scale)
    latent_roi = [int(v) // compression for v in roi_size]

    def encode(image_t):
        def run():
            return (autoencoder.encode_volume(image_t) * latent_scale)[0].float().cpu().numpy()
        return run() if cache is None else cache.latent(image_t[0].cpu().numpy(), run)

    def encode_window(image, padded, flip, erased, cells):
        """Latents of the image and of its erased copy over ``cells``, read with the encoder's halo."""
        grid = [n // compression for n in padded]
        read = tuple(slice(max(c.start - halo, 0), min(c.stop + halo, g)) for c, g in zip(cells, grid))
        voxels = tuple(slice(r.start * compression, r.stop * compression) for r in read)
        core = (slice(None),) + tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(cells, read))
        sub = torch.from_numpy(padded_region(image, padded, voxels, flip)).to(device)[None]
        sub_erased = erase_mask(sub, torch.from_numpy(np.ascontiguousarray(erased[voxels])).to(device)[None, None])
        return encode(sub)[core], encode(sub_erased)[core]

    variants = [(c, flip) for c in cases for flip in ((False, True) if flip_x else (False,))]
    encoded = []
    with torch.no_grad():
        for case, flip in tqdm(variants, desc="encoding cases", disable=not progress):
            # the image is only read where it is needed (windows, the tumors' box): a store's memory map
            # (float16 possibly) is never copied whole; ``padded`` is the grid padding gives it
            tumor = pad_to_multiple(np.array(case.tumor), compression, roi_size, "constant")
            padded = tumor.shape
            if flip:
                tumor = tumor[..., ::-1]
            tumor_t = torch.from_numpy(np.ascontiguousarray(tumor)).to(device)[None, None]
            tumor_cells = _latent_mask(tumor, compression)  # ROIs are centred on tumors, not on their rims
            components, count = ndimage.label(tumor_cells)
            centers = np.asarray(ndimage.center_of_mass(tumor_cells, components, range(1, count + 1)))
            centers = np.round(centers).astype(int).reshape(-1, 3)
            core_t = tumors = curve_types = None
            if necrosis or kinetics:
                # what is measured on the image, on the tumors' box (whole latent cells, one voxel of margin)
                cells = _cells_box(tumor_cells, tumor, compression)
                box = tuple(slice(c.start * compression, min(c.stop * compression, n)) for c, n in zip(cells, padded))
                image_box, tumor_box = padded_region(case.image, padded, box, flip), tumor[box]
                tumors = whole_tumors(tumor_box) if not flip else []
                core_box = necrotic_core(image_box, tumor_box) if necrosis else None
                if necrosis:
                    core = np.zeros(tumor.shape, dtype=np.uint8)
                    core[box] = core_box
                    core_t = torch.from_numpy(core).to(device)[None, None]
                if kinetics:
                    curve_types = tumor_curve_classes(case, image_box, tumor_box, components[cells], count, compression)
            generated, erased = denoiser_condition(tumor_t, compression, mask_dilation_cells, mask_encoding, core_t)
            erased = (erased[0, 0] > 0).cpu().numpy()
            latent_mask = generated[0].cpu().numpy().astype(np.uint8)
            grid = tuple(int(n) for n in latent_mask.shape[1:])
            if whole_volume or not len(centers):
                boxes, owner = [tuple(slice(0, n) for n in grid)], np.zeros(len(centers), dtype=np.int64)
            else:
                boxes, owner = roi_windows(centers, grid, latent_roi, jitter)
            windows = []
            for cells in boxes:
                latent, context = encode_window(case.image, padded, flip, erased, cells)
                windows.append(LatentWindow(tuple(c.start for c in cells), latent, context,
                                            np.ascontiguousarray(latent_mask[(slice(None),) + cells])))
            encoded.append(
                LatentCase(
                    case_id=case.case_id + (" (flipped)" if flip else ""),
                    grid=grid,
                    windows=windows,
                    tumor_centers=centers,
                    tumor_window=owner,
                    tumor_kinetics=curve_types,
                    tumor_necrosis=_necrosis_records(tumors, core_box, case.spacing) if necrosis and not flip else None,
                    whole_tumor_types=whole_tumor_types(case, image_box, tumors) if kinetics and not flip else None,
                )
            )
    if cache is not None and progress:
        tqdm.write(f"latent cache {cache.folder}: {cache.hits} reused, {cache.misses} encoded")
    return encoded


MIN_TUMOR_VOXELS = 27  # smaller components are fragments (a spicule's tip), as in calibration.tumor_samples


def whole_tumors(tumor: np.ndarray) -> list[np.ndarray]:
    """A bool mask per whole tumor: 26-connected components of at least MIN_TUMOR_VOXELS voxels."""
    components, count = ndimage.label(tumor > 0, structure=np.ones((3, 3, 3)))
    masks = (components == k for k in range(1, count + 1))
    return [inside for inside in masks if inside.sum() >= MIN_TUMOR_VOXELS]


def _necrosis_records(tumors: list[np.ndarray], core: np.ndarray, spacing_xyz) -> list[tuple[float, float]]:
    return [(equivalent_diameter_mm(int(inside.sum()), spacing_xyz[::-1]), float((core & inside).sum()) / inside.sum())
            for inside in tumors]


def whole_tumor_types(case: TrainingCase, image: np.ndarray, tumors: list[np.ndarray]) -> list[str]:
    """The BI-RADS curve type of every whole tumor (``whole_tumors``) in the original intensities;
    [] without 3 phases or an intensity range."""
    if image.shape[0] < 3 or case.intensity_range is None:
        return []
    low, high = case.intensity_range
    return [classify_curve(image[:, inside].astype(np.float64).mean(axis=1) * (high - low) + low) for inside in tumors]


def tumor_curve_classes(case: TrainingCase, image: np.ndarray, tumor: np.ndarray, components: np.ndarray,
                        count: int, compression: int) -> np.ndarray:
    """KINETIC_CLASSES index of every latent tumor component: the BI-RADS curve type of its voxels'
    mean signal in the original intensities (0 where it cannot be told: fewer than 3 phases, no
    intensity range, or no tumor voxel)."""
    from ..nets.denoiser import KINETIC_CLASSES  # monai: loaded only when a denoiser is trained

    classes = np.zeros(count, dtype=np.int64)
    if image.shape[0] < 3 or case.intensity_range is None:
        return classes
    low, high = case.intensity_range
    cells = latent_mask_to_voxels(torch.from_numpy(components)[None, None], compression, tumor.shape)[0, 0].numpy()
    for k in range(1, count + 1):
        voxels = (cells == k) & (tumor > 0)
        if voxels.any():
            curve = image[:, voxels].astype(np.float64).mean(1) * (high - low) + low
            classes[k - 1] = KINETIC_CLASSES.index(classify_curve(curve))
    return classes


def _latent_mask(tumor: np.ndarray, compression: int) -> np.ndarray:
    return mask_to_latent(torch.from_numpy(np.ascontiguousarray(tumor))[None, None], compression)[0, 0].numpy()


class TumorRoiSampler:
    """Latent ROIs of a fixed size around a random tumor of a random case: (latent, context, mask),
    each (B, ·, z, y, x); the ROI is shifted at random so the tumor is not always centered."""

    def __init__(self, cases: Sequence[LatentCase], latent_roi: Sequence[int], seed: int, rank: int = 0, jitter: float = 0.25):
        self.cases = [c for c in cases if len(c.tumor_centers)]
        if not self.cases:
            raise SynBTError("no case has a non-empty tumor label to train the denoiser on")
        self.roi, self.seed, self.rank, self.jitter = tuple(int(v) for v in latent_roi), seed, rank, jitter

    def sample(self, step: int, batch_size: int, stream: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(latents, contexts, masks, kinetic class of the tumor each ROI is centred on)."""
        rng = step_rng(self.seed, step, self.rank, stream)
        latents, contexts, masks, kinetics = [], [], [], []
        for _ in range(batch_size):
            case = self.cases[rng.integers(len(self.cases))]
            which = rng.integers(len(case.tumor_centers))
            center = case.tumor_centers[which]
            # the label of the tumor the ROI is centred on; others in the ROI (multifocal cases) go unlabelled
            kinetics.append(0 if case.tumor_kinetics is None else int(case.tumor_kinetics[which]))
            shift = [rng.integers(-int(n * self.jitter), int(n * self.jitter) + 1) for n in self.roi]
            start = []
            for c, s, n, dim in zip(center, shift, self.roi, case.grid):
                start.append(min(max(int(c) + int(s) - n // 2, 0), max(dim - n, 0)))
            window = case.windows[int(case.tumor_window[which])]
            local = [s - o for s, o in zip(start, window.origin)]
            if any(v < 0 or v + n > dim for v, n, dim in zip(local, self.roi, window.latent.shape[1:])):
                # only with windows encoded for a smaller ROI or jitter than this sampler's
                raise SynBTError(f"the ROI at latent cell {start} of {case.case_id} lies outside its encoded "
                                 f"window (origin {window.origin}, size {window.latent.shape[1:]})")
            latents.append(crop(window.latent, local, self.roi))
            contexts.append(crop(window.context, local, self.roi))
            masks.append(crop(window.mask, local, self.roi, mode="constant"))
        return (
            np.ascontiguousarray(np.stack(latents), dtype=np.float32),
            np.ascontiguousarray(np.stack(contexts), dtype=np.float32),
            np.ascontiguousarray(np.stack(masks), dtype=np.float32),
            np.asarray(kinetics, dtype=np.int64),
        )
