"""The picture library's painted storybook scenes: the storyteller's places found by its stories' words.

Over a real socket with mutual TLS: prompts of the storyteller's world get the painting of their place (in
the light they name), the photographs still win their own subjects, a prompt that names no light lets the seed
choose among its place's lights, and MODALMESH_PAINTED_SCENES=false leaves the paintings out. In the process:
one painting per place and light, every one different, deterministic, colourful and not flat, and the whole
set painted within its time budget.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from modalmesh.launch import launch
from modalmesh.v1 import vision_pb2_grpc
from services.vision import painted_scenes
from services.vision.painted_scenes import CREDIT, paint, scenes
from services.vision.painting import HEIGHT, WIDTH
from tests.support import serving_together
from tests.test_storyteller import load_script
from tests.test_vision_generate import colourfulness, generate, image_of, pixels_of

PAINT_BUDGET_S = 5.0   # measured about 1.5 s for the 64 paintings on a busy two-core machine


# -- services ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def services(pki, tmp_path_factory):
    """The vision service as shipped (painted scenes on) and one with MODALMESH_PAINTED_SCENES=false,
    started side by side."""
    launched = {name: launch("services.vision", pki, tmp_path_factory.mktemp(f"vision-{name}"), "vision",
                             segmentation_model="", model_threads=1, painted_scenes=painted)
                for name, painted in (("painted", True), ("photographs", False))}
    with serving_together(launched) as started:
        yield started


@pytest.fixture(scope="module")
def library(services):
    with services["painted"].channel() as channel:
        yield vision_pb2_grpc.VisionServiceStub(channel)


@pytest.fixture(scope="module")
def photographs(services):
    with services["photographs"].channel() as channel:
        yield vision_pb2_grpc.VisionServiceStub(channel)


# -- retrieval -----------------------------------------------------------------------------------------

STORY_PROMPTS = [
    ("a fox who loses a lantern in a snowy forest", "painted:snowy-forest-"),
    ("a robot in a harbour", "painted:harbour-"),
    ("an owl in the old castle at night", "painted:old-castle-night"),
    ("a bear in a desert town at dusk", "painted:desert-town-dusk"),
    ("a tiger in the jungle at night", "painted:jungle-night"),
    ("a boy at the train station by day", "painted:train-station-day"),
    ("The brave mouse climbed to the highest shelf in the quiet library.", "painted:quiet-library"),
    ("a dragon in a deep cave", "painted:deep-cave"),
    ("a penguin on the space station", "painted:space-station"),
    ("One evening, the street lamps were just coming on in the busy city.", "painted:busy-city-"),
    ("Once upon a time, a little rabbit named Pip lived in the sunny meadow, where the grass grew tall and "
     "green.", "painted:sunny-meadow-"),
]


@pytest.mark.parametrize("prompt, expected", STORY_PROMPTS, ids=[e for _, e in STORY_PROMPTS])
def test_the_storytellers_places_find_their_painting(library, prompt, expected):
    image = image_of(generate(library, prompt=prompt, seed=3, width=640, height=360, style="storybook"))
    assert image.source.picture_id.startswith(expected), (image.source.picture_id, image.source.similarity)
    assert 0.4 < image.source.similarity <= 1.0
    assert image.source.credit == CREDIT and image.source.caption.startswith("A storybook painting of ")
    assert (image.width, image.height) == (640, 360) and pixels_of(image).std() > 12
    assert "64 storybook scenes painted procedurally" in image.model.provenance
    assert "18 photographs of scikit-image" in image.model.provenance


@pytest.mark.parametrize("prompt, picture_id", [
    ("a rocket standing on its launch pad", "skimage:rocket"),
    ("a cup of coffee", "skimage:coffee"),
    ("a cat", "skimage:chelsea"),
    ("a horse on a farm", "skimage:horse"),
    ("the moon", "skimage:moon"),
])
def test_the_photographs_still_win_their_own_subjects(library, prompt, picture_id):
    assert image_of(generate(library, prompt=prompt, seed=1)).source.picture_id == picture_id


def test_a_prompt_that_names_no_light_lets_the_seed_choose_the_light(library):
    chosen = {image_of(generate(library, prompt="a girl on a little island", seed=seed, width=64, height=64))
              .source.picture_id for seed in range(8)}
    assert chosen <= {f"painted:little-island-{light}" for light in ("day", "dusk", "night")}
    assert len(chosen) >= 2, chosen


def test_a_served_painting_is_the_painting_framed(library):
    """The picture served with no style is the scene's painting, cropped a little and scaled."""
    size = (480, 272)
    image = image_of(generate(library, prompt="an owl in the old castle at night", seed=5, width=size[0],
                              height=size[1]))
    [scene] = [s for s in scenes() if s.scene_id == image.source.picture_id]
    served = cv2.cvtColor(pixels_of(image), cv2.COLOR_BGR2RGB).astype(np.float32)
    painting = cv2.resize(paint(scene), size, interpolation=cv2.INTER_AREA).astype(np.float32)
    other = cv2.resize(paint(next(s for s in scenes() if s.scene_id == "painted:old-castle-day")), size,
                       interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.abs(served - painting).mean() < 0.5 * np.abs(served - other).mean()
    assert abs(served.mean() - painting.mean()) < 8


def test_the_setting_leaves_the_painted_scenes_out(library, photographs):
    without = image_of(generate(photographs, prompt="a fox who loses a lantern in a snowy forest", seed=3))
    assert without.source.picture_id.startswith("skimage:")
    assert "painted" not in without.model.provenance
    shipped = image_of(generate(library, prompt="a cup of coffee", seed=3))
    assert without.model.version != shipped.model.version


# -- the paintings -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def paintings() -> dict[str, np.ndarray]:
    painted_scenes._painted.cache_clear()
    return {scene.scene_id: paint(scene) for scene in scenes()}


def test_every_place_of_the_storyteller_is_painted_in_its_lights():
    places = {place.noun.replace(" ", "-") for place in load_script().PLACES}
    ids = [scene.scene_id for scene in scenes()]
    assert len(places) == 24 and {p.slug for p in painted_scenes.PLACES} == places
    assert len(ids) == len(set(ids)) == 64
    for place in places:
        lit = {i for i in ids if i.startswith(f"painted:{place}-") or i == f"painted:{place}"}
        assert lit, place
    captions = [scene.caption for scene in scenes()]
    assert len(set(captions)) == len(captions)
    assert all(scene.phrasings[0] == scene.caption and len(scene.phrasings) >= 5 for scene in scenes())


def test_every_painting_differs_from_every_other(paintings):
    small = np.stack([cv2.resize(p, (96, 54), interpolation=cv2.INTER_AREA) for p in paintings.values()]).astype(
        np.float32)
    differences = np.abs(small[:, None] - small[None]).mean(axis=(2, 3, 4))
    np.fill_diagonal(differences, np.inf)
    closest = np.unravel_index(differences.argmin(), differences.shape)
    names = list(paintings)
    assert differences.min() > 6, (names[closest[0]], names[closest[1]], differences.min())


def test_paintings_are_colourful_and_not_flat(paintings):
    for scene_id, pixels in paintings.items():
        assert pixels.shape == (HEIGHT, WIDTH, 3) and pixels.dtype == np.uint8
        grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
        assert grey.std() > 12, (scene_id, grey.std())             # night scenes measure 15 and more
        assert colourfulness(pixels) > 20, (scene_id, colourfulness(pixels))   # a grey picture measures 0
        edges = cv2.Canny(grey, 20, 60).mean() / 255   # shapes were drawn, not just gradients: 0.01 and more
        assert edges > 0.005, (scene_id, edges)
    brightness = {i: p.mean() for i, p in paintings.items()}
    for place in ("harbour", "old-castle", "sunny-meadow"):
        assert brightness[f"painted:{place}-day"] > brightness[f"painted:{place}-dusk"] > \
            brightness[f"painted:{place}-night"], place


def test_paintings_are_deterministic(paintings):
    painted_scenes._painted.cache_clear()
    for scene in scenes()[::7]:
        assert paint(scene).tobytes() == paintings[scene.scene_id].tobytes(), scene.scene_id


def test_the_whole_set_paints_within_its_budget():
    painted_scenes._painted.cache_clear()
    started = time.perf_counter()
    for scene in scenes():
        paint(scene)
    seconds = time.perf_counter() - started
    print(f"{len(scenes())} paintings of {WIDTH}x{HEIGHT} in {seconds:.2f} s")
    assert seconds < PAINT_BUDGET_S
