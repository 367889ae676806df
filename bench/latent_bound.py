"""How many latent channels a 4x autoencoder needs for a PSNR: the best linear block code as a reference.

    python bench/latent_bound.py --train /work/cohort2_train --test /work/cohort2_test --channels 4 8 16 24 32 48

Every case is normalized as in training (preprocess.fit_normalization) and cut into aligned,
non-overlapping blocks of factor^3 voxels x all phases, the unit one latent voxel of a 4x
autoencoder stands for. A PCA fitted on the breast blocks of --train keeps k components (the
optimal linear code with k numbers per block); the PSNR of the --test breast blocks rebuilt from
their k coefficients, in the same units as bench/eval_autoencoder.py (data range 1.0), shows
what k latent channels can carry. A convolutional, non-linear autoencoder sees overlapping
neighbourhoods and can beat this reference by a few dB; it cannot beat it by much without more
channels. The breast is the phantom's tissue_labels.nii.gz (cases without one are skipped).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, print_table, write_csv  # noqa: E402

COLUMNS = ("channels", "compression", "psnr_breast_db", "variance_kept")


def breast_blocks(ref, factor: int) -> np.ndarray | None:
    """(N, phases * factor^3) blocks lying at least half inside the breast, normalized units."""
    from SynBTLib import labels as L
    from SynBTLib.io import read_case, read_image
    from SynBTLib.preprocess import fit_normalization, normalize

    labels_path = Path(ref.phase_paths[0]).parent / "tissue_labels.nii.gz"
    if not labels_path.is_file():
        return None
    case = read_case(list(ref.phase_paths))
    tissue, _ = read_image(labels_path)
    image = normalize(case.phases, fit_normalization(case))
    c = image.shape[0]
    z, y, x = (n // factor * factor for n in case.shape)
    image, breast = image[:, :z, :y, :x], np.isin(tissue[:z, :y, :x], L.BREAST_TISSUE)
    f = factor
    blocks = image.reshape(c, z // f, f, y // f, f, x // f, f).transpose(1, 3, 5, 0, 2, 4, 6).reshape(-1, c * f**3)
    inside = breast.reshape(z // f, f, y // f, f, x // f, f).transpose(0, 2, 4, 1, 3, 5).reshape(-1, f**3).mean(1)
    return blocks[inside >= 0.5]


def collect(root: Path, factor: int) -> np.ndarray:
    from SynBTLib.datasets import read_dataset
    from SynBTLib.errors import SynBTError

    found = [b for b in (breast_blocks(ref, factor) for ref in read_dataset(root)) if b is not None and len(b)]
    if not found:
        raise SynBTError(f"no case under {root} has tissue_labels.nii.gz with breast tissue")
    return np.concatenate(found).astype(np.float64)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="cases the code is fitted on")
    parser.add_argument("--test", type=Path, required=True, help="held-out cases it is scored on")
    parser.add_argument("--channels", type=int, nargs="+", default=[4, 8, 16, 24, 32, 48])
    parser.add_argument("--factor", type=int, default=4, help="spatial compression per axis (default 4)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    from SynBTLib.errors import SynBTError

    try:
        train, test = collect(args.train, args.factor), collect(args.test, args.factor)
    except SynBTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mean = train.mean(axis=0)
    _, singular, basis = np.linalg.svd(train - mean, full_matrices=False)
    energy = np.cumsum(singular**2) / np.sum(singular**2)
    rows = []
    for k in sorted(set(args.channels)):
        k = min(k, basis.shape[0])
        rebuilt = (test - mean) @ basis[:k].T @ basis[:k] + mean
        mse = float(np.mean((rebuilt - test) ** 2))
        rows.append({"channels": k, "compression": f"{train.shape[1] / k:.1f}x",
                     "psnr_breast_db": 10 * np.log10(1.0 / mse), "variance_kept": float(energy[k - 1])})
    print(f"linear block code, {args.factor}^3 voxels x {train.shape[1] // args.factor**3} phases per latent voxel; "
          f"fitted on {len(train)} breast blocks of {args.train}, scored on {len(test)} of {args.test}")
    print_table(rows, COLUMNS)
    print(f"wrote {write_csv(rows, COLUMNS, args.out / 'latent_bound.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
