"""Independent realism suite: real vs synthetic phantom tumors on features no calibration was fitted to.

    python bench/realism_suite.py --set dev [--variants all,none] [--n 40] [--bundle B] [--cache DIR]
    python bench/realism_suite.py --preset bundle --phase-policy pre,first,last --set heldout --variants all ...

For every case of a seed set (bench/realism_seeds.json: 'dev' to look at, 'heldout' once at the end)
the real tumor is the phantom's own; each variant of the bundle's pipeline synthesizes into the same
mask of the tumor-free twin (SynBTLib.realism.phantom_study_case). SynBTLib.realism_suite.tumor_features
describes every tumor (~180 numbers inside the mask: first order, 3D GLCM, autocorrelation, radial
profile, per-voxel kinetics, cross-phase coupling); gradient boosting and a logistic regression,
cross-validated by case, give AUCs with 95 % bootstrap intervals, always beside two controls:

- oracle: real tumors vs the real tumors of other phantoms (the set's 'oracle' seeds): ~0.5 unless
  something but appearance leaks;
- autoencoder: the real tumor through the bundle's autoencoder alone (SynthesisPipeline.reconstruct),
  the floor any synthesis with these weights can reach.

A variant is 'all' (the bundle as shipped) or 'none' (no calibration, no noise restoration) followed
by stages added (+) or removed (-): noise, latent, texture, moments, shape, curves, e.g.
'none+noise+latent' or 'all-texture'. The diffusion sample does not depend on them, so it is computed
once per case and reused (and kept in --cache with the phantoms, keyed by its inputs).
With --preset (a phantom-2 grid: small, bundle, clinical) the cases are phantom 2 (3-6 phases, fat-sat
or not, 1.5 / 3 T, masses and non-mass enhancement) from the 'phantom2' seed block; the twin is the same
phantom without the lesion, and both keep the phases the bundle models by its phase policy
(phase_choice.choose_phases, as `synbt synthesize` does; --phase-policy for a bundle that records none).
AUCs are then also given per lesion type (mass / nme), from the same out-of-fold scores.
Writes suite_auc.csv, suite_features.csv, suite_coherence.csv, montage.png and manifest.json to --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, RESULTS_DIR, print_table, write_csv  # noqa: E402

SEEDS_FILE = Path(__file__).resolve().parent / "realism_seeds.json"
STAGES = ("noise", "grain", "sharedpost", "latent", "coherence", "white", "texture", "shared", "moments", "shape", "curves")
REAL, ORACLE, AE = "real", "oracle", "autoencoder"
META_COLUMNS = ["case", "seed", "source", "voxels", "kind", "necrotic", "kinetics", "lesion_type", "phases",
                "fat_suppressed", "field_t", "asked_kinetics"]
ASKED = "asked_kinetics"  # the curve type a row's tumor was meant to have: its own, or the one the synthesis drew
LESION_TYPES = ("mass", "nme")
MIN_SUBGROUP_CASES = 8  # an AUC per lesion type only with at least this many cases of it
# what the diagnosis reads first: the tumor's kinetic coherence and the lag-1 subtraction figure
COHERENCE = ("xc_post1_post2", "xc_hp_post1_post2", "late_spread", "kin_uniformity", "ac_sub1_x1", "ac_late_x1")
AS_ASKED = "curve_as_asked"  # kinetic control: the curve type made is the one asked (see as_asked)


def seed_block(preset: str | None) -> dict:
    """The seed sets of realism_seeds.json: the legacy ones, or the 'phantom2' block for a preset."""
    spec = json.loads(SEEDS_FILE.read_text())
    return spec if preset in (None, "legacy") else spec["phantom2"]


def seed_list(name: str, n: int | None, preset: str | None = None) -> tuple[list[int], list[int], list[int]]:
    spec = seed_block(preset)
    if name not in spec or name == "fit" and "oracle" not in spec[name]:
        raise SystemExit(f"seed set {name!r} not in {SEEDS_FILE}")
    cases, oracle = spec[name]["cases"], spec[name]["oracle"]
    count = cases["count"] if n is None else min(n, cases["count"])
    return (list(range(cases["first"], cases["first"] + count)),
            list(range(oracle["first"], oracle["first"] + count)), spec["shape"])


def shipped_stages(pipeline) -> frozenset:
    """The corrections the bundle's pipeline carries, as STAGES names."""
    image = pipeline.image_calibration
    on = {"noise"} if pipeline.restore_noise else set()
    on |= {"grain"} if pipeline.noise_grain_vox > 0 else set()
    on |= {"sharedpost"} if pipeline.phase_model == "shared" else set()
    on |= {"latent"} if pipeline.calibration is not None else set()
    if image is not None:
        on |= {"moments"} | ({"shape"} if image.shape is not None else set()) | ({"curves"} if image.curves else set())
        on |= {"coherence"} if image.coherence is not None else set()
        on |= {"white"} if image.coherence is not None and image.coherence.residual == "white" else set()
        if image.texture is not None:
            on |= {"texture"} | ({"shared"} if image.texture.shared_detail else set())
    return frozenset(on)


