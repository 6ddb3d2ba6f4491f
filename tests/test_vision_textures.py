"""The synthetic surfaces the defect model learns from: reproducible, with ground truth that matches the image."""

from __future__ import annotations

import numpy as np
import pytest

from services.vision.textures import CLASSES, SURFACES, product_image, sample_defects


def test_same_seed_same_image_mask_and_boxes():
    a = product_image(np.random.default_rng(3), 96, defects=["scratch", "crack"])
    b = product_image(np.random.default_rng(3), 96, defects=["scratch", "crack"])
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.defects == b.defects
    c = product_image(np.random.default_rng(4), 96, defects=["scratch", "crack"])
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("kind", ["scratch", "spot", "crack"])
def test_ground_truth_matches_the_injected_defect(surface, kind):
    sample = product_image(np.random.default_rng(11), (120, 160), defects=[kind], surface=surface)
    assert sample.image.shape == (120, 160, 3) and sample.image.dtype == np.uint8
    assert [d.kind for d in sample.defects] == [kind]
    defect = sample.defects[0]
    ys, xs = np.nonzero(sample.mask)
    assert set(np.unique(sample.mask)) == {0, CLASSES.index(kind)}
    assert defect.box == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert defect.pixels == len(xs) == np.count_nonzero(sample.instances == 1)
    # The defect changes the surface where the mask says it is.
    inside = sample.image[sample.mask > 0].astype(float).mean(0)
    ring = sample.image[sample.mask == 0].astype(float).mean(0)
    assert np.abs(inside - ring).max() > 10


def test_clean_parts_have_no_defects_and_several_defects_stay_apart():
    clean = product_image(np.random.default_rng(5), 64)
    assert clean.defects == [] and not clean.mask.any()
    busy = product_image(np.random.default_rng(6), 256, defects=["scratch", "spot", "crack", "spot"])
    assert len(busy.defects) == 4
    assert sorted(np.unique(busy.instances)) == [0, 1, 2, 3, 4]


def test_defect_probability_sets_how_often_a_part_is_defective():
    rng = np.random.default_rng(9)
    draws = [sample_defects(rng, 0.25) for _ in range(2000)]
    assert abs(sum(bool(d) for d in draws) / 2000 - 0.25) < 0.03
    assert all(1 <= len(d) <= 3 for d in draws if d)
    assert sample_defects(rng, 0.0) == []
