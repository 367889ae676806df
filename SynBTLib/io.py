"""Read and write cases, masks and label maps with their exact geometry (SimpleITK).

Formats: NIfTI, NRRD, MHA/MHD, DICOM series folders, 4D NIfTI (phases on the 4th axis), and
Slicer .seg.nrrd segmentations (through slicerio). Every problem with an input file becomes a
one-line SynBTError that names the file. Files are written atomically (temp name + os.replace).
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from .case import Case, Geometry, StoredFormat, check_finite
from .datasets import CaseRef, find_phase_files, read_dataset, strip_image_extension
from .errors import SynBTError

__all__ = [
    "CaseRef",
    "check_output_dir",
    "geometry_of",
    "prepare_output_dir",
    "read_case",
    "read_dataset",
    "read_image",
    "read_mask",
    "resample_to",
    "show_itk_warnings",
    "to_sitk",
    "phase_paths",
    "submit_case",
    "write_case",
    "write_image",
    "write_label",
]

PathLike = str | os.PathLike


def show_itk_warnings(show: bool) -> None:
    """Let ITK print its multi-line warnings on stderr (off unless --verbose or SYNBT_VERBOSE=1):
    SynBT checks what they warn about itself and reports problems in one line."""
    sitk.ProcessObject.SetGlobalWarningDisplay(bool(show))


show_itk_warnings(os.environ.get("SYNBT_VERBOSE", "") not in ("", "0"))


# ---------------------------------------------------------------- SimpleITK <-> arrays


def geometry_of(image: sitk.Image) -> Geometry:
    """The Geometry of a 3D SimpleITK image."""
    return Geometry(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def to_sitk(array_zyx: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image of a (Z, Y, X) array on a grid."""
    if tuple(array_zyx.shape) != geometry.shape:
        raise SynBTError(f"array of shape {array_zyx.shape} does not match the grid {geometry.describe()}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx), isVector=False)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def _reason(exc: RuntimeError) -> str:
    """The informative line of an ITK exception (they span many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Description:"):
            return line[len("Description:"):].strip()
    return lines[-1] if lines else "unknown error"


def _read_sitk(path: Path) -> sitk.Image:
    """Read an image file or a DICOM series folder; every failure is a SynBTError naming the path."""
    if not path.exists():
        raise SynBTError(f"file not found: {path}")
    try:
        if path.is_dir():
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise SynBTError(f"folder {path} holds no DICOM series and no phase files")
            if len(series) > 1:
                raise SynBTError(f"folder {path} holds {len(series)} DICOM series; pass one folder per phase")
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
            _check_slice_positions(path, files)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            return reader.Execute()
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise SynBTError(f"cannot read {path} (unreadable or truncated file): {_reason(exc)}") from exc
    if _is_nifti(path):
        _check_nifti(path, image)
    return image


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


# numpy dtype of each scalar SimpleITK pixel type (what GetArrayFromImage gives)
_NUMPY_OF_PIXEL = {
    sitk.sitkUInt8: np.uint8, sitk.sitkInt8: np.int8, sitk.sitkUInt16: np.uint16, sitk.sitkInt16: np.int16,
    sitk.sitkUInt32: np.uint32, sitk.sitkInt32: np.int32, sitk.sitkUInt64: np.uint64, sitk.sitkInt64: np.int64,
    sitk.sitkFloat32: np.float32, sitk.sitkFloat64: np.float64,
}


def _read_info(path: Path) -> sitk.ImageFileReader:
    """A reader that has read the header of an image file (no voxels)."""
    if not path.exists():
        raise SynBTError(f"file not found: {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise SynBTError(f"cannot read {path} (unreadable or truncated file): {_reason(exc)}") from exc
    return reader


def _read_nifti_once(path: Path, reader: sitk.ImageFileReader) -> np.ndarray | None:
    """The (Z, Y, X) voxels of a scalar 3D NIfTI file decoded once, or None when ITK must read it.

    Reading through ITK and then checking what its reader hides (_check_nifti) decoded a gzipped
    file three times (512 x 512 x 160 float32: 3.8 s of CPU per phase, of which 0.9 s is ITK's own
    decode). Here the file is decompressed once, a truncated or corrupt stream is refused, and the
    raw voxels are returned exactly as ITK would give them: ITK neither reorders NIfTI voxels nor
    changes unscaled values, and the geometry still comes from ITK's header reading. Scaled values
    (scl_slope/scl_inter), other dimensions and pixel types go through ITK (None)."""
    import nibabel

    dtype = _NUMPY_OF_PIXEL.get(reader.GetPixelID())
    if dtype is None or reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        return None
    try:
        proxy = nibabel.load(str(path)).dataobj
        stored, shape, offset = np.dtype(proxy.dtype), tuple(proxy.shape), int(proxy.offset)
        unscaled = float(proxy.slope) == 1.0 and float(proxy.inter) == 0.0 and proxy.order == "F"
    except Exception:  # nibabel cannot parse what ITK could: leave it to ITK
        return None
    if not unscaled or stored.newbyteorder("=") != np.dtype(dtype) or shape[:3] != tuple(reader.GetSize()) \
            or any(n != 1 for n in shape[3:]):
        return None
    try:
        data = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            data = _CODEC.decompress(data)
    except _CODEC.errors as exc:
        raise SynBTError(f"cannot read {path} (truncated or corrupt file: {exc})") from exc
    count = int(np.prod(reader.GetSize()))
    if len(data) < offset + count * stored.itemsize:
        raise SynBTError(f"cannot read {path} (truncated file: the voxel data ends early)")
    array = np.frombuffer(data, stored, count, offset).reshape(tuple(reader.GetSize())[::-1])
    return array if stored.isnative else array.astype(dtype)


def _read_volume(path: Path) -> tuple[np.ndarray, Geometry]:
    """One 3D volume (file or DICOM series folder) as a (Z, Y, X) array and its Geometry.

    The array may be read-only (a view on the decoded file); non-finite values are not checked here.
    4D and non-scalar images are refused."""
    if path.is_file() and _is_nifti(path):
        reader = _read_info(path)
        if reader.GetDimension() == 4:
            raise SynBTError(f"{path} is 4D; pass a 4D file on its own, not in a list of phase files")
        array = _read_nifti_once(path, reader)
        if array is not None:
            if min(reader.GetSize()) < 2:
                raise SynBTError(f"{path} is not a 3D volume (size {'x'.join(map(str, reader.GetSize()))})")
            return array, Geometry(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    image = _read_sitk(path)
    if image.GetDimension() == 4:
        raise SynBTError(f"{path} is 4D; pass a 4D file on its own, not in a list of phase files")
    _check_3d(image, path)
    return sitk.GetArrayFromImage(image), geometry_of(image)


def _check_slice_positions(folder: Path, files: Sequence[str], tolerance: float = 0.1) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced along their normal.

    ITK builds the grid from the slices it has and only warns, so a missing slice would give a
    volume with the wrong spacing and misplaced slices. Steps that differ from the median step by
    more than `tolerance` of it are refused, naming the two files around the gap.
    """
    if len(files) < 3:
        return
    positions, normal = [], None
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if not (reader.HasMetaDataKey("0020|0032") and reader.HasMetaDataKey("0020|0037")):
            return  # no per-slice position (e.g. multi-frame): nothing to check here
        if normal is None:
            cosines = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
            normal = np.cross(cosines[:3], cosines[3:6])
        position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        positions.append(float(position @ normal))
    steps = np.diff(positions)
    typical = float(np.median(np.abs(steps)))
    for k, step in enumerate(steps):
        if typical == 0 or abs(abs(step) - typical) > tolerance * typical:
            kind = "slices missing" if abs(step) > typical else "duplicate or overlapping slices"
            raise SynBTError(
                f"DICOM series in {folder} has uneven slice positions ({kind}): {Path(files[k]).name} and "
                f"{Path(files[k + 1]).name} are {abs(step):.3g} mm apart where the slices are {typical:.3g} mm apart"
            )


NIFTI1_HEADER_BYTES = 348  # the smallest NIfTI header: the voxels of a complete file start after it


def _check_nifti(path: Path, image: sitk.Image | None = None) -> None:
    """Refuse what ITK's NIfTI reader hides: a truncated file (missing voxels become zeros) and
    NaN/Inf voxels (niftilib turns non-finite floats into 0, so no check on the array sees them)."""
    import gzip

    import nibabel

    try:
        nifti = nibabel.load(str(path))
        header = nifti.header
        expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    except Exception:  # nibabel cannot parse it; ITK can read a cut header and gives zeros for the rest
        if image is None:
            return
        header, expected = None, NIFTI1_HEADER_BYTES + image.GetNumberOfPixels() * image.GetSizeOfPixelComponent() \
            * image.GetNumberOfComponentsPerPixel()
    if path.name.lower().endswith(".gz"):
        actual = 0
        try:
            with gzip.open(path) as stream:
                while block := stream.read(1 << 22):
                    actual += len(block)
        except (EOFError, OSError, gzip.BadGzipFile):
            actual = -1
    else:
        actual = path.stat().st_size
    if actual < expected:
        raise SynBTError(f"cannot read {path} (truncated file: the voxel data ends early)")
    if header is None:
        return
    if np.issubdtype(header.get_data_dtype(), np.floating):
        check_finite(nifti.dataobj.get_unscaled(), str(path))  # raw values, no float64 copy


def _check_3d(image: sitk.Image, path: Path) -> None:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SynBTError(f"{path} is not a scalar image ({image.GetNumberOfComponentsPerPixel()} components per voxel)")
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise SynBTError(f"{path} is not a 3D volume (size {'x'.join(map(str, image.GetSize()))})")


def _split_4d(image: sitk.Image) -> list[sitk.Image]:
    size = list(image.GetSize())
    return [
        sitk.Extract(image, size[:3] + [0], [0, 0, 0, k], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
        for k in range(size[3])
    ]


def read_image(path: PathLike) -> tuple[np.ndarray, Geometry]:
    """One 3D volume (file or DICOM series folder) as a (Z, Y, X) array and its Geometry."""
    path = Path(path)
    array, geometry = _read_volume(path)
    if np.issubdtype(array.dtype, np.floating):
        check_finite(array, str(path))
    return np.array(array), geometry  # a writable copy the caller owns


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class _Source:
    """One phase of a case, not yet read: its name, and how to read it as (array, Geometry)."""

    name: str
    read: Callable[[], tuple[np.ndarray, Geometry]]
    path: Path  # the file (or DICOM folder) it is stored in


def _phase_sources(paths: PathLike | Sequence[PathLike]) -> tuple[list[_Source], Path | None]:
    """The phases of a case (not read yet, except a 4D file) and the case folder (if one was given)."""
    if isinstance(paths, (str, os.PathLike)):
        path = Path(paths)
        if path.is_dir():
            files = find_phase_files(path)
            if files:
                return _phase_sources(files)[0], path
            image = _read_sitk(path)  # a DICOM folder: one 3D volume
        else:
            image = _read_sitk(path) if _read_info(path).GetDimension() == 4 else None
        if image is not None and image.GetDimension() == 4:
            sources = []
            for k, phase in enumerate(_split_4d(image)):
                _check_3d(phase, path)
                array = sitk.GetArrayFromImage(phase)
                sources.append(_Source(f"{strip_image_extension(path.name)}[{k}]",
                                       lambda a=array, g=geometry_of(phase): (a, g), path))
            return sources, None
        _read_volume(path)  # refused when it is not a 3D volume either
        raise SynBTError(
            f"{path} holds one 3D volume; a DCE-MRI case needs at least two phases "
            "(pass several phase files, a case folder or a 4D NIfTI)"
        )
    sources = []
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise SynBTError(f"file not found: {path}")
        sources.append(_Source(strip_image_extension(path.name), lambda p=path: _read_volume(p), path))
    return sources, None


def _read_all(sources: Sequence[_Source]):
    """(array, Geometry) of each source in order, read in threads: decoding (zlib, ITK) releases the
    GIL, so the phases decode in parallel. The first failing source (in order) raises."""
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(len(sources), os.cpu_count() or 1))
    if workers == 1:
        yield from (source.read() for source in sources)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(source.read) for source in sources]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _stored_format(sources: Sequence[_Source], dtypes) -> StoredFormat:
    """The file type and voxel type a case's outputs keep (see case.StoredFormat)."""
    name = sources[0].path.name.lower()
    extension = next((ext for ext in StoredFormat.EXTENSIONS if name.endswith(ext)), None)
    if extension is None:
        extension = ".mha" if name.endswith(".mhd") else ".nii.gz"  # DICOM folders, MetaImage header + raw
    dtype = np.result_type(*dtypes)
    if not np.issubdtype(dtype, np.integer):
        dtype = np.dtype(np.float32)
    return StoredFormat(extension, dtype.name)


