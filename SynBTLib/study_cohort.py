"""The study's phantom cohort, its synthetic training sets and its lesion-wise evaluation.

Every real split is drawn the same way (no engineered size gap): each case holds
``lesions_per_case`` masses whose asked diameters are spread evenly in log size over the split's
range (stratified, then shuffled), and the phantom shrinks a mass that does not fit its breast,
so lesions are binned by the diameter the phantom reports. Only ``train_small`` (the size-shift
arms' training set) is drawn from a narrower range.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

REAL_SPLITS = ("train", "train_small", "val", "test")


def _stratified_log_sizes(rng: np.random.Generator, count: int, size_mm) -> list[float]:
    low, high = np.log(float(size_mm[0])), np.log(float(size_mm[1]))
    u = (np.arange(count) + rng.random(count)) / count
    sizes = np.exp(low + u * (high - low))
    rng.shuffle(sizes)
    return [round(float(s), 2) for s in sizes]


def cohort_plan(plan) -> dict[str, list[dict]]:
    """Per split, each case's phantom seed and asked lesion diameters (fixed by plan.cohort_seed)."""
    rng = np.random.default_rng(plan.cohort_seed)
    counts = {"train": plan.train_cases, "train_small": plan.train_cases, "val": plan.val_cases,
              "test": plan.test_cases}
    ranges = {"train": plan.size_mm, "train_small": plan.gap_size_mm, "val": plan.size_mm, "test": plan.size_mm}
    cohort, used = {}, set()
    for split in REAL_SPLITS:
        sizes = _stratified_log_sizes(rng, counts[split] * plan.lesions_per_case, ranges[split])
        cases = []
        for k in range(counts[split]):
            seed = int(rng.integers(2**31))
            while seed in used:
                seed = int(rng.integers(2**31))
            used.add(seed)
            cases.append({"case_id": f"{split}_{k:03d}", "seed": seed,
                          "asked_mm": sizes[k * plan.lesions_per_case:(k + 1) * plan.lesions_per_case]})
        cohort[split] = cases
    return cohort


