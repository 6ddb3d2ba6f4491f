"""The synthetic abdominal CT studies the 3D segmentation model learns from: reproducible, physical, oriented;
and the model trained on them, as packaged."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from safetensors.torch import load_file
from scipy import ndimage

from services.vision.phantoms import LESION, ORGAN, make_phantom
from services.vision.volume_model import SegmentationSpec, build_network


def millilitres(phantom, label: int) -> float:
    return float((phantom.labels == label).sum() * np.prod(phantom.volume.spacing_mm) / 1000)


def in_ras(phantom) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels, labels and affine flipped and transposed to RAS axes."""
    transform = nib.orientations.io_orientation(phantom.volume.affine)
    affine = phantom.volume.affine @ nib.orientations.inv_ornt_aff(transform, phantom.labels.shape)
    return (nib.orientations.apply_orientation(phantom.volume.voxels, transform),
            nib.orientations.apply_orientation(phantom.labels, transform), affine)


def test_same_arguments_same_study_and_the_seed_changes_the_anatomy():
    a, b = make_phantom(7), make_phantom(7)
    assert a.volume.voxels.dtype == np.float32 and a.labels.dtype == np.uint8
    assert a.volume.voxels.shape == a.labels.shape == (96, 96, 96)
    np.testing.assert_array_equal(a.volume.voxels, b.volume.voxels)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.volume.affine, b.volume.affine)
    other = make_phantom(8)
    assert (other.labels != a.labels).mean() > 0.005
    # noise_seed changes the noise only.
    noisy = make_phantom(7, noise_seed=99)
    np.testing.assert_array_equal(noisy.labels, a.labels)
    assert 8 < np.std(noisy.volume.voxels - a.volume.voxels) < 30


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 9001])
def test_organ_contains_the_lesion_and_both_look_like_ct(seed):
    phantom = make_phantom(seed)
    labels, hu = phantom.labels, phantom.volume.voxels
    assert set(np.unique(labels)) == {0, ORGAN, LESION}
    lesion = labels == LESION
    # The organ surrounds the lesion: every lesion voxel's neighbourhood is organ or lesion.
    assert set(np.unique(labels[ndimage.binary_dilation(lesion)])) <= {ORGAN, LESION}
    assert 40 < millilitres(phantom, ORGAN) < 400
    organ_hu, lesion_hu = hu[labels == ORGAN].mean(), hu[lesion].mean()
    assert 50 < organ_hu < 75 and 20 < abs(organ_hu - lesion_hu) < 50
    # Air outside, fat, bone: a CT-like range, and the organ is not the only structure at its intensity.
    assert hu.min() < -900 and hu.max() > 500 and (hu < -50).mean() > 0.1
    similar = (np.abs(hu - organ_hu) < 15) & (labels == 0)
    assert similar.sum() > (labels == ORGAN).sum()


def test_lesion_radius_sets_its_size_and_grows_in_place():
    sizes = [millilitres(make_phantom(4, lesion_radius_mm=r), LESION) for r in (8, 12, 16)]
    expected = [4 / 3 * np.pi * r**3 / 1000 for r in (8, 12, 16)]
    assert sizes[0] < sizes[1] < sizes[2]
    for size, sphere in zip(sizes, expected):
        assert 0.6 * sphere < size < 1.6 * sphere
    small, large = make_phantom(4, lesion_radius_mm=8).labels, make_phantom(4, lesion_radius_mm=16).labels
    assert ((small == LESION) <= (large == LESION)).all()
    np.testing.assert_array_equal(small > 0, large > 0)   # the organ itself does not change


def test_physical_volumes_agree_across_shapes_and_spacings():
    reference = make_phantom(5, lesion_radius_mm=15)
    for shape, spacing in [((128, 128, 80), (1.6, 1.6, 2.4)), ((256, 256, 128), (1.5, 1.5, 2.5))]:
        other = make_phantom(5, shape, spacing, lesion_radius_mm=15)
        assert other.labels.shape == shape and other.volume.spacing_mm == pytest.approx(spacing)
        for label in (ORGAN, LESION):
            assert millilitres(other, label) == pytest.approx(millilitres(reference, label), rel=0.04)


@pytest.mark.parametrize("orientation", ["LPS", "PIR", "ASL"])
def test_other_orientations_carry_the_same_study_when_mapped_to_ras(orientation):
    ras = make_phantom(6, (64, 80, 48), (2.0, 2.5, 3.0))
    lettered = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    shape = tuple((64, 80, 48)[lettered[c]] for c in orientation)
    spacing = tuple((2.0, 2.5, 3.0)[lettered[c]] for c in orientation)
    other = make_phantom(6, shape, spacing, orientation=orientation)
    assert other.volume.orientation == orientation and other.labels.shape == shape
    voxels, labels, affine = in_ras(other)
    np.testing.assert_array_equal(labels, ras.labels)
    np.testing.assert_array_equal(voxels, ras.volume.voxels)
    np.testing.assert_allclose(affine, ras.volume.affine)
    # The field of view is centred on the body: the grid's centre is the RAS origin.
    centre = other.volume.affine @ np.array([*((np.array(shape) - 1) / 2), 1.0])
    np.testing.assert_allclose(centre[:3], 0, atol=1e-9)


def test_the_packaged_model_loads_with_its_spec_and_records_its_heldout_dice():
    """What scripts/train_segmentation_model.py wrote: weights that fit the network its spec builds, and held-out
    Dice per label of at least 0.9 on phantoms of seeds and grids training did not use."""
    folder = Path(__file__).resolve().parents[1] / "services/vision/models/abdomen-phantom"
    provenance = json.loads((folder / "provenance.json").read_text())
    spec = SegmentationSpec.from_json(provenance["spec"])
    build_network(spec).load_state_dict(load_file(str(folder / "model.safetensors")))
    assert provenance["name"] == "abdomen-phantom" and "not for clinical use" in provenance["provenance"]
    heldout = provenance["heldout"]
    assert heldout["dice"]["organ"] >= 0.9 and heldout["dice"]["lesion"] >= 0.9
    training_seeds = range(1000, 1000 + provenance["training"]["volumes"])
    assert not set(heldout["seeds"]) & set(training_seeds)
    training_spacings = {tuple(g["spacing_mm"]) for g in provenance["training"]["grids"]}
    assert not {tuple(g["spacing_mm"]) for g in heldout["grids"]} & training_spacings
