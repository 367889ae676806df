"""`synbt experiment`: real vs real + handcrafted vs real + SynBT synthetic tumors, on a phantom cohort."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="does synthetic data help segmentation? three arms x seeds on a phantom cohort",
        description="Makes a phantom cohort (small real training set, large test tumors), synthetic cases per "
        "arm, trains a UNet per arm and seed with identical budgets, and writes results.csv, results.md and "
        "results.png (Dice and HD95 on the test cases, mean and std over seeds) into --out. Rerunning the "
        "same command resumes. The default size runs on a 2-core CPU; --full is for a GPU.",
    )
    p.add_argument("--out", required=True, help="experiment folder (cohort, synthetic data, runs, results)")
    p.add_argument("--full", action="store_true", help="bigger grids, cohort and training (for a GPU)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--arms", nargs="+", default=["real", "handcrafted", "diffusion"],
                   help="arms to run: real handcrafted diffusion (default all)")
    p.add_argument("--bundle", help="diffusion bundle for the SynBT arm (default: SynBTLib/bundles/phantom)")
    p.add_argument("--steps", type=int, help="training steps per run (default 600, 4000 with --full)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--kinetics", metavar="TYPE",
                   help="curve type of the diffusion arm's synthetic tumors (synbt export --kinetics), e.g. source: that "
                   "of the real training case each is made from (default: drawn by the seed)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import SynBTError
    from ..experiment import ExperimentPlan, plan_with_overrides, run_experiment

    if args.steps is not None and args.steps < 1:
        raise SynBTError(f"--steps must be at least 1, got {args.steps}")
    plan = plan_with_overrides(ExperimentPlan.default(full=args.full), steps=args.steps,
                               synthetic_kinetics=args.kinetics)
    summary = run_experiment(args.out, plan, seeds=args.seeds, arms=args.arms, bundle=args.bundle, device=args.device)
    for row in summary:
        print(f"{row['arm']:>11}: Dice {row['dice_mean']:.3f} ± {row['dice_std']:.3f}, "
              f"HD95 {row['hd95_mean_mm']:.1f} ± {row['hd95_std_mm']:.1f} mm ({row['seeds']} seeds)")
    print(f"results: {args.out}/results.md")
    return 0
