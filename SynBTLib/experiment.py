"""Does synthetic data help segmentation? A phantom study with power (`synbt experiment --preset`).

Arms (identical network, budget and real batches; only where a batch's synthetic share comes from
differs):

- ``real``: the real training cases only;
- ``handcrafted`` / ``offline``: + a fraction ``ratio`` of each batch from an offline synthetic
  set made from the real training cases by the handcrafted baseline / by SynBT (the same number
  of cases, tumor sizes, kinds and places in both: one export seed);
- ``onthefly``: + the same fraction synthesized by SynBT in the loader (a fresh tumor each sample,
  sizes from the same range);
- ``gap_*``: the size-shift study, apart from the main comparison: the same arms trained on
  ``train_small`` (real tumors of ``gap_size_mm`` only), tested on the same test lesions.

Real training, validation and test cases are drawn alike (study_cohort.py). Each (arm, seed)
unit trains one network and scores every test lesion (lesion-wise Dice); results/ gets the
per-lesion and per-case tables, paired differences with crossed bootstrap 95 % intervals
(study_stats.py), by size bin, as JSON, markdown and a figure (study_report.py). A rerun resumes:
finished phantoms, synthetic cases and units are kept, a unit killed mid-training continues
from its checkpoint.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

from .errors import SynBTError

PLAN_FILE = "study.json"
METRICS_FILE = "metrics.json"
# arm -> (real training split, synthetic source: None | (mode, method))
ARM_SPECS = {
    "real": ("train", None),
    "handcrafted": ("train", ("offline", "handcrafted")),
    "offline": ("train", ("offline", "diffusion")),
    "onthefly": ("train", ("on-the-fly", "diffusion")),
    "gap_real": ("train_small", None),
    "gap_handcrafted": ("train_small", ("offline", "handcrafted")),
    "gap_offline": ("train_small", ("offline", "diffusion")),
}
ARMS = tuple(ARM_SPECS)
# (a, b): the paired differences a - b reported when both arms ran
COMPARISONS = (
    ("offline", "real"), ("offline", "handcrafted"), ("onthefly", "real"), ("onthefly", "handcrafted"),
    ("onthefly", "offline"), ("handcrafted", "real"),
    ("gap_offline", "gap_real"), ("gap_offline", "gap_handcrafted"), ("gap_handcrafted", "gap_real"),
)
PRESETS = ("ci", "cpu", "paper")


@dataclass(frozen=True)
class StudyPlan:
    """Everything that defines the study's numbers. shape (x, y, z) or None for the phantom preset's
    grid; patch_size (z, y, x); sizes are lesion diameters in mm."""

    preset: str = "cpu"
    phantom_preset: str = "small"
    shape: tuple[int, int, int] | None = None
    phases: int = 3
    cohort_seed: int = 2026
    train_cases: int = 8
    val_cases: int = 4
    test_cases: int = 60
    lesions_per_case: int = 2
    size_mm: tuple[float, float] = (10.0, 50.0)
    gap_size_mm: tuple[float, float] = (10.0, 18.0)
    size_bins_mm: tuple[float, ...] = (15.0, 20.0, 30.0)
    # one tumor per synthetic case, up to 30 mm: a second one, or a 34 mm one, may not fit beside a source
    # case's own two lesions in these breasts (export stops on a tumor that fits nowhere)
    synthetic_cases: int = 32
    synthetic_tumors_per_case: int = 1
    synthetic_size_mm: tuple[float, float] = (10.0, 30.0)
    synthesis_steps: int | None = None
    synthesis_workers: int = 1
    ratio: float = 0.5
    # share of synthetic patches centred on a tumor; None: as the real patches (data.pos_fraction), the rest
    # background patches of the synthetic cases. 1.0 is the sampling of study folders made before this
    # setting existed (every synthetic patch on a tumor), which from_dict gives to their study.json.
    synthetic_pos_fraction: float | None = None
    network: str = "unet"
    channels: tuple[int, ...] = (16, 32, 64)
    num_res_units: int = 1
    patch_size: tuple[int, int, int] = (16, 48, 48)
    steps: int = 600
    steps_per_epoch: int = 100
    validate_every: int = 200
    batch_size: int = 4
    lr: float = 2e-3
    lesion_margin_mm: float = 10.0
    bootstrap: int = 2000
    # cpu: 25 units of ~4 min on 2 idle cores plus ~25 min of cohort and synthesis; onthefly (~15 s of CPU per
    # SynBT tumor, 1,200 per unit) and gap_handcrafted are left to --arms
    arms: tuple[str, ...] = ("real", "handcrafted", "offline", "gap_real", "gap_offline")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)

    def __post_init__(self):
        for f in fields(self):  # JSON round trips give lists: keep tuples so plans compare equal
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        if min(self.train_cases, self.val_cases, self.test_cases, self.lesions_per_case, self.synthetic_cases,
               self.synthetic_tumors_per_case, self.steps, self.bootstrap) < 1:
            raise SynBTError("every split, lesion count, synthetic set, training steps and bootstrap need at least one")
        if not 0.0 < self.ratio < 1.0:
            raise SynBTError(f"the synthetic ratio must be in (0, 1), got {self.ratio}")
        if self.synthetic_pos_fraction is not None and not 0.0 <= self.synthetic_pos_fraction <= 1.0:
            raise SynBTError(f"synthetic_pos_fraction must be in [0, 1] or null, got {self.synthetic_pos_fraction}")
        if unknown := [a for a in self.arms if a not in ARM_SPECS]:
            raise SynBTError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
        if not self.seeds:
            raise SynBTError("give at least one seed")

    @classmethod
    def preset_plan(cls, name: str) -> "StudyPlan":
        """``ci``: every code path at toy sizes (tests); ``cpu``: 2-core CPU, ~2 h; ``paper``: a GPU campaign.

        cpu: 120 test lesions (60 cases x 2) on the 128x128x48 phantom grid, 8 real training cases, 5 seeds,
        a 3-level UNet for 600 steps (what 2 cores allow). paper: 160 test lesions on the bundle's
        192x192x64 grid, 20 training cases, 8 seeds, a 5-level UNet (32-320 channels) for 6,000 steps."""
        if name == "cpu":
            return cls()
        if name == "ci":
            return cls(preset="ci", shape=(64, 64, 24), train_cases=2, val_cases=1, test_cases=3, lesions_per_case=2,
                       size_mm=(12.0, 30.0), gap_size_mm=(12.0, 16.0), size_bins_mm=(15.0, 20.0),
                       synthetic_cases=2, synthetic_tumors_per_case=1, synthetic_size_mm=(12.0, 24.0),
                       synthesis_steps=2, synthesis_workers=0, channels=(8, 16, 32), patch_size=(8, 16, 16), steps=4,
                       steps_per_epoch=2, validate_every=4, batch_size=2, bootstrap=200, arms=ARMS, seeds=(0, 1))
        if name == "paper":
            return cls(preset="paper", phantom_preset="bundle", train_cases=20, val_cases=8, test_cases=80,
                       synthetic_cases=80, synthesis_workers=6, channels=(32, 64, 128, 256, 320), num_res_units=2,
                       patch_size=(32, 96, 96), steps=6000, steps_per_epoch=250, validate_every=500, batch_size=8,
                       lr=1e-3, arms=ARMS, seeds=(0, 1, 2, 3, 4, 5, 6, 7))
        raise SynBTError(f"unknown study preset {name!r}; choose one of {', '.join(PRESETS)}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "StudyPlan":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise SynBTError(f"unknown study setting(s) {', '.join(sorted(unknown))}")
        # a study.json from before synthetic_pos_fraction existed was run with every synthetic patch on a tumor:
        # it keeps that sampling, so resuming or reporting it never mixes two samplings
        return cls(**{"synthetic_pos_fraction": 1.0, **data})

    def design(self) -> dict:
        """The plan without what only selects units to run (arms, seeds): a rerun may add those."""
        return {k: v for k, v in self.to_dict().items() if k not in ("arms", "seeds")}

    def training_config(self, seed: int, synthetic: dict | None) -> dict:
        """The train-seg config of one unit; ``synthetic`` is its synthetic section (None: real only)."""
        return {
            "model": {"name": self.network, "channels": list(self.channels), "num_res_units": self.num_res_units,
                      "subtraction": True},
            "training": {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "seed": seed,
                         "checkpoint_every": self.steps_per_epoch, "warmup_steps": min(20, self.steps // 10)},
            "data": {"patch_size": list(self.patch_size), "steps_per_epoch": self.steps_per_epoch},
            "validation": {"every": min(self.validate_every, self.steps)},
            "synthetic": synthetic or {"mode": "none"},
        }


def plan_with_overrides(plan: StudyPlan, **overrides) -> StudyPlan:
    """``plan`` with the given settings replaced (None values are ignored)."""
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})


OLD_SAMPLING_NOTE = ("this study folder predates synthetic_pos_fraction: its synthetic patches stay centred on a "
                     "tumor (1.0) so its units are not mixed with another sampling; a new --out samples them as "
                     "the real patches")


def _keep_folder_sampling(out: Path, plan: StudyPlan, notes: list[str], log: Callable[[str], None]) -> StudyPlan:
    """``plan`` with the synthetic sampling of an existing study folder made before it was a setting."""
    path = out / PLAN_FILE
    if plan.synthetic_pos_fraction is None and path.is_file() and \
            "synthetic_pos_fraction" not in json.loads(path.read_text()):
        notes.append(OLD_SAMPLING_NOTE)
        log(notes[-1])
        return replace(plan, synthetic_pos_fraction=1.0)
    return plan


def _check_plan(out: Path, plan: StudyPlan) -> None:
    path = out / PLAN_FILE
    record = plan.to_dict()
    if path.is_file():
        raw = json.loads(path.read_text())
        if "synthetic_pos_fraction" not in raw:  # a folder from before the setting stays one (read as 1.0)
            record.pop("synthetic_pos_fraction")
        saved = StudyPlan.from_dict(raw)
        if saved.design() != plan.design():
            differing = sorted(k for k, v in plan.design().items() if saved.design().get(k) != v)
            raise SynBTError(f"{out} holds a study with other settings (differing: {', '.join(differing)}); "
                             "use the same settings or another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise SynBTError(f"output folder {out} is not empty and holds no {PLAN_FILE}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def runnable_arms(plan: StudyPlan, bundle: str | None, log: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """The plan's arms that can run, and notes on those skipped (SynBT arms need a model bundle)."""
    from .bundle import default_bundle_path

    path = Path(bundle) if bundle else default_bundle_path()
    has_bundle = (path / "config.json").is_file()
    runnable, notes = [], []
    for arm in dict.fromkeys(plan.arms):
        source = ARM_SPECS[arm][1]
        if source and source[1] == "diffusion" and not has_bundle:
            notes.append(f"arm {arm} skipped: no SynBT model bundle at {path}; train one or pass --bundle DIR")
            log(notes[-1])
            continue
        runnable.append(arm)
    return runnable, notes


