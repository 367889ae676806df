"""`synbt demo`: the whole product on a phantom, offline."""
from __future__ import annotations

from ..synthesizers import DEFAULT_STEPS
from ._shared import add_device_arguments, keep_freed_memory, seed_help


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="synthesize a tumor into a phantom DCE-MRI case and write the outputs and a PNG montage",
    )
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help=seed_help("the phantom, the placement and the synthesis"))
    p.add_argument("--method", choices=("auto", "diffusion", "handcrafted"), default="auto",
                   help="auto: diffusion with the shipped bundle when present")
    p.add_argument("--size-mm", type=float, default=25.0, help="tumor diameter in mm")
    p.add_argument("--steps", type=int, default=None, help=f"diffusion sampling steps (default {DEFAULT_STEPS})")
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty --out folder")
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from ..demo import run_demo
    from ._shared import check_output

    check_output(args.out, args.overwrite)  # before the model loads
    keep_freed_memory()  # the pipeline runs in this process: reuse its freed activations
    bars = []  # the synthesis bar appears with the first step, not as an idle "0step" line before the log

    def progress(done, total, message=""):
        if not bars:
            bars.append(tqdm(total=total, desc="synthesis", unit="step", leave=False))
        bar = bars[0]
        bar.total = total
        bar.n = done
        bar.set_postfix_str(message)
        bar.refresh()

    try:
        summary = run_demo(args.out, seed=args.seed, method=args.method, size_mm=args.size_mm,
                           steps=args.steps, overwrite=args.overwrite, progress=progress, log=tqdm.write,
                           device=args.device, precision=args.precision)
    finally:
        for bar in bars:
            bar.close()
    print(f"synbt demo: {summary['method']} tumor of {summary['size_mm']:g} mm in {summary['seconds']} s; "
          f"figure {summary['figure']}")
    return 0
