"""`synbt train-diffusion`: train the mask-conditioned denoiser; writes the full model bundle."""
from __future__ import annotations

from ._shared import add_training_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-diffusion",
        help="train the tumor-inpainting denoiser in the latent space of a trained autoencoder",
        description="Trains on latent ROIs around the tumors of the cases under --data (cases need a tumor "
        "label). Writes checkpoint.pt, losses.csv, config.json and bundle/ (the full model bundle) into --out.",
    )
    add_training_arguments(p, writes="bundle/ (the full model bundle)", steps=4000)
    p.add_argument("--autoencoder", required=True, metavar="PATH",
                   help="autoencoder bundle folder, train-autoencoder output folder, or its checkpoint.pt")
    p.add_argument("--latent-cache", metavar="DIR",
                   help="keep the encoded cases here and reuse them in later runs on the same autoencoder "
                   "(encoding is a fifth of a CPU run); entries are keyed by the encoder weights and the voxels")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training.common import command_line, config_from_args
    from ..training.diffusion import train_diffusion

    result = train_diffusion(
        args.data, args.autoencoder, args.out, config_from_args(args), resume=args.resume, device=args.device,
        latent_cache=args.latent_cache,
        command=command_line("train-diffusion", args, (("--autoencoder", "autoencoder"),)),
    )
    if result.bundle is not None:
        print(f"model bundle: {result.bundle}")
    return 0
