"""Export synthetic data sets for segmentation training: nnU-Net v2 raw layout or a MONAI datalist.

Synthetic case j (0..N-1) is made from source case j mod len(sources): new tumors are placed in
its breast tissue (away from any tumor it already has) and synthesized one after the other. All
random choices derive from (seed, j, tumor index), so a case is the same whichever shard or
rerun makes it.

Besides its label (the source's lesions and the new tumors), a case gets a 0/1 mask of only the
tumors synthesized into it: cases/<name>/synthetic_tumors.nii.gz (monai), synthetic_masksTr/<name>.nii.gz
(nnunet; outside imagesTr/labelsTr, which nnU-Net reads). Training centres the synthetic share's
positive patches on it (training/segmentation.py). An export begun before these masks existed is
completed without them, so one export folder is either all with masks or all without.

Every case is written atomically: its files go to a temporary folder inside the output, are
moved into place, and its provenance file is moved in LAST. A case is done exactly when its
provenance file exists; a rerun of the same command skips done cases, removes what a killed
run left of unfinished ones, and completes the rest. The data set index (dataset.json or
datalist.json) is written by a run without --shard, or by `merge` once every shard has run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .case import Case
from .errors import SynBTError
from .kinetics import CURVE_TYPES, tumor_curve_type
from .synthesizers import check_request

KINETICS_CHOICES = (*CURVE_TYPES, "any", "source")

FORMATS = ("nnunet", "monai")
PRECISIONS = ("float32", "bfloat16")  # as pipeline.PRECISIONS (not imported: the handcrafted export needs no torch)
SETTINGS_FILE = "export.json"
PROVENANCE_DIR = "provenance"
SYNTHETIC_MASK_FILE = "synthetic_tumors.nii.gz"  # beside tumor_labels.nii.gz in a case folder
SYNTHETIC_MASK_DIR = "synthetic_masksTr"  # nnU-Net layout: beside labelsTr
PLACEMENT_TRIES = 3  # draws of (size, kind, place) before a tumor is declared not to fit
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


class InjectedFault(RuntimeError):
    """Raised by the per-case writer when a test asks it to fail part-way (fail_after_files)."""


@dataclass(frozen=True)
class ExportSettings:
    """What defines an export; a rerun or another shard into the same folder must use the same settings."""

    num_cases: int
    format: str = "nnunet"
    method: str = "handcrafted"  # "diffusion", "handcrafted" or "auto" (diffusion when a bundle exists)
    tumors_per_case: int = 1
    size_mm: tuple[float, float] = (10.0, 30.0)
    seed: int = 0
    bundle: str | None = None
    steps: int | None = None
    dataset_id: int = 501
    dataset_name: str = "SynBT"
    # curve type of every synthetic tumor, for a diffusion bundle trained with curve types: None draws it by
    # the seed (as often as in the bundle's training data), "source" takes the source case's own tumor's
    kinetics: str | None = None
    # whether every synthetic tumor gets a necrotic core (a bundle trained with cores): None draws it by the seed
    necrosis: bool | None = None
    # the networks' precision (diffusion method), as `synbt synthesize --precision`: bfloat16 changes the voxels
    # slightly, so it is part of what defines an export; the device is not (recorded per case)
    precision: str = "float32"

    def __post_init__(self):
        from .shapes import MAX_DIAMETER_MM, MIN_DIAMETER_MM

        object.__setattr__(self, "size_mm", tuple(float(v) for v in self.size_mm))
        if self.num_cases < 1:
            raise SynBTError(f"--num-cases must be at least 1, got {self.num_cases}")
        if self.format not in FORMATS:
            raise SynBTError(f"unknown export format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.method not in ("auto", "diffusion", "handcrafted"):
            raise SynBTError(f"unknown method {self.method!r}; choose auto, diffusion or handcrafted")
        if self.tumors_per_case < 1:
            raise SynBTError(f"--tumors-per-case must be at least 1, got {self.tumors_per_case}")
        low, high = self.size_mm
        if not MIN_DIAMETER_MM <= low <= high <= MAX_DIAMETER_MM:
            raise SynBTError(
                f"--size-mm {low:g} {high:g} must satisfy {MIN_DIAMETER_MM:g} <= MIN <= MAX <= {MAX_DIAMETER_MM:g}"
            )
        if self.seed < 0:
            raise SynBTError(f"--seed must be non-negative, got {self.seed}")
        if not _NAME.match(self.dataset_name):
            raise SynBTError(f"--dataset-name {self.dataset_name!r} must be letters, digits and '-' only")
        if not 1 <= self.dataset_id <= 999:
            raise SynBTError(f"--dataset-id must be in 1..999 (nnU-Net's DatasetXXX), got {self.dataset_id}")
        if self.precision not in PRECISIONS:
            raise SynBTError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.necrosis is not None and not isinstance(self.necrosis, bool):
            raise SynBTError(f"necrosis must be true, false or unset (drawn by the seed), got {self.necrosis!r}")
        check_request(self.method, self.steps, self.kinetics, self.necrosis, self.bundle, source_kinetics=True)

    @property
    def name_width(self) -> int:
        return max(3, len(str(self.num_cases - 1)))

    def case_name(self, index: int) -> str:
        """Identifier of synthetic case `index`, e.g. SynBT_007."""
        return f"{self.dataset_name}_{index:0{self.name_width}d}"

    @property
    def nnunet_folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.dataset_name}"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' -> (i, n) with 0 <= i < n; None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise SynBTError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def shard_indices(num_cases: int, shard: tuple[int, int] | None) -> list[int]:
    """The case indices j a shard makes: j % n == i (all cases without a shard)."""
    if shard is None:
        return list(range(num_cases))
    i, n = shard
    return list(range(i, num_cases, n))


# ------------------------------------------------------------------------------------- layout


def case_files(settings: ExportSettings, name: str, num_phases: int) -> tuple[list[str], str]:
    """Relative paths (images in phase order, label) of a case in the export folder."""
    if settings.format == "nnunet":
        return [f"imagesTr/{name}_{k:04d}.nii.gz" for k in range(num_phases)], f"labelsTr/{name}.nii.gz"
    return [f"cases/{name}/phase_{k}.nii.gz" for k in range(num_phases)], f"cases/{name}/tumor_labels.nii.gz"


def mask_file(settings: ExportSettings, name: str) -> str:
    """Relative path of a case's synthetic-tumor mask (only the tumors synthesized into it)."""
    if settings.format == "nnunet":
        return f"{SYNTHETIC_MASK_DIR}/{name}.nii.gz"
    return f"cases/{name}/{SYNTHETIC_MASK_FILE}"


