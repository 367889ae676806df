"""`synbt demo`: a phantom DCE-MRI case gets a synthetic tumor; outputs and a PNG montage are written."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .case import Case


def synthesis_montage(
    before: Case,
    after: Case,
    tumor: np.ndarray,
    fibroglandular: np.ndarray,
    path: str | Path,
    title: str = "",
    window_mm: float = 90.0,
) -> Path:
    """Before/after of every phase and of the subtraction around the tumor, the full field of view,
    and the kinetic curve inside the tumor against fibroglandular tissue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    tumor = tumor.astype(bool)
    zz, yy, xx = np.nonzero(tumor)
    cz, cy, cx = int(np.median(zz)), int(np.median(yy)), int(np.median(xx))
    sx, sy, sz = before.geometry.spacing
    hy, hx = int(window_mm / 2 / sy), int(window_mm / 2 / sx)
    y0, y1 = max(cy - hy, 0), min(cy + hy, before.shape[1])
    x0, x1 = max(cx - hx, 0), min(cx + hx, before.shape[2])

    n = before.num_phases
    sub_before = before.phases[1] - before.phases[0]
    sub_after = after.phases[1] - after.phases[0]
    # display range from the zoomed window, before and after together, so neither saturates
    window = (slice(None), cz, slice(y0, y1), slice(x0, x1))
    vmax = float(max(before.phases[window].max(), after.phases[window].max()))
    smax = float(max(sub_before[window[1:]].max(), sub_after[window[1:]].max()))
    late = n >= 3  # the late change (last - first post-contrast phase) needs two post-contrast phases
    if late:
        late_before, late_after = before.phases[-1] - before.phases[1], after.phases[-1] - after.phases[1]
        lmax = max(float(np.abs(late_after[window[1:]][tumor[cz, y0:y1, x0:x1]]).max(initial=0.0)),
                   float(np.percentile(np.abs(late_before[window[1:]]), 99)), 1e-6)
    columns = n + 1 + late

    fig = plt.figure(figsize=(2.6 * columns, 8.6), dpi=110)
    grid = fig.add_gridspec(3, columns, height_ratios=[1, 1, 1.15])
    aspect = sy / sx
    for row, (label, case, sub) in enumerate((("before", before, sub_before), ("after", after, sub_after))):
        for k in range(columns):
            ax = fig.add_subplot(grid[row, k])
            if k < n:
                ax.imshow(case.phases[k, cz, y0:y1, x0:x1], cmap="gray", vmin=0, vmax=vmax, aspect=aspect)
                name = case.phase_names[k]
            elif k == n:
                ax.imshow(sub[cz, y0:y1, x0:x1], cmap="gray", vmin=0, vmax=smax, aspect=aspect)
                name = f"{case.phase_names[1]} - {case.phase_names[0]}"
            else:  # red: still rising (persistent), blue: washing out
                change = (late_before if row == 0 else late_after)[cz, y0:y1, x0:x1]
                ax.imshow(change, cmap="RdBu_r", vmin=-lmax, vmax=lmax, aspect=aspect)
                name = f"{case.phase_names[-1]} - {case.phase_names[1]}"
            if row == 0:
                ax.contour(tumor[cz, y0:y1, x0:x1], levels=[0.5], colors="tab:red", linewidths=0.6)
            ax.set_title(f"{name} ({label})", fontsize=8)
            ax.set_axis_off()

    split = max(columns - 2, 1)
    overview = fig.add_subplot(grid[2, :split])
    full = after.phases[1, cz]
    overview.imshow(full, cmap="gray", vmin=0, vmax=float(np.percentile(full, 99.7)), aspect=aspect)
    overview.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="tab:red", linewidth=1))
    overview.set_title(f"{after.phase_names[1]} after, full field of view (axial slice {cz})", fontsize=8)
    overview.set_axis_off()

    curve = fig.add_subplot(grid[2, split:])
    phases = np.arange(n)
    for region, mask, color in (
        ("synthetic tumor", tumor, "tab:red"),
        ("fibroglandular", fibroglandular & ~tumor, "tab:blue"),
    ):
        if mask.any():
            values = after.phases[:, mask].mean(axis=1)
            enhancement = 100.0 * (values - values[0]) / max(abs(values[0]), 1e-6)
            curve.plot(phases, enhancement, "o-", color=color, label=region)
    curve.set_xticks(phases, after.phase_names, fontsize=7)
    curve.set_ylabel("relative enhancement (%)", fontsize=8)
    curve.set_title("kinetic curves", fontsize=8)
    curve.legend(fontsize=7)
    curve.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


