"""Studies in and out: NIfTI, DICOM series and bare voxels give equal Volumes, and bad input is refused clearly."""

from __future__ import annotations

import gzip
import io
import time
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest

from services.runtime.errors import InvalidArgument
from services.vision.volumes import (Volume, VolumeLimits, dicom_zip_bytes, nifti_bytes, read_dicom_zip, read_nifti,
                                     read_raw)

LIMITS = VolumeLimits()
RAS = np.array([[1.5, 0, 0, -40.0], [0, 1.2, 0, 12.5], [0, 0, 2.5, -60.0], [0, 0, 0, 1]])
LPS = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 90.0], [0, 0, 3.0, -200.0], [0, 0, 0, 1]])
# An oblique scan: rows and columns tilted 20 degrees about the patient's z axis.
_c, _s = np.cos(0.35), np.sin(0.35)
OBLIQUE = np.array([[-_c, _s, 0, 10.0], [-_s, -_c, 0, -5.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]]) \
    @ np.diag([1.1, 0.9, 1, 1])


def hounsfield(shape=(24, 20, 12), seed=0) -> np.ndarray:
    """CT-like values: air, tissue and bone, not symmetric along any axis (a flip would show)."""
    rng = np.random.default_rng(seed)
    voxels = rng.normal(40, 30, shape).astype(np.float32)
    voxels[:3] = -1000
    voxels[:, :2, :4] = 900
    return np.rint(voxels)


def refused(call, field: str, words: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        call()
    (violation_field, description), = caught.value.violations
    assert violation_field == field, caught.value.violations
    assert words.lower() in description.lower(), description
    return description


def assert_same_volume(a: Volume, b: Volume, tolerance: float = 0.0):
    assert a.voxels.shape == b.voxels.shape and a.voxels.dtype == np.float32
    np.testing.assert_allclose(a.voxels, b.voxels, atol=tolerance)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)


# --- NIfTI -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True], ids=["nii", "nii.gz"])
@pytest.mark.parametrize("affine", [RAS, LPS, OBLIQUE], ids=["RAS", "LPS", "oblique"])
def test_nifti_round_trip(compress, affine):
    voxels = hounsfield()
    data = nifti_bytes(voxels, affine, compress=compress)
    assert data.startswith(b"\x1f\x8b") == compress
    volume = read_nifti(data, LIMITS)
    assert_same_volume(volume, Volume(voxels, affine))
    assert volume.spacing_mm == pytest.approx(np.linalg.norm(affine[:3, :3], axis=0), abs=1e-5)
    assert volume.orientation == "".join(nib.aff2axcodes(affine))
    # Labels stay uint8 on disk, and the same volume gives the same bytes.
    labels = nifti_bytes((voxels > 0).astype(np.uint8), affine)
    assert nib.Nifti1Image.from_bytes(gzip.decompress(labels)).get_data_dtype() == np.uint8
    assert nifti_bytes(voxels, affine) == nifti_bytes(voxels, affine)


def test_nifti_scaling_nifti2_and_a_single_time_point():
    stored = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = nib.Nifti1Image(stored, RAS)
    image.header.set_slope_inter(2.0, -1000.0)
    assert_same_volume(read_nifti(image.to_bytes(), LIMITS), Volume(stored * 2.0 - 1000, RAS))
    two = nib.Nifti2Image(stored.astype(np.float32), LPS)
    assert_same_volume(read_nifti(two.to_bytes(), LIMITS), Volume(stored.astype(np.float32), LPS))
    one_time_point = nib.Nifti1Image(stored[..., None], RAS)
    assert read_nifti(one_time_point.to_bytes(), LIMITS).voxels.shape == (4, 5, 6)


def test_a_256x256x128_study_reads_in_well_under_a_second():
    voxels = np.random.default_rng(1).normal(0, 300, (256, 256, 128)).astype(np.int16)
    data = nifti_bytes(voxels, LPS)
    assert len(data) > 4 * 2**20
    start = time.perf_counter()
    volume = read_nifti(data, LIMITS)
    assert time.perf_counter() - start < 1.0
    np.testing.assert_array_equal(volume.voxels, voxels)


