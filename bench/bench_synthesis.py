"""Time and memory of one tumor synthesis: the ROI SynthesisPipeline against full-volume latent diffusion.

Both paths use the same networks (the shipped phantom bundle if there is one, else the default
configs with random weights: cost does not depend on the weights), the same DDIM steps and the
same RePaint inpainting loop (pipeline.inpaint_latent). The ROI path is ``SynthesisPipeline``
itself. The full-volume path encodes the whole normalized volume (and its tumor-erased copy)
with encode_volume, denoises the whole latent and decodes it with decode_volume.

The full-volume path is run up to ``--full-max-size``; above it, or where its memory estimate
exceeds the budget, its time is extrapolated from the largest measured size (denoising per latent
voxel, encode/decode per image voxel). That is linear, while the denoiser's attention grows with
the square of the deepest-level token count, so extrapolated full-volume times are lower bounds.
``--full-steps k`` runs only k denoising steps of the full path and scales the per-step time to
``--steps``. Each measurement runs in a fresh process and reports its own peak RSS.

    python bench/bench_synthesis.py --sizes small medium full --diameters 20 40 --steps 30
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
    "size", "voxels", "diameter_mm", "path", "status", "steps", "steps_run", "region", "latent", "roi_multiple",
    "total_s", "encode_s", "denoise_s", "per_step_s", "decode_s", "peak_rss_gb", "estimated_gb", "speedup",
)
PROGRESS_COLUMNS = ("size", "diameter_mm", "path", "status", "total_s", "peak_rss_gb", "estimated_gb")
# Bytes per image voxel per phase held by the full path besides the networks: the case, its
# normalized and erased copies, float64 temporaries of normalize/denormalize, the decoded image
# and the blended output.
IMAGE_BYTES_PER_VOXEL_PHASE = 48
RUNTIME_GB = 0.6  # python + torch + monai, measured as the worker's RSS before any work
TILE_GB = 1.3  # autoencoder tiles (DEFAULT_MAX_TILE_VOXELS, ~1.1 GB measured) plus slack
ASSUMED_DENOISER_BYTES_PER_LATENT_VOXEL = 4000  # replaced by the measured value after one full run


# ------------------------------------------------------------------------------ workers


def roi_worker(spec: dict) -> dict:
    """Time SynthesisPipeline on one mask (steps timed through its progress callback)."""
    from SynBTLib.pipeline import SynthesisPipeline

    nets = common.load_networks()
    bench_case = common.load_test_case(spec["case"])
    case, mask = bench_case.case, bench_case.masks[spec["diameter_mm"]]
    pipeline = SynthesisPipeline(nets.autoencoder, nets.denoiser, nets.scheduler, nets.latent_scale)
    box = pipeline.region_of_interest(case, mask)
    region = [s.stop - s.start for s in box]
    step_marks: list[float] = []
    start = time.perf_counter()
    result = pipeline(case, mask, seed=0, steps=spec["steps"], progress=lambda *_: step_marks.append(time.perf_counter()))
    end = time.perf_counter()
    changed = int(np.any(result.phases != case.phases, axis=0).sum())
    per_step = (step_marks[-1] - step_marks[0]) / (len(step_marks) - 1) if len(step_marks) > 1 else None
    encode = step_marks[0] - start - (per_step or 0.0)
    return dict(
        total_s=end - start,
        encode_s=encode,
        denoise_s=step_marks[-1] - start - encode,
        per_step_s=per_step,
        decode_s=end - step_marks[-1],
        region="x".join(map(str, region[::-1])),
        latent="x".join(str(n // pipeline.compression) for n in region[::-1]),
        changed_voxels=changed,
        source=nets.source,
        denoiser=nets.denoiser.config.to_dict(),
        roi_multiple=pipeline.roi_multiple,
        compression=pipeline.compression,
    )


def full_worker(spec: dict) -> dict:
    """Full-volume latent diffusion with the same networks, sampler and steps: encode, denoise, decode the whole volume."""
    import torch

    from SynBTLib.conditioning import denoiser_condition, erase_mask
    from SynBTLib.compositing import blend_weight, paste_blended
    from SynBTLib.pipeline import SynthesisPipeline, inpaint_latent
    from SynBTLib.preprocess import denormalize, fit_normalization, normalize

    nets = common.load_networks()
    bench_case = common.load_test_case(spec["case"])
    case, mask = bench_case.case, bench_case.masks[spec["diameter_mm"]]
    pipeline = SynthesisPipeline(nets.autoencoder, nets.denoiser, nets.scheduler, nets.latent_scale)
    ae, scale = pipeline.autoencoder, pipeline.latent_scale
    # Pad the whole volume (far end, like the autoencoder does) so the latent fits every UNet level.
    multiple = pipeline.roi_multiple
    padding = [(0, -n % multiple) for n in case.shape]
    box = tuple(slice(0, n + after) for n, (_, after) in zip(case.shape, padding))

    watch, step_marks = common.Stopwatch(), []
    norm = fit_normalization(case)
    image = torch.from_numpy(normalize(np.pad(case.phases, [(0, 0), *padding], mode="edge"), norm))[None]
    mask_t = torch.from_numpy(np.pad(mask, padding).astype(np.float32))[None, None]
    core_t = torch.zeros_like(mask_t) if pipeline.takes_necrosis else None  # the cost is the same with a core
    mask_latent, erased = denoiser_condition(mask_t, pipeline.compression, pipeline.mask_dilation_cells,
                                             pipeline.mask_encoding, core_t)
    known = pipeline.channels.standardize(ae.encode_volume(image) * scale)
    context = pipeline.channels.standardize(ae.encode_volume(erase_mask(image, erased)) * scale)
    del image
    watch.mark("encode")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latent = inpaint_latent(
            pipeline.denoiser, pipeline.scheduler, known, context, mask_latent, spec["steps_run"], generator,
            progress=lambda *_: step_marks.append(time.perf_counter()),
        )
    watch.mark("denoise")
    decoded = ae.decode_volume(pipeline.channels.restore(latent) / scale)[0].numpy()
    generated = denormalize(decoded, norm).astype(np.float32)
    weight = blend_weight(np.pad(mask, padding), case.geometry.spacing[::-1], pipeline.blend_mm)
    result = paste_blended(case.phases, generated, weight, box)
    watch.mark("decode")
    steps_run = spec["steps_run"]
    per_step = (step_marks[-1] - step_marks[0]) / (steps_run - 1) if steps_run > 1 else watch.times["denoise"]
    return dict(
        encode_s=watch.times["encode"],
        denoise_s=watch.times["denoise"],
        per_step_s=per_step,
        decode_s=watch.times["decode"],
        region="x".join(str(s.stop) for s in box[::-1]),
        latent="x".join(str(s.stop // pipeline.compression) for s in box[::-1]),
        latent_voxels=int(np.prod(known.shape[2:])),
        changed_voxels=int(np.any(result != case.phases, axis=0).sum()),
    )


# ------------------------------------------------------------------------------ memory model


def attention_gb(denoiser: dict, latent_voxels: int) -> float:
    """Memory of the denoiser's explicit attention matrices (MONAI SABlock without flash attention).

    At each attention level the (heads, T, T) float32 scores and their softmax are both alive;
    T = latent voxels / 8**level.
    """
    worst = 0.0
    for level, (channels, attention) in enumerate(zip(denoiser["channels"], denoiser["attention_levels"])):
        if attention:
            tokens = latent_voxels / 8**level
            heads = max(1, channels // denoiser["num_head_channels"])
            worst = max(worst, 2 * heads * tokens**2 * 4 / 2**30)
    return worst


def full_estimate_gb(voxels: int, phases: int, latent_voxels: int, denoiser: dict, bytes_per_latent_voxel: float) -> float:
    """Peak RSS estimate of the full-volume path."""
    image = IMAGE_BYTES_PER_VOXEL_PHASE * phases * voxels / 2**30
    return RUNTIME_GB + TILE_GB + image + bytes_per_latent_voxel * latent_voxels / 2**30 + attention_gb(denoiser, latent_voxels)


def calibrate(measured_gb: float, voxels: int, phases: int, latent_voxels: int, denoiser: dict) -> float:
    """Denoiser bytes per latent voxel that make the estimate match one measured full run (never below the assumption)."""
    rest = measured_gb - full_estimate_gb(voxels, phases, latent_voxels, denoiser, 0.0)
    return max(ASSUMED_DENOISER_BYTES_PER_LATENT_VOXEL, rest * 2**30 / latent_voxels)


# ------------------------------------------------------------------------------ driver


def padded_latent_voxels(shape_zyx, multiple: int, compression: int) -> int:
    return int(np.prod([-(-n // multiple) * multiple // compression for n in shape_zyx]))


def finish_full_row(row: dict, steps: int) -> dict:
    """Total time of the full path for all `steps` from its measured parts."""
    row["total_s"] = row["encode_s"] + row["per_step_s"] * steps + row["decode_s"]
    return row


def run(args) -> list[dict]:
    sizes = [(name, common.SIZES[name]) for name in args.sizes]
    budget_gb = args.budget_gb or common.available_gb() * 0.6
    print(f"networks: {common.network_source()}; {args.threads} threads; {args.steps} DDIM steps; "
          f"full-volume memory budget {budget_gb:.1f} GB; shared CPU, timings are noisy")
    rows, reference = [], None  # reference: the largest measured full run, for extrapolation
    bytes_per_latent_voxel = ASSUMED_DENOISER_BYTES_PER_LATENT_VOXEL
    script = Path(__file__).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in sizes:
            voxels = int(np.prod(size))
            case_path = common.make_test_case(size, Path(tmp), args.diameters)
            base = dict(size="x".join(map(str, size)) + "x3", voxels=voxels, steps=args.steps)
            info = None
            for diameter in args.diameters:
                spec = dict(case=str(case_path), diameter_mm=float(diameter), steps=args.steps)
                result = common.run_worker(script, dict(spec, path="roi"), args.threads, args.timeout)
                row = dict(base, diameter_mm=diameter, path="roi", steps_run=args.steps, **result)
                row["status"] = "failed: " + result["error"] if "error" in result else "measured"
                if "error" not in result:
                    row["peak_rss_gb"] = result["peak_rss_mb"] / 1024
                    info = result
                rows.append(row)
                common.report(row, PROGRESS_COLUMNS)
            if info is None:
                continue
            latent_voxels = padded_latent_voxels(size[::-1], info["roi_multiple"], info["compression"])
            estimate = full_estimate_gb(voxels, 3, latent_voxels, info["denoiser"], bytes_per_latent_voxel)
            full = dict(base, diameter_mm=args.diameters[0], path="full", estimated_gb=estimate)
            if estimate > budget_gb or size[0] > common.SIZES[args.full_max_size][0]:
                why = f"does not fit ({estimate:.1f} GB > {budget_gb:.1f} GB)" if estimate > budget_gb else "not run"
                if reference is None:
                    full["status"] = why + "; no measured size to extrapolate from"
                else:
                    ratio_latent, ratio_image = latent_voxels / reference["latent_voxels"], voxels / reference["voxels"]
                    full.update(
                        status=f"{why}; time extrapolated from {reference['size']}",
                        steps_run=0,
                        encode_s=reference["encode_s"] * ratio_image,
                        per_step_s=reference["per_step_s"] * ratio_latent,
                        decode_s=reference["decode_s"] * ratio_image,
                    )
                    full["denoise_s"] = full["per_step_s"] * args.steps
                    finish_full_row(full, args.steps)
            else:
                steps_run = min(args.full_steps or args.steps, args.steps)
                spec = dict(case=str(case_path), diameter_mm=float(args.diameters[0]), steps_run=steps_run, path="full")
                result = common.run_worker(script, spec, args.threads, args.timeout)
                full.update(steps_run=steps_run, **result)
                if "error" in result:
                    full["status"] = "failed: " + result["error"]
                else:
                    full["status"] = "measured" if steps_run == args.steps else f"measured {steps_run} steps, scaled"
                    full["peak_rss_gb"] = result["peak_rss_mb"] / 1024
                    finish_full_row(full, args.steps)
                    reference = dict(full, voxels=voxels)
                    bytes_per_latent_voxel = calibrate(full["peak_rss_gb"], voxels, 3, latent_voxels, info["denoiser"])
            rows.append(full)
            common.report(full, PROGRESS_COLUMNS)
            for row in rows:
                if row["size"] == base["size"] and row["path"] == "roi" and full.get("total_s") and row.get("total_s"):
                    row["speedup"] = full["total_s"] / row["total_s"]
    return rows


def plot(rows: list[dict], path: Path, title: str) -> Path:
    figure, (time_axis, memory_axis) = common.new_figure(2, title)
    series = {}
    for row in rows:
        if row.get("total_s") is None:
            continue
        label = f"ROI, {row['diameter_mm']:g} mm tumor" if row["path"] == "roi" else "full volume"
        series.setdefault(label, []).append(row)
    for label, items in series.items():
        x = [r["voxels"] * 3 for r in items]
        line = time_axis.plot(x, [r["total_s"] for r in items], "-", label=label)[0]
        measured = [r for r in items if r["status"].startswith("measured")]
        time_axis.plot([r["voxels"] * 3 for r in measured], [r["total_s"] for r in measured], "o", color=line.get_color())
        memory = [r for r in items if r.get("peak_rss_gb") or r.get("estimated_gb")]
        memory_axis.plot(
            [r["voxels"] * 3 for r in memory],
            [r.get("peak_rss_gb") or r["estimated_gb"] for r in memory],
            "o-", color=line.get_color(), label=label,
        )
    time_axis.set(xscale="log", yscale="log", xlabel="image voxels (x3 phases)", ylabel="seconds per synthesis",
                  title="time (dots measured, else extrapolated)")
    memory_axis.set(xscale="log", xlabel="image voxels (x3 phases)", ylabel="peak RSS, GB",
                    title="memory (full volume: measured or estimated)")
    for axis in (time_axis, memory_axis):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    return common.save_figure(figure, path)


def summarize(rows: list[dict]) -> None:
    """The targets, checked at the largest size: ROI <= 30 s and <= 3 GB, >= 20x faster than the full volume."""
    roi = [r for r in rows if r["path"] == "roi" and r.get("total_s") is not None]
    if not roi:
        return
    largest = max(r["voxels"] for r in roi)
    for r in (r for r in roi if r["voxels"] == largest):
        speedup = f"{r['speedup']:.0f}x" if r.get("speedup") else "n/a"
        print(f"target check at {r['size']}, {r['diameter_mm']:g} mm: ROI {r['total_s']:.1f} s (<= 30 s), "
              f"{r['peak_rss_gb']:.2f} GB (<= 3 GB), speedup over full volume {speedup} (>= 20x)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser)
    parser.add_argument("--sizes", nargs="+", choices=list(common.SIZES), default=["small", "medium"])
    parser.add_argument("--diameters", type=float, nargs="+", default=[20.0, 40.0], help="tumor diameters, mm")
    parser.add_argument("--steps", type=int, default=30, help="DDIM steps of both paths")
    parser.add_argument("--full-steps", type=int, default=None, help="steps actually run on the full path (default --steps)")
    parser.add_argument("--full-max-size", choices=list(common.SIZES), default="medium",
                        help="largest size at which the full path runs; above it, it is extrapolated")
    parser.add_argument("--budget-gb", type=float, default=None, help="full-path memory budget (default 60%% of free memory)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        common.worker_main(args.worker, args.threads, roi_worker if spec["path"] == "roi" else full_worker)
        return 0
    if args.quick:
        args.sizes, args.diameters, args.steps, args.full_steps, args.full_max_size = ["tiny"], [20.0], 2, None, "tiny"
    rows = run(args)
    common.print_table(rows, COLUMNS)
    summarize(rows)
    csv_path = common.write_csv(rows, COLUMNS, args.out / "synthesis.csv")
    png_path = plot(rows, args.out / "synthesis.png", f"synthesis, {args.threads} threads, {args.steps} steps, {common.network_source()}")
    print(f"wrote {csv_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
