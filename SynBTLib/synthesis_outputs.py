"""What a synthesis run leaves in its output folder: the new phases, the tumor label, a preview
PNG and provenance.json (input checksums, method, seed, versions), so every result can be traced."""
from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
from scipy import ndimage

from .case import Case
from .errors import SynBTError

PREVIEW_NAME = "preview.png"
PROVENANCE_NAME = "provenance.json"
TUMOR_LABELS_NAME = "tumor_labels.nii.gz"


def sha256_of(path: str | Path) -> str:
    """sha256 of a file, or of every file in a folder (sorted relative paths and contents)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("synbt", "torch", "monai", "numpy", "SimpleITK"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def mask_centre_index(mask: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) voxel nearest to the mask's centre of mass."""
    return tuple(int(round(v)) for v in ndimage.center_of_mass(mask > 0))


def _view_box(mask: np.ndarray, spacing_xyz, min_mm: float = 60.0) -> tuple[slice, slice]:
    """(y, x) slices of a square-ish window around the mask: 3x its extent, at least min_mm wide."""
    _, ys, xs = np.nonzero(mask)
    box = []
    for values, step, size in ((ys, spacing_xyz[1], mask.shape[1]), (xs, spacing_xyz[0], mask.shape[2])):
        centre = (int(values.min()) + int(values.max())) // 2
        half = int(np.ceil(max(min_mm / step, 3 * (values.max() - values.min() + 1)) / 2))
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_synthesis_outputs(
    out_dir: str | Path,
    result_case: Case,
    mask: np.ndarray,
    input_paths,
    method: str,
    seed: int,
    extra: dict | None = None,
    original: Case | None = None,
    existing: np.ndarray | None = None,
) -> list[Path]:
    """Write phase_<k>.nii.gz, tumor_labels.nii.gz, preview.png and provenance.json into out_dir.

    input_paths: the files (or folders) the case and mask came from, checksummed into provenance.
    extra: JSON-serializable details (steps, placement, ...) recorded in provenance.json.
    original: the input case, shown as "before" in the preview. Returns the written paths.
    existing: the tumors the case already had; the label keeps them as EXISTING_TUMOR_LABEL (the new one is 1).
    """
    from .io import write_case, write_label

    mask = np.asarray(mask)
    if mask.shape != result_case.shape:
        raise SynBTError(f"mask of shape {mask.shape} does not match the result grid {result_case.shape}")
    if not mask.any():
        raise SynBTError("the tumor mask is empty")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # an earlier result in this folder (--overwrite) must not leave phases the new one does not have
    for stale in out_dir.glob("phase_*.nii.gz"):
        stale.unlink()
    written = write_case(result_case, out_dir)
    label = (mask > 0).astype(np.uint8)
    if existing is not None:
        from .labels import EXISTING_TUMOR_LABEL

        label[(np.asarray(existing) > 0) & (label == 0)] = EXISTING_TUMOR_LABEL
    written.append(write_label(label, result_case.geometry, out_dir / TUMOR_LABELS_NAME))
    written.append(write_preview(out_dir / PREVIEW_NAME, result_case, mask, original))

    extra = dict(extra or {})
    spacing = np.prod(result_case.geometry.spacing)
    centre_zyx = mask_centre_index(mask)
    provenance = {
        "method": method,
        "seed": int(seed),
        "steps": extra.pop("steps", None),
        "inputs": [{"path": str(Path(p).resolve()), "sha256": sha256_of(p)} for p in input_paths],
        "outputs": [p.name for p in written] + [PROVENANCE_NAME],
        "phase_names": list(result_case.phase_names),
        "grid": result_case.geometry.describe(),
        "tumor": {
            "voxels": int(np.count_nonzero(mask)),
            "volume_mm3": round(float(np.count_nonzero(mask) * spacing), 3),
            "centre_mm": [round(float(v), 3) for v in result_case.geometry.index_to_physical(np.array(centre_zyx[::-1], float))],
        },
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "details": extra,
    }
    path = out_dir / PROVENANCE_NAME
    path.write_text(json.dumps(provenance, indent=2, default=_jsonable))
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
