"""Training throughput on this machine, and the projected time to train each stage on MAMA-MIA (1,506 cases).

Writes a phantom cohort in the MAMA-MIA layout (images/<ID>/<id>_000K.nii.gz, segmentations/expert/,
a clinical table with each case's acquisition times, fat suppression and field strength), prepares it
with `synbt prepare` (phase policy pre,first,closest:150s; the README recipe's working spacing with
--clinical), then runs a few steps of each training stage (autoencoder, diffusion, segmentation) on
the store with the shipped configs (configs/*.json) and prints seconds per step, samples per second,
each stage's own peak memory and the projections:

    python bench/train_throughput.py                 # Phantom 2 "small": 128 x 128 x 48, 3-6 phases
    python bench/train_throughput.py --clinical      # Phantom 2 "clinical" at 512 x 512 x 160 (0.66 mm in
                                                     # plane), 4-6 phases, prepared at 0.7 x 0.7 x 1.5 mm
    python bench/train_throughput.py --quick         # legacy phantom, tiny networks and grids (the test's form)

Every stage (writing the cohort, prepare, each training stage) runs in a fresh process, so its peak RSS
is its own. A stage's projection = its configured steps x seconds per step (the median step after the
first) + its per-case work x 1,506: diffusion reads and encodes every case, its tumor-erased copy and
their x-flips before its first step; that encoding is timed on its own, and the latents it keeps in
memory are counted. `prepare` is seconds per case (reading, resampling, normalizing, writing the store;
writing the phantoms is not in it) x 1,506 / workers (assumes the workers scale linearly). One epoch =
one sample per case (1,506 / batch size steps) is printed too.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MAMA_MIA_CASES = 1506
POLICY = "pre,first,closest:150s"
RECIPE_SPACING = (0.7, 0.7, 1.5)  # README's `synbt prepare --spacing`
INTERVALS_S = (90.0, 60.0, 45.0, 30.0)  # legacy phantom, per case, cycled: post-contrast times differ between sites


def write_mama_mia_cohort(root, cases: int, shape=(48, 48, 16), seed: int = 0, phase_counts=(3, 4, 5, 6),
                          preset=None) -> list[str]:
    """Phantom cases in the MAMA-MIA layout with a clinical_and_imaging_info.csv; returns the case ids.

    preset None: the legacy phantom, post-contrast phases every INTERVALS_S (cycled); a Phantom 2 preset
    ("small", "clinical", ...): its own clinical acquisition times and field strength. Every other case
    is fat-suppressed; the table holds each phantom's own times (meta["phase_times_s"])."""
    import numpy as np

    from SynBTLib.io import write_image, write_label
    from SynBTLib.phantom import make_phantom

    root = Path(root)
    rows, ids = [], []
    for k in range(cases):
        phases, fat = phase_counts[k % len(phase_counts)], k % 2 == 0
        if preset is None:
            phantom = make_phantom(seed + k, shape=tuple(shape), phases=phases, tumors=1,
                                   phase_interval_s=INTERVALS_S[k % len(INTERVALS_S)], fat_suppressed=fat)
            field = 1.5 if k % 3 else 3.0
        else:
            phantom = make_phantom(seed + k, shape=tuple(shape), preset=preset, phases=phases, tumors=1,
                                   fat_suppressed=fat)
            field = phantom.meta["parameters"]["field_strength_t"]
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
        rows.append(f'{case_id},"{json.dumps(times)}",{int(fat)},{field:g}')
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


def _timed(function, record: dict, key: str):
    """``function`` as it is, adding its wall seconds to record[key] and keeping its result in record."""

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        result = function(*args, **kwargs)
        record[key] = record.get(key, 0.0) + time.perf_counter() - t0
        record[key + "_result"] = result
        return result

    return wrapper


def _write_stage(out: Path, cases: int, shape, preset, phase_counts) -> dict:
    t0 = time.perf_counter()
    write_mama_mia_cohort(out / "mama-mia", cases, shape, phase_counts=phase_counts, preset=preset)
    seconds = time.perf_counter() - t0
    return {"stage": "write cohort", "per_case_s": seconds / cases, "cases": cases, "peak_rss_mb": peak_rss_mb(),
            "note": "phantoms and their .nii.gz files; not part of any projection"}


