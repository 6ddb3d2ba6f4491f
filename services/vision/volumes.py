"""Studies in and out: NIfTI files, ZIPs of a DICOM series, and bare voxels, checked before they cost memory.

Every reader returns a Volume: float32 voxels in the file's own order [i, j, k] and the 4x4 affine that maps
a voxel index to RAS+ millimetres (nibabel's convention), so a NIfTI file and a DICOM series of the same
scan give equal Volumes. Sizes are read from headers and checked against VolumeLimits before anything large
is allocated or decompressed (decompression bombs, declared sizes far beyond the limit). Every problem is an
InvalidArgument naming the field: "chunk.data" for the bytes of a file, "header.raw.<name>" for the geometry
of bare voxels.
"""

from __future__ import annotations

import gzip
import io
import math
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from services.runtime.errors import InvalidArgument

DATA = "chunk.data"
RAW = "header.raw"
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# The smallest volume a 3D model can use: at least this many voxels along every axis.
MIN_SIDE = 2
# DICOM slices may be spaced this unevenly (relative to the mean gap) and still make one volume.
SLICE_GAP_TOLERANCE = 0.01
# Two slices share an orientation when their direction cosines differ by less than this.
ORIENTATION_TOLERANCE = 1e-4
MAX_ZIP_MEMBERS = 65536
NIFTI2_HEADER_BYTES = 540
INFLATE_CHUNK = 2**20
RAW_DTYPES = tuple(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "int32", "float32", "float64"))
# Direction in RAS+ of each axis code letter.
AXIS_DIRECTIONS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
# DICOM's patient frame is LPS+: x and y point the other way from RAS+.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class VolumeLimits:
    max_bytes: int = 512 * 2**20      # encoded size, and the size after gunzip (decompression bombs)
    max_voxels: int = 512 * 512 * 1024

    def check_bytes(self, size: int, what: str) -> None:
        if size > self.max_bytes:
            raise InvalidArgument((DATA, f"{what} is {size} bytes, over the limit of {self.max_bytes}"))

    def check_shape(self, shape: tuple[int, ...], field: str) -> None:
        voxels = math.prod(shape)
        if voxels > self.max_voxels:
            raise InvalidArgument((field, f"{' x '.join(map(str, shape))} = {voxels} voxels exceed the limit of "
                                          f"{self.max_voxels}"))


@dataclass(frozen=True)
class Volume:
    voxels: np.ndarray    # float32 [i, j, k], the file's own voxel order
    affine: np.ndarray    # float64 4x4, voxel index -> RAS+ millimetres (nibabel's convention)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))


# --- NIfTI ---------------------------------------------------------------------------------------------------

def read_nifti(data: bytes, limits: VolumeLimits) -> Volume:
    """A .nii or .nii.gz file (NIfTI-1 or NIfTI-2, one file with its data) → Volume."""
    if not data:
        raise InvalidArgument((DATA, "empty: no NIfTI bytes"))
    limits.check_bytes(len(data), "the file")
    # A .nii.gz is inflated as far as its header first: the size it declares is checked before the rest is.
    stream = Gunzip(data, limits.max_bytes) if data.startswith(GZIP_MAGIC) else None
    if stream is not None:
        data = stream.read(NIFTI2_HEADER_BYTES)
    header = nifti_header(data)
    shape = volume_shape(header.get_data_shape())
    limits.check_shape(shape, DATA)
    dtype = header.get_data_dtype()
    if dtype.kind not in "uif":
        raise InvalidArgument((DATA, f"NIfTI voxels of type {dtype} are not intensities: a volume needs integer "
                                     "or floating-point voxels"))
    offset = int(header["vox_offset"])
    if offset < header.sizeof_hdr:
        raise InvalidArgument((DATA, f"corrupt NIfTI header: the voxels would start at byte {offset}, inside the "
                                     "header"))
    size = math.prod(shape) * dtype.itemsize
    limits.check_bytes(offset + size, "the image its header declares")
    if stream is not None:
        data += stream.read(offset + size - len(data))
        stream.finish()
    if len(data) < offset + size:
        raise InvalidArgument((DATA, f"truncated NIfTI: its header declares {' x '.join(map(str, shape))} voxels "
                                     f"of {dtype} ({offset + size} bytes with the header), but the file has "
                                     f"{len(data)}"))
    voxels = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape, order="F")
    slope, intercept = header.get_slope_inter()
    voxels = scaled(voxels, slope, intercept)
    return checked(voxels, header.get_best_affine(), zooms=header["pixdim"][1:4], field=DATA)


