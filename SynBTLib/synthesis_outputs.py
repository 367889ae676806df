"""What a synthesis run leaves in its output folder: the new phases, the tumor label, a preview
PNG and provenance.json (input checksums, method, seed, versions), so every result can be traced.

One writer per output folder, and never a partial result: the outputs are written into a private
staging folder next to the target and moved into place as a whole by renames, while a lock next
to the target refuses a second writer (see OutputFolder).

Reproducibility: the same inputs, seed, method and bundle give bit-identical output at the same
torch thread count (recorded in provenance.json as torch_threads); other thread counts can
change the last bits of a few voxels.
"""
from __future__ import annotations

import glob
import json
import os
import platform
import re
import shutil
import uuid
import weakref
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
from scipy import ndimage

from .case import Case, StoredFormat
from .errors import SynBTError
from .hashing import sha256_of

PREVIEW_NAME = "preview.png"
PROVENANCE_NAME = "provenance.json"
TUMOR_LABELS_NAME = "tumor_labels.nii.gz"

# Names of a synthesis result (replaced as a whole by --overwrite) and of SynBT's own temp files
# (io's atomic writes); anything else in an output folder is the user's and is kept.
_RESULT_FILE = re.compile(r"^(phase_\d+(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd)|tumor_labels\.nii\.gz|preview\.png|provenance\.json)$")
_SYNBT_TEMP = re.compile(r"^\.tmp-[0-9a-f]{8}-")


