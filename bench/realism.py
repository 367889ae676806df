"""Realism study: can a logistic classifier tell synthetic tumors from the phantom's real ones?

    python bench/realism.py --bundle /work/runs/diffusion/bundle --n 12 --out bench/results/realism

For each of N phantom seeds (make_phantom at --shape, never used for training: seeds from
--first-seed on), the real tumor is the phantom's own (tumors=1); the synthetic ones are painted
into the SAME mask of the tumor-free phantom of that seed (same anatomy parameters), by the
diffusion pipeline of --bundle and by the handcrafted baseline. So shape and size are identical
and only appearance differs. Features: SynBTLib.realism.realism_features (intensity statistics
per phase over the case's fibroglandular median, enhancement curve, texture). Per method, an L2
logistic regression with stratified 4-fold cross-validation (the real and synthetic tumor of one
seed share a fold), repeated over fold shuffles, gives the AUC (0.5 = indistinguishable; the
goal for diffusion is <= 0.65). A control, the real tumor's own voxels pasted into the
tumor-free phantom, should score near 0.5: it checks that nothing but appearance gives the
answer. A second control, the real tumor passed through the bundle's autoencoder alone
(SynthesisPipeline.reconstruct: same crop, noise restoration and blend, no denoising), gives the
part of the diffusion AUC that the autoencoder already causes. With --autoencoder-only the bundle
may be an autoencoder-only one and only that control is run: a quick check of a new autoencoder
before a denoiser is trained on it (its region of interest is rounded to the compression only, not
to the denoiser's multiple, so it can differ a little: 0.892 vs 0.912 for the shipped autoencoder).

    python bench/realism.py --bundle runs/ae/bundle --autoencoder-only --n 12 --out /tmp/ae_realism

With --real-kinetics a bundle trained with curve types is asked for each real tumor's measured
type (as `synbt calibrate` and `synbt export --kinetics source` do) instead of the seed's draw: the
realism of the tumors a user gets who picks the type. With --real-necrosis a bundle trained with
necrotic cores gets each real tumor's measured core (necrosis.necrotic_core, as `synbt calibrate`
does) instead of one drawn by the seed.

Writes realism_features.csv, realism_auc.csv, realism_feature_means.csv and realism.png
(example crops and kinetic curves) to --out.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, print_table, write_csv  # noqa: E402

AUC_GOAL = 0.65
REAL = "real"
ORACLE = "oracle-control"
AE_CONTROL = "autoencoder-control"
COLORS = {"real": "black", "diffusion": "tab:blue", "handcrafted": "tab:orange", AE_CONTROL: "tab:green"}


# ------------------------------------------------------------------------------ study


def crop_of(case, mask: np.ndarray) -> dict:
    """Axial crop through the mask's largest slice: phase 1, first subtraction and the mask."""
    z = int(np.argmax(mask.sum(axis=(1, 2))))
    ys, xs = np.nonzero(mask[z])
    half = int(max(np.ptp(ys), np.ptp(xs)) // 2 + 10)
    cy, cx = int(ys.mean()), int(xs.mean())
    window = (z, slice(max(cy - half, 0), cy + half + 1), slice(max(cx - half, 0), cx + half + 1))
    return {
        "phase1": case.phases[1][window].copy(),
        "subtraction": (case.phases[1] - case.phases[0])[window],
        "mask": mask[window].copy(),
    }


def run_study(synthesizers: dict, seeds, shape, steps, examples: int,
              reconstructor=None, real_kinetics: bool = False, real_necrosis: bool = False
              ) -> tuple[list[dict], list[dict], dict]:
    """Feature rows of every tumor (real, per method and, with a ``reconstructor`` pipeline, the real
    tumor through its autoencoder), example crops, and seconds per synthesis. With ``real_kinetics``
    a synthesizer that takes a curve type is asked for the real tumor's measured one, with
    ``real_necrosis`` one that takes a necrotic core gets the real tumor's measured core."""
    from tqdm import tqdm

    from SynBTLib.kinetics import tumor_curve_type
    from SynBTLib.necrosis import necrotic_core
    from SynBTLib.realism import phantom_study_case, realism_features

    rows, crops, seconds = [], [], {name: [] for name in synthesizers}
    for index, seed in enumerate(tqdm(seeds, desc="realism", unit="case")):
        study = phantom_study_case(seed, shape=shape)
        tumor = study.meta["tumor"]
        common = {"seed": seed, "diameter_mm": tumor["diameter_mm"], "kind": tumor["kind"],
                  "necrotic": tumor["necrotic"], "voxels": int(study.mask.sum()),
                  "mask_in_background_breast": study.meta["mask_in_background_breast"]}
        rows.append({**common, "source": REAL, **realism_features(study.real, study.mask, study.real_reference)})
        # control: the real tumor's own voxels pasted into the background; only the reference tissue
        # differs, so its AUC should be near 0.5 unless the normalization leaks
        pasted = study.background.with_phases(np.where(study.mask > 0, study.real.phases, study.background.phases))
        rows.append({**common, "source": ORACLE, **realism_features(pasted, study.mask, study.background_reference)})
        example = {REAL: crop_of(study.real, study.mask)} if index < examples else None
        if reconstructor is not None:
            recon = reconstructor.reconstruct(study.real, study.mask, seed=seed)
            rows.append({**common, "source": AE_CONTROL, **realism_features(recon, study.mask, study.real_reference)})
            if example is not None:
                example[AE_CONTROL] = crop_of(recon, study.mask)
        for name, synth in synthesizers.items():
            start = time.perf_counter()
            options = {}
            if real_kinetics and getattr(synth, "kinetic_choices", ()):
                options["kinetics"] = tumor_curve_type(study.real.phases, study.mask)
            if real_necrosis and getattr(synth, "takes_necrosis", False):
                options["necrosis"] = necrotic_core(study.real.phases, study.mask)
            synthetic = synth(study.background, study.mask, seed=seed, steps=steps.get(name), **options)
            seconds[name].append(time.perf_counter() - start)
            rows.append({**common, "source": name,
                         **realism_features(synthetic, study.mask, study.background_reference)})
            if example is not None:
                example[name] = crop_of(synthetic, study.mask)
        if example is not None:
            crops.append(example)
    return rows, crops, {name: float(np.mean(values)) for name, values in seconds.items()}


def classify(rows: list[dict], feature_names: list[str], methods, folds: int, repeats: int) -> list[dict]:
    """Cross-validated AUC of real vs each method's synthetic tumors."""
    from SynBTLib.realism import cross_validated_auc, feature_matrix

    results = []
    for method in methods:
        subset = [row for row in rows if row["source"] in (REAL, method)]
        x, _ = feature_matrix([{name: row[name] for name in feature_names} for row in subset])
        y = np.array([row["source"] == method for row in subset], dtype=int)
        cv = cross_validated_auc(x, y, folds=folds, seed=0, groups=[row["seed"] for row in subset], repeats=repeats)
        results.append({
            "method": method, "tumors_per_class": int(y.sum()), "auc": cv.auc, "auc_std_over_folds": cv.auc_std,
            "pooled_auc": cv.pooled_auc, "goal": f"<= {AUC_GOAL}", "meets_goal": cv.auc <= AUC_GOAL,
        })
    return results


def feature_means(rows: list[dict], feature_names: list[str], methods) -> list[dict]:
    """Mean (sd) per feature for real and each method, with the standardized difference to real."""
    table = []
    for name in feature_names:
        real = np.array([row[name] for row in rows if row["source"] == REAL])
        entry = {"feature": name, "real": f"{real.mean():.3g} ({real.std():.2g})"}
        for method in methods:
            values = np.array([row[name] for row in rows if row["source"] == method])
            pooled = np.sqrt((real.var() + values.var()) / 2)
            entry[method] = f"{values.mean():.3g} ({values.std():.2g})"
            entry[f"d_{method}"] = round(float((values.mean() - real.mean()) / pooled), 2) if pooled > 0 else 0.0
        table.append(entry)
    return table


# ------------------------------------------------------------------------------ figure


def kinetic_curve(row: dict, phase_names: list[str]) -> list[float]:
    return [0.0] + [row[f"enhancement_{name}"] for name in phase_names[1:]]


def save_figure(crops: list[dict], rows: list[dict], sources: list[str], phase_names: list[str], path: Path) -> Path:
    """Example crops (phase 1 and subtraction per source, one row per example) and kinetic curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2 * len(sources)
    figure = plt.figure(figsize=(2.1 * columns, 2.2 * (len(crops) + 1.4)))
    grid = figure.add_gridspec(len(crops) + 1, columns, height_ratios=[1] * len(crops) + [1.4])
    for r, example in enumerate(crops):
        # one display window per row, from the real tumor, so brightness compares across sources
        windows = {key: np.percentile(example[REAL][key], [1, 99.5]) for key in ("phase1", "subtraction")}
        for s, source in enumerate(sources):
            for k, key in enumerate(("phase1", "subtraction")):
                axis = figure.add_subplot(grid[r, 2 * s + k])
                crop = example[source]
                axis.imshow(crop[key], cmap="gray", vmin=windows[key][0], vmax=windows[key][1])
                axis.contour(crop["mask"], levels=[0.5], colors="yellow", linewidths=0.5)
                axis.set_xticks([])
                axis.set_yticks([])
                if r == 0:
                    axis.set_title(f"{source}\n{'phase 1' if key == 'phase1' else 'phase 1 - phase 0'}", fontsize=8)
    per_axis = max(1, columns // len(sources))
    shared = None
    for s, source in enumerate(sources):
        axis = figure.add_subplot(grid[-1, s * per_axis:(s + 1) * per_axis], sharey=shared)
        shared = shared or axis
        curves = np.array([kinetic_curve(row, phase_names) for row in rows if row["source"] == source])
        steps = np.arange(len(phase_names))
        for curve in curves:
            axis.plot(steps, curve, color=COLORS.get(source, "gray"), alpha=0.3, linewidth=0.8)
        axis.plot(steps, curves.mean(axis=0), color=COLORS.get(source, "gray"), linewidth=2.5, label="mean")
        axis.set_xticks(steps, phase_names, fontsize=8)
        axis.set_title(f"{source}: relative enhancement", fontsize=9)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="diffusion model bundle (leave out with --methods handcrafted)")
    parser.add_argument("--n", type=int, default=12, help="phantom cases, i.e. tumors per class (default 12)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "realism", help="output folder")
    parser.add_argument("--methods", default="diffusion,handcrafted", help="comma-separated synthesizers to compare")
    parser.add_argument("--steps", type=int, default=None, help="diffusion sampling steps (default: the pipeline's 30)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale of the diffusion pipeline (default: the bundle's)")
    parser.add_argument("--eta", type=float, default=None,
                        help="DDIM stochasticity of the diffusion pipeline (default 0: deterministic steps)")
    parser.add_argument("--first-seed", type=int, default=100_000, help="first phantom seed (default 100000)")
    parser.add_argument("--real-kinetics", action="store_true",
                        help="ask a bundle with curve types for each real tumor's measured type (default: the seed's draw)")
    parser.add_argument("--real-necrosis", action="store_true",
                        help="give a bundle with necrotic cores each real tumor's measured core (default: the seed's draw)")
    parser.add_argument("--shape", type=int, nargs=3, default=(192, 192, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20, help="fold shuffles of the cross-validation (default 20)")
    parser.add_argument("--examples", type=int, default=3, help="example tumors in the figure (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--autoencoder-only", action="store_true",
                        help="only the autoencoder control; --bundle may be an autoencoder-only bundle")
    args = parser.parse_args(argv)
    if args.guidance is not None and not args.guidance >= 1.0:
        parser.error(f"--guidance must be at least 1 (1 = no guidance), got {args.guidance}")
    if args.eta is not None and not 0.0 <= args.eta <= 1.0:
        parser.error(f"--eta must be between 0 and 1, got {args.eta}")

    import torch

    from SynBTLib.errors import SynBTError
    from SynBTLib.synthesizers import make_synthesizer

    torch.set_num_threads(args.threads)
    methods = [] if args.autoencoder_only else [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        if args.autoencoder_only and args.bundle is None:
            raise SynBTError("--autoencoder-only needs --bundle")
        if args.n < args.folds:
            raise SynBTError(f"--n {args.n} is smaller than --folds {args.folds}")
        synthesizers, steps = {}, {}
        for method in methods:
            synthesizers[method], _, steps[method] = make_synthesizer(method, args.bundle, args.steps)
            if method == "diffusion" and args.guidance is not None:
                synthesizers[method].guidance_scale = float(args.guidance)
            if method == "diffusion" and args.eta is not None:
                synthesizers[method].eta = float(args.eta)
            steps[method] = steps[method] if method == "diffusion" else None  # only diffusion samples in steps
        if args.autoencoder_only:
            from SynBTLib.pipeline import SynthesisPipeline

            reconstructor = SynthesisPipeline.from_bundle(args.bundle, reconstruct_only=True)
        else:
            reconstructor = synthesizers.get("diffusion")
        seeds = list(range(args.first_seed, args.first_seed + args.n))
        started = time.perf_counter()
        rows, crops, seconds = run_study(synthesizers, seeds, tuple(args.shape), steps, args.examples, reconstructor,
                                         real_kinetics=args.real_kinetics, real_necrosis=args.real_necrosis)
        elapsed = time.perf_counter() - started
    except SynBTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    meta_columns = ("seed", "source", "diameter_mm", "kind", "necrotic", "voxels", "mask_in_background_breast")
    feature_names = [name for name in rows[0] if name not in meta_columns]
    phase_names = ["pre"] + [name[len("enhancement_"):] for name in feature_names if name.startswith("enhancement_")]
    controls = [ORACLE] + ([AE_CONTROL] if reconstructor is not None else [])
    aucs = classify(rows, feature_names, methods + controls, args.folds, args.repeats)
    for result in aucs:
        result["seconds_per_tumor"] = seconds.get(result["method"])
        result["steps"] = steps.get(result["method"])
    shown = methods + controls[1:]
    means = feature_means(rows, feature_names, shown)

    print(f"{args.n} phantom seeds {seeds[0]}..{seeds[-1]} at {tuple(args.shape)}, bundle {args.bundle}, "
          f"{elapsed:.0f} s; tumors {np.min([r['voxels'] for r in rows]):.0f}..{np.max([r['voxels'] for r in rows]):.0f} voxels")
    print("\nFeature means (sd); d_* = (synthetic - real) / pooled sd")
    mean_columns = ["feature", "real"] + [c for m in shown for c in (m, f"d_{m}")]
    print_table(means, mean_columns)
    auc_columns = ["method", "tumors_per_class", "steps", "auc", "auc_std_over_folds", "pooled_auc", "goal",
                   "meets_goal", "seconds_per_tumor"]
    print(f"\nReal vs synthetic, L2 logistic regression, {args.folds}-fold CV x {args.repeats} shuffles")
    print_table(aucs, auc_columns)

    write_csv(rows, list(meta_columns) + feature_names, args.out / "realism_features.csv")
    write_csv(aucs, auc_columns, args.out / "realism_auc.csv")
    write_csv(means, mean_columns, args.out / "realism_feature_means.csv")
    figure = save_figure(crops, rows, [REAL] + shown, phase_names, args.out / "realism.png")
    print(f"wrote {args.out}/realism_*.csv and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
