"""Time and memory of the command users run: `synbt synthesize` end to end, per stage.

Each run is `SynBTLib.cli.main(["synthesize", ...])` in a fresh process (its own peak RSS), on a
phantom case written as NIfTI (default 512 x 512 x 160 x 3 phases), with the shipped bundle and its
calibration (or --bundle): `--mask` (a lobulated tumor placed in the phantom's breast tissue by
shapes.place_tumor) and `--auto`, for each diameter. The stages are timed by SynBTLib.stages
hooks in the command and the pipeline: load (bundle), read, place (--auto placement or reading the
mask), check, crop, encode, denoise (sampling and latent calibration), decode, correct (noise and
image calibration), paste, write, each in wall seconds and in CPU seconds of the process (all its
threads; far steadier than wall time on a shared machine), with the minor page faults per stage
and the process's kernel CPU time. Runs are interleaved by repeat so that
ratios are side by side under the same load; the load average is recorded with each run.

    python bench/bench_cli.py --diameters 20 40 60 --modes mask auto --steps 30 --repeats 1
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("load", "read", "place", "check", "crop", "encode", "denoise", "decode", "correct", "paste", "write")
COLUMNS = ("tree", "repeat", "mode", "diameter_mm", "steps", "status", "total_s", *[f"{s}_s" for s in STAGES],
           "networks_share", "cpu_s", *[f"{s}_cpu_s" for s in STAGES], "sys_cpu_s", "minflt",
           *[f"{s}_minflt" for s in STAGES], "peak_rss_gb", "load_avg_1min", "tumor_voxels")


def cpu_stages():
    """Make SynBTLib.stages.stage also add each stage's process CPU time (all threads) and minor page
    faults to two more dicts, before the command's modules import it; returns them. Done here rather
    than in the library so that a baseline tree is measured the same way. On a shared machine CPU
    seconds move far less with the load than wall seconds; minor faults count memory the process
    touches afresh (the kernel's share of the CPU time)."""
    import collections
    import contextlib

    from SynBTLib import stages

    cpu, faults, timed = collections.defaultdict(float), collections.defaultdict(int), stages.stage

    @contextlib.contextmanager
    def stage(name):
        start, start_faults = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        try:
            with timed(name):
                yield
        finally:
            cpu[name] += time.process_time() - start
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start_faults

    stages.stage = stage
    return cpu, faults


def worker(spec: dict) -> dict:
    """One `synbt synthesize` in this process; stage times (wall and CPU), totals and peak RSS."""
    cpu, faults = cpu_stages()
    from SynBTLib.cli import main
    from SynBTLib.stages import recording

    argv = ["synthesize", "--phases", spec["case"], "--steps", str(spec["steps"]), "--seed", str(spec["seed"]),
            "--out", spec["out"], "--progress", "json"]
    argv += ["--mask", spec["mask"]] if spec["mode"] == "mask" else ["--auto", "--size-mm", str(spec["diameter_mm"])]
    argv += ["--bundle", spec["bundle"]] if spec.get("bundle") else []
    argv += ["--existing-tumors", "none"]
    start, start_cpu, before = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    with recording() as times:
        rc = main(argv)
    total, total_cpu, after = time.perf_counter() - start, time.process_time() - start_cpu, resource.getrusage(resource.RUSAGE_SELF)
    provenance = json.loads((Path(spec["out"]) / "provenance.json").read_text()) if rc == 0 else {}
    return {"status": "ok" if rc == 0 else f"rc={rc}", "total_s": total, "stages": dict(times),
            "cpu_s": total_cpu, "stages_cpu": dict(cpu), "sys_cpu_s": after.ru_stime - before.ru_stime,
            "minflt": after.ru_minflt - before.ru_minflt, "stages_minflt": dict(faults),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "tumor_voxels": provenance.get("tumor", {}).get("voxels")}


def make_case(folder: Path, shape, seed: int, diameters, suffix: str = ".nii.gz") -> tuple[Path, dict]:
    """(case folder, {diameter: mask path}) for the phantom of `shape` (x, y, z); reused when present.

    Each mask is placed in the phantom's breast tissue, or where it does not fit (60 mm in the
    default phantom, whose breasts hold about 43 mm) anywhere in the body below the skin. ``suffix``
    ".nii": uncompressed float32 phases and masks, as the Slicer module and the web page hand them to
    their `synbt synthesize` worker (slicer_worker.WORKER_FORMAT); the outputs keep that format."""
    name = "case" if suffix == ".nii.gz" else "case_nii"
    case_dir, masks = folder / name, {d: folder / f"mask_{d:g}mm{suffix}" for d in diameters}
    if not (case_dir / f"phase_0{suffix}").exists() or not all(p.exists() for p in masks.values()):
        import numpy as np

        from SynBTLib.io import write_case, write_label
        from SynBTLib.errors import SynBTError
        from SynBTLib.labels import AIR, BREAST_TISSUE, SKIN
        from SynBTLib.phantom import make_phantom
        from SynBTLib.shapes import place_tumor

        from SynBTLib.slicer_worker import WORKER_FORMAT

        phantom = make_phantom(seed, shape=tuple(shape))
        write_case(phantom.case, case_dir, None if suffix == ".nii.gz" else WORKER_FORMAT)
        breast = np.isin(phantom.tissue_labels, BREAST_TISSUE)
        body = ~np.isin(phantom.tissue_labels, (AIR, SKIN))
        for diameter, path in masks.items():
            try:
                placed = place_tumor(breast, phantom.case.geometry, diameter, seed=seed)
            except SynBTError:  # larger than the phantom's breasts: anywhere in the body (what --mask allows)
                placed = place_tumor(body, phantom.case.geometry, diameter, seed=seed)
            write_label(placed.mask, phantom.case.geometry, path)
    return case_dir, masks


def bundle_sha256(bundle: str | None) -> str:
    from SynBTLib.bundle import bundle_sha256 as digest, default_bundle_path

    return digest(Path(bundle) if bundle else default_bundle_path())


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):  # an exported tree (git archive) records its commit
        marker = ROOT / "COMMIT"
        return marker.read_text().strip() if marker.exists() else "unknown"