def _phase_names_from_json(folder: Path | None, count: int) -> list[str] | None:
    import json

    meta_file = folder / "case.json" if folder else None
    if not meta_file or not meta_file.is_file():
        return None
    try:
        names = json.loads(meta_file.read_text()).get("phase_names")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and len(names) == count else None


def read_case(paths: PathLike | Sequence[PathLike], resample: bool = False,
              select: Callable[[list[str]], Sequence[int]] | None = None) -> Case:
    """A Case from a list of phase files/DICOM folders, a case folder, or a 4D NIfTI.

    Phases on different grids are refused unless resample=True, which resamples them (linear)
    onto the grid of the first phase. NaN/Inf voxels are refused. ``select``, given the names of
    all the phases found, returns the indices of those to read (in time order); only those are
    read. The case records how its phases were stored (Case.stored) so outputs can keep it.
    """
    sources, folder = _phase_sources(paths)
    names = _phase_names_from_json(folder, len(sources)) or [source.name for source in sources]
    if select is not None:
        picked = [int(k) for k in select(list(names))]
        sources, names = [sources[k] for k in picked], [names[k] for k in picked]
    if len(sources) < 2:
        raise SynBTError(f"a DCE-MRI case needs at least two phases, got {len(sources)} from {paths}")
    parents = {folder} if folder else {Path(p).parent for p in ([] if isinstance(paths, (str, os.PathLike)) else paths)}
    where = f" of {parents.pop()}" if len(parents) == 1 else ""  # for the messages
    phases = ref_geometry = None
    dtypes = []
    for k, ((array, geometry), source) in enumerate(zip(_read_all(sources), sources)):
        dtypes.append(array.dtype)
        if phases is None:
            ref_geometry = geometry
            phases = np.empty((len(sources), *geometry.shape), dtype=np.float32)
        elif not geometry.matches(ref_geometry):
            if not resample:
                raise SynBTError(
                    f"phases{where} are on different grids: {sources[0].name} is {ref_geometry.describe()} but "
                    f"{source.name} is {geometry.describe()}; resample onto the first phase with --resample"
                )
            array = resample_to(array, geometry, ref_geometry)
        phases[k] = array  # cast to float32 in place: no second copy of the case
        del array
        check_finite(phases[k], f"phase {source.name} ({source.path})")  # the file, to fix or mask
    return Case(phases=phases, geometry=ref_geometry, phase_names=list(names),
                stored=_stored_format(sources, dtypes))