def parse_variant(text: str, shipped: frozenset = frozenset(STAGES)) -> frozenset:
    """'all' (the ``shipped`` stages) / 'none' with +stage / -stage edits -> the set of stages on."""
    import re

    parts = re.findall(r"[+-]?[a-z]+", text)
    if not parts or parts[0] not in ("all", "none"):
        raise SystemExit(f"variant {text!r} must start with all or none")
    on = set(shipped) if parts[0] == "all" else set()
    for part in parts[1:]:
        stage = part[1:]
        if part[0] not in "+-" or stage not in STAGES:
            raise SystemExit(f"variant {text!r}: unknown edit {part!r} (stages: {', '.join(STAGES)})")
        (on.add if part[0] == "+" else on.discard)(stage)
    return frozenset(on)


def configure(pipeline, base, stages: frozenset, coherence=None, grain: float = 0.0) -> None:
    """Set ``pipeline``'s corrections to the ``stages`` of the bundle's own (``base``: its latent and
    image calibrations; ``coherence``: a CoherenceMap where the bundle has none; 'shared': the
    texture map's detail shared by the post-contrast phases; 'grain': the decoder's grain smoothed by
    ``grain`` voxels and the measured acquisition noise added last, SynthesisPipeline.noise_grain_vox)."""
    from SynBTLib.calibration import ImageCalibration

    latent, image = base
    if image is None and "coherence" in stages and coherence is not None:
        image = ImageCalibration(tuple(0.0 for _ in range(3)), tuple(1.0 for _ in range(3)))
    pipeline.restore_noise = "noise" in stages
    pipeline.noise_grain_vox = grain if "grain" in stages else 0.0
    pipeline.phase_model = "shared" if "sharedpost" in stages else "calibrated"
    pipeline.calibration = latent if "latent" in stages else None
    if image is None:
        pipeline.image_calibration = None
        return
    changes = {}
    if "moments" not in stages:
        ones = tuple(1.0 for _ in image.factor)
        changes.update(shift=tuple(0.0 for _ in image.shift), factor=ones, kinetic_shift={}, necrotic_factor=None)
    if "shape" not in stages:
        changes.update(shape=None, necrotic_shape=None)
    if "curves" not in stages:
        changes.update(curves={})
    if "texture" not in stages:
        changes.update(texture=None)
    elif image.texture is not None:
        changes.update(texture=dataclasses.replace(image.texture, shared_detail="shared" in stages))
    chosen = (image.coherence or coherence) if "coherence" in stages else None
    if chosen is not None:
        chosen = dataclasses.replace(chosen, residual="white" if "white" in stages else "own")
    changes.update(coherence=chosen)
    image_stages = {"moments", "shape", "curves", "texture", "coherence"} & stages
    pipeline.image_calibration = dataclasses.replace(image, **changes) if image_stages else None


