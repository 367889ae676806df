"""Peak memory and time of the autoencoder's patch-to-volume path against the whole-volume path.

Each measurement runs in a fresh subprocess, which reports its own peak RSS
(resource.getrusage); the whole-volume path is skipped ("does not fit") when its memory
estimate exceeds the budget. Prints one line per measurement, then the tiled-vs-whole PSNR at
the largest size where both ran. Weights are random (seed 0): this measures cost and agreement,
not reconstruction quality. With ``--bundle`` the bundle's autoencoder (its architecture and
weights) is measured instead.

    python bench/bench_autoencoder.py --sizes 128 256 512 --threads 2
    python bench/bench_autoencoder.py --sizes 512 --bundle SynBTLib/bundles/phantom --threads 2
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# (X, Y, Z) of each benchmark size; 3 DCE phases.
SIZES = {128: (128, 128, 32), 256: (256, 256, 64), 512: (512, 512, 160)}
PHASES = 3
# Whole-volume bytes per voxel assumed before one whole run has been measured (MONAI
# AutoencoderKL at (32, 64, 64) measured ~1.1 kB/voxel here, see /work/shared/NOTES.md).
ASSUMED_WHOLE_BYTES_PER_VOXEL = 1200


def synthetic_volume(size_xyz: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A smooth, image-like (1, 3, Z, Y, X) float32 volume in [0, 1]."""
    from scipy.ndimage import zoom

    shape = size_xyz[::-1]
    coarse = np.random.default_rng(seed).random((PHASES, *[max(2, n // 8) for n in shape]), dtype=np.float32)
    factors = (1, *[n / c for n, c in zip(shape, coarse.shape[1:])])
    return zoom(coarse, factors, order=1)[None].astype(np.float32)


def _model(bundle: str | None):
    from SynBTLib.nets.autoencoder import PatchVolumeAutoencoder

    if bundle:
        from SynBTLib.bundle import load_bundle

        return load_bundle(bundle).autoencoder.eval()
    return PatchVolumeAutoencoder().eval()


def worker(path: str, size_key: int, threads: int, save: str | None, bundle: str | None = None) -> None:
    import resource

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _model(bundle)
    x = torch.from_numpy(synthetic_volume(SIZES[size_key]))
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if path == "tiled":
        mu = model.encode_volume(x)
        encoded = time.perf_counter()
        image = model.decode_volume(mu)
    else:
        f = model.compression
        with torch.no_grad():
            # the model's own patch-level encode/decode on the whole volume (with its linear path, if any)
            mu = model.encode(F.pad(x, [v for n in reversed(x.shape[2:]) for v in (0, -n % f)], mode="replicate"))[0]
            encoded = time.perf_counter()
            image = model.decode(mu)
    done = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if save:
        np.save(Path(save) / f"{path}_{size_key}_latent.npy", mu.numpy())
        np.save(Path(save) / f"{path}_{size_key}_image.npy", image.numpy())
    print(json.dumps(dict(base_mb=base_mb, peak_mb=peak_mb, encode_s=encoded - start, decode_s=done - encoded)))


def measure(path: str, size_key: int, threads: int, save: str, bundle: str | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", path, "--sizes", str(size_key), "--threads", str(threads), "--save", save]
    command += ["--bundle", bundle] if bundle else []
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return dict(error=(result.stderr.strip().splitlines() or ["exit code %d" % result.returncode])[-1])
    return json.loads(result.stdout.strip().splitlines()[-1])


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - test) ** 2))
    peak = float(reference.max() - reference.min())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 8.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", choices=sorted(SIZES), default=sorted(SIZES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-gb", type=float, default=None, help="skip the whole path above this (default: half the free memory)")
    parser.add_argument("--bundle", help="measure this bundle's autoencoder (default: AutoencoderConfig() with random weights)")
    parser.add_argument("--worker", choices=("tiled", "whole"), help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.sizes[0], args.threads, args.save, args.bundle)
        return

    budget_gb = args.budget_gb or available_gb() / 2
    bytes_per_voxel = ASSUMED_WHOLE_BYTES_PER_VOXEL
    config = _model(args.bundle).config
    print(f"autoencoder {args.bundle or 'AutoencoderConfig()'}: channels {tuple(config.channels)}, {config.latent_channels} "
          f"latent channels, {PHASES} phases, {args.threads} threads, whole-path budget {budget_gb:.1f} GB")
    agreement = None
    with tempfile.TemporaryDirectory() as tmp:
        for key in sorted(args.sizes):
            size = SIZES[key]
            voxels = int(np.prod(size))
            for path in ("tiled", "whole"):
                label = f"{'x'.join(map(str, size))}x{PHASES} {path:5s}"
                if path == "whole" and (0.4 + voxels * bytes_per_voxel / 2**30) > budget_gb:
                    print(f"{label}: does not fit (estimated {voxels * bytes_per_voxel / 2**30:.1f} GB > {budget_gb:.1f} GB)")
                    continue
                r = measure(path, key, args.threads, tmp, args.bundle)
                if "error" in r:
                    print(f"{label}: failed ({r['error']})")
                    continue
                print(
                    f"{label}: peak RSS {r['peak_mb'] / 1024:.2f} GB (after loading {r['base_mb'] / 1024:.2f} GB), "
                    f"encode {r['encode_s']:.1f} s, decode {r['decode_s']:.1f} s"
                )
                saved = [Path(tmp) / f"{name}_{key}_image.npy" for name in ("tiled", "whole")]
                if path == "whole":
                    bytes_per_voxel = 1.2 * (r["peak_mb"] - r["base_mb"]) * 2**20 / voxels  # 20% safety margin
                if path == "whole" and all(p.exists() for p in saved):
                    load = lambda name: np.load(Path(tmp) / f"{name}_{key}_image.npy")  # noqa: E731
                    latent = lambda name: np.load(Path(tmp) / f"{name}_{key}_latent.npy")  # noqa: E731
                    agreement = (size, psnr(latent("whole"), latent("tiled")), psnr(load("whole"), load("tiled")))
            for leftover in Path(tmp).glob(f"*_{key}_*.npy"):
                leftover.unlink()
    if agreement:
        size, latent_db, image_db = agreement
        print(f"tiled vs whole at {'x'.join(map(str, size))}: latent PSNR {latent_db:.1f} dB, decoded PSNR {image_db:.1f} dB")


if __name__ == "__main__":
    main()
