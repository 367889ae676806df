"""`synbt evaluate`: Dice, HD95 and volume error of predicted tumor labels against the truth, per case."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..errors import SynBTError
from ._shared import check_output

COLUMNS = ("case", "dice", "hd95_mm", "volume_error_ml", "pred_volume_ml", "truth_volume_ml")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="compare predicted tumor labels with the truth: Dice, HD95 (mm), volume error",
        description="Label files are matched by case id (file name without extension, or the data set's case id). Writes metrics.csv, "
        "summary.json and metrics.png into --out. Nonzero voxels (or those equal to --label) are tumor.",
    )
    p.add_argument("--pred", required=True, metavar="DIR",
                   help="folder of predicted label images, <case id>.nii.gz (what `synbt segment` writes)")
    p.add_argument("--truth", required=True, metavar="DIR",
                   help="folder of ground-truth label images named the same, or the data set itself (case folders "
                   "with tumor_labels.nii.gz, nnU-Net labelsTr/, MAMA-MIA)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--label", type=int, metavar="V", help="tumor label value (default: any nonzero value)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty --out folder")
    p.set_defaults(func=run)


def label_files(folder, what: str = "--truth") -> dict[str, Path]:
    """Label images by case id: the image files of a flat folder (case id = file name without its
    extension, as `synbt segment` writes them), else the tumor labels of a data set folder (SynBT case
    folders with tumor_labels.nii.gz, nnU-Net labelsTr/, MAMA-MIA segmentations/expert/)."""
    from ..datasets import IMAGE_EXTENSIONS, read_dataset, strip_image_extension

    folder = Path(folder)
    if not folder.is_dir():
        raise SynBTError(f"{what} folder not found: {folder}")
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_EXTENSIONS):
            case_id = strip_image_extension(path.name)
            if case_id in files:
                raise SynBTError(f"{folder} holds two label files for case {case_id}: {files[case_id].name}, {path.name}")
            files[case_id] = path
    if files:
        return files
    try:
        files = {ref.case_id: ref.label_path for ref in read_dataset(folder) if ref.label_path is not None}
    except SynBTError:
        files = {}
    if not files:
        raise SynBTError(
            f"{what} {folder} holds no label images; accepted: a folder of label files named <case id>"
            f"{IMAGE_EXTENSIONS[0]} (any of {', '.join(IMAGE_EXTENSIONS)}), or a data set with tumor labels "
            "(case folders with tumor_labels.nii.gz, nnU-Net labelsTr/, MAMA-MIA segmentations/expert/)"
        )
    return files


def match_cases(pred_dir, truth_dir) -> list[tuple[str, Path, Path]]:
    """(case id, prediction, truth) for every case; refuses unmatched files on either side, listing them."""
    pred, truth = label_files(pred_dir, "--pred"), label_files(truth_dir, "--truth")
    problems = []
    if no_pred := sorted(truth.keys() - pred.keys()):
        problems.append(f"no prediction for {', '.join(no_pred)}")
    if no_truth := sorted(pred.keys() - truth.keys()):
        problems.append(f"no truth for {', '.join(no_truth)}")
    if problems:
        raise SynBTError("; ".join(problems))
    return [(case_id, pred[case_id], truth[case_id]) for case_id in sorted(truth)]


def _binary(values: np.ndarray, label: int | None) -> np.ndarray:
    return (values != 0) if label is None else (values == label)


def evaluate_pairs(pairs, label: int | None = None) -> list[dict]:
    """Per-case metrics rows; refuses pairs whose grids differ (all listed at once)."""
    from tqdm import tqdm

    from .. import metrics
    from ..io import read_image

    rows, mismatched = [], []
    for case_id, pred_path, truth_path in tqdm(pairs, desc="evaluate", unit="case", disable=None):
        pred, pred_geometry = read_image(pred_path)
        truth, geometry = read_image(truth_path)
        if not pred_geometry.matches(geometry):
            mismatched.append(f"{case_id} (prediction {pred_geometry.describe()}, truth {geometry.describe()})")
            continue
        pred, truth = _binary(pred, label), _binary(truth, label)
        rows.append({
            "case": case_id,
            "dice": metrics.dice(pred, truth),
            "hd95_mm": metrics.hd95(pred, truth, geometry.spacing),
            "volume_error_ml": metrics.volume_error_ml(pred, truth, geometry.spacing),
            "pred_volume_ml": metrics.volume_ml(pred, geometry.spacing),
            "truth_volume_ml": metrics.volume_ml(truth, geometry.spacing),
        })
    if mismatched:
        raise SynBTError(f"prediction and truth are on different grids for: {'; '.join(mismatched)}")
    return rows


def summarize(rows: list[dict]) -> dict:
    """Mean and std of each metric over the cases; infinite HD95 (one mask empty) is counted, not averaged."""
    summary: dict = {"cases": len(rows)}
    for key in ("dice", "hd95_mm", "volume_error_ml"):
        values = np.asarray([row[key] for row in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[key] = {
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std()) if finite.size else None,
            "not_finite": int(values.size - finite.size),
        }
    return summary


def plot(rows: list[dict], path: Path) -> Path:
    """Per-case bars of Dice and HD95."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["case"] for row in rows]
    hd = [row["hd95_mm"] if np.isfinite(row["hd95_mm"]) else np.nan for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(6.0, 0.4 * len(rows) + 4), 3.5))
    left.bar(names, [row["dice"] for row in rows], color="tab:blue")
    left.set(ylim=(0, 1), ylabel="Dice", title="Dice per case")
    right.bar(names, hd, color="tab:orange")
    right.set(ylabel="HD95 (mm)", title="HD95 per case")  # a gap: one mask empty (infinite)
    right.set_ylim(bottom=0)
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=90, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(args) -> int:
    from ..io import prepare_output_dir

    check_output(args.out, args.overwrite, [args.pred, args.truth])
    pairs = match_cases(args.pred, args.truth)
    out = prepare_output_dir(args.out, overwrite=args.overwrite, inputs=[args.pred, args.truth])
    rows = evaluate_pairs(pairs, args.label)
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, out / "metrics.png")
    for key in ("dice", "hd95_mm", "volume_error_ml"):
        entry = summary[key]
        text = "n/a" if entry["mean"] is None else f"{entry['mean']:.4f} +- {entry['std']:.4f}"
        extra = f" ({entry['not_finite']} infinite)" if entry["not_finite"] else ""
        print(f"{key:16s} {text}{extra}")
    print(f"{len(rows)} cases; metrics.csv, summary.json and metrics.png in {out}")
    return 0