def _prepare_stage(out: Path, workers: int, spacing) -> dict:
    from SynBTLib.store import prepare_store

    t0 = time.perf_counter()
    report = prepare_store(out / "mama-mia", out / "store", workers=workers, policy=POLICY, spacing=spacing,
                           progress=False)
    per_case = (time.perf_counter() - t0) / max(1, len(report.prepared))
    store_bytes = sum(f.stat().st_size for f in (out / "store").rglob("*") if f.is_file())
    sizes = [json.loads((out / "store" / "cases" / c / "case.json").read_text())["geometry"]["size"]
             for c in report.prepared]
    per_case_gb = store_bytes / max(1, len(report.prepared)) / 1e9
    return {"stage": "prepare", "per_case_s": per_case, "cases": len(report.prepared), "workers": workers,
            "projected_h": per_case * MAMA_MIA_CASES / workers / 3600, "peak_rss_mb": peak_rss_mb(),
            "store_gb_per_case": per_case_gb, "store_gb_1506": per_case_gb * MAMA_MIA_CASES,
            "working_size": sizes[0] if sizes else None,
            "note": f"{len(report.skipped)} skipped; store {per_case_gb * MAMA_MIA_CASES:.0f} GB for 1,506 cases"}


def _train_stage(name: str, out: Path, quick: bool, steps: int, cases: int) -> dict:
    from SynBTLib.training import diffusion as diffusion_module
    from SynBTLib.training.autoencoder import train_autoencoder
    from SynBTLib.training.diffusion import train_diffusion
    from SynBTLib.training.segmentation import train_segmentation

    store, timed = out / "store", {}
    config, configured = _config(name, quick, steps)
    clock = StepClock()
    if name == "autoencoder":
        train_autoencoder(store, out / "ae", config, verbose=False, progress=clock)
    elif name == "diffusion":
        # timed where they are called: reading the cases and encoding them are per-case work, the steps are not
        diffusion_module.load_cases = _timed(diffusion_module.load_cases, timed, "load")
        diffusion_module.encode_cases = _timed(diffusion_module.encode_cases, timed, "encode")
        train_diffusion(store, out / "ae" / "bundle", out / "diffusion", config, verbose=False, progress=clock)
    else:
        train_segmentation(store, out / "seg", config, verbose=False, progress=clock)
    per_step, batch = clock.seconds_per_step(), int(config["training"]["batch_size"])
    row = {"stage": name, "s_per_step": per_step, "samples_per_s": batch / per_step, "batch": batch,
           "steps_run": len(clock.ends), "configured_steps": configured, "setup_s": clock.setup_seconds(),
           "per_case_s": 0.0}
    if name == "diffusion":
        encoded = timed.pop("encode_result")
        row["load_per_case_s"] = timed["load"] / cases
        row["encode_per_case_s"] = timed["encode"] / cases
        row["per_case_s"] = row["load_per_case_s"] + row["encode_per_case_s"]
        row["setup_s"] -= timed["load"] + timed["encode"]  # what is left: nets, latent scale, first batch
        latent_bytes = sum(item.nbytes for item in encoded)
        row["latent_gb_1506"] = latent_bytes / cases * MAMA_MIA_CASES / 1e9
        row["note"] = f"latents for 1,506 cases held in memory: {row['latent_gb_1506']:.1f} GB"
    row["projected_h"] = (configured * per_step + row["per_case_s"] * MAMA_MIA_CASES) / 3600
    row["epoch_h"] = (MAMA_MIA_CASES / batch * per_step + row["per_case_s"] * MAMA_MIA_CASES) / 3600
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def _in_fresh_process(function, *args) -> dict:
    """Run one stage in a new process (spawn), so that its peak RSS is its own."""
    import multiprocessing

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def run(out: Path, cases: int, shape, steps: int, workers: int, quick: bool, preset=None, spacing=None,
        phase_counts=(3, 4, 5, 6)) -> list[dict]:
    rows = [_in_fresh_process(_write_stage, out, cases, shape, preset, phase_counts),
            _in_fresh_process(_prepare_stage, out, workers, spacing)]
    prepared = rows[-1]["cases"]
    for name in ("autoencoder", "diffusion", "segmentation"):
        rows.append(_in_fresh_process(_train_stage, name, out, quick, steps, prepared))
    return rows