def memoize_sampling(cache: Path | None) -> None:
    """Keep every diffusion sample (SynBTLib.pipeline.inpaint_latent) by a hash of all its inputs, in
    memory and in ``cache``: the variants of a case share it, and reruns skip it."""
    import torch

    import SynBTLib.pipeline as pipeline_module

    original, memory = pipeline_module.inpaint_latent, {}

    def cached(denoiser, scheduler, known, context, mask, steps, generator, **options):
        digest = hashlib.sha256()
        for tensor in (known, context, mask):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        weights = sum(float(p.double().sum()) for p in denoiser.parameters())
        digest.update(repr((steps, generator.initial_seed(), weights, sorted(options.items(), key=str))).encode())
        key = digest.hexdigest()[:32]
        if key in memory:
            return memory[key].clone()
        path = None if cache is None else cache / "latents" / f"{key}.pt"
        if path is not None and path.exists():
            latent = torch.load(path, weights_only=True)
        else:
            latent = original(denoiser, scheduler, known, context, mask, steps, generator, **options)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(latent, path)
        memory[key] = latent
        return latent.clone()

    pipeline_module.inpaint_latent = cached


def study_case(seed: int, shape, cache: Path | None, preset: str | None = None, phases=None):
    """phantom_study_case of ``seed`` (a phantom-2 ``preset``: on its own grid), with the phases a
    phase_choice.BundlePhases ``phases`` models, kept in ``cache`` (the arrays and reference masks)."""
    import pickle  # our own cache files only

    from SynBTLib.realism import choose_study_phases, phantom_study_case

    legacy = preset in (None, "legacy")
    name = f"{seed}_{'x'.join(map(str, shape))}" if legacy else \
        f"{seed}_{preset}_{phases.count}_{(phases.policy or 'all').replace(',', '-').replace(':', '')}"
    path = None if cache is None else cache / "phantoms" / f"{name}.pkl"
    if path is not None and path.exists():
        with open(path, "rb") as handle:
            return pickle.load(handle)
    study = phantom_study_case(seed, shape=tuple(shape)) if legacy else phantom_study_case(seed, preset=preset)
    if phases is not None:
        study = choose_study_phases(study, phases)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            pickle.dump(study, handle)
    return study


def fit_coherence(shape, cache: Path | None, out: Path, preset: str | None = None, phases=None) -> Path:
    """The CoherenceMap of the real tumors of the 'fit' seeds (the only seeds anything is fitted on)."""
    from SynBTLib.calibration import coherence_targets
    from SynBTLib.necrosis import necrotic_core

    spec = seed_block(preset)["fit"]["cases"]
    seeds = range(spec["first"], spec["first"] + spec["count"])
    studies = (study_case(seed, shape, cache, preset, phases) for seed in seeds)
    fitted = coherence_targets((s.real.phases, s.mask, necrotic_core(s.real.phases, s.mask)) for s in studies)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seeds": [seeds[0], seeds[-1]], "coherence": fitted.to_config()}, indent=2))
    print(f"coherence of the real tumors of fit seeds {seeds[0]}..{seeds[-1]}: {fitted}; wrote {out}")
    return out


def bundle_phases(bundle: Path, policy: str | None):
    """The phases ``bundle`` models (phase_choice.BundlePhases), its policy or ``policy`` where it records
    none; a policy that contradicts the bundle's own is refused."""
    from SynBTLib.datasets import phase_policy
    from SynBTLib.phase_choice import BundlePhases

    phases = BundlePhases.of_bundle(bundle)
    if policy is None:
        if phases.policy is None:
            raise SystemExit(f"the bundle {bundle} records no phase policy and phantom-2 cases have 3-6 phases: "
                             f"pass --phase-policy (the {phases.count} phases it models, e.g. pre,first,last)")
        return phases
    given = phase_policy(policy)
    if given.count != phases.count:
        raise SystemExit(f"--phase-policy {policy} picks {given.count} phases but the bundle {bundle} models {phases.count}")
    if phases.policy is not None and phase_policy(phases.policy).tokens != given.tokens:
        raise SystemExit(f"--phase-policy {policy} contradicts the bundle's own phase policy {phases.policy}")
    return BundlePhases(phases.count, phases.policy or given.spec)


