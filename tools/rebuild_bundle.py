"""Rebuild the shipped phantom bundle from nothing, with the package's own commands.

    python tools/rebuild_bundle.py --work WORK --version 1.1 --change "what changed"   # hours on 2 CPU cores
    python tools/rebuild_bundle.py --work WORK --version 0.0 --change test --tiny      # about two minutes
    make bundle WORK=... VERSION=... CHANGE="..."

Steps (each a `synbt` command run in WORK; a step whose result exists is skipped and an interrupted
training run is resumed, so the command can be run again after a stop):

1. phantom cohorts: train (20 cases), test (4, held out), cohort3 (40) and cal (64, calibration only);
   ``diff`` links the train and cohort3 cases (the denoiser's data)
2. train-autoencoder (configs/phantom_autoencoder_linear.json)
3. train-diffusion (configs/phantom_diffusion_linear.json), then the necrosis fine-tune that continues
   it (configs/phantom_diffusion_necrosis.json)
4. calibrate on ``cal`` (a cohort the denoiser never saw)
5. WORK/bundle: the calibrated bundle with a ``release`` entry in config.json (version, this change
   appended to the previous bundle's changelog, the commands run) and its model card; SHA256SUMS
6. check: the bundle loads (checksums verified) and `synbt synthesize` makes a tumor in a test case

``--tiny`` runs the same steps on small cohorts with few steps and small networks (the test suite's
form); ``--install`` then copies WORK/bundle over SynBTLib/bundles/phantom (never with --tiny).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "SynBTLib" / "bundles" / "phantom"

# (name, phantom-cohort arguments); the shipped bundle's cohorts (its model card): Phantom 2 on the
# "bundle" grid (192x192x64, 1.77 x 1.77 x 2.34 mm; 3-6 phases, fat-sat or not, 1.5 / 3 T)
COHORTS = {
    "cohort": ["--n", "24", "--seed", "100", "--shape", "192", "192", "64"],
    "cohort3": ["--n", "40", "--seed", "2000", "--max-tumors", "4", "--shape", "192", "192", "64"],
    "cal": ["--n", "64", "--seed", "8000", "--max-tumors", "2", "--shape", "192", "192", "64"],
}
TRAIN_CASES, TEST_CASES = 20, 4
CALIBRATE = ["--max-tumors", "128", "--notch", "0.2"]
# The phases the networks model, picked from each Phantom-2 case's 3-6: pre-contrast, the first
# post-contrast (the initial rise) and the last (the delayed phase, 5.5-8 min, where a curve type shows)
PHASE_POLICY = "pre,first,last"
PRESETS = {"phantom2": "bundle", "legacy": None}  # --phantom: phantom-cohort --preset (None: the legacy phantom)

# fine enough (3.5 x 3.5 x 4.7 mm) that the 30 and 38 mm tumors of cases 1 and 2 show a necrotic core
TINY_COHORTS = {
    "cohort": ["--n", "4", "--seed", "100", "--max-tumors", "3", "--shape", "96", "96", "32"],
    "cohort3": ["--n", "1", "--seed", "2000", "--max-tumors", "3", "--shape", "96", "96", "32"],
    "cal": ["--n", "2", "--seed", "8000", "--max-tumors", "2", "--shape", "96", "96", "32"],
}
TINY_TRAIN_CASES, TINY_TEST_CASES = 3, 1
TINY_CALIBRATE = ["--max-tumors", "2", "--steps", "2", "--latent-only"]
TINY_TRAINING = {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "warmup_steps": 1}
TINY = {
    "autoencoder": {"training": TINY_TRAINING, "data": {"patch_size": [16, 16, 16]}, "pca_patches": 16,
                    "latent_scale_patches": 4},
    "diffusion": {"training": TINY_TRAINING, "data": {"roi_size": [16, 16, 16]}, "latent_scale_patches": 4,
                  "denoiser": {"channels": [8, 16, 16], "num_head_channels": 8, "norm_num_groups": 8}},
}


def synbt(args: list[str], work: Path, log) -> None:
    """Run one `synbt` command of this checkout in ``work``; stop the rebuild when it fails."""
    command = [sys.executable, "-m", "SynBTLib", *args]
    log(" ".join(["synbt", *args]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    result = subprocess.run(command, cwd=work, env=env)
    if result.returncode != 0:
        raise SystemExit(f"rebuild_bundle: `synbt {' '.join(args)}` failed (exit {result.returncode}); "
                         f"run the same command again to continue")


def link_cases(target: Path, sources: list[Path]) -> None:
    """A data set folder of links to the given case folders (no copy)."""
    target.mkdir(parents=True, exist_ok=True)
    for source in sources:
        link = target / f"{source.parent.name}_{source.name}"
        if not link.exists():
            link.symlink_to(source.resolve(), target_is_directory=True)


def write_config(name: str, work: Path, tiny: bool, policy: str | None = None, **changes) -> Path:
    """configs/<name>.json as this rebuild uses it (tiny overrides merged per section, finetune paths in WORK,
    ``policy`` as data.phase_policy)."""
    config = json.loads((REPO / "configs" / f"{name}.json").read_text())
    if policy is not None:
        config["data"] = {**config.get("data", {}), "phase_policy": policy}
    if tiny:
        kind = "autoencoder" if "autoencoder" in name else "diffusion"
        for key, value in TINY[kind].items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        if "finetune" in config:  # the fine-tune keeps the architecture of the run it continues
            config.pop("denoiser", None)
    config.update(changes)
    path = work / "configs" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def train(kind: str, run: Path, args: list[str], work: Path, log) -> Path:
    """A train-* step: skipped when its bundle exists, resumed when it has a checkpoint."""
    bundle = run / "bundle"
    if (bundle / "SHA256SUMS").is_file():
        log(f"(done: {bundle.relative_to(work)})")
        return bundle
    resume = ["--resume"] if (run / "checkpoint.pt").is_file() else []
    synbt([kind, *args, "--out", str(run.relative_to(work)), *resume], work, log)
    return bundle


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def release_entry(version: str, change: str, commands: list[str], previous: dict | None) -> dict:
    """The ``release`` record: this version, the changelog (the previous bundle's, then this change), the recipe."""
    changelog = list((previous or {}).get("changelog", []))
    changelog.append({"version": version, "date": datetime.date.today().isoformat(), "change": change,
                      "commit": git_commit()})
    return {"version": version, "changelog": changelog, "rebuilt_by": "tools/rebuild_bundle.py", "commands": commands}


def release_card(card: str, release: dict) -> str:
    """The calibrated bundle's card with the version, the changelog and the commands that made it."""
    lines = [card.rstrip("\n"), "", f"## Release {release['version']}", "", "Changelog:", ""]
    lines += [f"- {entry['version']} ({entry['date']}): {entry['change']}" for entry in release["changelog"]]
    lines += ["", "Rebuilt by `tools/rebuild_bundle.py` with these commands:", "", "```",
              *release["commands"], "```", ""]
    return "\n".join(lines)


def rebuild(work: Path, version: str, change: str, tiny: bool = False, previous: Path | None = SHIPPED,
            log=print, phantom: str = "phantom2", drop_stages: tuple = (), drop_reason: str = "") -> Path:
    """Run every step in ``work`` on ``phantom`` cohorts ("phantom2" or "legacy"); returns WORK/bundle.
    ``drop_stages``: image-calibration maps to leave out of the bundle (calibrated_bundle.drop_image_stages)."""
    from SynBTLib.bundle import load_bundle, write_checksums
    from SynBTLib.calibrated_bundle import IMAGE_STAGE_KEYS

    if unknown := [stage for stage in drop_stages if stage not in IMAGE_STAGE_KEYS]:  # before hours of training
        raise SystemExit(f"rebuild_bundle: unknown --drop-stages {', '.join(unknown)}; choose from {', '.join(IMAGE_STAGE_KEYS)}")
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    commands: list[str] = []

    def run(args):
        commands.append(" ".join(["synbt", *args]))
        synbt(args, work, log)

    if phantom not in PRESETS:
        raise SystemExit(f"rebuild_bundle: unknown phantom {phantom!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[phantom]
    policy = PHASE_POLICY if preset is not None else None
    cohorts = TINY_COHORTS if tiny else COHORTS
    if preset is not None:
        cohorts = {name: ["--preset", "small" if tiny else preset, *args] for name, args in cohorts.items()}
    for name, args in cohorts.items():
        if (work / name / "cohort.json").is_file():
            log(f"(done: {name})")
            commands.append(" ".join(["synbt", "phantom-cohort", "--out", name, *args]))
            continue
        run(["phantom-cohort", "--out", name, *args])
    cases = sorted(p for p in (work / "cohort").iterdir() if p.is_dir())
    n_train, n_test = (TINY_TRAIN_CASES, TINY_TEST_CASES) if tiny else (TRAIN_CASES, TEST_CASES)
    link_cases(work / "train", cases[:n_train])
    link_cases(work / "test", cases[n_train:n_train + n_test])
    link_cases(work / "diff", cases[:n_train] + sorted(p for p in (work / "cohort3").iterdir() if p.is_dir()))

    ae_config = write_config("phantom_autoencoder_linear", work, tiny, policy)
    args = ["--data", "train", "--config", str(ae_config.relative_to(work))]
    commands.append(" ".join(["synbt", "train-autoencoder", *args, "--out", "runs/ae"]))
    autoencoder = train("train-autoencoder", work / "runs" / "ae", args, work, log)

    cache = ["--latent-cache", "latent_cache"]
    diff_config = write_config("phantom_diffusion_linear", work, tiny, policy)
    args = ["--data", "diff", "--autoencoder", "runs/ae/bundle", "--config", str(diff_config.relative_to(work)), *cache]
    commands.append(" ".join(["synbt", "train-diffusion", *args, "--out", "runs/diffusion"]))
    train("train-diffusion", work / "runs" / "diffusion", args, work, log)
    necrosis_config = write_config("phantom_diffusion_necrosis", work, tiny, policy,
                                   finetune={"bundle": "runs/diffusion/bundle"})
    args = ["--data", "diff", "--autoencoder", "runs/ae/bundle", "--config", str(necrosis_config.relative_to(work)),
            *cache]
    commands.append(" ".join(["synbt", "train-diffusion", *args, "--out", "runs/necrosis"]))
    necrosis = train("train-diffusion", work / "runs" / "necrosis", args, work, log)

    calibrated = work / "runs" / "calibrated"
    if not (calibrated / "SHA256SUMS").is_file():
        shutil.rmtree(calibrated, ignore_errors=True)  # calibrate has no resume: an interrupted one starts again
        run(["calibrate", "--bundle", "runs/necrosis/bundle", "--data", "cal", "--out", "runs/calibrated",
             *(TINY_CALIBRATE if tiny else CALIBRATE)])
    else:
        commands.append(" ".join(["synbt", "calibrate", "--bundle", "runs/necrosis/bundle", "--data", "cal", "--out",
                                  "runs/calibrated", *(TINY_CALIBRATE if tiny else CALIBRATE)]))
    del autoencoder, necrosis

    bundle = work / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(calibrated, bundle)
    prior = None
    if previous is not None and (previous / "config.json").is_file():
        prior = json.loads((previous / "config.json").read_text()).get("release")
    config = json.loads((bundle / "config.json").read_text())
    if drop_stages:  # the recipe's last step: replaying the commands must give the same bundle
        commands.append(f"python tools/rebuild_bundle.py ... --drop-stages {','.join(drop_stages)}")
    config["release"] = release_entry(version, change, commands, prior)
    (bundle / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (bundle / "MODEL_CARD.md").write_text(release_card((bundle / "MODEL_CARD.md").read_text(), config["release"]))
    write_checksums(bundle)
    if drop_stages:
        from SynBTLib.calibrated_bundle import drop_image_stages

        removed = drop_image_stages(bundle, drop_stages, drop_reason or "chosen with the realism suite's dev seeds")
        log(f"left out of the image calibration: {', '.join(removed) or 'nothing (none was fitted)'}")

    load_bundle(bundle)  # verifies the checksums and builds the networks
    test_case = sorted((work / "test").iterdir())[0]
    synbt(["synthesize", "--phases", str(test_case), "--auto", "--size-mm", "15", "--bundle", str(bundle),
           "--steps", "2" if tiny else "30", "--out", str(work / "check"), "--overwrite"], work, log)
    log(f"bundle {version}: {bundle}")
    return bundle


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path, help="working folder: cohorts, runs and the new bundle/")
    parser.add_argument("--version", required=True, help="the new bundle's version, e.g. 1.1")
    parser.add_argument("--change", required=True, help="its changelog entry: what changed and why")
    parser.add_argument("--tiny", action="store_true", help="small cohorts, few steps (a test of the recipe)")
    parser.add_argument("--previous", type=Path, default=SHIPPED,
                        help="bundle whose changelog this one continues (default: the shipped one)")
    parser.add_argument("--phantom", choices=sorted(PRESETS), default="phantom2",
                        help="cohorts of Phantom 2 (default; the phases picked by %s) or of the legacy phantom" % PHASE_POLICY)
    parser.add_argument("--drop-stages", default="",
                        help="comma-separated image-calibration maps to leave out (texture, shape, curves, coherence):"
                             " those that did not improve bench/realism_suite.py on its dev seeds")
    parser.add_argument("--drop-reason", default="", help="why, for the model card (e.g. the suite's result folder)")
    parser.add_argument("--install", action="store_true", help="copy the result over SynBTLib/bundles/phantom")
    args = parser.parse_args(argv)
    if args.install and args.tiny:
        parser.error("--install with --tiny would ship a test bundle")
    drop = tuple(s.strip() for s in args.drop_stages.split(",") if s.strip())
    bundle = rebuild(args.work, args.version, args.change, args.tiny, args.previous, phantom=args.phantom,
                     drop_stages=drop, drop_reason=args.drop_reason)
    if args.install:
        shutil.rmtree(SHIPPED)
        shutil.copytree(bundle, SHIPPED)
        print(f"installed {bundle} as {SHIPPED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