def _try_lock(handle) -> bool:
    """A non-blocking exclusive lock on an open file; the OS drops it when the process dies."""
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _release(lock_path: Path, handle, staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    try:
        lock_path.unlink()  # while still locked, so no other writer holds this very file
    except OSError:
        pass
    handle.close()


class OutputFolder:
    """The output folder of one synthesis run, written as a whole by one writer.

    On creation: the folder is checked (SynBTLib.io.check_output_dir: no input overwritten, not
    non-empty without overwrite) and locked (`.<name>.synbt-lock` next to it; a second writer is
    refused), and what a killed run left is repaired: its staging folder is removed, and a folder
    it had moved aside is put back. `staging` is a private folder next to the target (same file
    system); commit() moves it into place by renames: an existing folder is moved aside, the
    staging folder takes its name, the user's own files (anything that is not a result file or a
    SynBT temp file) move into the new folder, and the old result is deleted. The lock is released
    by commit(), close(), leaving a `with` block, or at the latest when the process ends.
    """

    def __init__(self, out: str | Path, overwrite: bool = False, inputs=()):
        from .io import check_output_dir

        self.path = check_output_dir(out, overwrite, inputs)
        parent, name = self.path.parent, self.path.name
        parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = parent / f".{name}.synbt-lock"
        self._handle = self._lock()
        self._repair()
        self.staging = parent / f".{name}.synbt-staging-{uuid.uuid4().hex[:8]}"
        self._finalizer = weakref.finalize(self, _release, self._lock_path, self._handle, self.staging)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _lock(self):
        for _ in range(5):
            handle = open(self._lock_path, "a+")
            if not _try_lock(handle):
                handle.close()
                raise SynBTError(
                    f"another synbt run is writing to {self.path}; wait for it to finish or choose another output folder"
                )
            try:  # the file we locked may have been unlinked by the writer that just finished
                if os.path.samestat(os.fstat(handle.fileno()), os.stat(self._lock_path)):
                    return handle
            except FileNotFoundError:
                pass
            handle.close()
        raise SynBTError(f"cannot lock {self._lock_path}: other synbt runs keep replacing it")

    def _leftovers(self, kind: str) -> list[Path]:
        return sorted(self.path.parent.glob(f".{glob.escape(self.path.name)}.synbt-{kind}-*"))

    def _repair(self) -> None:
        """Undo what a killed writer of this folder left (we hold the lock: no writer is alive)."""
        for staging in self._leftovers("staging"):
            shutil.rmtree(staging)
        for aside in self._leftovers("replaced"):
            if not self.path.exists():
                os.rename(aside, self.path)  # killed between the two renames: the old result stands
            else:
                self._move_user_files(aside)
                shutil.rmtree(aside)

    def _move_user_files(self, old: Path) -> None:
        for entry in old.iterdir():
            is_result = entry.is_file() and (_RESULT_FILE.match(entry.name) or _SYNBT_TEMP.match(entry.name))
            if not is_result and not (self.path / entry.name).exists():
                os.rename(entry, self.path / entry.name)

    def commit(self) -> Path:
        """Move the staging folder into place as the output folder; returns its path."""
        if not self._finalizer.alive:
            raise SynBTError(f"output folder {self.path} is already committed or closed")
        aside = None
        if self.path.exists():
            aside = self.path.parent / f".{self.path.name}.synbt-replaced-{uuid.uuid4().hex[:8]}"
            os.rename(self.path, aside)
        os.rename(self.staging, self.path)
        if aside is not None:
            self._move_user_files(aside)
            shutil.rmtree(aside)
        self.close()
        return self.path

    def close(self) -> None:
        """Give up: remove the staging folder (if not committed) and release the lock."""
        self._finalizer()


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("synbt", "torch", "monai", "numpy", "SimpleITK"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _torch_threads() -> int | None:
    import sys

    torch = sys.modules.get("torch")  # not imported by the handcrafted method: then it did not compute
    return torch.get_num_threads() if torch is not None else None


def mask_centre_index(mask: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) voxel nearest to the mask's centre of mass (measured on the mask's box: the whole
    512x512x160 grid took about 1 s per call)."""
    box = ndimage.find_objects((np.asarray(mask) > 0).view(np.uint8))[0]
    centre = ndimage.center_of_mass(np.asarray(mask)[box] > 0)
    return tuple(int(round(v + s.start)) for v, s in zip(centre, box))


def _view_box(mask: np.ndarray, spacing_xyz, min_mm: float = 60.0) -> tuple[slice, slice]:
    """(y, x) slices of a square-ish window around the mask: 3x its extent, at least min_mm wide."""
    extent = ndimage.find_objects((np.asarray(mask) > 0).view(np.uint8))[0][1:]
    box = []
    for found, step, size in ((extent[0], spacing_xyz[1], mask.shape[1]), (extent[1], spacing_xyz[0], mask.shape[2])):
        low, high = found.start, found.stop - 1
        centre = (low + high) // 2
        half = int(np.ceil(max(min_mm / step, 3 * (high - low + 1)) / 2))
        box.append(slice(max(centre - half, 0), min(centre + half + 1, size)))
    return tuple(box)


def write_preview(path: str | Path, result: Case, mask: np.ndarray, original: Case | None = None) -> Path:
    """Axial slice through the mask centre, around the tumor: every phase and the first-post minus
    pre subtraction, before (when `original` is given) and after, with the mask outline. Each row
    shares one intensity window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cz = mask_centre_index(mask)[0]
    view = (cz, *_view_box(mask > 0, result.geometry.spacing))
    cases = [("before", original), ("after", result)] if original is not None else [("after", result)]
    rows = [(name, lambda c, k=k: c.phases[k][view]) for k, name in enumerate(result.phase_names)]
    rows.append((f"{result.phase_names[1]} - {result.phase_names[0]}", lambda c: c.phases[1][view] - c.phases[0][view]))
    sx, sy, _ = result.geometry.spacing
    fig, axes = plt.subplots(len(rows), len(cases), figsize=(3.2 * len(cases), 3.0 * len(rows)), squeeze=False)
    for r, (row_name, slice_of) in enumerate(rows):
        images = [slice_of(case) for _, case in cases]
        low, high = np.percentile(np.concatenate([i.ravel() for i in images]), [0.5, 99.5])
        for c, ((case_name, _), image) in enumerate(zip(cases, images)):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), aspect=sy / sx)
            ax.contour(mask[view] > 0, levels=[0.5], colors="tab:red", linewidths=0.6)
            ax.set_title(f"{row_name} ({case_name})", fontsize=8)
            ax.set_axis_off()
    fig.suptitle(f"axial slice {cz} through the tumor centre", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    temp = _temp_name(path)
    try:
        fig.savefig(temp, dpi=100, format="png")
        os.replace(temp, path)
    finally:
        plt.close(fig)
        temp.unlink(missing_ok=True)
    return path


def _temp_name(path: Path) -> Path:
    """SynBT's temp-file naming (as SynBTLib.io's atomic writes): .tmp-<8 hex>-<name>."""
    return path.parent / f".tmp-{uuid.uuid4().hex[:8]}-{path.name}"


def write_synthesis_outputs(
    out_dir: str | Path | OutputFolder,
    result_case: Case,
    mask: np.ndarray,
    input_paths,
    method: str,
    seed: int,
    extra: dict | None = None,
    original: Case | None = None,
    existing: np.ndarray | None = None,
    stored: StoredFormat | None = None,
) -> list[Path]:
    """Write phase_<k>.nii.gz, tumor_labels.nii.gz, preview.png and provenance.json into out_dir.

    An OutputFolder is filled through its staging folder and committed as a whole (a failure
    leaves the target as it was); a plain path is written into file by file.

    input_paths: the files (or folders) the case and mask came from, checksummed into provenance.
    extra: JSON-serializable details (steps, placement, ...) recorded in provenance.json.
    original: the input case, shown as "before" in the preview. Returns the written paths.
    existing: the tumors the case already had; the label keeps them as EXISTING_TUMOR_LABEL (the new one is 1).
    stored: the file and voxel type of the phases (case.StoredFormat: the input's own, so a .nii int16
    case gives .nii int16 phases); default .nii.gz float32.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .io import submit_case, write_label

    mask = np.asarray(mask)
    if mask.shape != result_case.shape:
        raise SynBTError(f"mask of shape {mask.shape} does not match the result grid {result_case.shape}")
    if not mask.any():
        raise SynBTError("the tumor mask is empty")
    if isinstance(out_dir, OutputFolder):
        try:
            written = write_synthesis_outputs(out_dir.staging, result_case, mask, input_paths, method, seed, extra,
                                              original, existing, stored)
        except BaseException:
            out_dir.close()
            raise
        final = out_dir.commit()
        return [final / p.name for p in written]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # an earlier result in this folder (--overwrite) must not leave phases the new one does not have
    for stale in out_dir.glob("phase_*"):
        if stale.is_file() and _RESULT_FILE.match(stale.name):
            stale.unlink()
    # The phases compress in worker threads (zlib and ITK release the GIL) while this thread writes
    # the label and draws the preview; the inputs' checksums are queued behind the phases.
    with ThreadPoolExecutor(max_workers=max(1, min(result_case.num_phases, os.cpu_count() or 1))) as pool:
        phases = submit_case(pool, result_case, out_dir, stored)
        checksums = [pool.submit(sha256_of, p) for p in input_paths]
        label = (mask > 0).astype(np.uint8)
        if existing is not None:
            from .labels import EXISTING_TUMOR_LABEL

            label[(np.asarray(existing) > 0) & (label == 0)] = EXISTING_TUMOR_LABEL
        label_path = write_label(label, result_case.geometry, out_dir / TUMOR_LABELS_NAME)
        preview_path = write_preview(out_dir / PREVIEW_NAME, result_case, mask, original)
        written = [future.result() for future in phases] + [label_path, preview_path]
        sums = [future.result() for future in checksums]

    extra = dict(extra or {})
    spacing = np.prod(result_case.geometry.spacing)
    centre_zyx = mask_centre_index(mask)
    provenance = {
        "method": method,
        "seed": int(seed),
        "steps": extra.pop("steps", None),
        "inputs": [{"path": str(Path(p).resolve()), "sha256": digest} for p, digest in zip(input_paths, sums)],
        "outputs": [p.name for p in written] + [PROVENANCE_NAME],
        "phase_names": list(result_case.phase_names),
        "grid": result_case.geometry.describe(),
        "tumor": {
            "voxels": int(np.count_nonzero(mask)),
            "volume_mm3": round(float(np.count_nonzero(mask) * spacing), 3),
            "centre_mm": [round(float(v), 3) for v in result_case.geometry.index_to_physical(np.array(centre_zyx[::-1], float))],
        },
        "versions": _versions(),
        # the same inputs, seed and bundle give identical output only at the same torch thread count:
        # reductions are split per thread (measured: 6 voxels differ by up to 1.2e-4 between 1 and 2)
        "torch_threads": _torch_threads(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "details": extra,
    }
    path = out_dir / PROVENANCE_NAME
    temp = _temp_name(path)
    try:
        temp.write_text(json.dumps(provenance, indent=2, default=_jsonable))
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    written.append(path)
    return written


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
