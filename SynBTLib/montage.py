"""A one-page picture of a phantom: axial and sagittal views of every phase, labels and curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import labels as L

_TISSUE_COLORS = {
    L.AIR: "#000000", L.SKIN: "#f4c9a8", L.FAT: "#e8d36b", L.FIBROGLANDULAR: "#e07b91", L.MUSCLE: "#a33b3b",
    L.CHEST_WALL: "#d9d9d9", L.THORAX: "#3a5a80", L.HEART: "#c0142d", L.VESSEL: "#ff5a1f", L.OTHER: "#8c7a4a",
    L.TUMOR: "#2ee63e", L.NECROSIS: "#1f6b2a",
}


def _view_planes(phantom):
    """Axial slice index and sagittal column through the (first) tumor, else through the left breast."""
    tumor = phantom.tumor_labels > 0
    if tumor.any():
        z, y, x = np.argwhere(tumor).mean(axis=0).round().astype(int)
        return int(z), int(x)
    breast = np.isin(phantom.tissue_labels, L.BREAST_TISSUE)
    z, y, x = np.argwhere(breast[:, :, breast.shape[2] // 2 :]).mean(axis=0).round().astype(int)
    return int(z), int(x) + breast.shape[2] // 2


def phantom_montage(phantom, path) -> Path:
    """Render axial and sagittal views of each phase, the early subtraction, the late change (last
    phase - first post-contrast phase, red rising, blue falling: what tells a tumor's curve type and
    whether its phases agree voxel by voxel), the tissue labels (tumor outlined) and every tissue's
    mean signal curve to a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    case = phantom.case
    phases = case.phases
    sx, sy, sz = case.geometry.spacing
    z, x = _view_planes(phantom)
    vmax = float(np.percentile(phases[-1], 99.5))
    subtraction = phases[1] - phases[0]
    smax = float(np.percentile(subtraction, 99.8))
    late = phases[-1] - phases[1] if case.num_phases >= 3 else None
    lmax = None if late is None else max(float(np.percentile(np.abs(late), 99.8)), 1e-6)
    cmap_labels = ListedColormap([_TISSUE_COLORS.get(v, "#ffffff") for v in range(max(L.TISSUE_NAMES) + 1)])

    views = [
        ("axial", lambda a: a[z], sy / sx),  # rows Y (anterior at top), columns X (patient right on the left)
        ("sagittal", lambda a: a[::-1, :, x], sz / sy),  # rows Z (superior at top), columns Y (anterior on the left)
    ]
    columns = case.num_phases + 2 + (late is not None)
    sagittal_height = (sz * phases.shape[1]) / (sy * phases.shape[2])
    fig = plt.figure(figsize=(3.0 * columns + 5.0, 3.3 * (1 + sagittal_height) + 0.6), dpi=100)
    grid = fig.add_gridspec(2, columns + 2, height_ratios=[1.0, sagittal_height])
    for row, (plane, cut, aspect) in enumerate(views):
        panels = [(name, cut(phases[k]), "gray", 0, vmax) for k, name in enumerate(case.phase_names)]
        panels.append((f"{case.phase_names[1]} - {case.phase_names[0]}", cut(subtraction), "gray", 0, smax))
        if late is not None:
            panels.append((f"{case.phase_names[-1]} - {case.phase_names[1]}", cut(late), "RdBu_r", -lmax, lmax))
        for col, (title, image, cmap, lo, hi) in enumerate(panels):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            ax.set_title(f"{plane} {title}", fontsize=8)
            ax.axis("off")
        ax = fig.add_subplot(grid[row, columns - 1])
        ax.imshow(cut(phantom.tissue_labels), cmap=cmap_labels, vmin=-0.5, vmax=len(cmap_labels.colors) - 0.5,
                  aspect=aspect, interpolation="nearest")
        tumor = cut(phantom.tumor_labels)
        if tumor.any():
            ax.contour(tumor, levels=[0.5], colors="white", linewidths=0.6)
        ax.set_title(f"{plane} tissue labels", fontsize=8)
        ax.axis("off")

    ax = fig.add_subplot(grid[:, columns:])
    times = phantom.meta.get("phase_times_s", list(range(case.num_phases)))
    tissue_curves = phantom.meta.get("tissue_signal", {})
    for value, name in L.TISSUE_NAMES.items():
        if name in tissue_curves and value not in (L.AIR, L.TUMOR):
            ax.plot(times, tissue_curves[name], "o-", ms=3, color=_TISSUE_COLORS[value], label=name)
    for k, tumor in enumerate(phantom.meta.get("tumors", [])):
        ax.plot(times, tumor["signal"], "s-", ms=4, lw=2, color=plt.cm.Greens(0.5 + 0.5 * (k + 1) / (len(phantom.meta["tumors"]) + 1)),
                label=f"tumor {k + 1} ({tumor['kinetics']}, {tumor['diameter_mm']:.0f} mm)")
    ax.set_xlabel("time after injection (s)")
    ax.set_ylabel("mean signal")
    ax.set_title(f"seed {phantom.meta.get('seed')}, ACR {phantom.meta.get('density')}, "
                 f"BPE {phantom.meta.get('parameters', {}).get('bpe')}", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