def nifti_header_bytes(shape, dtype=np.int16, zooms=None) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    if zooms is not None:
        header.set_zooms(zooms)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


def test_bad_nifti_is_refused_with_the_reason():
    good = nifti_bytes(hounsfield(), RAS, compress=False)
    refused(lambda: read_nifti(b"", LIMITS), "chunk.data", "empty")
    refused(lambda: read_nifti(good[: len(good) - 100], LIMITS), "chunk.data", "truncated NIfTI")
    refused(lambda: read_nifti(good[:200], LIMITS), "chunk.data", "not a NIfTI file")
    bad_magic = bytearray(good)
    bad_magic[344:348] = b"xyz\0"
    refused(lambda: read_nifti(bytes(bad_magic), LIMITS), "chunk.data", "magic")
    refused(lambda: read_nifti(b"PK\x03\x04" + good[4:], LIMITS), "chunk.data", "not a NIfTI file")
    packed = gzip.compress(good)
    refused(lambda: read_nifti(packed[: len(packed) // 2], LIMITS), "chunk.data", "truncated gzip")
    scrambled = bytearray(packed)
    scrambled[40:60] = bytes(range(20))
    refused(lambda: read_nifti(bytes(scrambled), LIMITS), "chunk.data", "corrupt gzip")


@pytest.mark.parametrize(("shape", "words"), [
    ((64, 64), "2-D image"),
    ((64, 64, 1), "single slice"),
    ((16, 16, 16, 3), "time series"),
])
def test_nifti_that_is_not_one_volume_is_refused(shape, words):
    data = nib.Nifti1Image(np.zeros(shape, np.int16), RAS).to_bytes()
    refused(lambda: read_nifti(data, LIMITS), "chunk.data", words)


@pytest.mark.parametrize("zooms", [(1.0, 0.0, 1.0), (1.0, 1.0, -2.0), (np.nan, 1.0, 1.0), (1.0, np.inf, 1.0)])
def test_nifti_spacing_must_be_positive_and_finite(zooms):
    image = nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), None)
    image.header["pixdim"][1:4] = zooms
    refused(lambda: read_nifti(image.to_bytes(), LIMITS), "chunk.data", "spacing")


def test_nifti_with_nan_or_infinite_voxels_is_refused():
    voxels = hounsfield()
    voxels[3, 4, 5] = np.nan
    voxels[1, 1, 1] = -np.inf
    refused(lambda: read_nifti(nifti_bytes(voxels, RAS), LIMITS), "chunk.data", "2 voxels are NaN or infinite")


def test_declared_size_beyond_the_limit_is_refused_from_the_header_without_allocating():
    huge = nifti_header_bytes((4096, 4096, 4096), zooms=(1, 1, 1))
    start = time.perf_counter()
    refused(lambda: read_nifti(huge, LIMITS), "chunk.data", "exceed the limit")
    refused(lambda: read_nifti(gzip.compress(huge), LIMITS), "chunk.data", "exceed the limit")
    assert time.perf_counter() - start < 0.5
    refused(lambda: read_nifti(b"\0" * 4096, VolumeLimits(max_bytes=1024)), "chunk.data", "over the limit")


def test_gzip_bombs_are_refused_before_they_are_inflated():
    limits = VolumeLimits(max_bytes=8 * 2**20)
    declared = gzip.compress(nifti_header_bytes((256, 256, 256), np.uint8, (1, 1, 1)) + b"\0" * 256**3)
    padded = gzip.compress(nifti_bytes(hounsfield(), RAS, compress=False) + b"\0" * 64 * 2**20)
    assert len(declared) < 2**20 and len(padded) < 2**20
    start = time.perf_counter()
    refused(lambda: read_nifti(declared, limits), "chunk.data", "the image its header declares is 16777568 bytes")
    assert time.perf_counter() - start < 0.1   # the header alone was inflated
    refused(lambda: read_nifti(padded, limits), "chunk.data", "decompresses to more than the limit")


def test_voxels_cannot_start_inside_the_header():
    data = bytearray(nifti_bytes(hounsfield(), RAS, compress=False))
    data[108:112] = np.float32(100).tobytes()   # vox_offset
    refused(lambda: read_nifti(bytes(data), LIMITS), "chunk.data", "inside the header")


# --- bare voxels ---------------------------------------------------------------------------------------------

def test_raw_voxels_in_lps_get_the_dicom_like_affine():
    voxels = hounsfield((6, 5, 4))
    data = voxels.astype("<i2").tobytes()
    volume = read_raw(data, np.int16, (6, 5, 4), (0.7, 0.8, 2.0), "LPS", origin_mm=(10.0, -20.0, 30.0))
    # LPS position (10, -20, 30) is RAS (-10, 20, 30); i points left (-x), j posterior (-y).
    expected = np.array([[-0.7, 0, 0, -10.0], [0, -0.8, 0, 20.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
    assert_same_volume(volume, Volume(voxels, expected))
    assert volume.orientation == "LPS" and volume.spacing_mm == pytest.approx((0.7, 0.8, 2.0))
    # C order, k fastest: the raw bytes read back in the same order.
    np.testing.assert_array_equal(volume.voxels[1, 2, 3], voxels[1, 2, 3])
    ras = read_raw(voxels.astype("<f8").tobytes(), np.float64, (6, 5, 4), (1, 1, 1), "", ())
    assert_same_volume(ras, Volume(voxels, np.eye(4)))
    transposed = read_raw(data, np.int16, (6, 5, 4), (1, 2, 3), "SRA", (0, 0, 0))
    assert transposed.orientation == "SRA"
    np.testing.assert_allclose(transposed.affine[:3, :3], [[0, 2, 0], [0, 0, 3], [1, 0, 0]])


@pytest.mark.parametrize(("kwargs", "field", "words"), [
    ({"spacing_mm": (1, 0, 1)}, "header.raw.spacing_mm", "positive"),
    ({"spacing_mm": (1, -1, 1)}, "header.raw.spacing_mm", "positive"),
    ({"spacing_mm": (1, float("nan"), 1)}, "header.raw.spacing_mm", "finite"),
    ({"spacing_mm": (1, 1)}, "header.raw.spacing_mm", "three are needed"),
    ({"orientation": "RAR"}, "header.raw.orientation", "one each of R or L"),
    ({"orientation": "XYZ"}, "header.raw.orientation", "axis codes"),
    ({"orientation": "RASL"}, "header.raw.orientation", "axis codes"),
    ({"origin_mm": (0, float("inf"), 0)}, "header.raw.origin_mm", "finite"),
    ({"dtype": np.complex64}, "header.raw.dtype", "must be one of"),
    ({"dtype": "not a type"}, "header.raw.dtype", "must be one of"),
    ({"shape": (64, 64)}, "header.raw.shape", "a volume has three"),
    ({"shape": (64, 64, 1)}, "header.raw.shape", "single slice"),
    ({"shape": (4096, 4096, 4096)}, "header.raw.shape", "exceed the limit"),
    ({"shape": (4, 4, 5)}, "chunk.data", "needs 160"),
])
def test_bad_raw_geometry_names_the_field(kwargs, field, words):
    arguments = {"data": np.zeros(64, np.int16).tobytes(), "dtype": np.int16, "shape": (4, 4, 4),
                 "spacing_mm": (1, 1, 1), "orientation": "RAS", "origin_mm": (0, 0, 0)} | kwargs
    refused(lambda: read_raw(**arguments), field, words)


def test_raw_nan_voxels_are_refused():
    voxels = np.zeros((4, 4, 4), np.float32)
    voxels[0, 0, 0] = np.nan
    refused(lambda: read_raw(voxels.tobytes(), np.float32, (4, 4, 4), (1, 1, 1)), "chunk.data", "NaN")


# --- DICOM ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("affine", [LPS, RAS, OBLIQUE], ids=["LPS", "RAS", "oblique"])
def test_dicom_round_trip_equals_the_nifti_of_the_same_volume(affine):
    original = Volume(hounsfield() + 0.3, affine)
    from_dicom = read_dicom_zip(dicom_zip_bytes(original), LIMITS)
    assert_same_volume(from_dicom, original, tolerance=0.5)   # int16 quantisation
    from_nifti = read_nifti(nifti_bytes(original.voxels, original.affine), LIMITS)
    assert_same_volume(from_dicom, from_nifti, tolerance=0.5)
    assert from_dicom.orientation == from_nifti.orientation == "".join(nib.aff2axcodes(affine))


def test_written_series_is_a_valid_ct_series():
    volume = Volume(hounsfield((16, 12, 5)), LPS)
    data = dicom_zip_bytes(volume, series_description="phantom", study_instance_uid="1.2.3.4")
    files = zipfile.ZipFile(io.BytesIO(data))
    slices = [pydicom.dcmread(io.BytesIO(files.read(name))) for name in files.namelist()]
    assert len(slices) == 5
    first = slices[0]
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.SOPClassUID == pydicom.uid.CTImageStorage and first.Modality == "CT"
    assert first.StudyInstanceUID == "1.2.3.4" and first.SeriesDescription == "phantom"
    assert len({s.SeriesInstanceUID for s in slices}) == 1 and len({s.SOPInstanceUID for s in slices}) == 5
    assert (first.Rows, first.Columns) == (12, 16) and first.pixel_array.dtype == np.int16
    assert [float(v) for v in first.PixelSpacing] == [0.8, 0.8] and float(first.SliceThickness) == 3.0
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    # LPS x of the first voxel: RAS -100 → LPS 100 ... and each slice 3 mm further along z.
    assert [float(v) for v in slices[2].ImagePositionPatient] == [-100.0, -90.0, -194.0]
    hu = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_allclose(hu, volume.voxels[:, :, 0].T, atol=0.5)
    assert dicom_zip_bytes(volume) != dicom_zip_bytes(volume)   # a fresh series each time


def rezipped(data: bytes, change=None, names=None, extra: dict | None = None) -> bytes:
    """The series with each slice changed by change(index, dataset) (None drops it), renamed and reordered."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        entries = list(enumerate(source.namelist()))
        for index, name in reversed(entries):    # the reader must not rely on the order of the files
            dataset = pydicom.dcmread(io.BytesIO(source.read(name)))
            if change is not None:
                dataset = change(index, dataset)
            if dataset is None:
                continue
            blob = io.BytesIO()
            dataset.save_as(blob, enforce_file_format=True)
            archive.writestr(names(index) if names else name, blob.getvalue())
        for name, blob in (extra or {}).items():
            archive.writestr(name, blob)
    return out.getvalue()


def series(shape=(10, 8, 4), affine=LPS) -> tuple[Volume, bytes]:
    volume = Volume(hounsfield(shape), affine)
    return volume, dicom_zip_bytes(volume)


def test_any_folder_layout_and_file_order_and_ignorable_files():
    volume, data = series()
    moved = rezipped(data, names=lambda i: f"study/{'ab'[i % 2]}/{(7 * i) % 11:03d}",
                     extra={"__MACOSX/._x": b"junk", "study/.DS_Store": b"junk", "DICOMDIR": b"index"})
    assert_same_volume(read_dicom_zip(moved, LIMITS), volume, tolerance=0.5)


def set_value(keyword, value, which=lambda i: True):
    def change(index, dataset):
        if which(index):
            setattr(dataset, keyword, value)
        return dataset
    return change


def without(keyword, which=lambda i: True):
    def change(index, dataset):
        if which(index):
            delattr(dataset, keyword)
        return dataset
    return change


def shifted(index, dataset):
    """Slice 2 moves 1 mm along z: uneven gaps."""
    if index == 2:
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, y, z + 1.0]
    return dataset


def smaller(index, dataset):
    if index == 1:
        pixels = dataset.pixel_array[:6]
        dataset.Rows = 6
        dataset.PixelData = pixels.tobytes()
    return dataset


@pytest.mark.parametrize(("change", "words"), [
    (without("PixelData"), "without pixel data"),
    (without("ImagePositionPatient", lambda i: i == 1), "without ImagePositionPatient"),
    (set_value("PixelData", b"\0" * 10, lambda i: i == 3), "cannot be decoded"),
    (smaller, "slices of one volume share a size"),
    (set_value("ImageOrientationPatient", [0, 1, 0, 0, 0, -1], lambda i: i == 0), "share an orientation"),
    (set_value("ImageOrientationPatient", [1, 0, 0, 1, 0, 0]), "perpendicular unit vectors"),
    (set_value("PixelSpacing", [0, 0.8]), "positive millimetres"),
    (set_value("PixelSpacing", [-1, -1]), "positive millimetres"),
    (set_value("ImagePositionPatient", [0, 0, 0]), "gap is zero"),
    (shifted, "uneven gaps"),
    (lambda i, d: d if i == 0 else None, "a volume needs at least 2"),
    (set_value("SeriesInstanceUID", "1.2.3", lambda i: i == 1), "2 DICOM series"),
])
def test_bad_dicom_series_is_refused_with_the_reason(change, words):
    _, data = series()
    refused(lambda: read_dicom_zip(rezipped(data, change), LIMITS), "chunk.data", words)


def test_bad_archives_are_refused():
    _, data = series()
    refused(lambda: read_dicom_zip(b"", LIMITS), "chunk.data", "empty")
    refused(lambda: read_dicom_zip(nifti_bytes(hounsfield(), RAS), LIMITS), "chunk.data", "not a ZIP")
    refused(lambda: read_dicom_zip(data[: len(data) // 2], LIMITS), "chunk.data", "corrupt ZIP")
    text = rezipped(data, extra={"series/notes.txt": b"not an image"})
    refused(lambda: read_dicom_zip(text, LIMITS), "chunk.data", "notes.txt: not a DICOM file")
    damaged = rezipped(data, extra={"series/broken.dcm": b"\0" * 128 + b"DICM" + b"\x02\x00\x10"})
    refused(lambda: read_dicom_zip(damaged, LIMITS), "chunk.data", "broken.dcm")


def test_zip_bomb_and_oversized_series_are_refused_before_extracting():
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("IM1.dcm", b"\0" * (64 * 2**20))
    assert len(bomb.getvalue()) < 2**20
    start = time.perf_counter()
    refused(lambda: read_dicom_zip(bomb.getvalue(), VolumeLimits(max_bytes=8 * 2**20)), "chunk.data",
            "uncompressed")
    assert time.perf_counter() - start < 0.5
    _, data = series((10, 8, 4))
    refused(lambda: read_dicom_zip(data, VolumeLimits(max_voxels=10 * 8 * 4 - 1)), "chunk.data", "exceed the limit")


@pytest.mark.parametrize("kind", ["nifti", "nifti-gz", "dicom-zip"])
def test_damaged_files_are_refused_as_invalid_arguments_whatever_the_damage(kind):
    """A few random bytes changed anywhere (the header most often): only InvalidArgument comes out, never
    another exception, which the service would answer INTERNAL."""
    import random

    voxels = np.random.default_rng(0).normal(0, 100, (16, 16, 8)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    data, read = {
        "nifti": (nifti_bytes(voxels, affine, compress=False), read_nifti),
        "nifti-gz": (nifti_bytes(voxels, affine), read_nifti),
        "dicom-zip": (dicom_zip_bytes(Volume(voxels, affine)), read_dicom_zip),
    }[kind]
    rng = random.Random(20261128)
    for _ in range(300):
        damaged = bytearray(data)
        span = 400 if kind == "nifti" else len(damaged)   # a plain file's voxels take any value
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(span)] = rng.randrange(256)
        try:
            read(bytes(damaged), VolumeLimits())
        except InvalidArgument:
            pass
