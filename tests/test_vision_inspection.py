"""The surface-defect model in-process: post-processing rules on hand-made probability maps, and the shipped
weights scored on held-out surfaces at the sizes the service is sent (the fleet simulator sends 128 px)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.vision.inspection import (MODELS_DIR, PROVENANCE_FILE, SURFACE_DEFECTS, WEIGHTS_FILE, PostProcessing,
                                        SurfaceDefectModel, TinyUNet, defects_from_probabilities)
from services.vision.textures import CLASSES, DEFECT_KINDS, product_image, sample_defects

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import train_defect_model  # noqa: E402

# Seeds neither the training script (20261127 onwards) nor the service tests (4242 onwards) draw from.
TEST_SEED = 5151


def probabilities_with(lines: list[tuple[str, slice, slice]], certainty: float = 0.95, shape=(64, 64)) -> np.ndarray:
    """[C, H, W] probabilities: background everywhere except the given (class, rows, columns) boxes."""
    p = np.zeros((len(CLASSES), *shape), np.float32)
    p[0] = 1.0
    for kind, rows, cols in lines:
        p[:, rows, cols] = 0.0
        p[0, rows, cols] = 1 - certainty
        p[CLASSES.index(kind), rows, cols] = certainty
    return p


def test_a_line_seen_in_pieces_is_one_defect_when_the_gap_is_under_the_closing_kernel():
    pieces = probabilities_with([("scratch", slice(30, 31), slice(5, 25)), ("scratch", slice(30, 31), slice(28, 50))])
    loose = PostProcessing(close_kernel=5, min_pixels=dict.fromkeys(DEFECT_KINDS, 8))
    tight = PostProcessing(close_kernel=3, min_pixels=dict.fromkeys(DEFECT_KINDS, 8))
    merged = defects_from_probabilities(pieces, loose)
    assert [(d.kind, d.box) for d in merged.defects] == [("scratch", (5, 30, 45, 1))]
    assert len(defects_from_probabilities(pieces, tight).defects) == 2
    # The mask is the defect's pixels, gap included, under its class.
    assert set(np.unique(merged.mask)) == {0, CLASSES.index("scratch")}
    assert merged.mask[30, 5:50].all() and merged.mask.sum() == 45 * CLASSES.index("scratch")


def test_regions_under_their_class_minimum_or_the_score_floor_are_dropped():
    p = probabilities_with([("spot", slice(5, 9), slice(5, 9)),          # 16 px
                            ("crack", slice(40, 41), slice(10, 40))])    # 30 px
    post = PostProcessing(close_kernel=3, min_pixels={"scratch": 8, "spot": 24, "crack": 24})
    found = defects_from_probabilities(p, post)
    assert [(d.kind, d.pixels) for d in found.defects] == [("crack", 30)]
    assert found.mask[5:9, 5:9].sum() == 0, "a dropped region leaves no trace in the mask"
    assert found.defect_score == pytest.approx(0.95)
    faint = probabilities_with([("crack", slice(40, 41), slice(10, 40))], certainty=0.6)
    assert defects_from_probabilities(faint, PostProcessing(min_score=0.7)).defects == []
    assert defects_from_probabilities(faint, PostProcessing(min_score=0.5)).defects != []


def test_post_processing_is_read_from_provenance_old_and_new_form():
    old = PostProcessing.from_provenance({"post_processing": {"min_defect_pixels": 16, "closing_kernel": 3}})
    assert old == PostProcessing(3, dict.fromkeys(DEFECT_KINDS, 16), 0.0)
    shipped = json.loads((MODELS_DIR / SURFACE_DEFECTS / PROVENANCE_FILE).read_text())
    chosen = shipped["post_processing"]
    assert "validation" in chosen["chosen_on"] and "held-out" in chosen["chosen_on"]
    post = PostProcessing.from_provenance(shipped)
    assert post.close_kernel == chosen["closing_kernel"] and post.min_pixels == chosen["min_defect_pixels"]


def test_a_deeper_network_is_read_from_provenance_and_pads_to_its_own_multiple(tmp_path):
    """Depth 3 pools three times: a 90 x 100 image is padded to 96 x 104 inside and cropped back."""
    from safetensors.torch import save_file

    network = TinyUNet(width=4, depth=3)
    assert network.size_multiple == 8
    assert {"enc3.0.weight", "dec3.0.weight"} <= network.state_dict().keys()
    save_file(network.state_dict(), str(tmp_path / WEIGHTS_FILE))
    (tmp_path / PROVENANCE_FILE).write_text(json.dumps({"width": 4, "depth": 3, "seed": 1}))
    model = SurfaceDefectModel(tmp_path, threads=1)
    model.load()
    assert model.network.depth == 3
    image = np.random.default_rng(3).integers(0, 256, (90, 100, 3), dtype=np.uint8)
    assert model.probabilities(image[None]).shape == (1, len(CLASSES), 90, 100)
    assert model.run_batch([image])[0].mask.shape == (90, 100)
    # Depth 2, the default, keeps the layout of weights written before depth was recorded.
    assert {k.split(".")[0] for k in TinyUNet(width=4).state_dict()} == {"enc1", "enc2", "bottom", "dec2", "dec1",
                                                                          "head"}


@pytest.fixture(scope="module")
def shipped_model():
    model = SurfaceDefectModel(threads=1)
    model.load()
    yield model
    model.close()


# 128 px is what the fleet simulator sends; held-out defect F1 0.944 at 128 px and 0.914 at 256 px (docs/models.md).
@pytest.mark.parametrize("size, count, bar", [(128, 90, 0.9), (256, 24, 0.9)])
def test_shipped_model_finds_defects_on_fresh_surfaces(shipped_model, size, count, bar):
    """Surfaces from a seed the training script never used, scored by its own matching rule."""
    rng = np.random.default_rng(TEST_SEED + size)
    samples = [product_image(rng, size, defects=sample_defects(rng, 0.7)) for _ in range(count)]
    inspections = shipped_model.run_batch([s.image for s in samples])
    scores = train_defect_model.evaluate(samples, inspections)
    overall = scores["instances"]["overall"]
    assert overall["true"] > count, overall
    assert overall["f1"] >= bar, scores["instances"]
    assert scores["image_verdicts"]["f1"] >= 0.9, scores["image_verdicts"]


def test_a_scratch_and_a_spot_are_named_as_such(shipped_model):
    sample = product_image(np.random.default_rng(7), 128, ["scratch", "spot"])
    [inspection] = shipped_model.run_batch([sample.image])
    assert sorted(d.kind for d in inspection.defects) == ["scratch", "spot"], inspection.defects


@pytest.mark.slow
def test_the_quick_training_run_writes_a_model_the_service_loads(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_defect_model.py"), "--quick",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    provenance = json.loads((tmp_path / PROVENANCE_FILE).read_text())
    assert {"heldout_128px", "heldout_192px", "heldout_256px", "post_processing"} <= provenance.keys()
    # The shipped provenance.json is this script's output, field for field (no hand-written entries).
    shipped = json.loads((MODELS_DIR / SURFACE_DEFECTS / PROVENANCE_FILE).read_text())
    assert provenance.keys() == shipped.keys()
    for section in ("training", "data", "post_processing", "machine", "heldout_256px"):
        assert provenance[section].keys() == shipped[section].keys(), section
    model = SurfaceDefectModel(tmp_path, threads=1)
    model.load()
    [inspection] = model.run_batch([product_image(np.random.default_rng(1), 96).image])
    assert inspection.mask.shape == (96, 96)
    assert "held-out defect F1" in model.describe().provenance and "at 256 px" in model.describe().provenance
