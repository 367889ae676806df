"""A prepared training store: every case decoded once, on the working grid, normalized, memory-mapped.

``synbt prepare`` writes, per case, ``cases/<id>/image.npy`` (C, Z, Y, X; float16 or float32, in the
units of preprocess.normalize), ``tumor.npy`` (uint8, where a label exists), ``centers.npy`` (body
voxels, patch-center candidates), ``tumor_voxels.npy``, ``synthetic_voxels.npy`` (only a `synbt export`
case with a synthetic-tumor mask: that mask's voxels, the synthetic share's positive centres) and
``case.json`` (grid, normalization, phase names, which files and acquisition times). A case folder is
written under a temporary name and renamed into place, so a present folder is a finished case (the done
marker) and an interrupted run resumes where it stopped. Cases that cannot be used are recorded in
``skipped/<id>.json`` with the reason. Training opens the arrays with ``np.load(mmap_mode="r")``:
patches are read from the page cache, not decoded from gzip NIfTI at every epoch.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datasets import CaseRef, apply_policy, phase_policy, read_dataset
from .errors import SynBTError

STORE_FILE = "store.json"
STORE_VERSION = 1
DTYPES = ("float16", "float32")
MAX_CENTERS = 200_000  # body voxels kept per case (the loaders' MAX_CENTER_CANDIDATES / MAX_CENTERS)
_TMP_PREFIX = ".tmp-"


def is_store(path: str | Path) -> bool:
    return (Path(path) / STORE_FILE).is_file()


def log(message: str) -> None:
    """One line on stderr (tqdm-safe), for skipped cases and counts."""
    try:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a requirement
        print(message, file=sys.stderr)


@dataclass
class PrepareReport:
    prepared: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _settings(policy, spacing, dtype) -> dict:
    policy = phase_policy(policy)
    return {"version": STORE_VERSION, "phase_policy": None if policy is None else policy.spec,
            "spacing": None if spacing is None else [float(v) for v in spacing], "dtype": dtype}


def _check_settings(out: Path, settings: dict) -> None:
    path = out / STORE_FILE
    if path.is_file():
        found = json.loads(path.read_text())
        for key in ("phase_policy", "spacing", "dtype"):
            if found.get(key) != settings[key]:
                raise SynBTError(f"store {out} was prepared with {key}={found.get(key)!r}, not {settings[key]!r}; "
                                 "pass the same settings to resume it, or a new --out")
    elif out.exists() and any(out.iterdir()):
        raise SynBTError(f"{out} is not empty and holds no {STORE_FILE}; pass an empty or new folder as --out")


def _working_grid(geometry, spacing):
    from .case import Geometry

    size = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(geometry.size, geometry.spacing, spacing))
    return Geometry(size=size, spacing=tuple(float(v) for v in spacing), origin=geometry.origin,
                    direction=geometry.direction)


def read_label(path, geometry) -> np.ndarray:
    """A tumor label as uint8 0/1 on ``geometry``; an all-background label on that grid is a tumor-free case."""
    from .io import read_image, read_mask

    values, label_geometry = read_image(path)
    if not values.any() and label_geometry.matches(geometry):
        return np.zeros(geometry.shape, np.uint8)
    return (read_mask(path, geometry) > 0).astype(np.uint8)


def build_case(ref: CaseRef, spacing=None, dtype: str = "float32") -> tuple[dict, dict]:
    """The arrays and the case.json of one case (read, resampled to ``spacing``, normalized)."""
    from .case import Case
    from .export import synthetic_mask_beside
    from .io import read_case, resample_to
    from .preprocess import body_mask, fit_normalization, normalize

    case = read_case(list(ref.phase_paths))
    tumor = read_label(ref.label_path, case.geometry) if ref.label_path is not None else None
    mask_file = synthetic_mask_beside(ref.label_path) if ref.label_path is not None else None
    synthetic = read_label(mask_file, case.geometry) if mask_file and mask_file.is_file() else None
    if spacing is not None:
        grid = _working_grid(case.geometry, spacing)
        if not grid.matches(case.geometry):
            native = case.geometry
            case = Case(resample_to(case.phases, native, grid), grid, list(case.phase_names))
            tumor = None if tumor is None else resample_to(tumor, native, grid, nearest=True).astype(np.uint8)
            if synthetic is not None:
                synthetic = resample_to(synthetic, native, grid, nearest=True).astype(np.uint8)
    norm = fit_normalization(case)
    body = np.argwhere(body_mask(case))
    centers = body[:: max(1, len(body) // MAX_CENTERS)] if len(body) else np.zeros((1, 3), np.int64)
    arrays = {"image": normalize(case.phases, norm).astype(dtype), "centers": centers}
    if tumor is not None:
        arrays["tumor"] = tumor
        arrays["tumor_voxels"] = np.argwhere(tumor > 0)
        if synthetic is not None:
            arrays["synthetic_voxels"] = np.argwhere((synthetic > 0) & (tumor > 0))
    geometry = case.geometry
    meta = {
        "case_id": ref.case_id, "phase_names": list(case.phase_names),
        "phase_files": [str(p) for p in ref.phase_paths],
        "phase_indices": None if ref.phase_indices is None else list(ref.phase_indices),
        "acquisition_times": None if ref.acquisition_times is None else list(ref.acquisition_times),
        "label_file": None if ref.label_path is None else str(ref.label_path),
        "synthetic_mask_file": None if synthetic is None else str(mask_file),
        "has_tumor": bool(tumor is not None and tumor.any()),
        "geometry": {"size": list(geometry.size), "spacing": list(geometry.spacing), "origin": list(geometry.origin),
                     "direction": list(geometry.direction)},
        "normalization": norm.to_dict(),
    }
    return arrays, meta


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, np.ascontiguousarray(array))
        handle.flush()
        os.fsync(handle.fileno())


def prepare_one(ref: CaseRef, out: str | Path, spacing=None, dtype: str = "float32") -> str | None:
    """Write one case into the store (atomically); the reason it cannot be used, or None."""
    out = Path(out)
    try:
        arrays, meta = build_case(ref, spacing, dtype)
    except (SynBTError, OSError, RuntimeError, ValueError) as exc:  # unreadable or unusable: recorded, not fatal
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    tmp = out / "cases" / f"{_TMP_PREFIX}{ref.case_id}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        _save_npy(tmp / f"{name}.npy", array)
    (tmp / "case.json").write_text(json.dumps(meta, indent=1) + "\n")
    os.rename(tmp, out / "cases" / ref.case_id)  # the done marker: a case folder is whole or absent
    return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def prepare_store(data: str | Path, out: str | Path, workers: int = 1, policy=None, spacing=None,
                  dtype: str = "float16", progress: bool = True, on_case=None) -> PrepareReport:
    """Prepare (or resume preparing) the store ``out`` from the data set ``data``.

    Cases already in the store, or recorded as skipped, are left alone; the rest are read by ``workers``
    processes. ``policy`` (datasets.PhasePolicy spec) picks the phases, ``spacing`` (x, y, z mm) the
    working grid (None: each case's own). ``on_case(case_id, reason)`` is called after each case
    (reason None when prepared) and may raise to stop; what was finished stays.
    """
    from tqdm.auto import tqdm

    if int(workers) < 1:
        raise SynBTError(f"workers must be at least 1, got {workers}")
    if dtype not in DTYPES:
        raise SynBTError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if spacing is not None and (len(spacing) != 3 or min(float(v) for v in spacing) <= 0):
        raise SynBTError(f"spacing must be three positive numbers (x y z mm), got {spacing!r}")
    out, settings = Path(out), _settings(policy, spacing, dtype)
    refs, unusable = apply_policy(read_dataset(data), policy)
    _check_settings(out, settings)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    (out / "skipped").mkdir(exist_ok=True)
    for stale in (out / "cases").glob(f"{_TMP_PREFIX}*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    _write_json(out / STORE_FILE, {**settings, "data": str(Path(data).resolve())})

    report = PrepareReport()

    def record(case_id: str, reason: str | None) -> None:
        if reason is None:
            report.prepared.append(case_id)
        else:
            _write_json(out / "skipped" / f"{case_id}.json", {"case_id": case_id, "reason": reason})
            report.skipped.append((case_id, reason))
            log(f"skipped case {case_id}: {reason}")
        if on_case is not None:
            on_case(case_id, reason)

    def done(case_id: str) -> bool:
        return (out / "cases" / case_id).is_dir() or (out / "skipped" / f"{case_id}.json").is_file()

    for case_id, reason in unusable:
        if not done(case_id):
            record(case_id, reason)
    todo = [ref for ref in refs if not done(ref.case_id)]
    report.reused = [ref.case_id for ref in refs if (out / "cases" / ref.case_id).is_dir()]
    bar = tqdm(total=len(todo), desc="preparing cases", disable=not progress)
    try:
        if workers <= 1:
            for ref in todo:
                record(ref.case_id, prepare_one(ref, out, spacing, dtype))
                bar.update()
        else:
            import multiprocessing

            # spawn: workers start clean (no inherited threads or torch state)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(prepare_one, ref, out, spacing, dtype): ref for ref in todo}
                from concurrent.futures import as_completed

                for future in as_completed(futures):
                    record(futures[future].case_id, future.result())
                    bar.update()
    finally:
        bar.close()
    return report


@dataclass
class StoredCase:
    """One prepared case, its arrays memory-mapped."""

    folder: Path
    meta: dict

    @property
    def case_id(self) -> str:
        return self.meta["case_id"]

    def array(self, name: str) -> np.ndarray | None:
        path = self.folder / f"{name}.npy"
        return np.load(path, mmap_mode="r") if path.is_file() else None

    @property
    def geometry(self):
        from .case import Geometry

        g = self.meta["geometry"]
        return Geometry(size=tuple(g["size"]), spacing=tuple(g["spacing"]), origin=tuple(g["origin"]),
                        direction=tuple(g["direction"]))


def open_store(path: str | Path, policy=None) -> tuple[dict, list[StoredCase]]:
    """The store's settings and its prepared cases (sorted by id); a ``policy`` must match the store's."""
    path = Path(path)
    if not is_store(path):
        raise SynBTError(f"{path} is not a prepared store (no {STORE_FILE}); run synbt prepare first")
    settings = json.loads((path / STORE_FILE).read_text())
    wanted = phase_policy(policy)
    if wanted is not None and wanted.spec != settings.get("phase_policy"):
        raise SynBTError(f"store {path} holds phases {settings.get('phase_policy')!r}, not {wanted.spec!r}; "
                         "prepare a store with that policy")
    cases = [StoredCase(folder, json.loads((folder / "case.json").read_text()))
             for folder in sorted((path / "cases").iterdir())
             if folder.is_dir() and not folder.name.startswith(_TMP_PREFIX)]
    settings["skipped"] = len(list((path / "skipped").glob("*.json"))) if (path / "skipped").is_dir() else 0
    return settings, cases
