"""Shared machinery of the SynBT benchmarks: worker subprocesses, test cases, networks, result files.

Every measurement runs in a fresh Python process (``run_worker``) with a fixed thread count; the
child reports its own peak RSS (resource.getrusage, so the figure covers that one measurement and
nothing the parent did). The parent builds the test case once and hands it to the children as an
.npz file, so case generation is never timed. Results go to a CSV file and a PNG plot in ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Benchmark volumes by name, (x, y, z) voxels; the phantom's field of view is fixed (340 x 340 x
# 150 mm), so bigger sizes are finer grids and a tumor covers more voxels.
SIZES = {
    "tiny": (48, 48, 24),
    "small": (128, 128, 48),
    "medium": (256, 256, 80),
    "large": (384, 384, 120),
    "full": (512, 512, 160),
}


# ------------------------------------------------------------------------------ processes


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--threads, --out, --quick and the hidden --worker of every benchmark script."""
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads of each measurement (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the CSV and PNG (default bench/results)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps: a smoke run in seconds")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (ru_maxrss is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(script: str | Path, spec: dict, threads: int, timeout_s: float | None = None) -> dict:
    """Run `script --worker SPEC` in a fresh process with `threads` threads; its JSON result or {"error": ...}."""
    env = dict(os.environ, **{name: str(threads) for name in THREAD_VARIABLES})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, str(script), "--threads", str(threads), "--worker", json.dumps(spec)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        last = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        return {"error": last}
    return json.loads(lines[-1])


def worker_main(spec_json: str, threads: int, measure: Callable[[dict], dict], uses_torch: bool = True) -> None:
    """Child side of run_worker: fix the threads, run `measure(spec)`, print its result plus the peak RSS."""
    if uses_torch:
        import torch

        torch.set_num_threads(threads)
    result = measure(json.loads(spec_json))
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(result))


def available_gb() -> float:
    """Memory the kernel reports as available, GB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 8.0


class Stopwatch:
    """Named time marks: ``watch.mark("encode")`` records the seconds since the previous mark."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self._last
        self._last = now


# ------------------------------------------------------------------------------ test cases


def make_test_case(size_xyz: Sequence[int], folder: Path, diameters_mm: Sequence[float], seed: int = 0) -> Path:
    """A 3-phase phantom of `size_xyz` with one placed tumor mask per diameter, saved as an .npz file.

    Tumors are placed (shapes.place_tumor) in the phantom's ground-truth breast tissue; the case
    itself carries no tumor.
    """
    from SynBTLib.labels import BREAST_TISSUE
    from SynBTLib.phantom import make_phantom
    from SynBTLib.shapes import place_tumor

    phantom = make_phantom(seed=seed, shape=tuple(size_xyz), phases=3)
    case = phantom.case
    breast = np.isin(phantom.tissue_labels, BREAST_TISSUE)
    masks = {}
    for diameter in diameters_mm:
        placement = place_tumor(breast, case.geometry, diameter, seed=seed, margin_mm=1.0)
        masks[f"mask_{float(diameter):g}"] = placement.mask
    path = Path(folder) / f"case_{'x'.join(map(str, size_xyz))}.npz"
    geometry = case.geometry
    np.savez(
        path,
        phases=case.phases,
        breast=breast,
        spacing=geometry.spacing,
        origin=geometry.origin,
        direction=geometry.direction,
        **masks,
    )
    return path


@dataclass
class BenchCase:
    """A case loaded from make_test_case's file: the Case, its breast mask and the tumor masks by diameter."""

    case: object  # SynBTLib.case.Case
    breast: np.ndarray
    masks: dict[float, np.ndarray]


def load_test_case(path: str | Path) -> BenchCase:
    from SynBTLib.case import Case, Geometry

    data = np.load(path)
    phases = data["phases"]
    geometry = Geometry(
        size=phases.shape[1:][::-1],
        spacing=tuple(data["spacing"]),
        origin=tuple(data["origin"]),
        direction=tuple(data["direction"]),
    )
    masks = {float(name[len("mask_"):]): data[name] for name in data.files if name.startswith("mask_")}
    return BenchCase(Case(phases=phases, geometry=geometry), data["breast"], masks)


# ------------------------------------------------------------------------------ networks


@dataclass
class Networks:
    autoencoder: object
    denoiser: object
    scheduler: object
    latent_scale: float
    source: str  # "bundle <path> (sha256 ...)" or "random weights, default configs"


def load_networks(seed: int = 0) -> Networks:
    """The shipped phantom bundle if there is one, else the default configs with random weights (seeded)."""
    import torch

    from SynBTLib.bundle import default_bundle_path, load_bundle
    from SynBTLib.nets.autoencoder import PatchVolumeAutoencoder
    from SynBTLib.nets.denoiser import MaskConditionedDenoiser
    from SynBTLib.nets.scheduler import make_scheduler

    path = default_bundle_path()
    if (path / "config.json").exists():
        bundle = load_bundle(path)
        if bundle.denoiser is not None:
            source = f"bundle {path.relative_to(REPO) if path.is_relative_to(REPO) else path} (sha256 {bundle.sha256[:12]})"
            return Networks(bundle.autoencoder, bundle.denoiser, bundle.scheduler, bundle.latent_scale, source)
    torch.manual_seed(seed)
    return Networks(
        PatchVolumeAutoencoder().eval(),
        MaskConditionedDenoiser().eval(),
        make_scheduler(),
        1.0,
        "random weights, default configs",
    )


def network_source() -> str:
    """What load_networks will use, without importing torch (for the parent's header line)."""
    path = REPO / "SynBTLib" / "bundles" / "phantom"
    if (path / "config.json").exists():
        return f"bundle {path.relative_to(REPO)} (if it has a denoiser)"
    return "random weights, default configs (no bundle at SynBTLib/bundles/phantom)"


# ------------------------------------------------------------------------------ results


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)


def print_table(rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Rows as an aligned text table on stdout."""
    cells = [[format_value(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def report(row: dict, columns: Sequence[str]) -> None:
    """One measurement as a `name=value` line, flushed, so long runs show progress."""
    print("  " + ", ".join(f"{c}={format_value(row.get(c))}" for c in columns if row.get(c) is not None), flush=True)


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c) for c in columns})
    return path


def new_figure(ncols: int = 1, title: str = ""):
    """A matplotlib (figure, axes) on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4.2), squeeze=False)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure, list(axes[0])


def save_figure(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