# ---------------------------------------------------------------- resampling and masks


def resample_to(
    array: np.ndarray, source_geometry: Geometry, target_geometry: Geometry, nearest: bool = False
) -> np.ndarray:
    """Resample a (Z, Y, X) or (C, Z, Y, X) array onto another grid (linear -> float32, or nearest -> same dtype)."""
    if array.ndim == 4:
        return np.stack([resample_to(a, source_geometry, target_geometry, nearest) for a in array])
    reference = to_sitk(np.zeros(target_geometry.shape, dtype=np.uint8), target_geometry)
    image = to_sitk(array, source_geometry)
    if nearest:
        out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
        return sitk.GetArrayFromImage(out)
    out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _is_segmentation_nrrd(path: Path) -> bool:
    if not path.name.lower().endswith(".nrrd") or not path.is_file():
        return False
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except (nrrd.NRRDError, OSError, UnicodeDecodeError, ValueError):
        return False
    return any(key.startswith("Segment0_") for key in header)


def _read_segment(path: Path, segment: str | None) -> tuple[np.ndarray, Geometry]:
    """One segment of a Slicer .seg.nrrd as a (Z, Y, X) uint8 array on the segmentation's own grid."""
    import slicerio

    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:  # pynrrd/slicerio raise many types for broken files
        raise SynBTError(f"cannot read segmentation {path}: {exc}") from exc
    names = slicerio.segment_names(segmentation)
    if segment is None:
        if len(names) != 1:
            raise SynBTError(f"{path} holds {len(names)} segments; choose one with --segment (available: {', '.join(names)})")
        segment = names[0]
    if segment not in names:
        raise SynBTError(f"segment '{segment}' not found in {path}; available segments: {', '.join(names) or 'none'}")
    mask_ijk = slicerio.segment_mask(segmentation, segment)  # axes (i, j, k) = (x, y, z)
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=np.float64)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing
    geometry = Geometry(mask_ijk.shape, spacing, ijk_to_lps[:3, 3], direction.ravel())
    return np.ascontiguousarray(mask_ijk.transpose(2, 1, 0)).astype(np.uint8), geometry


