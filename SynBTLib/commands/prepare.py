"""`synbt prepare`: decode a data set once into a memory-mapped training store (resumable, parallel)."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="decode a data set once into a memory-mapped store for training",
        description="Reads every case of --data (SynBT case folders, nnU-Net raw, MAMA-MIA), picks its phases "
        "(--policy), resamples it to --spacing, normalizes it and writes it as .npy arrays under --out, which "
        "train-autoencoder, train-diffusion and train-seg read as --data. Resumable: run it again after an "
        "interruption and it does only the cases not yet done. Unusable cases are listed in OUT/skipped/.",
    )
    p.add_argument("--data", required=True, help="data set folder")
    p.add_argument("--out", required=True, help="store folder (new, or one this command began)")
    p.add_argument("--workers", type=int, default=1, help="processes reading cases at once (default 1)")
    p.add_argument("--policy", default=None,
                   help='phases to keep, e.g. "pre,first,closest:150s" or "0,1,3" (default: all, in file order)')
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="working grid spacing in mm (default: each case's own)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="stored image precision (default float16: half the disk and page cache)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..store import prepare_store

    report = prepare_store(args.data, args.out, workers=args.workers, policy=args.policy, spacing=args.spacing,
                           dtype=args.dtype)
    print(f"store {args.out}: {len(report.prepared)} cases prepared, {len(report.reused)} already there, "
          f"{len(report.skipped)} skipped")
    return 0
