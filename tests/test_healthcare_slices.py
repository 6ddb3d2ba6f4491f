"""The viewer's slice images: studies stored in any orientation come out the same once canonical, each plane
shows the patient in the radiological convention, pixels are square in millimetres, and labels are drawn
in their colours with an outline. PNGs are decoded and their pixels checked."""

from __future__ import annotations

import time

import cv2
import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform

from apps.healthcare.slices import (DEFAULT_COLORS, MAX_SIDE_PX, PLANES, SliceVolume, canonical, display_size,
                                    middle_index, render_slice, slice_count)

SPACING = (0.8, 1.0, 2.5)
AIR, TISSUE, BONE = -1000.0, 40.0, 1000.0


def ras_study(shape=(40, 48, 24), spacing=SPACING):
    """A study stored RAS: background tissue, and labels an organ block with a lesion inside it."""
    rng = np.random.default_rng(7)
    image = (TISSUE + rng.normal(0, 5, shape)).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[8:30, 10:40, 4:20] = 1
    labels[14:22, 20:30, 10:16] = 2
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-100.0, -120.0, 30.0)
    return image, labels, affine


def stored_as(image, labels, affine, axcodes: str):
    """The same study written in another orientation, by nibabel."""
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(axcodes))
    volume = nib.Nifti1Image(image, affine).as_reoriented(transform)
    mask = nib.Nifti1Image(labels, affine).as_reoriented(transform)
    assert nib.aff2axcodes(volume.affine) == tuple(axcodes)
    return np.asarray(volume.dataobj), np.asarray(mask.dataobj), volume.affine


def pixels(png: bytes) -> np.ndarray:
    """RGB [rows, columns, 3]."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


@pytest.mark.parametrize("axcodes", ["LPS", "LAS", "PIR", "SRA"])
def test_any_stored_orientation_becomes_the_ras_study(axcodes):
    image, labels, affine = ras_study()
    expected = canonical(image, labels, affine)
    stored = stored_as(image, labels, affine, axcodes)
    assert stored[0].shape != image.shape or not np.array_equal(stored[0], image)   # really stored otherwise
    found = canonical(*stored)
    assert np.array_equal(found.image, expected.image) and np.array_equal(found.labels, expected.labels)
    assert found.spacing_mm == pytest.approx(SPACING) and expected.spacing_mm == pytest.approx(SPACING)
    assert found.image.dtype == np.float32 and found.labels.dtype == np.uint8


def test_markers_appear_where_the_radiological_convention_puts_them():
    """One bright marker on the patient's right, anterior and superior; stored LPS, as DICOM is."""
    shape = (40, 48, 24)
    image = np.full(shape, AIR, np.float32)
    i, j, k = 32, 40, 18                     # RAS voxel: right (high i), anterior (high j), superior (high k)
    image[i - 2:i + 2, j - 2:j + 2, k - 1:k + 2] = BONE
    affine = np.diag([*SPACING, 1.0])
    volume = canonical(*stored_as(image, np.zeros(shape, np.uint8), affine, "LPS"))
    assert volume.image[i, j, k] == BONE     # back where it was in RAS

    expectations = {   # plane, index through the marker, and which halves of the image it must be in
        "axial": (k, "left", "top"),          # the patient's right on the left, anterior at the top
        "coronal": (j, "left", "top"),        # the patient's right on the left, superior at the top
        "sagittal": (i, "left", "top"),       # anterior on the left, superior at the top
    }
    for plane, (index, side, end) in expectations.items():
        grey = pixels(render_slice(volume, plane, index))[:, :, 0]
        rows, columns = np.nonzero(grey > 200)
        assert rows.size, plane
        height, width = grey.shape
        assert (columns.mean() < width / 2) == (side == "left"), (plane, columns.mean(), width)
        assert (rows.mean() < height / 2) == (end == "top"), (plane, rows.mean(), height)
        assert grey.min() == 0   # air is black in the default window


def test_the_marker_lands_on_the_expected_pixel():
    """Exact placement, not only the half: axial row = (ny-1-j) rows of 1 mm, column = (nx-1-i)."""
    shape = (30, 20, 10)
    image = np.full(shape, AIR, np.float32)
    image[25, 3, 5] = BONE
    volume = canonical(image, None, np.eye(4))
    grey = pixels(render_slice(volume, "axial", 5))[:, :, 0]
    assert grey.shape == (20, 30)
    assert np.argwhere(grey > 200).tolist() == [[20 - 1 - 3, 30 - 1 - 25]]
    assert not volume.labels.any() and volume.labels.shape == shape


def test_pixels_are_square_millimetres_at_one_scale_in_every_plane():
    volume = canonical(*ras_study(shape=(40, 60, 10), spacing=(0.5, 0.5, 2.0))[:2], np.diag([0.5, 0.5, 2.0, 1]))
    # 0.5 mm pixels everywhere: x spans 20 mm, y 30 mm, z 20 mm.
    expected = {"axial": (60, 40), "coronal": (40, 40), "sagittal": (40, 60)}   # (rows, columns)
    for plane, size in expected.items():
        assert pixels(render_slice(volume, plane, 0)).shape[:2] == size, plane
        assert display_size(volume, plane) == (size[1], size[0])
    # A long, finely sampled axis: the scale gives way so no side passes the limit.
    long = SliceVolume(np.zeros((2048, 8, 8), np.float32), np.zeros((2048, 8, 8), np.uint8), (1.0, 1.0, 1.0))
    assert pixels(render_slice(long, "axial", 0)).shape[:2] == (4, MAX_SIDE_PX)