def _f(value, spec: str) -> str:
    return format(value, spec) if value is not None else format("", spec.split(".")[0].rstrip("fd") + "s")


def print_table(rows: list[dict], shape, spacing, preset) -> None:
    where = "each case's own spacing" if spacing is None else f"prepared at {' x '.join(f'{v:g}' for v in spacing)} mm"
    print(f"phantom ({preset or 'legacy'}) MAMA-MIA cohort {shape[0]}x{shape[1]}x{shape[2]} (x, y, z), {where}, "
          f"policy {POLICY}; projections for {MAMA_MIA_CASES} cases on this CPU")
    print(f"{'stage':13s} {'s/step':>8s} {'samples/s':>9s} {'s/case':>7s} {'setup s':>8s} {'steps':>6s} "
          f"{'proj. h':>8s} {'epoch h':>8s} {'peak MB':>8s}")
    for r in rows:
        print(f"{r['stage']:13s} {_f(r.get('s_per_step'), '8.3f')} {_f(r.get('samples_per_s'), '9.2f')} "
              f"{_f(r.get('per_case_s'), '7.2f')} {_f(r.get('setup_s'), '8.1f')} {_f(r.get('configured_steps'), '6d')} "
              f"{_f(r.get('projected_h'), '8.2f')} {_f(r.get('epoch_h'), '8.2f')} {r['peak_rss_mb']:8.0f}"
              + (f"  {r['note']}" if "note" in r else ""))


def _sample_load(samples: list, stop, every_s: float = 30.0) -> None:
    """The 1-minute load average every ``every_s`` seconds until ``stop`` is set (other work on the cores)."""
    while True:
        samples.append(round(os.getloadavg()[0], 2))
        if stop.wait(every_s):
            return


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--cases", type=int, default=None, help="phantom cases (default 4; 3 with --clinical)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per stage (the first is not timed)")
    parser.add_argument("--workers", type=int, default=1, help="prepare's processes")
    parser.add_argument("--clinical", action="store_true", help="512 x 512 x 160 cases (about 0.66 mm in plane)")
    parser.add_argument("--quick", action="store_true", help="tiny networks and grids (the test suite's form)")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="prepare's working spacing in mm (default: 0.7 0.7 1.5 with --clinical, else "
                             "each case's own)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.clinical:
        shape, preset, phase_counts = (512, 512, 160), "clinical", (4, 5, 6)
    elif args.quick:
        shape, preset, phase_counts = (48, 48, 16), None, (3, 4, 5, 6)
    else:
        shape, preset, phase_counts = (128, 128, 48), "small", (3, 4, 5, 6)
    spacing = tuple(args.spacing) if args.spacing else RECIPE_SPACING if args.clinical else None
    cases = args.cases or (3 if args.clinical else 4)
    load_before, samples, stop = os.getloadavg(), [], threading.Event()
    sampler = threading.Thread(target=_sample_load, args=(samples, stop), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        rows = run(out, cases, shape, max(2, args.steps), args.workers, args.quick, preset, spacing, phase_counts)
    stop.set()
    print_table(rows, shape, spacing, preset)
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}, 1-min during "
          f"{min(samples):.2f}-{max(samples):.2f}; {time.perf_counter() - t0:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps({
            "shape": list(shape), "preset": preset or "legacy", "spacing": None if spacing is None else list(spacing),
            "cases": cases, "phase_counts": list(phase_counts[:cases]), "policy": POLICY, "steps": max(2, args.steps),
            "threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
            "load_before": list(load_before), "load_after": list(load_after), "load_1min_during": samples,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