HANDCRAFTED_PHASES = "pre,first,last"  # the handcrafted method takes any phases: show the shipped bundle's


def _modelled_phases(method: str):
    """The phases the demo's synthesizer models (phase_choice.BundlePhases): the default bundle's for
    the diffusion method, pre / first / last post-contrast for the handcrafted one."""
    from .phase_choice import BundlePhases

    if method == "handcrafted":
        return BundlePhases(3, HANDCRAFTED_PHASES)
    from .bundle import default_bundle_path

    return BundlePhases.of_bundle(default_bundle_path())


def run_demo(
    out: str | Path,
    seed: int = 0,
    method: str = "auto",
    size_mm: float = 25.0,
    steps: int | None = None,
    shape: tuple[int, int, int] = (192, 192, 64),
    overwrite: bool = False,
    progress=None,
    log=None,
    device: str | None = None,
    precision: str = "float32",
) -> dict:
    """Make a phantom case, place a tumor in its breast tissue, synthesize it, write everything.

    `progress(done, total, message)` follows the synthesis steps; `log(message)` each stage.
    device (None/"auto": cuda when available) and precision are the diffusion networks' (ignored by
    the handcrafted method).
    """
    log = log or (lambda message: None)
    from .io import prepare_output_dir, write_case, write_label
    from .case import Case
    from .phantom import make_phantom, write_phantom
    from .phase_choice import choose_phases
    from .preprocess import breast_tissue_mask
    from .shapes import place_tumor
    from .synthesizers import make_synthesizer

    start = time.perf_counter()
    from .pipeline import resolve_device
    from .synthesizers import check_request

    options = {}
    if check_request(method, steps).method != "handcrafted":
        options = {"device": resolve_device(device), "precision": precision}
    synthesizer, used_method, used_steps = make_synthesizer(method, steps=steps, **options)
    out = prepare_output_dir(out, overwrite=overwrite)
    modelled = _modelled_phases(used_method)
    log(f"making a {shape[0]}x{shape[1]}x{shape[2]} phantom DCE-MRI case (Phantom 2, seed {seed})")
    phases = None if modelled.policy else modelled.count  # a bundle without a policy: its own phase count
    phantom = make_phantom(seed=seed, shape=shape, phases=phases, tumors=0, preset="bundle")
    write_phantom(phantom, out / "phantom", overwrite=True)
    case = phantom.case
    choice = choose_phases(case.num_phases, modelled, what="the phantom")
    if choice.is_subset:
        log(f"using {choice.describe(case.phase_names)}")
        case = Case(case.phases[list(choice.indices)], case.geometry, [case.phase_names[k] for k in choice.indices])

    log(f"placing a {size_mm:g} mm tumor in the breast tissue")
    breast = breast_tissue_mask(case)
    placement = place_tumor(breast.breast, case.geometry, size_mm, seed=seed, kind="lobulated", margin_mm=4.0)
    log(f"synthesizing it ({used_method}{'' if used_steps is None else f', {used_steps} steps'})")
    result = synthesizer(case, placement.mask, seed=seed, steps=used_steps, progress=progress)

    log("writing the outputs and the figure")
    synthetic_dir = out / "synthetic"
    synthetic_dir.mkdir(exist_ok=True)  # with overwrite, a second demo replaces the first one's files
    write_case(result, synthetic_dir)
    write_label(placement.mask, case.geometry, synthetic_dir / "tumor_labels.nii.gz")
    figure = synthesis_montage(
        case,
        result,
        placement.mask,
        breast.fibroglandular,
        out / "demo.png",
        title=f"SynBT demo: {size_mm:g} mm tumor, method {used_method}, seed {seed}",
    )
    summary = {
        "method": used_method,
        "seed": seed,
        "steps": used_steps,
        "size_mm": size_mm,
        "center_mm": [float(v) for v in placement.center_mm],
        "tumor_voxels": int(placement.mask.sum()),
        "unchanged_outside_fraction": float(
            np.mean(np.all(result.phases == case.phases, axis=0)[placement.mask == 0])
        ),
        "seconds": round(time.perf_counter() - start, 1),
        "figure": str(figure),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary
