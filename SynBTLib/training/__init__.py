"""Training: the run skeleton and loop machinery (common), the typed configs (config), data sampling
(data) and the trainers, each a set of hooks on ``common.TrainingRun``: autoencoder, diffusion, segmentation.

``train_autoencoder``, ``train_diffusion`` and ``segmentation.train_segmentation`` are also the
`synbt train-autoencoder`, `train-diffusion` and `train-seg` commands; all resume exactly and run
under torchrun.
"""
from .autoencoder import train_autoencoder
from .diffusion import load_autoencoder, train_diffusion

__all__ = ["load_autoencoder", "train_autoencoder", "train_diffusion"]