def _place_on_lattice(mask: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray | None:
    """Paste a mask whose grid is a shifted sub/super-extent of the target lattice; None if the lattices differ."""
    if not (
        np.allclose(source.spacing, target.spacing, rtol=1e-4)
        and np.allclose(source.direction, target.direction, atol=1e-4)
    ):
        return None
    offset = target.physical_to_index(np.asarray(source.origin))  # (x, y, z) voxels
    if not np.allclose(offset, np.round(offset), atol=1e-3):
        return None
    offset_zyx = np.round(offset).astype(int)[::-1]
    out = np.zeros(target.shape, dtype=np.uint8)
    dst_lo = np.maximum(offset_zyx, 0)
    dst_hi = np.minimum(offset_zyx + np.asarray(mask.shape), target.shape)
    if np.any(dst_hi <= dst_lo):
        return out
    src_lo, src_hi = dst_lo - offset_zyx, dst_hi - offset_zyx
    out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))] = mask[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    return out


def read_mask(
    path: PathLike,
    geometry: Geometry,
    segment: str | None = None,
    resample: bool = False,
    label: int | None = None,
) -> np.ndarray:
    """A binary uint8 (Z, Y, X) mask on `geometry` from a label image or a Slicer .seg.nrrd.

    Label image: any nonzero voxel, or voxels equal to `label`. Segmentation: the segment named
    `segment` (needed when there are several); its extent may be smaller than the grid. A mask on
    another grid is refused unless resample=True (nearest neighbour). An empty mask is refused.
    """
    path = Path(path)
    what = f"mask {path}" + (f" (segment '{segment}')" if segment else "")
    if _is_segmentation_nrrd(path):
        mask, source = _read_segment(path, segment)
        placed = _place_on_lattice(mask, source, geometry)
    else:
        if segment is not None:
            raise SynBTError(f"{path} is a label image, not a Slicer .seg.nrrd; --segment '{segment}' does not apply")
        values, source = read_image(path)
        check_finite(values, what)
        mask = (values != 0) if label is None else (values == label)
        mask = mask.astype(np.uint8)
        placed = mask if source.matches(geometry) else None
    if placed is None:
        if not resample:
            raise SynBTError(
                f"{what} is on grid {source.describe()} but the case is on {geometry.describe()}; "
                "resample it with --resample-mask"
            )
        placed = resample_to(mask, source, geometry, nearest=True).astype(np.uint8)
    if not placed.any():
        detail = f" for label {label}" if label is not None else ""
        raise SynBTError(f"{what} is empty{detail} on the case grid")
    return placed


# ---------------------------------------------------------------- writing


def _temp_path(path: Path, suffix: str = "") -> Path:
    # ends with the real name so SimpleITK picks the same writer (.nii.gz, .nrrd, ...)
    return path.parent / f".tmp-{uuid.uuid4().hex[:8]}-{path.name}{suffix}"


@dataclass(frozen=True)
class _Codec:
    """A gzip implementation: ``compressobj(floating)`` (a streaming gzip-framed compressor) and
    ``decompress(data)`` (every member of a gzip file, CRC checked); ``errors`` is what a corrupt or
    truncated stream raises. Both release the GIL while they work, so phases run in parallel threads."""

    name: str
    compressobj: Callable
    decompress: Callable[[bytes], bytes]
    errors: tuple


def _zlib_codec() -> _Codec:
    """The standard library's zlib at level 1; floating-point voxels with Huffman coding only.

    ITK's NIfTI writer compresses at a fixed level whatever compressionLevel says (measured: the same
    143 MB and 5-6 s of CPU at levels 1, 3 and 6 for a 512 x 512 x 160 float32 phase). Float voxels
    have few repeated strings, so skipping the string matching (Z_HUFFMAN_ONLY) gives the same size in
    a third of the time (2.0 s, 143.8 MB); integer voxels (labels, int16 scans) keep level 1's
    matching, which is what compresses their background."""
    import gzip
    import zlib

    def compressobj(floating: bool):
        return zlib.compressobj(1, zlib.DEFLATED, 31, 9, zlib.Z_HUFFMAN_ONLY if floating else zlib.Z_DEFAULT_STRATEGY)

    return _Codec("zlib", compressobj, gzip.decompress, (EOFError, OSError, zlib.error))


def _isal_codec() -> _Codec | None:
    """ISA-L's deflate (the optional `isal` package), the same gzip streams several times faster:
    512 x 512 x 160 float32, per phase, 0.5 s of CPU to compress at level 1 (zlib, Huffman only:
    2.0-2.7 s; same 143.9 MB) and 0.6 s to decompress (zlib: 1.1 s); int16 0.34 s (zlib 1.4 s)."""
    try:
        from isal import igzip, isal_zlib
    except ImportError:
        return None

    def compressobj(floating: bool):
        return isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)

    return _Codec("isal", compressobj, igzip.decompress, (EOFError, OSError, ValueError, isal_zlib.error))


