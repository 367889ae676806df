"""`synbt train-seg`: train a tumor segmentation network on real cases mixed with synthetic tumors."""
from __future__ import annotations

from pathlib import Path

from ..errors import SynBTError
from ._shared import add_training_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-seg",
        help="train tumor segmentation (MONAI UNet, or nnU-Net v2) with real and synthetic tumors",
        description="Trains on patches of the labelled cases under --data, mixed with synthetic tumors "
        "(--synthetic offline DIR: an exported synthetic data set; --synthetic on-the-fly: synthesized "
        "during training, by the handcrafted method unless --method diffusion). Writes checkpoint.pt, losses.csv, "
        "config.json and model/ (best by --val Dice; apply it with `synbt segment --model OUT`) into --out. "
        "Multi-GPU/CPU: torchrun --nproc_per_node N -m SynBTLib train-seg ...",
    )
    add_training_arguments(p, writes="model/ (the segmentation model, for synbt segment)", steps=2000)
    p.add_argument("--epochs", type=int, help="epochs of data.steps_per_epoch steps each (overrides --steps)")
    p.add_argument("--synthetic", nargs="+", metavar="MODE",
                   help="none (default) | offline DIR | on-the-fly")
    p.add_argument("--method", choices=("diffusion", "handcrafted"),
                   help="synthesizer for --synthetic on-the-fly (default handcrafted: fast, no model; diffusion: "
                   "the --bundle model, slower)")
    p.add_argument("--bundle", help="diffusion model bundle (default: the phantom bundle shipped with SynBT)")
    p.add_argument("--synthesis-steps", type=int, help="diffusion sampling steps per synthetic tumor")
    p.add_argument("--ratio", type=float, help="fraction of synthetic samples per batch (default 0.5)")
    p.add_argument("--workers", type=int, help="DataLoader processes synthesizing on the fly (default 2)")
    p.add_argument("--val", metavar="DIR", help="labelled validation cases: Dice every epoch, best model kept")
    p.add_argument("--engine", choices=("monai", "nnunet"), default="monai",
                   help="monai (default) or nnunet (calls nnUNetv2_plan_and_preprocess and nnUNetv2_train)")
    p.set_defaults(func=run)


def parse_synthetic(values: list[str] | None) -> dict:
    """--synthetic none | offline DIR | on-the-fly -> the config's synthetic section keys."""
    if not values:
        return {}
    mode, rest = values[0], values[1:]
    if mode == "offline":
        if len(rest) != 1:
            raise SynBTError("--synthetic offline takes one folder: --synthetic offline DIR")
        if not Path(rest[0]).is_dir():
            raise SynBTError(f"synthetic data folder not found: {rest[0]}")
        return {"mode": "offline", "dir": rest[0]}
    if mode in ("none", "on-the-fly"):
        if rest:
            raise SynBTError(f"--synthetic {mode} takes no folder (got {' '.join(rest)})")
        return {"mode": mode}
    raise SynBTError(f"unknown --synthetic mode {mode!r}; choose none, offline DIR or on-the-fly")


def build_config(args) -> dict:
    """The config file (or, on --resume, the run's config.json) with the given flags applied."""
    import json

    from ..training.common import apply_overrides, load_config

    saved = Path(args.out) / "config.json"
    base = load_config(args.config) if args.config else (load_config(saved) if args.resume and saved.is_file() else {})
    config = apply_overrides(base, args)
    if args.epochs is not None:
        config["training"]["epochs"] = args.epochs
    elif args.steps is not None:
        config["training"].pop("epochs", None)
    synthetic = config.setdefault("synthetic", {})
    synthetic.update(parse_synthetic(args.synthetic))
    for flag, key in (("method", "method"), ("bundle", "bundle"), ("synthesis_steps", "steps"), ("ratio", "ratio"),
                      ("workers", "workers")):
        if getattr(args, flag) is not None:
            synthetic[key] = getattr(args, flag)
    return json.loads(json.dumps(config))


def run(args) -> int:
    from ..training.common import command_line

    config = build_config(args)
    if args.engine == "nnunet":
        from ..training.segmentation import train_nnunet

        synthetic = config.get("synthetic", {})
        if synthetic.get("mode") == "on-the-fly":
            raise SynBTError("--engine nnunet trains on files: use --synthetic offline DIR (see `synbt export`)")
        results = train_nnunet(args.data, args.out, synthetic.get("dir") if synthetic.get("mode") == "offline" else None)
        print(f"nnU-Net results: {results}")
        return 0

    from ..training.segmentation import DEFAULT_CONFIG, train_segmentation

    synthetic = config.get("synthetic", {})
    if synthetic.get("mode") == "on-the-fly":
        method = synthetic.get("method")
        print("on-the-fly synthesis: " + (f"{method} method" if method else
              f"{DEFAULT_CONFIG['synthetic']['method']} method (the default; --method diffusion for the diffusion model)"))

    extra = (("--val", "val"), ("--epochs", "epochs"), ("--ratio", "ratio"), ("--method", "method"))
    result = train_segmentation(
        args.data, args.out, config, val=args.val, resume=args.resume, device=args.device,
        command=command_line("train-seg", args, extra),
    )
    best = f", best validation Dice {result.best_dice:.4f} at step {result.best_step}" if result.best_dice is not None else ""
    print(f"segmentation model: {result.model_dir}{best}")
    return 0
