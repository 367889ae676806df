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


def blocks_of(root: Path, factor: int):
    """Each case's breast blocks (float64), one array per case that has tissue labels."""
    from SynBTLib.datasets import read_dataset

    for ref in read_dataset(root):
        blocks = breast_blocks(ref, factor)
        if blocks is not None and len(blocks):
            yield blocks.astype(np.float64)


def fit_code(root: Path, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(mean, principal directions by decreasing variance, variances, blocks) from streamed moments."""
    from SynBTLib.errors import SynBTError

    count, total, outer = 0, None, None
    for blocks in blocks_of(root, factor):
        if total is not None and blocks.shape[1] != total.size:
            raise SynBTError(f"the cases under {root} differ in phase count; fit one data set at a time")
        total = blocks.sum(0) if total is None else total + blocks.sum(0)
        outer = blocks.T @ blocks if outer is None else outer + blocks.T @ blocks
        count += len(blocks)
    if count == 0:
        raise SynBTError(f"no case under {root} has tissue_labels.nii.gz with breast tissue")
    mean = total / count
    variances, vectors = np.linalg.eigh(outer / count - np.outer(mean, mean))
    order = np.argsort(variances)[::-1]
    return mean, vectors[:, order].T, np.clip(variances[order], 0.0, None), count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="cases the code is fitted on")
    parser.add_argument("--test", type=Path, required=True, help="held-out cases it is scored on")
    parser.add_argument("--channels", type=int, nargs="+", default=[4, 8, 16, 24, 32, 48])
    parser.add_argument("--factor", type=int, default=4, help="spatial compression per axis (default 4)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    from SynBTLib.errors import SynBTError

    if args.factor < 1 or min(args.channels) < 1:
        parser.error("--factor and every --channels value must be at least 1")
    try:
        mean, basis, variances, fitted = fit_code(args.train, args.factor)
        dims = basis.shape[0]
        ks = sorted({min(k, dims) for k in args.channels})
        errors, scored = {k: 0.0 for k in ks}, 0
        for test in blocks_of(args.test, args.factor):
            if test.shape[1] != dims:
                raise SynBTError(f"{args.test} has {test.shape[1] // args.factor**3} phases, {args.train} "
                                 f"{dims // args.factor**3}")
            centred = test - mean
            for k in ks:
                errors[k] += float(np.sum((centred @ basis[:k].T @ basis[:k] - centred) ** 2))
            scored += len(test)
        if scored == 0:
            raise SynBTError(f"no case under {args.test} has tissue_labels.nii.gz with breast tissue")
    except SynBTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    energy = np.cumsum(variances) / max(float(variances.sum()), 1e-30)
    rows = [{"channels": k, "compression": f"{dims / k:.1f}x",
             "psnr_breast_db": 10 * np.log10(1.0 / (errors[k] / (scored * dims))), "variance_kept": float(energy[k - 1])}
            for k in ks]
    print(f"linear block code, {args.factor}^3 voxels x {dims // args.factor**3} phases per latent voxel; "
          f"fitted on {fitted} breast blocks of {args.train}, scored on {scored} of {args.test}")
    print_table(rows, COLUMNS)
    print(f"wrote {write_csv(rows, COLUMNS, args.out / 'latent_bound.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
