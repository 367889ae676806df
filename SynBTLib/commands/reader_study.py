"""`synbt reader-study create|report`: a blinded real-vs-synthetic reader study (answered in `synbt web --study`)."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reader-study",
        help="blinded reader study: can readers tell synthetic tumors from real ones?",
        description="create: draws --n case folders (half from --real, half from --synthetic; each a case folder "
        "with tumor_labels.nii.gz) and renders one tumor-centred view of every phase and the subtraction per case "
        "under random ids. Readers answer in `synbt web --study STUDY`. report: each reader's accuracy and AUC "
        "(bootstrap 95% CI) and roc.png.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="build a new study folder")
    create.add_argument("--real", required=True, metavar="DIR", help="folder of real case folders")
    create.add_argument("--synthetic", required=True, metavar="DIR", help="folder of synthetic case folders")
    create.add_argument("--n", type=int, default=40, help="number of views, half real, half synthetic (default 40)")
    create.add_argument("--out", required=True, metavar="STUDY", help="new study folder (never overwritten)")
    create.add_argument("--seed", type=int, default=0, help="seed of the draw and the order (default 0)")
    report = sub.add_parser("report", help="accuracy, AUC with CI and a ROC plot per reader")
    report.add_argument("study", metavar="STUDY", help="the study folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import reader_study

    if args.action == "create":
        out = reader_study.create_study(args.real, args.synthetic, args.n, args.out, seed=args.seed)
        print(f"study: {out} ({args.n} items); readers answer with: synbt web --study {out}")
    else:
        print(reader_study.format_report(reader_study.report(args.study)))
    return 0