class Gunzip:
    """A gzip stream inflated on demand, never past `limit` bytes of output (decompression bombs)."""

    def __init__(self, data: bytes, limit: int):
        self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._pending = data
        self._limit = limit
        self._produced = 0

    def read(self, size: int) -> bytes:
        """Up to `size` more bytes; fewer only where the stream ends."""
        parts = []
        while size > 0 and not self._inflater.eof:
            try:
                chunk = self._inflater.decompress(self._pending, min(size, INFLATE_CHUNK))
            except zlib.error as error:
                raise InvalidArgument((DATA, f"corrupt gzip stream: {error}")) from None
            self._pending = self._inflater.unconsumed_tail
            if not chunk and not self._pending:
                break
            parts.append(chunk)
            size -= len(chunk)
            self._produced += len(chunk)
            if self._produced > self._limit:
                raise InvalidArgument((DATA, f"decompresses to more than the limit of {self._limit} bytes"))
        return b"".join(parts)

    def finish(self) -> None:
        """Inflate and drop whatever follows, so a corrupt or truncated stream is refused (its checksum too)."""
        while not self._inflater.eof and self.read(INFLATE_CHUNK):
            pass
        if not self._inflater.eof:
            raise InvalidArgument((DATA, "truncated gzip stream: the file ends before the compressed data does"))


def nifti_header(data: bytes) -> nib.Nifti1Header:
    kinds = {348: nib.Nifti1Header, NIFTI2_HEADER_BYTES: nib.Nifti2Header}
    size = int.from_bytes(data[:4], "little") if len(data) >= 4 else 0
    size = size if size in kinds else int.from_bytes(data[:4], "big")
    kind = kinds.get(size)
    if kind is None or len(data) < size:
        raise InvalidArgument((DATA, "not a NIfTI file: the first bytes are not a NIfTI-1 or NIfTI-2 header"))
    # Unchecked: nibabel's checks would "fix" zero or negative pixdim silently; the readers check it.
    header = kind.from_fileobj(io.BytesIO(data[:size]), check=False)
    magic = header["magic"].item()
    if magic in (b"ni1", b"ni2"):
        raise InvalidArgument((DATA, "a NIfTI header without its voxels (a .hdr/.img pair): send one .nii file"))
    if magic not in (b"n+1", b"n+2"):
        raise InvalidArgument((DATA, f"corrupt NIfTI header: magic {magic!r} is not n+1 or n+2"))
    try:
        header.get_data_dtype()
    except (nib.spatialimages.HeaderDataError, KeyError):
        raise InvalidArgument((DATA, f"corrupt NIfTI header: unknown data type code {int(header['datatype'])}"))
    return header


