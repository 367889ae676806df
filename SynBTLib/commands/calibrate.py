"""`synbt calibrate`: fit the latent and image moment calibration of a diffusion bundle's samples."""
from __future__ import annotations

import shlex


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="correct a denoiser's systematic errors (latent, then per phase), measured on a calibration cohort",
        description="Generates a tumor into the mask of every real tumor of --data (at most --max-tumors), compares "
        "its latent with the encoded real tumor channel by channel, and writes a copy of --bundle whose pipeline "
        "corrects the mean and spread of every generated tumor by what was measured; then does the same per DCE "
        "phase on the decoded syntheses, after the latent correction (SynBTLib/calibration.py). "
        "Use cases the denoiser was not trained on. The input bundle is not modified.",
    )
    p.add_argument("--bundle", required=True, metavar="B", help="diffusion bundle to calibrate")
    p.add_argument("--data", required=True, metavar="DIR", help="cases with tumor labels (any layout synbt reads)")
    p.add_argument("--out", required=True, metavar="DIR", help="new bundle folder (must not exist or be empty)")
    p.add_argument("--max-tumors", type=int, default=24, help="tumors to measure (default 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first generated tumor (default 0)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's)")
    p.add_argument("--latent-only", action="store_true",
                   help="fit the latent calibration only, not the per-phase image calibration after it")
    p.add_argument("--moments-only", action="store_true",
                   help="fit only the image calibration's moments, not its texture, shape and curve maps "
                   "(see SynBTLib/calibration.py)")
    p.add_argument("--notch", type=float, default=None, metavar="S",
                   help="the texture map's latent-cell notch strength (0..0.5) for every phase instead of the fitted "
                   "ones (the shipped bundle: 0.2; see README)")
    p.add_argument("--no-texture", action="store_true",
                   help="leave out the image calibration's texture map (see SynBTLib/calibration.py)")
    p.set_defaults(func=run)


MIN_TUMOR_VOXELS = 27  # calibration.tumor_samples' min_voxels: smaller tumors are not measured


