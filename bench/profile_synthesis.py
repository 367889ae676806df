"""cProfile of one tumor synthesis: the top costs by cumulative time.

Runs, in a fresh process with a fixed thread count, one untimed warm-up synthesis and then one
profiled synthesis of a tumor placed in a phantom's breast tissue, with the diffusion
SynthesisPipeline (the shipped bundle if there is one, else default configs with random weights)
or the handcrafted synthesizer. Prints the top --top functions by cumulative time, and the top
SynBTLib functions (the actionable ones), and writes both as CSV and the first as a bar chart.

    python bench/profile_synthesis.py --size full --diameter 40 --steps 30
"""
from __future__ import annotations

import argparse
import json
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

COLUMNS = ("table", "rank", "function", "ncalls", "tottime_s", "cumtime_s", "cum_percent")


def function_label(key: tuple[str, int, str]) -> str:
    """'package/module.py:line(name)' of a pstats key, shortened to the part after site-packages or the repo."""
    filename, line, name = key
    if filename == "~":  # built-in
        return name
    for marker in ("site-packages/", str(common.REPO) + "/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{line}({name})"


def profile_worker(spec: dict) -> dict:
    from bench_loader import make_synthesizer

    bench_case = common.load_test_case(spec["case"])
    case, mask = bench_case.case, bench_case.masks[spec["diameter_mm"]]
    synthesize, source = make_synthesizer(spec["method"])
    if spec["warmup"]:
        synthesize(case, mask, seed=1, steps=spec["steps"])
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(synthesize, case, mask, seed=0, steps=spec["steps"])
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler).sort_stats("cumulative")
    # The overall top is mostly torch/MONAI internals; the SynBTLib functions are the ones to act on.
    own = [key for key in stats.fcn_list if "SynBTLib" in key[0]]
    rows = []
    for table, keys in (("all", stats.fcn_list[: spec["top"]]), ("SynBTLib", own[: spec["top"]])):
        for rank, key in enumerate(keys, start=1):
            _, ncalls, tottime, cumtime, _ = stats.stats[key]
            rows.append(dict(table=table, rank=rank, function=function_label(key), ncalls=ncalls, tottime_s=tottime,
                             cumtime_s=cumtime, cum_percent=100.0 * cumtime / total))
    return dict(rows=rows, total_s=total, source=source)


def plot(rows: list[dict], path: Path, title: str) -> Path:
    figure, (axis,) = common.new_figure(1, title)
    figure.set_size_inches(11, 0.35 * len(rows) + 1.5)
    labels = [r["function"][-70:] for r in rows][::-1]
    axis.barh(labels, [r["cumtime_s"] for r in rows][::-1], color="tab:blue", label="cumulative")
    axis.barh(labels, [r["tottime_s"] for r in rows][::-1], color="tab:orange", label="own time")
    axis.set(xlabel="seconds")
    axis.tick_params(axis="y", labelsize=7)
    axis.legend(fontsize=8)
    return common.save_figure(figure, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser)
    parser.add_argument("--size", choices=list(common.SIZES), default="medium")
    parser.add_argument("--diameter", type=float, default=20.0, help="tumor diameter, mm")
    parser.add_argument("--method", choices=("diffusion", "handcrafted"), default="diffusion")
    parser.add_argument("--steps", type=int, default=30, help="DDIM steps of the diffusion synthesizer")
    parser.add_argument("--top", type=int, default=15, help="functions listed")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    if args.worker:
        method = json.loads(args.worker)["method"]
        common.worker_main(args.worker, args.threads, profile_worker, uses_torch=method == "diffusion")
        return 0
    warmup = not args.quick
    if args.quick:
        args.size, args.diameter, args.steps = "tiny", 20.0, 2
    size = common.SIZES[args.size]
    print(f"profiling one {args.method} synthesis of a {args.diameter:g} mm tumor in a {'x'.join(map(str, size))}x3 "
          f"phantom, {args.steps} steps, {args.threads} threads; networks: {common.network_source()}")
    with tempfile.TemporaryDirectory() as tmp:
        case_path = common.make_test_case(size, Path(tmp), [args.diameter])
        spec = dict(case=str(case_path), diameter_mm=args.diameter, method=args.method, steps=args.steps,
                    top=args.top, warmup=warmup)
        result = common.run_worker(Path(__file__).resolve(), spec, args.threads, args.timeout)
    if "error" in result:
        print(f"profiling failed: {result['error']}")
        return 1
    rows = result["rows"]
    for table in ("all", "SynBTLib"):
        print(f"top {args.top} {'functions' if table == 'all' else 'SynBTLib functions'} by cumulative time:")
        common.print_table([r for r in rows if r["table"] == table], COLUMNS[1:])
    print(f"one synthesis: {result['total_s']:.2f} s under the profiler, peak RSS {result['peak_rss_mb'] / 1024:.2f} GB")
    csv_path = common.write_csv(rows, COLUMNS, args.out / "profile.csv")
    png_path = plot([r for r in rows if r["table"] == "all"], args.out / "profile.png", f"cProfile of one {args.method} synthesis ({args.size}, {args.steps} steps)")
    print(f"wrote {csv_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