def volume_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The three spatial sizes, refusing 2D images and series of several volumes."""
    if len(shape) < 3:
        raise InvalidArgument((DATA, f"a {len(shape)}-D image of shape {tuple(shape)}: a 3-D volume is needed"))
    if any(n != 1 for n in shape[3:]):
        raise InvalidArgument((DATA, f"shape {tuple(shape)}: {math.prod(shape[3:])} volumes (a time series); "
                                     "send one 3-D volume"))
    spatial = tuple(int(n) for n in shape[:3])
    if min(spatial) < MIN_SIDE:
        raise InvalidArgument((DATA, f"shape {spatial}: a 2-D image or a single slice; a volume needs at least "
                                     f"{MIN_SIDE} voxels along each axis"))
    return spatial


def scaled(voxels: np.ndarray, slope, intercept) -> np.ndarray:
    out = voxels.astype(np.float32)
    if slope is not None and slope != 1:
        out *= np.float32(slope)
    if intercept:
        out += np.float32(intercept)
    return out


def nifti_bytes(voxels: np.ndarray, affine: np.ndarray, compress: bool = True) -> bytes:
    """A NIfTI-1 file of these voxels (their own dtype: uint8 for labels) and affine; gzip-compressed if asked."""
    voxels = np.asarray(voxels)
    if voxels.dtype == bool:
        voxels = voxels.astype(np.uint8)
    image = nib.Nifti1Image(voxels, np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    data = image.to_bytes()
    # mtime 0: the same volume gives the same bytes.
    return gzip.compress(data, compresslevel=6, mtime=0) if compress else data


# --- bare voxels -------------------------------------------------------------------------------------------------

def read_raw(data: bytes, dtype: np.dtype, shape, spacing_mm, orientation: str = "RAS",
             origin_mm=(0.0, 0.0, 0.0), limits: VolumeLimits = VolumeLimits()) -> Volume:
    """Bare little-endian voxels in C order (k fastest) with their geometry → Volume.

    origin_mm is the first voxel's centre in the patient frame the orientation's letters name, x, y, z in
    that order: for "LPS" it is DICOM's ImagePositionPatient, for "RAS" NIfTI's. Empty means 0, 0, 0.
    """
    dtype = raw_dtype(dtype)
    shape = raw_shape(shape, limits)
    spacing = three_numbers(spacing_mm, f"{RAW}.spacing_mm", positive=True)
    axes = axis_codes(orientation or "RAS", f"{RAW}.orientation")
    origin = three_numbers(origin_mm, f"{RAW}.origin_mm") if len(origin_mm) else (0.0, 0.0, 0.0)
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise InvalidArgument((DATA, f"{len(data)} bytes of voxels, but shape {' x '.join(map(str, shape))} of "
                                     f"{dtype} needs {expected}"))
    voxels = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape).astype(np.float32)
    return checked(voxels, axes_affine(axes, spacing, origin), zooms=spacing, field=DATA)


def raw_dtype(dtype) -> np.dtype:
    try:
        dtype = np.dtype(dtype) if dtype is not None else None
    except TypeError:
        dtype = None
    if dtype is None or dtype not in RAW_DTYPES:
        raise InvalidArgument((f"{RAW}.dtype", f"{dtype}: voxels must be one of "
                                               f"{', '.join(str(t) for t in RAW_DTYPES)}"))
    return dtype


def raw_shape(shape, limits: VolumeLimits) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise InvalidArgument((f"{RAW}.shape", f"{len(shape)} sizes {shape}: a volume has three, [i, j, k]"))
    if min(shape) < MIN_SIDE:
        raise InvalidArgument((f"{RAW}.shape", f"{shape}: a 2-D image or a single slice; a volume needs at least "
                                               f"{MIN_SIDE} voxels along each axis"))
    limits.check_shape(shape, f"{RAW}.shape")
    return shape


def three_numbers(values, field: str, positive: bool = False) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise InvalidArgument((field, f"{len(values)} numbers {values}: three are needed, for i, j and k"))
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgument((field, f"{values}: every number must be finite"))
    if positive and min(values) <= 0:
        raise InvalidArgument((field, f"{values}: spacing must be positive millimetres"))
    return values


def axis_codes(orientation: str, field: str) -> str:
    codes = orientation.upper()
    if len(codes) != 3 or any(c not in AXIS_DIRECTIONS for c in codes) \
            or sorted(AXIS_DIRECTIONS[c][0] for c in codes) != [0, 1, 2]:
        raise InvalidArgument((field, f"{orientation!r}: three axis codes are needed, one each of R or L, A or P, "
                                      "S or I (e.g. RAS or LPS)"))
    return codes


def axes_affine(axes: str, spacing: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    """The voxel → RAS+ affine of axis codes, spacing and an origin given in the codes' own patient frame."""
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    signs = np.ones(3)
    for column, code in enumerate(axes):
        row, sign = AXIS_DIRECTIONS[code]
        affine[row, column] = sign * spacing[column]
        signs[row] = sign
    affine[:3, 3] = signs * np.asarray(origin)
    return affine


# --- checks every reader shares ------------------------------------------------------------------------------

def checked(voxels: np.ndarray, affine: np.ndarray, zooms, field: str) -> Volume:
    """Refuse non-positive or non-finite spacing, a degenerate affine and NaN or infinite voxels."""
    zooms = tuple(float(z) for z in zooms)
    if not all(math.isfinite(z) and z > 0 for z in zooms):
        raise InvalidArgument((field, f"voxel spacing {zooms} mm: every spacing must be positive and finite"))
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InvalidArgument((field, "the voxel-to-patient transform (affine) is not finite or is degenerate"))
    finite = np.isfinite(voxels)
    if not finite.all():
        raise InvalidArgument((field, f"{int(voxels.size - finite.sum())} voxels are NaN or infinite"))
    return Volume(voxels=np.ascontiguousarray(voxels, dtype=np.float32), affine=affine)


