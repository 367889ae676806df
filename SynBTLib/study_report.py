"""The study's results folder: per-lesion and per-case CSV, summary.json / summary.md with bootstrap
intervals (overall and by size bin), and results.png."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .study_stats import (
    MDD_FACTOR, arm_mean, bin_labels, paired_difference, paired_matrix, projected_se, size_bin, variance_components,
)


def lesion_rows(results: list[dict], edges_mm) -> list[dict]:
    return [{"arm": m["arm"], "seed": m["seed"], "case": r["case"], "lesion": r["lesion"],
             "diameter_mm": r["diameter_mm"], "size_bin": size_bin(r["diameter_mm"], edges_mm), "dice": r["dice"]}
            for m in results for r in m["lesions"]]


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    return path


def summarize(results: list[dict], plan, comparisons, projection, notes=(), synthetic_sizes=None) -> dict:
    """Per arm and per comparison (pairs (a, b): a - b): mean with 95 % interval, SE and detectable difference,
    overall and by bin; ``projection`` = (seeds, test cases) the detectable difference is also projected to."""
    rows = lesion_rows(results, plan.size_bins_mm)
    # the whole case as one unit: its Dice counts false positives anywhere in the volume
    case_rows = [{"arm": m["arm"], "seed": m["seed"], "case": c["case"], "lesion": "case", "dice": c["dice"],
                  "fp_ml": c["fp_ml"]} for m in results for c in m["cases"]]
    arms = list(dict.fromkeys(m["arm"] for m in results))
    bins = bin_labels(plan.size_bins_mm)
    first = [r for r in rows if r["arm"] == arms[0] and r["seed"] == min(m["seed"] for m in results if m["arm"] == arms[0])]
    in_bin = {b: [(str(r["case"]), str(r["lesion"])) for r in first if r["size_bin"] == b] for b in bins}
    boot = {"n_boot": plan.bootstrap, "seed": plan.cohort_seed}

    def by_bin(fn, *args):
        return {b: (i.to_dict() if (i := fn(rows, *args, lesions=keys, **boot)) else None) for b, keys in in_bin.items()}

    summary = {
        "preset": plan.preset, "plan": plan.to_dict(), "notes": list(notes),
        "test": {"cases": len({r["case"] for r in first}), "lesions": len(first),
                 "lesions_by_bin": {b: len(k) for b, k in in_bin.items()},
                 "diameter_mm": _spread([r["diameter_mm"] for r in first])},
        "synthetic_sets": {name: {"tumors": len(t), "diameter_mm": _spread([x["diameter_mm"] for x in t])}
                           for name, t in (synthetic_sizes or {}).items()},
        "unit_minutes": {a: round(float(np.mean([m.get("seconds", 0) for m in results if m["arm"] == a])) / 60, 2)
                         for a in arms},
        "arms": {a: {"seeds": sorted(m["seed"] for m in results if m["arm"] == a),
                     "lesion_dice": arm_mean(rows, a, **boot).to_dict(), "by_bin": by_bin(arm_mean, a),
                     "case_dice": arm_mean(case_rows, a, **boot).to_dict(),
                     "fp_ml": arm_mean(case_rows, a, key="fp_ml", **boot).to_dict()}
                 for a in arms},
        "comparisons": [],
    }
    summary["projection"] = {"seeds": projection[0], "test_cases": projection[1]}
    for a, b in comparisons:
        if a in arms and b in arms and (overall := paired_difference(rows, a, b, **boot)):
            components = variance_components(*paired_matrix(rows, a, b))
            summary["comparisons"].append({
                "a": a, "b": b, "difference": overall.to_dict(), "by_bin": by_bin(paired_difference, a, b),
                "case_dice_difference": paired_difference(case_rows, a, b, **boot).to_dict(),
                "fp_ml_difference": paired_difference(case_rows, a, b, key="fp_ml", **boot).to_dict(),
                "variance_components": components,
                # what the same variances would give with the projection's seeds and test cases
                "projected_mdd80": MDD_FACTOR * projected_se(components, *projection),
            })
    return summary


def _spread(values) -> dict:
    if not values:
        return {}
    v = np.asarray(values, dtype=float)
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


def _fmt(i: dict | None, signed: bool = False) -> str:
    if not i:
        return "-"
    sign = "+" if signed else ""
    return f"{i['mean']:{sign}.3f} [{i['ci95'][0]:{sign}.3f}, {i['ci95'][1]:{sign}.3f}]"


def _fmt_ml(i: dict | None, signed: bool = False) -> str:
    if not i:
        return "-"
    sign = "+" if signed else ""
    star = " *" if signed and i["excludes_zero"] else ""
    return f"{i['mean']:{sign}.2f} [{i['ci95'][0]:{sign}.2f}, {i['ci95'][1]:{sign}.2f}]{star}"


def markdown(summary: dict) -> str:
    plan, test = summary["plan"], summary["test"]
    bins = list(test["lesions_by_bin"])
    lines = [
        f"# Segmentation study, preset {summary['preset']}", "",
        f"{test['lesions']} test lesions in {test['cases']} phantom cases ({plan['phantom_preset']} grid), diameters "
        f"{test['diameter_mm'].get('min', 0):.0f}-{test['diameter_mm'].get('max', 0):.0f} mm (median "
        f"{test['diameter_mm'].get('median', 0):.0f}); lesions per bin: "
        + ", ".join(f"{b} mm: {n}" for b, n in test["lesions_by_bin"].items()) + ".",
        f"{plan['train_cases']} real training cases ({plan['lesions_per_case']} lesions each, "
        f"{plan['size_mm'][0]:g}-{plan['size_mm'][1]:g} mm asked; size-shift arms: {plan['gap_size_mm'][0]:g}-"
        f"{plan['gap_size_mm'][1]:g} mm), {plan['val_cases']} validation cases. Synthetic arms: "
        f"{plan['synthetic_cases']} cases x {plan['synthetic_tumors_per_case']} tumors of "
        f"{plan['synthetic_size_mm'][0]:g}-{plan['synthetic_size_mm'][1]:g} mm, {plan['ratio']:.0%} of each batch.",
        f"Network: {plan['network']} {plan['channels']}, {plan['steps']} steps of {plan['batch_size']} patches "
        f"{plan['patch_size']}; seeds {', '.join(map(str, sorted({s for a in summary['arms'].values() for s in a['seeds']})))}.",
        "Lesion-wise Dice (false positives within "
        f"{plan['lesion_margin_mm']:g} mm of a lesion count against it); 95 % intervals: crossed bootstrap over "
        f"training seeds and test cases ({plan['bootstrap']} resamples); MDD = smallest difference detectable "
        "with 80 % power (2.8 x SE).", "",
        "## Arms", "",
        "| arm | seeds | lesion Dice [95 % CI] | " + " | ".join(f"{b} mm" for b in bins) + " | case Dice | FP far from lesions (mL) |",
        "|---|---|---|" + "---|" * len(bins) + "---|---|",
    ]
    for arm, s in summary["arms"].items():
        lines.append(f"| {arm} | {len(s['seeds'])} | {_fmt(s['lesion_dice'])} | "
                     + " | ".join(_fmt(s["by_bin"][b]) for b in bins) + f" | {_fmt(s['case_dice'])} | {_fmt_ml(s['fp_ml'])} |")
    lines += ["", "## Paired differences (A - B, lesion Dice; last columns: case Dice, FP far from lesions in mL)", "",
              "| A - B | difference [95 % CI] | SE | MDD | " + " | ".join(f"{b} mm" for b in bins)
              + " | case Dice | FP far (mL) |",
              "|---|---|---|---|" + "---|" * len(bins) + "---|---|"]
    for c in summary["comparisons"]:
        d = c["difference"]
        lines.append(f"| {c['a']} - {c['b']} | {_fmt(d, True)}{' *' if d['excludes_zero'] else ''} | {d['se']:.3f} | "
                     f"{d['mdd80']:.3f} | " + " | ".join(_fmt(c["by_bin"][b], True) for b in bins)
                     + f" | {_fmt(c['case_dice_difference'], True)} | {_fmt_ml(c.get('fp_ml_difference'), True)} |")
    lines += ["", "\\* the interval excludes zero. MDD: from the bootstrap SE of this run; the same variances "
              f"(seed, case, residual) with {summary['projection']['seeds']} seeds and {summary['projection']['test_cases']} "
              "test cases (the paper preset) would detect: "
              + "; ".join(f"{c['a']} - {c['b']} {c['projected_mdd80']:.3f}" for c in summary["comparisons"]) + "."]
    if summary["synthetic_sets"]:
        lines += ["", "Synthetic sets: " + "; ".join(
            f"{n}: {s['tumors']} tumors, {s['diameter_mm'].get('min', 0):.1f}-{s['diameter_mm'].get('max', 0):.1f} mm"
            for n, s in summary["synthetic_sets"].items()) + "."]
    lines += [*(f"- {n}" for n in summary["notes"])]
    return "\n".join(lines) + "\n"


def plot(path: Path, summary: dict) -> Path:
    """Arm means, paired differences (both with 95 % intervals) and Dice by size bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary["arms"])
    bins = list(summary["test"]["lesions_by_bin"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    means = [summary["arms"][a]["lesion_dice"] for a in arms]
    axes[0].errorbar(range(len(arms)), [m["mean"] for m in means], capsize=4, fmt="o",
                     yerr=np.array([[m["mean"] - m["ci95"][0], m["ci95"][1] - m["mean"]] for m in means]).T)
    axes[0].set_xticks(range(len(arms)), arms, rotation=30, ha="right")
    axes[0].set_ylabel("lesion Dice (95 % CI)")
    comps = summary["comparisons"]
    if comps:
        d = [c["difference"] for c in comps]
        axes[1].errorbar([x["mean"] for x in d], range(len(d)), capsize=4, fmt="o",
                         xerr=np.array([[x["mean"] - x["ci95"][0], x["ci95"][1] - x["mean"]] for x in d]).T)
        axes[1].set_yticks(range(len(d)), [f"{c['a']} - {c['b']}" for c in comps])
        axes[1].axvline(0, color="grey", lw=1)
        axes[1].set_xlabel("paired difference in lesion Dice (95 % CI)")
        axes[1].invert_yaxis()
    width = 0.8 / max(1, len(arms))
    for k, arm in enumerate(arms):
        vals = [summary["arms"][arm]["by_bin"][b] for b in bins]
        xs = [j + (k - (len(arms) - 1) / 2) * width for j in range(len(bins))]
        ok = [(x, v) for x, v in zip(xs, vals) if v]
        if ok:
            axes[2].errorbar([x for x, _ in ok], [v["mean"] for _, v in ok], capsize=2, fmt="o", ms=3, label=arm,
                             yerr=np.array([[v["mean"] - v["ci95"][0], v["ci95"][1] - v["mean"]] for _, v in ok]).T)
    axes[2].set_xticks(range(len(bins)), [f"{b} mm\n(n={summary['test']['lesions_by_bin'][b]})" for b in bins])
    axes[2].set_ylabel("lesion Dice by size bin")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_results(folder: Path, results: list[dict], plan, comparisons, projection, notes=(),
                  synthetic_sizes=None) -> dict:
    """Write per_lesion.csv, per_case.csv, summary.json, summary.md and results.png into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(folder / "per_lesion.csv", lesion_rows(results, plan.size_bins_mm),
               ["arm", "seed", "case", "lesion", "diameter_mm", "size_bin", "dice"])
    _write_csv(folder / "per_case.csv", [{"arm": m["arm"], "seed": m["seed"], **c} for m in results for c in m["cases"]],
               ["arm", "seed", "case", "dice", "fp_ml"])
    summary = summarize(results, plan, comparisons, projection, notes, synthetic_sizes)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (folder / "summary.md").write_text(markdown(summary))
    plot(folder / "results.png", summary)
    return summary
