"""Valid-centre tiling: run a local network over any field of view in bounded memory.

A network is *local* when each output voxel depends only on the input voxels inside its
receptive field (no attention, no statistics over the whole image). Such a network applied to
a tile that contains a core plus a halo at least as wide as the receptive field gives, on the
core, exactly what it gives on the whole volume; so we run tiles, keep only their cores and
write the cores side by side. Nothing is blended and there are no seams.

Everything here is counted in *cells*: one cell is one latent voxel, i.e. ``scale`` voxels of
the grid at the other side of the network (``scale`` = 4 image voxels per axis for the
autoencoder). Working in cells keeps every tile start a multiple of the compression factor, so
the image and latent grids of a tile stay aligned with those of the whole volume.

A tile never reads outside the volume (it is clipped at the volume border instead of padded):
the network's own zero padding at the border then happens at the same place as for the whole
volume, which is what makes border tiles exact too.
"""
from __future__ import annotations

import itertools
from functools import reduce
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Largest number of tiles per axis that the planner considers.
MAX_TILES_PER_AXIS = 64


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in cells: read [read_start, read_stop), keep [core_start, core_stop)."""

    read_start: int
    read_stop: int
    core_start: int
    core_stop: int


def _axis_spans(size: int, core: int, halo: int) -> list[Span]:
    spans = []
    for start in range(0, size, core):
        stop = min(size, start + core)
        spans.append(Span(max(0, start - halo), min(size, stop + halo), start, stop))
    return spans


def plan_tiles(size: Sequence[int], halo: int, max_tile_cells: int) -> list[list[Span]]:
    """Per-axis spans that cover a volume of `size` cells with the least total computation.

    Each tile reads its core plus `halo` cells on every side (clipped to the volume) and holds at
    most `max_tile_cells` cells when some split allows it (otherwise the smallest tiles tried).
    The total work is the sum of the tiles' read volumes, which factorizes over the axes, so every
    combination of tile counts per axis up to MAX_TILES_PER_AXIS is scored exactly.
    """
    cores, work, largest = [], [], []  # per axis: candidate core lengths, their work and largest read
    for n in size:
        axis_cores = sorted({-(-n // k) for k in range(1, min(n, MAX_TILES_PER_AXIS) + 1)}, reverse=True)
        reads = [[s.read_stop - s.read_start for s in _axis_spans(n, c, halo)] for c in axis_cores]
        cores.append(axis_cores)
        work.append(np.array([sum(r) for r in reads], dtype=np.float64))
        largest.append(np.array([max(r) for r in reads], dtype=np.float64))
    total_work = reduce(np.multiply.outer, work)
    tile_cells = reduce(np.multiply.outer, largest)
    fits = tile_cells <= max_tile_cells
    scores = np.where(fits, total_work, np.inf) if fits.any() else tile_cells
    best = np.unravel_index(np.argmin(scores), scores.shape)
    return [_axis_spans(n, c[b], halo) for n, c, b in zip(size, cores, best)]


def run_tiled(
    network: Callable[[torch.Tensor], torch.Tensor],
    read: Callable[[tuple[slice, ...]], torch.Tensor],
    out: torch.Tensor,
    spans: list[list[Span]],
    in_scale: int,
    out_scale: int,
    progress: Callable[[int, int, str], None] | None = None,
    message: str = "tile",
) -> torch.Tensor:
    """Fill `out` (B, C, *spatial) tile by tile and return it.

    `read(slices)` returns the network's input (B, C', *tile) for spatial slices given in input
    voxels (cells x `in_scale`); the network's output is in voxels of `cells x out_scale`.
    `progress(done, total, message)` is called after every tile and may raise to cancel.
    """
    tiles = list(itertools.product(*spans))
    for done, tile in enumerate(tiles, start=1):
        source = tuple(slice(s.read_start * in_scale, s.read_stop * in_scale) for s in tile)
        keep = tuple(
            slice((s.core_start - s.read_start) * out_scale, (s.core_stop - s.read_start) * out_scale) for s in tile
        )
        target = tuple(slice(s.core_start * out_scale, s.core_stop * out_scale) for s in tile)
        result = network(read(source))
        out[(slice(None), slice(None)) + target] = result[(slice(None), slice(None)) + keep].to(out.device, out.dtype)
        del result
        if progress is not None:
            progress(done, len(tiles), f"{message} {done}/{len(tiles)}")
    return out