# --- DICOM ---------------------------------------------------------------------------------------------------

def read_dicom_zip(data: bytes, limits: VolumeLimits) -> Volume:
    """A ZIP of one DICOM series, one slice per file, any folder layout → Volume (usually "LPS" axes)."""
    slices = sorted_slices([read_slice(name, blob) for name, blob in zip_members(data, limits)])
    first = slices[0]
    rows, columns = int(first.Rows), int(first.Columns)
    limits.check_shape((columns, rows, len(slices)), DATA)
    voxels = np.empty((columns, rows, len(slices)), dtype=np.float32)
    for k, dataset in enumerate(slices):
        voxels[:, :, k] = slice_pixels(dataset).T   # pixel_array is [row, column]; i runs along a row
    return checked(voxels, series_affine(slices), zooms=series_spacing(slices), field=DATA)


def zip_members(data: bytes, limits: VolumeLimits) -> list[tuple[str, bytes]]:
    """(name, bytes) of the files in a ZIP, sizes checked from its directory before anything is extracted."""
    if not data:
        raise InvalidArgument((DATA, "empty: no ZIP bytes"))
    limits.check_bytes(len(data), "the ZIP")
    if not data.startswith(ZIP_MAGICS):
        raise InvalidArgument((DATA, "not a ZIP archive: send the DICOM series as one ZIP of its files"))
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as error:
        raise InvalidArgument((DATA, f"corrupt ZIP archive: {error}")) from None
    members = [m for m in archive.infolist() if not m.is_dir() and not ignorable(m.filename)]
    if len(members) > MAX_ZIP_MEMBERS:
        raise InvalidArgument((DATA, f"{len(members)} files in the ZIP, over the limit of {MAX_ZIP_MEMBERS}"))
    limits.check_bytes(sum(m.file_size for m in members), "the ZIP's content uncompressed")
    out = []
    for member in members:
        try:
            out.append((member.filename, archive.read(member)))
        except (zipfile.BadZipFile, zlib.error, OSError, NotImplementedError, RuntimeError, EOFError,
                ValueError) as error:   # a damaged archive fails in any of these ways
            raise InvalidArgument((DATA, f"{member.filename}: cannot be extracted ({error})")) from None
    return out


def ignorable(name: str) -> bool:
    """Files archivers and viewers add beside a series: macOS forks, hidden files, the DICOMDIR index."""
    path = PurePosixPath(name)
    return path.parts[0] == "__MACOSX" or path.name.startswith(".") or path.name.upper() == "DICOMDIR"


def read_slice(name: str, blob: bytes) -> Dataset:
    try:
        dataset = pydicom.dcmread(io.BytesIO(blob))
    except InvalidDicomError:
        raise InvalidArgument((DATA, f"{name}: not a DICOM file (no DICM preamble)")) from None
    except Exception as error:  # pydicom raises many kinds on a damaged file
        raise InvalidArgument((DATA, f"{name}: corrupt DICOM file ({error})")) from None
    if "PixelData" not in dataset:
        raise InvalidArgument((DATA, f"{name}: a DICOM file without pixel data"))
    for keyword in ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in dataset or dataset[keyword].value in (None, ""):
            raise InvalidArgument((DATA, f"{name}: a DICOM slice without {keyword}, so it cannot be placed "
                                         "in a volume"))
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) != 1:
        raise InvalidArgument((DATA, f"{name}: a multi-frame DICOM file; send a series of one slice per file"))
    dataset.filename = name
    return dataset


def sorted_slices(slices: list[Dataset]) -> list[Dataset]:
    """One series' slices ordered along their normal, after checking they can make one volume."""
    if len(slices) < 2:
        raise InvalidArgument((DATA, f"{len(slices)} DICOM slice(s): a volume needs at least {MIN_SIDE}"))
    first = slices[0]
    series = {str(getattr(s, "SeriesInstanceUID", "")) for s in slices}
    if len(series) > 1:
        raise InvalidArgument((DATA, f"the ZIP holds {len(series)} DICOM series; send one"))
    for dataset in slices[1:]:
        if (dataset.Rows, dataset.Columns) != (first.Rows, first.Columns):
            raise InvalidArgument((DATA, f"{dataset.filename} is {dataset.Columns} x {dataset.Rows} pixels but "
                                         f"{first.filename} is {first.Columns} x {first.Rows}: slices of one "
                                         "volume share a size"))
        if np.abs(direction_cosines(dataset) - direction_cosines(first)).max() > ORIENTATION_TOLERANCE:
            raise InvalidArgument((DATA, f"{dataset.filename} and {first.filename} have different "
                                         "ImageOrientationPatient: slices of one volume share an orientation"))
        if tuple(map(float, dataset.PixelSpacing)) != tuple(map(float, first.PixelSpacing)):
            raise InvalidArgument((DATA, f"{dataset.filename} and {first.filename} have different PixelSpacing"))
    normal = slice_normal(first)
    return sorted(slices, key=lambda s: float(np.dot(position(s), normal)))


