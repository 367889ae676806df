"""On-the-fly synthesis throughput (cases per minute): place a tumor, synthesize it, repeat.

What an on-the-fly training loader does for every synthetic sample: draw a tumor (diameter
uniform in --min-mm..--max-mm, kind and seed from the case index), place it in the breast
tissue with shapes.place_tumor, and synthesize it with the handcrafted synthesizer or the
diffusion SynthesisPipeline (the shipped bundle if there is one, else default configs with random
weights). The case is loaded once and its breast mask is given (the phantom's ground truth), as a
loader would cache it. One untimed warm-up case, then --cases timed ones; each synthesizer runs in
a fresh process with a fixed thread count and reports its peak RSS. (--quick: no warm-up.)

    python bench/bench_loader.py --size medium --cases 10 --steps 30
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

COLUMNS = (
    "synthesizer", "size", "cases", "steps", "diameters_mm", "place_s", "synth_s", "case_s", "cases_per_min",
    "peak_rss_gb", "status",
)
TARGET_CASES_PER_MIN = 10.0
KINDS = ("ellipsoid", "lobulated", "spiculated")


def make_synthesizer(method: str):
    if method == "handcrafted":
        from SynBTLib.handcrafted import HandcraftedSynthesizer

        return HandcraftedSynthesizer(), "handcrafted"
    from SynBTLib.pipeline import SynthesisPipeline

    nets = common.load_networks()
    return SynthesisPipeline(nets.autoencoder, nets.denoiser, nets.scheduler, nets.latent_scale), nets.source


def loader_worker(spec: dict) -> dict:
    """Place and synthesize `cases` tumors (after one warm-up case if spec["warmup"]) and time each part."""
    from SynBTLib.shapes import place_tumor

    bench_case = common.load_test_case(spec["case"])
    case = bench_case.case
    synthesize, source = make_synthesizer(spec["method"])
    rng = np.random.default_rng(spec["seed"])
    timings = []
    warmup = int(spec["warmup"])
    for index in range(1 - warmup, spec["cases"] + 1):
        diameter = float(rng.uniform(spec["min_mm"], spec["max_mm"]))
        kind = KINDS[index % len(KINDS)]
        start = time.perf_counter()
        placement = place_tumor(bench_case.breast, case.geometry, diameter, seed=index, kind=kind)
        placed = time.perf_counter()
        result = synthesize(case, placement.mask, seed=index, steps=spec["steps"])
        done = time.perf_counter()
        if not np.any(result.phases != case.phases):
            raise RuntimeError(f"case {index}: the synthesizer changed nothing")
        if index > 0:  # case 0 warms up caches and lazy initialization
            timings.append((diameter, placed - start, done - placed))
    return dict(timings=timings, source=source)


def run(args) -> list[dict]:
    size = common.SIZES[args.size]
    print(f"case {'x'.join(map(str, size))}x3 (phantom), tumors {args.min_mm:g}-{args.max_mm:g} mm, {args.cases} timed "
          f"cases, {args.threads} threads; diffusion: {common.network_source()}, {args.steps} steps; shared CPU, noisy")
    rows = []
    script = Path(__file__).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        case_path = common.make_test_case(size, Path(tmp), [])
        for method in args.synthesizers:
            spec = dict(case=str(case_path), method=method, cases=args.cases, steps=args.steps, seed=0,
                        min_mm=args.min_mm, max_mm=args.max_mm, warmup=not args.quick)
            result = common.run_worker(script, spec, args.threads, args.timeout)
            row = dict(synthesizer=method, size="x".join(map(str, size)) + "x3", cases=args.cases,
                       steps=args.steps if method == "diffusion" else None)
            if "error" in result:
                rows.append(dict(row, status="failed: " + result["error"]))
                common.report(rows[-1], ("synthesizer", "status"))
                continue
            diameters, place, synth = (np.array(v) for v in zip(*result["timings"]))
            case_s = float(np.mean(place + synth))
            rows.append(dict(
                row, status="measured", diameters_mm=f"{diameters.min():.0f}-{diameters.max():.0f}",
                place_s=float(place.mean()), synth_s=float(synth.mean()), case_s=case_s,
                cases_per_min=60.0 / case_s, peak_rss_gb=result["peak_rss_mb"] / 1024,
                timings=result["timings"],
            ))
            common.report(rows[-1], ("synthesizer", "status", "case_s", "cases_per_min", "peak_rss_gb"))
    return rows


def plot(rows: list[dict], path: Path, title: str) -> Path:
    figure, (rate_axis, time_axis) = common.new_figure(2, title)
    measured = [r for r in rows if r["status"] == "measured"]
    names = [r["synthesizer"] for r in measured]
    rate_axis.bar(names, [r["cases_per_min"] for r in measured], color="tab:blue")
    rate_axis.axhline(TARGET_CASES_PER_MIN, color="tab:red", linestyle="--", label=f"target {TARGET_CASES_PER_MIN:g}/min")
    rate_axis.set(ylabel="cases per minute", title="throughput (place + synthesize)")
    rate_axis.legend(fontsize=8)
    for r in measured:
        diameters, place, synth = zip(*r["timings"])
        time_axis.plot(diameters, np.add(place, synth), "o", label=r["synthesizer"])
    time_axis.set(xlabel="tumor diameter, mm", ylabel="seconds per case", yscale="log", title="time per case")
    time_axis.grid(True, which="both", alpha=0.3)
    time_axis.legend(fontsize=8)
    return common.save_figure(figure, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser)
    parser.add_argument("--size", choices=list(common.SIZES), default="medium")
    parser.add_argument("--cases", type=int, default=10, help="timed cases per synthesizer (after one warm-up)")
    parser.add_argument("--synthesizers", nargs="+", choices=("handcrafted", "diffusion"), default=["handcrafted", "diffusion"])
    parser.add_argument("--steps", type=int, default=30, help="DDIM steps of the diffusion synthesizer")
    parser.add_argument("--min-mm", type=float, default=10.0)
    parser.add_argument("--max-mm", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per synthesizer")
    args = parser.parse_args(argv)
    if args.worker:
        method = json.loads(args.worker)["method"]
        common.worker_main(args.worker, args.threads, loader_worker, uses_torch=method == "diffusion")
        return 0
    if args.quick:
        args.size, args.cases, args.steps, args.min_mm, args.max_mm = "tiny", 1, 2, 15.0, 20.0
    rows = run(args)
    common.print_table(rows, COLUMNS)
    for r in rows:
        if r["status"] == "measured":
            verdict = "meets" if r["cases_per_min"] >= TARGET_CASES_PER_MIN else "misses"
            print(f"{r['synthesizer']}: {r['cases_per_min']:.1f} cases/min {verdict} the {TARGET_CASES_PER_MIN:g}/min target")
    csv_path = common.write_csv(rows, COLUMNS, args.out / "loader.csv")
    png_path = plot(rows, args.out / "loader.png", f"on-the-fly synthesis, {args.size}, {args.threads} threads")
    print(f"wrote {csv_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
