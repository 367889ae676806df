"""`synbt experiment`: does synthetic data help segmentation? A phantom study with paired intervals."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="does synthetic data help segmentation? arms x seeds on a phantom cohort, paired bootstrap intervals",
        description="Makes a phantom cohort (training, validation and test lesions drawn alike, plus a small-tumor "
        "training set for the size-shift arms), the offline synthetic sets, trains one network per (arm, seed) "
        "with identical budgets and scores every test lesion. Writes results/ into --out: per_lesion.csv, "
        "per_case.csv, summary.json, summary.md and results.png (lesion-wise Dice per arm and paired "
        "differences, with crossed bootstrap 95 % intervals, overall and by size bin). Rerunning the same "
        "command resumes. Presets: ci (toy sizes, seconds), cpu (2-core CPU, about 2 hours), paper (a GPU).",
    )
    p.add_argument("--out", required=True, help="study folder (cohort, synthetic sets, runs, results)")
    p.add_argument("--preset", choices=("ci", "cpu", "paper"), default="cpu", help="study size (default cpu)")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the preset's)")
    p.add_argument("--arms", nargs="+", help="arms to run: real handcrafted offline onthefly gap_real gap_handcrafted "
                   "gap_offline (default: the preset's)")
    p.add_argument("--bundle", help="SynBT bundle of the offline / onthefly arms (default: SynBTLib/bundles/phantom)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--verbose", action="store_true", help="progress bars of every training run")
    p.add_argument("--report", action="store_true",
                   help="only write results/ from the seeds every arm has finished (a study may still be running)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..experiment import StudyPlan, plan_with_overrides, report_finished, run_study

    plan = plan_with_overrides(StudyPlan.preset_plan(args.preset), seeds=tuple(args.seeds) if args.seeds else None,
                               arms=tuple(args.arms) if args.arms else None)
    if args.report:
        summary = report_finished(args.out, plan)
    else:
        summary = run_study(args.out, plan, bundle=args.bundle, device=args.device, verbose=args.verbose)
    for arm, row in summary["arms"].items():
        d = row["lesion_dice"]
        print(f"{arm:>15}: lesion Dice {d['mean']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}] ({len(row['seeds'])} seeds)")
    for c in summary["comparisons"]:
        d = c["difference"]
        print(f"{c['a'] + ' - ' + c['b']:>32}: {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], "
              f"detectable {d['mdd80']:.3f}")
    print(f"results: {args.out}/results/summary.md")
    return 0