_CODEC = _isal_codec() or _zlib_codec()


def _gzip_file(source: Path, target: Path, floating: bool, chunk: int = 1 << 24) -> None:
    """gzip `source` into `target` (one standard gzip member: every NIfTI reader decodes it)."""
    compressor = _CODEC.compressobj(floating)
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while block := reader.read(chunk):
            writer.write(compressor.compress(block))
        writer.write(compressor.flush())


def _atomic_write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp, raw = _temp_path(path), None
    try:
        if path.name.lower().endswith(".nii.gz"):
            # ITK writes the NIfTI (its own header, exactly as before) uncompressed; zlib compresses it
            raw = _temp_path(path.with_name(path.name[:-3]))
            sitk.WriteImage(image, str(raw), useCompression=False)
            floating = image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64)
            try:
                _gzip_file(raw, temp, floating)
            except OSError as exc:
                raise SynBTError(f"cannot write {path}: {exc}") from exc
        else:
            sitk.WriteImage(image, str(temp), useCompression=True, compressionLevel=1)
        os.replace(temp, path)
    except RuntimeError as exc:
        raise SynBTError(f"cannot write {path}: {_reason(exc)}") from exc
    finally:
        temp.unlink(missing_ok=True)
        if raw is not None:
            raw.unlink(missing_ok=True)
    return path