def case_meta(study) -> dict:
    """The columns that describe a case (not features): its seed, lesion and protocol."""
    tumor = study.meta["tumor"]
    return {"seed": study.seed, "voxels": int(study.mask.sum()), "kind": tumor["kind"], "necrotic": tumor["necrotic"],
            "kinetics": tumor["kinetics"], "lesion_type": tumor.get("lesion_type", "mass"),
            "phases": len(study.meta.get("phase_times_s", [0, 0, 0])), "fat_suppressed": study.meta.get("fat_suppressed", True),
            "field_t": study.meta.get("field_strength_t", 1.5), ASKED: tumor["kinetics"]}


def wanted_example(examples: list[dict], lesion_type: str, count: int) -> bool:
    """Whether a case goes into the montage: the first ``count`` cases, but the last place is kept for
    the first non-mass lesion (when there is one)."""
    if len(examples) >= count:
        return False
    has_other = any(not e["label"].startswith("mass") for e in examples)
    return lesion_type != "mass" or has_other or len(examples) < count - 1


def features_of(case, mask, reference_mask) -> dict:
    from SynBTLib.realism import reference_intensity
    from SynBTLib.realism_suite import tumor_features

    return tumor_features(case.phases, mask, reference_intensity(case, reference_mask))


def montage(examples: list[dict], sources: list[str], path: Path, title: str | None = None) -> Path:
    """Per example (rows) and source: axial crop of every phase, post1 - pre and post2 - post1
    (diverging, symmetric window from the real tumor), through the tumor's largest slice. An
    example's "label" (e.g. its lesion type and phases) goes beside its seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["pre", "post1", "post2", "post1 - pre", "post2 - post1"]
    rows = [(e, s) for e in examples for s in sources]
    figure, axes = plt.subplots(len(rows), len(columns), figsize=(1.9 * len(columns), 1.9 * len(rows)), squeeze=False)
    for r, (example, source) in enumerate(rows):
        crops = example[source]
        real = example[REAL]
        for c, name in enumerate(columns):
            axis = axes[r, c]
            if name == "post2 - post1":
                limit = max(float(np.percentile(np.abs(real[name][real["mask"] > 0]), 99)), 1e-6) * 1.5
                axis.imshow(crops[name], cmap="RdBu_r", vmin=-limit, vmax=limit)
            else:
                low, high = np.percentile(real[name], [1, 99.5])
                axis.imshow(crops[name], cmap="gray", vmin=low, vmax=high)
            axis.contour(crops["mask"], levels=[0.5], colors="yellow", linewidths=0.4)
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(name, fontsize=8)
            if c == 0:
                axis.set_ylabel(f"{example['seed']} {example.get('label', '')}\n{source}", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 1 - (0.3 if title else 0) / figure.get_figheight()))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def crops_of(case, mask) -> dict:
    z = int(np.argmax(mask.sum(axis=(1, 2))))
    ys, xs = np.nonzero(mask[z])
    half = int(max(np.ptp(ys), np.ptp(xs)) // 2 + 8)
    cy, cx = int(ys.mean()), int(xs.mean())
    window = (z, slice(max(cy - half, 0), cy + half + 1), slice(max(cx - half, 0), cx + half + 1))
    p = case.phases.astype(np.float64)
    return {"pre": p[0][window], "post1": p[1][window], "post2": p[2][window],
            "post1 - pre": (p[1] - p[0])[window], "post2 - post1": (p[2] - p[1])[window], "mask": mask[window]}


CROP = 32  # voxels per side of the judge crops (bench/realism_cnn.py)


def judge_crop(case, mask, reference_mask) -> np.ndarray:
    """(6, CROP, CROP, CROP) float32 around the tumor's centroid: pre, post1, post2, post1 - pre,
    post2 - post1 divided by the case's reference tissue intensity, and the mask (edge-padded)."""
    from SynBTLib.realism import reference_intensity

    reference = reference_intensity(case, reference_mask)
    p = case.phases[:3].astype(np.float32) / reference
    stack = np.concatenate([p, p[1:2] - p[0:1], p[2:3] - p[1:2], (mask > 0)[None].astype(np.float32)])
    centre = np.round(np.argwhere(mask > 0).mean(axis=0)).astype(int)
    half = CROP // 2
    pad = [(0, 0)] + [(half, half)] * 3
    padded = np.pad(stack, pad, mode="edge")
    window = tuple(slice(c, c + CROP) for c in centre)  # centre + half in padded coordinates, minus half
    return np.ascontiguousarray(padded[(slice(None), *window)])  # a copy: a view would keep the padded volume alive


