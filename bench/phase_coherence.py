"""Do a synthetic tumor's DCE phases share their voxel-scale texture, as a real tumor's do?

    python bench/phase_coherence.py [--bundle B] [--n 10] [--first-seed 500000] [--out bench/results]

In DCE-MRI a tumor's fine texture comes from the spatial spread of its perfusion, so the same
pattern shows in every post-contrast phase. For N realism study cases (bench/realism.py: a phantom
tumor and its tumor-free twin) this measures, inside the tumor eroded by one voxel, the 3x3x3
high-pass residual of each phase (the voxel minus its 27-voxel mean): its spread, and its
correlation between phases, for the real tumor, the tumor the bundle synthesizes into the same mask
of the twin, and the real tumor through the autoencoder alone (control). Prints the means over the
tumors and writes phase_coherence.csv (one row per tumor and source).
"""
from __future__ import annotations

import argparse
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, print_table, write_csv  # noqa: E402


def residual_moments(phases: np.ndarray, inside: np.ndarray) -> dict[str, float]:
    """Spread of each phase's 3x3x3 high-pass residual inside ``inside``, and their pairwise correlations."""
    from scipy import ndimage

    residuals = [(p - ndimage.uniform_filter(p, 3))[inside] for p in phases.astype(np.float64)]
    row = {f"hp_sd_{k}": float(r.std()) for k, r in enumerate(residuals)}
    for a, b in combinations(range(len(residuals)), 2):
        row[f"corr_{a}_{b}"] = float(np.corrcoef(residuals[a], residuals[b])[0, 1])
    return row


def main(argv=None) -> int:
    import torch
    from scipy import ndimage
    from tqdm import tqdm

    from SynBTLib.bundle import default_bundle_path
    from SynBTLib.pipeline import SynthesisPipeline
    from SynBTLib.realism import phantom_study_case

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=None, help="diffusion bundle (default: the shipped one)")
    parser.add_argument("--n", type=int, default=10, help="study cases")
    parser.add_argument("--first-seed", type=int, default=500000)
    parser.add_argument("--shape", type=int, nargs=3, default=(192, 192, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipeline = SynthesisPipeline.from_bundle(args.bundle or default_bundle_path())
    rows = []
    for seed in tqdm(range(args.first_seed, args.first_seed + args.n), desc="coherence", unit="case"):
        study = phantom_study_case(seed, shape=tuple(args.shape))
        inside = ndimage.binary_erosion(study.mask > 0)
        if inside.sum() < 27:  # too small for a voxel-scale texture
            continue
        sources = {"real": study.real, "diffusion": pipeline(study.background, study.mask, seed=seed, steps=args.steps),
                   "autoencoder-control": pipeline.reconstruct(study.real, study.mask, seed=seed)}
        for name, case in sources.items():
            rows.append({"seed": seed, "source": name, "voxels": int(inside.sum()),
                         **residual_moments(case.phases, inside)})
    if not rows:
        print(f"no tumor of the {args.n} cases is large enough (27 voxels after erosion); use a larger --shape",
              file=sys.stderr)
        return 2
    keys = [k for k in rows[0] if k.startswith(("corr_", "hp_sd_"))]
    summary = [{"source": name, "tumors": sum(r["source"] == name for r in rows),
                **{k: round(float(np.mean([r[k] for r in rows if r["source"] == name])), 3) for k in keys}}
               for name in ("real", "diffusion", "autoencoder-control")]
    print_table(summary, list(summary[0]))
    path = write_csv(rows, list(rows[0]), Path(args.out) / "phase_coherence.csv")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
