"""An on-disk cache of encoded training cases, so denoiser runs on one autoencoder encode each case once.

An entry's name is the sha256 of
everything its latent depends on: the autoencoder's encoder weights and configuration, the latent
scale, the device type (other than CPU) and the exact input voxels (after padding, flipping and erasing). A changed autoencoder or
case therefore misses the cache rather than reusing a stale latent; an unreadable entry is encoded
again and rewritten. Entries are safetensors files (nothing is unpickled), written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np


def autoencoder_fingerprint(autoencoder, latent_scale: float) -> str:
    """sha256 of the encoder's weights, the autoencoder's configuration and the latent scale."""
    digest = hashlib.sha256()
    digest.update(json.dumps(autoencoder.config.to_dict(), sort_keys=True).encode())
    digest.update(repr(float(latent_scale)).encode())
    device = next(autoencoder.parameters()).device.type
    if device != "cpu":  # a GPU encodes a little differently (CPU keys stay as they were)
        digest.update(device.encode())
    for parameter in autoencoder.encoder_parameters():
        digest.update(parameter.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class LatentCache:
    """Latents of (C, Z, Y, X) float32 images under ``folder``, keyed by the image and the autoencoder."""

    def __init__(self, folder: str | Path, autoencoder, latent_scale: float):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fingerprint = autoencoder_fingerprint(autoencoder, latent_scale)
        self.hits = self.misses = 0

    def key(self, image: np.ndarray) -> str:
        digest = hashlib.sha256(self.fingerprint.encode())
        digest.update(repr((image.shape, str(image.dtype))).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def latent(self, image: np.ndarray, encode: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached latent of ``image``, or ``encode()``'s result, stored for next time."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file, save_file

        path = self.folder / f"{self.key(image)}.safetensors"
        if path.is_file():
            try:
                latent = load_file(path)["latent"]
                self.hits += 1
                return latent
            except (SafetensorError, KeyError, OSError, ValueError) as error:
                warnings.warn(f"latent cache entry {path.name} is unreadable ({error}); encoding it again")
        self.misses += 1
        latent = np.ascontiguousarray(encode(), dtype=np.float32)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
        save_file({"latent": latent}, str(partial))
        os.replace(partial, path)  # atomic: a killed run never leaves a half-written entry under the real name
        return latent
