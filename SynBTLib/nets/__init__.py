"""Networks of the SynBT engine, built from MONAI: the patch-to-volume autoencoder and the latent denoiser."""
