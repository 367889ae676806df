"""`synbt phantom` (one synthetic breast DCE-MRI case) and `synbt phantom-cohort` (a varied set)."""
from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from ..errors import SynBTError
from ._shared import check_output, seed_help

DENSITIES = ("a", "b", "c", "d")


PRESETS = ("legacy", "small", "bundle", "clinical")


def _add_grid_options(parser) -> None:
    parser.add_argument("--preset", choices=PRESETS, default="legacy",
                        help="legacy: the original phantom (128x128x48, 3 phases 90 s apart); small / bundle / clinical: "
                             "phantom 2 (published density, BPE, curve-type and lesion mixes, 3-6 phases at clinical "
                             "times, 1.5/3 T, fat-sat or not, artefacts) on a 2.7 / 1.8 / 0.7 mm grid (default legacy)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="grid size in voxels (default: the preset's; legacy 128 128 48)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"), default=None,
                        help="voxel spacing in mm (default: a 340 x 340 x 150 mm field of view)")
    parser.add_argument("--phases", type=int, default=None,
                        help="DCE phases: pre-contrast + post-contrast (default: legacy 3, phantom 2 drawn 3-6)")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder")


def register(subparsers) -> None:
    single = subparsers.add_parser("phantom", help="write a procedural breast DCE-MRI phantom with ground-truth labels")
    single.add_argument("--out", required=True, type=Path, help="output case folder")
    single.add_argument("--seed", type=int, default=0, help=seed_help("the anatomy, the tumors and the noise"))
    single.add_argument("--tumors", type=int, default=0, help="number of tumors in the breasts (default 0)")
    single.add_argument("--density", choices=DENSITIES, default=None, help="ACR breast density (default: random per seed)")
    single.add_argument("--resolution", type=float, default=None,
                        help="fraction of each axis' k-space band the scanner samples, 0.1-1 (default: random 0.7-0.9; "
                             "1 = no point-spread blur)")
    _add_grid_options(single)
    single.set_defaults(func=run)

    cohort = subparsers.add_parser("phantom-cohort", help="write a varied cohort of phantoms (case_000, case_001, ...)")
    cohort.add_argument("--out", required=True, type=Path, help="output folder for the cohort")
    cohort.add_argument("--n", type=int, required=True, help="number of cases")
    cohort.add_argument("--seed", type=int, default=0, help=seed_help("the cohort (case k gets its own seed drawn from it)"))
    cohort.add_argument("--max-tumors", type=int, default=3, help="each case gets 0..max tumors (default 3)")
    cohort.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    _add_grid_options(cohort)
    cohort.set_defaults(func=run_cohort)


def run(args) -> int:
    from ..phantom import make_phantom, write_phantom

    check_output(args.out, args.overwrite)  # before the phantom is made
    params = {"density": args.density} if args.density else {}
    if args.resolution is not None:
        params["resolution"] = args.resolution
    phantom = make_phantom(seed=args.seed, shape=args.shape, spacing=args.spacing, phases=args.phases,
                           tumors=args.tumors, preset=None if args.preset == "legacy" else args.preset, **params)
    write_phantom(phantom, args.out, overwrite=args.overwrite)
    meta = phantom.meta
    print(f"wrote {args.out}: {phantom.case.geometry.describe()}, {phantom.case.num_phases} phases, "
          f"ACR {meta['density']}, {len(meta['tumors'])} tumor(s)")
    return 0


def cohort_plan(n: int, seed: int, max_tumors: int = 3) -> list[dict]:
    """Per-case settings of a cohort: densities cycle a..d (shuffled), tumor counts vary, seeds differ."""
    if n < 1:
        raise SynBTError(f"a cohort needs at least one case, got --n {n}")
    if not 0 <= max_tumors <= 10:
        raise SynBTError(f"--max-tumors must be in 0..10, got {max_tumors}")
    rng = np.random.default_rng(seed)
    densities = [DENSITIES[k % 4] for k in rng.permutation(max(n, 4))[:n]]
    return [
        {"case_id": f"case_{k:03d}", "seed": int(rng.integers(2**31)), "density": densities[k],
         "tumors": int(rng.integers(0 if max_tumors == 0 else 1, max_tumors + 1))}
        for k in range(n)
    ]


def _write_cohort_case(item: dict, out: str, shape, spacing, phases, overwrite: bool, preset: str = "legacy") -> dict:
    """Worker: one case folder; returns its cohort.json entry (phantom 2 draws density from its population)."""
    from ..phantom import make_phantom, write_phantom

    legacy = preset == "legacy"
    phantom = make_phantom(seed=item["seed"], shape=shape, spacing=spacing, phases=phases, tumors=item["tumors"],
                           preset=None if legacy else preset, **({"density": item["density"]} if legacy else {}))
    folder = Path(out) / item["case_id"]
    write_phantom(phantom, folder, overwrite=overwrite)
    meta = phantom.meta
    return {**item, "density": meta["density"], "path": item["case_id"], "fgt_fraction": meta["fgt_fraction"],
            "bpe": meta["parameters"]["bpe"],
            "shape": meta["shape"],
            "tumors": [{k: t[k] for k in ("diameter_mm", "kind", "kinetics", "necrotic", "center_mm")} for t in meta["tumors"]]}


def run_cohort(args) -> int:
    from tqdm import tqdm

    from ..io import prepare_output_dir

    if args.workers < 1:
        raise SynBTError(f"--workers must be at least 1, got {args.workers}")
    plan = cohort_plan(args.n, args.seed, args.max_tumors)
    check_output(args.out, args.overwrite)
    out = prepare_output_dir(args.out, overwrite=args.overwrite)
    jobs = (str(out), args.shape and list(args.shape), args.spacing, args.phases, args.overwrite, args.preset)
    entries = []
    with ProcessPoolExecutor(max_workers=min(args.workers, len(plan))) as pool:
        futures = [pool.submit(_write_cohort_case, item, *jobs) for item in plan]
        for future in tqdm(as_completed(futures), total=len(futures), desc="phantom cohort", unit="case"):
            entries.append(future.result())
    entries.sort(key=lambda e: e["case_id"])
    index = {"generator": "synbt phantom-cohort", "seed": args.seed, "preset": args.preset,
             "shape": entries[0]["shape"] if entries else args.shape, "phases": args.phases,
             "cases": entries}
    (out / "cohort.json").write_text(json.dumps(index, indent=1))
    print(f"wrote {len(entries)} cases and cohort.json to {out}")
    return 0