def real_rows_digest(features_csv: Path) -> str:
    """sha256 of the real tumors' rows of a suite_features.csv: equal in two runs when they judged the
    same real tumors (same seeds, phantom and phase choice), whatever the bundle."""
    import csv

    digest = hashlib.sha256()
    with open(features_csv, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        keep = [i for i, name in enumerate(header) if name != ASKED]  # a column added later: digests stay comparable
        source = header.index("source")
        for row in reader:
            if row[source] == REAL:
                digest.update(",".join(row[i] for i in keep).encode() + b"\n")
    return digest.hexdigest()


def bundle_sha(bundle: Path) -> str:
    from SynBTLib.bundle import load_bundle

    return load_bundle(bundle).sha256


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="dev", choices=("dev", "heldout"), help="seed set of realism_seeds.json")
    parser.add_argument("--n", type=int, default=None, help="first N cases of the set (default: all)")
    parser.add_argument("--bundle", type=Path, default=None, help="diffusion bundle (default: the shipped one)")
    parser.add_argument("--variants", default="all", help="comma-separated variants (see the doc); default all")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--classifiers", default="boosting,logistic")
    parser.add_argument("--repeats", type=int, default=3, help="fold shuffles (default 3)")
    parser.add_argument("--examples", type=int, default=4, help="cases in the montage (default 4)")
    parser.add_argument("--cache", type=Path, default=None, help="folder keeping phantoms and diffusion samples")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "realism_suite")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale of the syntheses (default: the bundle's own)")
    parser.add_argument("--save-crops", action="store_true",
                        help="also write judge_crops.npz (tumor-centred crops of every source, for bench/realism_cnn.py)")
    parser.add_argument("--grain", type=float, default=None,
                        help="voxels of the 'grain' stage (default: the bundle's noise_grain_vox, else 0.75)")
    parser.add_argument("--fit-coherence", action="store_true",
                        help="only fit the coherence map on the real tumors of the 'fit' seeds, write coherence_fit.json")
    parser.add_argument("--coherence", type=Path, default=RESULTS_DIR / "realism_suite" / "coherence_fit.json",
                        help="coherence map for variants with +coherence where the bundle has none")
    parser.add_argument("--from-features", type=Path, default=None,
                        help="judge the rows of an earlier run's suite_features.csv instead of synthesizing")
    parser.add_argument("--preset", default=None, choices=("legacy", "small", "bundle", "clinical"),
                        help="phantom-2 grid preset: cases from the 'phantom2' seed block (default: the legacy phantom)")
    parser.add_argument("--phase-policy", default=None,
                        help="phases the bundle models (datasets.PhasePolicy, e.g. pre,first,last) when it records "
                             "none; a bundle that records one must record this one")
    args = parser.parse_args(argv)
    if args.from_features is not None:
        return judge_only(args)
    from SynBTLib.bundle import default_bundle_path

    bundle = args.bundle or default_bundle_path()
    phases = bundle_phases(bundle, args.phase_policy) if args.preset not in (None, "legacy") else None
    if args.fit_coherence:
        fit_coherence(seed_block(args.preset)["shape"], args.cache, args.out / "coherence_fit.json", args.preset, phases)
        return 0

    import torch
    from tqdm import tqdm

    from SynBTLib.pipeline import SynthesisPipeline

    torch.set_num_threads(args.threads)
    seeds, oracle_seeds, shape = seed_list(args.set, args.n, args.preset)
    memoize_sampling(args.cache)
    pipeline = SynthesisPipeline.from_bundle(bundle)
    if args.guidance is not None:
        if not args.guidance >= 1.0 or not np.isfinite(args.guidance):
            raise SystemExit(f"--guidance must be 1 or more (1 = none), got {args.guidance}")
        pipeline.guidance_scale = float(args.guidance)  # part of the diffusion cache's key (an option)
    shipped = shipped_stages(pipeline)
    # 'recon:<variant>': the autoencoder control with that variant's corrections (a control, not a synthesis)
    variants = {name.strip(): parse_variant(name.strip().removeprefix("recon:"), shipped)
                for name in args.variants.split(",") if name.strip()}
    base = (pipeline.calibration, pipeline.image_calibration)
    grain = args.grain if args.grain is not None else (pipeline.noise_grain_vox or 0.75)
    coherence = None
    if any("coherence" in stages for stages in variants.values()) and args.coherence.exists():
        from SynBTLib.calibration import CoherenceMap

        coherence = CoherenceMap.from_config(json.loads(args.coherence.read_text())["coherence"])
    started = time.perf_counter()
    rows, examples, crops = [], [], []
    for index, (seed, oracle_seed) in enumerate(tqdm(list(zip(seeds, oracle_seeds)), desc="suite", unit="case")):
        study = study_case(seed, shape, args.cache, args.preset, phases)
        other = study_case(oracle_seed, shape, args.cache, args.preset, phases)
        meta = {"case": index, **case_meta(study)}
        rows.append({**meta, "source": REAL, **features_of(study.real, study.mask, study.real_reference)})
        rows.append({"case": index, **case_meta(other), "source": ORACLE,
                     **features_of(other.real, other.mask, other.real_reference)})
        if args.save_crops:
            crops.append((index, REAL, judge_crop(study.real, study.mask, study.real_reference)))
            crops.append((index, ORACLE, judge_crop(other.real, other.mask, other.real_reference)))
        configure(pipeline, base, shipped, coherence, grain)  # the control gets the bundle's own noise restoration
        recon = pipeline.reconstruct(study.real, study.mask, seed=seed)
        rows.append({**meta, "source": AE, **features_of(recon, study.mask, study.real_reference)})
        if args.save_crops:
            crops.append((index, AE, judge_crop(recon, study.mask, study.real_reference)))
        example = {"seed": seed, "label": f"{meta['lesion_type']} {meta['phases']}ph",
                   REAL: crops_of(study.real, study.mask), AE: crops_of(recon, study.mask)} \
            if wanted_example(examples, meta["lesion_type"], args.examples) else None
        for name, stages in variants.items():
            configure(pipeline, base, stages, coherence, grain)
            if name.startswith("recon:"):
                synthetic = pipeline.reconstruct(study.real, study.mask, seed=seed)
                reference = study.real_reference
            else:
                synthetic = pipeline(study.background, study.mask, seed=seed, steps=args.steps)
                reference = study.background_reference
            asked = {} if name.startswith("recon:") else {ASKED: pipeline.choose_kinetics(None, seed)}  # drawn
            rows.append({**meta, "source": name, **asked, **features_of(synthetic, study.mask, reference)})
            if args.save_crops:
                crops.append((index, name, judge_crop(synthetic, study.mask, reference)))
            if example is not None:
                example[name] = crops_of(synthetic, study.mask)
        if example is not None:
            examples.append(example)
    elapsed = time.perf_counter() - started

    names = [k for k in rows[0] if k not in META_COLUMNS]
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, META_COLUMNS + names, args.out / "suite_features.csv")
    if crops:
        np.savez_compressed(args.out / "judge_crops.npz", case=np.array([c[0] for c in crops]),
                            source=np.array([c[1] for c in crops]), crops=np.stack([c[2] for c in crops]))
    results, coherence = judge(rows, names, list(variants), args)
    print(f"{len(seeds)} cases of set {args.set} ({seeds[0]}..{seeds[-1]}), bundle {bundle}, {elapsed:.0f} s, "
          f"{len(names)} features")
    report(results, coherence)
    write_csv(results, result_columns(results), args.out / "suite_auc.csv")
    write_csv(coherence, ["source", *COHERENCE, AS_ASKED], args.out / "suite_coherence.csv")
    title = None if phases is None else f"phantom 2 ({args.preset}), phase policy {phases.policy}: " \
        "post1 / post2 = the 2nd / 3rd phase it picks"
    figure = montage(examples, [REAL, AE, *variants], args.out / "montage.png", title)
    real_rows = [r for r in rows if r["source"] == REAL]
    manifest = {"command": "python bench/realism_suite.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "git_commit": git_commit(), "bundle": str(bundle), "bundle_sha256": bundle_sha(bundle),
                "preset": args.preset or "legacy", "phase_policy": None if phases is None else phases.policy,
                "lesion_types": {t: sum(r["lesion_type"] == t for r in real_rows) for t in LESION_TYPES},
                "phase_counts": {str(k): sum(r["phases"] == k for r in real_rows)
                                 for k in sorted({r["phases"] for r in real_rows})},
                "fat_suppressed": sum(bool(r["fat_suppressed"]) for r in real_rows),
                "real_rows_sha256": real_rows_digest(args.out / "suite_features.csv"),
                "set": args.set, "seeds": [seeds[0], seeds[-1]], "oracle_seeds": [oracle_seeds[0], oracle_seeds[-1]],
                "variants": {k: sorted(v) for k, v in variants.items()}, "features": len(names),
                "guidance_scale": pipeline.guidance_scale,
                "seconds": round(elapsed), "results": results, "coherence": coherence}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"wrote {args.out}/suite_*.csv, {figure} and manifest.json")
    return 0


