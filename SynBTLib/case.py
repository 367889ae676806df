"""The engine's unit of data: a DCE-MRI case (phases + geometry) and its grid."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import SynBTError


@dataclass(frozen=True)
class Geometry:
    """A voxel grid in LPS physical space, in SimpleITK's conventions.

    size, spacing and origin are (x, y, z); direction is the 3x3 direction cosine matrix
    flattened row-major (SimpleITK's GetDirection()). Arrays on this grid are (Z, Y, X).
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in self.direction))
        if len(self.size) != 3 or len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise SynBTError(f"geometry must be 3D, got size={self.size} spacing={self.spacing}")
        if min(self.spacing) <= 0:
            raise SynBTError(f"spacing must be positive, got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (Z, Y, X) of this grid."""
        return self.size[::-1]

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous (x, y, z) voxel indices, shape (..., 3) -> LPS millimetres (..., 3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return (ijk * np.asarray(self.spacing)) @ self.direction_matrix.T + np.asarray(self.origin)

    def physical_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """LPS millimetres (..., 3) -> continuous (x, y, z) voxel indices (..., 3)."""
        xyz = np.asarray(xyz, dtype=np.float64) - np.asarray(self.origin)
        return (xyz @ self.direction_matrix) / np.asarray(self.spacing)

    def matches(self, other: "Geometry", tol: float = 1e-4) -> bool:
        """Same grid: equal size, and spacing/origin/direction equal within tol (relative to spacing)."""
        if self.size != other.size:
            return False
        sp = np.asarray(self.spacing)
        return (
            np.allclose(sp, other.spacing, rtol=tol, atol=0)
            and np.allclose(self.origin, other.origin, rtol=0, atol=tol * float(sp.min()))
            and np.allclose(self.direction, other.direction, rtol=0, atol=tol)
        )

    def describe(self) -> str:
        sp = "x".join(f"{v:g}" for v in self.spacing)
        org = ",".join(f"{v:.2f}" for v in self.origin)
        oblique = "" if np.allclose(np.abs(self.direction_matrix), np.eye(3), atol=1e-6) else " oblique"
        return f"{self.size[0]}x{self.size[1]}x{self.size[2]} @ {sp} mm, origin ({org}){oblique}"


@dataclass(frozen=True)
class StoredFormat:
    """How a case's phases were stored, so that what is written from it keeps it: the file type
    (an extension of EXTENSIONS) and the voxel type (a numpy dtype name; integer types are kept,
    floating point is written as float32)."""

    EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")

    extension: str = ".nii.gz"
    dtype: str = "float32"

    def __post_init__(self):
        if self.extension not in self.EXTENSIONS:
            raise SynBTError(f"cannot write phases as {self.extension!r}; use one of {', '.join(self.EXTENSIONS)}")
        dtype = np.dtype(self.dtype)
        if not (np.issubdtype(dtype, np.integer) or dtype == np.float32):
            raise SynBTError(f"phases are written as an integer type or float32, not {dtype.name}")

    def cast(self, phase: np.ndarray) -> np.ndarray:
        """A float32 phase in this voxel type: integer types get the nearest integer, clipped to the
        type's range (the values the scanner could have stored); float32 is returned as it is."""
        dtype = np.dtype(self.dtype)
        if dtype == np.float32:
            return np.asarray(phase, dtype=np.float32)
        info = np.iinfo(dtype)
        rounded = np.rint(phase)
        np.clip(rounded, info.min, info.max, out=rounded)
        return rounded.astype(dtype)


@dataclass
class Case:
    """A DCE-MRI case: phases as a (C, Z, Y, X) float32 array on one grid, with phase names.

    ``stored``: how the phases were stored when the case was read from files (None otherwise)."""

    phases: np.ndarray
    geometry: Geometry
    phase_names: list[str] = field(default_factory=list)
    stored: StoredFormat | None = None

    def __post_init__(self):
        if self.phases.ndim != 4:
            raise SynBTError(f"a case's phases must be a (C, Z, Y, X) array, got {self.phases.ndim} dimensions")
        if self.phases.shape[0] < 2:
            raise SynBTError(
                f"a DCE-MRI case needs at least two phases (pre-contrast and post-contrast), got {self.phases.shape[0]}"
            )
        if tuple(self.phases.shape[1:]) != self.geometry.shape:
            raise SynBTError(f"phases of shape {self.phases.shape[1:]} do not match the grid {self.geometry.describe()}")
        if self.phases.dtype != np.float32:
            self.phases = self.phases.astype(np.float32)
        if not self.phase_names:
            self.phase_names = [f"phase{k}" for k in range(self.phases.shape[0])]
        if len(self.phase_names) != self.phases.shape[0]:
            raise SynBTError(f"{len(self.phase_names)} phase names for {self.phases.shape[0]} phases")

    @property
    def num_phases(self) -> int:
        return int(self.phases.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    def with_phases(self, phases: np.ndarray) -> "Case":
        """A new case on the same grid with other phase data."""
        return Case(phases=phases, geometry=self.geometry, phase_names=list(self.phase_names), stored=self.stored)


def check_finite(array: np.ndarray, what: str) -> None:
    """Refuse NaN/Inf voxels with a message that names where they are."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return  # integers and booleans are always finite
    # NaN / Inf propagate into the sum, and float32 values cannot overflow a float64 sum: one pass, no mask
    if (np.issubdtype(array.dtype, np.floating) and array.dtype != np.float64
            and np.isfinite(array.sum(dtype=np.float64))):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        raise SynBTError(f"{what} has {int(bad.sum())} NaN/Inf voxels; fix or mask them before synthesis")
