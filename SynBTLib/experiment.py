"""Does synthetic data help segmentation? Three arms on a phantom cohort, several seeds each.

Arms (identical splits, steps, batch size and patch size; only the batch composition differs):
``real`` (real patches only), ``handcrafted`` and ``diffusion`` (a fraction ``ratio`` of each batch
from synthetic cases made from the real training cases by that synthesizer, see export.py).
The real training set is small and holds small tumors; the held-out test set holds large ones,
so synthetic tumors of a wider size range can matter. Results: Dice and HD95 (mm) on the test
cases, mean and std over seeds (results.csv, results.md, results.png).

Everything lands under one folder and a rerun resumes: done phantoms, done synthetic cases and
arm/seed runs with a metrics.json are skipped; an interrupted training run continues from its
checkpoint.
"""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import SynBTError

ARMS = ("real", "handcrafted", "diffusion")
PLAN_FILE = "experiment.json"
METRICS_FILE = "metrics.json"
SPLITS = ("train", "val", "test")
DENSITIES = ("a", "b", "c", "d")


@dataclass(frozen=True)
class ExperimentPlan:
    """Sizes of the experiment. shape is (x, y, z) voxels; patch_size is (z, y, x)."""

    shape: tuple[int, int, int] = (96, 96, 32)
    phases: int = 3
    cohort_seed: int = 2025
    train_cases: int = 5
    val_cases: int = 2
    test_cases: int = 8
    train_tumor_mm: tuple[float, float] = (8.0, 14.0)
    val_tumor_mm: tuple[float, float] = (12.0, 30.0)
    test_tumor_mm: tuple[float, float] = (22.0, 36.0)
    synthetic_cases: int = 20
    synthetic_size_mm: tuple[float, float] = (10.0, 36.0)
    synthesis_steps: int | None = None
    synthetic_kinetics: str | None = None  # export's --kinetics for the diffusion arm (None: drawn by the seed)
    ratio: float = 0.5
    steps: int = 600
    steps_per_epoch: int = 100
    batch_size: int = 4
    lr: float = 2e-3
    patch_size: tuple[int, int, int] = (16, 48, 48)
    channels: tuple[int, ...] = (16, 32, 64)

    def __post_init__(self):
        for f in fields(self):  # JSON round trips give lists: keep tuples so plans compare equal
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        if min(self.train_cases, self.val_cases, self.test_cases, self.synthetic_cases, self.steps) < 1:
            raise SynBTError("every split, the synthetic set and the training steps need at least one item")
        if not 0.0 < self.ratio < 1.0:
            raise SynBTError(f"the synthetic ratio must be in (0, 1), got {self.ratio}")

    @classmethod
    def default(cls, full: bool = False) -> "ExperimentPlan":
        """The CPU default (~96x96x32 phantoms, tiny UNet), or a bigger GPU setting with ``full``."""
        if not full:
            return cls()
        return cls(shape=(128, 128, 48), train_cases=6, val_cases=4, test_cases=20, synthetic_cases=60, steps=4000,
                   steps_per_epoch=250, batch_size=8, lr=1e-3, patch_size=(32, 64, 64), channels=(16, 32, 64, 128))

    @classmethod
    def micro(cls) -> "ExperimentPlan":
        """A few-second plan for tests."""
        return cls(shape=(64, 64, 24), train_cases=2, val_cases=1, test_cases=2, synthetic_cases=2,
                   train_tumor_mm=(10.0, 14.0), val_tumor_mm=(14.0, 18.0), test_tumor_mm=(20.0, 24.0),
                   synthetic_size_mm=(12.0, 20.0), steps=4, steps_per_epoch=2, batch_size=2, patch_size=(8, 16, 16),
                   channels=(8, 16, 32))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentPlan":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SynBTError(f"unknown experiment setting(s) {', '.join(sorted(unknown))}")
        return cls(**data)

    def training_config(self, seed: int, synthetic_dir: Path | None) -> dict:
        """The train-seg config of one arm/seed run (synthetic offline when synthetic_dir is given)."""
        return {
            "model": {"name": "unet", "channels": list(self.channels), "num_res_units": 1, "subtraction": True},
            "training": {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "seed": seed,
                         "checkpoint_every": self.steps_per_epoch, "warmup_steps": min(20, self.steps // 10)},
            "data": {"patch_size": list(self.patch_size), "steps_per_epoch": self.steps_per_epoch},
            "synthetic": ({"mode": "offline", "dir": str(synthetic_dir), "ratio": self.ratio} if synthetic_dir
                          else {"mode": "none"}),
        }


# ------------------------------------------------------------------------------------ cohort


def cohort_plan(plan: ExperimentPlan) -> dict[str, list[dict]]:
    """Per split, the phantom seed, density and tumor diameter of every case (fixed by cohort_seed)."""
    rng = np.random.default_rng(plan.cohort_seed)
    sizes = {"train": plan.train_tumor_mm, "val": plan.val_tumor_mm, "test": plan.test_tumor_mm}
    counts = {"train": plan.train_cases, "val": plan.val_cases, "test": plan.test_cases}
    cohort = {}
    for split in SPLITS:
        cohort[split] = [
            {"case_id": f"{split}_{k:03d}", "seed": int(rng.integers(2**31)), "density": DENSITIES[k % len(DENSITIES)],
             "tumor_mm": round(float(rng.uniform(*sizes[split])), 2)}
            for k in range(counts[split])
        ]
    return cohort


def make_cohort(plan: ExperimentPlan, root: Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Write the phantom cases of every split (done cases, those with case.json, are kept)."""
    from tqdm.auto import tqdm

    from .phantom import make_phantom, write_phantom

    cohort = cohort_plan(plan)
    items = [(split, item) for split in SPLITS for item in cohort[split]]
    todo = [(s, i) for s, i in items if not (root / s / i["case_id"] / "case.json").is_file()]
    for split, item in tqdm(todo, desc="phantom cohort", unit="case", disable=not todo):
        phantom = make_phantom(seed=item["seed"], shape=plan.shape, phases=plan.phases, tumors=1,
                               density=item["density"], tumor_diameters_mm=item["tumor_mm"])
        write_phantom(phantom, root / split / item["case_id"], overwrite=True, montage=False)
    return {split: root / split for split in SPLITS}


def make_synthetic(plan: ExperimentPlan, method: str, train_dir: Path, out: Path, bundle: str | None) -> Path:
    """The synthetic training cases of one arm (nnU-Net layout), made from the real training cases."""
    from .export import ExportSettings, export_dataset

    settings = ExportSettings(
        num_cases=plan.synthetic_cases, format="nnunet", method=method, size_mm=plan.synthetic_size_mm,
        seed=plan.cohort_seed, bundle=bundle if method == "diffusion" else None,
        steps=plan.synthesis_steps if method == "diffusion" else None,
        kinetics=plan.synthetic_kinetics if method == "diffusion" else None,
    )
    export_dataset(train_dir, out, settings, log=lambda message: None)
    return out


# ------------------------------------------------------------------------------- evaluation


def evaluate_model(model_dir: Path, test_dir: Path, device: str = "cpu") -> list[dict]:
    """Dice and HD95 (mm) of the model on every test case. An empty prediction's HD95 is the
    diagonal of the field of view (so that means stay finite)."""
    from .io import read_case, read_dataset, read_mask
    from .metrics import dice, hd95
    from .training.segmentation import load_model

    model = load_model(model_dir, device)
    rows = []
    for ref in read_dataset(test_dir):
        case = read_case(list(ref.phase_paths))
        truth = read_mask(ref.label_path, case.geometry)
        prediction = model.predict(case)
        diagonal = float(np.linalg.norm(np.asarray(case.geometry.size) * np.asarray(case.geometry.spacing)))
        rows.append({
            "case": ref.case_id, "dice": dice(prediction, truth),
            "hd95_mm": min(hd95(prediction, truth, case.geometry), diagonal),
            "predicted_voxels": int(prediction.sum()), "tumor_voxels": int(truth.sum()),
        })
    return rows


def run_arm(plan: ExperimentPlan, arm: str, seed: int, dirs: dict, synthetic_dir: Path | None, run_dir: Path,
            device: str | None = None, verbose: bool = True) -> dict:
    """Train one arm with one seed (resuming a partial run) and evaluate it; cached in metrics.json."""
    from .training.common import CHECKPOINT_FILE
    from .training.segmentation import train_segmentation

    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    resume = (run_dir / CHECKPOINT_FILE).is_file()
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # killed before its first checkpoint: start it again
    result = train_segmentation(dirs["train"], run_dir, plan.training_config(seed, synthetic_dir), val=dirs["val"],
                                resume=resume, device=device, verbose=verbose)
    cases = evaluate_model(result.model_dir, dirs["test"], device or "cpu")
    metrics = {
        "arm": arm, "seed": seed, "best_val_dice": result.best_dice, "best_step": result.best_step,
        "dice": float(np.mean([c["dice"] for c in cases])), "hd95_mm": float(np.mean([c["hd95_mm"] for c in cases])),
        "cases": cases,
    }
    tmp = metrics_path.with_name(METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=1))
    tmp.replace(metrics_path)
    return metrics


# ---------------------------------------------------------------------------------- summary


def summarize(results: list[dict]) -> list[dict]:
    """Per arm: number of seeds, mean and std (over seeds) of the test Dice and HD95."""
    rows = []
    for arm in ARMS:
        mine = [r for r in results if r["arm"] == arm]
        if not mine:
            continue
        dices, hds = np.array([r["dice"] for r in mine]), np.array([r["hd95_mm"] for r in mine])
        rows.append({
            "arm": arm, "seeds": len(mine), "dice_mean": float(dices.mean()), "dice_std": float(dices.std()),
            "hd95_mean_mm": float(hds.mean()), "hd95_std_mm": float(hds.std()),
        })
    return rows


def write_results(out: Path, results: list[dict], plan: ExperimentPlan, notes: list[str]) -> list[Path]:
    """results.csv and per_seed.csv, results.md (table + notes) and results.png (bar plots)."""
    summary = summarize(results)
    columns = ["arm", "seeds", "dice_mean", "dice_std", "hd95_mean_mm", "hd95_std_mm"]
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()} for row in summary)
    with open(out / "per_seed.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["arm", "seed", "dice", "hd95_mm", "best_val_dice", "best_step"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    lines = [
        "# Segmentation with synthetic tumors: phantom experiment", "",
        f"{plan.train_cases} real training cases (tumors {plan.train_tumor_mm[0]:g}-{plan.train_tumor_mm[1]:g} mm), "
        f"{plan.test_cases} test cases (tumors {plan.test_tumor_mm[0]:g}-{plan.test_tumor_mm[1]:g} mm), grid "
        f"{'x'.join(map(str, plan.shape))}; {plan.steps} steps of {plan.batch_size} patches per run; synthetic arms: "
        f"{plan.synthetic_cases} synthetic cases, {plan.ratio:.0%} of each batch.", "",
        "| arm | seeds | Dice (mean ± std) | HD95 mm (mean ± std) |", "|---|---|---|---|",
        *(f"| {r['arm']} | {r['seeds']} | {r['dice_mean']:.3f} ± {r['dice_std']:.3f} | "
          f"{r['hd95_mean_mm']:.1f} ± {r['hd95_std_mm']:.1f} |" for r in summary),
        "", *(f"- {note}" for note in notes),
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return [out / "results.csv", out / "per_seed.csv", out / "results.md", plot_results(out / "results.png", results)]


def plot_results(path: Path, results: list[dict]) -> Path:
    """Two panels (Dice, HD95): mean ± std per arm as bars, each seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(results)
    arms = [r["arm"] for r in summary]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, key, label in ((axes[0], "dice", "test Dice"), (axes[1], "hd95_mm", "test HD95 (mm)")):
        means = [np.mean([r[key] for r in results if r["arm"] == a]) for a in arms]
        stds = [np.std([r[key] for r in results if r["arm"] == a]) for a in arms]
        ax.bar(arms, means, yerr=stds, capsize=4, color=["#8c8c8c", "#4c72b0", "#dd8452"][: len(arms)])
        for k, arm in enumerate(arms):
            values = [r[key] for r in results if r["arm"] == arm]
            ax.scatter([k] * len(values), values, color="black", s=12, zorder=3)
        ax.set_ylabel(label)
    axes[0].set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------- main


def _check_plan(out: Path, plan: ExperimentPlan) -> None:
    path = out / PLAN_FILE
    if path.is_file():
        saved = ExperimentPlan.from_dict(json.loads(path.read_text()))
        if saved != plan:
            differing = [f.name for f in fields(plan) if getattr(saved, f.name) != getattr(plan, f.name)]
            raise SynBTError(f"{out} holds an experiment with other settings (differing: {', '.join(differing)}); "
                             "use the same settings or another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise SynBTError(f"output folder {out} is not empty and holds no {PLAN_FILE}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan.to_dict(), indent=1) + "\n")


def available_arms(arms, bundle: str | None, log: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """The arms that can run, and notes on those skipped (the diffusion arm needs a model bundle)."""
    from .bundle import default_bundle_path

    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SynBTError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    runnable, notes = [], []
    for arm in dict.fromkeys(arms):
        if arm == "diffusion":
            path = Path(bundle) if bundle else default_bundle_path()
            if not (path / "config.json").is_file():
                note = f"SynBT (diffusion) arm skipped: no model bundle at {path}; train one or pass --bundle DIR"
                log(note)
                notes.append(note)
                continue
        runnable.append(arm)
    return runnable, notes


def run_experiment(
    out: str | Path, plan: ExperimentPlan | None = None, seeds=(0, 1, 2), arms=ARMS, bundle: str | None = None,
    device: str | None = None, verbose: bool = True, log: Callable[[str], None] = print,
) -> list[dict]:
    """Run (or resume) the experiment in ``out``; returns the summary rows (also written to results.*)."""
    plan = plan or ExperimentPlan.default()
    out = Path(out)
    seeds = [int(s) for s in dict.fromkeys(seeds)]
    if not seeds:
        raise SynBTError("give at least one seed")
    runnable, notes = available_arms(arms, bundle, log)
    if not runnable:
        raise SynBTError("no arm left to run")
    _check_plan(out, plan)
    dirs = make_cohort(plan, out / "cohort", log)
    results = []
    for arm in runnable:
        synthetic_dir = None
        if arm != "real":
            log(f"synthetic cases for the {arm} arm")
            synthetic_dir = make_synthetic(plan, arm, dirs["train"], out / "synthetic" / arm, bundle)
        for seed in seeds:
            log(f"arm {arm}, seed {seed}")
            metrics = run_arm(plan, arm, seed, dirs, synthetic_dir, out / "runs" / arm / f"seed_{seed}", device, verbose)
            log(f"arm {arm}, seed {seed}: test Dice {metrics['dice']:.3f}, HD95 {metrics['hd95_mm']:.1f} mm")
            results.append(metrics)
    write_results(out, results, plan, notes)
    return summarize(results)


def plan_with_overrides(plan: ExperimentPlan, **overrides) -> ExperimentPlan:
    """``plan`` with the given settings replaced (None values are ignored)."""
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})