def test_labels_are_drawn_in_their_colours_with_an_outline():
    image, labels, affine = ras_study()
    volume = canonical(image, labels, affine)
    index = middle_index(volume, "axial", label=2)
    assert index == 12   # the lesion spans k 10..15
    rgb = pixels(render_slice(volume, "axial", index)).astype(int)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    height, width = red.shape
    # Every pixel is the lesion's red, the organ's green or the grey of unlabelled tissue.
    reddish = (red > green + 60) & (red > blue + 60)
    greenish = (green > red + 40) & (green > blue + 40)
    greyish = (np.abs(red - green) <= 1) & (np.abs(green - blue) <= 1)
    assert reddish.sum() > 50 and greenish.sum() > 200 and greyish.sum() > 200
    assert (reddish | greenish | greyish).all()
    # The colours are where the labels are: resample the labels the same way and compare.
    shown = np.ascontiguousarray(volume.labels[:, :, index].T[::-1, ::-1])
    shown = cv2.resize(shown, (width, height), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(reddish, shown == 2) and np.array_equal(greenish, shown == 1)
    # An outline in the full colour along each structure's edge; blended (paler) colour inside.
    lesion_colours = {tuple(c) for c in rgb[shown == 2]}
    assert tuple(DEFAULT_COLORS[2]) in lesion_colours and len(lesion_colours) > 1
    edge_row = np.argwhere(shown == 2)[0]   # the first lesion pixel in reading order is on its edge
    assert tuple(rgb[tuple(edge_row)]) == DEFAULT_COLORS[2]

    plain = pixels(render_slice(volume, "axial", index, overlay=False)).astype(int)
    assert (plain[..., 0] == plain[..., 1]).all() and (plain[..., 1] == plain[..., 2]).all()
    blue_lesion = pixels(render_slice(volume, "axial", index, colors={2: (0, 0, 255)})).astype(int)
    assert tuple(blue_lesion[tuple(edge_row)]) == (0, 0, 255)
    opaque = pixels(render_slice(volume, "axial", index, opacity=1.0))
    assert {tuple(c) for c in opaque[shown == 1]} == {DEFAULT_COLORS[1]}
    other = SliceVolume(volume.image, (volume.labels > 0).astype(np.uint8) * 7, volume.spacing_mm)
    seven = pixels(render_slice(other, "axial", index)).astype(int)
    assert not (np.abs(seven[..., 0] - seven[..., 1]) <= 1).all()   # a label with no set colour still shows


def test_middle_index_of_a_label_or_of_the_volume():
    volume = canonical(*ras_study())
    assert middle_index(volume, "axial") == 12 and middle_index(volume, "coronal") == 24
    assert middle_index(volume, "sagittal", label=1) == (8 + 29) // 2
    assert middle_index(volume, "coronal", label=2) == (20 + 29) // 2
    assert middle_index(volume, "axial", label=9) == 12   # absent: the middle of the volume
    assert [slice_count(volume, plane) for plane in PLANES] == [24, 48, 40]


def test_bad_requests_are_value_errors():
    volume = canonical(*ras_study())
    cases = [
        (lambda: render_slice(volume, "oblique", 0), "plane is one of axial, coronal, sagittal"),
        (lambda: render_slice(volume, "axial", 24), r"axial slice index 24 is outside 0..23"),
        (lambda: render_slice(volume, "sagittal", -1), r"outside 0..39"),
        (lambda: render_slice(volume, "axial", 1.5), "outside"),
        (lambda: render_slice(volume, "axial", 0, window=(100, 100)), "window"),
        (lambda: render_slice(volume, "axial", 0, opacity=2), "opacity"),
        (lambda: slice_count(volume, "Axial"), "plane is one of"),
        (lambda: middle_index(volume, "side"), "plane is one of"),
        (lambda: canonical(np.zeros((8, 8), np.float32), None, np.eye(4)), "3 dimensions"),
        (lambda: canonical(np.zeros((8, 8, 8)), np.zeros((8, 8, 7)), np.eye(4)), "do not match"),
        (lambda: canonical(np.zeros((8, 8, 8)), None, np.diag([1.0, 0.0, 1.0, 1.0])), "spacing must be positive"),
        (lambda: canonical(np.zeros((8, 8, 8)), None, np.full((4, 4), np.nan)), "finite 4x4"),
        (lambda: canonical(np.zeros((8, 8, 8)), None, np.array([[1.0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0],
                                                               [0, 0, 0, 1]])), "not independent"),
        (lambda: canonical(np.zeros((8, 8, 8)), np.full((8, 8, 8), 300), np.eye(4)), "0 to 255"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_nan_voxels_render_black_not_garbage():
    image = np.full((8, 8, 8), 500.0, np.float32)
    image[2, 2, 4] = np.nan
    grey = pixels(render_slice(canonical(image, None, np.eye(4)), "axial", 4))[:, :, 0]
    assert grey[8 - 1 - 2, 8 - 1 - 2] == 0 and (grey == 255).sum() == 63


def test_a_large_study_renders_each_slice_in_milliseconds():
    shape = (256, 256, 128)
    rng = np.random.default_rng(0)
    image = rng.normal(40, 30, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[60:200, 60:200, 30:100] = 1
    labels[100:140, 100:140, 50:80] = 2
    volume = canonical(image, labels, np.diag([0.8, 0.8, 1.5, 1.0]))
    timings = {}
    for plane in PLANES:
        index = middle_index(volume, plane, label=2)
        render_slice(volume, plane, index)   # warm
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            render_slice(volume, plane, index)
            runs.append(time.perf_counter() - start)
        timings[plane] = sorted(runs)[2]
    # A few ms on a quiet core; the bound leaves room for a busy test machine.
    assert max(timings.values()) < 0.05, timings