def write_image(array_zyx: np.ndarray, geometry: Geometry, path: PathLike) -> Path:
    """Write a (Z, Y, X) array on `geometry` (float64 is stored as float32, bool as uint8).

    .nii.gz is gzip level 1 (_CODEC: ISA-L when the `isal` package is installed, else zlib); .nrrd and
    .mha are compressed by ITK, .nii is not."""
    array = np.asarray(array_zyx)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    elif array.dtype == bool:
        array = array.astype(np.uint8)
    return _atomic_write(to_sitk(array, geometry), Path(path))


def write_label(mask_zyx: np.ndarray, geometry: Geometry, path: PathLike) -> Path:
    """Write a label map as uint8 (values must lie in 0..255)."""
    mask = np.asarray(mask_zyx)
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if mask.size and mask.dtype != np.uint8 and (
            mask.min() < 0 or mask.max() > 255
            or (np.issubdtype(mask.dtype, np.inexact) and not np.array_equal(mask, np.round(mask)))):
        raise SynBTError(f"label map for {path} must hold integers in 0..255")
    return _atomic_write(to_sitk(mask.astype(np.uint8), geometry), Path(path))


def phase_paths(out_dir: PathLike, count: int, stored: StoredFormat | None = None) -> list[Path]:
    """out_dir/phase_<k><extension> for k < count, in the stored format's extension (default .nii.gz)."""
    extension = (stored or StoredFormat()).extension
    return [Path(out_dir) / f"phase_{k}{extension}" for k in range(count)]