def synthetic_mask_beside(label_path) -> Path | None:
    """Where an export puts the synthetic-tumor mask of the case whose label is ``label_path`` (it may not exist:
    a real case, or an export made before the masks were written); None for a label no export writes."""
    from .datasets import TUMOR_LABEL_FILE

    label_path = Path(label_path)
    if label_path.parent.name == "labelsTr":
        return label_path.parent.parent / SYNTHETIC_MASK_DIR / label_path.name
    return label_path.parent / SYNTHETIC_MASK_FILE if label_path.name == TUMOR_LABEL_FILE else None


def provenance_path(out: Path, name: str) -> Path:
    return out / PROVENANCE_DIR / f"{name}.json"


def is_done(out: Path, name: str) -> bool:
    """A case is done exactly when its provenance file exists."""
    return provenance_path(out, name).is_file()


def channel_names(num_phases: int) -> dict[str, str]:
    """nnU-Net channel names: {"0": "pre", "1": "post1", ...}."""
    return {str(k): "pre" if k == 0 else f"post{k}" for k in range(num_phases)}


def _write_json(data: dict, path: Path) -> Path:
    """Write JSON atomically (temp file in the same folder + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    temp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(temp, path)
    return path


# ------------------------------------------------------------------------------ making a case


@dataclass
class SyntheticCase:
    """One synthetic case ready to write: phases, 0/1 label, 0/1 mask of its synthesized tumors, provenance."""

    name: str
    case: Case
    label: np.ndarray
    provenance: dict = field(default_factory=dict)
    synthetic: np.ndarray | None = None  # the label minus the source's own lesions


def read_existing_tumors(label_path, case: Case, what: str) -> np.ndarray:
    """The tumors already in ``case``: the nonzero voxels of its label file, uint8 0/1 on its grid."""
    from .io import read_image

    values, geometry = read_image(label_path)
    if not geometry.matches(case.geometry):
        raise SynBTError(
            f"label {label_path} is on grid {geometry.describe()} but {what} is on {case.geometry.describe()}"
        )
    return (values != 0).astype(np.uint8)


def _read_source(ref) -> tuple[Case, np.ndarray]:
    """A source case and its tumor label (zeros when it has none)."""
    from .io import read_case

    case = read_case(list(ref.phase_paths))
    if ref.label_path is None:
        return case, np.zeros(case.shape, dtype=np.uint8)
    return case, read_existing_tumors(ref.label_path, case, f"case {ref.case_id}")


def _place(allowed, geometry, settings: ExportSettings, rng: np.random.Generator, what: str):
    """Draw size, kind and shape seed, and place the tumor; redraw a few times when it does not fit."""
    from .shapes import KINDS, place_tumor

    problem = None
    for _ in range(PLACEMENT_TRIES):
        diameter = float(rng.uniform(*settings.size_mm))
        kind = str(rng.choice(KINDS))
        shape_seed = int(rng.integers(2**31))
        try:
            placement = place_tumor(allowed, geometry, diameter, seed=shape_seed, kind=kind)
        except SynBTError as exc:
            problem = exc
            continue
        return placement, diameter, kind, shape_seed
    raise SynBTError(f"{what}: {problem}")


def make_synthetic_case(ref, index: int, settings: ExportSettings, synth, steps=None,
                        progress: Callable[[str], None] | None = None) -> SyntheticCase:
    """Synthetic case `index` from source `ref`: tumors placed in the breast tissue and synthesized.

    Random choices come from numpy generators seeded by (settings.seed, index, tumor index).
    ``progress(message)`` says where the case is (reading, placing, synthesis steps of each tumor).
    """
    report = progress or (lambda message: None)
    from .preprocess import breast_tissue_mask
    from .shapes import away_from_tumors

    name = settings.case_name(index)
    report(f"reading {ref.case_id}")
    case, existing = _read_source(ref)
    kinetics = settings.kinetics
    if kinetics == "source":  # the source tumor's measured curve type; the seed's draw when there is none
        kinetics = tumor_curve_type(case.phases, existing)
    options = {} if kinetics is None else {"kinetics": kinetics}
    if settings.necrosis is not None:
        options["necrosis"] = settings.necrosis
    spacing_zyx = case.geometry.spacing[::-1]
    breast = np.asarray(breast_tissue_mask(case).breast, dtype=bool)
    allowed = away_from_tumors(breast, existing, spacing_zyx)
    label = existing.copy()
    synthetic = np.zeros_like(existing)
    tumors = []
    for t in range(settings.tumors_per_case):
        rng = np.random.default_rng([settings.seed, index, t])
        what = f"case {name} (source {ref.case_id}), tumor {t + 1}"
        tumor_name = f"tumor {t + 1}/{settings.tumors_per_case}"
        report(f"placing {tumor_name}")
        placement, diameter, kind, shape_seed = _place(allowed, case.geometry, settings, rng, what)
        synthesis_seed = int(rng.integers(2**31))

        def steps_done(done, total, message="", tumor_name=tumor_name):
            report(f"{tumor_name}: {message or 'synthesis'} {done}/{total}")

        case = synth(case, placement.mask, seed=synthesis_seed, steps=steps, progress=steps_done, **options)
        label[placement.mask > 0] = 1
        synthetic[placement.mask > 0] = 1
        allowed = away_from_tumors(allowed, placement.mask, spacing_zyx)
        tumor = {
            "index": t, "diameter_mm": diameter, "kind": kind, "center_mm": list(placement.center_mm),
            "shape_seed": shape_seed, "synthesis_seed": synthesis_seed, "voxels": int(placement.mask.sum()),
        }
        described = synth.describe(synthesis_seed, mask=placement.mask, spacing_zyx=spacing_zyx, **options)
        if described:  # the handcrafted appearance, or the curve type a kinetic bundle drew
            tumor["synthesis"] = described
        tumors.append(tumor)
    provenance = {
        "case": name, "index": index, "source_case": ref.case_id,
        "source_phases": [str(p) for p in ref.phase_paths],
        **({"source_phase_indices": list(ref.phase_indices)} if ref.phase_indices is not None else {}),
        "source_label": str(ref.label_path) if ref.label_path else None,
        "source_tumor_voxels": int(existing.sum()), "tumors": tumors,
    }
    return SyntheticCase(name=name, case=case, label=label, provenance=provenance, synthetic=synthetic)


# ---------------------------------------------------------------------------- writing a case


class _FileBudget:
    """Counts file operations and raises InjectedFault (or exits the process, hard=True) after `limit`."""

    def __init__(self, limit: int | None, hard: bool = False):
        self.remaining = limit
        self.hard = hard

    def tick(self) -> None:
        if self.remaining is None:
            return
        self.remaining -= 1
        if self.remaining <= 0:
            if self.hard:  # a crash: no cleanup, no finally blocks, no flushing
                os._exit(137)
            raise InjectedFault("injected fault: export stopped part-way through a case")


def discard_partial(out: Path, name: str, files: list[str]) -> None:
    """Remove what an interrupted run left of an unfinished case: its temp folders and moved files."""
    for temp in out.glob(f".tmp-{name}-*"):
        shutil.rmtree(temp, ignore_errors=True)
    if not is_done(out, name):
        for rel in files:
            (out / rel).unlink(missing_ok=True)


def write_synthetic_case(
    out: Path, item: SyntheticCase, settings: ExportSettings, provenance: dict, budget: _FileBudget | None = None,
    with_mask: bool = True,
) -> list[str]:
    """Write one case atomically: files into out/.tmp-<case>-<pid>, moved into place, provenance last.

    On an exception the files already moved are removed again, so the case is either complete
    (provenance present) or absent. ``with_mask``: write the synthetic-tumor mask too. Returns the
    case's relative file paths.
    """
    from .io import write_image, write_label

    budget = budget or _FileBudget(None)
    images, label = case_files(settings, item.name, item.case.num_phases)
    temp = out / f".tmp-{item.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    moved: list[Path] = []
    try:
        for rel, phase in zip(images, item.case.phases):
            write_image(phase, item.case.geometry, temp / rel)
            budget.tick()
        write_label(item.label, item.case.geometry, temp / label)
        budget.tick()
        extra = [mask_file(settings, item.name)] if with_mask else []
        for rel in extra:
            write_label(item.synthetic, item.case.geometry, temp / rel)
            budget.tick()
        _write_json(provenance, temp / PROVENANCE_DIR / f"{item.name}.json")
        for rel in images + [label] + extra:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp / rel, out / rel)
            moved.append(out / rel)
            budget.tick()
        provenance_path(out, item.name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp / PROVENANCE_DIR / f"{item.name}.json", provenance_path(out, item.name))
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return images + [label] + extra


# ------------------------------------------------------------------------- the data set index


def _bundle_identity(method: str, bundle: str | None) -> tuple[str | None, str | None]:
    """(bundle path, bundle sha256) recorded in provenance; both None for the handcrafted method."""
    if method != "diffusion":
        return None, None
    try:
        from .bundle import bundle_sha256, default_bundle_path
    except ImportError:
        return bundle, None
    path = Path(bundle) if bundle else default_bundle_path()
    return str(path.resolve()), bundle_sha256(path)


def _read_settings(out: Path) -> dict | None:
    path = out / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SynBTError(f"cannot parse {path}: {exc}") from exc


def write_index(out: Path, record: dict) -> Path:
    """Write dataset.json (nnU-Net v2) or datalist.json (MONAI) for all cases of a finished export."""
    settings = ExportSettings(**record["settings"])
    names = [settings.case_name(j) for j in range(settings.num_cases)]
    missing = [name for name in names if not is_done(out, name)]
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise SynBTError(f"{len(missing)} of {len(names)} cases are not done: {shown}; run the missing shards again")
    num_phases = record["num_phases"]
    if settings.format == "nnunet":
        dataset = {
            "name": settings.dataset_name,
            "description": "Synthetic breast tumors in DCE-MRI (SynBT, arXiv 2509.03267)",
            "channel_names": channel_names(num_phases),
            "labels": {"background": 0, "tumor": 1},
            "numTraining": settings.num_cases,
            "file_ending": ".nii.gz",
            "synbt": record,
        }
        return _write_json(dataset, out / "dataset.json")
    training = []
    for name in names:
        images, label = case_files(settings, name, num_phases)
        masks = {"synthetic_tumors": mask_file(settings, name)} if record.get("synthetic_masks") else {}
        training.append({"image": images, "label": label, "case": name, **masks})
    return _write_json({"training": training, "synbt": record}, out / "datalist.json")


def verify_nnunet(out: Path, log: Callable[[str], None] = print) -> bool:
    """Run nnU-Net v2's dataset integrity check when nnunetv2 is installed; False when it is not."""
    try:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    except ImportError:
        log("nnU-Net integrity check skipped: nnunetv2 is not installed")
        return False
    try:
        verify_dataset_integrity(str(out), num_processes=1)
    except Exception as exc:  # nnU-Net reports problems with asserts and RuntimeErrors
        raise SynBTError(f"nnU-Net's integrity check failed for {out}: {exc}") from exc
    log("nnU-Net integrity check passed")
    return True


