"""Find cases on disk: SynBT case folders, nnU-Net v2 raw data sets and MAMA-MIA.

Only file names are looked at here; reading the images is SynBTLib.io's job.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import SynBTError

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_EXT = "|".join(re.escape(e) for e in IMAGE_EXTENSIONS)
# SynBT naming: phase_0.nii.gz, phase_1.nii.gz, ... (a phase_K folder may hold a DICOM series)
_SYNBT_PHASE = re.compile(rf"^phase_(\d+)({_EXT})?$", re.IGNORECASE)
# nnU-Net / MAMA-MIA naming: <case>_0000.nii.gz, <case>_0001.nii.gz, ...
_CHANNEL_PHASE = re.compile(rf"^(.+)_(\d{{4}})({_EXT})$", re.IGNORECASE)
TUMOR_LABEL_FILE = "tumor_labels.nii.gz"


@dataclass(frozen=True)
class CaseRef:
    """One case of a data set: its id, its phase files in phase order, and its tumor label file (or None)."""

    case_id: str
    phase_paths: tuple[Path, ...]
    label_path: Path | None = None


def strip_image_extension(name: str) -> str:
    """'duke_001_0000.nii.gz' -> 'duke_001_0000'."""
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _check_contiguous(case_id: str, indices: list[int], expected: int | None = None) -> None:
    count = max(expected or 0, max(indices) + 1)
    missing = sorted(set(range(count)) - set(indices))
    if missing:
        raise SynBTError(f"case {case_id} is missing phase(s) {', '.join(str(k) for k in missing)} (found {sorted(indices)})")
    if count < 2:
        raise SynBTError(f"case {case_id} has only one phase; a DCE-MRI case needs at least two")


def find_phase_files(folder: str | Path) -> list[Path]:
    """The phase files of one case folder in phase order: phase_K files (or phase_K DICOM folders), or <case>_000K files.

    Returns an empty list when the folder holds neither; raises SynBTError when phases are missing or the
    <case>_000K files belong to more than one case.
    """
    folder = Path(folder)
    synbt: dict[int, Path] = {}
    channels: dict[str, dict[int, Path]] = {}
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if match := _SYNBT_PHASE.match(entry.name):
            if entry.is_dir() if match.group(2) is None else entry.is_file():
                synbt[int(match.group(1))] = entry
        elif entry.is_file() and (match := _CHANNEL_PHASE.match(entry.name)):
            channels.setdefault(match.group(1), {})[int(match.group(2))] = entry
    if synbt:
        _check_contiguous(str(folder), list(synbt))
        return [synbt[k] for k in sorted(synbt)]
    if len(channels) > 1:
        raise SynBTError(f"folder {folder} holds phase files of several cases ({', '.join(sorted(channels))}); pass one case")
    if channels:
        (case_id, phases), = channels.items()
        _check_contiguous(f"{case_id} in {folder}", list(phases))
        return [phases[k] for k in sorted(phases)]
    return []


def _find_label(folder: Path, case_id: str) -> Path | None:
    if not folder.is_dir():
        return None
    for ext in IMAGE_EXTENSIONS:
        for name in (case_id + ext, case_id.lower() + ext):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_nnunet(root: Path) -> list[CaseRef]:
    expected = None
    if (root / "dataset.json").is_file():
        try:
            channel_names = json.loads((root / "dataset.json").read_text()).get("channel_names")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SynBTError(f"cannot parse {root / 'dataset.json'}: {exc}") from exc
        expected = len(channel_names) if channel_names else None
    refs = []
    for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        if not (root / images).is_dir():
            continue
        cases: dict[str, dict[int, Path]] = {}
        for entry in (root / images).iterdir():
            if entry.is_file() and (match := _CHANNEL_PHASE.match(entry.name)):
                cases.setdefault(match.group(1), {})[int(match.group(2))] = entry
        count = expected or max((max(p) + 1 for p in cases.values()), default=0)
        for case_id, phases in sorted(cases.items()):
            _check_contiguous(f"{case_id} ({images})", list(phases), count)
            paths = tuple(phases[k] for k in sorted(phases))
            refs.append(CaseRef(case_id, paths, _find_label(root / labels, case_id)))
    return refs


def _read_mama_mia(root: Path) -> list[CaseRef]:
    refs = []
    for case_dir in sorted(p for p in (root / "images").iterdir() if p.is_dir()):
        phases = find_phase_files(case_dir)
        if not phases:
            raise SynBTError(f"MAMA-MIA case folder {case_dir} holds no <id>_000K phase files")
        refs.append(CaseRef(case_dir.name, tuple(phases), _find_label(root / "segmentations" / "expert", case_dir.name)))
    return refs


def _read_case_folders(root: Path) -> list[CaseRef]:
    refs = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        phases = find_phase_files(case_dir)
        if phases:
            label = case_dir / TUMOR_LABEL_FILE
            refs.append(CaseRef(case_dir.name, tuple(phases), label if label.is_file() else None))
    return refs


def detect_layout(root: str | Path) -> str:
    """'nnunet', 'mama-mia', 'monai' (a `synbt export --format monai` folder) or 'synbt'; SynBTError when none fits."""
    root = Path(root)
    if not root.is_dir():
        raise SynBTError(f"data set folder not found: {root}")
    if (root / "datalist.json").is_file() and (root / "cases").is_dir():
        return "monai"
    if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir():
        return "nnunet"
    if (root / "images").is_dir() and (root / "segmentations").is_dir():
        return "mama-mia"
    if _read_case_folders(root):
        return "synbt"
    if find_phase_files(root):
        raise SynBTError(f"{root} is a single case folder, not a data set; pass the folder that holds case folders")
    raise SynBTError(
        f"{root} is not a recognised data set layout: expected case folders with phase_K files, "
        "an nnU-Net v2 raw folder (imagesTr/CASE_000K.nii.gz), or MAMA-MIA (images/<ID>/, segmentations/expert/)"
    )


def read_dataset(root: str | Path) -> list[CaseRef]:
    """All cases of a data set folder (layout detected), sorted by case id, phases in phase order."""
    root = Path(root)
    layout = detect_layout(root)
    readers = {"nnunet": _read_nnunet, "mama-mia": _read_mama_mia, "synbt": _read_case_folders,
               "monai": lambda folder: _read_case_folders(folder / "cases")}
    refs = readers[layout](root)
    if not refs:
        raise SynBTError(f"no cases found in {layout} data set {root}")
    return sorted(refs, key=lambda ref: ref.case_id)
