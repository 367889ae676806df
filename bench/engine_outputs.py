"""Bit-identity check of the engine across a refactoring: the shipped bundle and the handcrafted
synthesizer run on phantom cases with fixed seeds, every output array saved; then compared.

    python bench/engine_outputs.py save before.npz          # on the old commit
    python bench/engine_outputs.py save after.npz           # on the new one
    python bench/engine_outputs.py compare before.npz after.npz [demo_dir_before demo_dir_after]

The runs cover a case at the bundle's spacing and one resampled to it, drawn / given / "any" curve
types, drawn / forced / given necrotic cores, ``latent_pair``, ``reconstruct``, a pipeline without
calibrations or noise restoration, the progress messages and the provenance records (~25 s on 2 CPU
cores). ``compare`` also compares two ``synbt demo`` folders: NIfTI arrays and PNG bytes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def save(out: str) -> None:
    import torch

    from SynBTLib.handcrafted import HandcraftedSynthesizer
    from SynBTLib.paths import default_bundle_path
    from SynBTLib.phantom import make_phantom
    from SynBTLib.pipeline import SynthesisPipeline
    from SynBTLib.preprocess import breast_tissue_mask
    from SynBTLib.shapes import place_tumor

    torch.manual_seed(0)
    pipe = SynthesisPipeline.from_bundle(default_bundle_path())
    native = make_phantom(seed=4, shape=(192, 192, 64), phases=3, tumors=0).case  # the bundle's spacing
    coarse = make_phantom(seed=5, shape=(96, 96, 32), phases=3, tumors=0).case  # resampled to it

    def mask_for(case, size_mm, seed):
        allowed = breast_tissue_mask(case).breast
        return place_tumor(allowed, case.geometry, size_mm, seed=seed, kind="lobulated", margin_mm=4.0).mask

    m1, m2, m3 = mask_for(native, 22.0, 0), mask_for(native, 8.0, 1), mask_for(coarse, 20.0, 2)
    core = np.zeros_like(m1)
    zz, yy, xx = np.nonzero(m1)
    core[zz[::3], yy[::3], xx[::3]] = 1
    messages = []
    res = {
        "default": pipe(native, m1, seed=0, steps=6, progress=lambda *m: messages.append(m)).phases,
        "washout_core": pipe(native, m1, seed=1, steps=5, kinetics="washout", necrosis=True).phases,
        "any_no_core": pipe(native, m2, seed=2, steps=5, kinetics="any", necrosis=False).phases,
        "given_core": pipe(native, m1, seed=3, steps=4, kinetics="plateau", necrosis=core).phases,
        "resampled": pipe(coarse, m3, seed=4, steps=5).phases,
        "resampled_core": pipe(coarse, m3, seed=5, steps=4, necrosis=True, kinetics="persistent").phases,
        "reconstruct": pipe.reconstruct(native, m1, seed=8).phases,
        "reconstruct_resampled": pipe.reconstruct(coarse, m3, seed=9).phases,
    }
    for name, (case, mask, seed, options) in {"pair": (native, m1, 6, {}),
                                               "pair_resampled": (coarse, m3, 7, dict(kinetics="washout", necrosis=True))}.items():
        for part, tensor in zip(("known", "generated", "cells"), pipe.latent_pair(case, mask, seed=seed, steps=4, **options)):
            res[f"{name}_{part}"] = tensor.numpy()
    plain = SynthesisPipeline.from_bundle(default_bundle_path(), calibration=None, image_calibration=None,
                                          restore_noise=False, blend_mm=0.0, eta=0.5)
    res["plain"] = plain(native, m1, seed=10, steps=4).phases
    res["handcrafted"] = HandcraftedSynthesizer()(native, m1, seed=11).phases
    res["describe"] = np.array(str([pipe.describe(s, None, m1, native.geometry.spacing[::-1]) for s in range(6)]))
    res["progress"] = np.array(str(messages))
    np.savez(out, **res)
    print(f"{len(res)} outputs saved to {out}")


def compare(a_path: str, b_path: str, demo_a: str | None = None, demo_b: str | None = None) -> int:
    a, b = np.load(a_path), np.load(b_path)
    if sorted(a.files) != sorted(b.files):
        print(f"different outputs: {sorted(a.files)} vs {sorted(b.files)}")
        return 1
    differing = [k for k in a.files if not (a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]))]
    print(f"{len(a.files)} outputs compared, differing: {differing or 'none'}")
    if demo_a and demo_b:
        import SimpleITK as sitk

        for path in sorted(p for p in Path(demo_a).rglob("*") if p.is_file() and p.name.endswith((".nii.gz", ".png"))):
            other = Path(demo_b) / path.relative_to(demo_a)
            if path.suffix == ".png":
                same = path.read_bytes() == other.read_bytes()
            else:
                x, y = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (path, other))
                same = x.dtype == y.dtype and np.array_equal(x, y)
            differing += [] if same else [str(path)]
            print(f"{path.relative_to(demo_a)}: {'identical' if same else 'DIFFERS'}")
    return 1 if differing else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("save").add_argument("out")
    c = sub.add_parser("compare")
    c.add_argument("paths", nargs="+", help="two .npz files, then optionally two demo folders")
    args = parser.parse_args(argv)
    if args.command == "save":
        save(args.out)
        return 0
    if len(args.paths) not in (2, 4):
        parser.error("compare takes two .npz files and optionally two demo folders")
    return compare(*args.paths)


if __name__ == "__main__":
    sys.exit(main())
