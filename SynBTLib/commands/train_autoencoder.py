"""`synbt train-autoencoder`: train the patch-to-volume autoencoder; writes an autoencoder-only bundle."""
from __future__ import annotations

from ._shared import add_training_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-autoencoder",
        help="train the patch-to-volume autoencoder on a data set",
        description="Trains on random patches of the cases under --data. Writes checkpoint.pt, losses.csv, "
        "config.json and bundle/ (autoencoder only, for train-diffusion) into --out. Multi-GPU/CPU: "
        "torchrun --nproc_per_node N -m SynBTLib train-autoencoder ...",
    )
    add_training_arguments(p, writes="bundle/ (the autoencoder, for train-diffusion)", steps=2000)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training.autoencoder import train_autoencoder
    from ..training.common import command_line, config_from_args

    result = train_autoencoder(
        args.data, args.out, config_from_args(args), resume=args.resume, device=args.device,
        command=command_line("train-autoencoder", args),
    )
    if result.bundle is not None:
        print(f"autoencoder bundle: {result.bundle} (latent scale {result.latent_scale:.4g})")
    return 0
