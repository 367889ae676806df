"""Training throughput on this machine, and the projected time to train each stage on MAMA-MIA (1,506 cases).

Writes a phantom cohort in the MAMA-MIA layout (images/<ID>/<id>_000K.nii.gz, segmentations/expert/,
a clinical table with acquisition times; 3-6 phases, fat-suppressed and not), prepares it with
`synbt prepare` (phase policy pre,first,closest:150s), then runs a few steps of each training stage
(autoencoder, diffusion, segmentation) on the store with the shipped configs (configs/*.json) and
prints seconds per step, samples per second, peak memory and the projections:

    python bench/train_throughput.py                 # 128 x 128 x 48 phantoms
    python bench/train_throughput.py --clinical      # 512 x 512 x 160 (0.66 mm in plane), 2 cases
    python bench/train_throughput.py --quick         # tiny networks and grids (the test's form)

A stage's projection = its configured steps x seconds per step + its per-case work (diffusion encodes
every case and its flip) x 1,506; `prepare` is seconds per case x 1,506 / workers. One epoch = one sample
per case (1,506 / batch size steps) is printed too. Peak memory is the process's peak RSS after each
stage (it only grows: stages run in one process).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MAMA_MIA_CASES = 1506
POLICY = "pre,first,closest:150s"
INTERVALS_S = (90.0, 60.0, 45.0, 30.0)  # per case, cycled: the post-contrast times differ between sites


def write_mama_mia_cohort(root, cases: int, shape=(48, 48, 16), seed: int = 0, phase_counts=(3, 4, 5, 6)) -> list[str]:
    """Phantom cases in the MAMA-MIA layout with a clinical_and_imaging_info.csv; returns the case ids."""
    import numpy as np

    from SynBTLib.io import write_image, write_label
    from SynBTLib.phantom import make_phantom

    root = Path(root)
    rows, ids = [], []
    for k in range(cases):
        phases, interval, fat = phase_counts[k % len(phase_counts)], INTERVALS_S[k % len(INTERVALS_S)], k % 2 == 0
        phantom = make_phantom(seed + k, shape=tuple(shape), phases=phases, tumors=1, phase_interval_s=interval,
                               fat_suppressed=fat)
        case_id = f"PHANTOM_{k + 1:03d}"
        folder = root / "images" / case_id
        folder.mkdir(parents=True, exist_ok=True)
        geometry = phantom.case.geometry
        for j in range(phases):
            write_image(phantom.case.phases[j], geometry, folder / f"{case_id.lower()}_{j:04d}.nii.gz")
        label_dir = root / "segmentations" / "expert"
        label_dir.mkdir(parents=True, exist_ok=True)
        write_label((phantom.tumor_labels > 0).astype(np.uint8), geometry, label_dir / f"{case_id.lower()}.nii.gz")
        times = [float(t) for t in phantom.meta["phase_times_s"]]
        rows.append(f'{case_id},"{json.dumps(times)}",{int(fat)},{1.5 if k % 3 else 3.0}')
        ids.append(case_id)
    (root / "clinical_and_imaging_info.csv").write_text(
        "patient_id,acquisition_times,fat_suppressed,field_strength\n" + "\n".join(rows) + "\n")
    return ids


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class StepClock:
    """A trainer progress callback that records when each step ended."""

    def __init__(self):
        self.start, self.ends = time.perf_counter(), []

    def __call__(self, done, total, message=""):
        self.ends.append(time.perf_counter())

    def seconds_per_step(self) -> float:
        import numpy as np

        gaps = np.diff(self.ends)  # the first step carries the setup; later ones are the steady state
        return float(np.median(gaps)) if len(gaps) else float(self.ends[0] - self.start)

    def setup_seconds(self) -> float:
        return self.ends[0] - self.start - self.seconds_per_step()


def _config(name: str, quick: bool, steps: int) -> dict:
    config = json.loads((REPO / "configs" / f"{name}.json").read_text())
    configured = int(config["training"]["steps"])
    config["training"].update(steps=steps, checkpoint_every=steps, warmup_steps=1)
    if name != "segmentation":  # the segmentation config has no latent scale
        config["latent_scale_patches"] = 2
    if quick:
        small = {"autoencoder": {"autoencoder": {"channels": [8, 16, 16], "latent_channels": 4, "norm_num_groups": 1},
                                 "data": {"patch_size": [16, 16, 16]}},
                 "diffusion": {"denoiser": {"channels": [8, 16, 16], "attention_levels": [False, False, True],
                                            "num_head_channels": 8, "norm_num_groups": 8},
                               "data": {"roi_size": [16, 16, 16]}},
                 "segmentation": {"model": {"channels": [8, 16, 32, 64], "num_res_units": 1},
                                  "data": {"patch_size": [16, 32, 32]}}}[name]
        for section, values in small.items():
            config[section] = {**config.get(section, {}), **values}
    if name == "segmentation":
        config["data"]["steps_per_epoch"] = steps
        config["training"].pop("epochs", None)
    return config, configured


def run(out: Path, cases: int, shape, steps: int, workers: int, quick: bool) -> list[dict]:
    from SynBTLib.store import prepare_store
    from SynBTLib.training.autoencoder import train_autoencoder
    from SynBTLib.training.diffusion import train_diffusion
    from SynBTLib.training.segmentation import train_segmentation

    t0 = time.perf_counter()
    write_mama_mia_cohort(out / "mama-mia", cases, shape)
    written = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = prepare_store(out / "mama-mia", out / "store", workers=workers, policy=POLICY, progress=False)
    prepare_s = time.perf_counter() - t0
    per_case = prepare_s / max(1, len(report.prepared))
    rows = [{"stage": "prepare", "per_case_s": per_case, "cases": len(report.prepared),
             "projected_h": per_case * MAMA_MIA_CASES / workers / 3600, "peak_rss_mb": peak_rss_mb(),
             "note": f"cohort written in {written:.1f} s; {len(report.skipped)} skipped"}]
    store = out / "store"
    stages = (
        ("autoencoder", lambda cfg, clock: train_autoencoder(store, out / "ae", cfg, verbose=False, progress=clock)),
        ("diffusion", lambda cfg, clock: train_diffusion(store, out / "ae" / "bundle", out / "diffusion", cfg,
                                                          verbose=False, progress=clock)),
        ("segmentation", lambda cfg, clock: train_segmentation(store, out / "seg", cfg, verbose=False, progress=clock)),
    )
    for name, train in stages:
        config, configured = _config(name, quick, steps)
        clock = StepClock()
        train(config, clock)
        per_step, batch = clock.seconds_per_step(), int(config["training"]["batch_size"])
        # diffusion encodes every case (and its x-flip) before its first step; that part grows with the cases
        per_case_setup = clock.setup_seconds() / len(report.prepared) if name == "diffusion" else 0.0
        rows.append({
            "stage": name, "s_per_step": per_step, "samples_per_s": batch / per_step, "batch": batch,
            "configured_steps": configured, "per_case_s": per_case_setup,
            "projected_h": (configured * per_step + per_case_setup * MAMA_MIA_CASES) / 3600,
            "epoch_h": (MAMA_MIA_CASES / batch * per_step + per_case_setup * MAMA_MIA_CASES) / 3600,
            "peak_rss_mb": peak_rss_mb(),
        })
    return rows


def print_table(rows: list[dict], shape) -> None:
    print(f"phantom MAMA-MIA cohort {shape[0]}x{shape[1]}x{shape[2]} (x, y, z), policy {POLICY}; "
          f"projections for {MAMA_MIA_CASES} cases on this CPU")
    print(f"{'stage':13s} {'s/step':>8s} {'samples/s':>9s} {'s/case':>7s} {'steps':>6s} {'proj. h':>8s} "
          f"{'epoch h':>8s} {'peak MB':>8s}")
    for r in rows:
        print(f"{r['stage']:13s} {r.get('s_per_step', float('nan')):8.3f} {r.get('samples_per_s', float('nan')):9.2f} "
              f"{r.get('per_case_s', 0.0):7.2f} {r.get('configured_steps', 0):6d} {r['projected_h']:8.2f} "
              f"{r.get('epoch_h', float('nan')):8.2f} {r['peak_rss_mb']:8.0f}" + (f"  {r['note']}" if "note" in r else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--cases", type=int, default=None, help="phantom cases (default 4; 2 with --clinical)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per stage (the first is not timed)")
    parser.add_argument("--workers", type=int, default=1, help="prepare's processes")
    parser.add_argument("--clinical", action="store_true", help="512 x 512 x 160 cases (about 0.66 mm in plane)")
    parser.add_argument("--quick", action="store_true", help="tiny networks and grids (the test suite's form)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    shape = (512, 512, 160) if args.clinical else (48, 48, 16) if args.quick else (128, 128, 48)
    cases = args.cases or (2 if args.clinical else 4)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        rows = run(out, cases, shape, max(2, args.steps), args.workers, args.quick)
    print_table(rows, shape)
    if args.json:
        args.json.write_text(json.dumps({"shape": list(shape), "cases": cases, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