def finalize(out: Path, log: Callable[[str], None] = print) -> Path:
    """Check every case is done, write the data set index, and run nnU-Net's check (nnunet format)."""
    record = _read_settings(out)
    if record is None:
        raise SynBTError(f"{out} holds no {SETTINGS_FILE}; it is not a SynBT export folder")
    index = write_index(out, record)
    if record["settings"]["format"] == "nnunet":
        verify_nnunet(out, log)
        expected = ExportSettings(**record["settings"]).nnunet_folder_name
        if out.name != expected:
            log(f"note: nnU-Net expects this folder at $nnUNet_raw/{expected}")
    return index


def merge(out, format: str | None = None, log: Callable[[str], None] = print) -> Path:
    """After all shards have run: check every case is done and write the data set index."""
    out = Path(out).expanduser().resolve()
    record = _read_settings(out) if out.is_dir() else None
    if record is None:
        raise SynBTError(f"{out} is not a SynBT export folder (no {SETTINGS_FILE}); run the export shards first")
    if format is not None and record["settings"]["format"] != format:
        raise SynBTError(f"{out} was exported as {record['settings']['format']}, not {format}")
    return finalize(out, log)


# -------------------------------------------------------------------------------- the export


def _refuse_foreign_output(out: Path, source: Path) -> None:
    """Refuse, before anything is loaded, an output that holds other files or lies in the source data set."""
    if out == source or source in out.parents or out in source.parents:
        raise SynBTError(f"output folder {out} overlaps the input data set {source}; choose another folder")
    if out.exists() and not out.is_dir():
        raise SynBTError(f"output {out} exists and is not a folder")
    if _read_settings(out) is None and out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise SynBTError(f"output folder {out} is not empty and holds no SynBT export; choose another folder")


