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
class LatentCase:
    """A case encoded once for diffusion training (per flip variant): latents (L, z, y, x), already
    multiplied by the latent scale, and the mask condition (M, z, y, x) uint8."""

    case_id: str
    latent: np.ndarray
    context: np.ndarray
    mask: np.ndarray
    tumor_centers: np.ndarray  # (N, 3) latent-grid centers of the tumor components
    tumor_kinetics: np.ndarray | None = None  # (N,) KINETIC_CLASSES index of each component (0: unknown)
    # (equivalent diameter mm, necrotic core's volume fraction or 0) of each voxel-level tumor
    # component, measured with necrosis conditioning (on the unflipped variant only)
    tumor_necrosis: list[tuple[float, float]] | None = None
    # curve type of each whole tumor (26-connected, >= MIN_TUMOR_VOXELS) on the unflipped variant: what
    # the pipeline's draw follows (the labels above are per latent component, fragments and flips included)
    whole_tumor_types: list[str] | None = None


def pad_to_multiple(array: np.ndarray, multiple: int, minimum: Sequence[int], mode: str) -> np.ndarray:
    """Pad the trailing (Z, Y, X) axes at their end to a multiple of ``multiple`` and at least ``minimum``."""
    pad = [(0, 0)] * (array.ndim - 3)
    for dim, low in zip(array.shape[-3:], minimum):
        target = max(-(-dim // multiple) * multiple, int(low))
        pad.append((0, target - dim))
    return np.pad(array, pad, mode=mode) if any(after for _, after in pad) else array


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
) -> list[LatentCase]:
    """Encode every case and its tumor-erased copy once (and their x-flipped versions), for ROI sampling.

    The latent mask and the erased region are the tumor grown by ``mask_dilation_cells`` latent
    cells (conditioning.generation_region), as the pipeline does for a bundle trained so; with
    ``mask_encoding="voxels"`` the mask condition also holds the tumor's voxel outline
    (conditioning.denoiser_condition). Masks are kept as uint8. With ``cache_dir`` every latent is
    looked up in / added to a latent_cache.LatentCache there (keyed by the encoder and the voxels).
    With ``kinetics`` every tumor component gets its curve type (tumor_curve_classes); with
    ``necrosis`` the mask condition ends with each tumor's necrotic core as measured on its image
    (necrosis.necrotic_core), and every tumor's size and core fraction are kept."""

    compression = 2 ** (len(autoencoder.config.channels) - 1)
    cache = None
    if cache_dir is not None:
        cache = LatentCache(cache_dir, autoencoder, latent_scale)

    def encode(image_t):
        def run():
            return (autoencoder.encode_volume(image_t) * latent_scale)[0].float().cpu().numpy()
        return run() if cache is None else cache.latent(image_t[0].cpu().numpy(), run)

    variants = [(c, flip) for c in cases for flip in ((False, True) if flip_x else (False,))]
    encoded = []
    with torch.no_grad():
        for case, flip in tqdm(variants, desc="encoding cases", disable=not progress):
            # float32 in memory: a store may hold float16 (memory-mapped)
            image = pad_to_multiple(np.asarray(case.image, np.float32), compression, roi_size, "edge")
            tumor = pad_to_multiple(np.array(case.tumor), compression, roi_size, "constant")
            if flip:
                image, tumor = image[..., ::-1], tumor[..., ::-1]
            image_t = torch.from_numpy(np.ascontiguousarray(image)).to(device)[None]
            tumor_t = torch.from_numpy(np.ascontiguousarray(tumor)).to(device)[None, None]
            tumors = whole_tumors(tumor) if (necrosis or kinetics) and not flip else []
            core = necrotic_core(image, tumor) if necrosis else None
            core_t = None if core is None else torch.from_numpy(core.astype(np.uint8)).to(device)[None, None]
            generated, erased = denoiser_condition(tumor_t, compression, mask_dilation_cells, mask_encoding, core_t)
            erased_t = erase_mask(image_t, erased[0])
            latent, context = encode(image_t), encode(erased_t)
            latent_mask = generated[0].cpu().numpy()
            tumor_cells = _latent_mask(tumor, compression)  # ROIs are centred on tumors, not on their rims
            components, count = ndimage.label(tumor_cells)
            centers = np.asarray(ndimage.center_of_mass(tumor_cells, components, range(1, count + 1)))
            curve_types = tumor_curve_classes(case, image, tumor, components, count, compression) if kinetics else None
            encoded.append(
                LatentCase(
                    case_id=case.case_id + (" (flipped)" if flip else ""),
                    latent=latent,
                    context=context,
                    mask=latent_mask.astype(np.uint8),
                    tumor_centers=np.round(centers).astype(int).reshape(-1, 3),
                    tumor_kinetics=curve_types,
                    tumor_necrosis=_necrosis_records(tumors, core, case.spacing) if necrosis and not flip else None,
                    whole_tumor_types=whole_tumor_types(case, image, tumors) if kinetics and not flip else None,
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
            for c, s, n, dim in zip(center, shift, self.roi, case.latent.shape[1:]):
                start.append(min(max(int(c) + int(s) - n // 2, 0), max(dim - n, 0)))
            latents.append(crop(case.latent, start, self.roi))
            contexts.append(crop(case.context, start, self.roi))
            masks.append(crop(case.mask, start, self.roi, mode="constant"))
        return (
            np.ascontiguousarray(np.stack(latents), dtype=np.float32),
            np.ascontiguousarray(np.stack(contexts), dtype=np.float32),
            np.ascontiguousarray(np.stack(masks), dtype=np.float32),
            np.asarray(kinetics, dtype=np.int64),
        )