def run_one(spec: dict, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=spec["tree"] + os.pathsep + os.environ.get("PYTHONPATH", ""))
    load = os.getloadavg()[0]
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout {timeout:g}s", "stages": {}, "load_avg_1min": load}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{\"result\"")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": f"failed: {tail[0][:200]}", "stages": {}, "load_avg_1min": load}
    result = json.loads(lines[-1])["result"]
    result["load_avg_1min"] = round((load + os.getloadavg()[0]) / 2, 2)
    return result


def row_of(spec: dict, repeat: int, result: dict) -> dict:
    stages = result.get("stages", {})
    networks = sum(stages.get(s, 0.0) for s in ("encode", "denoise", "decode"))
    total = result.get("total_s")
    row = {"tree": spec["label"], "repeat": repeat, "mode": spec["mode"], "diameter_mm": spec["diameter_mm"], "steps": spec["steps"],
           "status": result["status"], "total_s": None if total is None else round(total, 2),
           "networks_share": round(networks / total, 3) if total else None,
           "peak_rss_gb": None if result.get("peak_rss_gb") is None else round(result["peak_rss_gb"], 2),
           "load_avg_1min": result.get("load_avg_1min"), "tumor_voxels": result.get("tumor_voxels")}
    row.update({f"{s}_s": round(stages[s], 2) if s in stages else None for s in STAGES})
    stages_cpu = result.get("stages_cpu", {})
    row["cpu_s"] = None if result.get("cpu_s") is None else round(result["cpu_s"], 2)
    row.update({f"{s}_cpu_s": round(stages_cpu[s], 2) if s in stages_cpu else None for s in STAGES})
    row["sys_cpu_s"] = None if result.get("sys_cpu_s") is None else round(result["sys_cpu_s"], 2)
    row["minflt"] = result.get("minflt")
    stages_minflt = result.get("stages_minflt", {})
    row.update({f"{s}_minflt": stages_minflt.get(s) for s in STAGES})
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 160), metavar=("X", "Y", "Z"))
    parser.add_argument("--diameters", type=float, nargs="+", default=(20.0, 40.0, 60.0))
    parser.add_argument("--modes", nargs="+", choices=("mask", "auto"), default=("mask", "auto"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", help="model bundle (default: the shipped one)")
    parser.add_argument("--format", choices=("nii.gz", "nii"), default="nii.gz",
                        help="files of the case, mask and outputs (nii: what the Slicer module and web page's worker reads "
                             "and writes)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "synbt_bench_cli"),
                        help="folder for the phantom case and masks (reused)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_cli"))
    parser.add_argument("--baseline", metavar="DIR",
                        help="a second source tree (holding SynBTLib/ with stages.py) run interleaved with this one")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps({"result": worker(json.loads(args.worker))}), flush=True)
        return 0

    sys.path.insert(0, str(ROOT))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) / "x".join(map(str, args.shape))
    case_dir, masks = make_case(cache, args.shape, args.seed, args.diameters, "." + args.format)
    manifest = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "git_commit": git_commit(),
                "bundle": args.bundle or "shipped", "bundle_sha256": bundle_sha256(args.bundle),
                "shape_xyz": list(args.shape), "format": args.format, "cpu_count": os.cpu_count(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_start": os.getloadavg(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    trees = [("this", str(ROOT))] + ([("baseline", str(Path(args.baseline).resolve()))] if args.baseline else [])
    manifest["baseline_tree"] = args.baseline
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for mode in args.modes:
                for diameter in args.diameters:
                    for label, tree in trees:
                        spec = {"case": str(case_dir), "mask": str(masks[diameter]), "mode": mode,
                                "diameter_mm": diameter, "steps": args.steps, "seed": args.seed, "bundle": args.bundle,
                                "tree": tree, "label": label,
                                "out": str(Path(scratch) / f"{label}_{mode}_{diameter:g}_{repeat}")}
                        rows.append(row_of(spec, repeat, run_one(spec, args.timeout)))
                        print(" ".join(f"{k}={v}" for k, v in rows[-1].items() if v is not None), flush=True)
    manifest["load_avg_end"] = os.getloadavg()
    with open(out / "runs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"wrote {out / 'runs.csv'} and {out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
