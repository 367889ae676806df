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
    acquisition_times: tuple[float, ...] | None = None  # seconds, one per phase (MAMA-MIA's clinical table)
    phase_indices: tuple[int, ...] | None = None  # which of the case's files these phases are (None: all, in order)


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
    times = read_clinical_times(root)
    refs = []
    for case_dir in sorted(p for p in (root / "images").iterdir() if p.is_dir()):
        phases = find_phase_files(case_dir)
        if not phases:
            raise SynBTError(f"MAMA-MIA case folder {case_dir} holds no <id>_000K phase files")
        case_times = times.get(case_dir.name) or times.get(case_dir.name.lower())
        if case_times is not None and len(case_times) != len(phases):
            case_times = None  # the table does not describe these files; file order still holds
        refs.append(CaseRef(case_dir.name, tuple(phases), _find_label(root / "segmentations" / "expert", case_dir.name),
                            case_times))
    return refs


# MAMA-MIA's clinical table (clinical_and_imaging_info.xlsx; a CSV export of it is read without openpyxl)
CLINICAL_TABLES = ("clinical_and_imaging_info.csv", "clinical_and_imaging_info.xlsx")
_ID_COLUMNS = ("patient_id", "case_id", "id")
_TIMES_COLUMN = "acquisition_times"


def parse_acquisition_times(value) -> tuple[float, ...] | None:
    """'[0, 90.5, 181]' / '0;90.5;181' / '0 90.5 181' -> (0.0, 90.5, 181.0); None when empty or not numbers."""
    if value is None:
        return None
    parts = [p for p in re.split(r"[\s,;\[\]]+", str(value)) if p]
    try:
        times = tuple(float(p) for p in parts)
    except ValueError:
        return None
    return times or None


def _table_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".csv":
        import csv

        with path.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    try:
        import openpyxl
    except ImportError as exc:
        raise SynBTError(f"reading {path.name} needs openpyxl (pip install openpyxl), or save it as "
                         f"{path.with_suffix('.csv').name} beside it") from exc
    sheet = openpyxl.load_workbook(path, read_only=True, data_only=True).active
    rows = sheet.iter_rows(values_only=True)
    header = [str(h).strip() if h is not None else "" for h in next(rows, ())]
    return [dict(zip(header, row)) for row in rows]


def read_clinical_times(root: str | Path) -> dict[str, tuple[float, ...]]:
    """Acquisition times (s) per case id from the data set's clinical table; {} when there is none or it has
    no acquisition_times column."""
    root = Path(root)
    path = next((root / name for name in CLINICAL_TABLES if (root / name).is_file()), None)
    if path is None:
        return {}
    rows = _table_rows(path)
    columns = {key.strip().lower(): key for key in (rows[0] if rows else {}) if key}
    id_key = next((columns[c] for c in _ID_COLUMNS if c in columns), None)
    if id_key is None or _TIMES_COLUMN not in columns:
        return {}
    times = {}
    for row in rows:
        parsed = parse_acquisition_times(row.get(columns[_TIMES_COLUMN]))
        if row.get(id_key) and parsed:
            times[str(row[id_key]).strip()] = parsed
    return times


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


# ---------------------------------------------------------------- which phases a bundle models

_CLOSEST = re.compile(r"^closest:(\d+(?:\.\d+)?)s?$")


@dataclass(frozen=True)
class PhasePolicy:
    """Which phases of a case a bundle models, as a comma-separated spec.

    Tokens: a file index (0, 1, 3, ...), ``pre`` (the pre-contrast, index 0), ``first`` (the first
    post-contrast, index 1), ``last`` (the last phase), or ``closest:150s`` (the post-contrast phase after
    those already picked whose acquisition time is closest to 150 s after the pre-contrast; needs the
    case's acquisition times, from MAMA-MIA's clinical table). The picked indices must increase, so
    the phases keep their order in time. Example: ``pre,first,closest:300s``.
    """

    spec: str

    def __post_init__(self):
        tokens = self.tokens
        if len(tokens) < 2:
            raise SynBTError(f"phase policy {self.spec!r} picks {len(tokens)} phase(s); a DCE-MRI case needs at least two")
        for token in tokens:
            if not (token.isdigit() or token in ("pre", "first", "last") or _CLOSEST.match(token)):
                raise SynBTError(f"phase policy {self.spec!r}: unknown token {token!r} "
                                 "(use indices, pre, first, last or closest:<seconds>s)")

    @property
    def tokens(self) -> list[str]:
        return [t.strip().lower() for t in str(self.spec).split(",") if t.strip()]

    @property
    def count(self) -> int:
        return len(self.tokens)

    def select(self, count: int, times: tuple[float, ...] | None = None) -> tuple[int, ...]:
        """The phase indices to keep of a case with ``count`` phases; SynBTError saying why it cannot be used."""
        picked: list[int] = []
        for token in self.tokens:
            if token.isdigit():
                index = int(token)
            elif token == "pre":
                index = 0
            elif token == "first":
                index = 1
            elif token == "last":
                index = count - 1
            else:
                target = float(_CLOSEST.match(token).group(1))
                if times is None or len(times) != count:
                    raise SynBTError(f"{token} needs the case's acquisition times (none in the clinical table)")
                after = range((picked[-1] + 1) if picked else 1, count)
                if not after:
                    raise SynBTError(f"no post-contrast phase left for {token} ({count} phases)")
                index = min(after, key=lambda k: abs(times[k] - times[0] - target))
            if index >= count:
                raise SynBTError(f"too few phases: {count}, the policy {self.spec!r} needs index {index}")
            if picked and index <= picked[-1]:
                raise SynBTError(f"policy {self.spec!r} picks phases out of time order {picked + [index]}")
            picked.append(index)
        return tuple(picked)


def phase_policy(spec: "str | PhasePolicy | None") -> PhasePolicy | None:
    """A PhasePolicy from a spec (None: every phase in file order)."""
    if spec is None or isinstance(spec, PhasePolicy):
        return spec
    return PhasePolicy(str(spec))


def apply_policy(refs: list[CaseRef], policy: "str | PhasePolicy | None") -> tuple[list[CaseRef], list[tuple[str, str]]]:
    """Each case reduced to the phases ``policy`` picks, and the (case id, reason) of those it cannot be applied to."""
    policy = phase_policy(policy)
    if policy is None:
        return list(refs), []
    kept, skipped = [], []
    for ref in refs:
        try:
            picked = policy.select(len(ref.phase_paths), ref.acquisition_times)
        except SynBTError as exc:
            skipped.append((ref.case_id, str(exc)))
            continue
        times = None if ref.acquisition_times is None else tuple(ref.acquisition_times[k] for k in picked)
        kept.append(CaseRef(ref.case_id, tuple(ref.phase_paths[k] for k in picked), ref.label_path, times, picked))
    return kept, skipped
