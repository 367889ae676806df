"""Power-law (1/f^beta) Gaussian random fields for the phantom-2 breast and lesion textures.

Breast parenchyma is a fractal-like mixture: the power spectrum of breast CT slices falls as
1/f^beta with beta 1.75 / 1.83 / 1.79 (+-0.35-0.42) in coronal / sagittal / axial views (Chen
et al. 2012, Med Phys 39:1435, PMC3298563; checked). A 3-D isotropic field with spectrum
f^-b3 has 2-D slices with f^-(b3-1), so the fields here are drawn in 3-D with b3 = beta + 1 on
the grid itself (physical frequencies, so anisotropic voxels are right), over a box padded to
limit wrap-around.
"""
from __future__ import annotations

import numpy as np
from scipy import fft


def power_law_field(rng: np.random.Generator, shape_zyx, spacing_zyx, beta3: float, largest_mm: float = 80.0,
                    smallest_mm: float | None = None) -> np.ndarray:
    """Unit-variance float32 field on a (Z, Y, X) grid with isotropic 3-D spectrum ~ f^-beta3.

    largest_mm: wavelengths beyond it are flattened (the spectrum is cut below 1/largest_mm,
    so the field has no trend across the breast); smallest_mm: optional high-frequency cutoff."""
    shape = tuple(int(n) for n in shape_zyx)
    pad = [max(4, n // 8) for n in shape]
    padded = tuple(fft.next_fast_len(n + p) for n, p in zip(shape, pad))
    freqs = [fft.fftfreq(n, d=s).astype(np.float32) for n, s in zip(padded[:-1], spacing_zyx[:-1])]
    freqs.append(fft.rfftfreq(padded[-1], d=spacing_zyx[-1]).astype(np.float32))
    f2 = freqs[0][:, None, None] ** 2 + freqs[1][None, :, None] ** 2 + freqs[2][None, None, :] ** 2
    f = np.sqrt(f2, out=f2)
    low = np.float32(1.0 / largest_mm)
    amplitude = np.maximum(f, low) ** np.float32(-beta3 / 2.0)
    if smallest_mm is not None:
        amplitude *= np.exp(-((f * np.float32(smallest_mm)) ** 2))
    del f, f2
    noise = rng.standard_normal(padded, dtype=np.float32)
    spectrum = fft.rfftn(noise, overwrite_x=True, workers=1)
    spectrum *= amplitude
    del amplitude
    field = fft.irfftn(spectrum, s=padded, overwrite_x=True, workers=1)[tuple(slice(0, n) for n in shape)]
    field = np.ascontiguousarray(field, dtype=np.float32)
    field -= field.mean()
    field /= max(float(field.std()), 1e-12)
    return field


def sheets(field: np.ndarray, spacing_zyx, thickness_mm: float) -> np.ndarray:
    """Partial-volume (0..1) thin sheets along the zero level set of a smooth field (Cooper's ligaments)."""
    grads = np.gradient(field, *spacing_zyx)
    norm = np.sqrt(sum(g * g for g in grads)) + 1e-6
    distance = np.abs(field) / norm  # first-order distance (mm) to the zero level
    return np.clip(1.0 - distance / (0.5 * thickness_mm), 0.0, 1.0).astype(np.float32)