def survey(data, max_tumors: int, min_voxels: int = MIN_TUMOR_VOXELS, policy=None) -> tuple[list[str], list[str]]:
    """(measured, too small): the tumors of ``data`` calibration will use, in its order (at most
    ``max_tumors``), and those it skips for having fewer than ``min_voxels`` voxels. Reads only the labels."""
    import numpy as np
    from scipy import ndimage

    from ..datasets import apply_policy, read_dataset
    from ..io import read_image

    used, small = [], []
    for ref in apply_policy(read_dataset(data), policy)[0]:  # the cases calibration.tumor_samples will take
        if ref.label_path is None:
            continue
        components, n = ndimage.label(read_image(ref.label_path)[0] != 0, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        for label in range(1, n + 1):
            name = f"{ref.case_id} tumor {label}"
            if sizes[label] < min_voxels:
                small.append(f"{name} ({sizes[label]} voxels)")
            elif len(used) < max_tumors:
                used.append(name)
    return used, small


SKIPPED_NAMED = 5  # beyond this many small fragments (Phantom 2's spicule tips), a count and the first few


def _skipped_text(small: list[str]) -> str:
    """'; skipped, under N voxels: ...' naming every fragment, or counting them when there are many."""
    if not small:
        return ""
    if len(small) <= SKIPPED_NAMED:
        return f"; skipped, under {MIN_TUMOR_VOXELS} voxels: {', '.join(small)}"
    cases = len({name.split(' tumor ')[0] for name in small})
    return (f"; skipped {len(small)} parts under {MIN_TUMOR_VOXELS} voxels in {cases} cases "
            f"(first: {', '.join(small[:3])}, ...)")


def run(args) -> int:
    from tqdm import tqdm

    from ..calibrated_bundle import calibrate_bundle
    from ..calibration import MIN_CURVE_TUMORS, MIN_SHAPE_TUMORS
    from ..errors import SynBTError

    from ..phase_choice import BundlePhases

    try:
        policy = BundlePhases.of_bundle(args.bundle).policy
    except SynBTError:  # a missing or broken bundle is reported by calibrate_bundle, after the data's checks
        policy = None
    used, small = survey(args.data, max(args.max_tumors, 0), policy=policy)
    skipped = _skipped_text(small)
    if not used and not small:
        raise SynBTError(f"no labelled tumor found in {args.data} (cases without a tumor label are skipped)")
    if len(used) < 2 <= args.max_tumors:  # (a --max-tumors under 2 is refused by calibrate_bundle)
        raise SynBTError(f"calibration needs at least 2 tumors of {MIN_TUMOR_VOXELS} voxels or more in {args.data}, "
                         f"found {len(used)}{skipped}")
    print(f"calibration tumors: {len(used)}{skipped}")
    passes = 1 if args.latent_only else 2
    with tqdm(total=passes * len(used), desc="calibrate", unit="tumor", disable=None) as bar:
        path, fit, image_fit = calibrate_bundle(args.bundle, args.data, args.out, seed=args.seed, steps=args.steps,
                                                max_tumors=args.max_tumors, command=_command(args),
                                                progress=lambda done: bar.update(done - bar.n),
                                                image=not args.latent_only, moments_only=args.moments_only,
                                                texture=not args.no_texture, notch=args.notch)
    print(f"{fit.tumors} tumors; per latent channel (denoiser space):")
    _print_table(fit, "channel")
    if fit.kinetic_counts:
        print("curve types: " + ", ".join(f"{k} {v}" for k, v in fit.kinetic_counts.items())
              + "; own shift for: " + (", ".join(fit.calibration.kinetic_shift) or "none"))
    if image_fit is not None:
        print("image calibration, per phase (normalized units):")
        _print_table(image_fit, "phase")
        if image_fit.calibration.necrotic_factor is not None:
            print(f"tumors with a necrotic core ({image_fit.necrotic_tumors}): factor "
                  + ", ".join(f"{v:.3f}" for v in image_fit.calibration.necrotic_factor) + " (the table: the others)")
        texture = image_fit.calibration.texture
        if texture is not None:
            print("texture map per phase: notch " + ", ".join(f"{v:.2f}" for v in texture.notch)
                  + "; lag-1 target " + ", ".join(f"{v:.3f}" for v in texture.target)
                  + ("; necrotic cores " + ", ".join(f"{v:.3f}" for v in texture.core_target)
                     if texture.core_target is not None else "; necrotic cores: no detail (too few cores)"))
        elif not args.moments_only:
            print("texture map: " + ("left out (--no-texture)" if args.no_texture else "none (no tumor with neighbours)"))
        shapes = [name for name in ("shape", "necrotic_shape") if getattr(image_fit.calibration, name) is not None]
        for what, fitted, least in (("shape", shapes, MIN_SHAPE_TUMORS),
                                    ("curve", list(image_fit.calibration.curves), MIN_CURVE_TUMORS)):
            none = "left out (--moments-only)" if args.moments_only else f"none (fewer than {least} tumors of a kind)"
            print(f"{what} maps: " + (", ".join(fitted) or none))
    print(f"calibrated bundle: {path}")
    return 0


def _print_table(fit, unit: str) -> None:
    print(f"{unit}  real_spread  generated_spread  factor  real_mean  generated_mean  shift")
    for row in fit.table():
        print(f"{row['channel']:>{len(unit)}}  {row['real_spread']:>11}  {row['generated_spread']:>16}  "
              f"{row['factor']:>6}  {row['real_mean']:>9}  {row['generated_mean']:>14}  {row['shift']:>5}")


def _command(args) -> str:
    words = ["synbt", "calibrate", "--bundle", str(args.bundle), "--data", str(args.data), "--out", str(args.out),
             "--max-tumors", str(args.max_tumors), "--seed", str(args.seed)]
    words += ["--steps", str(args.steps)] if args.steps is not None else []
    words += ["--latent-only"] if args.latent_only else []
    words += ["--no-texture"] if args.no_texture else []
    words += ["--notch", str(args.notch)] if args.notch is not None else []
    return shlex.join(words + (["--moments-only"] if args.moments_only else []))