def submit_case(pool, case: Case, out_dir: PathLike, stored: StoredFormat | None = None) -> list:
    """Futures writing a case's phases as out_dir/phase_<k> (see write_case) on a thread pool."""
    stored = stored or StoredFormat()
    paths = phase_paths(out_dir, case.num_phases, stored)
    return [pool.submit(lambda k=k: write_image(stored.cast(case.phases[k]), case.geometry, paths[k]))
            for k in range(len(paths))]


def write_case(case: Case, out_dir: PathLike, stored: StoredFormat | None = None) -> list[Path]:
    """Write a case's phases as out_dir/phase_<k>.nii.gz (or in `stored`'s file and voxel type);
    returns the written paths.

    The phases are written in parallel threads: compression dominates and both ITK and zlib release
    the GIL while they work (3 phases of 512 x 512 x 160: 14.6 s one after another, 7.7 s in threads
    on 2 cores with ITK's compression)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(case.num_phases, os.cpu_count() or 1))) as pool:
        return [future.result() for future in submit_case(pool, case, out_dir, stored)]


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(out: PathLike, overwrite: bool = False, inputs: Iterable[PathLike] = ()) -> Path:
    """The resolved output folder, checked that writing there cannot overwrite any input (created by nobody).

    Refused: an output that is an input, that contains an input (e.g. an input file's own folder),
    or that lies inside an input folder; an existing file; an existing non-empty folder unless
    overwrite (--overwrite).
    """
    out = Path(out).expanduser().resolve()
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if _is_within(source, out):
            raise SynBTError(f"output folder {out} is or contains the input {source}; choose another output folder")
        if source.is_dir() and _is_within(out, source):
            raise SynBTError(f"output folder {out} is inside the input folder {source}; choose another output folder")
    if out.exists() and not out.is_dir():
        raise SynBTError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SynBTError(f"output folder {out} exists and is not empty; pass --overwrite to write into it")
    return out


def prepare_output_dir(out: PathLike, overwrite: bool = False, inputs: Iterable[PathLike] = ()) -> Path:
    """Create (or accept) an output folder that cannot overwrite any input (see check_output_dir).

    With overwrite, existing files are replaced only where new files have the same name.
    """
    out = check_output_dir(out, overwrite, inputs)
    out.mkdir(parents=True, exist_ok=True)
    return out