def direction_cosines(dataset: Dataset) -> np.ndarray:
    cosines = np.asarray([float(v) for v in dataset.ImageOrientationPatient], dtype=np.float64)
    if cosines.shape != (6,) or not np.isfinite(cosines).all():
        raise InvalidArgument((DATA, f"{dataset.filename}: ImageOrientationPatient needs six finite numbers"))
    rows, columns = cosines[:3], cosines[3:]
    if abs(np.linalg.norm(rows) - 1) > 1e-3 or abs(np.linalg.norm(columns) - 1) > 1e-3 \
            or abs(np.dot(rows, columns)) > 1e-3:
        raise InvalidArgument((DATA, f"{dataset.filename}: ImageOrientationPatient is not two perpendicular "
                                     "unit vectors"))
    return cosines


def slice_normal(dataset: Dataset) -> np.ndarray:
    cosines = direction_cosines(dataset)
    return np.cross(cosines[:3], cosines[3:])


def position(dataset: Dataset) -> np.ndarray:
    value = np.asarray([float(v) for v in dataset.ImagePositionPatient], dtype=np.float64)
    if value.shape != (3,) or not np.isfinite(value).all():
        raise InvalidArgument((DATA, f"{dataset.filename}: ImagePositionPatient needs three finite numbers"))
    return value


def pixel_spacing(dataset: Dataset) -> tuple[float, float]:
    """(between rows, between columns) in mm, refusing zero, negative or non-finite spacing."""
    spacing = tuple(float(v) for v in dataset.PixelSpacing)
    if len(spacing) != 2 or not all(math.isfinite(v) and v > 0 for v in spacing):
        raise InvalidArgument((DATA, f"{dataset.filename}: PixelSpacing {spacing}: two positive millimetres "
                                     "are needed"))
    return spacing


def slice_step(slices: list[Dataset]) -> np.ndarray:
    """The vector from one slice's position to the next, refusing repeated positions and uneven gaps."""
    positions = np.stack([position(s) for s in slices])
    gaps = np.diff(positions @ slice_normal(slices[0]))
    if gaps.min() <= 0:
        raise InvalidArgument((DATA, "two DICOM slices share a position: the slice gap is zero"))
    if gaps.max() - gaps.min() > SLICE_GAP_TOLERANCE * gaps.mean():
        raise InvalidArgument((DATA, f"uneven gaps between DICOM slices ({gaps.min():.3f} to {gaps.max():.3f} mm):"
                                     " a volume needs evenly spaced slices"))
    return (positions[-1] - positions[0]) / (len(slices) - 1)


def series_spacing(slices: list[Dataset]) -> tuple[float, float, float]:
    between_rows, between_columns = pixel_spacing(slices[0])
    return between_columns, between_rows, float(np.linalg.norm(slice_step(slices)))


def series_affine(slices: list[Dataset]) -> np.ndarray:
    """Voxel [i = column, j = row, k = slice] → RAS+ mm, from DICOM's LPS+ patient frame."""
    first = slices[0]
    cosines = direction_cosines(first)
    between_rows, between_columns = pixel_spacing(first)
    lps = np.eye(4)
    lps[:3, 0] = cosines[:3] * between_columns   # along a row: the next column
    lps[:3, 1] = cosines[3:] * between_rows      # down a column: the next row
    lps[:3, 2] = slice_step(slices)
    lps[:3, 3] = position(first)
    return LPS_TO_RAS @ lps


