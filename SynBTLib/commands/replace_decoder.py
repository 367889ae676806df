"""`synbt replace-decoder`: put a fine-tuned decoder under an existing diffusion bundle."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replace-decoder",
        help="combine a bundle with a decoder fine-tuned on its frozen encoder",
        description="Writes a copy of --bundle whose autoencoder decoder comes from --decoder (a train-autoencoder "
        "bundle fine-tuned with finetune.part = decoder). The encoders must be bit-identical, so the denoiser's "
        "latent space is unchanged; anything else is refused. The inputs are not modified.",
    )
    p.add_argument("--bundle", required=True, metavar="B", help="bundle with the denoiser to keep")
    p.add_argument("--decoder", required=True, metavar="A", help="autoencoder bundle whose decoder replaces B's")
    p.add_argument("--out", required=True, metavar="DIR", help="new bundle folder (must not exist or be empty)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bundle import replace_decoder

    path = replace_decoder(args.bundle, args.decoder, args.out)
    print(f"bundle with the new decoder: {path}")
    return 0