def judge(rows: list[dict], names: list[str], variants: list[str], args) -> tuple[list[dict], list[dict]]:
    """AUC rows (real vs each control and variant) and the coherence means of every source."""
    from SynBTLib.realism_suite import auc_score, bootstrap_interval, cross_validated_auc

    kinds = [k.strip() for k in args.classifiers.split(",") if k.strip()]
    results = []
    for source in [ORACLE, AE, *variants]:
        subset = [r for r in rows if r["source"] in (REAL, source)]
        x = np.array([[r[k] for k in names] for r in subset], np.float64)
        y = np.array([r["source"] == source for r in subset], int)
        groups = np.array([r["case"] for r in subset])
        types = np.array([r.get("lesion_type") or "mass" for r in subset])
        entry = {"source": source, "tumors_per_class": int(y.sum())}
        split = {}
        for kind in kinds:
            result = cross_validated_auc(x, y, groups, kind=kind, repeats=args.repeats)
            entry[f"auc_{kind}"] = round(result.auc, 3)
            entry[f"ci_{kind}"] = f"{result.low:.3f}-{result.high:.3f}"
            # per lesion type: the same out-of-fold scores (one judge for all), where there are enough cases
            for lesion in LESION_TYPES:
                chosen = types == lesion
                if np.unique(groups[chosen & (y == 1)]).size < MIN_SUBGROUP_CASES or \
                        np.unique(groups[chosen & (y == 0)]).size < MIN_SUBGROUP_CASES:
                    continue
                low, high = bootstrap_interval(result.scores[chosen], y[chosen], groups[chosen])
                split[f"auc_{kind}_{lesion}"] = round(auc_score(result.scores[chosen], y[chosen]), 3)
                split[f"ci_{kind}_{lesion}"] = f"{low:.3f}-{high:.3f}"
                split[f"n_{lesion}"] = int((chosen & (y == 1)).sum())
        no_cross = [i for i, k in enumerate(names) if not k.startswith(("xc_", "late_", "kin_"))]
        result = cross_validated_auc(x[:, no_cross], y, groups, kind=kinds[0], repeats=args.repeats)
        entry[f"auc_{kinds[0]}_no_cross_phase"] = round(result.auc, 3)
        results.append({**entry, **split})
    coherence = []
    for source in [REAL, ORACLE, AE, *variants]:
        values = {k: np.array([r[k] for r in rows if r["source"] == source], np.float64) for k in COHERENCE}
        coherence.append({"source": source, **{k: round(float(np.nanmean(v)), 3) for k, v in values.items()},
                          AS_ASKED: as_asked([r for r in rows if r["source"] == source])})
        present = sorted({r.get("lesion_type") or "mass" for r in rows})
        for lesion in present if len(present) > 1 else ():  # one lesion type: the line above says it all
            mine = [r for r in rows if r["source"] == source and (r.get("lesion_type") or "mass") == lesion]
            if mine:
                coherence.append({"source": f"{source} ({lesion})", **{
                    k: round(float(np.nanmean(np.array([r[k] for r in mine], np.float64))), 3) for k in COHERENCE},
                    AS_ASKED: as_asked(mine)})
    return results, coherence


