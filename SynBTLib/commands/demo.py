"""`synbt demo`: the whole product on a phantom, offline."""
from __future__ import annotations

from tqdm import tqdm


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="synthesize a tumor into a phantom DCE-MRI case and write the outputs and a PNG montage",
    )
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=("auto", "diffusion", "handcrafted"), default="auto",
                   help="auto: diffusion with the shipped bundle when present")
    p.add_argument("--size-mm", type=float, default=25.0, help="tumor diameter in mm")
    p.add_argument("--steps", type=int, default=None, help="diffusion sampling steps (default 30)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    bar = tqdm(desc="synthesis", unit="step", leave=False)

    def progress(done, total, message=""):
        bar.total = total
        bar.n = done
        bar.set_postfix_str(message)
        bar.refresh()

    try:
        summary = run_demo(args.out, seed=args.seed, method=args.method, size_mm=args.size_mm,
                           steps=args.steps, overwrite=args.overwrite, progress=progress, log=tqdm.write)
    finally:
        bar.close()
    print(f"synbt demo: {summary['method']} tumor of {summary['size_mm']:g} mm in {summary['seconds']} s; "
          f"figure {summary['figure']}")
    return 0