def _synthetic_section(plan: StudyPlan, arm: str, synthetic_dirs: dict, bundle: str | None) -> dict | None:
    split, source = ARM_SPECS[arm]
    if source is None:
        return None
    mode, method = source
    if mode == "offline":
        return {"mode": "offline", "dir": str(synthetic_dirs[(split, method)]), "ratio": plan.ratio,
                "pos_fraction": plan.synthetic_pos_fraction}
    return {"mode": "on-the-fly", "method": method, "bundle": bundle, "steps": plan.synthesis_steps,
            "ratio": plan.ratio, "pos_fraction": plan.synthetic_pos_fraction, "size_mm": list(plan.synthetic_size_mm),
            "workers": plan.synthesis_workers}


def run_unit(plan: StudyPlan, arm: str, seed: int, dirs: dict, synthetic: dict | None, run_dir: Path,
             device: str | None = None, verbose: bool = False) -> dict:
    """Train one (arm, seed) unit (resuming a partial run) and score the test lesions; cached in metrics.json."""
    from .study_cohort import evaluate_model
    from .training.common import CHECKPOINT_FILE
    from .training.segmentation import train_segmentation

    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    resume = (run_dir / CHECKPOINT_FILE).is_file()
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # killed before its first checkpoint: start it again
    started = time.monotonic()
    result = train_segmentation(dirs[ARM_SPECS[arm][0]], run_dir, plan.training_config(seed, synthetic),
                                val=dirs["val"], resume=resume, device=device, verbose=verbose)
    lesions, cases = evaluate_model(result.model_dir, dirs["test"], plan.lesion_margin_mm, device or "cpu")
    metrics = {"arm": arm, "seed": seed, "best_val_dice": result.best_dice, "best_step": result.best_step,
               "seconds": round(time.monotonic() - started, 1), "lesions": lesions, "cases": cases}
    tmp = metrics_path.with_name(METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=1))
    tmp.replace(metrics_path)
    return metrics


