"""Autoencoder reconstruction quality on held-out cases: PSNR and SSIM inside the breast.

    python bench/eval_autoencoder.py --bundle /work/runs/ae/bundle --data /work/cohort_test
    python bench/eval_autoencoder.py --checkpoint /work/runs/ae/checkpoint.pt --data ...  (a run in progress)

Each case is normalized as in training (preprocess.fit_normalization), encoded and decoded whole
with the tiled encode_volume/decode_volume, and compared with its input in normalized units
(data range 1.0, where tissue lies roughly in [0, 1]). The breast is the ground truth
np.isin(tissue_labels, labels.BREAST_TISSUE) from tissue_labels.nii.gz beside the phases, or,
for cases without one, the image-derived preprocess.breast_tissue_mask. Where a case has a tumor
label, the PSNR inside the tumors is reported too (empty otherwise): the tumors are what a
synthesis has to reproduce, and they are small, bright and few, so the breast PSNR hides them.
Prints a table per case and phase with the means, and writes eval_autoencoder.csv to --out.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, print_table, write_csv  # noqa: E402

COLUMNS = ("case", "phase", "psnr_breast_db", "ssim_breast", "psnr_body_db", "psnr_tumor_db", "breast_source",
           "encode_s", "decode_s")
DATA_RANGE = 1.0  # normalized units


def regions(case, case_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(breast, body) boolean masks and where the breast came from."""
    from SynBTLib import labels as L
    from SynBTLib.io import read_image
    from SynBTLib.preprocess import breast_tissue_mask

    labels_path = case_dir / "tissue_labels.nii.gz"
    if labels_path.is_file():
        tissue, _ = read_image(labels_path)
        if tissue.shape != case.shape:
            from SynBTLib.errors import SynBTError

            raise SynBTError(f"{labels_path} has shape {tissue.shape}, the case {case.shape}")
        return np.isin(tissue, L.BREAST_TISSUE), tissue != L.AIR, "tissue_labels"
    masks = breast_tissue_mask(case)
    return masks.breast, masks.body, "breast_tissue_mask"


def evaluate_case(autoencoder, ref) -> list[dict]:
    """Rows for one case: all phases together, then each phase."""
    import torch

    from SynBTLib.io import read_case, read_mask
    from SynBTLib.metrics import psnr, ssim
    from SynBTLib.preprocess import fit_normalization, normalize

    case = read_case(list(ref.phase_paths))
    breast, body, source = regions(case, Path(ref.phase_paths[0]).parent)
    tumor = read_mask(ref.label_path, case.geometry) > 0 if ref.label_path is not None else None
    if tumor is not None and not tumor.any():
        tumor = None
    image = normalize(case.phases, fit_normalization(case))
    start = time.perf_counter()
    latent = autoencoder.encode_volume(torch.from_numpy(image)[None])
    encoded = time.perf_counter()
    recon = autoencoder.decode_volume(latent, shape=case.shape)[0].numpy()
    decoded = time.perf_counter()

    stack = lambda mask: np.broadcast_to(mask, image.shape)  # noqa: E731
    phase_ssim = [ssim(recon[k], image[k], mask=breast, data_range=DATA_RANGE) for k in range(case.num_phases)]
    rows = [{
        "case": ref.case_id, "phase": "all",
        "psnr_breast_db": psnr(recon, image, mask=stack(breast), data_range=DATA_RANGE),
        "ssim_breast": float(np.mean(phase_ssim)),
        "psnr_body_db": psnr(recon, image, mask=stack(body), data_range=DATA_RANGE),
        "psnr_tumor_db": None if tumor is None else psnr(recon, image, mask=stack(tumor), data_range=DATA_RANGE),
        "breast_source": source, "encode_s": encoded - start, "decode_s": decoded - encoded,
    }]
    for k, name in enumerate(case.phase_names):
        rows.append({
            "case": ref.case_id, "phase": name,
            "psnr_breast_db": psnr(recon[k], image[k], mask=breast, data_range=DATA_RANGE),
            "ssim_breast": phase_ssim[k],
            "psnr_body_db": psnr(recon[k], image[k], mask=body, data_range=DATA_RANGE),
            "psnr_tumor_db": None if tumor is None else psnr(recon[k], image[k], mask=tumor, data_range=DATA_RANGE),
            "breast_source": source,
        })
    return rows


def load_autoencoder(bundle: Path | None, checkpoint: Path | None):
    """(autoencoder in eval mode, description) from a bundle, or from a training checkpoint (weights_only)."""
    import json

    from SynBTLib.bundle import load_bundle
    from SynBTLib.nets.autoencoder import AutoencoderConfig, PatchVolumeAutoencoder
    from SynBTLib.training.common import read_checkpoint

    if bundle is not None:
        loaded = load_bundle(bundle)
        return loaded.autoencoder, f"bundle {bundle} (sha256 {loaded.sha256[:12]})"
    state = read_checkpoint(checkpoint)
    autoencoder = PatchVolumeAutoencoder(AutoencoderConfig.from_dict(json.loads(state["config"])["autoencoder"]))
    autoencoder.load_state_dict(state["models"]["autoencoder"])
    return autoencoder.eval(), f"checkpoint {checkpoint} (step {state['step']})"


def mean_rows(rows: list[dict]) -> list[dict]:
    """One 'mean' row per phase label (all, pre, post1, ...), averaged over cases."""
    out = []
    for phase in dict.fromkeys(row["phase"] for row in rows):
        group = [row for row in rows if row["phase"] == phase]
        mean = {"case": "mean", "phase": phase}
        for column in ("psnr_breast_db", "ssim_breast", "psnr_body_db", "psnr_tumor_db", "encode_s", "decode_s"):
            values = [row[column] for row in group if row.get(column) is not None]
            mean[column] = float(np.mean(values)) if values else None
        out.append(mean)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, help="model bundle folder (an autoencoder-only bundle is enough)")
    source.add_argument("--checkpoint", type=Path, help="or a training checkpoint (checkpoint.pt of train-autoencoder)")
    parser.add_argument("--data", type=Path, required=True, help="held-out data set folder (cases never trained on)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for eval_autoencoder.csv (default bench/results)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--phase-policy", default=None, metavar="SPEC",
                        help="the phases to give the autoencoder (datasets.PhasePolicy, e.g. pre,first,last; "
                        "default: the bundle's own, else every phase)")
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm

    from SynBTLib.datasets import apply_policy, read_dataset
    from SynBTLib.errors import SynBTError

    torch.set_num_threads(args.threads)
    try:
        autoencoder, description = load_autoencoder(args.bundle, args.checkpoint)
        policy = args.phase_policy
        if policy is None and args.bundle is not None:
            from SynBTLib.phase_choice import BundlePhases

            policy = BundlePhases.of_bundle(args.bundle).policy
        refs, skipped = apply_policy(read_dataset(args.data), policy)
        for case_id, why in skipped:
            print(f"skipping case {case_id}: {why}", file=sys.stderr)
        rows = []
        for ref in tqdm(refs, desc="autoencoder", unit="case"):
            rows += evaluate_case(autoencoder, ref)
    except SynBTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows += mean_rows(rows)
    print(f"{description}, {len(refs)} cases from {args.data}, "
          f"data range {DATA_RANGE} (normalized units)")
    print_table(rows, COLUMNS)
    path = write_csv(rows, COLUMNS, args.out / "eval_autoencoder.csv")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