def as_asked(rows: list[dict]) -> float:
    """Share of tumors whose curve type (kinetics.classify_curve of the tumor's mean normalized signal in
    pre, post1, post2) is the one it was meant to have (ASKED): a phantom tumor's own, a synthesis's the
    one its pipeline drew by the seed (SynthesisPipeline.choose_kinetics) and gave the denoiser."""
    from SynBTLib.kinetics import classify_curve

    known = [r for r in rows if r.get(ASKED) in ("persistent", "plateau", "washout")]
    hits = [classify_curve([float(r[f"fo_{p}_mean"]) for p in ("pre", "post1", "post2")]) == r[ASKED]
            for r in known]
    return round(float(np.mean(hits)), 3) if hits else float("nan")


def report(results: list[dict], coherence: list[dict]) -> None:
    print("\nCoherence inside the tumor (means over tumors)")
    print_table(coherence, ["source", *COHERENCE, AS_ASKED])
    print("\nReal vs each source, cross-validated by case (5 folds x repeats), AUC [95 % bootstrap interval]")
    columns = result_columns(results)
    main = [c for c in columns if not c.endswith(tuple(f"_{t}" for t in LESION_TYPES))]
    print_table(results, main)
    if len(main) < len(columns):
        print(f"\nThe same out-of-fold scores per lesion type (n_*: tumors per class; at least {MIN_SUBGROUP_CASES} cases)")
        print_table(results, ["source", *[c for c in columns if c not in main]])