def run_study(out: str | Path, plan: StudyPlan | None = None, bundle: str | None = None, device: str | None = None,
              verbose: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the study in ``out``; returns the summary (also written under out/results)."""
    from tqdm.auto import tqdm

    from .study_cohort import make_cohort, make_synthetic, synthetic_tumors
    from .study_report import write_results

    plan = plan or StudyPlan.preset_plan("cpu")
    out = Path(out)
    runnable, notes = runnable_arms(plan, bundle, log)
    plan = _keep_folder_sampling(out, plan, notes, log)
    if not runnable:
        raise SynBTError("no arm left to run")
    _check_plan(out, plan)
    splits = sorted({ARM_SPECS[a][0] for a in runnable} | {"val", "test"})
    log(f"phantom cohort: {', '.join(splits)}")
    dirs = make_cohort(plan, out / "cohort", splits, log)
    synthetic_dirs = {}
    for split, source in dict.fromkeys(ARM_SPECS[a] for a in runnable):
        if source and source[0] == "offline":
            log(f"offline synthetic set: {source[1]} from {split}")
            synthetic_dirs[(split, source[1])] = make_synthetic(plan, source[1], dirs[split],
                                                                out / "synthetic" / f"{split}_{source[1]}", bundle)
    for split in {"train", "train_small"}:  # the sets made from one source must hold the same tumors
        sets = {m: synthetic_tumors(d) for (s, m), d in synthetic_dirs.items() if s == split}
        if len(sets) > 1 and len({json.dumps(v) for v in sets.values()}) > 1:
            raise SynBTError(f"the offline synthetic sets made from {split} differ in tumor sizes or places")

    units = [(arm, seed) for seed in plan.seeds for arm in runnable]  # seed-major: a stopped run leaves whole seeds
    results, spent = [], []
    bar = tqdm(units, desc="study units", unit="run", disable=not verbose)
    for k, (arm, seed) in enumerate(bar, start=1):
        run_dir = out / "runs" / arm / f"seed_{seed}"
        fresh = not (run_dir / METRICS_FILE).is_file()
        started = time.monotonic()
        synthetic = _synthetic_section(plan, arm, synthetic_dirs, bundle)
        metrics = run_unit(plan, arm, seed, dirs, synthetic, run_dir, device, verbose)
        if fresh:
            spent.append(time.monotonic() - started)
        left = [u for u in units[k:] if not (out / "runs" / u[0] / f"seed_{u[1]}" / METRICS_FILE).is_file()]
        eta = f", about {len(left) * sum(spent) / len(spent) / 60:.0f} min left" if spent and left else ""
        mean = sum(r["dice"] for r in metrics["lesions"]) / max(1, len(metrics["lesions"]))
        log(f"unit {k}/{len(units)} {arm} seed {seed}: lesion Dice {mean:.3f}"
            f"{' (done before)' if not fresh else f' in {spent[-1] / 60:.1f} min'}{eta}")
        results.append(metrics)
    sizes = {f"{s}_{m}": synthetic_tumors(d) for (s, m), d in synthetic_dirs.items()}
    return write_results(out / "results", results, plan, COMPARISONS, _projection(), notes, sizes)


def report_finished(out: str | Path, plan: StudyPlan | None = None, log: Callable[[str], None] = print) -> dict:
    """Write results/ from the units finished so far (another process may still be running the study)."""
    from .study_cohort import synthetic_tumors
    from .study_report import write_results

    out = Path(out)
    if not (out / PLAN_FILE).is_file():
        raise SynBTError(f"no study in {out} (no {PLAN_FILE})")
    saved = StudyPlan.from_dict(json.loads((out / PLAN_FILE).read_text()))
    old = []
    plan = _keep_folder_sampling(out, plan, old, log) if plan else saved
    if saved.design() != plan.design():
        raise SynBTError(f"{out} holds a study with other settings; report it with the same preset")
    units = [(arm, seed) for seed in plan.seeds for arm in plan.arms]
    done = [u for u in units if (out / "runs" / u[0] / f"seed_{u[1]}" / METRICS_FILE).is_file()]
    # a paired comparison needs whole seeds: keep the seeds every requested arm has finished
    seeds = [s for s in plan.seeds if all((arm, s) in done for arm in plan.arms)]
    if not seeds:
        raise SynBTError(f"no seed of {out} has finished every arm of {', '.join(plan.arms)} yet")
    results = [json.loads((out / "runs" / arm / f"seed_{s}" / METRICS_FILE).read_text())
               for s in seeds for arm in plan.arms]
    notes = [f"partial: seeds {', '.join(map(str, seeds))} of {', '.join(map(str, plan.seeds))} "
             f"({len(done)} of {len(units)} units finished)"] if len(seeds) < len(plan.seeds) else []
    for note in notes:
        log(note)
    notes += old
    sizes = {d.name: synthetic_tumors(d) for d in sorted((out / "synthetic").glob("*")) if d.is_dir()}
    return write_results(out / "results", results, replace(plan, seeds=tuple(seeds)), COMPARISONS, _projection(), notes,
                         sizes)


def _projection() -> tuple[int, int]:
    """(seeds, test cases) of the paper preset: the detectable differences are also projected to it."""
    paper = StudyPlan.preset_plan("paper")
    return len(paper.seeds), paper.test_cases
