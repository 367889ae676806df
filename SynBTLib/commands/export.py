"""`synbt export`: a synthetic training set (nnU-Net v2 raw or MONAI datalist) from a source data set."""
from __future__ import annotations

from ..errors import SynBTError
from ..synthesizers import DEFAULT_STEPS
from ._shared import add_device_arguments, keep_freed_memory, seed_help


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export synthetic cases (tumors placed and synthesized) as an nnU-Net v2 or MONAI data set",
        description="Synthetic case j comes from source case j mod (number of sources). Cases are written "
        "atomically and resumably: rerunning the same command completes an interrupted export. With --shard i/n "
        "only cases j % n == i are made; run `synbt export --merge --out DIR --format F` after all shards.",
    )
    p.add_argument("--source", metavar="DIR", help="source data set: SynBT case folders, nnU-Net raw or MAMA-MIA")
    p.add_argument("--out", required=True, metavar="DIR", help="export folder (for nnU-Net: .../Dataset501_SynBT)")
    p.add_argument("--num-cases", type=int, metavar="N", help="number of synthetic cases")
    p.add_argument("--format", choices=("nnunet", "monai"), required=True)
    p.add_argument("--method", choices=("auto", "diffusion", "handcrafted"), default="auto",
                   help="auto: diffusion when a model bundle is available, else handcrafted")
    p.add_argument("--tumors-per-case", type=int, default=1, metavar="K")
    p.add_argument("--size-mm", type=float, nargs=2, default=(10.0, 30.0), metavar=("MIN", "MAX"),
                   help="tumor diameters are drawn uniformly in [MIN, MAX] mm")
    p.add_argument("--seed", type=int, default=0, help=seed_help("the placements, shapes and syntheses"))
    p.add_argument("--bundle", metavar="B", help="model bundle folder (diffusion method)")
    p.add_argument("--steps", type=int, default=None, help=f"sampling steps (diffusion method; default {DEFAULT_STEPS})")
    p.add_argument("--kinetics", default=None, metavar="TYPE",
                   help="curve type of every tumor (a bundle trained with curve types): persistent, plateau, washout, "
                   "any, or source = that of the source case's own tumor (default: drawn by the seed, as often as "
                   "in the bundle's training data)")
    p.add_argument("--necrosis", choices=("yes", "no"), default=None,
                   help="whether every tumor gets a non-enhancing necrotic core (a bundle trained with cores; "
                   "default: drawn by the seed, as often as the bundle's training tumors of that size had one)")
    p.add_argument("--shard", metavar="i/n", help="make only the cases j with j %% n == i")
    p.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset id (DatasetXXX)")
    p.add_argument("--dataset-name", default="SynBT", help="data set name, also the case name prefix")
    p.add_argument("--merge", action="store_true", help="after all shards: check completeness and write the index")
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import export

    keep_freed_memory()  # the pipeline runs in this process: reuse its freed activations (commands/_shared.py)

    if args.merge:
        if args.shard:
            raise SynBTError("--merge and --shard do not go together; merge after all shards have run")
        index = export.merge(args.out, args.format)
        print(f"merged: {index}")
        return 0
    if not args.source or args.num_cases is None:
        raise SynBTError("--source and --num-cases are required (unless --merge)")
    settings = export.ExportSettings(
        num_cases=args.num_cases, format=args.format, method=args.method, tumors_per_case=args.tumors_per_case,
        size_mm=tuple(args.size_mm), seed=args.seed, bundle=args.bundle, steps=args.steps,
        dataset_id=args.dataset_id, dataset_name=args.dataset_name, kinetics=args.kinetics,
        necrosis=None if args.necrosis is None else args.necrosis == "yes", precision=args.precision,
    )
    shard = export.parse_shard(args.shard)
    made = export.export_dataset(args.source, args.out, settings, shard=shard, device=args.device)
    total = len(export.shard_indices(settings.num_cases, shard))
    print(f"exported {len(made)} new case(s), {total - len(made)} already done, into {args.out}")
    return 0