def make_cohort(plan, root: Path, splits=REAL_SPLITS, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Write the phantom cases of ``splits`` under root/<split>/<case> (cases with a case.json are kept)."""
    from tqdm.auto import tqdm

    from .phantom import make_phantom, write_phantom

    cohort = cohort_plan(plan)
    todo = [(s, c) for s in splits for c in cohort[s] if not (root / s / c["case_id"] / "case.json").is_file()]
    for split, item in tqdm(todo, desc="phantom cohort", unit="case", disable=not todo):
        phantom = make_phantom(seed=item["seed"], shape=plan.shape, preset=plan.phantom_preset, phases=plan.phases,
                               tumors=len(item["asked_mm"]), tumor_diameters_mm=list(item["asked_mm"]),
                               lesion_types="mass")
        write_phantom(phantom, root / split / item["case_id"], overwrite=True, montage=False)
    return {s: root / s for s in splits}


def lesion_table(case_dir: Path) -> list[dict]:
    """The lesions of a phantom case as its case.json describes them (those the phantom could place)."""
    meta = json.loads((Path(case_dir) / "case.json").read_text())
    return [
        {"lesion": k, "diameter_mm": float(t["diameter_mm"]), "center_mm": [float(v) for v in t["center_mm"]],
         "kind": t.get("kind"), "kinetics": t.get("kinetics"), "necrotic": bool(t.get("necrotic")),
         "voxels": int(t.get("voxels", 0))}
        for k, t in enumerate(meta.get("tumors", [])) if int(t.get("voxels", 1)) > 0
    ]


def lesion_instances(tumor: np.ndarray, geometry, centers_mm) -> np.ndarray:
    """Instance map (0 background, k + 1 lesion k): each connected part of the tumor label goes to the
    lesion whose centre is nearest its centroid (a spiculated mass may leave a detached spicule)."""
    parts, count = ndimage.label(tumor > 0)
    instances = np.zeros(tumor.shape, np.uint8)
    if not count or not len(centers_mm):
        return instances
    centers = np.asarray(centers_mm, dtype=np.float64)
    centroids = ndimage.center_of_mass(np.ones_like(parts), parts, range(1, count + 1))
    for part, zyx in enumerate(centroids, start=1):
        point = np.asarray(geometry.index_to_physical(np.asarray(zyx[::-1], dtype=np.float64)))
        instances[parts == part] = int(np.argmin(np.linalg.norm(centers - point, axis=1))) + 1
    return instances


def lesion_dice(prediction: np.ndarray, instances: np.ndarray, spacing_zyx, margin_mm: float) -> tuple[dict[int, float], int]:
    """Lesion-wise Dice and the predicted voxels outside every lesion's region.

    Lesion k's region is the voxels nearer to it than to any other lesion and within ``margin_mm``
    of it; its Dice is 2 |P n L_k| / (|P n R_k| + |L_k|), so false positives next to a lesion count
    against it and those far from every lesion are reported apart. Returns {k: Dice} for the instance
    values k present and the count of predicted voxels outside every region."""
    prediction = prediction > 0
    labelled = instances > 0
    distance, nearest = ndimage.distance_transform_edt(~labelled, sampling=spacing_zyx, return_indices=True)
    owner = instances[tuple(nearest)]
    owner[distance > margin_mm] = 0
    dices = {}
    for k in range(1, int(instances.max()) + 1):
        lesion = instances == k
        if not lesion.any():
            continue
        hit = np.count_nonzero(prediction & lesion)
        dices[k] = 2.0 * hit / (np.count_nonzero(prediction & (owner == k)) + np.count_nonzero(lesion))
    return dices, int(np.count_nonzero(prediction & (owner == 0)))


def make_synthetic(plan, method: str, source_dir: Path, out: Path, bundle: str | None) -> Path:
    """One offline synthetic training set (nnU-Net layout) made from the cases in ``source_dir``.

    Every offline arm uses the same export seed, count and size range, so the handcrafted and the
    SynBT sets made from one source set hold tumors of the same sizes, kinds and places."""
    from .export import ExportSettings, export_dataset

    settings = ExportSettings(
        num_cases=plan.synthetic_cases, format="nnunet", method=method, tumors_per_case=plan.synthetic_tumors_per_case,
        size_mm=plan.synthetic_size_mm, seed=plan.cohort_seed, bundle=bundle if method == "diffusion" else None,
        steps=plan.synthesis_steps if method == "diffusion" else None,
    )
    export_dataset(source_dir, out, settings, log=lambda message: None)
    return out


def synthetic_tumors(out: Path) -> list[dict]:
    """(case, diameter, kind, centre) of every tumor of an offline synthetic set, from its provenance."""
    rows = []
    for path in sorted((Path(out) / "provenance").glob("*.json")):
        record = json.loads(path.read_text())
        rows += [{"case": record["case"], "diameter_mm": round(float(t["diameter_mm"]), 3), "kind": t["kind"],
                  "center_mm": [round(float(v), 2) for v in t["center_mm"]]} for t in record["tumors"]]
    return rows


def evaluate_model(model_dir: Path, test_dir: Path, margin_mm: float, device: str = "cpu") -> tuple[list[dict], list[dict]]:
    """Lesion rows (case, lesion, diameter_mm, dice) and case rows (case, dice, fp_ml) of a model on test_dir."""
    from .io import read_case, read_dataset, read_mask
    from .metrics import dice
    from .training.segmentation import load_model

    model = load_model(model_dir, device)
    lesions, cases = [], []
    for ref in read_dataset(test_dir):
        case = read_case(list(ref.phase_paths))
        truth = read_mask(ref.label_path, case.geometry)
        prediction = model.predict(case)
        table = lesion_table(Path(ref.phase_paths[0]).parent)
        instances = lesion_instances(truth, case.geometry, [t["center_mm"] for t in table])
        spacing = tuple(case.geometry.spacing[::-1])
        dices, outside = lesion_dice(prediction, instances, spacing, margin_mm)
        for k, item in enumerate(table, start=1):
            if k in dices:  # a lesion the label does not hold (all of it nearer another centre) is left out
                lesions.append({"case": ref.case_id, "lesion": item["lesion"], "diameter_mm": item["diameter_mm"],
                                "dice": float(dices[k])})
        cases.append({"case": ref.case_id, "dice": dice(prediction, truth),
                      "fp_ml": outside * float(np.prod(spacing)) / 1000.0})
    return lesions, cases