def result_columns(results: list[dict]) -> list[str]:
    """Every column of the AUC rows, in first-seen order (the per-lesion-type ones only where counts allowed)."""
    return list(dict.fromkeys(k for row in results for k in row))


def judge_only(args) -> int:
    """--from-features: the judge on an earlier run's feature rows (every source in them)."""
    import csv

    with open(args.from_features) as handle:
        rows = list(csv.DictReader(handle))
    names = [k for k in rows[0] if k not in META_COLUMNS]
    for row in rows:
        row.update({k: float(row[k]) if row[k] not in ("", "None") else np.nan for k in names})
        row["lesion_type"] = row.get("lesion_type") or "mass"  # files from before phantom 2: masses only
        row["case"] = int(row["case"])
    variants = [s for s in dict.fromkeys(r["source"] for r in rows) if s not in (REAL, ORACLE, AE)]
    if any(not r.get(ASKED) for r in rows):  # a file from before the column: the types --bundle draws
        from SynBTLib.bundle import default_bundle_path
        from SynBTLib.pipeline import SynthesisPipeline

        bundle = args.bundle or default_bundle_path()
        pipeline = SynthesisPipeline.from_bundle(bundle)
        for r in rows:
            synthesized = r["source"] in variants and not r["source"].startswith("recon:")
            r[ASKED] = pipeline.choose_kinetics(None, int(r["seed"])) if synthesized else r["kinetics"]
        print(f"curve types the syntheses were given: drawn by their seeds as bundle {bundle} draws them")
    results, coherence = judge(rows, names, variants, args)
    print(f"{len({r['case'] for r in rows})} cases from {args.from_features}, {len(names)} features")
    report(results, coherence)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(results, result_columns(results), args.out / "suite_auc.csv")
    write_csv(coherence, ["source", *COHERENCE, AS_ASKED], args.out / "suite_coherence.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