def _check_output(out: Path, source: Path, record: dict) -> Path:
    """Create the output folder or accept it for a rerun/another shard of the same export."""
    from .io import prepare_output_dir

    _refuse_foreign_output(out, source)
    previous = _read_settings(out) if out.is_dir() else None
    if previous is not None and previous != record:
        flat = lambda r: {**r.get("settings", {}), **{k: v for k, v in r.items() if k != "settings"}}  # noqa: E731
        before, now = flat(previous), flat(record)
        differing = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
        raise SynBTError(
            f"{out} holds an export made with other settings (differing: {', '.join(differing)}); "
            "rerun with the same settings or choose another folder"
        )
    out = prepare_output_dir(out, overwrite=True, inputs=[source])
    _write_json(record, out / SETTINGS_FILE)
    return out


def choose_source_phases(refs, bundle, log: Callable[[str], None] = print) -> tuple[list, str | None]:
    """(the source cases reduced to the phases the bundle models, the policy when it reduced any).

    phase_choice.choose_phases on each case, with its acquisition times from the data set's clinical
    table (MAMA-MIA) when there are any: the same choice `synbt synthesize` and the Slicer panel make.
    A case that cannot give those phases is left out with one line in the log; none left is refused."""
    from .datasets import CaseRef
    from .phase_choice import choose_phases

    kept, skipped, policy = [], [], None
    for ref in refs:
        try:
            choice = choose_phases(len(ref.phase_paths), bundle, ref.acquisition_times, "the data set's clinical table",
                                   what=f"source case {ref.case_id}")
        except SynBTError as exc:
            skipped.append(ref.case_id)
            log(f"skipped: {exc}")
            continue
        if choice.is_subset:
            policy = choice.policy
            times = None if ref.acquisition_times is None else tuple(ref.acquisition_times[k] for k in choice.indices)
            ref = CaseRef(ref.case_id, tuple(ref.phase_paths[k] for k in choice.indices), ref.label_path, times,
                          choice.indices)
        kept.append(ref)
    if skipped:
        log(f"{len(skipped)} of {len(refs)} source cases skipped: they cannot give the phases the bundle models")
    if not kept:
        raise SynBTError(f"none of the {len(refs)} source cases can give the {bundle.count} phases the bundle models"
                         + (f" (phase policy {bundle.policy})" if bundle.policy else ""))
    if policy is not None:
        log(f"phases chosen by the bundle's phase policy {policy}")
    return kept, policy


