"""Does a bundle trained with kinetic classes make the curve type it is asked for?

For phantom cases (the realism study's seeds), every tumor mask is synthesized once per curve type
(`pipeline(..., kinetics=T)`); the tumor's mean signal per phase is classified with the BI-RADS
rule (kinetics.classify_curve: late change from the first to the last post-contrast phase above
+10 % persistent, below -10 % washout). Prints the confusion table (asked vs made) and the mean
late change per asked type next to the phantom's own tumors of that type, and writes both as CSV.

    python bench/kinetic_control.py --bundle runs/diffusion/bundle --n 8
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def late_change(curve: np.ndarray) -> float:
    """(last - first post-contrast) / first post-contrast, as classify_curve uses it."""
    return float((curve[-1] - curve[1]) / max(curve[1], 1e-12))


def main(argv=None) -> int:
    import torch

    from SynBTLib.errors import SynBTError
    from SynBTLib.kinetics import classify_curve
    from SynBTLib.pipeline import SynthesisPipeline
    from SynBTLib.realism import phantom_study_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle trained with kinetic_conditioning")
    parser.add_argument("--n", type=int, default=8, help="phantom cases (default 8)")
    parser.add_argument("--first-seed", type=int, default=100_000)
    parser.add_argument("--shape", type=int, nargs=3, default=(192, 192, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's 30)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "kinetic_control")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        pipeline = SynthesisPipeline.from_bundle(args.bundle)
    except SynBTError as error:
        parser.error(str(error))
    types = pipeline.kinetic_choices
    if not types:
        parser.error(f"bundle {args.bundle} was trained without kinetic classes: it takes no curve type")

    rows = []
    for seed in range(args.first_seed, args.first_seed + args.n):
        study = phantom_study_case(seed, shape=tuple(args.shape))
        inside = study.mask > 0
        real = study.real.phases[:, inside].astype(np.float64).mean(1)
        rows.append({"seed": seed, "source": "phantom", "asked": classify_curve(real), "made": classify_curve(real),
                     "late_change": late_change(real)})
        for asked in types:
            made = pipeline(study.background, study.mask, seed=seed, steps=args.steps, kinetics=asked)
            curve = made.phases[:, inside].astype(np.float64).mean(1)
            rows.append({"seed": seed, "source": "diffusion", "asked": asked, "made": classify_curve(curve),
                         "late_change": late_change(curve)})
        print(f"seed {seed}: phantom tumor {rows[-len(types) - 1]['made']}, made "
              + ", ".join(f"{r['asked']}->{r['made']}" for r in rows[-len(types):]), flush=True)

    synthetic = [r for r in rows if r["source"] == "diffusion"]
    print(f"\nasked \\ made  " + "  ".join(f"{t:>10s}" for t in types) + "   late change (synthetic | phantom tumors of that type)")
    summary = []
    for asked in types:
        made = [r["made"] for r in synthetic if r["asked"] == asked]
        counts = [made.count(t) for t in types]
        changes = [r["late_change"] for r in synthetic if r["asked"] == asked]
        real = [r["late_change"] for r in rows if r["source"] == "phantom" and r["asked"] == asked]
        real_text = f"{np.mean(real):+.3f} (n={len(real)})" if real else "none"
        print(f"{asked:13s} " + "  ".join(f"{c:10d}" for c in counts) + f"   {np.mean(changes):+.3f} | {real_text}")
        summary.append({"asked": asked, **{f"made_{t}": c for t, c in zip(types, counts)},
                        "late_change_synthetic": float(np.mean(changes)),
                        "late_change_phantom": float(np.mean(real)) if real else float("nan")})
    hits = sum(r["asked"] == r["made"] for r in synthetic)
    print(f"made as asked: {hits} of {len(synthetic)}")

    args.out.mkdir(parents=True, exist_ok=True)
    for name, table in (("kinetic_control_tumors.csv", rows), ("kinetic_control.csv", summary)):
        with open(args.out / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    print(f"wrote {args.out / 'kinetic_control.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