def slice_pixels(dataset: Dataset) -> np.ndarray:
    """The slice's stored values rescaled (RescaleSlope, RescaleIntercept), as float32 [row, column]."""
    if int(getattr(dataset, "SamplesPerPixel", 1)) != 1:
        raise InvalidArgument((DATA, f"{dataset.filename}: a colour image; a volume needs one sample per pixel"))
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # short pixel data, an unsupported compression ...
        raise InvalidArgument((DATA, f"{dataset.filename}: its pixel data cannot be decoded ({error})")) from None
    if pixels.shape != (dataset.Rows, dataset.Columns):
        raise InvalidArgument((DATA, f"{dataset.filename}: pixel data of shape {pixels.shape}, not "
                                     f"{dataset.Rows} x {dataset.Columns}"))
    slope = float(getattr(dataset, "RescaleSlope", 1) or 1)
    intercept = float(getattr(dataset, "RescaleIntercept", 0) or 0)
    return scaled(pixels, slope, intercept)


def folder_zip_bytes(folder: Path) -> bytes:
    """A folder of DICOM files (a series as scanners and PACS exports leave it) as the ZIP SegmentVolume
    takes: every file under it, stored uncompressed (pixel data barely compresses; this is transport)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"{folder}: no files")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in files:
            archive.write(path, path.relative_to(folder).as_posix())
    return out.getvalue()


def dicom_zip_bytes(volume: Volume, *, series_description: str = "modalmesh synthetic CT",
                    study_instance_uid: str | None = None) -> bytes:
    """A ZIP of a CT series (one Explicit VR Little Endian file per k slice) of the volume, int16 + intercept.

    Readers order slices along the normal of the row and column directions; a volume whose k axis points
    the other way (left-handed axes, e.g. "LPI") reads back as the same image with k reversed.
    """
    stored, slope, intercept = quantised(volume.voxels)
    lps = np.linalg.inv(LPS_TO_RAS) @ volume.affine
    spacing = volume.spacing_mm
    series = {
        "StudyInstanceUID": study_instance_uid or generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "SeriesDescription": series_description,
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for k in range(stored.shape[2]):
            dataset = ct_slice(stored[:, :, k].T, lps, k, spacing, slope, intercept, series)
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            archive.writestr(f"series/IM{k + 1:05d}.dcm", buffer.getvalue())
    return out.getvalue()


def quantised(voxels: np.ndarray) -> tuple[np.ndarray, float, float]:
    """int16 stored values and (slope, intercept): CT's usual intercept -1024 when the values allow it."""
    low, high = float(voxels.min()), float(voxels.max())
    if low >= -1024 and high <= 32767 - 1024:
        slope, intercept = 1.0, -1024.0
    else:
        slope = max(1.0, (high - low) / 65535)
        intercept = low + 32768 * slope
    stored = np.clip(np.rint((voxels - intercept) / slope), -32768, 32767).astype(np.int16)
    return stored, slope, intercept


def ct_slice(pixels: np.ndarray, lps: np.ndarray, k: int, spacing, slope: float, intercept: float,
             series: dict) -> Dataset:
    """One CT Image Storage slice; pixels are [row, column] = [j, i]."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    now = datetime.now(timezone.utc)
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for keyword, value in series.items():
        setattr(dataset, keyword, value)
    dataset.Modality = "CT"
    dataset.PatientName = "Synthetic^Phantom"
    dataset.PatientID = "synthetic"
    dataset.StudyDate = dataset.SeriesDate = now.strftime("%Y%m%d")
    dataset.StudyTime = dataset.SeriesTime = now.strftime("%H%M%S")
    dataset.StudyID = "1"
    dataset.SeriesNumber = 1
    dataset.InstanceNumber = k + 1
    dataset.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    columns_direction, rows_direction = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    dataset.ImageOrientationPatient = [ds_number(v) for v in (*columns_direction, *rows_direction)]
    dataset.ImagePositionPatient = [ds_number(v) for v in lps[:3, :3] @ np.array([0, 0, k]) + lps[:3, 3]]
    dataset.PixelSpacing = [ds_number(spacing[1]), ds_number(spacing[0])]
    dataset.SliceThickness = ds_number(spacing[2])
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    dataset.RescaleIntercept = ds_number(intercept)
    dataset.RescaleSlope = ds_number(slope)
    dataset.RescaleType = "HU"
    dataset.WindowCenter = "40"
    dataset.WindowWidth = "400"
    dataset.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return dataset


def ds_number(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) as exact as it allows."""
    value = float(value)
    for digits in range(12, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.5g}"
