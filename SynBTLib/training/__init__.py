"""Training: the shared loop machinery (common), data sampling (data) and the two SynBT trainers.

``train_autoencoder`` and ``train_diffusion`` are also the `synbt train-autoencoder` and
`synbt train-diffusion` commands; both resume exactly and run under torchrun.
"""
from .autoencoder import train_autoencoder
from .diffusion import load_autoencoder, train_diffusion

__all__ = ["load_autoencoder", "train_autoencoder", "train_diffusion"]