def _source_phase_count(refs) -> int:
    counts = {len(ref.phase_paths) for ref in refs}
    if len(counts) > 1:
        detail = ", ".join(f"{ref.case_id}: {len(ref.phase_paths)}" for ref in refs[:10])
        raise SynBTError(f"source cases have different numbers of phases ({detail}); export needs one channel count")
    return counts.pop()


def export_dataset(
    source,
    out,
    settings: ExportSettings,
    shard: tuple[int, int] | None = None,
    log: Callable[[str], None] = print,
    fail_after_files: int | None = None,
    fail_hard: bool = False,
    device: str | None = None,
) -> list[str]:
    """Export settings.num_cases synthetic cases made from the data set `source` into `out`.

    With shard=(i, n) only cases j with j % n == i are made and no index is written (see merge).
    Done cases are skipped, so rerunning an interrupted export completes it. Returns the names of
    the cases made by this call. fail_after_files (tests only) stops after that many file
    operations: with an InjectedFault, or like a killed process with fail_hard=True. device: where
    the diffusion networks run (pipeline.resolve_device: None or "auto" = a GPU when there is one),
    recorded in each case's provenance with the precision.
    """
    from tqdm import tqdm

    from .io import read_dataset
    from .synthesizers import make_synthesizer

    source = Path(source).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    refs = read_dataset(source)
    _refuse_foreign_output(out, source)  # before any model is loaded
    options, policy = {}, None
    if check_request(settings.method, settings.steps, bundle=settings.bundle).method == "diffusion":
        from .bundle import default_bundle_path
        from .phase_choice import BundlePhases
        from .pipeline import resolve_device

        bundle_phases = BundlePhases.of_bundle(Path(settings.bundle) if settings.bundle else default_bundle_path())
        refs, policy = choose_source_phases(refs, bundle_phases, log)
        options = {"device": resolve_device(device), "precision": settings.precision}
    num_phases = _source_phase_count(refs)
    synth, method, steps = make_synthesizer(settings.method, settings.bundle, settings.steps, **options)
    check_request(method, steps, settings.kinetics, settings.necrosis, settings.bundle, synthesizer=synth,
                  source_kinetics=True)
    bundle_path, bundle_sha = _bundle_identity(method, settings.bundle)
    settings_record = asdict(settings) | {"size_mm": list(settings.size_mm)}
    for option, default in (("kinetics", None), ("necrosis", None), ("precision", "float32")):
        if getattr(settings, option) == default:  # exports made before an option existed resume with the same record
            settings_record.pop(option)
    record = {
        "settings": settings_record,
        "source": str(source), "num_phases": num_phases, "method": method, "steps": steps,
        "bundle": bundle_path, "bundle_sha256": bundle_sha, "synbt_version": __version__,
    }
    if policy is not None:  # only then: exports of cases with the bundle's own phase count resume as before
        record["phase_policy"] = policy
    previous = _read_settings(out) if out.is_dir() else None
    with_masks = previous is None or bool(previous.get("synthetic_masks"))
    if with_masks:  # an export begun without masks is completed without them (one folder, one kind of case)
        record["synthetic_masks"] = True
    out = _check_output(out, source, record)

    budget = _FileBudget(fail_after_files, fail_hard)
    made = []
    indices = shard_indices(settings.num_cases, shard)
    bar = tqdm(indices, desc="export", unit="case", disable=None)
    for index in bar:
        name = settings.case_name(index)
        images, label = case_files(settings, name, num_phases)
        files = images + [label] + ([mask_file(settings, name)] if with_masks else [])
        discard_partial(out, name, files)
        if is_done(out, name):
            continue
        within = lambda message, name=name: bar.set_postfix_str(f"{name}: {message}")  # noqa: E731
        item = make_synthetic_case(refs[index % len(refs)], index, settings, synth, steps, progress=within)
        provenance = {
            **item.provenance, "seed": settings.seed, "method": method, "steps": steps,
            "bundle": bundle_path, "bundle_sha256": bundle_sha, "format": settings.format,
            "files": files, "synbt_version": __version__, **options,
        }
        if with_masks:
            provenance["synthetic_tumors"] = mask_file(settings, name)
        write_synthetic_case(out, item, settings, provenance, budget, with_mask=with_masks)
        made.append(name)
    if shard is None:
        finalize(out, log)
    else:
        log(f"shard {shard[0]}/{shard[1]}: {len(indices)} cases done; run `synbt export --merge` after all shards")
    return made
